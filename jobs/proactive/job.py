"""The proactive step's run (see the package docstring)."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
from bundlecast.jobs.bundles.job import build_need_bundles
from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.commerce import available_stock, stable_id, usable_prices
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.delta import catalog_frame, ensure_table, read_table, replace_rows
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.models import incentives as I
from bundlecast.models import packaging, routing
from bundlecast.models.offer_types import EARLY_BIRD

LEDGER = "__ledger__"
ACTIVE = ("planned", "notified", "confirmed", "postponed")
FINAL = ("cancelled", "delivered", "failed", "dropped")
NOTIFIED = ("notified", "confirmed", "cancelled", "postponed", "delivered", "failed")
CUSTOMER_KINDS = ("shipment_cancel", "shipment_postpone", "shipment_accept")
PROOF_KINDS = ("shipment_delivered", "shipment_failed")  # dispatch's proof of delivery


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def _day(d) -> date:
    return d if isinstance(d, date) and not isinstance(d, datetime) else date.fromisoformat(str(d)[:10])


def _pd(spark, name: str, cfg: dict) -> pd.DataFrame:
    frame = read_table(spark, name, cfg).toPandas()
    return frame if len(frame) else pd.DataFrame(columns=_cols(name))


def _cols(name: str) -> list[str]:
    return [c.name for c in catalog.table(name).columns]


def _records(frame: pd.DataFrame, name: str) -> list[dict]:
    """pandas rows as plain dicts for Spark: NaN/NaT -> None, Timestamps -> datetime, dates
    as ISO strings for ``dt`` (``catalog_frame`` casts it)."""
    def clean(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return list(v)
        if v is None or v is pd.NaT or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, pd.Timestamp):
            return v.to_pydatetime(warn=False)
        return v.item() if isinstance(v, np.generic) else v
    ints = {c.name for c in catalog.table(name).columns if c.spark_type in ("int", "long", "bigint")}
    out = [{k: clean(v) for k, v in r.items()} for r in frame[_cols(name)].to_dict("records")]
    for r in out:
        for k in ints:
            if r[k] is not None:
                r[k] = int(r[k])
        if r.get("dt") is not None:
            r["dt"] = str(r["dt"])[:10]
    return out


def _frame(spark, name: str, rows):
    if isinstance(rows, pd.DataFrame):
        rows = _records(rows, name)
    return catalog_frame(spark, name, rows) if len(rows) else spark.createDataFrame([], catalog.table(name).ddl())


# --------------------------------------------------------------------------- reservations (ledger CAS)

def _ensure_ledger(spark, cfg: dict) -> str:
    from delta.tables import DeltaTable

    path = ensure_table(spark, "inventory_reservations", cfg)
    now = _now()
    row = {"reservation_id": LEDGER, "status": "ledger", "ledger_version": 0, "quantity": 0,
           "created_at": now, "updated_at": now}
    DeltaTable.forPath(spark, path).alias("t").merge(catalog_frame(spark, "inventory_reservations", [row]).alias("s"),
                                                     "t.reservation_id = s.reservation_id") \
        .whenNotMatchedInsertAll().execute()
    return path


def commit_reservations(spark, cfg: dict, plan, summary: StepRun):
    """Optimistic compare-and-set on the reservation ledger.

    ``plan(active)`` gets the active reservations (pandas) of one table version and returns
    ``(changes, payload)``: rows to insert or update (new reservations, releases). They are
    committed in one MERGE that also bumps the ledger row **only if** it still holds the
    version read; otherwise the MERGE fails (``raise_error``), nothing is written, and the
    whole read-plan-commit is retried. Two runs committing at the same moment both rewrite
    the ledger row's file, so Delta rejects the later one (ConcurrentModification) and it
    is retried the same way: no reservation is ever planned on stale stock."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = _ensure_ledger(spark, cfg)
    cols = _cols("inventory_reservations")
    retries = int(cfg["proactive"]["reservation_retries"])
    for attempt in range(retries + 1):
        table = DeltaTable.forPath(spark, path)
        version = table.history(1).select("version").first()[0]
        # only the rows a plan can use: released and fulfilled history never comes back
        snap = (spark.read.format("delta").option("versionAsOf", version).load(path)
                .where(F.col("status").isin("active", "ledger")).toPandas())
        ledger = snap[snap.reservation_id == LEDGER]
        if len(ledger) != 1:
            raise BundlecastError(f"inventory_reservations has {len(ledger)} ledger rows (expected 1)")
        expected = int(ledger.ledger_version.iloc[0])
        changes, payload = plan(snap[snap.status == "active"].copy())
        if changes is None or not len(changes):
            return payload
        now = _now()
        bump = {c: None for c in cols} | {"reservation_id": LEDGER, "status": "ledger", "ledger_version": expected + 1,
                                          "quantity": 0, "created_at": now, "updated_at": now}
        rows = pd.concat([changes[cols], pd.DataFrame([bump])], ignore_index=True)
        source = _frame(spark, "inventory_reservations", rows).withColumn("_expected", F.lit(expected))
        try:
            (table.alias("t").merge(source.alias("s"), "t.reservation_id = s.reservation_id")
             .whenMatchedUpdate(condition=f"s.reservation_id = '{LEDGER}'", set={
                 "ledger_version": "CASE WHEN t.ledger_version = s._expected THEN s.ledger_version "
                                   "ELSE raise_error('reservation ledger moved') END",
                 "updated_at": "s.updated_at"})
             .whenMatchedUpdate(set={"status": "s.status", "reason": "s.reason", "updated_at": "s.updated_at"})
             .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
             .execute())
            summary.figures["reservation_ledger_version"] = expected + 1
            return payload
        except Exception as exc:  # noqa: BLE001 - only conflicts are retried, see below
            text = f"{type(exc).__name__}: {exc}"
            if "reservation ledger moved" not in text and "Concurrent" not in text:
                raise
            summary.counts["reservation_conflicts_retried"] += 1
    raise BundlecastError(f"reservations: still conflicting after {retries} retries; nothing was reserved by this run")


