"""The local production stack (``bundlecast stack``), run the way operators run it: the
Airflow **scheduler** (not ``dags test``) runs the nightly for two consecutive days and the
hourly runs between them, on Postgres, with the Spark standalone cluster, the MLflow server
and S3 (moto); then the tables, the S3 exports (manifest against objects) and the MLflow
runs and registered models are checked, and the stack is stopped.

The runs are backfills (``airflow backfill create``), which the scheduler executes; the
stack runs with ``AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False`` so that no run for today's
wall-clock interval (with nothing landed) joins in.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundlecast.jobs.core.config import load_config

D1, D2 = "2026-11-20", "2026-11-21"
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 1800


def _bundlecast(home: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYSPARK_GATEWAY", "BUNDLECAST_ENV"))}
    env["BUNDLECAST_HOME"] = str(home)
    return subprocess.run([str(BIN / "bundlecast"), *args], env=env, capture_output=True, text=True, timeout=900)


def _runs(cfg) -> dict:
    from bundlecast.jobs.tools import stack
    from bundlecast.jobs.tools.airflow_run import RECENT_RUNS

    done = stack.run([sys.executable, "-c", RECENT_RUNS, "20", "bundlecast_nightly", "bundlecast_hourly"], cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _backfill(cfg, dag_id: str, first_due: str, last_due: str, expected: int, again: bool = False,
              during=None) -> list[dict]:
    """Create a backfill of the runs due from ``first_due`` to ``last_due`` (``again``: also
    the runs that completed before) and wait until the scheduler has finished all of them;
    ``during(runs)`` is called at every poll. Returns the runs."""
    from bundlecast.jobs.tools import stack

    # The scheduler marks the previous backfill completed on one of its next loops, after its
    # runs finished: until then Airflow refuses a new one for the DAG (AlreadyRunningBackfill).
    settle = time.monotonic() + 180
    while True:
        done = stack.run([sys.executable, "-m", "airflow", "backfill", "create", "--dag-id", dag_id,
                          "--from-date", first_due, "--to-date", last_due, "--max-active-runs", "1"]
                         + (["--reprocess-behavior", "completed"] if again else []), cfg)
        if done.returncode == 0 or "AlreadyRunningBackfill" not in done.stderr or time.monotonic() > settle:
            break
        time.sleep(5)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        runs = [r for r in _runs(cfg)[dag_id] if r["run_type"].endswith("backfill")
                and first_due <= r["interval"][1].replace(" ", "T") <= last_due]
        if during:
            during(runs)
        # a run done again: every task has a new try
        fresh = not again or all(all(t["try"] >= 2 for t in r["tasks"].values()) for r in runs)
        if len(runs) == expected and fresh and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(2 if during else 10)
    raise AssertionError(f"{dag_id} backfill {first_due}..{last_due} not finished after {RUN_TIMEOUT} s: {runs}")


@pytest.fixture(scope="module")
def stack_home():
    """A tiny world with two landed days, the stack up, the scheduler's runs done."""
    import shutil
    import tempfile

    from bundlecast.jobs.tools import stack

    # Not under pytest's temporary root: run as root, Postgres runs as the user ``pgserver``,
    # and every pytest session resets that root to mode 0700.
    home = Path(tempfile.mkdtemp(prefix="bundlecast-stack-"))
    for args in (("generate", "--scale", "tiny", "--seed", "5", "--date", D1), ("generate", "--next-day", "--date", D1)):
        done = _bundlecast(home, *args)
        assert done.returncode == 0, done.stderr[-2000:]
    cfg = load_config("local", home, environ={})
    t0 = time.monotonic()
    stack.up(cfg, echo=lambda _: None, overrides={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                                                  "BUNDLECAST_RETRY_DELAY_SECONDS": "10",
                                                  "BUNDLECAST_KEEP_DRIVER": "true"})
    timings = {"stack up": time.monotonic() - t0}
    try:
        for dag_id in ("bundlecast_nightly", "bundlecast_hourly"):
            done = stack.run([sys.executable, "-m", "airflow", "dags", "unpause", dag_id], cfg)
            assert done.returncode == 0, done.stderr[-2000:]
        runs = {}
        for name, dag_id, first, last, n in (
                ("night 1", "bundlecast_nightly", f"{D2}T02:00:00+00:00", f"{D2}T02:00:00+00:00", 1),
                ("hourlies", "bundlecast_hourly", f"{D2}T11:15:00+00:00", f"{D2}T12:15:00+00:00", 2),
                ("night 2", "bundlecast_nightly", "2026-11-22T02:00:00+00:00", "2026-11-22T02:00:00+00:00", 1)):
            t0 = time.monotonic()
            runs[name] = _backfill(cfg, dag_id, first, last, n)
            timings[name] = time.monotonic() - t0
        yield {"home": home, "cfg": cfg, "runs": runs, "env": stack.env(cfg), "timings": timings}
    finally:
        stack.down(cfg, echo=lambda _: None)
        print(f"\nstack test timings (s): { {k: round(v) for k, v in timings.items()} }")
        shutil.rmtree(home, ignore_errors=True)


