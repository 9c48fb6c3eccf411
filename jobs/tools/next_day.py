"""The demo world's next day: what upstream systems would land the day after a landing.

    bundlecast generate --next-day --date D      # lands D + 1 from D's landing

A generated world lands its whole history once, on its landing date D, ending with day D - 1.
A steady-state nightly needs what comes after that: the landing of D + 1, holding day D.
This writes it from the landing of D, in the same formats and file names:

* behaviour (events, orders, order lines): the rows of D's last history day, one day later,
  with new ids (``<id>-<YYYYMMDD of the new landing>``);
* inventory: the latest snapshot, one day later;
* weather: day D observed (it was forecast), the remaining forecast days as they were;
* routes: the last planned day's routes, one day later (the feed plans three days ahead);
* the dimensions (sites, warehouses, items, users): the same snapshot again;
* nothing new for reviews, competitor prices, calendar events and feedback.

Deterministic: a second call writes the same files. Pure pandas/pyarrow: no Spark.
"""
from __future__ import annotations

import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DIMENSIONS = ("sites", "warehouses", "items", "users")
ROUTE_TIMES = ("shift_start", "shift_end", "window_start", "window_end")


def read_landed(path: Path) -> pd.DataFrame:
    """A landed file as text columns (parquet keeps its types), so what is written back
    differs from what was read only where this module changes it."""
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pandas()
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def write_landed(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, coerce_timestamps="us",
                       allow_truncated_timestamps=True)  # as generated: microseconds, which every reader takes
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None and v == v}) + "\n"
                                for r in frame.to_dict("records")))


def utc_timestamps(col: pd.Series) -> pd.Series:
    """UTC timestamps of a text or timestamp column (a zone-less timestamp is UTC by the contract)."""
    if not pd.api.types.is_datetime64_any_dtype(col):
        return pd.to_datetime(col, utc=True, format="ISO8601")
    return col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")


def _shifted(col: pd.Series, days: int) -> pd.Series:
    """A timestamp (or date) column ``days`` later, in the column's own representation."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return col + pd.Timedelta(days=days)
    if col.str.len().max() == 10:  # a date
        return (pd.to_datetime(col) + pd.Timedelta(days=days)).dt.strftime("%Y-%m-%d")
    return (utc_timestamps(col) + pd.Timedelta(days=days)).dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _files(raw: Path, dataset: str, dt: str) -> list[Path]:
    folder = raw / dataset / f"dt={dt}"
    return sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []


def _each_file(raw: Path, dataset: str, dt: str, new_dt: str, change) -> int:
    """``change(frame) -> frame`` applied to every file of (dataset, dt), written under new_dt
    with the same name; returns the rows written."""
    rows = 0
    for path in _files(raw, dataset, dt):
        frame = change(read_landed(path))
        if len(frame):
            write_landed(frame, raw / dataset / f"dt={new_dt}" / path.name)
            rows += len(frame)
    return rows


def land_next_day(raw_root: Path, dt: str) -> tuple[str, dict[str, int]]:
    """Land ``dt + 1`` from the landing of ``dt``; returns (the new date, rows per dataset)."""
    raw = Path(raw_root)
    new_dt = str(date.fromisoformat(dt) + timedelta(days=1))
    stamp = new_dt.replace("-", "")
    last_day = pd.Timestamp(date.fromisoformat(dt) - timedelta(days=1), tz="UTC")
    for dataset in raw.iterdir():
        shutil.rmtree(dataset / f"dt={new_dt}", ignore_errors=True)  # idempotent: the day is written whole
    rows = {}

    def on_last_day(frame: pd.DataFrame, column: str) -> pd.Series:
        return utc_timestamps(frame[column]).dt.floor("D") == last_day

    moved_orders: set[str] = set()  # the last day's orders, collected as they are moved; their lines follow

    def events(f):
        f = f[on_last_day(f, "event_ts")].copy()
        day = f"{last_day:%Y%m%d}"  # session ids carry their day
        return f.assign(event_id=f.event_id + f"-{stamp}", event_ts=_shifted(f.event_ts, 1),
                        session_id=f.session_id.str.replace(day, f"{last_day + pd.Timedelta(days=1):%Y%m%d}",
                                                            regex=False))

    def orders_of_day(f):
        f = f[on_last_day(f, "order_ts")].copy()
        moved_orders.update(f.order_id)
        return f.assign(order_id=f.order_id + f"-{stamp}", order_ts=_shifted(f.order_ts, 1))

    def lines_of_day(f):
        f = f[f.order_id.isin(moved_orders)].copy()
        return f.assign(order_id=f.order_id + f"-{stamp}")

    def inventory(f):
        ts = utc_timestamps(f.snapshot_ts)
        f = f[ts == ts.max()].copy()
        return f.assign(snapshot_ts=_shifted(f.snapshot_ts, 1))

    def weather(f):
        f = f[pd.to_datetime(f.date) >= pd.Timestamp(dt)].copy()
        observed = pd.to_datetime(f.date) == pd.Timestamp(dt)
        flag = f.is_forecast.astype(str).str.lower().isin(["true", "1"])
        return f.assign(is_forecast=(flag & ~observed).map({True: "True", False: "False"}))

    def routes(f):
        f = f[f.route_date == f.route_date.max()].copy()
        if f.empty:
            return f
        old = f.route_date.iloc[0]  # route ids carry their day (RT-YYYYMMDD-...)
        new = str(date.fromisoformat(old) + timedelta(days=1))
        f = f.assign(route_id=f.route_id.str.replace(old.replace("-", ""), new.replace("-", ""), regex=False),
                     route_date=new)
        return f.assign(**{c: _shifted(f[c], 1) for c in ROUTE_TIMES if c in f})

    for dataset, change in (("events", events), ("orders", orders_of_day), ("order_lines", lines_of_day),
                            ("inventory", inventory), ("weather", weather), ("routes", routes)):
        rows[dataset] = _each_file(raw, dataset, dt, new_dt, change)
    for dataset in DIMENSIONS:
        for path in _files(raw, dataset, dt):
            target = raw / dataset / f"dt={new_dt}" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        rows[dataset] = sum(len(read_landed(p)) for p in _files(raw, dataset, new_dt))
    return new_dt, rows