def reservation_rows(picks: pd.DataFrame, dt: str, origin: str, run_id: str) -> pd.DataFrame:
    """One active reservation per shipment and item (``picks``: shipment_id, user_id,
    warehouse_id, items)."""
    now = _now()
    rows = [{"reservation_id": stable_id("RS", r.shipment_id, key), "shipment_id": r.shipment_id, "user_id": r.user_id,
             "warehouse_id": r.warehouse_id, "site_id": key.split("|", 1)[0], "item_id": key.split("|", 1)[1],
             "quantity": 1, "status": "active", "reason": None, "ledger_version": None, "created_by": origin,
             "dt": _day(dt), "run_id": run_id, "created_at": now, "updated_at": now}
            for r in picks.itertuples() for key in r.items]
    return pd.DataFrame(rows, columns=_cols("inventory_reservations"))


def release_rows(active: pd.DataFrame, shipment_ids, reason: str) -> pd.DataFrame:
    out = active[active.shipment_id.isin(set(shipment_ids))].copy()
    out["status"], out["reason"], out["updated_at"] = "released" if reason != "delivered" else "fulfilled", reason, _now()
    return out


def release(spark, cfg: dict, shipment_ids, reason: str, summary: StepRun) -> int:
    """Release (or, for delivered, fulfil) the active reservations of these shipments."""
    ids = set(shipment_ids)
    if not ids:
        return 0

    def plan(active):
        rows = release_rows(active, ids, reason)
        return rows, len(rows)
    n = commit_reservations(spark, cfg, plan, summary) or 0
    summary.counts["reservations_fulfilled" if reason == "delivered" else f"reservations_released_{reason}"] += n
    return n


def stock_by_warehouse(spark, cfg: dict) -> pd.DataFrame:
    """available (on hand - reserved in the snapshot), before proactive reservations, per
    (warehouse_id, key)."""
    return available_stock(Tables(spark, cfg), subtract_reservations=False).toPandas()


def pick_warehouses(cands: pd.DataFrame, stock: pd.DataFrame, active: pd.DataFrame, warehouses: pd.DataFrame,
                    counts: dict, room: dict[str, int] | None = None) -> pd.DataFrame:
    """Greedy in the candidates' order (highest confidence first): the nearest warehouse
    whose remaining stock covers every item, decremented as it goes. With ``room`` (the
    proactive stops each depot's routes can still take, see ``route_room``), a shipment
    whose warehouse has none left is not reserved at all: the router would only drop it."""
    left = stock.set_index(["warehouse_id", "key"]).available.astype(int).to_dict()
    for r in active.itertuples():
        k = (r.warehouse_id, f"{r.site_id}|{r.item_id}")
        left[k] = left.get(k, 0) - int(r.quantity)
    room = None if room is None else dict(room)
    chosen, dist = [], []
    for r in cands.itertuples():
        km = I.haversine_km(r.lat, r.lon, warehouses.lat.to_numpy(), warehouses.lon.to_numpy())
        pick, reason = None, "skipped_no_stock"
        for w in np.argsort(km, kind="stable"):
            wid = warehouses.warehouse_id.iloc[w]
            if all(left.get((wid, key), 0) >= 1 for key in r.items):
                pick = (wid, float(km[w]))
                break
        if pick is not None and room is not None and room.get(pick[0], 0) <= 0:
            reason = "skipped_routes_full" if pick[0] in room else "skipped_no_routes_that_day"
            pick = None
        if pick is None:
            counts[reason] = counts.get(reason, 0) + 1
            chosen.append(None)
            dist.append(np.nan)
            continue
        for key in r.items:
            left[(pick[0], key)] -= 1
        if room is not None:
            room[pick[0]] -= 1
        chosen.append(pick[0])
        dist.append(pick[1])
    out = cands.assign(warehouse_id=chosen, distance_km=dist)
    return out[out.warehouse_id.notna()]


