"""Decision: thresholds per category, eligibility, packing, and the day's new shipments."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.bundles.job import build_need_bundles
from bundlecast.jobs.core.commerce import stable_id, usable_prices
from bundlecast.jobs.core.runs import StepRun
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.proactive.frames import NOTIFIED, as_date, catalog_rows, columns_of, read_pandas
from bundlecast.jobs.proactive.reservations import (
    commit_reservations,
    day_routes,
    pick_warehouses,
    reservation_rows,
    route_room,
    stock_by_warehouse,
)
from bundlecast.models import packaging


def thresholds(cfg: dict, dt: str, shipments: pd.DataFrame) -> pd.DataFrame:
    """Per category: cancellation rate of notified shipments in the lookback and the threshold
    it leads to (``cancel_rule``)."""
    p, rule = cfg["proactive"], cfg["proactive"]["cancel_rule"]
    day = as_date(dt)
    recent = shipments[(shipments.status.isin(NOTIFIED))
                       & (pd.to_datetime(shipments.dt).dt.date > day - timedelta(days=int(rule["lookback_days"])))
                       & (pd.to_datetime(shipments.dt).dt.date < day)]  # not its own run date: a re-run sees the same
    stats = recent.groupby("category").agg(shipments=("shipment_id", "size"),
                                           cancelled=("status", lambda s: int((s == "cancelled").sum())))
    cats = sorted(set(stats.index) | set(p["category_thresholds"]))
    rows = []
    for cat in cats:
        n = int(stats.shipments.get(cat, 0))
        c = int(stats.cancelled.get(cat, 0))
        base = float(p["category_thresholds"].get(cat, p["threshold"]))
        rate = c / n if n else 0.0
        raised = n >= int(rule["min_shipments"]) and rate > float(rule["max_cancel_rate"])
        rows.append({"dt": day, "category": cat, "shipments": n, "cancelled": c, "cancel_rate": round(rate, 4),
                     "base_threshold": base,
                     "threshold": min(float(rule["max_threshold"]), base + float(rule["raise_by"])) if raised else base})
    return pd.DataFrame(rows, columns=columns_of("proactive_thresholds"))


def eligible(bundles: pd.DataFrame, users: pd.DataFrame, shipments: pd.DataFrame, feedback: pd.DataFrame,
             categories: pd.Series, limits: pd.DataFrame, cfg: dict, dt: str, delivery: date,
             counts: dict) -> pd.DataFrame:
    """The need bundles that may ship on ``delivery``, highest confidence first, with the
    reason every other one was left out counted."""
    p = cfg["proactive"]
    b = bundles.merge(users, on="user_id", how="left")
    b["category"] = [categories.get(items[0]) if len(items) else None for items in b["items"]]
    limit = limits.set_index("category").threshold
    b["threshold"] = [float(limit.get(c, p["threshold"])) for c in b.category]
    need = pd.to_datetime(b.need_date).dt.date

    def drop(mask, reason):
        counts[reason] = counts.get(reason, 0) + int(mask.sum())
        return ~mask

    keep = drop(b.proactive_opt_in.isna(), "skipped_unknown_user")
    keep &= drop(keep & (b.proactive_opt_in != True), "skipped_opted_out")  # noqa: E712 - null-safe
    keep &= drop(keep & (b.confidence < b.threshold), "skipped_below_threshold")
    cutoff = pd.Timestamp(as_date(dt) - timedelta(days=int(p["cooldown_days"])))
    fb = feedback[(feedback.kind == "shipment_cancel") & (pd.to_datetime(feedback.feedback_ts) >= cutoff)]
    keep &= drop(keep & b.user_id.isin(set(fb.user_id)), "skipped_cooldown")
    w = int(p["window_days"])
    # cancelled ones are the cool-down's business; one dropped by routing blocks only its own day
    other_day = pd.to_datetime(shipments.delivery_date).dt.date != delivery
    live = shipments[~(shipments.status.eq("cancelled") | (shipments.status.eq("dropped") & other_day))]
    near = live[(pd.to_datetime(live.delivery_date).dt.date > delivery - timedelta(days=w))
                & (pd.to_datetime(live.delivery_date).dt.date < delivery + timedelta(days=w))]
    keep &= drop(keep & b.user_id.isin(set(near.user_id)), "skipped_already_shipping_in_window")
    keep &= drop(keep & (need < delivery), "skipped_need_before_delivery")
    keep &= drop(keep & (need > delivery + timedelta(days=int(p["max_days_before_need"]))), "skipped_need_too_far")
    keep &= drop(keep & b.lat.isna(), "skipped_user_without_location")
    out = b[keep].sort_values(["confidence", "user_id"], ascending=[False, True])
    # The cap is per delivery day, whatever ran before (nightly, hourly, a re-run): the
    # day's shipments so far use it up, so re-running a run never adds more.
    room = max(0, int(p["max_shipments"]) - int((pd.to_datetime(shipments.delivery_date).dt.date == delivery).sum()))
    if len(out) > room:
        counts["skipped_over_max_shipments"] = int(len(out) - room)
        out = out.head(room)
    return out


def window(delivery: date, start_h, end_h) -> tuple[datetime, datetime]:
    base = datetime.combine(delivery, datetime.min.time())
    s = int(start_h) if pd.notna(start_h) else 8
    e = int(end_h) if pd.notna(end_h) else s + 2
    return base + timedelta(hours=s), base + timedelta(hours=max(e, s + 1))


def pack_all(picks: pd.DataFrame, items: pd.DataFrame, cfg: dict, counts: dict) -> pd.DataFrame:
    """Packaging per shipment; the unpackable ones are left out (counted, with the reason)."""
    pc = cfg["proactive"]["packaging"]
    fragile = set(pc["fragile_categories"])
    rows, keep = [], []
    for r in picks.itertuples():
        parts = []
        for key in r.items:
            it = items.loc[key]
            parts.append({"key": key, "volume_l": float(it.volume_l or 0), "weight_kg": float(it.weight_kg or 0),
                          "perishable": bool(it.perishable), "fragile": it.category in fragile})
        packed = packaging.pack(parts, pc["boxes"], pc)
        if isinstance(packed, str):
            counts["skipped_unpackable"] = counts.get("skipped_unpackable", 0) + 1
            keep.append(False)
            rows.append(None)
            continue
        keep.append(True)
        rows.append(packed)
    out = picks[np.array(keep, bool)].copy()
    packed = [x for x in rows if x is not None]
    out["packaging"] = [json.dumps(x.boxes) for x in packed]
    out["volume_l"] = [x.volume_l for x in packed]
    out["weight_kg"] = [x.weight_kg for x in packed]
    out["insulated"] = [x.insulated for x in packed]
    out["pack_after"] = [ws - timedelta(hours=float(pc["perishable_max_hours"])) if x.insulated else None
                         for ws, x in zip(out.window_start, packed)]
    return out


def decide(spark, cfg: dict, dt: str, origin: str, run_id: str, limits: pd.DataFrame, summary: StepRun) -> int:
    """Steps 3-5 for the delivery day ``dt + delivery_offset_days``: eligible need bundles,
    reserved (CAS), packed, written as ``planned`` shipments. Returns shipments created."""
    from pyspark.sql import functions as F

    c = summary.counts
    p = cfg["proactive"]
    delivery = as_date(dt) + timedelta(days=int(p["delivery_offset_days"]))
    items = usable_prices(Tables(spark, cfg).read("items").select(
        F.concat_ws("|", "site_id", "item_id").alias("key"), "site_id", "item_id", "category", "price", "cost",
        "volume_l", "weight_kg", "perishable").toPandas(), c)
    if origin == "nightly":
        nb = Tables(spark, cfg).read("need_bundles").filter(F.col("dt") == F.lit(dt).cast("date")).toPandas()
    else:  # hourly: the re-scored predictions, bundled the same way
        nb = build_need_bundles(Tables(spark, cfg), cfg, dt, run_id, items, {}).toPandas()
    c["need_bundles_read"] = len(nb)
    users = Tables(spark, cfg).read("users").select("user_id", "proactive_opt_in", "delivery_window_start",
                                                   "delivery_window_end", "lat", "lon").toPandas()
    shipments = read_pandas(spark, "proactive_shipments", cfg)
    feedback = Tables(spark, cfg).read("feedback").filter(F.col("feedback_ts") <= F.lit(f"{delivery} 00:00:00")) \
        .select("user_id", "kind", "feedback_ts").toPandas()
    cands = eligible(nb, users, shipments, feedback, items.category, limits, cfg, dt, delivery, c)
    if not len(cands):
        c["shipments_planned"] = 0
        return 0
    cands = cands.assign(shipment_id=[stable_id("SH", u, delivery) for u in cands.user_id])
    wins = [window(delivery, a, b) for a, b in zip(cands.delivery_window_start, cands.delivery_window_end)]
    cands["window_start"], cands["window_end"] = [w[0] for w in wins], [w[1] for w in wins]
    cands = pack_all(cands, items, cfg, c)
    stock = stock_by_warehouse(spark, cfg)
    warehouses = Tables(spark, cfg).read("warehouses").select("warehouse_id", "lat", "lon").toPandas() \
        .sort_values("warehouse_id").reset_index(drop=True)

    room = route_room(day_routes(spark, cfg, delivery), shipments, delivery, int(p["max_stops_per_vehicle"]))

    def plan(active):
        counts = {}
        picks = pick_warehouses(cands, stock, active, warehouses, counts, room)
        return reservation_rows(picks, dt, origin, run_id, summary.now), (picks, counts)
    picks, skipped = commit_reservations(spark, cfg, plan, summary)
    c.update(skipped)
    if not len(picks):
        c["shipments_planned"] = 0
        return 0
    now = summary.now
    margin = [float(sum(items.price.get(k, 0) - items.cost.get(k, 0) for k in ks)) for ks in picks["items"]]
    rows = picks.assign(
        delivery_date=delivery, value=np.round(picks.confidence.to_numpy() * np.array(margin), 2),
        need_date=pd.to_datetime(picks.need_date).dt.date, route_id=None, planned_arrival=None, added_km=None,
        incentive_type=None, incentive_value=None, status="planned", status_reason="decided", feedback_id=None,
        created_by=origin, dt=as_date(dt), run_id=run_id, created_at=now, updated_at=now)
    write_shipments(spark, cfg, rows[columns_of("proactive_shipments")])
    c["shipments_planned"] = len(rows)
    summary.figures["shipments_mean_confidence"] = round(float(rows.confidence.mean()), 4)
    return len(rows)


def write_shipments(spark, cfg: dict, rows: pd.DataFrame) -> None:
    """Upsert by shipment id (a re-run rewrites the same rows)."""
    if not len(rows):
        return
    Tables(spark, cfg).upsert("proactive_shipments", catalog_rows(spark, "proactive_shipments", rows))