def test_the_scheduler_ran_both_nights_and_the_hourlies_between(stack_home):
    runs = stack_home["runs"]
    for name, dag_runs in runs.items():
        for r in dag_runs:
            failed = {t: s["state"] for t, s in r["tasks"].items() if s["state"] != "success"}
            assert r["state"] == "success" and not failed, (name, r["run_id"], failed)
    # the data intervals: the nightly due at 02:00 on D + 1 covers D; the hourlies fold D + 1
    assert runs["night 1"][0]["interval"][0].startswith(f"{D1} 02:00")
    assert sorted(r["interval"][1][:16] for r in runs["hourlies"]) == [f"{D2} 11:15", f"{D2} 12:15"]


def test_tables_hold_both_days(stack_home):
    from deltalake import DeltaTable

    from bundlecast.jobs.core import catalog

    cfg = stack_home["cfg"]

    def rows(name, **where):
        path = Path(catalog.table_path(name, cfg))
        if not (path / "_delta_log").is_dir():
            return []
        table = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
        return [r for r in table if all(str(r[k]) == v for k, v in where.items())]
    for day in (D1, D2):
        assert rows("events", dt=day) and rows("orders", dt=day), day
        assert rows("need_predictions", dt=day) and rows("offers", dt=day), day
        audit = {r["dataset"]: r for r in rows("ingestion_audit", dt=day)}
        assert all(a["status"] in ("ok", "empty") for a in audit.values()), audit
        assert audit["events"]["rows_deferred"] == 0  # the nightly read the whole day
    steps = {(r["step"], r["mode"], str(r["dt"])) for r in rows("step_runs")}
    assert ("ingest", "", D2) in steps and ("relationships", "incremental", D2) in steps
    assert ("need", "train", D1) in steps and ("need", "train", D2) in steps
    assert not rows("run_failures")


def test_exports_in_s3_match_their_manifests(stack_home):
    import boto3

    env = stack_home["env"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id="stack",
                      aws_secret_access_key="stack", region_name="us-east-1")
    cfg = load_config("prod", stack_home["home"], environ=env)
    for table in cfg["exports"]["tables"]:
        for day in (D1, D2):
            prefix = f"v1/{table}/dt={day}/"
            listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="bundlecast-exports", Prefix=prefix)
                      .get("Contents", [])}
            manifest = json.loads(s3.get_object(Bucket="bundlecast-exports", Key=prefix + "_manifest.json")["Body"].read())
            assert {prefix + f["name"]: f["bytes"] for f in manifest["files"]} == \
                {k: v for k, v in listed.items() if not k.endswith("_manifest.json")}, (table, day)


def test_mlflow_server_has_the_runs_and_the_registered_models(stack_home, monkeypatch):
    from mlflow.tracking import MlflowClient

    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, stack_home["env"][key])  # the client reads the artifacts from S3 itself
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", stack_home["env"]["AWS_ENDPOINT_URL_S3"])
    client = MlflowClient(tracking_uri=stack_home["env"]["MLFLOW_TRACKING_URI"])
    names = {m.name for m in client.search_registered_models()}
    assert "bundlecast-need" in names, names
    need = client.get_experiment_by_name("bundlecast-need-model")
    runs = client.search_runs([need.experiment_id])
    assert len(runs) >= 2  # trained each night
    artifacts = client.list_artifacts(runs[0].info.run_id)
    assert artifacts, "the run's artifacts are in S3 through the server"


VOLATILE_TABLES = {"ops/step_runs", "ops/run_failures"}  # timings; the failures the faults cause