def route_room(day_stops: pd.DataFrame | None, shipments: pd.DataFrame, delivery: date, per_vehicle: int) -> dict[str, int]:
    """Proactive stops each depot's planned routes can still take on ``delivery``: a planning
    estimate (``per_vehicle`` per van) less the day's shipments from that depot that were not
    cancelled (one the router dropped keeps its place, so a re-run does not fill it again).
    The router decides exactly; this only keeps the decision from reserving stock for far
    more shipments than the vans can carry. A depot without routes that day has no entry."""
    if day_stops is None or not len(day_stops):
        return {}
    vans = day_stops.groupby("depot_id").route_id.nunique()
    day = shipments[(pd.to_datetime(shipments.delivery_date).dt.date == delivery) & (shipments.status != "cancelled")]
    taken = day.groupby("warehouse_id").size()
    return {depot: int(n) * int(per_vehicle) - int(taken.get(depot, 0)) for depot, n in vans.items()}


def day_routes(spark, cfg: dict, day: date, routes=None) -> pd.DataFrame | None:
    """The planned stops of ``day`` from the latest routes feed that has that day, or None."""
    from pyspark.sql import functions as F

    feed = (routes if routes is not None else read_table(spark, "routes", cfg)) \
        .filter(F.col("route_date") == F.lit(str(day)).cast("date"))
    latest = feed.agg(F.max("dt")).first()[0]
    if latest is None:
        return None
    return feed.filter(F.col("dt") == F.lit(latest)).toPandas().sort_values(["route_id", "stop_seq"])


# --------------------------------------------------------------------------- decision

def thresholds(cfg: dict, dt: str, shipments: pd.DataFrame) -> pd.DataFrame:
    """Per category: cancellation rate of notified shipments in the lookback and the threshold
    it leads to (``cancel_rule``)."""
    p, rule = cfg["proactive"], cfg["proactive"]["cancel_rule"]
    day = _day(dt)
    recent = shipments[(shipments.status.isin(NOTIFIED))
                       & (pd.to_datetime(shipments.dt).dt.date > day - timedelta(days=int(rule["lookback_days"])))]
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
    return pd.DataFrame(rows, columns=_cols("proactive_thresholds"))


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
    cutoff = pd.Timestamp(_day(dt) - timedelta(days=int(p["cooldown_days"])))
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
    delivery = _day(dt) + timedelta(days=int(p["delivery_offset_days"]))
    items = usable_prices(read_table(spark, "items", cfg).select(
        F.concat_ws("|", "site_id", "item_id").alias("key"), "site_id", "item_id", "category", "price", "cost",
        "volume_l", "weight_kg", "perishable").toPandas(), c)
    if origin == "nightly":
        nb = read_table(spark, "need_bundles", cfg).filter(F.col("dt") == F.lit(dt).cast("date")).toPandas()
    else:  # hourly: the re-scored predictions, bundled the same way
        nb = build_need_bundles(Tables(spark, cfg), cfg, dt, run_id, items, {}).toPandas()
    c["need_bundles_read"] = len(nb)
    users = read_table(spark, "users", cfg).select("user_id", "proactive_opt_in", "delivery_window_start",
                                                   "delivery_window_end", "lat", "lon").toPandas()
    shipments = _pd(spark, "proactive_shipments", cfg)
    feedback = read_table(spark, "feedback", cfg).filter(F.col("feedback_ts") <= F.lit(f"{delivery} 00:00:00")) \
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
    warehouses = read_table(spark, "warehouses", cfg).select("warehouse_id", "lat", "lon").toPandas() \
        .sort_values("warehouse_id").reset_index(drop=True)

    room = route_room(day_routes(spark, cfg, delivery), shipments, delivery, int(p["max_stops_per_vehicle"]))

    def plan(active):
        counts = {}
        picks = pick_warehouses(cands, stock, active, warehouses, counts, room)
        return reservation_rows(picks, dt, origin, run_id), (picks, counts)
    picks, skipped = commit_reservations(spark, cfg, plan, summary)
    c.update(skipped)
    if not len(picks):
        c["shipments_planned"] = 0
        return 0
    now = _now()
    margin = [float(sum(items.price.get(k, 0) - items.cost.get(k, 0) for k in ks)) for ks in picks["items"]]
    rows = picks.assign(
        delivery_date=delivery, value=np.round(picks.confidence.to_numpy() * np.array(margin), 2),
        need_date=pd.to_datetime(picks.need_date).dt.date, route_id=None, planned_arrival=None, added_km=None,
        incentive_type=None, incentive_value=None, status="planned", status_reason="decided", feedback_id=None,
        created_by=origin, dt=_day(dt), run_id=run_id, created_at=now, updated_at=now)
    write_shipments(spark, cfg, rows[_cols("proactive_shipments")])
    c["shipments_planned"] = len(rows)
    summary.figures["shipments_mean_confidence"] = round(float(rows.confidence.mean()), 4)
    return len(rows)


def write_shipments(spark, cfg: dict, rows: pd.DataFrame) -> None:
    """Upsert by shipment id (a re-run rewrites the same rows)."""
    from delta.tables import DeltaTable

    if not len(rows):
        return
    path = ensure_table(spark, "proactive_shipments", cfg)
    DeltaTable.forPath(spark, path).alias("t").merge(_frame(spark, "proactive_shipments", rows).alias("s"),
                                                     "t.shipment_id = s.shipment_id") \
        .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()


# --------------------------------------------------------------------------- feedback

