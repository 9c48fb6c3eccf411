"""Real-data import: the UCI Online Retail files mapped into the raw contract.

    bundlecast import online-retail PATH [--date YYYY-MM-DD] [--limit N]

PATH is a folder holding ``online_retail_2010_2011.csv.gz`` and/or
``online_retail_II_2009_2010.csv.gz`` (see ../shared/data/README.md), or one such file.
One site (``uk-gifts``); invoice lines become ``orders``, ``order_lines`` and ``purchase``
events; descriptions become item titles; invoices starting with ``C`` are kept as orders
with status ``cancelled`` and positive quantities (never negative sales). Lines the
contract rejects (negative quantities that are stock adjustments, zero or negative prices,
unknown customers are kept as guest users) are written as they are, so ingestion
quarantines and counts them: nothing is dropped here. Times are Europe/London -> UTC.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SITE = "uk-gifts"
FILES = {"online_retail_II_2009_2010.csv.gz": {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"},
         "online_retail_2010_2011.csv.gz": {}}


def load_transactions(path: Path, limit: int | None = None) -> pd.DataFrame:
    paths = [path] if path.is_file() else [path / f for f in FILES if (path / f).exists()]
    if not paths:
        from bundlecast.jobs.core.errors import BundlecastError
        raise BundlecastError(f"no Online Retail file under {path}: expected one of {sorted(FILES)}")
    frames = []
    for p in paths:
        frame = pd.read_csv(p, dtype=str, nrows=limit, keep_default_na=False).rename(columns=FILES.get(p.name, {}))
        frame["_file"] = p.name
        frames.append(frame)
    tx = pd.concat(frames, ignore_index=True)
    # The two files overlap on 2010-12-01..09 with identical lines: keep the newer file's copy.
    if len(paths) > 1:
        overlap = (tx._file == "online_retail_II_2009_2010.csv.gz") & (tx.InvoiceDate >= "2010-12-01")
        tx = tx[~overlap]
    return tx.reset_index(drop=True)


def to_contract(tx: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Pure mapping of Online Retail lines to contract datasets (all values as strings)."""
    local = pd.to_datetime(tx.InvoiceDate, format="mixed")
    utc = local.dt.tz_localize("Europe/London", ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")
    ts = utc.dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna(tx.InvoiceDate)  # ambiguous hour: kept naive -> quarantined
    customer = tx.CustomerID.str.replace(r"\.0$", "", regex=True)
    user = np.where(customer == "", "guest-" + tx.InvoiceNo, "C" + customer)
    cancelled = tx.InvoiceNo.str.startswith("C")
    quantity = pd.to_numeric(tx.Quantity, errors="coerce")
    qty = np.where(cancelled, quantity.abs(), quantity)
    sites = pd.DataFrame([dict(site_id=SITE, name="UK online gift shop (UCI Online Retail)", country="GB",
                               currency="GBP", timezone="Europe/London")])
    described = tx[tx.Description != ""]
    titles = described.groupby("StockCode").Description.agg(lambda s: s.mode().iat[0])
    prices = pd.to_numeric(tx.UnitPrice, errors="coerce")
    med_price = prices[prices > 0].groupby(tx.StockCode[prices > 0]).median()
    codes = pd.Index(tx.StockCode.unique())
    items = pd.DataFrame(dict(site_id=SITE, item_id=codes, title=titles.reindex(codes).fillna("").to_numpy(),
                              description="", category="gifts/" + pd.Series(codes).str.extract(r"^(\d{2})")[0].fillna("misc").to_numpy(),
                              brand="", price=med_price.reindex(codes).fillna(0).round(2).to_numpy(),
                              attributes=json.dumps({"source": "uci-online-retail"})))
    # An item without any description anywhere keeps its code as title rather than being lost.
    items.loc[items.title == "", "title"] = "item " + items.item_id[items.title == ""]
    first_seen = pd.DataFrame(dict(user=user, date=utc.dt.strftime("%Y-%m-%d"), country=tx.Country)) \
        .sort_values("date").drop_duplicates("user")
    users = pd.DataFrame(dict(user_id=first_seen.user, home_site_id=SITE,
                              segment=np.where(first_seen.user.str.startswith("guest-"), "guest", "customer"),
                              region=first_seen.country.str.lower().str.replace(" ", "_"), proactive_opt_in="false",
                              signup_date=first_seen.date))
    orders = pd.DataFrame(dict(order_id=tx.InvoiceNo, user_id=user, site_id=SITE, order_ts=ts,
                               status=np.where(cancelled, "cancelled", "delivered"))).drop_duplicates("order_id")
    lines = pd.DataFrame(dict(order_id=tx.InvoiceNo, line_no=tx.groupby("InvoiceNo").cumcount() + 1, site_id=SITE,
                              item_id=tx.StockCode, quantity=pd.Series(qty).astype("Int64").astype(str),
                              unit_price=tx.UnitPrice, discount="0"))
    bought = ~cancelled.to_numpy()
    events = pd.DataFrame(dict(event_id="P-" + tx.InvoiceNo + "-" + lines.line_no.astype(str), event_ts=ts, user_id=user,
                               site_id=SITE, item_id=tx.StockCode, event_type="purchase", session_id=tx.InvoiceNo))[bought]
    return dict(sites=sites, items=items, users=users, orders=orders, order_lines=lines, events=events)


def import_online_retail(path: Path, raw_root: Path, landing_date: str, limit: int | None = None) -> dict[str, int]:
    datasets = to_contract(load_transactions(Path(path), limit))
    counts = {}
    for name, frame in datasets.items():
        folder = Path(raw_root) / name / f"dt={landing_date}"
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("online-retail*"):
            old.unlink()
        frame.to_csv(folder / "online-retail.csv", index=False)
        counts[name] = len(frame)
    return counts
