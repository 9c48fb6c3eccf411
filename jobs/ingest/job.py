"""The ingest step's run (see the package docstring)."""
from __future__ import annotations

import csv
import json
import logging
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.catalog import DatasetSpec
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.delta import ensure_table, replace_rows
from bundlecast.jobs.core.errors import BundlecastError, DataQualityError

log = logging.getLogger("bundlecast.ingest")
FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
CORRUPT = "_corrupt_record"
ZONE_PATTERN = r"(Z|[+-][0-9]{2}:?[0-9]{2})$"


@dataclass
class RawFile:
    path: str
    size_bytes: int
    format: str | None
    unreadable: str | None = None  # reason, when the file cannot be read at all


@dataclass
class AuditRow:
    dataset: str
    dt: str
    run_id: str
    files_read: int
    files_quarantined: int
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    duplicates_dropped: int
    quarantine_share: float
    top_reasons: str
    expectations_passed: bool
    status: str

    def balanced(self) -> bool:
        return self.rows_read == self.rows_accepted + self.rows_quarantined + self.duplicates_dropped


# ---------------------------------------------------------------------------------- extract
def list_raw_files(raw_root: str, dataset: str, dt: str) -> list[RawFile]:
    """Every file landed for (dataset, dt), each probed so an unreadable one is caught here."""
    folder = Path(raw_root) / dataset / f"dt={dt}"
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))):
        fmt = FORMATS.get(path.suffix.lower())
        raw = RawFile(str(path), path.stat().st_size, fmt)
        if fmt is None:
            raw.unreadable = f"unsupported file format {path.suffix or '(no extension)'}: expected .jsonl, .csv or .parquet"
        elif fmt == "parquet":
            import pyarrow.parquet as pq
            try:
                pq.read_schema(path)
            except Exception as exc:  # truncated or not Parquet at all
                raw.unreadable = f"not a readable Parquet file: {str(exc).splitlines()[0][:200]}"
        elif fmt == "csv":
            try:
                with open(path, newline="", encoding="utf-8") as fh:
                    header = next(csv.reader(fh), None)
                if not header:
                    raw.unreadable = "CSV file has no header row"
            except UnicodeDecodeError:
                raw.unreadable = "CSV file is not UTF-8 text"
        files.append(raw)
    return files


def _string_schema(columns: list[str]):
    from pyspark.sql.types import StringType, StructField, StructType
    return StructType([StructField(c, StringType(), True) for c in columns] + [StructField(CORRUPT, StringType(), True)])


