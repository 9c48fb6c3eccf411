"""Notifications: the outbox (heads-up, arrival changes, cancel/postpone tokens)."""
from __future__ import annotations

from datetime import datetime, time, timedelta

import pandas as pd

from bundlecast.jobs.core.commerce import stable_id
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.proactive.frames import as_date, catalog_rows
from bundlecast.jobs.proactive.tokens import CUSTOMER_ACTIONS, sign


def link_tokens(key: str, shipment_id: str, user_id: str, delivery_date, days_valid: int) -> dict:
    """The customer's cancel / postpone / accept tokens for a shipment, each bound to its
    action and valid until ``days_valid`` days after the delivery day starts (UTC)."""
    expires = datetime.combine(as_date(delivery_date), time()) + timedelta(days=days_valid)
    return {f"{action}_token": sign(key, shipment_id, user_id, kind, expires) for kind, action in CUSTOMER_ACTIONS.items()}


def notify(spark, cfg: dict, ships: pd.DataFrame, kind: str, dt: str, run_id: str, now) -> None:
    """Add outbox rows: one per shipment, kind and delivery day, keyed so a re-run adds
    nothing. For routed shipments (``heads_up``) the user hears again only when the
    expected arrival changed: a re-plan that moves the stop sends ``arrival_changed``."""
    from pyspark.sql import functions as F

    if not len(ships):
        return
    p = cfg["proactive"]
    rows = []
    for r in ships.itertuples():
        arrival = pd.Timestamp(r.planned_arrival) if pd.notna(r.planned_arrival) else None
        rows.append({"notification_id": stable_id("NT", r.shipment_id, kind, r.delivery_date), "shipment_id": r.shipment_id,
                     "user_id": r.user_id, "kind": kind, "channel": p["channel"], "items": list(r.items),
                     "expected_from": (max(arrival - pd.Timedelta(minutes=30), pd.Timestamp(r.window_start)).to_pydatetime()
                                       if arrival is not None else r.window_start),
                     "expected_to": (min(arrival + pd.Timedelta(minutes=30), pd.Timestamp(r.window_end)).to_pydatetime()
                                     if arrival is not None else r.window_end),
                     "incentive_type": r.incentive_type if kind == "heads_up" else None,
                     "incentive_value": float(r.incentive_value) if kind == "heads_up" and pd.notna(r.incentive_value) else None,
                     **link_tokens(cfg["secrets"]["link_signing_key"], r.shipment_id, r.user_id, r.delivery_date,
                                   int(p["link_days_valid"])),
                     "dt": as_date(dt), "run_id": run_id, "created_at": now})
    out = pd.DataFrame(rows)
    if kind == "heads_up":
        sent = Tables(spark, cfg).read("notifications").filter(
            F.col("kind").isin("heads_up", "arrival_changed") & F.col("shipment_id").isin(*out.shipment_id)).toPandas()
        out = arrival_messages(out, sent)
        if not len(out):
            return
    Tables(spark, cfg).upsert("notifications", catalog_rows(spark, "notifications", out), update=False)


def arrival_messages(heads_up: pd.DataFrame, sent: pd.DataFrame) -> pd.DataFrame:
    """What to tell about routed shipments, given the heads-ups and arrival changes the
    outbox already holds (``sent``): a heads-up the first time for a delivery day, an
    ``arrival_changed`` (numbered per shipment) when the expected arrival differs from the
    last one told for that day, else nothing."""
    told = sent.sort_values(["created_at", "notification_id"])
    told = told.assign(day=pd.to_datetime(told.expected_from).dt.date)
    last = told.groupby(["shipment_id", "day"]).tail(1).set_index(["shipment_id", "day"])
    count = told.groupby("shipment_id").size()
    out = []
    for r in heads_up.to_dict("records"):
        key = (r["shipment_id"], pd.Timestamp(r["expected_from"]).date())
        if key not in last.index:
            out.append(r)
            continue
        prev = last.loc[key]
        if (pd.Timestamp(prev.expected_from), pd.Timestamp(prev.expected_to)) == \
                (pd.Timestamp(r["expected_from"]), pd.Timestamp(r["expected_to"])):
            continue
        n = int(count.get(r["shipment_id"], 0))
        out.append(r | {"notification_id": stable_id("NT", r["shipment_id"], "arrival_changed", n), "kind": "arrival_changed",
                        "incentive_type": None, "incentive_value": None})
    return pd.DataFrame(out, columns=heads_up.columns)
