"""The state lease: one DAG run at a time writes a state directory's tables.

The nightly and the hourly write the same tables (silver events and orders, relationship
counts, need predictions, shipments, offers), and the hourly fires every hour, also while a
nightly of many minutes is running. Each DAG run therefore starts by taking the lease
(``BUNDLECAST_HOME/run/state.lease``) and gives it back in a teardown task that runs
whatever happened; a run that finds it held waits for it, then processes its own data
interval, so a delayed hourly gives the same rows as a punctual one.

Why a lease and not an Airflow pool or Asset scheduling: a pool bounds concurrent *tasks*,
so an hourly's tasks would interleave with the nightly's between two of its tasks; Assets
trigger a DAG when another one updates a table, they do not keep two runs apart. The lease
holds for a whole run, for both DAGs, for backfills and for ``bundlecast run`` alike, and it
is visible (``bundlecast status``). Taking it is one atomic file creation; the holder's
retries take it again (same holder); a lease older than ``max_age`` (a run whose teardown
never ran: the scheduler was killed) is taken over with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError

log = logging.getLogger(__name__)


def lease_file(cfg: dict) -> Path:
    return Path(cfg["home"]) / "run" / "state.lease"


def holder_of(cfg: dict | None = None) -> dict | None:
    """The current lease ({holder, since, host, pid}) or None."""
    try:
        return json.loads(lease_file(cfg or config()).read_text())
    except (OSError, ValueError):
        return None


def _age_seconds(lease: dict) -> float:
    since = datetime.fromisoformat(lease.get("since", "1970-01-01T00:00:00+00:00"))
    return (datetime.now(timezone.utc) - since).total_seconds()


def try_acquire(holder: str, cfg: dict | None = None, max_age: float = 6 * 3600) -> dict | None:
    """Take the lease for ``holder`` (e.g. ``bundlecast_nightly/scheduled__...``); None if
    taken, else the lease held by someone else."""
    cfg = cfg or config()
    path = lease_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    lease = {"holder": holder, "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "host": socket.gethostname(), "pid": os.getpid()}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        current = holder_of(cfg)
        if current is None:  # being written or removed right now: look again
            return {"holder": "?", "since": lease["since"]}
        if current.get("holder") == holder:
            return None  # a retry of the holder's own task
        if _age_seconds(current) > max_age:
            log.warning("taking over the state lease of %s, held since %s (older than %.0f h)",
                        current.get("holder"), current.get("since"), max_age / 3600)
            path.unlink(missing_ok=True)
            return try_acquire(holder, cfg, max_age)
        return current
    with os.fdopen(fd, "w") as out:
        json.dump(lease, out)
    return None


def acquire(holder: str, cfg: dict | None = None, wait_seconds: float = 4 * 3600, poll: float = 15.0,
            max_age: float = 6 * 3600, echo=print) -> None:
    """Take the lease, waiting up to ``wait_seconds`` for the current holder to give it back."""
    cfg = cfg or config()
    deadline, said = time.monotonic() + wait_seconds, None
    while True:
        current = try_acquire(holder, cfg, max_age)
        if current is None:
            echo(f"[bundlecast] state lease taken by {holder}")
            return
        if said != current.get("holder"):
            echo(f"[bundlecast] waiting for {current.get('holder')} (running since {current.get('since')}) to finish")
            said = current.get("holder")
        if time.monotonic() >= deadline:
            raise BundlecastError(f"the state directory is still in use by {current.get('holder')} (since "
                                  f"{current.get('since')}) after {wait_seconds / 60:.0f} min of waiting")
        time.sleep(poll)


def release(holder: str, cfg: dict | None = None) -> bool:
    """Give the lease back if ``holder`` holds it; returns whether it did."""
    cfg = cfg or config()
    current = holder_of(cfg)
    if current and current.get("holder") == holder:
        lease_file(cfg).unlink(missing_ok=True)
        return True
    return False
