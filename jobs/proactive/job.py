"""The proactive step's run (see the package docstring), and the exact consolidation cost for incentives."""
from __future__ import annotations

import uuid
from datetime import timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.proactive.decision import decide, thresholds
from bundlecast.jobs.proactive.feedback import apply_feedback
from bundlecast.jobs.proactive.frames import as_date, catalog_rows, read_pandas
from bundlecast.jobs.proactive.reservations import _ensure_ledger
from bundlecast.jobs.proactive.routes import day_problem, replan
from bundlecast.models import routing


def run(spark, dt: str, mode: str = "nightly", run_id: str | None = None, cfg: dict | None = None,
        progress=print) -> StepRun:
    """Nightly: feedback, thresholds, decisions for the next delivery day, its plan. Hourly:
    feedback, new high-confidence shipments, re-plan of the days that changed."""
    cfg = cfg or config()
    if mode not in ("nightly", "hourly"):
        raise BundlecastError(f"unknown proactive mode {mode!r}: nightly or hourly")
    summary = StepRun("proactive", dt, run_id or f"proactive-{mode}-{dt}-{uuid.uuid4().hex[:8]}", mode)
    tables = Tables(spark, cfg)
    for name in ("proactive_shipments", "route_stops", "route_plans", "notifications", "proactive_thresholds"):
        tables.path(name)  # present (maybe empty) for readers and exports
    _ensure_ledger(spark, cfg, summary.now)
    touched = apply_feedback(spark, cfg, dt, summary.run_id, summary)
    limits = thresholds(cfg, dt, read_pandas(spark, "proactive_shipments", cfg))
    if mode == "nightly":
        tables.replace("proactive_thresholds", catalog_rows(spark, "proactive_thresholds", limits), dt=dt)
    elif (latest := tables.latest("proactive_thresholds", dt))[1] is not None:
        limits = latest[0].toPandas()
    summary.counts["categories_threshold_raised"] = int((limits.threshold > limits.base_threshold).sum())
    decide(spark, cfg, dt, mode, summary.run_id, limits, summary)
    delivery = as_date(dt) + timedelta(days=int(cfg["proactive"]["delivery_offset_days"]))
    days = {d for d in touched if d >= as_date(dt)} | {delivery}
    replan(spark, cfg, days, dt, summary.run_id, summary, only_changed=mode == "hourly")
    record(tables, summary.finish())
    progress(render(summary))
    return summary


def consolidation_potential(spark, cfg: dict, day: str, points: pd.DataFrame) -> pd.DataFrame:
    """Marginal road km of adding a stop at each point (lat, lon, window_start, window_end,
    warehouse_id, weight_kg, volume_l) to that day's current plan of its warehouse's routes:
    the cheapest position that keeps every window, shift and capacity (inf: none does).
    This is the exact counterpart of ``models.incentives.consolidation``'s estimate."""
    from pyspark.sql import functions as F

    d = as_date(day)
    stops = Tables(spark, cfg).read("route_stops").filter(F.col("route_date") == F.lit(str(d)).cast("date")).toPandas()
    warehouses = Tables(spark, cfg).read("warehouses").select("warehouse_id", "lat", "lon").toPandas().set_index("warehouse_id")
    out = np.full(len(points), np.inf)
    if not len(stops):
        return points.assign(added_km=out)
    routes_feed = Tables(spark, cfg).read("routes").filter(F.col("route_date") == F.lit(str(d)).cast("date")) \
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
