"""The one table layer: every step reads and writes catalog tables through it.

    tables = Tables(spark, cfg)
    events = tables.read("events")
    weights, day = tables.latest("relationship_weights", as_of="2026-11-20")
    tables.replace("offers", frame, dt="2026-11-20")           # write: replace
    tables.upsert("proactive_shipments", frame)                  # write: upsert

The write mode and the merge keys come from ``conf/base/catalog.yaml`` (``write``,
``keys``): ``replace`` overwrites the rows of the given partition values (the whole table
when none is given) in one commit; ``upsert`` merges on the table's keys in one commit.
Every write casts the frame to the catalog schema first. No step builds a MERGE
condition or a ``replaceWhere`` predicate by hand: :meth:`Tables.merge` gives the
catalog-keyed merge builder for the two state folds that need their own clauses.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import date, datetime

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.delta import ensure_table
from bundlecast.jobs.core.errors import BundlecastError, one_line

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 6  # a write that meets a concurrent commit is retried this many times in all


def committed(name: str, write, attempts: int = COMMIT_ATTEMPTS, pause: float = 0.5):
    """Run ``write()`` (one Delta commit), again when another writer committed to the same
    table in between in a way Delta's optimistic concurrency refuses (a concurrent append to
    the partition being replaced, a concurrent merge...). Every bundlecast write recomputes
    from the table's current state and is idempotent, so a retry gives the same rows as a
    write that never met the other one. After ``attempts`` it fails in one line."""
    import delta.exceptions as conflicts

    # Delta's Python classes of a refused commit do not share one base (captured ones
    # derive from their own class only): catch each.
    refused = tuple(getattr(conflicts, n) for n in (
        "DeltaConcurrentModificationException", "ConcurrentAppendException", "ConcurrentDeleteReadException",
        "ConcurrentDeleteDeleteException", "ConcurrentTransactionException", "ConcurrentWriteException",
        "MetadataChangedException", "ProtocolChangedException"))
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except refused as exc:
            if attempt == attempts:
                raise BundlecastError(f"{name}: gave up after {attempts} attempts: another run keeps committing to "
                                      f"the same rows ({one_line(exc)[:200]})") from None
            wait = pause * 2 ** (attempt - 1) * (1 + random.random())
            log.warning("%s: concurrent commit (%s); retrying in %.1f s", name, type(exc).__name__, wait)
            time.sleep(wait)


def sql_literal(value) -> str:
    """A Spark SQL literal for a partition value (strings quoted and escaped)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, datetime):
        return f"TIMESTAMP'{value.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE'{value.isoformat()}'"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def predicate(name: str, partition: dict) -> str | None:
    """``col = literal AND ...`` for the partition values of table ``name`` (a list gives
    ``IN``); date columns take ISO strings. None when there is no partition value."""
    spec = catalog.table(name)
    types = {c.name: c.type for c in spec.columns}
    parts = []
    for column, value in partition.items():
        if column not in types:
            raise BundlecastError(f"{name}: cannot scope a write on {column!r}: not a column of the table")

        def lit(v, column=column):
            if types[column] == "date" and isinstance(v, str):
                v = date.fromisoformat(v)
            return sql_literal(v)
        if isinstance(value, (list, tuple, set)):
            values = sorted(value)
            if not values:
                raise BundlecastError(f"{name}: empty value list for {column!r}")
            parts.append(f"`{column}` IN ({', '.join(lit(v) for v in values)})")
        else:
            parts.append(f"`{column}` = {lit(value)}")
    return " AND ".join(parts) or None


