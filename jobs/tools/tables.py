"""Table summaries read with delta-rs (no JVM): location, Delta version, row count.

    bundlecast tables [--json]

Also the independent check that what Spark wrote is readable by another Delta reader.
"""
from __future__ import annotations

from pathlib import Path

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config


def table_info(name: str, cfg: dict | None = None) -> dict:
    from deltalake import DeltaTable

    cfg = cfg or config()
    spec, path = catalog.table(name), catalog.table_path(name, cfg)
    info = {"table": name, "qualified_name": catalog.qualified_name(name, cfg), "layer": spec.layer,
            "location": path, "version": None, "rows": None}
    if "://" not in path and not (Path(path) / "_delta_log").exists():
        return info
    table = DeltaTable(path)
    info["version"] = table.version()
    info["rows"] = table.to_pyarrow_dataset().count_rows()
    return info


def all_tables(cfg: dict | None = None) -> list[dict]:
    cfg = cfg or config()
    return [table_info(name, cfg) for name in catalog.tables()]


def render(rows: list[dict]) -> str:
    lines = [f"{'table':20s} {'layer':7s} {'version':>7s} {'rows':>12s}  location"]
    for r in rows:
        version = "-" if r["version"] is None else str(r["version"])
        count = "(not created)" if r["rows"] is None else f"{r['rows']:,}"
        lines.append(f"{r['table']:20s} {r['layer']:7s} {version:>7s} {count:>12s}  {r['location']}")
    return "\n".join(lines)
