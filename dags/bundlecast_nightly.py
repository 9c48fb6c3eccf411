"""
### bundlecast_nightly

Nightly full run of the previous day: due at 02:00 on D + 1, it processes landing day D,
the day its data interval starts on (`bundlecast.jobs.core.schedule`; never `ds`, which for
this timetable is the moment the run fired). The tasks follow the data: each step waits for
the steps whose tables it reads, so relationships, forecast and user value run side by side
after ingest where the tasks are their own spark-submits.

0. **take_lease**: one DAG run at a time writes the state directory; an hourly run in
   progress is waited for (`bundlecast.jobs.tools.lease`).

1. **ingest**: every contract dataset landed under `raw/<dataset>/dt=<ds>/` is validated
   (contract rules + Great Expectations) into its silver Delta table, with rejected rows in
   `quarantine` and the accounting in `ingestion_audit` (step `ingest`).
2. **relationships**: item relationship scores rebuilt from scratch, weights refitted
   per segment x category (step `relationships --mode full`).
3. **forecast**: daily demand per item x region for the next 14 days (Prophet, SBA for
   intermittent series, seasonal naive where it wins the backtest), with the rolling
   backtest in `forecast_metrics` and the run in MLflow (step `forecast`).
4. **need_train**: the need model (will this user buy this item within H days, and when)
   retrained on a strict time split, compared with personal top-frequency and segment
   popularity, registered in MLflow and promoted to `champion` only through the gate; then
   every active user is scored with the champion into `need_predictions` (step `need --mode train`).
5. **user_value**: spend and order days over the next 90 days per user (step `value`).
6. **bundles**: need bundles per user and priced product bundles (step `bundles`).
7. **proactive**: need bundles confident enough (per category; opted-in users, no cool-down,
   one per window) become proactive shipments for tomorrow: stock reserved from the nearest
   warehouse (ledger compare-and-set, safe under concurrent runs), packed (CP-SAT bin
   packing), inserted into tomorrow's planned routes (OR-Tools; planned stops keep vehicle,
   order and window), notified with an early-bird incentive and a cancel/postpone token
   (step `proactive`). Before the offers, so reserved stock is never offered.
8. **offers**: candidates, incentives (user value, consolidation, inventory, carbon), the
   experiment's variant per user, and the global CP-SAT allocation under stock and budget
   into `offers` and `experiment_exposures` (step `offers`).
9. **experiments**: conversion, revenue and margin per variant with intervals and the
   sample-ratio check into `experiment_results` (step `experiments`).
10. **export**: snapshots of `exports.tables` to the export target with a manifest.
11. **summary**: every catalog table with its Delta version and row count.
12. **end_of_run** (teardown, runs whatever happened): stops the run's warm Spark driver and
    gives the lease back.

A failed try is recorded in `run_failures` (and sent to the configured command or webhook);
a failure a retry cannot fix (quarantine threshold, configuration) fails at once.

Every Spark task runs `STEP --date ...` on the run's warm Spark driver (one JVM for the
whole run, `spark.warm_driver.enabled`), or as `spark-submit jobs/submit.py STEP ...` when
that is off (the prod overlay); its inlets and outlets are the
tables the step declares in `bundlecast.jobs.pipeline`.

Re-running a date leaves the same rows: every write is keyed on the landing date.
"""
from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

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


@dag(
    dag_id="bundlecast_nightly",
    schedule=timetable("nightly"),
    user_defined_macros=macros("nightly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["bundlecast", "nightly", "ingestion"],
    default_args={"retries": 2, "retry_delay": retry_delay(5), "owner": "bundlecast",
                  **failure_callbacks("nightly")},
    doc_md=__doc__,
)
def bundlecast_nightly():
    @task(retries=0)
    def summary():
        from bundlecast.jobs.tools.tables import all_tables, render
        for line in render(all_tables()).splitlines():
            print(f"[bundlecast] table summary: {line}")

    # The DAG follows the data: each step after the ones whose tables it reads.
    steps = [step_task("ingest"), step_task("relationships", "full"), step_task("forecast"),
             step_task("need", "train"), step_task("value"), step_task("bundles"), step_task("proactive", "nightly"),
             step_task("offers", "nightly"), step_task("experiments")]
    data_flow(steps)
    export, done = export_task("nightly"), summary()
    steps >> export >> done
    run_guard(steps[0], done)

bundlecast_nightly()