def _snapshot(home: Path) -> dict:
    """Every table's rows (tests/table_digest.py: run ids, clocks and durations left out;
    here also the registry's model version, which counts every training like a run id)."""
    import re

    sys.path.insert(0, str(Path(__file__).parent))
    import table_digest

    table_digest.VOLATILE = re.compile(table_digest.VOLATILE.pattern + r"|^model_version$")
    return {k: v for k, v in table_digest.snapshot_home(home).items() if k not in VOLATILE_TABLES}


def test_a_killed_worker_and_a_killed_driver_are_survived(stack_home):
    """Night 2 again, with a Spark worker killed (kill -9) during one task and the task's
    driver (the run's warm driver) during a later one: Spark or Airflow's retry completes
    the run, every table equals the undisturbed night's, and no application of the killed
    driver is left running on the cluster."""
    import os
    import signal
    import urllib.request

    from bundlecast.jobs.tools import stack

    cfg, home = stack_home["cfg"], stack_home["home"]
    undisturbed = _snapshot(home)
    state = stack.read_state(cfg)
    killed: list[tuple[str, str, float]] = []

    def inject(runs):
        if not runs:
            return
        tasks = runs[0]["tasks"]
        if not killed and (tasks.get("forecast") or {}).get("state") == "running":
            os.kill(state["pids"]["spark-worker-1"], signal.SIGKILL)
            killed.append(("spark worker 1", "forecast", time.time()))
        elif len(killed) == 1 and (tasks.get("need_train") or {}).get("state") == "running":
            driver = json.loads((home / "run" / "driver.json").read_text())
            os.kill(int(driver["pid"]), signal.SIGKILL)
            killed.append((f"warm driver pid {driver['pid']}", "need_train", time.time()))

    t0 = time.monotonic()
    run = _backfill(cfg, "bundlecast_nightly", "2026-11-22T02:00:00+00:00", "2026-11-22T02:00:00+00:00", 1,
                    again=True, during=inject)[0]
    stack_home["timings"]["night 2 with faults"] = time.monotonic() - t0
    print(f"\nfaults: {killed}; tries: { {t: s['try'] for t, s in run['tasks'].items()} }")
    assert [what for what, _, _ in killed][:1] == ["spark worker 1"] and len(killed) == 2, killed
    assert run["state"] == "success", {t: s["state"] for t, s in run["tasks"].items()}
    # the driver's death failed need_train's try; its retry completed
    assert run["tasks"]["need_train"]["try"] > run["tasks"]["take_lease"]["try"]
    after = _snapshot(home)
    import table_digest

    differ = {t: table_digest.rows_differ(undisturbed.get(t, []), after.get(t, []))
              for t in sorted(set(undisturbed) | set(after))}
    print(f"tables compared: {len(differ)}, differing: {sum(d is not None for d in differ.values())}")
    assert not {t: d for t, d in differ.items() if d}
    master_ui = f"http://127.0.0.1:{state['ports']['spark-master-ui']}/json/"
    with urllib.request.urlopen(master_ui, timeout=5) as response:
        apps = json.loads(response.read())
    driver_killed = killed[1][2]
    stale = [a for a in apps.get("activeapps", []) if a["starttime"] / 1000 < driver_killed]
    assert not stale, stale  # the killed driver's application is gone; only the retry's driver is up
    from deltalake import DeltaTable

    from bundlecast.jobs.core import catalog

    failures = DeltaTable(catalog.table_path("run_failures", cfg)).to_pyarrow_table().to_pylist()
    assert any(f["task_id"] == "need_train" and f["will_retry"] for f in failures), failures


def test_the_stack_stops_everything_it_started(stack_home):
    """Last in the module: ``down`` stops every process and Postgres (the fixture's own
    ``down`` then finds nothing to do)."""
    from bundlecast.jobs.tools import stack

    cfg = stack_home["cfg"]
    pids = dict(stack.read_state(cfg)["pids"])
    stack.down(cfg, echo=lambda _: None)
    assert not any(stack._alive(pid) for pid in pids.values())
    from bundlecast.jobs.tools import driver

    assert driver.status(cfg) is None  # the warm driver kept between runs is stopped too
    assert stack.status(cfg) == {} and not (Path(cfg["home"]) / "stack" / "postgres" / "data" / "postmaster.pid").exists()