class Tables:
    """Catalog tables of one state directory for one Spark session."""

    def __init__(self, spark, cfg: dict):
        self.spark, self.cfg = spark, cfg

    # ----------------------------------------------------------------------------- reads
    def path(self, name: str) -> str:
        return ensure_table(self.spark, name, self.cfg)

    def read(self, name: str, version: int | None = None):
        """The table as a DataFrame (created empty from the catalog if it does not exist);
        ``version``: Delta time travel."""
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path(name))

    def pinned(self, name: str, dt: str, step: str, run_id: str = ""):
        """Table ``name`` as the first run of ``step`` for ``dt`` read it: that run pins the
        table's current Delta version in ``input_versions``; a re-run of the date reads the
        pinned version, so later changes by other runs (a reservation the same night's
        proactive step made after this step ran) do not change what the re-run writes."""
        from datetime import timezone

        from delta.tables import DeltaTable
        from pyspark.sql import functions as F

        pins = self.read("input_versions").filter(
            (F.col("dt") == F.lit(dt).cast("date")) & (F.col("step") == step) & (F.col("table_name") == name))
        row = pins.select("version").first()
        if row is not None:
            return self.read(name, version=int(row["version"]))
        version = int(DeltaTable.forPath(self.spark, self.path(name)).history(1).select("version").first()[0])
        self.upsert("input_versions", self.frame("input_versions", [{
            "dt": dt, "step": step, "table_name": name, "version": version, "run_id": run_id,
            "pinned_at": datetime.now(timezone.utc).replace(tzinfo=None)}]), update=False)
        return self.read(name, version=version)

    def has_rows(self, name: str, **partition) -> bool:
        """Whether the table holds any row matching ``partition`` (as in :meth:`replace`)."""
        frame = self.read(name)
        where = predicate(name, partition)
        return (frame.where(where) if where is not None else frame).limit(1).count() > 0

    def latest(self, name: str, as_of: str, column: str = "dt"):
        """(rows of the latest ``column`` on or before ``as_of``, that day) of a table
        written once per run date; (empty frame, None) when there is none yet."""
        from pyspark.sql import functions as F

        rows = self.read(name).filter(F.col(column) <= F.lit(as_of).cast("date"))
        day = rows.agg(F.max(column)).first()[0]
        if day is None:
            return rows.limit(0), None
        return rows.filter(F.col(column) == F.lit(day)), day

    def frame(self, name: str, rows):
        """A DataFrame with table ``name``'s catalog schema from dicts or a pandas frame
        (an empty one when there are no rows)."""
        from bundlecast.jobs.core.delta import catalog_frame

        if rows is None or not len(rows):
            return self.spark.createDataFrame([], catalog.table(name).ddl())
        return catalog_frame(self.spark, name, rows)

    # ---------------------------------------------------------------------------- writes
    def _typed(self, name: str, df):
        from pyspark.sql import functions as F

        return df.select(*[F.col(f"`{c.name}`").cast(c.spark_type).alias(c.name) for c in catalog.table(name).columns])

    @staticmethod
    def mode(name: str) -> str:
        """The catalog's write mode of ``name``: ``replace`` or ``upsert``."""
        return catalog.table(name).write

    def _mode(self, name: str, wanted: str) -> None:
        mode = catalog.table(name).write
        if mode != wanted:
            raise BundlecastError(f"{name}: the catalog says write: {mode}, not {wanted}")

    def replace(self, name: str, df, **partition) -> None:
        """Overwrite the rows matching ``partition`` (``dt="2026-11-20"``, ``dataset=[...]``;
        the whole table when empty) with ``df``, in one commit."""
        self._mode(name, "replace")
        writer = self._typed(name, df).write.format("delta").mode("overwrite")
        where = predicate(name, partition)
        if where is not None:
            writer = writer.option("replaceWhere", where)
        path = self.path(name)
        committed(name, lambda: writer.save(path))

    def upsert(self, name: str, df, update: bool = True, rewrite: bool = False) -> None:
        """Merge ``df`` into the table on its catalog keys in one commit: matched rows are
        updated (``update=False``: kept as they are, an insert-only outbox), new rows inserted.

        ``rewrite=True`` gives the same rows by rewriting the whole table as its rows whose
        key is not in ``df`` plus ``df`` (one read, one overwrite commit). For a small table
        that a drop touches all over (a dimension: every file holds some updated key) it
        costs about half a MERGE, which plans and runs a join pass before its rewrite pass.
        ``df`` must hold each key once (as MERGE requires)."""
        self._mode(name, "upsert")
        if rewrite:
            if not update:
                raise BundlecastError(f"{name}: an insert-only upsert cannot rewrite the table")
            new = self._typed(name, df)
            keys = catalog.table(name).keys

            def rewrite_table():
                old = self.read(name)
                kept = old.join(new.select(*keys), [old[f"`{k}`"].eqNullSafe(new[f"`{k}`"]) for k in keys],
                                "left_anti")
                kept.unionByName(new).write.format("delta").mode("overwrite").save(self.path(name))
            committed(name, rewrite_table)
            return

        def merge():
            builder = self.merge(name, self._typed(name, df))
            if update:
                builder = builder.whenMatchedUpdateAll()
            builder.whenNotMatchedInsertAll().execute()
        committed(name, merge)

    def merge(self, name: str, source):
        """A Delta merge builder of ``source`` (alias ``s``) into the table (alias ``t``) on
        the table's catalog keys, for folds that need their own clauses."""
        from delta.tables import DeltaTable

        return (DeltaTable.forPath(self.spark, self.path(name)).alias("t")
                .merge(source.alias("s"), merge_condition(name)))


def merge_condition(name: str) -> str:
    """Null-safe equality on every catalog key of ``name``."""
    keys = catalog.table(name).keys
    if not keys:
        raise BundlecastError(f"{name}: no keys in the catalog, cannot merge")
    return " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