def unapplied(fb: pd.DataFrame, shipments: pd.DataFrame) -> pd.Series:
    """Which feedback rows come after the last one applied to their shipment (by time, then
    id). A shipment whose last applied feedback is not among ``fb`` (state from a later run
    date) takes none."""
    seen = fb.set_index("feedback_id").feedback_ts
    last = {sid: ((seen[f], f) if f in seen.index else (pd.Timestamp.max, ""))
            for sid, f in shipments[["shipment_id", "feedback_id"]].dropna().itertuples(index=False)}
    floor = (pd.Timestamp.min, "")
    return pd.Series([(pd.Timestamp(r.feedback_ts), r.feedback_id) > last.get(r.reference_id, floor)
                      for r in fb.itertuples()], index=fb.index, dtype=bool)


def apply_feedback(spark, cfg: dict, dt: str, run_id: str, summary: StepRun) -> set[date]:
    """Customers' cancel / postpone / accept and dispatch's proof of delivery (delivered /
    failed) from ``feedback`` up to the end of ``dt``, then close past delivery days.
    Returns the delivery days whose plan changed.

    Each shipment remembers the last feedback applied to it; only later feedback (by time,
    then id) is applied, so a re-run applies nothing twice, whatever the order of kinds."""
    from pyspark.sql import functions as F

    c, p = summary.counts, cfg["proactive"]
    shipments = _pd(spark, "proactive_shipments", cfg)
    fb = read_table(spark, "feedback", cfg).filter(
        F.col("kind").isin(*CUSTOMER_KINDS, *PROOF_KINDS)
        & (F.col("feedback_ts") < F.lit(str(_day(dt) + timedelta(days=1))).cast("timestamp"))).toPandas()
    known = fb.reference_id.isin(set(shipments.shipment_id))
    c["feedback_unknown_shipment"] = int((~known).sum())
    fb = fb[known].sort_values(["feedback_ts", "feedback_id"])
    if not len(shipments):
        return set()
    fb = fb[unapplied(fb, shipments)]
    s = shipments.set_index("shipment_id")
    touched_days, cancelled, failed, proven = set(), [], [], []
    now = _now()
    for r in fb.itertuples():
        row = s.loc[r.reference_id]
        if row.status in FINAL:
            c["feedback_after_final_status"] += 1
            continue
        day = _day(row.delivery_date)
        if r.kind in CUSTOMER_KINDS:
            if pd.Timestamp(r.feedback_ts).date() > day:
                c["feedback_after_delivery_day"] += 1
                continue
            touched_days.add(day)
        if r.kind in PROOF_KINDS:  # the van was there: the plan of the day is history
            ok = r.kind == "shipment_delivered"
            s.loc[r.reference_id, ["status", "status_reason"]] = \
                ["delivered", "proof of delivery"] if ok else ["failed", "delivery failed (dispatch)"]
            (proven if ok else failed).append(r.reference_id)
            c["proof_delivered" if ok else "proof_failed"] += 1
        elif r.kind == "shipment_cancel":
            s.loc[r.reference_id, ["status", "status_reason"]] = ["cancelled", "user cancelled"]
            cancelled.append(r.reference_id)
            c["feedback_cancelled"] += 1
        elif r.kind == "shipment_postpone":
            days = int(r.postpone_days) if pd.notna(r.postpone_days) and int(r.postpone_days) > 0 else 1
            new_day = day + timedelta(days=days)
            ws, we = pd.Timestamp(row.window_start) + pd.Timedelta(days=days), pd.Timestamp(row.window_end) + pd.Timedelta(days=days)
            s.loc[r.reference_id, ["delivery_date", "window_start", "window_end", "status", "status_reason",
                                   "route_id", "planned_arrival", "added_km"]] = \
                [new_day, ws.to_pydatetime(), we.to_pydatetime(), "postponed", f"user postponed {days} day(s)", None, None, None]
            touched_days.add(new_day)
            c["feedback_postponed"] += 1
        else:
            s.loc[r.reference_id, ["status", "status_reason"]] = ["confirmed", "user accepted"]
            c["feedback_confirmed"] += 1
        s.loc[r.reference_id, ["feedback_id", "updated_at"]] = [r.feedback_id, now]
    # close past delivery days: a routed shipment waits ``proof_grace_days`` for dispatch's
    # proof (its stock stays reserved), then counts as delivered; one never routed is dropped
    day_of = pd.to_datetime(s.delivery_date).dt.date
    grace = int(p["proof_grace_days"])
    past = (day_of < _day(dt)) & s.status.isin(ACTIVE)
    routed = past & s.route_id.notna() & s.status.isin(["notified", "confirmed"])
    assumed = routed & (day_of < _day(dt) - timedelta(days=grace))
    expired = past & ~routed
    s.loc[assumed, ["status", "status_reason", "updated_at"]] = \
        ["delivered", f"no proof of delivery within {grace} day(s): taken as delivered", now]
    s.loc[expired, ["status", "status_reason", "updated_at"]] = ["dropped", "delivery day passed without a route", now]
    c["shipments_delivered_assumed"] = int(assumed.sum())
    c["shipments_awaiting_proof"] = int((routed & ~assumed).sum())
    c["shipments_expired"] = int(expired.sum())
    changed = s.index.isin(set(fb.reference_id)) | assumed.to_numpy() | expired.to_numpy()
    write_shipments(spark, cfg, s[changed].reset_index()[_cols("proactive_shipments")])
    release(spark, cfg, cancelled, "cancelled", summary)
    release(spark, cfg, failed, "delivery_failed", summary)
    release(spark, cfg, s.index[expired], "expired", summary)
    release(spark, cfg, proven + list(s.index[assumed]), "delivered", summary)
    if cancelled:
        notify(spark, cfg, s.loc[cancelled].reset_index(), "cancelled", dt, run_id)
    postponed = [r.reference_id for r in fb.itertuples() if r.kind == "shipment_postpone"
                 and s.loc[r.reference_id].status == "postponed"]
    if postponed:
        notify(spark, cfg, s.loc[sorted(set(postponed))].reset_index(), "postponed", dt, run_id)
    return touched_days


