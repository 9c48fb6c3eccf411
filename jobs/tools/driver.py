"""One warm Spark driver per BUNDLECAST_HOME that every task of a run talks to.

A Spark task that starts its own driver pays a JVM start, the Delta and metastore set-up,
the imports of GX, MLflow and Prophet, and a cold JIT: on the tiny world that fixed cost was
larger than the work. With ``spark.warm_driver.enabled`` the DAG's step tasks (and
``bundlecast run``) hand their step command line to one long-lived driver process instead:

    bundlecast driver start|status|stop

- The driver is ``python -m bundlecast.jobs.tools.driver serve``: one SparkSession (from
  :func:`bundlecast.jobs.core.spark.get_spark`, so local or a cluster master alike) and a
  listener on 127.0.0.1 whose port and one-time key are in ``BUNDLECAST_HOME/run/driver.json``
  (mode 0600; ``multiprocessing.connection`` authenticates every client with that key).
- Steps run one at a time, in the order they arrive. A step's printed output and log records
  are streamed back to the task that sent it, and its exit code decides the task's state, as
  with spark-submit. After each step the session's cached frames are dropped.
- The first task that needs the driver starts it (under a file lock, so two tasks never start
  two); the DAGs stop it in a teardown task, and it stops by itself after
  ``spark.warm_driver.idle_seconds`` without a step. A driver started with another
  configuration (a different overlay or environment) is replaced before use.
- If the JVM dies the driver exits; the task fails and its retry starts a fresh driver.

Why not Spark Connect: the Delta Connect server plugin (``io.delta:delta-connect-server``) is
not published for Delta 4.4 / Spark 4.2, so ``DeltaTable`` merges (upserts, the reservation
ledger's compare-and-set) cannot run over Connect; this driver runs the same code as
spark-submit does. ``spark.warm_driver.enabled: false`` (the prod overlay) keeps one
spark-submit per task.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path

from bundlecast.jobs.core.config import config, truthy
from bundlecast.jobs.core.errors import BundlecastError, one_line

log = logging.getLogger(__name__)


def settings(cfg: dict) -> dict:
    """``spark.warm_driver`` with its defaults."""
    return {"enabled": False, "idle_seconds": 900, "start_timeout_seconds": 300, "keep_after_run": False,
            **(cfg["spark"].get("warm_driver") or {})}


def enabled(cfg: dict | None = None) -> bool:
    return truthy(settings(cfg or config())["enabled"])


def kept_after_run(cfg: dict | None = None) -> bool:
    """Whether a run leaves the driver up for the next one (``spark.warm_driver.keep_after_run``):
    it then stops only after ``idle_seconds`` without a step, or by ``bundlecast driver stop``."""
    return truthy(settings(cfg or config())["keep_after_run"])


def end_of_run(cfg: dict | None = None) -> str | None:
    """What a finished run does with the driver: stop it, unless it is kept for the next run.
    Returns the line to print (None: there was no driver)."""
    cfg = cfg or config()
    if kept_after_run(cfg):
        up = status(cfg)
        return (f"warm Spark driver kept for the next run (stops after {settings(cfg)['idle_seconds']} s idle)"
                if up else None)
    return "warm Spark driver stopped" if stop(cfg) else None


def run_dir(cfg: dict) -> Path:
    return Path(cfg["home"]) / "run"


def fingerprint(cfg: dict) -> str:
    """Identifies the configuration a driver was started with (secrets included, hashed)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # started by this process: reap it, a zombie is not alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited but not been reaped. A killed driver whose starting task has
    ended is re-parented to PID 1, and in a container whose PID 1 is not an init (no tini)
    nobody reaps it: signal 0 still reaches it, yet it will never answer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS), or gone meanwhile
        return False
    return stat[stat.rfind(")") + 2:][:1] in ("Z", "X")  # the state follows the parenthesised command


def status(cfg: dict | None = None) -> dict | None:
    """The running driver's record (pid, port, key, started, application, config fingerprint), or None."""
    cfg = cfg or config()
    path = run_dir(cfg) / "driver.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state.get("pid", 0))):
        path.unlink(missing_ok=True)
        return None
    return state


def _request(state: dict, message: dict):
    conn = Client(("127.0.0.1", int(state["port"])), authkey=bytes.fromhex(state["key"]))
    conn.send(message)
    return conn


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


