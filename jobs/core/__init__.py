"""Shared infrastructure for every job: configuration, table catalog, data contract,
Spark session factory, storage helpers and error formatting."""
