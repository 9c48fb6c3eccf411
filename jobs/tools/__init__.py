"""Tools around the pipeline, apart from its steps: the command line, the demo world, importers,
offline evaluations, the routing benchmark, table summaries and running DAGs through Airflow."""