def stop(cfg: dict | None = None, wait_seconds: float = 120) -> bool:
    """Stop the driver after its current step (True if one was running)."""
    cfg = cfg or config()
    state = status(cfg)
    if state is None:
        return False
    try:
        with contextlib.closing(_request(state, {"op": "stop"})) as conn:
            conn.recv()
    except (OSError, EOFError):
        pass
    if not _wait_gone(int(state["pid"]), wait_seconds):
        os.kill(int(state["pid"]), 9)
    (run_dir(cfg) / "driver.json").unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def _start_lock(cfg: dict):
    run_dir(cfg).mkdir(parents=True, exist_ok=True)
    with open(run_dir(cfg) / "driver.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(cfg: dict | None = None, echo=print) -> dict:
    """The running driver for this configuration, started if there is none."""
    cfg = cfg or config()
    with _start_lock(cfg):
        state = status(cfg)
        if state is not None and state.get("fingerprint") != fingerprint(cfg):
            echo("[bundlecast] the warm Spark driver was started with another configuration; replacing it")
            stop(cfg)
            state = None
        if state is not None:
            return state
        return _start(cfg, echo)


def _start(cfg: dict, echo) -> dict:
    log_file = run_dir(cfg) / "driver.log"
    echo(f"[bundlecast] starting the warm Spark driver (log: {log_file})")
    started = time.monotonic()
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bundlecast.jobs.tools.driver", "serve"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ))
    timeout = float(settings(cfg)["start_timeout_seconds"])
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise BundlecastError(f"the warm Spark driver exited while starting: {_last_line(log_file)} "
                                  f"(see {log_file})")
        state = status(cfg)
        if state is not None and state.get("pid") == proc.pid:
            echo(f"[bundlecast] warm Spark driver ready in {time.monotonic() - started:.1f} s (pid {proc.pid})")
            return state
        time.sleep(0.2)
    proc.kill()
    raise BundlecastError(f"the warm Spark driver did not start within {timeout:.0f} s (see {log_file})")


def _replace_unreachable(cfg: dict, state: dict, echo) -> dict:
    """Kill the driver of ``state`` (it did not answer), forget its record and start a new
    one, under the start lock (another task may have replaced it already)."""
    with _start_lock(cfg):
        current = status(cfg)
        if current is not None and current.get("pid") != state.get("pid"):
            return current
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(state["pid"]), 9)
        (run_dir(cfg) / "driver.json").unlink(missing_ok=True)
        return _start(cfg, echo)


def _last_line(log_file: Path) -> str:
    lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1].strip()[-300:]


def run_step(argv: list[str], cfg: dict | None = None, echo=print) -> int:
    """Run one step command line (``STEP --date D ...``) on the warm driver; its output goes to
    ``echo`` line by line. Returns the step's exit code."""
    cfg = cfg or config()
    state = ensure(cfg, echo)
    started = time.monotonic()
    try:
        conn = _request(state, {"op": "step", "argv": list(argv)})
    except (OSError, EOFError) as exc:
        # A record whose driver does not answer (killed, and its process not gone yet): a new one.
        echo(f"[bundlecast] the warm Spark driver (pid {state['pid']}) does not answer ({one_line(exc)}); "
             "starting a new one")
        state = _replace_unreachable(cfg, state, echo)
        try:
            conn = _request(state, {"op": "step", "argv": list(argv)})
        except (OSError, EOFError) as exc:
            raise BundlecastError(f"cannot reach the warm Spark driver (pid {state['pid']}): {one_line(exc)}") \
                from None
    with contextlib.closing(conn):
        while True:
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                raise BundlecastError("the warm Spark driver died during the step (see "
                                      f"{run_dir(cfg) / 'driver.log'}); a retry starts a new one") from None
            if kind == "out":
                echo(payload)
            elif kind == "rc":
                echo(f"[bundlecast] {' '.join(argv[:1])} finished on the warm driver in "
                     f"{time.monotonic() - started:.1f} s (exit {int(payload)})")
                return int(payload)


