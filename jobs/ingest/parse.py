"""Reading one landed file on its own terms: bytes -> records, in plain Python.

Each file is parsed by itself, so a file that cannot be read as its dataset (unknown
extension, a CSV header that repeats a column or shares none with the contract, JSON
saved as ``.csv``, UTF-16 text, a truncated Parquet file) is refused *as a file*, with
one reason, and never stops the other files. Inside a readable file, every record comes
out with its first line number and its raw bytes; a record that cannot be parsed carries a
``malformed_record:...`` or ``invalid_encoding`` reason instead of values, so it is
quarantined and counted, never dropped or silently repaired.

* CSV: RFC 4180 (quoted fields may hold commas, quotes and newlines), a UTF-8 byte-order
  mark is removed, column names are trimmed and lower-cased; a record whose field count
  differs from the header's is malformed; blank lines are not records.
* JSON lines: exactly one JSON object per line (a second value on the line, a non-object
  or a repeated key makes the line malformed); numbers keep their text, so ``1e400`` or
  ``NaN`` reach the contract's finiteness rule instead of being rounded here.
* Every byte sequence that is not valid in the declared encoding marks its record
  ``invalid_encoding`` (never replaced by U+FFFD in a published value).
"""
from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
HIDDEN_PREFIXES = (".", "_")


class FileRefused(Exception):
    """A file that cannot be read as its dataset; the message is the one-line reason."""


@dataclass
class Records:
    """The records of one file, column-wise: ``values[column][i]`` is the text of record i."""
    columns: list[str]
    values: dict[str, list] = field(default_factory=dict)
    lines: list[int] = field(default_factory=list)        # first physical line of each record
    raws: list[bytes] = field(default_factory=list)       # the record's bytes, exactly as landed
    errors: list[str | None] = field(default_factory=list)  # parse failure reason, or None
    texts: list[str | None] = field(default_factory=list)   # readable text, only where bytes are not valid text

    def __post_init__(self):
        self.values = {c: [] for c in self.columns}

    def add(self, line: int, raw: bytes, row: dict | None, error: str | None = None, text: str | None = None):
        for c in self.columns:
            self.values[c].append(row.get(c) if row else None)
        self.lines.append(line)
        self.raws.append(raw)
        self.errors.append(error)
        self.texts.append(text)

    def __len__(self) -> int:
        return len(self.lines)


def file_format(path: Path) -> str:
    """The format a file name declares; refuses names the contract does not know."""
    if path.name.startswith(HIDDEN_PREFIXES):
        raise FileRefused(f"not read: the name starts with {path.name[0]!r} (a hidden or marker file)")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FileRefused(f"unsupported file format {path.suffix or '(no extension)'}: "
                          "expected .jsonl, .json, .csv or .parquet")
    return fmt


def read_file(path: Path, columns: list[str], encoding: str = "utf-8") -> Records:
    """Every record of one landed file, or :class:`FileRefused` with the reason."""
    fmt = file_format(path)
    if fmt == "parquet":
        return parquet_records(path, columns)
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise FileRefused(f"UTF-16/32 text (byte-order mark): the contract declares {encoding}")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    return (csv_records if fmt == "csv" else json_records)(data, columns, encoding)


def _decode(raw: bytes, encoding: str) -> tuple[str, bool]:
    """(text, valid): the bytes as text; invalid bytes are shown as ``\\xNN`` and flagged."""
    try:
        return raw.decode(encoding), True
    except UnicodeDecodeError:
        return raw.decode(encoding, "backslashreplace"), False


