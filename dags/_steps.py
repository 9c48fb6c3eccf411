"""Airflow glue shared by the DAG files: one Spark-submit task per pipeline step, with its
inlets and outlets taken from the step's declaration (``bundlecast.jobs.pipeline``).

Importing this module is cheap (DAG files import it at parse time): Airflow operators,
Spark and configuration are only touched inside functions and ``execute``.
"""
from __future__ import annotations

import os
import time

from bundlecast.jobs.core import schedule
from bundlecast.jobs.core.config import PROJECT_ROOT
from bundlecast.jobs.pipeline import INGEST_OPS, step, upstream

SUBMIT = PROJECT_ROOT / "jobs" / "submit.py"
TASK_IDS = {("proactive", "hourly"): "proactive_hourly", ("offers", "reprice"): "offers_reprice",
            ("need", "train"): "need_train", ("need", "rescore"): "need_rescore", ("value", "train"): "user_value"}


# The landing day a task processes, from the run's data interval (never ``ds``: with a trigger
# timetable that is the moment the run fired). ``run_day`` is each DAG's user-defined macro.
RUN_DAY = "{{ run_day(data_interval_start, data_interval_end) }}"
RUN_UNTIL = "{{ run_until(data_interval_start, data_interval_end) }}"


def timetable(kind: str):
    """The DAG's schedule: ``CronTriggerTimetable`` with the data interval of ``kind``
    (``bundlecast.jobs.core.schedule``), in UTC."""
    from airflow.sdk import CronTriggerTimetable

    cron, interval = ((schedule.NIGHTLY_CRON, schedule.NIGHTLY_INTERVAL) if kind == "nightly"
                      else (schedule.HOURLY_CRON, schedule.HOURLY_INTERVAL))
    return CronTriggerTimetable(cron, timezone="UTC", interval=interval)


def macros(kind: str) -> dict:
    """The DAG's user-defined macros: ``run_day(start, end)`` for its kind, ``run_until(start,
    end)`` the hourly cut-off."""
    return {"run_day": lambda start, end: schedule.run_day(kind, start, end), "run_until": schedule.hourly_until}


def retry_delay(minutes: float):
    """The DAG's pause before a retry: ``minutes``, or BUNDLECAST_RETRY_DELAY_SECONDS (read
    when the DAG file is parsed; the stack's fault test sets it short)."""
    from datetime import timedelta

    seconds = os.environ.get("BUNDLECAST_RETRY_DELAY_SECONDS")
    return timedelta(seconds=float(seconds)) if seconds else timedelta(minutes=minutes)


def failure_callbacks(kind: str) -> dict:
    """``default_args`` that report every failed try (``bundlecast.jobs.tools.failures``):
    recorded in ``run_failures`` with the DAG, task, landing day and one-line cause, then
    the configured command or webhook."""
    def report(context, will_retry: bool) -> None:
        from bundlecast.jobs.tools import failures

        ti = context["ti"]
        failures.report(ti.dag_id, context.get("run_id") or ti.run_id, ti.task_id,
                        schedule.run_day(kind, context["data_interval_start"], context["data_interval_end"]),
                        ti.try_number, will_retry, context.get("exception"))

    return {"on_failure_callback": lambda context: report(context, False),
            "on_retry_callback": lambda context: report(context, True)}


def table_assets(names) -> list:
    """Airflow Assets for catalog tables, one naming scheme everywhere."""
    from airflow.sdk import Asset

    return [Asset(name=f"bundlecast.{t}", uri=f"bundlecast://tables/{t}") for t in names]


