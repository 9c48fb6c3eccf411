"""Table catalog and input data contract, read from conf/base/{catalog,contract}.yaml.

Code refers to tables by logical name (``table("orders")``); only this module turns a
name into a location. Dataset specs (``dataset("orders")``) carry the contract rules
that ingestion enforces.
"""
from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from bundlecast.jobs.core.config import CONF_DIR, config, read_yaml
from bundlecast.jobs.core.errors import ConfigError

SPARK_TYPES = {
    "string": "string", "int": "int", "long": "bigint", "double": "double",
    "boolean": "boolean", "date": "date", "timestamp": "timestamp",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = False
    description: str = ""
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    allowed: tuple | None = None
    allowed_label: str | None = None  # the named set ``allowed`` came from (documentation)
    text: bool = False              # free text: longer limit, only NUL refused
    max_length: int | None = None   # characters (default: the contract's limits)
    days_ahead: int | None = None   # dates/timestamps: allowed past the landing date (default: limits)

    @property
    def spark_type(self) -> str:
        return SPARK_TYPES.get(self.type, self.type)


@dataclass(frozen=True)
class Limits:
    """The contract's bounds for every dataset (``limits`` in contract.yaml)."""
    earliest: str = "2000-01-01"
    days_ahead: int = 1
    string_length: int = 200
    text_length: int = 20000
    encoding: str = "utf-8"

    def max_length(self, column: Column) -> int:
        return column.max_length or (self.text_length if column.text else self.string_length)

    def days_ahead_of(self, column: Column) -> int:
        return self.days_ahead if column.days_ahead is None else column.days_ahead


@dataclass(frozen=True)
class Reference:
    """A foreign key: ``columns`` of this dataset must exist as ``ref_columns`` of ``dataset``."""
    columns: tuple
    dataset: str
    ref_columns: tuple

    @property
    def reason(self) -> str:
        return f"unknown:{'+'.join(self.columns)}"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    keys: tuple
    load: str  # "merge" (dimension upsert on keys) or "partition" (overwrite the dt partition)
    columns: tuple
    refs: tuple = field(default_factory=tuple)
    event_time: str | None = None     # the column that dates a row (an hourly run's --until applies to it)
    event_time_of: str | None = None  # or: the referenced dataset whose rows date this one's

    @property
    def timed_by(self) -> Reference | None:
        """The reference to ``event_time_of`` (the keys that tie a row to its dated parent)."""
        return next((r for r in self.refs if r.dataset == self.event_time_of), None) if self.event_time_of else None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self) -> str:
        return ", ".join(f"`{c.name}` {c.spark_type}" for c in self.columns)


@dataclass(frozen=True)
class TableSpec:
    name: str
    layer: str
    location: str
    keys: tuple
    partition_by: tuple
    columns: tuple
    description: str = ""
    write: str = "replace"  # "replace" (overwrite a partition or the table) or "upsert" (merge on keys)

    def ddl(self) -> str:
        return ", ".join(f"`{c.name}` {c.spark_type}" for c in self.columns)


WRITE_MODES = ("replace", "upsert")


# Allowed-value sets a contract names instead of listing (``allowed: iana_time_zones``).
NAMED_SETS = {"iana_time_zones": lambda: tuple(sorted(zoneinfo.available_timezones()))}


def _column(name: str, raw: dict) -> Column:
    allowed, label = raw.get("allowed"), None
    if isinstance(allowed, str):
        if allowed not in NAMED_SETS:
            raise ConfigError(f"contract column {name}: allowed must be a list or one of {sorted(NAMED_SETS)}, "
                              f"not {allowed!r}")
        allowed, label = NAMED_SETS[allowed](), allowed
    return Column(name=name, type=raw["type"], required=bool(raw.get("required", False)), allowed_label=label,
                  description=raw.get("description", ""), unit=raw.get("unit"),
                  min=raw.get("min"), max=raw.get("max"),
                  allowed=tuple(allowed) if allowed else None, text=bool(raw.get("text", False)),
                  max_length=raw.get("max_length"), days_ahead=raw.get("days_ahead"))


@lru_cache(maxsize=None)
def _limits(conf_dir: str) -> Limits:
    raw = read_yaml(Path(conf_dir) / "base" / "contract.yaml")
    return Limits(**{k: v for k, v in (raw.get("limits") or {}).items()}, encoding=raw.get("encoding", "utf-8"))


def limits() -> Limits:
    """The contract's bounds: earliest date, days ahead, string lengths, encoding."""
    return _limits(str(CONF_DIR))


@lru_cache(maxsize=None)
def _contract(conf_dir: str) -> dict[str, DatasetSpec]:
    raw = read_yaml(Path(conf_dir) / "base" / "contract.yaml")["datasets"]
    specs = {}
    for name, d in raw.items():
        refs = tuple(
            Reference(tuple(r["columns"]), r["dataset"], tuple(r.get("ref_columns", r["columns"])))
            for r in d.get("refs", []))
        later = [r.dataset for r in refs if r.dataset not in specs and r.dataset != name]
        if later:
            # Ingestion starts a dataset once those it references are in (jobs/ingest/job.py).
            raise ConfigError(f"contract dataset {name}: references {later} must be declared before it")
        specs[name] = DatasetSpec(
            name=name, description=d.get("description", ""), keys=tuple(d["keys"]),
            load=d["load"], columns=tuple(_column(c, v) for c, v in d["columns"].items()), refs=refs,
            event_time=d.get("event_time"), event_time_of=d.get("event_time_of"))
        spec = specs[name]
        if spec.event_time and spec.event_time not in spec.column_names:
            raise ConfigError(f"contract dataset {name}: event_time {spec.event_time!r} is not one of its columns")
        if spec.event_time_of and spec.timed_by is None:
            raise ConfigError(f"contract dataset {name}: event_time_of {spec.event_time_of!r} is not a dataset it references")
    return specs


