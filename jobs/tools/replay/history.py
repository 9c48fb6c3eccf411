"""A raw history, and its landing day by day as upstream systems would have landed it.

A history is every contract dataset over a span of time, as pandas frames of text (what a
landed file holds). It comes from the UCI Online Retail files (mapped by
``import_online_retail``) or from a raw zone (``raw/<dataset>/dt=*/``, e.g. a generated
world); several landings of one raw zone are merged, the latest landing's row winning.

Day D's file (``arrived-D.csv``) holds what arrived during day D (UTC):

* rows dated by an event time (events, orders, reviews, inventory snapshots, competitor
  prices, feedback) on day D; order lines with their order;
* weather, calendar events and routes a few days before their date (``AHEAD``: a forecast,
  a published holiday, a route plan), never later than the contract allows;
* dimensions when they change: sites, warehouses and items in the first landing, a user on
  the landing of their signup day (or of their first dated row when they have none).

The first day's file holds the whole history up to that day. Nothing dated after a file's
day is in it, so a run on the files up to D sees nothing later. Each day's file goes into
the landing folder (``dt=B``) of the ingest batch it belongs to: the next replay date B on
or after the day (with ``--every 1d`` every day is its own batch; weekly, the nightly of B
ingests the week's seven daily files in one run, as a weekly batch load would, instead of
seven runs that give the same tables). Deterministic: landing a day again writes the same
file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.tools.next_day import read_landed, utc_timestamps, write_landed

# Days before its date that a dated-ahead row is landed (within the contract's days_ahead).
AHEAD = {"weather": 7, "calendar_events": 60, "routes": 2}
DATE_OF = {"weather": "date", "calendar_events": "date", "routes": "route_date"}
FIRST_ONLY = ("sites", "warehouses", "items")
COST_SHARE = 0.6  # Online Retail has no cost: a gift retailer's ~40% gross margin


@dataclass
class History:
    datasets: dict[str, pd.DataFrame]
    source: str
    filled: list[str] = field(default_factory=list)  # what the replay supplied that the data lacks

    def digest(self) -> str:
        """Identity of the history (the source and its row counts), kept with a replay's state."""
        text = self.source + ";" + ",".join(f"{k}={len(v)}" for k, v in sorted(self.datasets.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(path: str | Path) -> History:
    """The history at ``path``: an Online Retail file or folder, or a raw zone."""
    path = Path(path)
    from bundlecast.jobs.tools import import_online_retail as uci

    if path.is_file() or any((path / f).exists() for f in uci.FILES):
        history = History(uci.to_contract(uci.load_transactions(path)), source=f"online-retail:{path.name}")
        return fill_online_retail(history)
    if path.is_dir() and any(path.glob("*/dt=*")):
        return History(_raw_zone(path), source=f"raw-zone:{path.name}")
    raise BundlecastError(f"no history at {path}: expected UCI Online Retail files or a raw zone (<dataset>/dt=*/)")


def _raw_zone(root: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name, spec in catalog.datasets().items():
        frames = [read_landed(p).assign(_landing=p.parent.name) for p in sorted(root.glob(f"{name}/dt=*/*"))
                  if p.is_file()]
        if not frames:
            continue
        frame = pd.concat(frames, ignore_index=True)
        keys = [k for k in spec.keys if k in frame]
        frame = frame.sort_values("_landing", kind="stable").drop_duplicates(keys, keep="last") if keys else frame
        out[name] = frame.drop(columns="_landing").astype(str).replace({"None": "", "nan": "", "NaT": ""}) \
            .reset_index(drop=True)
    return out


def fill_online_retail(history: History) -> History:
    """What Online Retail lacks for proactive shipping, supplied and said: every named
    customer opted in (guests never), one warehouse for the shop, item cost, and one stock
    snapshot at the start (each item's busiest four weeks of units: the shop is assumed
    well stocked, so stock does not decide what is offered or shipped). There are no
    addresses or routes: shipments are judged at the decision (need bundle confidence
    against the category threshold), and routing figures are not measured on this data."""
    d = history.datasets
    d["users"] = d["users"].assign(proactive_opt_in=(d["users"].segment != "guest").map({True: "true", False: "false"}))
    warehouse = "uk-gifts-dc"
    d["warehouses"] = pd.DataFrame([dict(warehouse_id=warehouse, site_id="uk-gifts", region="united_kingdom",
                                         lat="51.5072", lon="-0.1276")])
    items = d["items"]
    d["items"] = items.assign(cost=(pd.to_numeric(items.price, errors="coerce") * COST_SHARE).round(2).astype(str))
    d["inventory"] = _ample_stock(d["orders"], d["order_lines"], warehouse)
    history.filled += [f"item cost: {COST_SHARE:.0%} of the median price (the data has none; bundles and offers need a "
                       "margin): margins, bundle prices and offer incentives are indicative",
                       "proactive opt-in: every named customer (guests never)",
                       "one warehouse (uk-gifts-dc, London) for the shop",
                       "stock: one snapshot at the start, each item's busiest four weeks of units (a well-stocked "
                       "shop): stock never limits offers or shipments, inventory-driven incentives are indicative",
                       "no addresses or routes: shipments are judged at the decision, routing km are not measured"]
    return history


def _ample_stock(orders: pd.DataFrame, lines: pd.DataFrame, warehouse: str) -> pd.DataFrame:
    """One snapshot, before the first order, of each sold item's busiest four weeks of units."""
    ts = pd.to_datetime(orders.set_index("order_id").order_ts, utc=True, errors="coerce")
    sold = lines.assign(units=pd.to_numeric(lines.quantity, errors="coerce").clip(lower=0),
                        week=ts.reindex(lines.order_id).dt.tz_localize(None).dt.to_period("W").to_numpy())
    weekly = sold.groupby(["site_id", "item_id", "week"]).units.sum().reset_index()
    weekly["start"] = weekly.week.dt.start_time
    # Four calendar weeks: a window of 28 days ending with each week that had sales.
    window = weekly.sort_values("start").groupby(["site_id", "item_id"]).rolling("28D", on="start").units.sum()
    stock = (window.groupby(level=[0, 1]).max().rename("on_hand").reset_index() if len(weekly) else
             pd.DataFrame(columns=["site_id", "item_id", "on_hand"]))
    first = ts.min().floor("D").strftime("%Y-%m-%dT%H:%M:%SZ")
    return stock.assign(snapshot_ts=first, warehouse_id=warehouse,
                        on_hand=stock.on_hand.clip(lower=1).round().astype(int).astype(str), reserved="0",
                        incoming="0")[["snapshot_ts", "warehouse_id", "site_id", "item_id", "on_hand", "reserved",
                                       "incoming"]]


def day_of(history: History, name: str, known: dict[str, pd.Series] | None = None) -> pd.Series:
    """The UTC day each row of dataset ``name`` arrives on (NaT: a dimension row landed first).
    ``known``: the days already worked out per dataset (filled in, so each is parsed once)."""
    known = {} if known is None else known
    if name in known:
        return known[name]
    known[name] = _day_of(history, name, known)
    return known[name]


def _day_of(history: History, name: str, known: dict[str, pd.Series]) -> pd.Series:
    spec = catalog.dataset(name)
    frame = history.datasets[name]
    if spec.event_time:
        return utc_timestamps(frame[spec.event_time].replace("", None)).dt.tz_localize(None).dt.floor("D")
    if spec.timed_by is not None:
        ref = spec.timed_by
        parent = history.datasets[ref.dataset]
        parent_day = pd.Series(day_of(history, ref.dataset, known).to_numpy(), index=_key(parent, ref.ref_columns))
        parent_day = parent_day[~parent_day.index.duplicated()]
        return pd.Series(parent_day.reindex(_key(frame, ref.columns)).to_numpy(), index=frame.index)
    if name in DATE_OF:
        return pd.to_datetime(frame[DATE_OF[name]], errors="coerce") - pd.Timedelta(days=AHEAD[name])
    if name == "users":
        signup = pd.to_datetime(frame.get("signup_date", pd.Series("", index=frame.index)).replace("", None),
                                errors="coerce")
        return signup.where(signup.notna(), _first_seen(history, frame, known))
    return pd.Series(pd.NaT, index=frame.index)


def _key(frame: pd.DataFrame, columns) -> pd.Index:
    return pd.MultiIndex.from_frame(frame[list(columns)]) if len(columns) > 1 else pd.Index(frame[columns[0]])


def _first_seen(history: History, users: pd.DataFrame, known: dict[str, pd.Series]) -> pd.Series:
    days = []
    for name, column in (("orders", "user_id"), ("events", "user_id")):
        if name in history.datasets:
            f = history.datasets[name]
            days.append(pd.DataFrame({"user_id": f[column], "day": day_of(history, name, known)}))
    first = pd.concat(days).groupby("user_id").day.min() if days else pd.Series(dtype="datetime64[ns]")
    return pd.Series(first.reindex(users.user_id).to_numpy(), index=users.index)


class Lander:
    """Lands ``history`` into ``raw_root`` one day at a time (the day index is built once)."""

    def __init__(self, history: History, raw_root: Path, first: str):
        self.history, self.raw, self.first = history, Path(raw_root), pd.Timestamp(first)
        known: dict[str, pd.Series] = {}
        self.days = {name: day_of(history, name, known) for name in history.datasets}

    def land(self, day: str, batch: str | None = None) -> dict[str, int]:
        """Write day ``day``'s file into landing ``dt=batch`` (default: the day's own); the first
        day's file holds everything up to it. Returns rows per dataset."""
        d = pd.Timestamp(day)
        rows = {}
        for name, frame in self.history.datasets.items():
            path = file_of(self.raw, name, day, batch or day)
            path.unlink(missing_ok=True)
            when = self.days[name]
            if d == self.first:
                part = frame[(when <= d) | when.isna()]
            elif name in FIRST_ONLY:
                continue
            else:
                part = frame[when == d]
            if len(part):
                write_landed(part, path)
                rows[name] = len(part)
        return rows


def file_of(raw: Path, dataset: str, day: str, batch: str) -> Path:
    """Where day ``day``'s rows of ``dataset`` land: the file of that day in its batch's landing."""
    return Path(raw) / dataset / f"dt={batch}" / f"arrived-{day}.csv"


def landing_days(first: str, last: str) -> list[str]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [str(a + timedelta(days=i)) for i in range((b - a).days + 1)]
