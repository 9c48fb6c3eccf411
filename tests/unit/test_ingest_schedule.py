"""Ingestion's schedule: datasets run side by side, each after the datasets it references;
results come back in contract order whatever the finishing order; a contract that
references a later dataset is refused."""
from __future__ import annotations

import threading
import time

import pytest

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.errors import ConfigError
from bundlecast.jobs.ingest import job


def _fake_ingest(events: list, lock: threading.Lock, fail: str | None = None):
    def ingest(spark, spec, dt, run_id, cfg, gx_root, stale, until=None, deferred=None):
        with lock:
            events.append(("start", spec.name, time.monotonic()))
        # Datasets nothing waits on take longest, so finishing order differs from contract order.
        time.sleep(0.05 if spec.name in ("sites", "items", "users", "orders") else 0.15)
        with lock:
            events.append(("end", spec.name, time.monotonic()))
        if spec.name == fail:
            raise RuntimeError("disk on fire\nsecond line")
        return job.AuditRow(spec.name, dt, run_id, 1, 0, 1, 1, 0, 0, 0.0, "{}", True, "ok"), [], None
    return ingest


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_each_dataset_starts_after_the_datasets_it_references(monkeypatch, workers):
    events, lock = [], threading.Lock()
    monkeypatch.setattr(job, "ingest_dataset", _fake_ingest(events, lock, fail="users"))
    specs = list(catalog.datasets().values())
    lines = []
    results = job.ingest_all(None, specs, "2026-11-20", "r1", {}, None, workers, set(), lines.append)

    assert [audit.dataset for audit, _, _ in results] == [s.name for s in specs]
    assert len(lines) == len(specs)
    start = {name: t for kind, name, t in events if kind == "start"}
    end = {name: t for kind, name, t in events if kind == "end"}
    for spec in specs:
        for ref in spec.refs:
            assert end[ref.dataset] <= start[spec.name], f"{spec.name} started before {ref.dataset} was in"
    # A failure is that dataset's audit and one-line error; datasets referencing it still run.
    failed = {audit.dataset: error for audit, _, error in results if error}
    assert list(failed) == ["users"] and "\n" not in failed["users"] and "disk on fire" in failed["users"]
    assert all(audit.status == "ok" for audit, _, _ in results if audit.dataset != "users")
    running, most = 0, 0
    for kind, _, _ in sorted(events, key=lambda e: (e[2], e[0] == "start")):
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most <= workers and (most > 1) == (workers > 1)


def test_a_contract_referencing_a_later_dataset_is_refused(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "contract.yaml").write_text(
        "datasets:\n"
        "  orders: {keys: [order_id], load: partition, columns: {order_id: {type: string}, user_id: {type: string}},\n"
        "           refs: [{columns: [user_id], dataset: users}]}\n"
        "  users: {keys: [user_id], load: merge, columns: {user_id: {type: string}}}\n")
    with pytest.raises(ConfigError, match=r"orders: references \['users'\] must be declared before it"):
        catalog._contract(str(tmp_path))
