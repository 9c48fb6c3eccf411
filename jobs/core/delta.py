"""Delta helpers under the table layer (``tables.py``): a table is created from the catalog at
its catalog location and registered as ``bundlecast.<name>`` in the Spark catalog."""
from __future__ import annotations

import logging
from pathlib import Path

from bundlecast.jobs.core import catalog

log = logging.getLogger(__name__)
_ENSURED: set[tuple[str, str]] = set()


def ensure_table(spark, name: str, cfg: dict) -> str:
    """Create the catalog table (schema from conf) at its location and register it as
    ``bundlecast.<name>`` in the persistent Spark catalog, once per session. Returns the location."""
    from delta.tables import DeltaTable
    from pyspark.sql.types import StructType

    spec, path = catalog.table(name), catalog.table_path(name, cfg)
    key = (spark.sparkContext.applicationId, path)
    if key in _ENSURED and ("://" in path or Path(path, "_delta_log").is_dir()):
        return path
    wanted = StructType.fromDDL(spec.ddl())
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(wanted)
    if spec.partition_by:
        builder = builder.partitionedBy(*spec.partition_by)
    _add_missing_columns(spark, path, builder.execute().toDF().columns, wanted)
    spark.sql(f"CREATE TABLE IF NOT EXISTS {catalog.qualified_name(name, cfg)} USING DELTA LOCATION '{path}'")
    _ENSURED.add(key)
    return path


def register_existing(spark, cfg: dict) -> list[str]:
    """Register every catalog table that exists at its location as ``bundlecast.<name>``
    (for SQL by name: ``bundlecast sql``); tables not created yet are left out, nothing is
    written. Returns the names registered."""
    from delta.tables import DeltaTable

    names = []
    for name in catalog.tables():
        path = catalog.table_path(name, cfg)
        exists = Path(path, "_delta_log").is_dir() if "://" not in path else DeltaTable.isDeltaTable(spark, path)
        if exists:
            spark.sql(f"CREATE TABLE IF NOT EXISTS {catalog.qualified_name(name, cfg)} USING DELTA LOCATION '{path}'")
            names.append(name)
    return names


def _add_missing_columns(spark, path: str, have: list[str], wanted) -> None:
    """Additive schema evolution: a catalog column that an existing table lacks (a table
    written by an earlier release) is added, empty for the old rows. createIfNotExists keeps
    an existing table's schema as it is, so without this the first write would be refused.
    Removing or retyping a column is never done here: that needs a deliberate migration."""
    missing = [f for f in wanted.fields if f.name not in set(have)]
    if missing:
        columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
        spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})")
        log.warning("%s: added the catalog column(s) %s that the table lacked", path, [f.name for f in missing])


def catalog_frame(spark, name: str, rows):
    """A DataFrame with table ``name``'s catalog schema from ``rows`` (dicts or a pandas
    frame); ``dt`` may be given as an ISO string."""
    from pyspark.sql import functions as F

    spec = catalog.table(name)
    if hasattr(rows, "columns"):  # pandas
        rows = rows[[c.name for c in spec.columns]]
        dt_as_text = "dt" in rows.columns and len(rows) and isinstance(rows["dt"].iloc[0], str)
    else:
        rows = list(rows)
        dt_as_text = bool(rows) and isinstance(rows[0].get("dt"), str)
    if not dt_as_text:
        return spark.createDataFrame(rows, spec.ddl())
    frame = spark.createDataFrame(rows, spec.ddl().replace("`dt` date", "`dt` string"))
    return frame.withColumn("dt", F.col("dt").cast("date"))


def read_table(spark, name: str, cfg: dict):
    """The table as a DataFrame (created empty from the catalog if it does not exist yet)."""
    return spark.read.format("delta").load(ensure_table(spark, name, cfg))
