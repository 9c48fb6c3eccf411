"""
### bundlecast_hourly

Hourly run: re-ingests the fast-moving datasets (`ingestion.hourly_datasets`: events,
orders, order lines, inventory, feedback) landed so far for the day, so the silver tables
follow the day as it fills up, folds the new behaviour into the item relationship counts
(step `relationships --mode incremental`: only the touched pairs are rescored, with the
weights fitted by the last nightly run), rescores the need model's champion for the users
with new events (step `need --mode rescore`), applies the customers' cancel / postpone /
accept feedback to proactive shipments, adds new high-confidence ones and re-plans the
delivery days that changed (step `proactive --mode hourly`), re-prices or withdraws the night's offers
whose stock, competitor price or user behaviour changed (step `offers --mode reprice`),
then refreshes the exports. Reference data (sites, items,
users, warehouses...) is the nightly run's job.

Its day is the one its data interval ends on (due at 13:15, interval 12:15-13:15: that day).
It takes the state lease first (waiting while a nightly runs) and gives it back in the
`end_of_run` teardown, which also stops the warm driver.

Idempotent for its date: each run overwrites the day's partitions with everything landed
so far for that day.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag

from bundlecast.dags._steps import (
    data_flow,
    export_task,
    failure_callbacks,
    macros,
    retry_delay,
    run_guard,
    step_task,
    timetable,
)

HOURLY = ["events", "orders", "order_lines", "inventory", "feedback"]


@dag(
    dag_id="bundlecast_hourly",
    schedule=timetable("hourly"),
    user_defined_macros=macros("hourly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["bundlecast", "hourly", "ingestion"],
    default_args={"retries": 2, "retry_delay": retry_delay(2), "owner": "bundlecast",
                  **failure_callbacks("hourly")},
    doc_md=__doc__,
)
def bundlecast_hourly():
    steps = [step_task("ingest", task_id="ingest_hourly", datasets=HOURLY, until=True), step_task("relationships", "incremental"),
             step_task("need", "rescore"), step_task("proactive", "hourly"), step_task("offers", "reprice")]
    data_flow(steps)
    export = export_task("hourly")
    steps >> export
    run_guard(steps[0], export)


bundlecast_hourly()
