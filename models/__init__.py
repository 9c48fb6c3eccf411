"""bundlecast models: features, training, evaluation and scoring (demand forecast, need
prediction, user value). Filled in by the modelling steps; the foundation only reserves it."""
