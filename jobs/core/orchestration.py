"""Airflow glue: the environment Airflow runs in, the Spark-submit operator every DAG uses,
and running a DAG for a date (``bundlecast run nightly|hourly --date D``).

Importing this module is cheap (DAG files import it at parse time): Airflow, Spark and
configuration are only touched inside functions and ``execute``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from jobs.core.config import PROJECT_ROOT, config
from jobs.core.errors import BundlecastError

JOBS_DIR = PROJECT_ROOT / "jobs"
DAGS_DIR = PROJECT_ROOT / "dags"
DAG_IDS = {"nightly": "bundlecast_nightly", "hourly": "bundlecast_hourly"}


def airflow_env(cfg: dict | None = None, base: dict | None = None) -> dict:
    """Environment for Airflow commands: everything under BUNDLECAST_HOME/airflow, SQLite
    metadata locally (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN from the environment wins), and
    the Spark connection deciding local versus cluster."""
    cfg = cfg or config()
    env = dict(os.environ if base is None else base)
    airflow_home = Path(cfg["airflow"]["home"])
    env["AIRFLOW_HOME"] = str(airflow_home)
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{airflow_home / 'airflow.db'}")
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_DIR)
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    env.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    env["BUNDLECAST_HOME"] = cfg["home"]
    env["BUNDLECAST_ENV"] = cfg["env"]
    conn_var = f"AIRFLOW_CONN_{cfg['airflow']['spark_conn_id'].upper()}"
    env.setdefault(conn_var, json.dumps({"conn_type": "spark", "host": cfg["spark"]["master"]}))
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def ensure_airflow_db(cfg: dict | None = None) -> None:
    cfg = cfg or config()
    env = airflow_env(cfg)
    marker = Path(env["AIRFLOW_HOME"]) / ".migrated"
    if marker.exists():
        return
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise BundlecastError(f"airflow db migrate failed: {tail[0]}")
    marker.touch()


def run_dag(kind: str, date: str, cfg: dict | None = None, echo=print) -> Path:
    """Run a whole DAG for a date through Airflow (``airflow dags test``: one process, no
    scheduler). Returns the log file; raises with the failed tasks if the run failed."""
    if kind not in DAG_IDS:
        raise BundlecastError(f"unknown DAG {kind!r}: expected one of {sorted(DAG_IDS)}")
    cfg = cfg or config()
    ensure_airflow_db(cfg)
    env = airflow_env(cfg)
    log_dir = Path(env["AIRFLOW_HOME"]) / "runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{DAG_IDS[kind]}_{date}.log"
    echo(f"running {DAG_IDS[kind]} for {date} through Airflow (log: {log_file})")
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", DAG_IDS[kind], date],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if "[bundlecast]" in line or "Marking task as" in line or "state=" in line and "task_id" in line:
                echo("  " + line.rstrip()[-200:])
        proc.wait()
    states = task_states(DAG_IDS[kind], date, env)
    failed = [t for t, s in states.items() if s != "success"]
    if proc.returncode or failed or not states:
        raise BundlecastError(f"{DAG_IDS[kind]} {date} failed (tasks not successful: {failed or 'all'}); "
                              f"{_last_error(log_file)} (see {log_file})")
    return log_file


def task_states(dag_id: str, date: str, env: dict) -> dict[str, str]:
    """Final state of every task of the DAG run for ``date``, from the Airflow database."""
    code = ("import json,sys\n"
            "from airflow.utils.session import create_session\n"
            "from airflow.models import TaskInstance, DagRun\n"
            "with create_session() as s:\n"
            "    runs=s.query(DagRun).filter(DagRun.dag_id==sys.argv[1]).all()\n"
            "    runs=[r for r in runs if str(r.logical_date)[:10]==sys.argv[2]]\n"
            "    run=max(runs,key=lambda r:r.start_date or r.logical_date) if runs else None\n"
            "    tis=s.query(TaskInstance).filter(TaskInstance.dag_id==sys.argv[1],TaskInstance.run_id==run.run_id).all() if run else []\n"
            "    print(json.dumps({t.task_id:str(t.state) for t in tis}))\n")
    done = subprocess.run([sys.executable, "-c", code, dag_id, date], env=env, capture_output=True, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {}


def _last_error(log_file: Path) -> str:
    lines = log_file.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if "bundlecast: error:" in line:
            return line.split("bundlecast: error:", 1)[1].strip()
    for line in reversed(lines):
        if "Error" in line or "ERROR" in line:
            return line.strip()[-300:]
    return "no error line in the log"


def spark_submit_operator(task_id: str, job: str, args: list[str], outlets: list | None = None, **kwargs):
    """A SparkSubmitOperator for ``jobs/<job>.py``. The Airflow connection
    (``airflow.spark_conn_id``) decides local versus cluster; the Spark settings (Delta,
    metastore, cached jars) are filled in when the task runs, not at parse time."""
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    class BundlecastSparkSubmitOperator(SparkSubmitOperator):
        def execute(self, context):
            from jobs.core.spark import spark_conf

            self.conf = {**spark_conf(), **(self.conf or {})}
            return super().execute(context)

    return BundlecastSparkSubmitOperator(
        task_id=task_id, application=str(JOBS_DIR / f"{job}.py"), application_args=args,
        conn_id=os.environ.get("BUNDLECAST_SPARK_CONN_ID", "bundlecast_spark"), name=f"bundlecast-{task_id}",
        outlets=outlets or [], verbose=False, **kwargs)


def table_assets(names: list[str]) -> list:
    """Airflow Assets for catalog tables (what a task writes), one naming scheme everywhere."""
    from airflow.sdk import Asset

    return [Asset(name=f"bundlecast.{t}", uri=f"bundlecast://tables/{t}") for t in names]


RELATIONSHIP_TABLES = ["item_pair_counts", "item_unit_counts", "item_relationships", "relationship_weights",
                       "relationship_text_models", "relationship_runs"]


def relationships_task(mode: str):
    """Item relationships: ``full`` rebuild (nightly) or ``incremental`` fold (hourly)."""
    return spark_submit_operator(
        "relationships", "relationships", ["--date", "{{ ds }}", "--mode", mode, "--run-id", "{{ run_id }}"],
        outlets=table_assets(RELATIONSHIP_TABLES))


FORECAST_TABLES = ["demand_forecast", "forecast_metrics"]


def forecast_task():
    """Demand forecast with its backtest (nightly)."""
    return spark_submit_operator("forecast", "forecast", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"],
                                 outlets=table_assets(FORECAST_TABLES))


NEED_TABLES = ["need_predictions", "need_runs"]


def need_task(mode: str):
    """Need model: ``train`` (nightly: train, evaluate, gate, score all) or ``rescore``
    (hourly: the champion rescores users with new events)."""
    return spark_submit_operator(f"need_{mode}", "need", ["--date", "{{ ds }}", "--mode", mode, "--run-id", "{{ run_id }}"],
                                 outlets=table_assets(NEED_TABLES))


def value_task():
    """User value model (nightly)."""
    return spark_submit_operator("user_value", "value", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"],
                                 outlets=table_assets(["user_value"]))


def bundles_task():
    """Need bundles and priced product bundles (nightly)."""
    return spark_submit_operator("bundles", "bundles", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"],
                                 outlets=table_assets(["need_bundles", "bundles", "offer_runs"]))


def offers_task(mode: str):
    """Offers: ``nightly`` (allocation, experiments' assignment) or ``reprice`` (hourly)."""
    outlets = ["offers", "experiment_exposures", "offer_runs"] if mode == "nightly" else ["offers", "offer_runs"]
    return spark_submit_operator("offers" if mode == "nightly" else "offers_reprice", "offers",
                                 ["--date", "{{ ds }}", "--mode", mode, "--run-id", "{{ run_id }}"],
                                 outlets=table_assets(outlets))


PROACTIVE_TABLES = ["proactive_shipments", "inventory_reservations", "route_stops", "route_plans", "notifications",
                    "proactive_thresholds", "offer_runs"]


def proactive_task(mode: str):
    """Proactive shipping: ``nightly`` (feedback, thresholds, decisions for tomorrow,
    reservation, packaging, route insertion, notifications) or ``hourly`` (feedback,
    new high-confidence shipments, re-plan of the days that changed)."""
    return spark_submit_operator("proactive" if mode == "nightly" else "proactive_hourly", "proactive",
                                 ["--date", "{{ ds }}", "--mode", mode, "--run-id", "{{ run_id }}"],
                                 outlets=table_assets(PROACTIVE_TABLES))


def experiments_task():
    """Experiment analysis (nightly)."""
    return spark_submit_operator("experiments", "experiments", ["--date", "{{ ds }}", "--run-id", "{{ run_id }}"],
                                 outlets=table_assets(["experiment_results"]))


def export_task():
    """The export step both DAGs end with: snapshots of ``exports.tables`` plus manifests."""
    from airflow.sdk import task

    @task(task_id="export", retries=2)
    def export(ds=None):
        from jobs.export import export_configured

        for manifest in export_configured(ds):
            print(f"[bundlecast] exported {manifest['table']}: {manifest['row_count']} rows -> {manifest['location']}")

    return export()
