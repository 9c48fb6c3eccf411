"""A hostile day's drop: one file per category of bad input, mixed with good rows.

``build(raw_root, base_dt, dt)`` copies good rows from the demo world's drop of ``base_dt``
(so every reference resolves), gives them new ids, and lands under ``raw/<dataset>/dt=<dt>/``
the files below. It returns what must happen to every record (``Expect``: file, line,
outcome) and to every file (``refused``), so a test can check ingestion row by row.

Outcomes: ``"published"``, ``"duplicate"`` (of a published row), or the quarantine reason
(a prefix: ``malformed_record:`` matches any parse failure of that kind).
"""
from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

PUBLISHED, DUPLICATE = "published", "duplicate"


@dataclass(frozen=True)
class Expect:
    dataset: str
    file: str
    line: int
    outcome: str
    category: str
    key: str | None = None  # the natural key, for published rows


def _jsonl(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def _csv(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


class Drop:
    def __init__(self, raw_root: Path, dt: str):
        self.raw_root, self.dt = Path(raw_root), dt
        self.expect: list[Expect] = []
        self.refused: dict[tuple[str, str], str] = {}  # (dataset, file) -> reason fragment

    def write(self, dataset: str, name: str, data: bytes) -> str:
        folder = self.raw_root / dataset / f"dt={self.dt}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        return name

    def row(self, dataset, name, line, outcome, category, key=None):
        self.expect.append(Expect(dataset, name, line, outcome, category, key))

    def refuse(self, dataset, name, data: bytes, fragment: str):
        self.write(dataset, name, data)
        self.refused[(dataset, name)] = fragment


def _read_base(raw_root: Path, dataset: str, base_dt: str) -> list[dict]:
    folder = raw_root / dataset / f"dt={base_dt}"
    rows = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".jsonl":
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif path.suffix == ".csv":
            rows += list(csv.DictReader(path.open(newline="")))
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq
            rows += [{k: (v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else v)
                      for k, v in r.items()} for r in pq.read_table(path).to_pylist()]
    return rows


def build(raw_root: Path, base_dt: str, dt: str) -> Drop:
    drop = Drop(raw_root, dt)
    _events(drop, _read_base(raw_root, "events", base_dt))
    _items(drop, _read_base(raw_root, "items", base_dt))
    _orders(drop, _read_base(raw_root, "orders", base_dt))
    _inventory(drop, _read_base(raw_root, "inventory", base_dt))
    return drop


def _events(drop: Drop, base: list[dict]):
    ts = f"{drop.dt}T06:00:00Z"
    good = [dict(base[i], event_id=f"CE{i:04d}", event_ts=ts) for i in range(12)]
    bad = [  # (record, reason, category)
        (dict(good[0], event_id="CB01", event_ts="0001-01-01T00:00:00Z"), "too_early:event_ts", "timestamp year 0001"),
        (dict(good[0], event_id="CB02", event_ts="1900-01-01T00:00:00Z"), "too_early:event_ts", "timestamp year 1900"),
        (dict(good[0], event_id="CB03", event_ts="2099-06-01T00:00:00Z"), "too_late:event_ts", "timestamp year 2099"),
        (dict(good[0], event_id="CB04", event_ts="9999-12-31T23:59:59Z"), "too_late:event_ts", "timestamp year 9999"),
        (dict(good[0], event_id="CB05", event_ts="2026-12-31T00:00:00Z"), "too_late:event_ts",
         "timestamp after the landing date"),
        (dict(good[0], event_id="CB06\u0000"), "control_character:event_id", "NUL in an id"),
        (dict(good[0], event_id="CB07", session_id="s" * (1 << 20)), "too_long:session_id", "1 MiB string"),
        (dict(good[0], event_id="CB08", user_id="U-NOBODY"), "unknown:user_id", "unknown reference"),
        (dict(good[0], event_id="CB09", event_ts=f"{drop.dt}T06:00:00"), "timestamp_without_zone:event_ts",
         "timestamp without zone"),
        (json.dumps(dict(good[0], event_id="CB10")).encode() + b" " + json.dumps(dict(good[1], event_id="CB11")).encode(),
         "malformed_record:more than one JSON value", "two JSON objects on one line"),
        (b'["not", "an", "object"]', "malformed_record:a JSON list", "JSON value not an object"),
        (b'{"event_id": "CB12", "event_id": "CB13"}', "malformed_record:json repeats key", "repeated JSON key"),
        (json.dumps(dict(good[0], event_id="CB14", session_id="caf-SEP")).encode().replace(b"-SEP", b"\xe9"),
         "invalid_encoding:utf-8", "invalid UTF-8 bytes"),
        (b'{"event_id": "CB15", "event_ts": "', "malformed_record:not valid JSON", "truncated JSON line"),
    ]
    records = good[:6] + [b for b, _, _ in bad] + good[6:] + [good[3]]  # + a true duplicate
    name = drop.write("events", "part-0001.jsonl", _jsonl(records) + b"\n\n")  # blank lines are not records
    for line, rec in enumerate(records, start=1):
        if line <= 6 or 6 + len(bad) < line < len(records):
            drop.row("events", name, line, PUBLISHED, "good row", rec["event_id"])
        elif line == len(records):
            drop.row("events", name, line, DUPLICATE, "duplicate of a good row")
        else:
            _, reason, category = bad[line - 7]
            drop.row("events", name, line, reason, category)
    # Hidden and marker files are listed as not read, never skipped silently.
    drop.refuse("events", "_SUCCESS", b"", "hidden or marker")
    drop.refuse("events", ".part-0002.jsonl", _jsonl(good[:2]), "hidden or marker")
    drop.refuse("events", "events.xlsx", b"PK\x03\x04 a spreadsheet", "unsupported file format")


def _items(drop: Drop, base: list[dict]):
    cols = list(base[0])
    good = [dict(base[i], item_id=f"CI{i:03d}") for i in range(8)]
    good[1]["description"] = 'two lines,\nwith "quotes", commas\r\nand a CRLF'  # RFC 4180 quoted newline
    as_row = lambda r: ["" if r.get(c) is None else r[c] for c in cols]  # noqa: E731
    bad = [(dict(good[0], item_id="CIB1", price="NaN"), "not_finite:price", "NaN price"),
           (dict(good[0], item_id="CIB2", price="Infinity"), "not_finite:price", "Infinity price"),
           (dict(good[0], item_id="CIB3", price="1e400"), "not_finite:price", "1e400 price")]
    rows = [as_row(r) for r in good[:4]] + [as_row(b) for b, _, _ in bad]
    data = codecs.BOM_UTF8 + _csv(cols, rows)  # a UTF-8 byte-order mark before the header
    name = drop.write("items", "items-bom.csv", data)
    line = 2
    for i, r in enumerate(rows):
        if i < 4:
            drop.row("items", name, line, PUBLISHED, "good row (BOM file, quoted newline)", f"{r[0]}|{r[1]}")
        else:
            drop.row("items", name, line, bad[i - 4][1], bad[i - 4][2])
        line += 1 + (r[cols.index("description")] or "").count("\n")
    # Invalid UTF-8 far after the first 8 KB: only that record is quarantined.
    filler = [as_row(dict(good[4 + (i % 4)], item_id=f"CIF{i:03d}", description="x" * 200)) for i in range(60)]
    broken = as_row(dict(good[4], item_id="CIBAD", title="caf-SEP"))
    data = _csv(cols, filler + [broken]).replace(b"caf-SEP", b"caf\xe9")
    name = drop.write("items", "items-late-bad-byte.csv", data)
    for i, r in enumerate(filler):
        drop.row("items", name, i + 2, PUBLISHED, "good row", f"{r[0]}|{r[1]}")
    drop.row("items", name, len(filler) + 2, "invalid_encoding:utf-8", "invalid UTF-8 after 8 KB")
    drop.refuse("items", "items-dup-header.csv", _csv(cols[:2] + [cols[0]], [as_row(good[0])[:3]]),
                "repeats column")
    drop.refuse("items", "items-json-as.csv", _jsonl(good[:2]), "JSON text in a .csv file")
    drop.refuse("items", "items-utf16.csv", _csv(cols, [as_row(good[0])]).decode().encode("utf-16"), "UTF-16")
    drop.refuse("items", "items-empty.csv", b"", "empty CSV file")


def _orders(drop: Drop, base: list[dict]):
    cols = list(base[0])
    ts = f"{drop.dt}T07:00:00Z"
    good = [dict(base[i], order_id=f"CO{i:03d}", order_ts=ts) for i in range(5)]
    rows = [[r[c] for c in cols] for r in good]
    unknown_wh = dict(good[0], order_id="COB1", warehouse_id="WH-NOWHERE")
    rows.append([unknown_wh[c] for c in cols])
    rows.append(["COB2", "too", "few"])
    name = drop.write("orders", "orders.csv", _csv(cols, rows))
    for i, r in enumerate(good):
        drop.row("orders", name, i + 2, PUBLISHED, "good row", r["order_id"])
    drop.row("orders", name, 7, "unknown:warehouse_id", "unknown warehouse")
    drop.row("orders", name, 8, "malformed_record:csv", "CSV field count")


def _inventory(drop: Drop, base: list[dict]):
    ts = f"{drop.dt}T05:00:00Z"
    good = [dict(base[i], snapshot_ts=ts) for i in range(4)]
    later_bad = dict(good[0], on_hand=-5)  # same key as good[0], later in the file, invalid
    records = good + [later_bad]
    name = drop.write("inventory", "inventory.jsonl", _jsonl(records))
    for i, r in enumerate(good):
        drop.row("inventory", name, i + 1, PUBLISHED, "good row (a later bad row shares its key)" if i == 0 else
                 "good row", "|".join([f"{drop.dt} 05:00:00", r["warehouse_id"], r["site_id"], r["item_id"]]))
    drop.row("inventory", name, 5, "below_min:on_hand", "bad row with a good row's key")
    pq_name = "inventory-truncated.parquet"
    drop.refuse("inventory", pq_name, b"PAR1\x15\x04 truncated", "not a readable Parquet file")
