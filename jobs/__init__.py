"""bundlecast's Spark jobs (``bundlecast.jobs``): one package per pipeline step, listed in
data-flow order in ``pipeline.py``; ``core`` below every step, ``tools`` beside them."""
