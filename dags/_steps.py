"""Airflow glue shared by the DAG files: one Spark-submit task per pipeline step, with its
inlets and outlets taken from the step's declaration (``bundlecast.jobs.pipeline``).

Importing this module is cheap (DAG files import it at parse time): Airflow operators,
Spark and configuration are only touched inside functions and ``execute``.
"""
from __future__ import annotations

import os

from bundlecast.jobs.core.config import PROJECT_ROOT
from bundlecast.jobs.pipeline import INGEST_OPS, step

SUBMIT = PROJECT_ROOT / "jobs" / "submit.py"
TASK_IDS = {("proactive", "hourly"): "proactive_hourly", ("offers", "reprice"): "offers_reprice",
            ("need", "train"): "need_train", ("need", "rescore"): "need_rescore", ("value", None): "user_value"}


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
            from bundlecast.jobs.core.spark import spark_conf
            from bundlecast.jobs.tools import driver

            if driver.enabled():
                code = driver.run_step(self.application_args, echo=lambda line: print(line, flush=True))
                if code:
                    raise RuntimeError(f"step {self.application_args[0]} failed on the warm driver (exit {code}); "
                                       "its error line is above")
                return None
            self.conf = {**spark_conf(), **(self.conf or {})}
            return super().execute(context)

    return BundlecastSparkSubmitOperator(
        task_id=task_id, application=str(SUBMIT), application_args=args,
        conn_id=os.environ.get("BUNDLECAST_SPARK_CONN_ID", "bundlecast_spark"), name=f"bundlecast-{task_id}",
        inlets=inlets, outlets=outlets, verbose=False, **kwargs)


def step_task(name: str, mode: str | None = None, task_id: str | None = None, datasets: list[str] | None = None):
    """The task of pipeline step ``name`` (in ``mode``) for the run's date. ``datasets``
    (ingest only) limits the run, and its outlets, to those datasets."""
    declared = step(name)
    mode = mode or declared.default_mode
    args = [name, "--date", "{{ ds }}", "--run-id", "{{ run_id }}"]
    if declared.modes:
        args += ["--mode", mode]
    outputs = declared.outputs(mode)
    if datasets:
        args += ["--datasets", ",".join(datasets)]
        outputs = tuple(datasets) + INGEST_OPS
    return spark_submit_operator(task_id or TASK_IDS.get((name, mode), name), args,
                                 inlets=table_assets(declared.reads), outlets=table_assets(outputs))


def stop_driver_task():
    """Teardown: stop the run's warm Spark driver (whatever the other tasks did), so the
    embedded metastore is free for the next run, ``bundlecast sql`` and analysts; or, with
    ``spark.warm_driver.keep_after_run``, leave it warm for the next run."""
    from airflow.sdk import task

    @task(task_id="stop_driver", retries=0)
    def stop_driver():
        from bundlecast.jobs.tools import driver

        line = driver.end_of_run()
        if line:
            print(f"[bundlecast] {line}")

    return stop_driver().as_teardown()


def export_task():
    """The export step both DAGs end with: snapshots of ``exports.tables`` plus manifests."""
    from airflow.sdk import task

    @task(task_id="export", retries=2)
    def export(ds=None):
        from bundlecast.jobs.export.job import export_configured

        for manifest in export_configured(ds):
            print(f"[bundlecast] exported {manifest['table']}: {manifest['row_count']} rows -> {manifest['location']}")

    return export()
