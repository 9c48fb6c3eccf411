"""The local production stack, without Docker: ``bundlecast stack up|down|status`` (``make stack``).

What the docker compose stack runs, as processes on this machine, from the project's own
install, with the same prod overlay (``BUNDLECAST_ENV=prod``) pointed at 127.0.0.1:

- **Postgres** 16 from the ``pgserver`` wheel's binaries (``initdb`` once, ``pg_ctl``),
  TCP on 127.0.0.1 only, databases ``airflow`` and ``mlflow``;
- **S3**: a moto server, with the buckets ``bundlecast-exports`` (exports) and
  ``mlflow-artifacts`` (MLflow artifacts), reached through ``AWS_ENDPOINT_URL_S3``;
- **Spark** standalone: a master and two workers (``spark-class ...deploy.master.Master`` /
  ``...deploy.worker.Worker`` from the pyspark install), one core each; every step task is
  its own ``spark-submit`` to the master (the prod overlay's ``warm_driver.enabled: false``);
- **MLflow** tracking server on Postgres with S3 artifacts;
- **Airflow 3**: ``db migrate``, then api-server (with the execution API the tasks report
  to), scheduler (LocalExecutor), dag-processor and triggerer, all on Postgres.

State lives under ``BUNDLECAST_HOME/stack`` (``stack.json``: ports and pids; ``logs/``;
``secrets.env``, mode 0600, generated once: the JWT secret the Airflow components share,
the link and dispatch keys; values already in the environment win). Ports are chosen free
at ``up``. ``down`` stops everything ``up`` started (process groups, Postgres by
``pg_ctl``), whatever state it is in. Moto keeps its objects in memory: a restarted stack
starts with empty buckets.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError

BUCKETS = ("bundlecast-exports", "mlflow-artifacts")
SECRET_NAMES = ("AIRFLOW__API_AUTH__JWT_SECRET", "BUNDLECAST_LINK_SIGNING_KEY", "BUNDLECAST_DISPATCH_FEED_KEY")
ORDER = ("postgres", "moto", "spark-master", "spark-worker-1", "spark-worker-2", "mlflow",
         "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")


def stack_dir(cfg: dict) -> Path:
    return Path(cfg["home"]) / "stack"


def _state_file(cfg: dict) -> Path:
    return stack_dir(cfg) / "stack.json"


def read_state(cfg: dict | None = None) -> dict | None:
    try:
        return json.loads(_state_file(cfg or config()).read_text())
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _pg_bin(name: str) -> str:
    import pgserver

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


def _secrets(cfg: dict) -> dict:
    """The stack's secrets: from the environment, else from ``secrets.env`` (created once, 0600)."""
    path = stack_dir(cfg) / "secrets.env"
    stored = {}
    if path.exists():
        stored = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    missing = [n for n in SECRET_NAMES if n not in stored]
    if missing:
        stored.update({n: secrets.token_urlsafe(32) for n in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("".join(f"{k}={v}\n" for k, v in stored.items()))
    return {n: os.environ.get(n) or stored[n] for n in SECRET_NAMES}


def stack_env(cfg: dict, ports: dict, base: dict | None = None, overrides: dict | None = None) -> dict:
    """The environment every stack process and every command against the stack runs with:
    the prod overlay pointed at 127.0.0.1 (``overrides``, given at ``up``, last)."""
    from bundlecast.jobs.tools.airflow_run import airflow_env

    env = dict(os.environ if base is None else base)
    pg = f"postgresql+psycopg2://postgres@127.0.0.1:{ports['postgres']}"
    api = f"http://127.0.0.1:{ports['airflow-api-server']}"
    env.update({
        "BUNDLECAST_ENV": "prod", "BUNDLECAST_HOME": cfg["home"],
        "BUNDLECAST_SPARK_MASTER": f"spark://127.0.0.1:{ports['spark-master']}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "BUNDLECAST_EXPORT_TARGET": "s3://bundlecast-exports/v1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{ports['moto']}",
        "AWS_ACCESS_KEY_ID": "stack", "AWS_SECRET_ACCESS_KEY": "stack", "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{pg}/airflow",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # local only: everyone on 127.0.0.1 is admin
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW_CONN_BUNDLECAST_SPARK": json.dumps({"conn_type": "spark", "host": "spark://127.0.0.1",
                                                     "port": ports["spark-master"]}),
        # One machine: every step task of a run talks to one warm driver on the cluster (a
        # spark-submit per task costs a driver start and executor set-up each; false: the prod way).
        "BUNDLECAST_WARM_DRIVER": os.environ.get("BUNDLECAST_WARM_DRIVER", "true"),
        # The prod overlay's partition counts are a cluster's; on one machine's two cores they
        # multiply the cost of every small job and Delta log read.
        "BUNDLECAST_SHUFFLE_PARTITIONS": os.environ.get("BUNDLECAST_SHUFFLE_PARTITIONS", "4"),
        "BUNDLECAST_DELTA_SNAPSHOT_PARTITIONS": os.environ.get("BUNDLECAST_DELTA_SNAPSHOT_PARTITIONS", "2"),
        **_secrets(cfg),
        **(overrides or {}),
    })
    from bundlecast.jobs.core.config import load_config

    prod = load_config("prod", Path(cfg["home"]), environ=env)
    return airflow_env(prod, base=env)


