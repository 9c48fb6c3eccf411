"""The export step's run (see the package docstring)."""
from __future__ import annotations

import hashlib
import io
import json
from datetime import date, datetime, timezone

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.storage import open_store

MANIFEST = "_manifest.json"


def _serialise(batch_table, fmt: str) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(batch_table, buffer, compression="snappy")
    elif fmt == "jsonl":
        frame = batch_table.to_pandas()
        frame.to_json(buffer, orient="records", lines=True, date_format="iso", date_unit="us")
    else:
        raise BundlecastError(f"unsupported export format {fmt!r}: use parquet or jsonl")
    return buffer.getvalue()


def export_table(name: str, dt: str, target: str | None = None, fmt: str | None = None,
                 cfg: dict | None = None, store=None) -> dict:
    """Export the current snapshot of ``name`` (of a table partitioned by run date, the rows
    of run date ``dt`` only; of a delivery plan, the days from ``dt`` on); returns the manifest."""
    import pyarrow as pa
    from deltalake import DeltaTable

    cfg = cfg or config()
    try:
        if date.fromisoformat(dt).isoformat() != dt:
            raise ValueError
    except (TypeError, ValueError):
        raise BundlecastError(f"export: date must be YYYY-MM-DD, not {str(dt)[:40]!r}") from None
    ex = cfg["exports"]
    fmt = fmt or (ex.get("formats") or {}).get(name) or ex["format"]
    target = target or ex["target"]
    store = store or open_store(target, cfg["storage"].get("s3_endpoint_url") or None)
    path = catalog.table_path(name, cfg)
    try:
        delta = DeltaTable(path)
    except Exception:
        raise BundlecastError(f"cannot export {name}: no Delta table at {path} (has it been ingested?)") from None
    prefix = f"{name}/dt={dt}"
    store.delete(f"{prefix}/{MANIFEST}")  # from here on, consumers see the export as absent
    old = set(store.list(prefix))
    dataset = delta.to_pyarrow_dataset()
    layout = export_schema(name, dataset.schema.names, ex)
    schema = pa.schema([dataset.schema.field(c) for c in layout["columns"]])
    files, part, rows_per_file = [], 0, int(ex["rows_per_file"])
    pending, pending_rows = [], 0

    def flush():
        nonlocal part, pending, pending_rows
        table = pa.Table.from_batches(pending, schema=schema) if pending else schema.empty_table()
        data = _serialise(table, fmt)
        key = f"{prefix}/part-{part:05d}.{fmt}"
        store.put(key, data)
        files.append({"name": key.rsplit("/", 1)[1], "rows": table.num_rows, "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
        old.discard(key)
        part, pending, pending_rows = part + 1, [], 0

    only_dt = None
    import pyarrow.compute as pc
    if "dt" in catalog.table(name).partition_by:
        only_dt = pc.field("dt") == pa.scalar(date.fromisoformat(dt), pa.date32())
    elif "route_date" in catalog.table(name).partition_by:  # delivery plans: the run date's and later days
        only_dt = pc.field("route_date") >= pa.scalar(date.fromisoformat(dt), pa.date32())
    for batch in dataset.to_batches(columns=layout["columns"], filter=only_dt):
        pending.append(_round(batch, layout["round"], schema))
        pending_rows += batch.num_rows
        if pending_rows >= rows_per_file:
            flush()
    if pending or not files:
        flush()
    for stale in old:
        store.delete(stale)
    manifest = {
        "table": name, "dt": dt, "format": fmt, "delta_version": delta.version(),
        "row_count": sum(f["rows"] for f in files),
        "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "consumers": layout["consumers"], "rounded": layout["round"], "omitted": layout["omitted"],
        "schema_source": layout["source"],
        "files": files,
        "checksum": hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest(),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "location": store.uri(prefix),
    }
    store.put(f"{prefix}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
    return manifest


def export_schema(name: str, available: list[str], ex: dict) -> dict:
    """What leaves for ``name``: the declared columns (``exports.tables``), or, for a table
    without a declaration, its columns minus internal ones (``_source_file``...)."""
    declared = (ex.get("tables") or {}).get(name)
    if declared:
        missing = [c for c in declared["columns"] if c not in available]
        if missing:
            raise BundlecastError(f"exports.tables.{name} names column(s) the table does not have: {missing}")
        columns, source = list(declared["columns"]), "exports.tables"
    else:
        columns, source = [c for c in available if not c.startswith("_")], "catalog (no export schema declared)"
    return {"columns": columns, "round": dict((declared or {}).get("round") or {}),
            "consumers": list((declared or {}).get("consumers") or []),
            "omitted": [c for c in available if c not in columns], "source": source}


def _round(batch, decimals: dict, schema):
    """The batch with the ``decimals`` columns rounded (coordinates, probabilities)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not decimals:
        return batch
    arrays = [pc.round(batch.column(f.name), int(decimals[f.name])) if f.name in decimals else batch.column(f.name)
              for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def export_configured(dt: str, cfg: dict | None = None) -> list[dict]:
    """Export every table listed in ``exports.tables`` (a missing table is a clear error)."""
    cfg = cfg or config()
    manifests = []
    for name in cfg["exports"]["tables"]:
        manifests.append(export_table(name, dt, cfg=cfg))
    return manifests


def verify(manifest_bytes: bytes, store, prefix: str) -> bool:
    """What a consumer does: read the manifest, check every file's checksum."""
    manifest = json.loads(manifest_bytes)
    for f in manifest["files"]:
        if hashlib.sha256(store.get(f"{prefix}/{f['name']}")).hexdigest() != f["sha256"]:
            return False
    return True
