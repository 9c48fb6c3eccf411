"""End to end, as an operator runs it: ``pip install .`` into a fresh environment, then,
outside the checkout, generate the tiny world and run the nightly and then the hourly DAG
through real Airflow 3 (every step task on the run's warm Spark driver -> Delta) with the
installed ``bundlecast``; re-run the hourly DAG and check nothing changed; run one task the
cluster way (``spark.warm_driver.enabled: false``: its own spark-submit)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundlecast.jobs.core import schedule
from bundlecast.jobs.core.config import load_config

pytestmark = pytest.mark.slow
DATE = "2026-11-20"


BIN: Path | None = None  # the installed bundlecast's bin/ (set by the e2e_home fixture)


def _bundlecast(home: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "BUNDLECAST_CONF"))}
    env.update(extra_env)
    # spark-submit comes with pyspark, in this environment's bin/ (after the installed one).
    env.update(BUNDLECAST_HOME=str(home), BUNDLECAST_SPARK_MASTER="local[2]",
               PATH=os.pathsep.join([str(BIN), str(Path(sys.executable).parent), env.get("PATH", "")]))
    return subprocess.run([str(BIN / "bundlecast"), *args], env=env, capture_output=True, text=True,
                          timeout=2400, cwd=home)


@pytest.fixture(scope="module")
def e2e_home(tmp_path_factory, installed_bundlecast):
    global BIN
    BIN = installed_bundlecast
    home = tmp_path_factory.mktemp("e2e")
    for args in (("generate", "--scale", "tiny", "--seed", "3", "--date", DATE),
                 ("run", "nightly", "--date", DATE), ("run", "hourly", "--date", DATE)):
        done = _bundlecast(home, *args)
        assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}\n{done.stdout[-3000:]}"
        if args[0] == "run":  # every step task ran on one warm driver, which the teardown stopped
            assert done.stdout.count("starting the warm Spark driver") == 1, done.stdout[-3000:]
            # one line per task as it starts and as it ends, with its duration and summary
            task = "ingest" if args[1] == "nightly" else "ingest_hourly"
            started = done.stdout.find(f" {task} started: ingest --date")
            ended = done.stdout.find(f" {task} done in ")
            assert 0 <= started < ended, done.stdout[-3000:]
            assert "warm Spark driver stopped" in done.stdout
    assert not (home / "run" / "driver.json").exists()
    return home


def _tables(home):
    done = _bundlecast(home, "tables", "--json")
    assert done.returncode == 0, done.stderr
    return {t["table"]: t for t in json.loads(done.stdout)}


def test_both_dags_fill_the_tables(e2e_home):
    truth = json.loads((e2e_home / "demo" / "ground_truth.json").read_text())
    tables = _tables(e2e_home)
    for name, rows in truth["rows"].items():
        assert tables[name]["rows"] == rows, name
    assert tables["ingestion_audit"]["rows"] == len(truth["rows"])
    for gold in ("item_relationships", "relationship_weights", "demand_forecast", "forecast_metrics",
                 "need_predictions", "need_bundles", "bundles", "offers", "experiment_exposures", "step_runs",
                 "route_stops", "route_plans", "proactive_thresholds", "inventory_reservations"):
        assert tables[gold]["rows"] > 0, gold
    assert (e2e_home / "airflow" / "airflow.db").exists()
    assert not (e2e_home / "metastore").exists()  # the session catalog: no metastore to share or lock
    assert (e2e_home / "gx" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


def test_exports_have_manifests(e2e_home):
    cfg = load_config("local", e2e_home, environ={})
    may_be_empty = {"proactive_shipments", "notifications"}  # the tiny world's confidence may pass no threshold
    for name in cfg["exports"]["tables"]:
        manifest = json.loads((e2e_home / "exports" / name / f"dt={DATE}" / "_manifest.json").read_text())
        assert name in may_be_empty or (manifest["row_count"] > 0 and manifest["files"]), name


def test_rerunning_the_hourly_dag_leaves_the_same_rows(e2e_home):
    """The hourly DAG is the one that re-runs for the same date all day long. (The nightly
    jobs' own re-runs are tested in their modules; re-running the whole nightly DAG here
    cost a quarter of the suite.)"""
    before = {k: v["rows"] for k, v in _tables(e2e_home).items()}
    done = _bundlecast(e2e_home, "run", "hourly", "--date", DATE, "--summary")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bundlecast_hourly" in done.stdout and "ingestion_audit" in done.stdout  # the summary
    after = {k: v["rows"] for k, v in _tables(e2e_home).items()}
    assert before == after


def test_sql_over_the_catalog(e2e_home):
    done = _bundlecast(e2e_home, "sql", "SELECT status, COUNT(*) AS n FROM bundlecast.orders GROUP BY status", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    statuses = {json.loads(line)["status"] for line in done.stdout.splitlines() if line.startswith("{")}
    assert "delivered" in statuses


def test_the_run_used_the_installed_package_not_the_checkout(e2e_home):
    """The DAG folder Airflow parsed and the file spark-submit ran are the wheel's copies,
    and nothing named ``jobs`` or ``models`` is importable at the top level."""
    code = ("import importlib.util\n"
            "from bundlecast.jobs.tools.airflow_run import DAGS_DIR\n"
            "from bundlecast.dags._steps import SUBMIT\n"
            "from bundlecast.jobs.core.config import CONF_DIR\n"
            "print(DAGS_DIR, SUBMIT, CONF_DIR, importlib.util.find_spec('jobs'), importlib.util.find_spec('models'))")
    done = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, cwd=e2e_home,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BUNDLECAST_CONF_DIR")})
    assert done.returncode == 0, done.stderr[-2000:]
    dags, submit, conf, jobs, models = done.stdout.split()
    venv = str(BIN.parent)
    assert dags.startswith(venv) and submit.startswith(venv) and conf.startswith(venv)
    assert Path(submit).is_file() and (Path(conf) / "base" / "catalog.yaml").is_file()
    assert jobs == models == "None"


def test_sql_refuses_writes_and_the_table_stays(e2e_home):
    done = _bundlecast(e2e_home, "sql", "DROP TABLE bundlecast.orders")
    assert done.returncode == 1 and "read-only" in done.stderr and "at org.apache" not in done.stderr
    done = _bundlecast(e2e_home, "sql", "SELECT COUNT(*) AS n FROM bundlecast.orders", "--json")
    assert done.returncode == 0 and json.loads(done.stdout.splitlines()[-1])["n"] > 0


def test_a_date_that_is_not_a_date_is_refused_at_spark_submit(e2e_home):
    """The documented entry point validates ``--date`` before anything runs: the SQL
    injection that once emptied the quarantine stops at argument parsing."""
    tables = _tables(e2e_home)
    before = tables["quarantine_files"]["rows"], tables["quarantine"]["rows"]
    code = "from bundlecast.dags._steps import SUBMIT; print(SUBMIT)"
    submit = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True).stdout.split()[-1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "BUNDLECAST_CONF"))}
    env.update(BUNDLECAST_HOME=str(e2e_home), PYSPARK_PYTHON=str(BIN / "python"),
               PATH=os.pathsep.join([str(BIN), str(Path(sys.executable).parent), env.get("PATH", "")]))
    done = subprocess.run([str(Path(sys.executable).parent / "spark-submit"), "--conf",
                           f"spark.pyspark.driver.python={BIN / 'python'}", submit, "ingest", "--date",
                           "2026-11-20' OR '1'='1", "--datasets", "sites"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=e2e_home)
    said = done.stdout + done.stderr  # spark-submit's PythonRunner merges the script's stderr into stdout
    assert done.returncode == 2 and "not a date (YYYY-MM-DD)" in said, said[-2000:]
    tables = _tables(e2e_home)
    assert (tables["quarantine_files"]["rows"], tables["quarantine"]["rows"]) == before


def test_errors_are_one_line(e2e_home):
    done = _bundlecast(e2e_home, "sql", "SELECT * FROM bundlecast.no_such_table")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("bundlecast: error:")]
    assert len(lines) == 1 and "no_such_table" in lines[0].lower()
    assert "at org.apache" not in done.stderr


def test_one_task_the_cluster_way_is_its_own_spark_submit(e2e_home):
    """With the warm driver switched off (the prod overlay's setting) a step task is a
    spark-submit of the installed jobs/submit.py, as on a cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "BUNDLECAST_CONF"))}
    env.update(BUNDLECAST_HOME=str(e2e_home), BUNDLECAST_SPARK_MASTER="local[2]", BUNDLECAST_WARM_DRIVER="false")
    env.update(AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
               PATH=os.pathsep.join([str(BIN), str(Path(sys.executable).parent), env.get("PATH", "")]))
    code = ("from bundlecast.jobs.tools.airflow_run import airflow_env\n"
            "import os, subprocess, sys\n"
            "sys.exit(subprocess.run([sys.executable, '-m', 'airflow', 'tasks', 'test', 'bundlecast_nightly',"
            " 'experiments', sys.argv[1]], env=airflow_env()).returncode)\n")
    due = schedule.manual_run_after("nightly", DATE).isoformat()  # the run that processes DATE
    done = subprocess.run([str(BIN / "python"), "-c", code, due], env=env, capture_output=True, text=True,
                          timeout=900, cwd=e2e_home)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert "spark-submit" in said.lower() and "warm driver" not in said
    assert not (e2e_home / "run" / "driver.json").exists()  # no teardown ran: a warm driver would still be up