def _commands(cfg: dict, ports: dict) -> dict[str, list[str]]:
    d = stack_dir(cfg)
    master = f"spark://127.0.0.1:{ports['spark-master']}"
    worker = [_bin("spark-class"), "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
              "--cores", "1", "--memory", "3g"]
    return {
        "moto": [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["moto"])],
        "spark-master": [_bin("spark-class"), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                         "--port", str(ports["spark-master"]), "--webui-port", str(ports["spark-master-ui"])],
        **{f"spark-worker-{i}": worker + ["--webui-port", str(ports[f"spark-worker-{i}-ui"]),
                                          "--work-dir", str(d / "spark-work" / str(i))] for i in (1, 2)},
        "mlflow": [_bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports["mlflow"]),
                   "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:{ports['postgres']}/mlflow",
                   "--artifacts-destination", "s3://mlflow-artifacts/", "--workers", "1"],
        "airflow-api-server": [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1",
                               "--port", str(ports["airflow-api-server"]), "--workers", "1"],
        "airflow-scheduler": [sys.executable, "-m", "airflow", "scheduler"],
        "airflow-dag-processor": [sys.executable, "-m", "airflow", "dag-processor"],
        "airflow-triggerer": [sys.executable, "-m", "airflow", "triggerer"],
    }


