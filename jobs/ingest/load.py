"""Writes of the ingest step: silver tables, the quarantine, unreadable files, the audit."""
from __future__ import annotations

from dataclasses import asdict

from bundlecast.jobs.core.catalog import DatasetSpec
from bundlecast.jobs.ingest.transform import AuditRow


def write_silver(tables, df, spec: DatasetSpec, dt: str) -> None:
    """Dimensions are upserted on their keys, facts replace their landing-date partition
    (the catalog's write mode, from the contract's ``load``)."""
    if tables.mode(spec.name) == "upsert":
        # A dimension drop updates keys all over a small table: one rewrite beats a MERGE.
        tables.upsert(spec.name, df, rewrite=True)
    else:
        tables.replace(spec.name, df, dt=dt)


def quarantined_datasets(tables, dt: str) -> set[str]:
    """The datasets that hold quarantine rows for ``dt`` (one read for a whole run)."""
    from pyspark.sql import functions as F

    rows = tables.read("quarantine").where(F.col("dt") == F.lit(dt).cast("date")).select("dataset").distinct()
    return {r.dataset for r in rows.collect()}


def write_quarantine(tables, rows, dataset: str, dt: str, stale: bool) -> None:
    """Replace the (dataset, dt) partition of ``quarantine`` with this run's rejected rows
    (``None``: none). ``stale``: whether the partition holds rows of an earlier run. A clean
    run of a date nothing was ever quarantined for makes no commit (an empty replace is a
    whole Delta commit per dataset)."""
    if rows is None and not stale:
        return
    tables.replace("quarantine", rows if rows is not None else tables.frame("quarantine", None), dataset=dataset, dt=dt)


def write_ops(tables, bad_files: list[dict], audit: list[AuditRow], dt: str, now) -> None:
    """Unreadable files and the audit rows, each replacing the run's (dataset, dt)."""
    tables.replace("quarantine_files", tables.frame("quarantine_files", bad_files),
                   dataset=[a.dataset for a in audit], dt=dt)
    tables.upsert("ingestion_audit", tables.frame("ingestion_audit", [{**asdict(a), "ingested_at": now} for a in audit]))