def csv_records(data: bytes, columns: list[str], encoding: str = "utf-8") -> Records:
    physical = data.splitlines(keepends=True)
    decoded = [_decode(line, encoding) for line in physical]
    reader = csv.reader((text for text, _ in decoded), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise FileRefused("empty CSV file: no header row") from None
    except csv.Error as exc:
        raise FileRefused(f"unreadable CSV header: {exc}") from None
    first = "".join(header).lstrip()
    if first.startswith(("{", "[")):
        raise FileRefused("JSON text in a .csv file (the header starts with '{' or '['): land it as .jsonl")
    if not all(ok for _, ok in decoded[:reader.line_num]):
        raise FileRefused(f"CSV header is not valid {encoding}")
    names = [h.strip().lower() for h in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FileRefused(f"CSV header repeats column(s) {', '.join(repeated)}")
    if not set(names) & set(columns):
        raise FileRefused(f"CSV header has none of the contract's columns (got {', '.join(names[:8])})")
    out = Records(columns)
    done = reader.line_num
    while True:
        try:
            fields = next(reader)
            error = None
        except StopIteration:
            break
        except csv.Error as exc:
            fields, error = None, f"malformed_record:csv ({exc})"
        start, done = done + 1, reader.line_num
        if fields == [] and error is None:
            continue  # a blank line is not a record
        raw = b"".join(physical[start - 1:done])
        if not all(ok for _, ok in decoded[start - 1:done]):
            out.add(start, raw, None, f"invalid_encoding:{encoding}", "".join(t for t, _ in decoded[start - 1:done]))
        elif error:
            out.add(start, raw, None, error)
        elif len(fields) != len(names):
            out.add(start, raw, None, f"malformed_record:csv has {len(fields)} fields, the header {len(names)}")
        else:
            out.add(start, raw, dict(zip(names, fields)))
    return out


class _Repeated(ValueError):
    pass


def _object(pairs):
    obj = {}
    for k, v in pairs:
        key = k.strip().lower()
        if key in obj:
            raise _Repeated(k)
        obj[key] = v
    return obj


class _Number(str):
    """A JSON number kept as its text (``1e400`` stays ``1e400``, never ``inf``)."""


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_float=_Number, parse_int=_Number,
                            parse_constant=_Number)


def _json_text(v) -> str:
    """A nested JSON value written back compactly, numbers exactly as they were."""
    if isinstance(v, _Number):
        return str(v)
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_json_text(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_json_text(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def _text_value(v):
    if v is None:
        return None
    if isinstance(v, _Number):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return _json_text(v)  # a nested object or list


def json_records(data: bytes, columns: list[str], encoding: str = "utf-8") -> Records:
    out = Records(columns)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        text, ok = _decode(raw, encoding)
        stripped = text.strip()
        if not stripped:
            continue  # a blank line is not a record
        if not ok:
            out.add(number, raw, None, f"invalid_encoding:{encoding}", text)
            continue
        try:
            value, end = _DECODER.raw_decode(stripped)
        except _Repeated as exc:
            out.add(number, raw, None, f"malformed_record:json repeats key {exc}")
            continue
        except ValueError:
            out.add(number, raw, None, "malformed_record:not valid JSON")
            continue
        if stripped[end:].strip():
            out.add(number, raw, None, "malformed_record:more than one JSON value on the line")
        elif not isinstance(value, dict):
            out.add(number, raw, None, f"malformed_record:a JSON {type(value).__name__}, not an object")
        else:
            out.add(number, raw, {k: _text_value(v) for k, v in value.items()})
    return out


def _parquet_text(v):
    import datetime as dt
    import math

    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)).isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8")  # UnicodeDecodeError: the row is invalid_encoding
    return str(v)


def parquet_records(path: Path, columns: list[str]) -> Records:
    """Parquet rows as text; a naive timestamp is taken as UTC (Parquet writers store UTC)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # truncated, or not Parquet at all
        raise FileRefused(f"not a readable Parquet file: {str(exc).splitlines()[0][:200]}") from None
    names = [n.strip().lower() for n in table.column_names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FileRefused(f"Parquet schema repeats column(s) {', '.join(repeated)}")
    table = table.rename_columns(names)
    present = [c for c in columns if c in names]
    out = Records(columns)
    data = {c: table.column(c).to_pylist() for c in present}
    for i in range(table.num_rows):
        try:
            row = {c: _parquet_text(data[c][i]) for c in present}
        except UnicodeDecodeError:
            text = repr({c: data[c][i] for c in present})
            out.add(i + 1, text.encode(), None, "invalid_encoding:utf-8", text)
            continue
        out.add(i + 1, json.dumps(row, ensure_ascii=False).encode(), row)
    return out
