"""A digest of every catalog table's rows, to prove a change leaves the data as it was.

    python tests/table_digest.py HOME > after.json          (BUNDLECAST_HOME of a finished run)
    python tests/table_digest.py --compare before.json after.json

Reads each Delta table with delta-rs (no JVM), drops the columns that legitimately differ
between two runs of the same code (run ids, wall-clock timestamps, durations, MLflow ids),
rounds floats to 9 significant digits (Spark may sum in another order), sorts the rows
and hashes them. ``--compare`` prints one line per table and exits 1 if any differ.
``snapshot_home`` / ``rows_differ`` compare two states row by row with a relative float
tolerance instead (no value can sit at a rounding boundary).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

# Run ids, clocks and durations: they differ between two runs of identical code.
VOLATILE = re.compile(r"(^|_)run_id$|_at$|^seconds$|_seconds$|^mlflow_|_uri$|^_source_file$|^finished|^started")
# Columns that hold a run id under another name.
VOLATILE_IN = {"offers": {"created_by"}}


def _canonical(value) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.9g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_canonical(v)}" for k, v in sorted(value.items())) + "}"
    if hasattr(value, "tolist"):
        return _canonical(value.tolist())
    return str(value)


def table_digest(path: Path) -> dict:
    from deltalake import DeltaTable

    table = DeltaTable(str(path)).to_pyarrow_table()
    kept = sorted(c for c in table.column_names
                  if not VOLATILE.search(c) and c not in VOLATILE_IN.get(Path(path).name, ()))
    rows = sorted("\x1f".join(_canonical(v) for v in row)
                  for row in zip(*(table.column(c).to_pylist() for c in kept))) if kept else []
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
    return {"rows": table.num_rows, "columns": kept, "digest": digest}


def _shape(value, floats: list) -> str:
    """The value as text with each float replaced by '#' and appended to ``floats``."""
    if isinstance(value, float):
        floats.append(value)
        return "#"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_shape(v, floats) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_shape(v, floats)}" for k, v in sorted(value.items())) + "}"
    if hasattr(value, "tolist"):
        return _shape(value.tolist(), floats)
    return str(value)


def table_rows(path: Path) -> list[tuple[str, list[float]]]:
    """The table's rows (volatile columns left out) as (text with floats as '#', floats),
    sorted: two runs' rows compared one by one with ``rows_differ``."""
    from deltalake import DeltaTable

    table = DeltaTable(str(path)).to_pyarrow_table()
    kept = sorted(c for c in table.column_names
                  if not VOLATILE.search(c) and c not in VOLATILE_IN.get(Path(path).name, ()))
    rows = []
    for row in zip(*(table.column(c).to_pylist() for c in kept)):
        floats: list[float] = []
        rows.append(("\x1f".join(_shape(v, floats) for v in row), floats))
    return sorted(rows, key=lambda r: (r[0], [f"{x:.6g}" for x in r[1]]))


def _close(x: float, y: float, rel: float) -> bool:
    if x != x or y != y:
        return x != x and y != y
    return abs(x - y) <= rel * max(abs(x), abs(y)) + 1e-12


def rows_differ(before: list, after: list, rel: float = 1e-9) -> str | None:
    """None when the rows are the same, floats within ``rel`` (a sum Spark adds in another
    order, or a fit on such sums, moves the last bits; a 9-digit digest flips on a value that
    sits at a rounding boundary); else the first difference, in one line."""
    if len(before) != len(after):
        return f"{len(before)} rows, then {len(after)}"
    for (text_b, floats_b), (text_a, floats_a) in zip(before, after):
        if text_b != text_a or len(floats_b) != len(floats_a):
            at = next((i for i, (x, y) in enumerate(zip(text_b, text_a)) if x != y), min(len(text_b), len(text_a)))
            return f"row {text_b[:60]!r}: text at {at}: {text_b[max(0, at - 40):at + 80]!r} then " \
                   f"{text_a[max(0, at - 40):at + 80]!r}"
        far = [(i, x, y) for i, (x, y) in enumerate(zip(floats_b, floats_a)) if not _close(x, y, rel)]
        if far:
            return f"row {text_b[:60]!r}: float #{far[0][0]} {far[0][1]!r} then {far[0][2]!r} ({len(far)} differ)"
    return None


def snapshot_home(home: Path) -> dict:
    """Every table's sorted rows (``table_rows``), by its folder (layer/name)."""
    return {f"{log.parent.parent.name}/{log.parent.name}": table_rows(log.parent)
            for log in sorted((home / "warehouse").glob("*/*/_delta_log"))}


def digest_home(home: Path) -> dict:
    """Every Delta table under the state directory's warehouse, by its folder (layer/name)."""
    warehouse = home / "warehouse"
    out = {}
    for log in sorted(warehouse.glob("*/*/_delta_log")):
        table = log.parent
        out[f"{table.parent.name}/{table.name}"] = table_digest(table)
    return out


def compare(before: dict, after: dict) -> list[str]:
    """One line per table; lines of tables that differ start with 'DIFF'."""
    lines = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        same = b is not None and a is not None and b["digest"] == a["digest"]
        rows = f"{b['rows'] if b else '-':>8} {a['rows'] if a else '-':>8}"
        lines.append(f"{'same' if same else 'DIFF'} {name:40s} {rows} "
                     f"{b['digest'] if b else '-':16s} {a['digest'] if a else '-':16s}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="a BUNDLECAST_HOME, or two digest files with --compare")
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.paths)
        lines = compare(before, after)
        print(f"     {'table':40s} {'before':>8} {'after':>8} {'digest before':16s} {'digest after':16s}")
        print("\n".join(lines))
        return 1 if any(line.startswith("DIFF") for line in lines) else 0
    print(json.dumps(digest_home(Path(args.paths[0])), indent=1))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # delta-rs' runtime threads abort the interpreter's normal exit ("terminate called
    # without an active exception"); everything is written by now, so leave at once.
    os._exit(code)
