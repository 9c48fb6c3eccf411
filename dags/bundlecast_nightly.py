"""
### bundlecast_nightly

Nightly full run for the data interval's date (`ds`):

1. **ingest**: every contract dataset landed under `raw/<dataset>/dt=<ds>/` is validated
   (contract rules + Great Expectations) into its silver Delta table, with rejected rows in
   `quarantine` and the accounting in `ingestion_audit` (Spark job `jobs/ingest.py`).
2. **export**: snapshots of `exports.tables` to the export target with a manifest.
3. **summary**: every catalog table with its Delta version and row count.

Re-running a date leaves the same rows: every write is keyed on the landing date.
Later steps (relationships, models, bundles, shipping) add their tasks after ingest.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, task

from jobs.core.orchestration import export_task, spark_submit_operator

SILVER = ["sites", "warehouses", "items", "users", "events", "orders", "order_lines", "reviews", "inventory",
          "weather", "calendar_events", "routes", "competitor_prices", "feedback"]
OPS = ["quarantine", "quarantine_files", "ingestion_audit"]


@dag(
    dag_id="bundlecast_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["bundlecast", "nightly", "ingestion"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "owner": "bundlecast"},
    doc_md=__doc__,
)
def bundlecast_nightly():
    ingest = spark_submit_operator(
        "ingest", "ingest", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"],
        outlets=[Asset(name=f"bundlecast.{t}", uri=f"bundlecast://tables/{t}") for t in SILVER + OPS])

    @task(retries=0)
    def summary():
        from jobs.tables import all_tables, render
        for line in render(all_tables()).splitlines():
            print(f"[bundlecast] {line}")

    ingest >> export_task() >> summary()


bundlecast_nightly()
