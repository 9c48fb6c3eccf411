"""Reservations: the ledger compare-and-set, releases, warehouse picks and route room."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from bundlecast.jobs.core.commerce import available_stock, stable_id
from bundlecast.jobs.core.delta import catalog_frame
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.proactive.frames import LEDGER, as_date, catalog_rows, columns_of
from bundlecast.models import incentives as I


def _ensure_ledger(spark, cfg: dict, now) -> str:
    tables = Tables(spark, cfg)
    row = {"reservation_id": LEDGER, "status": "ledger", "ledger_version": 0, "quantity": 0,
           "created_at": now, "updated_at": now}
    tables.merge("inventory_reservations", catalog_frame(spark, "inventory_reservations", [row])) \
        .whenNotMatchedInsertAll().execute()
    return tables.path("inventory_reservations")


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

    path = _ensure_ledger(spark, cfg, summary.now)
    cols = columns_of("inventory_reservations")
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
        now = summary.now
        bump = {c: None for c in cols} | {"reservation_id": LEDGER, "status": "ledger", "ledger_version": expected + 1,
                                          "quantity": 0, "created_at": now, "updated_at": now}
        rows = pd.concat([changes[cols], pd.DataFrame([bump])], ignore_index=True)
        source = catalog_rows(spark, "inventory_reservations", rows).withColumn("_expected", F.lit(expected))
        try:
            (Tables(spark, cfg).merge("inventory_reservations", source)
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


def reservation_rows(picks: pd.DataFrame, dt: str, origin: str, run_id: str, now) -> pd.DataFrame:
    """One active reservation per shipment and item (``picks``: shipment_id, user_id,
    warehouse_id, items), created ``now``."""
    rows = [{"reservation_id": stable_id("RS", r.shipment_id, key), "shipment_id": r.shipment_id, "user_id": r.user_id,
             "warehouse_id": r.warehouse_id, "site_id": key.split("|", 1)[0], "item_id": key.split("|", 1)[1],
             "quantity": 1, "status": "active", "reason": None, "ledger_version": None, "created_by": origin,
             "dt": as_date(dt), "run_id": run_id, "created_at": now, "updated_at": now}
            for r in picks.itertuples() for key in r.items]
    return pd.DataFrame(rows, columns=columns_of("inventory_reservations"))


def release_rows(active: pd.DataFrame, shipment_ids, reason: str, now) -> pd.DataFrame:
    out = active[active.shipment_id.isin(set(shipment_ids))].copy()
    out["status"], out["reason"], out["updated_at"] = "released" if reason != "delivered" else "fulfilled", reason, now
    return out


def release(spark, cfg: dict, shipment_ids, reason: str, summary: StepRun) -> int:
    """Release (or, for delivered, fulfil) the active reservations of these shipments."""
    ids = set(shipment_ids)
    if not ids:
        return 0

    def plan(active):
        rows = release_rows(active, ids, reason, summary.now)
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

    feed = (routes if routes is not None else Tables(spark, cfg).read("routes")) \
        .filter(F.col("route_date") == F.lit(str(day)).cast("date"))
    latest = feed.agg(F.max("dt")).first()[0]
    if latest is None:
        return None
    return feed.filter(F.col("dt") == F.lit(latest)).toPandas().sort_values(["route_id", "stop_seq"])
