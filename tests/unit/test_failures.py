"""Failure reports (bundlecast.jobs.tools.failures) and permanent errors: no Spark, no Airflow run."""
import json
import sys

import pytest

from bundlecast.jobs.core.cli_support import run_main
from bundlecast.jobs.core.errors import PERMANENT_EXIT, BundlecastError, ConfigError, DataQualityError


@pytest.mark.parametrize("error, code", [(DataQualityError("orders: 9% quarantined"), PERMANENT_EXIT),
                                         (ConfigError("bad overlay"), PERMANENT_EXIT),
                                         (BundlecastError("driver died"), 1), (RuntimeError("boom"), 1)])
def test_a_failure_a_retry_cannot_fix_has_its_own_exit_code(error, code, capsys):
    def body():
        raise error
    assert run_main(body) == code
    assert capsys.readouterr().err.count("\n") == 1  # one line


def test_a_failed_try_is_recorded_once_and_hooks_are_called(tmp_path, monkeypatch):
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.tools import failures

    monkeypatch.setenv("BUNDLECAST_HOME", str(tmp_path / "home"))
    hook_out = tmp_path / "hook.json"
    monkeypatch.setenv("BUNDLECAST_ON_FAILURE_COMMAND", f"{sys.executable} -c \"import sys; "
                       f"open(r'{hook_out}', 'w').write(sys.stdin.read())\"")
    cfg = config()
    for _ in range(2):  # the same try reported twice leaves one row
        failures.report("bundlecast_nightly", "scheduled__2026-11-21T02:00:00+00:00", "ingest", "2026-11-20", 1, True,
                        DataQualityError("orders: 9.0% of rows quarantined (threshold 5.0%)\nmore"), cfg)
    failures.report("bundlecast_nightly", "scheduled__2026-11-21T02:00:00+00:00", "ingest", "2026-11-20", 2, False,
                    "exit 3", cfg)
    rows = failures.latest(cfg=cfg)
    assert sorted((r["try_number"], r["will_retry"]) for r in rows) == [(1, True), (2, False)]
    first = [r for r in rows if r["try_number"] == 1][0]
    assert first["cause"] == "orders: 9.0% of rows quarantined (threshold 5.0%)" and str(first["dt"]) == "2026-11-20"
    assert json.loads(hook_out.read_text())["task_id"] == "ingest"


def test_a_broken_hook_never_raises(tmp_path, monkeypatch):
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.tools import failures

    monkeypatch.setenv("BUNDLECAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BUNDLECAST_ON_FAILURE_COMMAND", "exit 7")
    monkeypatch.setenv("BUNDLECAST_ON_FAILURE_WEBHOOK", "http://127.0.0.1:9/nothing-listens-here")
    failure = failures.report("bundlecast_hourly", "r1", "need_rescore", "2026-11-20", 1, True, None, config())
    assert failure["cause"] == "unknown" and len(failures.latest(cfg=config())) == 1