# --------------------------------------------------------------------------- routes

def _minutes(ts, day: date) -> float:
    return (pd.Timestamp(ts) - pd.Timestamp(day)).total_seconds() / 60.0


def day_problem(depot: tuple[float, float], stops: pd.DataFrame, props: pd.DataFrame, vehicles: pd.DataFrame,
                day: date, cfg: dict, loaded: bool = False) -> tuple[routing.Problem, list[list[int]], int]:
    """The routing problem of one depot and day: node 0 the depot, then the planned stops
    (grouped by route, in their order), then the proactive stops. Distances are road km,
    times minutes after midnight (UTC). Returns the problem, the planned routes (node
    lists per vehicle) and how many planned windows had to be widened because the planned
    sequence itself cannot meet them at the modelled speed.

    ``loaded``: the day has begun and the vans are loaded, so a proactive stop already on a
    route stays on that van (it may still be re-sequenced, or dropped by the solver)."""
    p, road = cfg["proactive"], float(cfg["incentives"]["road_factor"])
    lat = np.concatenate([[depot[0]], stops.lat.to_numpy(float), props.lat.to_numpy(float)])
    lon = np.concatenate([[depot[1]], stops.lon.to_numpy(float), props.lon.to_numpy(float)])
    km = road * I.haversine_km(lat[:, None], lon[:, None], lat[None], lon[None])
    travel = km / float(p["speed_kmh"]) * 60.0
    n_plan = len(stops)
    ready = np.concatenate([[0.0], [_minutes(t, day) for t in stops.window_start], [_minutes(t, day) for t in props.window_start]])
    due = np.concatenate([[24 * 60.0 * 2], [_minutes(t, day) for t in stops.window_end], [_minutes(t, day) for t in props.window_end]])
    service = np.concatenate([[0.0], np.full(n_plan, float(p["planned_service_min"])), np.full(len(props), float(p["service_min"]))])
    load = np.vstack([[0.0, 0.0],
                      np.column_stack([stops.load_kg.fillna(0).to_numpy(float),
                                       stops.load_kg.fillna(0).to_numpy(float) * float(p["planned_l_per_kg"])]).reshape(-1, 2),
                      np.column_stack([props.weight_kg.to_numpy(float), props.volume_l.to_numpy(float)]).reshape(-1, 2)])
    capacity = np.column_stack([vehicles.capacity_kg.fillna(np.inf).to_numpy(float), np.full(len(vehicles), float(p["vehicle_volume_l"]))])
    shifts = np.column_stack([[_minutes(t, day) for t in vehicles.shift_start], [_minutes(t, day) for t in vehicles.shift_end]])
    vehicle_of = np.full(len(lat), -1)
    route_index = {rid: v for v, rid in enumerate(vehicles.route_id)}
    planned = [[] for _ in range(len(vehicles))]
    for k, rid in enumerate(stops.route_id):
        vehicle_of[1 + k] = route_index[rid]
        planned[route_index[rid]].append(1 + k)
    if loaded:
        for j, rid in enumerate(props.route_id):
            vehicle_of[1 + n_plan + j] = route_index.get(rid, -1)
    required = np.zeros(len(lat), bool)
    required[1:1 + n_plan] = True
    penalty = np.zeros(len(lat))
    penalty[1 + n_plan:] = props.value.to_numpy(float) / float(cfg["incentives"]["cost_per_km"])
    problem = routing.Problem(name=f"{day}", dist=km, travel=travel, load=load, ready=ready, due=due.copy(),
                              service=service, capacity=capacity, shifts=shifts, required=required, penalty=penalty,
                              vehicle_of=vehicle_of)
    # The planned sequences are kept as they are: where they cannot meet a window (or the
    # capacity) at the modelled speed, that window (capacity) is widened to what the
    # planned sequence achieves, so insertion never makes a planned stop later than planned.
    widened = 0
    for v, route in enumerate(planned):
        if not route:
            continue
        arrivals = routing.route_schedule(problem, v, route)
        for node, t in zip(route, arrivals):
            if t > problem.due[node]:
                problem.due[node] = t
                widened += 1
        if arrivals[-1] > problem.shifts[v, 1]:
            problem.shifts[v, 1] = arrivals[-1]
        problem.capacity[v] = np.maximum(problem.capacity[v], problem.load[route].sum(axis=0))
    return problem, planned, widened


