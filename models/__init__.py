"""bundlecast's model code (``bundlecast.models``), on pandas and numpy: demand forecast,
need prediction, the MLflow registry and gate, pricing and allocation, incentives, offer
types, routing and packaging, A/B analysis. No module here reads a table or imports a step."""
