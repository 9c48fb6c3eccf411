"""Running a DAG for a date through Airflow (``bundlecast run nightly|hourly --date D``): the
environment Airflow runs in, its metadata database, and the run's task states.

The DAGs themselves and their task glue live in ``dags/`` (``dags/_steps.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bundlecast.jobs.core import schedule
from bundlecast.jobs.core.config import PROJECT_ROOT, config
from bundlecast.jobs.core.errors import BundlecastError

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
    env.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")  # task logs hold the job's own lines
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


def run_dag(kind: str, date: str, cfg: dict | None = None, echo=print, hour: int | None = None) -> Path:
    """Run a whole DAG for landing day ``date`` through Airflow (``airflow dags test``: one
    process, no scheduler), as the scheduler would: the run is due when the timetable would
    fire it for that day (``schedule.manual_run_after``: the nightly at 02:00 the next day;
    the hourly at the end of ``hour``, by default of the whole day), so its data interval, and
    nothing else, decides what it processes. Returns the log file; raises with the failed
    tasks if the run failed."""
    if kind not in DAG_IDS:
        raise BundlecastError(f"unknown DAG {kind!r}: expected one of {sorted(DAG_IDS)}")
    cfg = cfg or config()
    due = schedule.manual_run_after(kind, date, hour).isoformat()
    ensure_airflow_db(cfg)
    env = airflow_env(cfg)
    log_dir = Path(env["AIRFLOW_HOME"]) / "runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{DAG_IDS[kind]}_{date}{'' if hour is None else f'T{hour:02d}'}.log"
    echo(f"running {DAG_IDS[kind]} for {date} (due {due}) through Airflow (log: {log_file})")
    with open(log_file, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", DAG_IDS[kind], due],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if _worth_echoing(line):
                echo(f"  {time.strftime('%H:%M:%S')} {line.split('[bundlecast] ', 1)[-1].rstrip()[:300]}")
        proc.wait()
    from bundlecast.jobs.tools import driver

    driver.end_of_run(cfg)  # the DAG's teardown does this; a run killed before it must not leave one behind
    states = task_states(DAG_IDS[kind], due, env)
    failed = [t for t, s in states.items() if s != "success"]
    if proc.returncode or failed or not states:
        raise BundlecastError(f"{DAG_IDS[kind]} {date} failed (tasks not successful: {failed or 'all'}); "
                              f"{_last_error(log_file)} (see {log_file})")
    return log_file


def _worth_echoing(line: str) -> bool:
    """The lines ``bundlecast run`` shows as they happen: each task's start and end (with
    its duration and summary), failures, exports; not the step's own repeats of them."""
    if "[bundlecast]" not in line:
        return False
    return not any(repeat in line for repeat in ("[bundlecast] summary: ", "finished on the warm driver",
                                                 "[bundlecast] table summary: "))


def task_states(dag_id: str, due: str, env: dict) -> dict[str, str]:
    """Final state of every task of the DAG run due at ``due`` (its logical date, ISO), from
    the Airflow database."""
    code = ("import json,sys\n"
            "from airflow.utils.session import create_session\n"
            "from airflow.models import TaskInstance, DagRun\n"
            "with create_session() as s:\n"
            "    runs=s.query(DagRun).filter(DagRun.dag_id==sys.argv[1]).all()\n"
            "    from datetime import datetime\n"
            "    due=datetime.fromisoformat(sys.argv[2])\n"
            "    runs=[r for r in runs if r.logical_date==due]\n"
            "    run=max(runs,key=lambda r:r.start_date or r.logical_date) if runs else None\n"
            "    tis=s.query(TaskInstance).filter(TaskInstance.dag_id==sys.argv[1],TaskInstance.run_id==run.run_id).all() if run else []\n"
            "    print(json.dumps({t.task_id:str(t.state) for t in tis}))\n")
    done = subprocess.run([sys.executable, "-c", code, dag_id, due], env=env, capture_output=True, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {}


RECENT_RUNS = """
import json, sys
from airflow.utils.session import create_session
from airflow.models import TaskInstance, DagRun
out = {}
with create_session() as s:
    for dag_id in sys.argv[2:]:
        runs = (s.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc())
                .limit(int(sys.argv[1])).all())
        out[dag_id] = []
        for r in runs:
            tis = s.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == r.run_id).all()
            out[dag_id].append({
                "run_id": r.run_id, "state": str(r.state), "run_type": str(r.run_type),
                "interval": [str(r.data_interval_start), str(r.data_interval_end)],
                "started": str(r.start_date), "ended": str(r.end_date),
                "tasks": {t.task_id: {"state": str(t.state), "seconds": t.duration, "try": t.try_number}
                          for t in tis}})
print(json.dumps(out))
"""


def recent_runs(n: int = 3, cfg: dict | None = None) -> dict[str, list[dict]]:
    """The ``n`` latest runs of each bundlecast DAG with their tasks, from Airflow's database."""
    from bundlecast.jobs.tools import stack

    cfg = cfg or config()
    if stack.read_state(cfg):  # the stack's Airflow (Postgres) when it is up
        env = stack.env(cfg)
    else:
        ensure_airflow_db(cfg)
        env = airflow_env(cfg)
    done = subprocess.run([sys.executable, "-c", RECENT_RUNS, str(n), *DAG_IDS.values()], env=env,
                          capture_output=True, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BundlecastError(f"cannot read Airflow's runs: {(done.stderr or '?').strip().splitlines()[-1:]}") from None


def render_status(runs: dict[str, list[dict]], lease: dict | None, failures: list[dict]) -> str:
    """``bundlecast status``: who holds the state, the last runs and their tasks, the last failures."""
    lines = [f"state lease : {lease['holder']} since {lease['since']}" if lease else "state lease : free"]
    for dag_id, dag_runs in runs.items():
        lines.append(f"\n{dag_id}: {'no run yet' if not dag_runs else ''}")
        for r in dag_runs:
            start, end = (x[:16] for x in r["interval"])
            lines.append(f"  {r['state']:8s} {r['run_id'][:48]:48s} interval {start} .. {end}")
            for task_id, t in r["tasks"].items():
                took = "" if t["seconds"] is None else f"{t['seconds']:8.1f} s"
                lines.append(f"      {t['state']:16s} {task_id:18s} {took}  try {t['try']}")
    lines.append("\nlast failures:" if failures else "\nlast failures: none recorded")
    for f in failures:
        lines.append(f"  {str(f['failed_at'])[:19]} {f['dag_id']} {f['task_id']} {f['dt']} try {f['try_number']} "
                     f"({'retried' if f['will_retry'] else 'final'}): {f['cause'][:160]}")
    return "\n".join(lines)


def _last_error(log_file: Path) -> str:
    lines = log_file.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if "bundlecast: error:" in line:
            return line.split("bundlecast: error:", 1)[1].strip()
    for line in reversed(lines):
        if "Error" in line or "ERROR" in line:
            return line.strip()[-300:]
    return "no error line in the log"