def spark_submit_operator(task_id: str, args: list[str], inlets: list, outlets: list, **kwargs):
    """A SparkSubmitOperator running ``jobs/submit.py`` with ``args``. Configuration decides,
    when the task runs (not at parse time), how: with ``spark.warm_driver.enabled`` the step
    runs on the run's warm driver (``bundlecast.jobs.tools.driver``), otherwise as its own
    spark-submit, the Airflow connection (``airflow.spark_conn_id``) deciding local versus
    cluster and the Spark settings (Delta, metastore, cached jars) filled in from config."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    class BundlecastSparkSubmitOperator(SparkSubmitOperator):
        def execute(self, context):
            from airflow.exceptions import AirflowException
            from airflow.sdk.exceptions import AirflowFailException

            from bundlecast.jobs.core.errors import PERMANENT_EXIT
            from bundlecast.jobs.core.runs import SUMMARY_PREFIX
            from bundlecast.jobs.core.spark import spark_conf
            from bundlecast.jobs.tools import driver

            started, summary = time.monotonic(), []
            print(f"[bundlecast] {self.task_id} started: {' '.join(self.application_args)}", flush=True)

            def echo(line: str) -> None:
                print(line, flush=True)
                if line.startswith(SUMMARY_PREFIX):
                    summary.append(line[len(SUMMARY_PREFIX):])

            if driver.enabled():
                code = driver.run_step(self.application_args, echo=echo)
            else:
                self.conf = {**spark_conf(), **(self.conf or {})}
                try:
                    super().execute(context)
                    code = 0
                except AirflowException as exc:  # spark-submit's exit code is in the message
                    code = PERMANENT_EXIT if f"Error code is: {PERMANENT_EXIT}." in str(exc) else 1
            seconds = time.monotonic() - started
            if code == PERMANENT_EXIT:
                raise AirflowFailException(f"{self.task_id} failed after {seconds:.1f} s and a retry cannot help "
                                           "(the same input gives the same refusal): its error line is above")
            if code:
                raise RuntimeError(f"{self.task_id} failed after {seconds:.1f} s (exit {code}): its error line is above")
            print(f"[bundlecast] {self.task_id} done in {seconds:.1f} s: {summary[-1] if summary else 'ok'}", flush=True)

    return BundlecastSparkSubmitOperator(
        task_id=task_id, application=str(SUBMIT), application_args=args,
        conn_id=os.environ.get("BUNDLECAST_SPARK_CONN_ID", "bundlecast_spark"), name=f"bundlecast-{task_id}",
        inlets=inlets, outlets=outlets, verbose=False, **kwargs)


def step_task(name: str, mode: str | None = None, task_id: str | None = None, datasets: list[str] | None = None,
              until: bool = False):
    """The task of pipeline step ``name`` (in ``mode``) for the run's date. ``datasets``
    (ingest only) limits the run, and its outlets, to those datasets; ``until`` (ingest in the
    hourly) passes the end of the run's data interval as the cut-off of the rows it reads."""
    declared = step(name)
    mode = mode or declared.default_mode
    args = [name, "--date", RUN_DAY, "--run-id", "{{ run_id }}"]
    if declared.modes:
        args += ["--mode", mode]
    outputs = declared.outputs(mode)
    if until:
        args += ["--until", RUN_UNTIL]
    if datasets:
        args += ["--datasets", ",".join(datasets)]
        outputs = tuple(datasets) + INGEST_OPS
    return spark_submit_operator(task_id or TASK_IDS.get((name, mode), name), args,
                                 inlets=table_assets(declared.reads), outlets=table_assets(outputs))


def run_guard(body_first, body_last):
    """Wrap a DAG run's tasks (``body_first`` ... ``body_last``) between taking the state lease
    (``bundlecast.jobs.tools.lease``: one run at a time writes the state directory; a run
    that finds it held waits) and a teardown that runs whatever happened: it stops the run's
    warm Spark driver (unless ``spark.warm_driver.keep_after_run``) and gives the lease back."""
    from airflow.sdk import get_current_context, task

    def holder() -> str:
        context = get_current_context()
        return f"{context['dag'].dag_id}/{context['run_id']}"

    @task(task_id="take_lease", retries=0)
    def take_lease():
        from bundlecast.jobs.core.config import config
        from bundlecast.jobs.tools import lease

        cfg = config()
        lease.acquire(holder(), cfg, wait_seconds=float(cfg["airflow"]["lease_wait_minutes"]) * 60,
                      max_age=float(cfg["airflow"]["lease_max_hours"]) * 3600,
                      echo=lambda line: print(line, flush=True))

    @task(task_id="end_of_run", retries=0)
    def end_of_run():
        from bundlecast.jobs.tools import driver, lease

        line = driver.end_of_run()
        if line:
            print(f"[bundlecast] {line}")
        if lease.release(holder()):
            print(f"[bundlecast] state lease released by {holder()}")

    take, end = take_lease(), end_of_run()
    take >> body_first
    body_last >> end.as_teardown(setups=take)


def data_flow(tasks: list) -> None:
    """Set each step task downstream of the earlier step tasks that write a table it reads
    (``bundlecast.jobs.pipeline.upstream``, in the list's order): the DAG follows the data,
    and steps with no data between them (relationships, forecast, user value) run side by
    side where Spark tasks can (spark-submit per task; the local warm driver runs one step
    at a time)."""
    def tables(assets) -> set[str]:
        return {a.name.removeprefix("bundlecast.") for a in assets}

    before = upstream([tables(t.inlets) for t in tasks], [tables(t.outlets) for t in tasks])
    for i, later in enumerate(tasks):
        for j in before[i]:
            tasks[j] >> later


def export_task(kind: str):
    """The export step both DAGs end with: snapshots of ``exports.tables`` plus manifests,
    for the landing day of the run's data interval."""
    from airflow.sdk import task

    @task(task_id="export", retries=2)
    def export(data_interval_start=None, data_interval_end=None):
        from bundlecast.jobs.export.job import export_configured

        for manifest in export_configured(schedule.run_day(kind, data_interval_start, data_interval_end)):
            print(f"[bundlecast] exported {manifest['table']}: {manifest['row_count']} rows -> {manifest['location']}")

    return export()