def replan(spark, cfg: dict, days: set[date], dt: str, run_id: str, summary: StepRun) -> None:
    """Re-plan each delivery day: planned routes of the latest routes feed for that day plus
    every active shipment of the day, per depot. On the delivery day itself (an hourly
    re-plan after a same-day cancel) the vans are loaded: routed shipments keep their van."""
    c, p = summary.counts, cfg["proactive"]
    routes_all = read_table(spark, "routes", cfg)
    shipments = _pd(spark, "proactive_shipments", cfg)
    warehouses = read_table(spark, "warehouses", cfg).select("warehouse_id", "lat", "lon").toPandas().set_index("warehouse_id")
    for day in sorted(days):
        stops_all = day_routes(spark, cfg, day, routes_all)
        todays = shipments[(pd.to_datetime(shipments.delivery_date).dt.date == day) & shipments.status.isin(ACTIVE)].copy()
        if stops_all is None:
            c["days_without_routes"] += 1
            continue
        stop_rows, plan_rows, routed, dropped = [], [], {}, []
        located = todays.merge(read_users(spark, cfg, todays), on="user_id", how="left")
        for depot_id, stops in stops_all.groupby("depot_id", sort=True):
            vehicles = stops.groupby("route_id", sort=True).agg(
                vehicle_id=("vehicle_id", "first"), capacity_kg=("capacity_kg", "first"),
                shift_start=("shift_start", "first"), shift_end=("shift_end", "first")).reset_index()
            props = located[located.warehouse_id == depot_id].sort_values("shipment_id").reset_index(drop=True)
            depot = (float(warehouses.lat.get(depot_id, stops.lat.mean())), float(warehouses.lon.get(depot_id, stops.lon.mean())))
            problem, planned, widened = day_problem(depot, stops.reset_index(drop=True), props, vehicles, day, cfg,
                                                    loaded=day <= _day(dt))
            c["planned_windows_widened"] += widened
            t0 = time.perf_counter()
            solved = routing.insert(problem, planned, float(p["solve_seconds"]), int(p["solution_limit"])) if len(props) \
                else routing.Solved(planned, 0.0, "ortools")
            summary.figures["routing_seconds"] = round(summary.figures.get("routing_seconds", 0) + time.perf_counter() - t0, 2)
            if len(props) and solved.seconds >= 0.95 * float(p["solve_seconds"]):
                # the safety cap, not the solution limit, ended the search: a re-run may differ
                c["route_solves_at_time_cap"] += 1
            status = "ok"
            if solved.status != "ok" or routing.check(problem, solved.routes):
                status, solved = "as_planned", routing.Solved(planned, solved.seconds, "ortools")
                c["route_days_kept_as_planned"] += 1
            n_plan = len(stops)
            depot_dropped = [int(k) for k in range(1 + n_plan, problem.n) if k not in {x for r in solved.routes for x in r}]
            dropped += [props.shipment_id.iloc[k - 1 - n_plan] for k in depot_dropped]
            for v, route in enumerate(solved.routes):
                veh = vehicles.iloc[v]
                arrivals = routing.route_schedule(problem, v, route)
                path = [0, *route, 0]
                added_total, dedicated = 0.0, 0.0
                for seq, (node, t) in enumerate(zip(route, arrivals), start=1):
                    proactive = node > n_plan
                    prev, nxt = path[seq - 1], path[seq + 1]
                    added = problem.dist[prev, node] + problem.dist[node, nxt] - problem.dist[prev, nxt]
                    base = {"route_date": day, "route_id": veh.route_id, "vehicle_id": veh.vehicle_id, "depot_id": depot_id,
                            "sequence": seq, "planned_arrival": (pd.Timestamp(day) + pd.Timedelta(minutes=float(t))).round("s"),
                            "run_id": run_id}
                    if proactive:
                        sh = props.iloc[node - 1 - n_plan]
                        added_total += added
                        dedicated += 2 * problem.dist[0, node]
                        routed[sh.shipment_id] = (veh.route_id, base["planned_arrival"], round(float(added), 3),
                                                  float(2 * problem.dist[0, node]))
                        stop_rows.append(base | {"stop_type": "proactive", "order_id": None, "shipment_id": sh.shipment_id,
                                                 "planned_seq": None, "lat": float(sh.lat), "lon": float(sh.lon),
                                                 "window_start": sh.window_start, "window_end": sh.window_end,
                                                 "added_km": round(float(added), 3), "load_kg": float(sh.weight_kg)})
                    else:
                        st = stops.iloc[node - 1]
                        stop_rows.append(base | {"stop_type": "planned", "order_id": st.order_id, "shipment_id": None,
                                                 "planned_seq": int(st.stop_seq), "lat": float(st.lat), "lon": float(st.lon),
                                                 "window_start": st.window_start, "window_end": st.window_end,
                                                 "added_km": None, "load_kg": float(st.load_kg) if pd.notna(st.load_kg) else None})
                before = routing.distance(problem, [planned[v]]) if planned[v] else 0.0
                after = routing.distance(problem, [route]) if route else 0.0
                co2 = float(cfg["incentives"]["co2_kg_per_km"])
                plan_rows.append({"route_date": day, "route_id": veh.route_id, "vehicle_id": veh.vehicle_id,
                                  "depot_id": depot_id, "planned_stops": len(planned[v]),
                                  "proactive_stops": sum(1 for x in route if x > n_plan),
                                  "dropped_at_depot": len(depot_dropped), "km_before": round(before, 3),
                                  "km_after": round(after, 3), "dedicated_km": round(dedicated, 3),
                                  "co2_kg_added": round((after - before) * co2, 3),
                                  "co2_kg_saved": round(max(dedicated - (after - before), 0) * co2, 3),
                                  "solver_status": status, "run_id": run_id})
        where = f"route_date = DATE'{day}'"
        replace_rows(spark, _frame(spark, "route_stops", pd.DataFrame(stop_rows)), "route_stops", where, cfg)
        replace_rows(spark, _frame(spark, "route_plans", pd.DataFrame(plan_rows)), "route_plans", where, cfg)
        c["proactive_stops_routed"] += len(routed)
        c["proactive_stops_dropped"] += len(dropped)
        finish_day(spark, cfg, todays, routed, dropped, dt, run_id, summary)


