"""The warm Spark driver (``bundlecast.jobs.tools.driver``): one long-lived driver per
BUNDLECAST_HOME that runs step command lines sent by the DAG's tasks."""
from __future__ import annotations

import os
import time
from multiprocessing.connection import Client

import pytest

from bundlecast.jobs.tools import driver


def test_stream_sends_complete_lines_and_the_rest_on_flush():
    sent = []
    stream = driver._Stream(sent.append)
    stream.write("one\ntw")
    stream.write("o\nthree")
    assert sent == ["one", "two"]
    stream.flush()
    assert sent == ["one", "two", "three"]


@pytest.mark.parametrize("value,expected", [(True, True), ("true", True), ("1", True), ("false", False),
                                            ("", False), (False, False)])
def test_enabled_reads_the_setting_as_a_switch(value, expected):
    assert driver.enabled({"spark": {"warm_driver": {"enabled": value}}}) is expected


@pytest.fixture()
def driver_home(tmp_path, monkeypatch):
    monkeypatch.setenv("BUNDLECAST_HOME", str(tmp_path))
    monkeypatch.setenv("BUNDLECAST_SPARK_MASTER", "local[2]")
    monkeypatch.delenv("BUNDLECAST_DRIVER_MEMORY", raising=False)
    yield tmp_path
    driver.stop()


@pytest.mark.slow
def test_steps_run_on_one_driver_with_their_output_and_exit_code(driver_home):
    first = driver.ensure(echo=lambda m: None)
    assert (driver_home / "run" / "driver.json").stat().st_mode & 0o077 == 0  # the key is the owner's only
    lines = []
    assert driver.run_step(["experiments", "--date", "2026-11-20"], echo=lines.append) == 0
    assert any("nothing to analyse" in line for line in lines)
    assert any("finished on the warm driver" in line for line in lines)

    lines.clear()  # a refused command line: argparse's exit code, its message streamed back
    assert driver.run_step(["experiments", "--date", "2026-13-01"], echo=lines.append) == 2
    assert any("not a date" in line for line in lines)

    lines.clear()  # a failing step: exit 1 and one error line, no Java stack trace
    assert driver.run_step(["ingest", "--date", "2026-11-20", "--datasets", "nope"], echo=lines.append) == 1
    errors = [line for line in lines if line.startswith("bundlecast: error:")]
    assert len(errors) == 1 and "unknown dataset" in errors[0]
    assert not any(line.lstrip().startswith("at org.apache") for line in lines)

    # a client without the key is refused, and the driver keeps serving
    with pytest.raises(Exception):
        Client(("127.0.0.1", int(first["port"])), authkey=b"x" * 32)
    assert driver.run_step(["experiments", "--date", "2026-11-20"], echo=lambda m: None) == 0
    assert driver.status()["pid"] == first["pid"]  # the same driver ran every step

    # another configuration (a task process computes its own): the driver is replaced before use
    from bundlecast.jobs.core.config import config

    other = config()
    other["spark"]["driver_memory"] = "1g"
    second = driver.ensure(other, echo=lambda m: None)
    assert second["pid"] != first["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(first["pid"]), 0)

    # the end of a run: kept warm for the next one when so configured, else stopped
    kept = config()
    kept["spark"]["warm_driver"]["keep_after_run"] = "true"
    assert "kept for the next run" in driver.end_of_run(kept)
    assert driver.status()["pid"] == second["pid"]
    started = time.monotonic()
    assert driver.end_of_run() == "warm Spark driver stopped"
    assert time.monotonic() - started < 60  # stopped, not killed after the wait
    assert driver.status() is None and driver.stop() is False and driver.end_of_run() is None


def test_a_process_that_exited_unreaped_is_not_alive():
    """A zombie still takes signal 0; the driver's record must not count it as running (a
    killed driver re-parented to a PID 1 that never reaps, as in a container without init)."""
    import subprocess

    child = subprocess.Popen(["true"])  # exits at once; not reaped until waited for
    deadline = time.monotonic() + 10
    while not driver._zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver._zombie(child.pid) or not os.path.exists("/proc")
    os.kill(child.pid, 0)  # signal 0 still reaches it
    assert not driver._alive(child.pid)
    assert not driver._zombie(os.getpid()) and driver._alive(os.getpid())


@pytest.mark.slow
def test_a_driver_that_does_not_answer_is_replaced(driver_home):
    """The record names a live process that no driver listens for (a killed driver not yet
    gone): the step's task kills it and starts a new driver instead of failing every retry."""
    import json
    import socket
    import subprocess

    from bundlecast.jobs.core.config import config

    cfg = config()
    silent = subprocess.Popen(["sleep", "300"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    driver.run_dir(cfg).mkdir(parents=True, exist_ok=True)
    (driver.run_dir(cfg) / "driver.json").write_text(json.dumps(
        {"pid": silent.pid, "port": port, "key": "00" * 32, "fingerprint": driver.fingerprint(cfg)}))
    lines = []
    assert driver.run_step(["experiments", "--date", "2026-11-20"], echo=lines.append) == 0
    assert any(f"pid {silent.pid}) does not answer" in line for line in lines)
    assert silent.wait(timeout=10) == -9
    assert driver.status()["pid"] != silent.pid
