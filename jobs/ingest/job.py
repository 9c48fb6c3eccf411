"""The ingest step's run: each dataset's drop read, validated, accounted for and written."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.catalog import DatasetSpec
from bundlecast.jobs.core.config import config, truthy
from bundlecast.jobs.core.errors import BundlecastError, DataQualityError, one_line
from bundlecast.jobs.core.runs import StepRun, record, utc_now
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.ingest.extract import LINE, RAW, RAW_TEXT, SOURCE, list_raw_files, read_files, read_raw
from bundlecast.jobs.ingest.load import quarantined_datasets, write_ops, write_quarantine, write_silver
from bundlecast.jobs.ingest.quality import ROW_ID, build_data_docs, run_suite, suite_path
from bundlecast.jobs.ingest.transform import (
    AuditRow,
    deduplicate,
    quarantine_record,
    tally,
    threshold_message,
    top_reasons,
    validate,
)

__all__ = ["deduplicate", "list_raw_files", "read_raw", "run", "validate"]


def _references(spark, spec: DatasetSpec, cfg: dict) -> dict:
    from pyspark.sql import functions as F

    references = {}
    required = {c.name for c in spec.columns if c.required}
    for ref in spec.refs:
        try:
            keys = spark.read.format("delta").load(catalog.table_path(ref.dataset, cfg)).select(
                *[F.col(rc).alias(c) for rc, c in zip(ref.ref_columns, ref.columns)])
        except Exception:
            if required & set(ref.columns):
                raise BundlecastError(f"{spec.name}: referenced table {ref.dataset} does not exist yet; "
                                      f"ingest {ref.dataset} first") from None
            # An optional reference to a dataset never landed: every value given is unknown.
            keys = spark.createDataFrame([], ", ".join(f"`{c}` string" for c in ref.columns))
        references[ref.reason] = keys
    return references


def ingest_dataset(spark, spec: DatasetSpec, dt: str, run_id: str, cfg: dict, gx_root: str | None,
                   stale_quarantine: bool, until: str | None = None, deferred: dict | None = None):
    """Ingest one dataset's drop: writes its silver rows (unless over the quarantine
    threshold) and its quarantine rows. Returns (audit row, refused files, error message).
    ``stale_quarantine``: whether ``quarantine`` holds rows of this dataset and date from an
    earlier run (``quarantined_datasets``). ``until`` (an hourly run's cut-off, ISO time):
    rows dated at or after it (``event_time``, or their parent's through ``event_time_of``)
    are deferred to a later run, counted, not quarantined; ``deferred`` collects the keys of
    this run's deferred rows per dataset for the datasets dated through them.

    Order: every file parsed on its own, every record checked against the contract and the
    expectation suite, and only then the valid rows de-duplicated, so a bad row never
    displaces a good one. Cost: each file is parsed in the driver and staged as Parquet
    (in the run's staging folder under ``BUNDLECAST_HOME``, removed afterwards), so only one file's records
    are ever in Python; the validated records are cached once; the counts come from one
    aggregate over them; the de-duplicated rows are cached for the write.
    """
    staging = staging_root(cfg, run_id) / spec.name
    shutil.rmtree(staging, ignore_errors=True)
    try:
        return _ingest_files(spark, spec, dt, run_id, cfg, gx_root, staging, stale_quarantine, until,
                             deferred if deferred is not None else {})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def staging_root(cfg: dict, run_id: str) -> Path:
    """Where a run stages its parsed records: a path-safe name (Airflow run ids hold ':' and '+')."""
    return Path(cfg["home"]) / "work" / "ingest" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


def defer_after(checked, spec: DatasetSpec, until: str | None, deferred: dict):
    """(rows to judge now, deferred rows or None): with a cut-off, the rows dated at or after
    ``until``, by their own ``event_time`` or through their parent's deferred keys
    (``deferred[parent]``, a frame of the parent's key columns)."""
    from pyspark.sql import functions as F

    if not until:
        return checked, None
    if spec.event_time:
        late = F.col(spec.event_time) >= F.lit(until).cast("timestamp")
        return checked.filter(~late | F.col(spec.event_time).isNull()), checked.filter(late)
    ref = spec.timed_by
    if ref is None:
        return checked, None
    if spec.event_time_of not in deferred:
        raise BundlecastError(f"{spec.name}: a cut-off (--until) needs {spec.event_time_of} in the same run "
                              f"({spec.name} rows are dated by theirs)")
    keys = deferred[spec.event_time_of].select(*[F.col(rc).alias(c) for rc, c in zip(ref.ref_columns, ref.columns)])
    keys = F.broadcast(keys.distinct().withColumn("_late", F.lit(True)))
    marked = checked.join(keys, list(ref.columns), "left")
    return (marked.filter(F.col("_late").isNull()).drop("_late"),
            marked.filter(F.col("_late").isNotNull()).drop("_late"))


def _ingest_files(spark, spec: DatasetSpec, dt: str, run_id: str, cfg: dict, gx_root: str | None, staging: Path,
                  stale_quarantine: bool, until: str | None, deferred: dict):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    tables = Tables(spark, cfg)
    bounds = catalog.limits()
    files = read_files(list_raw_files(cfg["storage"]["raw"], spec.name, dt), spec, bounds.encoding, staging)
    bad_files = [dict(dataset=spec.name, dt=dt, run_id=run_id, source_file=f.path, size_bytes=f.size_bytes,
                      reason=f.unreadable) for f in files if f.unreadable]
    records = sum(f.rows for f in files)
    raw = read_raw(spark, files)
    if raw is None:
        write_quarantine(tables, None, spec.name, dt, stale_quarantine)
        audit = AuditRow(spec.name, dt, run_id, len(files), len(bad_files), 0, 0, 0, 0, 0.0, "{}", True,
                         "empty" if not files else "ok")
        return audit, bad_files, None
    # The records' bytes stay out of the cached, validated rows: only quarantined rows need
    # them, joined back by (file, line) when the quarantine is written.
    judged = validate(raw.drop(RAW, RAW_TEXT), spec, dt, _references(spark, spec, cfg), bounds) \
        .withColumn(ROW_ID, F.monotonically_increasing_id()).persist(StorageLevel.MEMORY_AND_DISK)
    checked, late = defer_after(judged, spec, until, deferred)
    deduped = None
    try:
        n_deferred = 0
        if late is not None:
            late_keys = late.select(*spec.keys).localCheckpoint()
            n_deferred = late_keys.count()
            deferred[spec.name] = late_keys
        n_valid, n_rejected, reasons = tally(checked)
        rows_read = n_valid + n_rejected + n_deferred
        if rows_read != records:
            raise BundlecastError(f"{spec.name}: {records} records parsed but {rows_read} validated or deferred")
        valid = checked.filter(F.size("_reasons") == 0)
        suite_ok, flagged, blind = True, {}, []
        if gx_root and n_valid:
            result = run_suite(valid.select(*spec.column_names, ROW_ID), spec.name, gx_root, build_docs=False)
            suite_ok, flagged, blind = result.success, result.flagged, result.unattributed
        if blind:
            raise BundlecastError(f"{spec.name}: expectation(s) {', '.join(sorted(set(blind)))} failed without naming "
                                  "their rows; not published (fix the suite or the drop)")
        for row_reasons in flagged.values():
            reasons.update(row_reasons)
        passed, rejected = split_flagged(valid, checked.filter(F.size("_reasons") > 0), flagged)
        deduped = deduplicate(passed, list(spec.keys)).persist(StorageLevel.MEMORY_AND_DISK)
        n_unique = deduped.count() if n_valid > len(flagged) else 0
        n_quarantined = n_rejected + len(flagged)
        judged_now = rows_read - n_deferred
        share = n_quarantined / judged_now if judged_now else 0.0
        threshold = float(cfg["ingestion"]["quarantine_threshold"])
        failed = share > threshold
        # rows_accepted counts rows that passed; status says whether they were published.
        audit = AuditRow(spec.name, dt, run_id, len(files), len(bad_files), rows_read, n_unique,
                         n_quarantined, n_valid - len(flagged) - n_unique, round(share, 6),
                         json.dumps(dict(top_reasons(reasons, 10))), suite_ok,
                         "failed_threshold" if failed else "ok", rows_deferred=n_deferred)
        if not audit.balanced():
            raise BundlecastError(f"{spec.name}: accounting does not add up: {asdict(audit)}")
        quarantined = None  # nothing rejected: write_quarantine makes no commit unless stale rows need clearing
        if n_quarantined:
            quarantined = (rejected.join(raw.select(SOURCE, LINE, RAW, RAW_TEXT), [SOURCE, LINE], "left")
                           .select(F.lit(spec.name).alias("dataset"), F.lit(dt).alias("dt"),
                                   F.lit(run_id).alias("run_id"), SOURCE, F.col(LINE).alias("line"),
                                   *quarantine_record(), F.col("_reasons").alias("reasons")))
        write_quarantine(tables, quarantined, spec.name, dt, stale_quarantine)
        if failed:
            # Not published: the passing rows stay out of silver until the drop is fixed
            # (the raw files stay in place, so nothing is lost).
            return audit, bad_files, threshold_message(spec.name, n_quarantined, rows_read, threshold,
                                                       top_reasons(reasons))
        write_silver(tables, deduped.select(*spec.column_names, F.lit(dt).cast("date").alias("dt"), SOURCE), spec, dt)
        return audit, bad_files, None
    finally:
        judged.unpersist()
        if deduped is not None:
            deduped.unpersist()


def failed_audit(spec: DatasetSpec, dt: str, run_id: str, message: str) -> AuditRow:
    """The audit row of a dataset whose ingestion stopped on an error: nothing published."""
    return AuditRow(spec.name, dt, run_id, 0, 0, 0, 0, 0, 0, 0.0, json.dumps({"error": message}), False, "error")


def run(spark, dt: str, datasets: list[str] | None = None, run_id: str | None = None,
        cfg: dict | None = None, with_expectations: bool = True, skip_unchanged: bool = True,
        progress=print, until: str | None = None) -> list[AuditRow]:
    """Ingest the given datasets (default: all, in contract order) for landing date ``dt``.

    A dataset whose landing digest (:func:`landing_digests`) equals the one its last ok run
    for ``dt`` recorded is skipped (``ingestion.skip_unchanged``; ``skip_unchanged=False``,
    ``--reingest`` on the command line, reads it anyway): its tables already hold exactly
    what a re-run would write.

    ``until`` (the hourly DAG passes the end of its data interval): rows dated at or after it
    are left for a later run (``rows_deferred`` in the audit), so a retried or late hourly
    run reads exactly the rows of its own interval."""
    cfg = cfg or config()
    until = cut_off(until)
    tables = Tables(spark, cfg)
    summary = StepRun("ingest", dt, run_id or f"ingest-{dt}-{uuid.uuid4().hex[:8]}")
    run_id = summary.run_id
    contract = list(catalog.datasets().values())
    specs = contract
    if datasets:
        unknown = set(datasets) - {s.name for s in specs}
        if unknown:
            raise BundlecastError(f"unknown dataset(s) {sorted(unknown)}: expected some of {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in datasets]
    gx_root = cfg["quality"]["gx_project"] if with_expectations else None
    digests = landing_digests(contract, dt, cfg, with_expectations, until)
    unchanged = {}
    if skip_unchanged and truthy(cfg["ingestion"].get("skip_unchanged", True)):
        unchanged = unchanged_datasets(tables, dt, {s.name: digests[s.name] for s in specs})
        if until:  # a dataset dated through its parent needs the parent's deferred rows of this run
            for spec in specs:
                if spec.name not in unchanged and spec.event_time_of:
                    unchanged.pop(spec.event_time_of, None)
    for spec in specs:
        if spec.name in unchanged:
            progress(f"{spec.name:18s} unchanged since run {unchanged[spec.name]}: skipped")
    specs = [s for s in specs if s.name not in unchanged]
    summary.counts["datasets_skipped_unchanged"] = len(unchanged)
    summary.labels["skipped_unchanged"] = ",".join(sorted(unchanged))
    workers = max(1, int(cfg["ingestion"].get("parallel_datasets", 1)))
    stale = quarantined_datasets(tables, dt) if specs else set()
    results = ingest_all(spark, specs, dt, run_id, cfg, gx_root, workers, stale, progress, until)
    audits = [audit for audit, _, _ in results]
    for audit in audits:
        audit.landing_digest = digests[audit.dataset]
    bad_files = [f for _, files, _ in results for f in files]
    errors = [error for _, _, error in results if error]
    shutil.rmtree(staging_root(cfg, run_id), ignore_errors=True)
    if gx_root and specs:
        build_data_docs(gx_root)
    if audits:
        write_ops(tables, bad_files, audits, dt, utc_now())
    for a in audits:
        summary.counts.update({"files_read": a.files_read, "files_quarantined": a.files_quarantined,
                               "rows_read": a.rows_read, "rows_accepted": a.rows_accepted,
                               "rows_quarantined": a.rows_quarantined, "duplicates_dropped": a.duplicates_dropped,
                               "rows_deferred": a.rows_deferred})
    if until:
        summary.labels["until"] = until
    summary.labels["datasets"] = ",".join(a.dataset for a in audits)
    summary.notes.extend(errors)
    record(tables, summary.finish())
    if errors:
        raise DataQualityError("; ".join(errors))
    return audits


HOW_NOT_WHAT = ("parallel_datasets", "skip_unchanged")


def cut_off(until: str | None) -> str | None:
    """An hourly cut-off as UTC ISO text; refused in one line unless it is a time with a zone."""
    from datetime import datetime, timezone

    if not until:
        return None
    try:
        moment = datetime.fromisoformat(str(until))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BundlecastError(f"--until must be a time with its zone (2026-11-21T13:15:00+00:00), not {str(until)[:40]!r}")
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def landing_digests(specs: list[DatasetSpec], dt: str, cfg: dict, with_expectations: bool,
                    until: str | None = None) -> dict[str, str]:
    """Per dataset (``specs``: the whole contract, in its order), a digest of everything its
    ingestion for ``dt`` depends on: each landed file's name, size and modification time (a
    file rewritten in place changes its time), the dataset's contract entry and bounds, its
    expectation suite, the ingestion settings, and the digests of the datasets it references
    (new users can turn quarantined orders valid). Costs one directory listing per dataset."""
    # Every ingestion setting but those that only decide how the run goes (a new setting counts
    # until it is listed here: a needless re-read is cheap, a wrong skip is not).
    rules = {k: v for k, v in cfg["ingestion"].items() if k not in HOW_NOT_WHAT}
    settings = json.dumps({"ingestion": rules, "expectations": with_expectations,
                           "limits": repr(catalog.limits())}, sort_keys=True, default=str)
    digests: dict[str, str] = {}
    for spec in specs:
        h = hashlib.sha256(settings.encode())
        h.update(repr(spec).encode())
        suite = suite_path(spec.name)
        h.update(suite.read_bytes() if with_expectations and suite.exists() else b"-")
        for path in list_raw_files(cfg["storage"]["raw"], spec.name, dt):
            st = path.stat()
            h.update(f"\n{path.name}\t{path.parent.name}\t{st.st_size}\t{st.st_mtime_ns}".encode())
        for ref in spec.refs:
            h.update(f"\nref {ref.dataset} {digests.get(ref.dataset, '-')}".encode())
        if until and (spec.event_time or spec.event_time_of):
            h.update(f"\nuntil {until}".encode())
        digests[spec.name] = h.hexdigest()[:32]
    return digests


def unchanged_datasets(tables, dt: str, digests: dict[str, str]) -> dict[str, str]:
    """{dataset: run id} of the datasets whose last run for ``dt`` ended ok (or found no file)
    with the same landing digest: one read of the audit for the whole run."""
    from pyspark.sql import functions as F

    rows = (tables.read("ingestion_audit").where(F.col("dt") == F.lit(dt).cast("date"))
            .select("dataset", "landing_digest", "status", "run_id").collect())
    return {r.dataset: r.run_id for r in rows
            if r.status in ("ok", "empty") and r.landing_digest and r.landing_digest == digests.get(r.dataset)}


def ingest_all(spark, specs: list[DatasetSpec], dt: str, run_id: str, cfg: dict, gx_root: str | None,
               workers: int, stale: set[str], progress=print, until: str | None = None) -> list[tuple]:
    """Ingest ``specs`` (contract order) on ``workers`` threads of the one Spark session; returns
    (audit row, refused files, error) per dataset, in contract order.

    A dataset starts once the datasets it references (when they are in this run) are done,
    so its reference check reads today's keys. ``stale``: the datasets whose quarantine
    holds rows for ``dt``. On a small world each dataset is a chain of small Spark jobs and
    Delta commits that leave the cores idle between them, so two run side by side. A dataset's failure never stops the others."""
    lock = threading.Lock()
    deferred: dict = {}  # dataset -> keys of its rows deferred by ``until`` (read by datasets dated through it)

    def one(spec: DatasetSpec, before: list[Future]):
        wait(before)
        try:
            audit, files, error = ingest_dataset(spark, spec, dt, run_id, cfg, gx_root, spec.name in stale, until,
                                                 deferred)
        except Exception as exc:  # noqa: BLE001 - reported in the audit and the step's error
            error = f"{spec.name}: not published: {one_line(exc)}"
            audit, files = failed_audit(spec, dt, run_id, error), []
        with lock:
            progress(f"{spec.name:18s} read {audit.rows_read:>10,}  accepted {audit.rows_accepted:>10,}  "
                     f"quarantined {audit.rows_quarantined:>8,}  duplicates {audit.duplicates_dropped:>6,}  "
                     f"bad files {audit.files_quarantined}"
                     + (f"  deferred {audit.rows_deferred:,}" if audit.rows_deferred else ""))
        return audit, files, error

    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        # The pool starts tasks in submission order, so a task only ever waits on tasks
        # submitted (hence started) before it: no deadlock whatever the number of workers.
        for spec in specs:
            before = [futures[r.dataset] for r in spec.refs if r.dataset in futures]
            futures[spec.name] = pool.submit(one, spec, before)
    return [futures[spec.name].result() for spec in specs]


def split_flagged(valid, rejected, flagged: dict):
    """(passed, rejected): the rows the expectation suite flagged (``flagged``: row id ->
    reasons) move from the valid rows to the rejected ones, with their reasons."""
    from pyspark.sql import functions as F

    if not flagged:
        return valid, rejected
    flags = valid.sparkSession.createDataFrame(list(flagged.items()), f"{ROW_ID} long, _gx array<string>")
    marked = valid.join(F.broadcast(flags), ROW_ID, "left")
    rejected = rejected.unionByName(marked.filter(F.col("_gx").isNotNull()).withColumn("_reasons", F.col("_gx"))
                                    .drop("_gx"))
    return marked.filter(F.col("_gx").isNull()).drop("_gx"), rejected