def read_users(spark, cfg: dict, ships: pd.DataFrame) -> pd.DataFrame:
    from pyspark.sql import functions as F
    ids = sorted(set(ships.user_id))
    return read_table(spark, "users", cfg).filter(F.col("user_id").isin(ids)).select("user_id", "lat", "lon").toPandas()


def finish_day(spark, cfg: dict, todays: pd.DataFrame, routed: dict, dropped: list, dt: str, run_id: str,
               summary: StepRun) -> None:
    """Write the route outcome onto the shipments, release what no route took, size the
    early-bird incentive from the exact consolidation saving and notify the newly routed."""
    now = _now()
    inc = cfg["incentives"]
    s = todays.set_index("shipment_id")
    for sid, (rid, arrival, added, dedicated) in routed.items():
        saved_km = max(dedicated - added, 0.0)
        saving = saved_km * float(inc["cost_per_km"]) + (float(inc["stop_fixed_saving"]) if saved_km > 0 else 0.0)
        price = float(s.loc[sid, "value"]) / max(float(s.loc[sid, "confidence"]), 1e-9)  # margin; sized below
        f = I.size([price + 1e-9], [0.0], [0.0], [saving], [0.0], [0.0], [saved_km * float(inc["co2_kg_per_km"])],
                   {**inc, **cfg["pricing"], "min_margin": 0.0})
        value = float(f["value"].iloc[0])
        new_status = "notified" if s.loc[sid, "status"] == "planned" else s.loc[sid, "status"]
        s.loc[sid, ["route_id", "planned_arrival", "added_km", "incentive_type", "incentive_value", "status", "updated_at"]] = \
            [rid, arrival.to_pydatetime(warn=False), added, EARLY_BIRD, round(value, 2), new_status, now]
    if dropped:
        s.loc[dropped, ["status", "status_reason", "route_id", "planned_arrival", "added_km", "updated_at"]] = \
            ["dropped", "no route could take it within its value", None, None, None, now]
    changed = list(routed) + list(dropped)
    if changed:
        write_shipments(spark, cfg, s.loc[changed].reset_index()[_cols("proactive_shipments")])
    release(spark, cfg, dropped, "dropped", summary)
    newly = s.loc[list(routed)].reset_index()
    notify(spark, cfg, newly[newly.status.isin(["notified", "confirmed", "postponed"])], "heads_up", dt, run_id)


# --------------------------------------------------------------------------- notifications

def token(secret: str, shipment_id: str) -> str:
    return hmac.new(secret.encode(), shipment_id.encode(), hashlib.sha256).hexdigest()[:32]