@lru_cache(maxsize=None)
def _catalog(conf_dir: str) -> dict[str, TableSpec]:
    raw = read_yaml(Path(conf_dir) / "base" / "catalog.yaml")
    lineage = tuple(_column(c, v) for c, v in raw.get("lineage_columns", {}).items())
    contract = _contract(conf_dir)
    tables = {}
    for name, t in raw["tables"].items():
        schema = t["schema"]
        if "contract" in schema:
            ds = contract[schema["contract"]]
            columns = ds.columns + lineage
            description = t.get("description", ds.description)
            write = t.get("write", "upsert" if ds.load == "merge" else "replace")
        else:
            columns = tuple(_column(c, v) for c, v in schema.items())
            description = t.get("description", "")
            write = t.get("write")
        if write not in WRITE_MODES:
            raise ConfigError(f"catalog table {name}: write must be one of {WRITE_MODES}, not {write!r}")
        tables[name] = TableSpec(name=name, layer=t["layer"], location=t["location"],
                                 keys=tuple(t["keys"]), partition_by=tuple(t.get("partition_by", [])),
                                 columns=columns, description=description, write=write)
    return tables


def datasets() -> dict[str, DatasetSpec]:
    """Every contract dataset, in load order (referenced datasets first)."""
    return _contract(str(CONF_DIR))


def dataset(name: str) -> DatasetSpec:
    try:
        return datasets()[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}: expected one of {sorted(datasets())}") from None


def tables() -> dict[str, TableSpec]:
    return _catalog(str(CONF_DIR))


def table(name: str) -> TableSpec:
    try:
        return tables()[name]
    except KeyError:
        raise ConfigError(f"unknown table {name!r}: not in conf/base/catalog.yaml") from None


def table_path(name: str, cfg: dict | None = None) -> str:
    """Where a logical table lives: a URI or an absolute local path."""
    cfg = cfg or config()
    location = table(name).location
    if "://" in location or location.startswith("/"):
        return location
    return f"{cfg['storage']['warehouse'].rstrip('/')}/{location}"


def qualified_name(name: str, cfg: dict | None = None) -> str:
    cfg = cfg or config()
    return f"{cfg['storage']['database']}.{name}"


def contract_markdown() -> str:
    """The contract rendered for people (conf/CONTRACT.md is generated from this)."""
    bounds = limits()
    lines = ["# Input data contract", "",
             "Generated from `conf/base/contract.yaml` by `bundlecast contract`; do not edit by hand.", "",
             "Upstream systems land files under `raw/<dataset>/dt=YYYY-MM-DD/` (dt = landing date) as",
             "JSON lines (`.jsonl`/`.json`), CSV with a header (`.csv`) or Parquet (`.parquet`).",
             "Timestamps are ISO-8601 with an explicit zone (`Z` or `+01:00`) and are stored in UTC;",
             "a timestamp without a zone is quarantined as ambiguous. Dates are `YYYY-MM-DD`.",
             "Booleans are `true`/`false`. Ids are opaque strings.",
             f"Text files are {bounds.encoding} (RFC 4180 CSV: quoted fields may hold commas, quotes and newlines; "
             "a byte-order mark is allowed); JSON lines hold one object per line.",
             "Files whose name starts with `_` or `.` are not read and are listed in `quarantine_files`.",
             "Validation runs before de-duplication, so a bad row never displaces a good one.", ""]
    for spec in datasets().values():
        lines += [f"## `{spec.name}`", "", spec.description, "",
                  f"Natural key: `{', '.join(spec.keys)}` (duplicates within a drop are dropped and counted). "
                  f"Load: {'upsert on the key' if spec.load == 'merge' else 'overwrite of the landing-date partition'}."]
        for ref in spec.refs:
            lines.append(f"References: `{', '.join(ref.columns)}` -> `{ref.dataset}.{', '.join(ref.ref_columns)}`.")
        lines += ["", "| column | type | required | unit | rule | description |", "|---|---|---|---|---|---|"]
        for c in spec.columns:
            rule = []
            if c.min is not None:
                rule.append(f">= {c.min}")
            if c.max is not None:
                rule.append(f"<= {c.max}")
            if c.allowed:
                rule.append(f"one of the {c.allowed_label}" if c.allowed_label else "one of " + ", ".join(c.allowed))
            if c.type == "string":
                rule.append(f"<= {bounds.max_length(c)} chars" + ("" if c.text else ", no control characters"))
            if c.type in ("date", "timestamp"):
                rule.append(f"{bounds.earliest} .. landing date + {bounds.days_ahead_of(c)} d")
            if c.type == "double":
                rule.append("finite")
            lines.append(f"| {c.name} | {c.type} | {'yes' if c.required else ''} | {c.unit or ''} | "
                         f"{'; '.join(rule)} | {c.description} |")
        lines.append("")
    return "\n".join(lines)