# ------------------------------------------------------------------------------ the server
class _Stream(io.TextIOBase):
    """A text stream whose complete lines are sent to the client as ``("out", line)``."""

    def __init__(self, send):
        self._send, self._buffer = send, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._send(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            self._send(self._buffer)
            self._buffer = ""


# The libraries the steps import on first use (several seconds together): imported while
# the JVM starts, which leaves this process idle, instead of inside the first steps.
PRELOAD = ("great_expectations", "mlflow", "mlflow.sklearn", "prophet", "sklearn.ensemble",
           "sklearn.inspection", "matplotlib.pyplot", "ortools.sat.python.cp_model",
           "ortools.constraint_solver.pywrapcp")


def _preload() -> None:
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the step that needs it reports the error
            log.warning("preloading %s failed: %s", name, one_line(exc))


class _Server:
    def __init__(self, cfg: dict):
        from bundlecast.jobs.core.spark import get_spark

        self.cfg = cfg
        preload = threading.Thread(target=_preload, name="preload", daemon=True)
        preload.start()
        self.spark = get_spark("bundlecast-driver", cfg)
        preload.join()
        self.key = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.key)
        self.step_lock = threading.Lock()
        self.last_used = time.monotonic()
        self.busy = False

    def publish(self) -> None:
        path = run_dir(self.cfg) / "driver.json"
        tmp = path.with_suffix(".tmp")
        state = {"pid": os.getpid(), "port": self.listener.address[1], "key": self.key.hex(),
                 "fingerprint": fingerprint(self.cfg), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "app_id": self.spark.sparkContext.applicationId}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        tmp.replace(path)

    def serve(self) -> None:
        self.publish()
        threading.Thread(target=self._idle_watch, daemon=True).start()
        while True:
            try:
                conn = self.listener.accept()
            except Exception as exc:  # noqa: BLE001 - a client failing authentication is not fatal
                log.warning("refused a connection: %s", one_line(exc))
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn) -> None:
        with contextlib.closing(conn):
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            op = message.get("op")
            if op == "stop":
                with self.step_lock:
                    conn.send({"stopping": True})
                    self.shutdown()
            elif op == "step":
                self._step(conn, list(message.get("argv") or []))

    def _step(self, conn, argv: list[str]) -> None:
        from bundlecast.jobs.pipeline import main

        def send(line: str) -> None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("out", line))

        with self.step_lock:
            self.busy = True
            stream = _Stream(send)
            handler = logging.StreamHandler(stream)
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            root = logging.getLogger()
            root.addHandler(handler)
            try:
                with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                    code = main(argv)
            except SystemExit as exc:  # argparse refusing the command line
                code = exc.code if isinstance(exc.code, int) else 2
            finally:
                stream.flush()
                root.removeHandler(handler)
                self.busy = False
                self.last_used = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                conn.send(("rc", code))
            if not self._spark_alive():
                log.error("the Spark session is gone; the driver stops")
                self.shutdown()
            with contextlib.suppress(Exception):
                self.spark.catalog.clearCache()

    def _spark_alive(self) -> bool:
        try:
            return not self.spark.sparkContext._jsc.sc().isStopped()
        except Exception:  # noqa: BLE001 - a dead gateway is exactly what is being checked
            return False

    def _idle_watch(self) -> None:
        idle = float(settings(self.cfg)["idle_seconds"])
        while True:
            time.sleep(min(5.0, idle))
            if not self.busy and time.monotonic() - self.last_used > idle:
                with self.step_lock:
                    log.warning("idle for %.0f s; the driver stops", idle)
                    self.shutdown()

    def shutdown(self) -> None:
        """Stop the session (bounded: a JVM that does not stop in 30 s is left to exit when
        this process does, as PySpark's gateway exits when its parent's pipe closes)."""
        (run_dir(self.cfg) / "driver.json").unlink(missing_ok=True)
        stopper = threading.Thread(target=self._stop_spark, daemon=True)
        stopper.start()
        stopper.join(30)
        log.warning("driver stopped%s", "" if not stopper.is_alive() else " (the Spark session did not stop in 30 s)")
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(0)

    def _stop_spark(self) -> None:
        with contextlib.suppress(Exception):
            self.spark.stop()


def serve() -> None:
    cfg = config()
    run_dir(cfg).mkdir(parents=True, exist_ok=True)
    _Server(cfg).serve()


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve()