def _wait(what: str, ready, timeout: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    tail = ""
    if log_file and log_file.exists():
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
        tail = f": {lines[-1][-200:]}" if lines else ""
    raise BundlecastError(f"stack: {what} not ready after {timeout:.0f} s (log {log_file}){tail}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - 127.0.0.1
        return response.status == 200


def _pg_user(d: Path):
    """Postgres refuses to run as root: as root, its commands run as the system user
    ``pgserver`` (created if needed, as the pgserver package does), owning ``d``. Returns the
    ``preexec_fn`` that switches to it (None when not root)."""
    if os.geteuid() != 0:
        return None
    import pwd
    import stat

    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    user = ensure_user_exists("pgserver")
    bin_dir = Path(_pg_bin("postgres")).parent
    ensure_prefix_permissions(d)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    for path in (d, *d.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
    uid, gid = pwd.getpwnam("pgserver").pw_uid, pwd.getpwnam("pgserver").pw_gid

    def switch():
        os.setgid(gid)
        os.setuid(uid)
    return switch


def _postgres_up(cfg: dict, port: int, echo) -> None:
    d = stack_dir(cfg) / "postgres"
    data = d / "data"
    d.mkdir(parents=True, exist_ok=True)
    log_file = d / "postgres.log"
    log_file.touch()
    as_pg = _pg_user(d)
    if not (data / "PG_VERSION").exists():
        done = subprocess.run([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                               "--encoding=UTF8", "--no-locale"], capture_output=True, text=True, preexec_fn=as_pg)
        if done.returncode:
            raise BundlecastError(f"stack: initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    done = subprocess.run([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log_file), "-w", "-t", "60", "-o",
                           f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''", "start"],
                          capture_output=True, text=True, preexec_fn=as_pg)
    if done.returncode:
        raise BundlecastError(f"stack: Postgres did not start (log {log_file})")
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("airflow", "mlflow"):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if not cur.fetchone():
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
    echo(f"postgres        127.0.0.1:{port} (databases airflow, mlflow)")


def up(cfg: dict | None = None, echo=print, overrides: dict | None = None) -> dict:
    """Start the stack (nothing if it is already up); returns its state. ``overrides``:
    environment settings for every process of the stack and every command run against it
    (kept in ``stack.json``), e.g. ``AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False`` for a stack
    that runs only backfills and triggered runs."""
    cfg = cfg or config()
    state = read_state(cfg)
    if state and all(_alive(p) for p in state["pids"].values()):
        echo("stack already up")
        return state
    if state:
        down(cfg, echo=lambda _: None)
    d = stack_dir(cfg)
    (d / "logs").mkdir(parents=True, exist_ok=True)
    names = ("postgres", "moto", "spark-master", "spark-master-ui", "spark-worker-1-ui", "spark-worker-2-ui",
             "mlflow", "airflow-api-server")
    ports = {n: _free_port() for n in names}
    state = {"ports": ports, "pids": {}, "started": time.time(), "overrides": dict(overrides or {})}
    _state_file(cfg).write_text(json.dumps(state, indent=1))
    env = stack_env(cfg, ports, overrides=overrides)
    try:
        _postgres_up(cfg, ports["postgres"], echo)
        state["postgres"] = True
        commands = _commands(cfg, ports)

        def start(name: str) -> Path:
            log_file = d / "logs" / f"{name}.log"
            out = open(log_file, "ab")
            proc = subprocess.Popen(commands[name], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=d)
            out.close()
            state["pids"][name] = proc.pid
            _state_file(cfg).write_text(json.dumps(state, indent=1))
            return log_file

        log_file = start("moto")
        _wait("moto S3", lambda: _http_ok(f"http://127.0.0.1:{ports['moto']}/moto-api/"), 60, log_file)
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id="stack",
                          aws_secret_access_key="stack", region_name="us-east-1")
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
        echo(f"s3 (moto)       {env['AWS_ENDPOINT_URL_S3']} (buckets {', '.join(BUCKETS)})")
        log_file = start("spark-master")
        _wait("Spark master", lambda: "I have been elected leader" in log_file.read_text(errors="replace"), 120,
              log_file)
        for i in (1, 2):
            (d / "spark-work" / str(i)).mkdir(parents=True, exist_ok=True)
            worker_log = start(f"spark-worker-{i}")
            _wait(f"Spark worker {i}", lambda f=worker_log: "Successfully registered with master" in
                  f.read_text(errors="replace"), 120, worker_log)
        echo(f"spark           {env['BUNDLECAST_SPARK_MASTER']} (2 workers, 1 core each)")
        log_file = start("mlflow")
        _wait("MLflow server", lambda: _http_ok(f"{env['MLFLOW_TRACKING_URI']}/health"), 180, log_file)
        echo(f"mlflow          {env['MLFLOW_TRACKING_URI']} (Postgres, artifacts s3://mlflow-artifacts/)")
        done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True,
                              text=True)
        if done.returncode:
            lines = [ln for ln in (done.stderr or done.stdout).splitlines() if "Error" in ln] or ["?"]
            raise BundlecastError(f"stack: airflow db migrate failed: {lines[-1][-300:]}")
        api = f"http://127.0.0.1:{ports['airflow-api-server']}"
        log_file = start("airflow-api-server")
        _wait("Airflow api-server", lambda: _http_ok(f"{api}/api/v2/monitor/health"), 180, log_file)
        for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
            start(name)
        _wait("Airflow scheduler, dag-processor and triggerer", lambda: _healthy(api), 180,
              d / "logs" / "airflow-scheduler.log")
        echo(f"airflow         {api} (api-server, scheduler, dag-processor, triggerer; LocalExecutor on Postgres)")
    except BaseException:
        down(cfg, echo=lambda _: None)
        raise
    return state


def _healthy(api: str) -> bool:
    with urllib.request.urlopen(f"{api}/api/v2/monitor/health", timeout=2) as response:  # noqa: S310
        health = json.loads(response.read())
    return all((health.get(part) or {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "dag_processor", "triggerer"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _stop_trees(pids: list[int], grace: float = 20.0) -> None:
    """SIGTERM processes and all their descendants (task processes and Spark drivers start
    their own sessions, so a process group is not enough), SIGKILL what is left after ``grace``."""
    import psutil

    procs = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def down(cfg: dict | None = None, echo=print) -> None:
    """Stop everything ``up`` started, in reverse order, with every process each one started
    (SIGTERM, SIGKILL after 20 s); Postgres is stopped by ``pg_ctl``."""
    cfg = cfg or config()
    state = read_state(cfg)
    if not state:
        echo("stack not running")
        return
    from bundlecast.jobs.tools import driver

    if driver.stop(cfg, wait_seconds=30):  # a warm driver kept between runs is no child of the stack's processes
        echo("stopped the warm Spark driver")
    # Airflow first (nothing schedules or runs a task any more), then the services it used.
    for group in ([n for n in ORDER if n.startswith("airflow-")], [n for n in ORDER if not n.startswith("airflow-")]):
        running = {n: state["pids"][n] for n in reversed(group) if state["pids"].get(n) and _alive(state["pids"][n])}
        _stop_trees(list(running.values()))
        for name in running:
            echo(f"stopped {name}")
    data = stack_dir(cfg) / "postgres" / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                       preexec_fn=_pg_user(data.parent))
        echo("stopped postgres")
    _state_file(cfg).unlink(missing_ok=True)


def status(cfg: dict | None = None) -> dict[str, bool]:
    """Whether each process of the stack is alive (empty when the stack is not up)."""
    state = read_state(cfg or config())
    if not state:
        return {}
    alive = {name: _alive(pid) for name, pid in state["pids"].items()}
    data = stack_dir(cfg or config()) / "postgres" / "data"
    alive["postgres"] = (data / "postmaster.pid").exists()
    return alive


def run(args: list[str], cfg: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a command against the up stack (its environment: Airflow CLI, bundlecast...)."""
    cfg = cfg or config()
    return subprocess.run(args, env=env(cfg), capture_output=True, text=True, **kwargs)


def env(cfg: dict | None = None) -> dict:
    """The environment of commands against the up stack."""
    cfg = cfg or config()
    state = read_state(cfg)
    if not state:
        raise BundlecastError("stack is not up: bundlecast stack up")
    return stack_env(cfg, state["ports"], overrides=state.get("overrides"))