def read_raw(spark, files: list[RawFile], spec: DatasetSpec):
    """Read the readable files as all-string columns named as in the contract, plus
    ``_source_file`` and ``_corrupt_record`` (the raw text of a line that could not be parsed)."""
    from pyspark.sql import functions as F

    wanted = spec.column_names
    frames = []
    json_files = [f.path for f in files if f.format == "json" and not f.unreadable]
    if json_files:
        frames.append(spark.read.schema(_string_schema(wanted)).option("mode", "PERMISSIVE")
                      .option("columnNameOfCorruptRecord", CORRUPT).json(json_files)
                      .withColumn("_source_file", F.col("_metadata.file_path")))
    csv_by_header: dict[tuple, list[str]] = {}
    for f in files:
        if f.format == "csv" and not f.unreadable:
            with open(f.path, newline="", encoding="utf-8") as fh:
                header = tuple(h.strip().lower() for h in next(csv.reader(fh)))
            csv_by_header.setdefault(header, []).append(f.path)
    for header, paths in csv_by_header.items():
        frame = (spark.read.schema(_string_schema(list(header))).option("header", True)
                 .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
                 .option("enforceSchema", True).csv(paths)
                 .withColumn("_source_file", F.col("_metadata.file_path")))
        frames.append(frame.select(*[F.col(f"`{c}`") if c in header else F.lit(None).cast("string").alias(c)
                                     for c in wanted], CORRUPT, "_source_file"))
    for f in files:
        if f.format == "parquet" and not f.unreadable:
            frame = spark.read.parquet(f.path)
            types = dict(frame.dtypes)
            cols = []
            for c in wanted:
                if c not in types:
                    cols.append(F.lit(None).cast("string").alias(c))
                elif types[c].startswith("timestamp"):
                    cols.append(F.date_format(F.col(c), "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias(c))
                else:
                    cols.append(F.col(c).cast("string").alias(c))
            frames.append(frame.select(*cols, F.lit(None).cast("string").alias(CORRUPT),
                                       F.col("_metadata.file_path").alias("_source_file")))
    if not frames:
        return None
    result = frames[0]
    for frame in frames[1:]:
        result = result.unionByName(frame)
    return result.select(*wanted, CORRUPT, "_source_file")


# -------------------------------------------------------------------------------- transform
def _typed(column, raw):
    """(typed value, cast-failure condition) for one contract column over its raw string."""
    from pyspark.sql import functions as F

    value = F.when(F.trim(raw) == "", F.lit(None)).otherwise(F.trim(raw))
    if column.type == "boolean":
        lowered = F.lower(value)
        typed = F.when(lowered.isin("true", "1"), F.lit(True)).when(lowered.isin("false", "0"), F.lit(False))
    elif column.type == "timestamp":
        typed = F.when(value.rlike(ZONE_PATTERN), value.try_cast("timestamp"))
    elif column.type in ("int", "long"):
        # "3.0" is accepted as 3, "3.5" is not an integer.
        as_double = value.try_cast("double")
        typed = F.when(as_double == F.floor(as_double), as_double.try_cast(column.spark_type))
    else:
        typed = value.try_cast(column.spark_type)
    return value, typed


def validate(raw, spec: DatasetSpec, references: dict | None = None):
    """Pure transform: raw all-string rows -> typed rows with ``_reasons`` (empty when valid).

    ``references`` maps a contract reference reason (``unknown:site_id+item_id``) to a
    DataFrame of the referenced keys (named as this dataset's columns). Keeps ``record``
    (the raw row as JSON, or the unparsable text) for the quarantine.
    """
    from pyspark.sql import functions as F

    checks, typed_cols = [], []
    corrupt = F.col(CORRUPT).isNotNull()
    for c in spec.columns:
        value, typed = _typed(c, F.col(f"`{c.name}`"))
        typed_cols.append(typed.alias(c.name))
        if c.required:
            checks.append((value.isNull(), f"missing:{c.name}"))
        bad_reason = f"bad_type:{c.name}"
        if c.type == "timestamp":
            checks.append((value.isNotNull() & ~value.rlike(ZONE_PATTERN), f"timestamp_without_zone:{c.name}"))
            checks.append((value.isNotNull() & value.rlike(ZONE_PATTERN) & typed.isNull(), bad_reason))
        else:
            checks.append((value.isNotNull() & typed.isNull(), bad_reason))
        if c.min is not None:
            checks.append((typed < F.lit(c.min), f"below_min:{c.name}"))
        if c.max is not None:
            checks.append((typed > F.lit(c.max), f"above_max:{c.name}"))
        if c.allowed:
            checks.append((value.isNotNull() & ~value.isin(*c.allowed), f"not_allowed:{c.name}"))
    record = F.coalesce(F.col(CORRUPT), F.to_json(F.struct(*[F.col(f"`{c}`") for c in spec.column_names])))
    reasons = F.when(corrupt, F.array(F.lit("malformed_record"))).otherwise(
        F.array_compact(F.array(*[F.when(cond, F.lit(reason)) for cond, reason in checks])))
    out = raw.select(*typed_cols, "_source_file", record.alias("record"), reasons.alias("_reasons"))
    for ref in spec.refs:
        keys = (references or {}).get(ref.reason)
        if keys is None:
            continue
        flag = f"_ref_{'_'.join(ref.columns)}"
        known = keys.select(*ref.columns).dropDuplicates().withColumn(flag, F.lit(True))
        out = out.join(known, on=list(ref.columns), how="left")
        present = F.lit(True)
        for col in ref.columns:
            present = present & F.col(col).isNotNull()
        orphan = present & F.col(flag).isNull() & ~F.array_contains("_reasons", "malformed_record")
        out = (out.withColumn("_reasons", F.when(orphan, F.array_append("_reasons", F.lit(ref.reason)))
                              .otherwise(F.col("_reasons")))
               .drop(flag))
    # The raw text is only kept where it is needed (quarantined rows): for a valid row it
    # would double the size of what ingestion holds.
    out = out.withColumn("record", F.when(F.size("_reasons") > 0, F.col("record")))
    return out.select(*spec.column_names, "_source_file", "record", "_reasons")


def deduplicate(valid, keys: list[str]):
    """Keep one row per natural key: the one from the last file in landing order, and
    within a file the last line (``_row_id`` order, when present)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tiebreak = F.col(ROW_ID).desc() if ROW_ID in valid.columns else F.col("record").desc()
    order = Window.partitionBy(*keys).orderBy(F.col("_source_file").desc(), tiebreak)
    return valid.withColumn("_n", F.row_number().over(order)).filter("_n = 1").drop("_n")


def top_reasons(counter: Counter, n: int = 5) -> list[tuple[str, int]]:
    return counter.most_common(n)


def threshold_message(dataset: str, quarantined: int, read: int, threshold: float, reasons: list) -> str:
    listed = ", ".join(f"{r} ({n})" for r, n in reasons) or "none"
    return (f"{dataset}: {quarantined} of {read} rows quarantined ({quarantined / max(read, 1):.1%} > "
            f"{threshold:.1%} threshold); top reasons: {listed}")


# ------------------------------------------------------------------------------------- load
def write_silver(spark, df, spec: DatasetSpec, dt: str, cfg: dict) -> None:
    from delta.tables import DeltaTable

    path = ensure_table(spark, spec.name, cfg)
    if spec.load == "merge":
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in spec.keys)
        (DeltaTable.forPath(spark, path).alias("t").merge(df.alias("s"), condition)
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    else:
        (df.write.format("delta").mode("overwrite").option("replaceWhere", f"dt = DATE'{dt}'").save(path))


def write_quarantine(spark, rows, dataset: str, dt: str, cfg: dict) -> None:
    """Replace the (dataset, dt) partition of ``quarantine`` with this run's rejected rows."""
    if rows is None:
        rows = spark.createDataFrame([], catalog.table("quarantine").ddl())
    replace_rows(spark, rows, "quarantine", f"dataset = '{dataset}' AND dt = DATE'{dt}'", cfg)


def write_ops(spark, bad_files: list[dict], audit: list[AuditRow], dt: str, cfg: dict) -> None:
    """Unreadable files and the audit rows, each replacing the run's (dataset, dt)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    names = ", ".join(f"'{a.dataset}'" for a in audit)
    scope = f"dataset IN ({names}) AND dt = DATE'{dt}'"
    f_path = ensure_table(spark, "quarantine_files", cfg)
    f_schema = catalog.table("quarantine_files").ddl()
    files_df = spark.createDataFrame(bad_files, f_schema.replace("`dt` date", "`dt` string")) \
        .withColumn("dt", F.col("dt").cast("date")).select(*[c.name for c in catalog.table("quarantine_files").columns])
    files_df.write.format("delta").mode("overwrite").option("replaceWhere", scope).save(f_path)
    a_path = ensure_table(spark, "ingestion_audit", cfg)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    audit_df = (spark.createDataFrame([{**asdict(a), "ingested_at": now} for a in audit])
                .withColumn("dt", F.col("dt").cast("date"))
                .withColumn("files_read", F.col("files_read").cast("int"))
                .withColumn("files_quarantined", F.col("files_quarantined").cast("int"))
                .select(*[c.name for c in catalog.table("ingestion_audit").columns]))
    (DeltaTable.forPath(spark, a_path).alias("t")
     .merge(audit_df.alias("s"), "t.dataset = s.dataset AND t.dt = s.dt")
     .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())


# ------------------------------------------------------------------------------------- main
_VALID, _REJECTED = "\x00valid", "\x00rejected"


def tally(checked) -> tuple[int, int, Counter]:
    """(valid rows, rejected rows, rows per reason) of validated rows, in one pass."""
    from pyspark.sql import functions as F

    tags = F.when(F.size("_reasons") == 0, F.array(F.lit(_VALID))) \
        .otherwise(F.array_append("_reasons", F.lit(_REJECTED)))
    counts = Counter({r["tag"]: r["count"] for r in
                      checked.select(F.explode(tags).alias("tag")).groupBy("tag").count().collect()})
    return counts.pop(_VALID, 0), counts.pop(_REJECTED, 0), counts


def _references(spark, spec: DatasetSpec, cfg: dict) -> dict:
    from pyspark.sql import functions as F

    references = {}
    for ref in spec.refs:
        try:
            keys = spark.read.format("delta").load(catalog.table_path(ref.dataset, cfg)).select(
                *[F.col(rc).alias(c) for rc, c in zip(ref.ref_columns, ref.columns)])
        except Exception:
            raise BundlecastError(f"{spec.name}: referenced table {ref.dataset} does not exist yet; "
                                  f"ingest {ref.dataset} first") from None
        references[ref.reason] = keys
    return references


def ingest_dataset(spark, spec: DatasetSpec, dt: str, run_id: str, cfg: dict, gx_root: str | None):
    """Ingest one dataset's drop: writes its silver rows (unless over the quarantine
    threshold) and its quarantine rows. Returns (audit row, unreadable files, error message).

    Cost: the raw files are parsed and validated once into one cached copy; the counts
    come from one aggregate over it; the de-duplicated rows are cached for the suite and
    the write. Both caches are released before the next dataset.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    files = list_raw_files(cfg["storage"]["raw"], spec.name, dt)
    bad_files = [dict(dataset=spec.name, dt=dt, run_id=run_id, source_file=f.path, size_bytes=f.size_bytes,
                      reason=f.unreadable) for f in files if f.unreadable]
    raw = read_raw(spark, files, spec)
    if raw is None:
        write_quarantine(spark, None, spec.name, dt, cfg)
        audit = AuditRow(spec.name, dt, run_id, len(files), len(bad_files), 0, 0, 0, 0, 0.0, "{}", True,
                         "empty" if not files else "ok")
        return audit, bad_files, None
    checked = validate(raw, spec, _references(spark, spec, cfg)) \
        .withColumn(ROW_ID, F.monotonically_increasing_id()).persist(StorageLevel.MEMORY_AND_DISK)
    deduped = None
    try:
        n_valid, n_rejected, reasons = tally(checked)
        rows_read = n_valid + n_rejected
        deduped = deduplicate(checked.filter(F.size("_reasons") == 0), list(spec.keys)) \
            .persist(StorageLevel.MEMORY_AND_DISK)
        n_unique = deduped.count() if n_valid else 0
        suite_ok, flagged = True, {}
        if gx_root and n_unique:
            result = run_suite(deduped.select(*spec.column_names, ROW_ID), spec.name, gx_root)
            suite_ok, flagged = result.success, result.flagged
        rejected = checked.filter(F.size("_reasons") > 0)
        accepted = deduped
        if flagged:
            for row_reasons in flagged.values():
                reasons.update(row_reasons)
            flags = spark.createDataFrame(list(flagged.items()), f"{ROW_ID} long, _gx array<string>")
            marked = deduped.join(F.broadcast(flags), ROW_ID, "left")
            record = F.to_json(F.struct(*[F.col(f"`{c}`") for c in spec.column_names]))
            rejected = rejected.unionByName(marked.filter(F.col("_gx").isNotNull())
                                            .withColumn("_reasons", F.col("_gx")).withColumn("record", record)
                                            .drop("_gx"))
            accepted = marked.filter(F.col("_gx").isNull()).drop("_gx")
        n_quarantined = n_rejected + len(flagged)
        share = n_quarantined / rows_read if rows_read else 0.0
        threshold = float(cfg["ingestion"]["quarantine_threshold"])
        failed = share > threshold
        # rows_accepted counts rows that passed; status says whether they were published.
        audit = AuditRow(spec.name, dt, run_id, len(files), len(bad_files), rows_read, n_unique - len(flagged),
                         n_quarantined, n_valid - n_unique, round(share, 6),
                         json.dumps(dict(top_reasons(reasons, 10))), suite_ok,
                         "failed_threshold" if failed else "ok")
        if not audit.balanced():
            raise BundlecastError(f"{spec.name}: accounting does not add up: {asdict(audit)}")
        error = None
        if failed:
            # Not published: the passing rows stay out of silver until the drop is fixed
            # (the raw files stay in place, so nothing is lost).
            error = threshold_message(spec.name, n_quarantined, rows_read, threshold, top_reasons(reasons))
        else:
            write_silver(spark, accepted.select(*spec.column_names, F.lit(dt).cast("date").alias("dt"),
                                                "_source_file"), spec, dt, cfg)
        write_quarantine(spark, rejected.select(F.lit(spec.name).alias("dataset"), F.lit(dt).alias("dt"),
                                                F.lit(run_id).alias("run_id"), "_source_file", "record",
                                                F.col("_reasons").alias("reasons")), spec.name, dt, cfg)
        return audit, bad_files, error
    finally:
        checked.unpersist()
        if deduped is not None:
            deduped.unpersist()


def run(spark, dt: str, datasets: list[str] | None = None, run_id: str | None = None,
        cfg: dict | None = None, with_expectations: bool = True, progress=print) -> list[AuditRow]:
    """Ingest the given datasets (default: all, in contract order) for landing date ``dt``."""
    cfg = cfg or config()
    run_id = run_id or f"ingest-{dt}-{uuid.uuid4().hex[:8]}"
    specs = list(catalog.datasets().values())
    if datasets:
        unknown = set(datasets) - {s.name for s in specs}
        if unknown:
            raise BundlecastError(f"unknown dataset(s) {sorted(unknown)}: expected some of {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in datasets]
    gx_root = cfg["quality"]["gx_project"] if with_expectations else None
    audits, bad_files, errors = [], [], []
    for spec in specs:
        audit, files, error = ingest_dataset(spark, spec, dt, run_id, cfg, gx_root)
        progress(f"{spec.name:18s} read {audit.rows_read:>10,}  accepted {audit.rows_accepted:>10,}  "
                 f"quarantined {audit.rows_quarantined:>8,}  duplicates {audit.duplicates_dropped:>6,}  "
                 f"bad files {audit.files_quarantined}")
        audits.append(audit)
        bad_files.extend(files)
        if error:
            errors.append(error)
    write_ops(spark, bad_files, audits, dt, cfg)
    if errors:
        raise DataQualityError("; ".join(errors))
    return audits


from bundlecast.jobs.ingest.quality import ROW_ID, run_suite  # noqa: E402  (after the definitions it does not need)
