"""Routes: the day's routing problem, insertion into planned routes, and closing a day."""
from __future__ import annotations

import time
from datetime import date

import numpy as np
import pandas as pd

from bundlecast.jobs.core.runs import StepRun
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.proactive.decision import write_shipments
from bundlecast.jobs.proactive.frames import ACTIVE, as_date, catalog_rows, columns_of, read_pandas
from bundlecast.jobs.proactive.notifications import notify
from bundlecast.jobs.proactive.reservations import day_routes, release
from bundlecast.models import incentives as I
from bundlecast.models import routing
from bundlecast.models.offer_types import EARLY_BIRD


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


def replan(spark, cfg: dict, days: set[date], dt: str, run_id: str, summary: StepRun,
           only_changed: bool = False) -> None:
    """Re-plan each delivery day: planned routes of the latest routes feed for that day plus
    every active shipment of the day, per depot. On the delivery day itself (an hourly
    re-plan after a same-day cancel) the vans are loaded: routed shipments keep their van.

    ``only_changed`` (the hourly run, whose routes feed is the night's): a day whose plan
    already routes exactly its active shipments is kept as it is (no solve, no write)."""
    c, p = summary.counts, cfg["proactive"]
    routes_all = Tables(spark, cfg).read("routes")
    shipments = read_pandas(spark, "proactive_shipments", cfg)
    warehouses = Tables(spark, cfg).read("warehouses").select("warehouse_id", "lat", "lon").toPandas().set_index("warehouse_id")
    plans = _planned_shipments(spark, cfg, days) if only_changed else {}
    for day in sorted(days):
        on_day = pd.to_datetime(shipments.delivery_date).dt.date == day
        todays = shipments[on_day & shipments.status.isin(ACTIVE)].copy()
        if day in plans and plans[day] == set(todays.shipment_id):
            c["skipped_replan_unchanged"] += 1
            continue
        stops_all = day_routes(spark, cfg, day, routes_all)
        # dropped by an earlier plan of the day: no longer routed, still dropped at their depot
        dropped_before = shipments[on_day & shipments.status.eq("dropped")].warehouse_id.value_counts()
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
                                                    loaded=day <= as_date(dt))
            c["planned_windows_widened"] += widened
            t0 = time.perf_counter()
            solved = routing.insert(problem, planned, float(p["solve_seconds"]), int(p["solution_limit"]),
                                        p["insertion_solver"]) if len(props) \
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
            rows = route_rows(problem, solved.routes, planned, stops, props, vehicles, depot_id, day,
                              status, len(depot_dropped) + int(dropped_before.get(depot_id, 0)),
                              float(cfg["incentives"]["co2_kg_per_km"]), run_id)
            stop_rows += rows[0]
            plan_rows += rows[1]
            routed.update(rows[2])
        tables = Tables(spark, cfg)
        tables.replace("route_stops", catalog_rows(spark, "route_stops", pd.DataFrame(stop_rows)), route_date=day)
        tables.replace("route_plans", catalog_rows(spark, "route_plans", pd.DataFrame(plan_rows)), route_date=day)
        c["proactive_stops_routed"] += len(routed)
        c["proactive_stops_dropped"] += len(dropped)
        finish_day(spark, cfg, todays, routed, dropped, dt, run_id, summary)


def _planned_shipments(spark, cfg: dict, days: set[date]) -> dict[date, set[str]]:
    """{day: the shipment ids its current plan routes} for the days that have a plan."""
    from pyspark.sql import functions as F

    rows = (Tables(spark, cfg).read("route_stops")
            .filter(F.col("route_date").cast("string").isin(sorted(str(d) for d in days)))
            .select("route_date", "shipment_id").toPandas())
    return {as_date(d): set(g.shipment_id.dropna()) for d, g in rows.groupby("route_date")}


def read_users(spark, cfg: dict, ships: pd.DataFrame) -> pd.DataFrame:
    from pyspark.sql import functions as F
    ids = sorted(set(ships.user_id))
    return Tables(spark, cfg).read("users").filter(F.col("user_id").isin(ids)).select("user_id", "lat", "lon").toPandas()


def finish_day(spark, cfg: dict, todays: pd.DataFrame, routed: dict, dropped: list, dt: str, run_id: str,
               summary: StepRun) -> None:
    """Write the route outcome onto the shipments, release what no route took, size the
    early-bird incentive from the exact consolidation saving and notify the newly routed."""
    now = summary.now
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
        write_shipments(spark, cfg, s.loc[changed].reset_index()[columns_of("proactive_shipments")])
    release(spark, cfg, dropped, "dropped", summary)
    newly = s.loc[list(routed)].reset_index()
    notify(spark, cfg, newly[newly.status.isin(["notified", "confirmed", "postponed"])], "heads_up", dt, run_id, now)


def route_rows(problem, routes: list[list[int]], planned: list[list[int]], stops: pd.DataFrame, props: pd.DataFrame,
               vehicles: pd.DataFrame, depot_id: str, day, status: str, n_dropped: int, co2: float,
               run_id: str) -> tuple[list[dict], list[dict], dict]:
    """Pure: the ``route_stops`` and ``route_plans`` rows of one depot's solved day, and
    each routed proactive shipment's (route, planned arrival, added km, dedicated km).
    Nodes 1..len(stops) are the planned stops, the rest the proactive ones (``props``)."""
    n_plan = len(stops)
    stop_rows, plan_rows, routed = [], [], {}
    for v, route in enumerate(routes):
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
        plan_rows.append({"route_date": day, "route_id": veh.route_id, "vehicle_id": veh.vehicle_id,
                          "depot_id": depot_id, "planned_stops": len(planned[v]),
                          "proactive_stops": sum(1 for x in route if x > n_plan),
                          "dropped_at_depot": n_dropped, "km_before": round(before, 3),
                          "km_after": round(after, 3), "dedicated_km": round(dedicated, 3),
                          "co2_kg_added": round((after - before) * co2, 3),
                          "co2_kg_saved": round(max(dedicated - (after - before), 0) * co2, 3),
                          "solver_status": status, "run_id": run_id})
    return stop_rows, plan_rows, routed