def notify(spark, cfg: dict, ships: pd.DataFrame, kind: str, dt: str, run_id: str) -> None:
    """Add outbox rows: one per shipment, kind and delivery day, keyed so a re-run adds
    nothing. For routed shipments (``heads_up``) the user hears again only when the
    expected arrival changed: a re-plan that moves the stop sends ``arrival_changed``."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    if not len(ships):
        return
    p, now = cfg["proactive"], _now()
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
                     "token": token(str(p["token_secret"]), r.shipment_id), "dt": _day(dt), "run_id": run_id,
                     "created_at": now})
    path = ensure_table(spark, "notifications", cfg)
    out = pd.DataFrame(rows)
    if kind == "heads_up":
        sent = read_table(spark, "notifications", cfg).filter(
            F.col("kind").isin("heads_up", "arrival_changed") & F.col("shipment_id").isin(*out.shipment_id)).toPandas()
        out = arrival_messages(out, sent)
        if not len(out):
            return
    DeltaTable.forPath(spark, path).alias("t").merge(_frame(spark, "notifications", out).alias("s"),
                                                     "t.notification_id = s.notification_id") \
        .whenNotMatchedInsertAll().execute()


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


# --------------------------------------------------------------------------- run

def run(spark, dt: str, mode: str = "nightly", run_id: str | None = None, cfg: dict | None = None,
        progress=print) -> StepRun:
    """Nightly: feedback, thresholds, decisions for the next delivery day, its plan. Hourly:
    feedback, new high-confidence shipments, re-plan of the days that changed."""
    cfg = cfg or config()
    if mode not in ("nightly", "hourly"):
        raise BundlecastError(f"unknown proactive mode {mode!r}: nightly or hourly")
    summary = StepRun("proactive", dt, run_id or f"proactive-{mode}-{dt}-{uuid.uuid4().hex[:8]}", mode)
    for name in ("proactive_shipments", "route_stops", "route_plans", "notifications", "proactive_thresholds"):
        ensure_table(spark, name, cfg)  # present (maybe empty) for readers and exports
    _ensure_ledger(spark, cfg)
    touched = apply_feedback(spark, cfg, dt, summary.run_id, summary)
    limits = thresholds(cfg, dt, _pd(spark, "proactive_shipments", cfg))
    if mode == "nightly":
        replace_rows(spark, _frame(spark, "proactive_thresholds", limits), "proactive_thresholds", f"dt = DATE'{dt}'", cfg)
    elif (latest := read_table(spark, "proactive_thresholds", cfg).filter(f"dt <= DATE'{dt}'")).count():
        top = latest.agg({"dt": "max"}).first()[0]
        limits = latest.filter(latest.dt == top).toPandas()
    summary.counts["categories_threshold_raised"] = int((limits.threshold > limits.base_threshold).sum())
    decide(spark, cfg, dt, mode, summary.run_id, limits, summary)
    delivery = _day(dt) + timedelta(days=int(cfg["proactive"]["delivery_offset_days"]))
    days = {d for d in touched if d >= _day(dt)} | {delivery}
    replan(spark, cfg, days, dt, summary.run_id, summary)
    record(Tables(spark, cfg), summary.finish())
    progress(render(summary))
    return summary


def consolidation_potential(spark, cfg: dict, day: str, points: pd.DataFrame) -> pd.DataFrame:
    """Marginal road km of adding a stop at each point (lat, lon, window_start, window_end,
    warehouse_id, weight_kg, volume_l) to that day's current plan of its warehouse's routes:
    the cheapest position that keeps every window, shift and capacity (inf: none does).
    This is the exact counterpart of ``models.incentives.consolidation``'s estimate."""
    from pyspark.sql import functions as F

    d = _day(day)
    stops = read_table(spark, "route_stops", cfg).filter(F.col("route_date") == F.lit(str(d)).cast("date")).toPandas()
    warehouses = read_table(spark, "warehouses", cfg).select("warehouse_id", "lat", "lon").toPandas().set_index("warehouse_id")
    out = np.full(len(points), np.inf)
    if not len(stops):
        return points.assign(added_km=out)
    routes_feed = read_table(spark, "routes", cfg).filter(F.col("route_date") == F.lit(str(d)).cast("date")) \
        .groupBy("route_id").agg(F.first("capacity_kg").alias("capacity_kg"), F.first("shift_start").alias("shift_start"),
                                 F.first("shift_end").alias("shift_end")).toPandas().set_index("route_id")
    for wid, pts in points.groupby("warehouse_id"):
        plan = stops[stops.depot_id == wid].sort_values(["route_id", "sequence"])
        if not len(plan):
            continue
        vehicles = plan.groupby("route_id", sort=True).agg(vehicle_id=("vehicle_id", "first")).reset_index() \
            .join(routes_feed, on="route_id")
        fixed = plan.assign(load_kg=plan.load_kg.fillna(0), stop_seq=plan.sequence)
        props = pts.assign(value=0.0, shipment_id=[f"p{i}" for i in range(len(pts))])
        problem, planned, _ = day_problem((float(warehouses.lat[wid]), float(warehouses.lon[wid])), fixed.reset_index(drop=True),
                                          props.reset_index(drop=True), vehicles, d, cfg)
        nodes = list(range(1 + len(fixed), problem.n))
        out[np.flatnonzero(points.warehouse_id.to_numpy() == wid)] = routing.insertion_costs(problem, planned, nodes)
    return points.assign(added_km=out)


def render(s: StepRun) -> str:
    c, f = s.counts, s.figures
    skipped = {k: v for k, v in c.items() if k.startswith("skipped") and v}
    return (f"proactive {s.run_id} for {s.dt}: {c.get('shipments_planned', 0):,} new shipments "
            f"(of {c.get('need_bundles_read', 0):,} need bundles), {c.get('proactive_stops_routed', 0):,} routed, "
            f"{c.get('proactive_stops_dropped', 0):,} dropped by routing; feedback: "
            f"{c.get('feedback_cancelled', 0)} cancelled, {c.get('feedback_postponed', 0)} postponed, "
            f"{c.get('feedback_confirmed', 0)} confirmed ({c.get('feedback_unknown_shipment', 0)} for unknown shipments); "
            f"{c.get('reservation_conflicts_retried', 0)} reservation conflicts retried; "
            f"routing {f.get('routing_seconds', 0):.1f} s, total {s.seconds:.0f} s"
            + (f"\n  skipped: {', '.join(f'{k} {v:,}' for k, v in skipped.items())}" if skipped else ""))
