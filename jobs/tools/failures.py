"""What on-call sees of a failed task: a row in the ops table ``run_failures``, then an
optional command and webhook (``airflow.on_failure_command`` / ``on_failure_webhook``).

The DAGs' ``on_failure_callback`` calls :func:`report` in the Airflow task process, where
there is no Spark session: the row is merged with delta-rs (``deltalake``) into the same
Delta table Spark reads, keyed on (DAG, run, task, try), so a repeated callback leaves one row.
Nothing here may raise into Airflow: a broken hook is logged and the run goes on as it would.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.request
from datetime import datetime, timezone

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import one_line

log = logging.getLogger(__name__)
ARROW_TYPES = {"string": "string", "date": "date32", "int": "int32", "boolean": "bool_", "timestamp": "timestamp"}


def _arrow_schema():
    import pyarrow as pa

    fields = []
    for c in catalog.table("run_failures").columns:
        kind = ARROW_TYPES[c.type]
        fields.append(pa.field(c.name, pa.timestamp("us", tz="UTC") if kind == "timestamp" else getattr(pa, kind)()))
    return pa.schema(fields)


def record(failure: dict, cfg: dict | None = None) -> str:
    """Merge one failure (the ``run_failures`` columns) into the ops table; returns its path."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    from deltalake.exceptions import TableNotFoundError

    cfg = cfg or config()
    path = catalog.table_path("run_failures", cfg)
    row = pa.Table.from_pylist([failure], schema=_arrow_schema())
    try:
        table = DeltaTable(path)
    except TableNotFoundError:
        write_deltalake(path, row, mode="append")
        return path
    keys = catalog.table("run_failures").keys
    (table.merge(row, " AND ".join(f"t.{k} = s.{k}" for k in keys), source_alias="s", target_alias="t")
     .when_not_matched_insert_all().execute())
    return path


def latest(n: int = 10, cfg: dict | None = None) -> list[dict]:
    """The ``n`` latest recorded failures, newest first (none if the table does not exist)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        rows = DeltaTable(catalog.table_path("run_failures", cfg or config())).to_pyarrow_table().to_pylist()
    except TableNotFoundError:
        return []
    return sorted(rows, key=lambda r: r["failed_at"], reverse=True)[:n]


def notify(failure: dict, cfg: dict) -> None:
    """Run the configured command and call the configured webhook with the failure."""
    payload = json.dumps(failure, default=str)
    command = (cfg["airflow"].get("on_failure_command") or "").strip()
    if command:
        env = {**os.environ, **{f"BUNDLECAST_FAILURE_{k.upper()}": str(v) for k, v in failure.items()}}
        done = subprocess.run(command, shell=True, input=payload, text=True, env=env, capture_output=True,
                              timeout=60, check=False)
        if done.returncode:
            log.warning("on_failure_command exited %s: %s", done.returncode, (done.stderr or "").strip()[-300:])
    url = (cfg["airflow"].get("on_failure_webhook") or "").strip()
    if url:
        request = urllib.request.Request(url, data=payload.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the operator's own URL
            response.read()


def report(dag_id: str, run_id: str, task_id: str, day: str, try_number: int, will_retry: bool,
           error: BaseException | str | None, cfg: dict | None = None) -> dict:
    """Record a failed try and notify; never raises. Returns the failure as recorded."""
    cfg = cfg or config()
    cause = error if isinstance(error, str) else (one_line(error) if error is not None else "unknown")
    failure = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id,
               "dt": datetime.fromisoformat(day).date() if day else None, "try_number": int(try_number or 0),
               "will_retry": bool(will_retry), "cause": cause[:1000],
               "failed_at": datetime.now(timezone.utc).replace(microsecond=0)}
    for what, action in (("record", lambda: record(failure, cfg)), ("notify", lambda: notify(failure, cfg))):
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a failure report must never fail the run differently
            log.warning("failure report: %s failed: %s", what, one_line(exc))
    print(f"[bundlecast] FAILED {dag_id} {task_id} for {day} (try {failure['try_number']}, "
          f"{'will retry' if will_retry else 'no retry'}): {cause}", flush=True)
    return failure
