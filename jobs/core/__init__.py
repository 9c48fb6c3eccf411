"""Below every step: configuration, table catalog and data contract, the table layer
(``tables``), the run record (``runs``), a step's declaration (``step``), shared commerce
helpers, the Spark session factory, storage and one-line errors."""
