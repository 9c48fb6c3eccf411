"""The state lease (bundlecast.jobs.tools.lease): one DAG run at a time per state directory."""
import json
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.tools import lease


@pytest.fixture
def cfg(tmp_path):
    return {"home": str(tmp_path)}


def test_one_holder_at_a_time_and_its_retries_take_it_again(cfg):
    assert lease.try_acquire("bundlecast_nightly/r1", cfg) is None
    assert lease.try_acquire("bundlecast_nightly/r1", cfg) is None  # the holder's retry
    held = lease.try_acquire("bundlecast_hourly/r2", cfg)
    assert held["holder"] == "bundlecast_nightly/r1"
    assert not lease.release("bundlecast_hourly/r2", cfg)  # only the holder gives it back
    assert lease.release("bundlecast_nightly/r1", cfg)
    assert lease.try_acquire("bundlecast_hourly/r2", cfg) is None


def test_a_waiting_run_starts_when_the_holder_releases(cfg):
    lease.try_acquire("bundlecast_nightly/r1", cfg)
    threading.Timer(0.3, lambda: lease.release("bundlecast_nightly/r1", cfg)).start()
    said, t0 = [], time.monotonic()
    lease.acquire("bundlecast_hourly/r2", cfg, wait_seconds=10, poll=0.05, echo=said.append)
    assert time.monotonic() - t0 >= 0.25
    assert "waiting for bundlecast_nightly/r1" in said[0] and lease.holder_of(cfg)["holder"] == "bundlecast_hourly/r2"


def test_waiting_too_long_fails_in_one_line(cfg):
    lease.try_acquire("bundlecast_nightly/r1", cfg)
    with pytest.raises(BundlecastError) as err:
        lease.acquire("bundlecast_hourly/r2", cfg, wait_seconds=0.1, poll=0.05, echo=lambda _: None)
    assert "still in use by bundlecast_nightly/r1" in str(err.value) and "\n" not in str(err.value)


def test_a_lease_whose_run_never_ended_is_taken_over(cfg):
    lease.try_acquire("bundlecast_nightly/killed", cfg)
    stale = lease.holder_of(cfg)
    stale["since"] = (datetime.now(timezone.utc) - timedelta(hours=7)).isoformat()
    lease.lease_file(cfg).write_text(json.dumps(stale))
    assert lease.try_acquire("bundlecast_hourly/r2", cfg, max_age=6 * 3600) is None
    assert lease.holder_of(cfg)["holder"] == "bundlecast_hourly/r2"
