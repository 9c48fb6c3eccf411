"""Proactive shipping: the decision's rules on explicit frames, and the job's guarantees.
(The route solver and packing on their own: tests/test_routing.py.)

The job runs on a `tiny` world of its own (own state directory and catalog database) whose
need bundles are planted, so every guarantee is checked against known users: opted out,
in cool-down, below threshold, scarce stock, feedback.
"""
import hashlib
import hmac
import threading
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SOLOMON = Path(__file__).resolve().parents[2] / "shared" / "data" / "solomon_vrptw" / "instances"
DT = "2026-11-20"
DELIVERY = date(2026, 11, 21)


# --------------------------------------------------------------------------- pure: routing

def test_users_hear_again_only_when_the_expected_arrival_moves():
    from bundlecast.jobs.proactive.notifications import arrival_messages
    day = pd.Timestamp("2026-11-21")

    def told(frm, shipment="S1", created=0):
        return {"notification_id": f"N{shipment}{frm}{created}", "shipment_id": shipment, "kind": "heads_up",
                "expected_from": day + pd.Timedelta(hours=frm), "expected_to": day + pd.Timedelta(hours=frm + 1),
                "incentive_type": "early_bird", "incentive_value": 1.0, "created_at": day + pd.Timedelta(minutes=created)}
    none = pd.DataFrame(columns=list(told(9)))
    first = arrival_messages(pd.DataFrame([told(9)]), none)
    assert first.kind.tolist() == ["heads_up"]
    assert arrival_messages(pd.DataFrame([told(9)]), first).empty  # same arrival: nothing new
    moved = arrival_messages(pd.DataFrame([told(13)]), first)
    assert moved.kind.tolist() == ["arrival_changed"] and moved.incentive_type.isna().all()
    sent = moved.assign(created_at=day + pd.Timedelta(1, "h"), incentive_type="", incentive_value=0.0)
    back = arrival_messages(pd.DataFrame([told(9)]), pd.concat([first, sent]))
    assert back.kind.tolist() == ["arrival_changed"] and back.notification_id.iloc[0] != moved.notification_id.iloc[0]
    next_day = arrival_messages(pd.DataFrame([told(33)]), first)  # postponed to the next day: a new heads-up
    assert next_day.kind.tolist() == ["heads_up"]


def test_cancellations_raise_a_category_threshold():
    from bundlecast.jobs.core.config import load_config
    from bundlecast.jobs.proactive.decision import thresholds
    cfg = load_config(state_home=Path("/nonexistent"), environ={})
    rule = cfg["proactive"]["cancel_rule"]
    n = int(rule["min_shipments"])
    cancelled = int(n * 0.5)
    ships = pd.DataFrame({"shipment_id": [f"S{i}" for i in range(2 * n)],
                          "category": ["home/garden"] * n + ["grocery/dairy"] * n,
                          "status": ["cancelled"] * cancelled + ["delivered"] * (n - cancelled) + ["delivered"] * n,
                          "dt": [date(2026, 11, 10)] * (2 * n)})
    out = thresholds(cfg, DT, ships).set_index("category")
    base = cfg["proactive"]["threshold"]
    assert out.loc["home/garden", "threshold"] == pytest.approx(min(base + rule["raise_by"], rule["max_threshold"]))
    assert out.loc["home/garden", "cancel_rate"] == pytest.approx(cancelled / n)
    assert out.loc["grocery/dairy", "threshold"] == cfg["proactive"]["category_thresholds"]["grocery/dairy"]
    # too few shipments: no change, however many were cancelled
    few = thresholds(cfg, DT, ships.head(n - 1)).set_index("category")
    assert few.loc["home/garden", "threshold"] == base



def test_shipment_cap_is_per_delivery_day_so_a_rerun_adds_nothing():
    from bundlecast.jobs.core.config import load_config
    from bundlecast.jobs.proactive.decision import eligible
    cfg = load_config(state_home=Path("/nonexistent"), environ={})
    cfg["proactive"]["max_shipments"] = 3
    n = 6
    bundles = pd.DataFrame({"user_id": [f"U{i}" for i in range(n)], "items": [["s1|a"]] * n,
                            "confidence": np.linspace(0.99, 0.94, n), "need_date": [DELIVERY] * n})
    users = pd.DataFrame({"user_id": bundles.user_id, "proactive_opt_in": True, "delivery_window_start": 8,
                          "delivery_window_end": 10, "lat": 51.5, "lon": -0.1})
    none = pd.DataFrame({"user_id": pd.Series(dtype=str), "status": pd.Series(dtype=str),
                         "delivery_date": pd.Series(dtype="datetime64[ns]")})
    feedback = pd.DataFrame({"user_id": pd.Series(dtype=str), "kind": pd.Series(dtype=str),
                             "feedback_ts": pd.Series(dtype="datetime64[ns]")})
    limits = pd.DataFrame({"category": ["home"], "threshold": [0.5]})
    categories = pd.Series({"s1|a": "home"})
    counts = {}
    first = eligible(bundles, users, none, feedback, categories, limits, cfg, DT, DELIVERY, counts)
    assert list(first.user_id) == ["U0", "U1", "U2"] and counts["skipped_over_max_shipments"] == 3
    # the same day again (a re-run, or the hourly run), after routing dropped one of them: nothing new
    made = pd.DataFrame({"user_id": first.user_id, "status": ["planned", "planned", "dropped"],
                         "delivery_date": pd.to_datetime([DELIVERY] * 3)})
    assert eligible(bundles, users, made, feedback, categories, limits, cfg, DT, DELIVERY, {}).empty
    # another day has its own cap
    later = DELIVERY + timedelta(days=7)
    again = eligible(bundles.assign(need_date=later), users, made, feedback, categories, limits, cfg, DT, later, {})
    assert len(again) == 3


def test_decision_reserves_only_what_the_days_routes_can_take():
    from bundlecast.jobs.proactive.reservations import pick_warehouses, route_room
    stops = pd.DataFrame({"depot_id": ["A", "A", "A", "B"], "route_id": ["A-0", "A-0", "A-1", "B-0"]})
    ships = pd.DataFrame({"warehouse_id": ["A", "A", "A", "B"], "status": ["notified", "dropped", "cancelled", "planned"],
                          "delivery_date": pd.to_datetime([DELIVERY] * 3 + [DELIVERY - timedelta(days=1)])})
    room = route_room(stops, ships, DELIVERY, 3)
    # one dropped by the router keeps its place (a re-run must not refill it); a cancelled
    # one and another day's take none
    assert room == {"A": 2 * 3 - 2, "B": 3}
    room = {"A": 3, "B": 2}
    assert route_room(None, ships, DELIVERY, 2) == {}
    # five users next to A, one next to C (a depot without routes that day); stock everywhere
    warehouses = pd.DataFrame({"warehouse_id": ["A", "B", "C"], "lat": [51.5, 53.5, 55.0], "lon": [-0.1, -2.2, -3.0]})
    stock = pd.DataFrame([{"warehouse_id": w, "key": "s1|a", "available": 100} for w in "ABC"])
    cands = pd.DataFrame({"user_id": [f"U{i}" for i in range(6)], "items": [["s1|a"]] * 6,
                          "lat": [51.5] * 5 + [55.0], "lon": [-0.1] * 5 + [-3.0]})
    active = pd.DataFrame(columns=["warehouse_id", "site_id", "item_id", "quantity"])
    counts = {}
    picks = pick_warehouses(cands, stock, active, warehouses, counts, room)
    assert list(picks.user_id) == ["U0", "U1", "U2"] and set(picks.warehouse_id) == {"A"}
    assert counts == {"skipped_routes_full": 2, "skipped_no_routes_that_day": 1}
    assert len(pick_warehouses(cands, stock, active, warehouses, {})) == 6  # no room given: stock decides

# --------------------------------------------------------------------------- pure: packaging

@pytest.fixture(scope="module")
def pworld(spark, tmp_path_factory):
    """A tiny world: ingested dimensions, stock, routes and feedback; planted need bundles."""
    from bundlecast.jobs.core.config import load_config
    from bundlecast.jobs.core.delta import read_table
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.tools.demo_world import generate

    home = tmp_path_factory.mktemp("proactive")
    cfg = load_config(state_home=home)
    cfg["storage"]["database"] = "bundlecast_proactive"
    spark.sql("CREATE DATABASE IF NOT EXISTS bundlecast_proactive")
    generate(Path(cfg["storage"]["raw"]), home / "truth.json", "tiny", 5, DT, progress=lambda m: None)
    ingest.run(spark, DT, ["sites", "warehouses", "items", "users", "inventory", "routes", "feedback"], cfg=cfg,
               with_expectations=False, progress=lambda m: None)
    users = read_table(spark, "users", cfg).toPandas().sort_values("user_id").reset_index(drop=True)
    items = read_table(spark, "items", cfg).toPandas()
    items = items[items.price > items.cost].copy()
    items["key"] = items.site_id + "|" + items.item_id
    light = items[(items.volume_l < 3) & (~items.perishable.astype(bool))].key.tolist()
    opted_in = users[users.proactive_opt_in.astype(bool)].user_id.tolist()
    opted_out = users[~users.proactive_opt_in.astype(bool)].user_id.tolist()
    cool = opted_in[-1]
    picks = dict(ship=opted_in[:12], out=opted_out[:2], cool=[cool], low=[opted_in[12]])
    rows = []
    for k, u in enumerate(picks["ship"] + picks["out"] + picks["cool"] + picks["low"]):
        conf = 0.2 if u in picks["low"] else 0.95 - 0.01 * k
        its = [light[(2 * k) % len(light)], light[(2 * k + 1) % len(light)]]
        rows.append({"bundle_id": f"NB{k}", "user_id": u, "items": its, "main_items": its, "probabilities": [0.97, 0.97],
                     "need_date": DELIVERY + timedelta(days=1), "confidence": conf, "list_price": 10.0, "cost": 5.0,
                     "volume_l": 2.0, "weight_kg": 1.0, "warehouse_id": None, "stock_ok": True, "short_items": [],
                     "dt": date.fromisoformat(DT), "run_id": "planted"})
    from bundlecast.jobs.core.tables import Tables
    tables = Tables(spark, cfg)
    tables.replace("need_bundles", tables.frame("need_bundles", rows), dt=DT)
    # the cool-down user cancelled a proactive shipment three days ago
    fb = pd.DataFrame([{"feedback_id": "FCOOL", "feedback_ts": datetime(2026, 11, 17, 10), "user_id": cool,
                        "kind": "shipment_cancel", "reference_id": "SH-old", "postpone_days": None,
                        "dt": date.fromisoformat(DT), "_source_file": "planted"}])
    _append(spark, cfg, "feedback", fb)
    return dict(cfg=cfg, picks=picks, items=items)


def _append(spark, cfg, name, frame):
    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.delta import read_table
    target = read_table(spark, name, cfg).schema
    df = spark.createDataFrame(frame.reindex(columns=[f.name for f in target.fields]).astype(object)
                               .where(lambda f: f.notna(), None), target)
    df.write.format("delta").mode("append").save(catalog.table_path(name, cfg))


def _with_tokens(spark, cfg, fb):
    """Feedback as its real senders make it: a customer's row carries the token of the link
    in the outbox, dispatch's proof a token signed with dispatch's key."""
    from bundlecast.jobs.proactive.tokens import CUSTOMER_ACTIONS, sign
    notes = _t(spark, cfg, "notifications").sort_values("created_at").groupby("shipment_id").last()
    owner = _t(spark, cfg, "proactive_shipments").set_index("shipment_id").user_id
    return fb.assign(token=[notes.loc[r.reference_id, f"{CUSTOMER_ACTIONS[r.kind]}_token"] if r.kind in CUSTOMER_ACTIONS
                            else sign(cfg["secrets"]["dispatch_feed_key"], r.reference_id, owner[r.reference_id], r.kind,
                                      datetime(2100, 1, 1)) for r in fb.itertuples()])


def _t(spark, cfg, name):
    from bundlecast.jobs.core.delta import read_table
    return read_table(spark, name, cfg).toPandas()


def _assert_users_told_the_current_plan(spark, cfg):
    """Each routed shipment's last heads-up / arrival change is its current expected arrival."""
    ships = _t(spark, cfg, "proactive_shipments")
    routed = ships[ships.status.isin(["notified", "confirmed", "postponed"]) & ships.route_id.notna()]
    notes = _t(spark, cfg, "notifications")
    notes = notes[notes.kind.isin(["heads_up", "arrival_changed"])].sort_values(["created_at", "notification_id"])
    last = notes.groupby("shipment_id").tail(1).set_index("shipment_id")
    for r in routed.itertuples():
        arrival = pd.Timestamp(r.planned_arrival)
        assert last.loc[r.shipment_id, "expected_from"] == max(arrival - pd.Timedelta(minutes=30), pd.Timestamp(r.window_start))
        assert last.loc[r.shipment_id, "expected_to"] == min(arrival + pd.Timedelta(minutes=30), pd.Timestamp(r.window_end))
    assert len(routed)


@pytest.fixture(scope="module")
def nightly(spark, pworld):
    from bundlecast.jobs.proactive import job as proactive
    s = proactive.run(spark, DT, "nightly", "pro-1", pworld["cfg"], progress=lambda m: None)
    return s


def test_decision_honours_opt_out_cooldown_and_threshold(spark, pworld, nightly):
    ships = _t(spark, pworld["cfg"], "proactive_shipments")
    shipped = set(ships.user_id)
    picks = pworld["picks"]
    assert not shipped & set(picks["out"]), "shipped to a user who opted out"
    assert not shipped & set(picks["cool"]), "shipped to a user in cool-down"
    assert not shipped & set(picks["low"])
    assert shipped <= set(picks["ship"]) and len(shipped) >= 6
    c = nightly.counts
    assert c["skipped_opted_out"] == 2 and c["skipped_cooldown"] >= 1 and c["skipped_below_threshold"] == 1
    assert ships.shipment_id.is_unique and (pd.to_datetime(ships.delivery_date).dt.date == DELIVERY).all()
    assert ships.packaging.str.contains('"box"').all() and (ships.volume_l > 0).all()


def test_routes_keep_every_planned_stop_in_order_and_window(spark, pworld, nightly):
    from bundlecast.jobs.core.delta import read_table
    cfg = pworld["cfg"]
    feed = read_table(spark, "routes", cfg).toPandas()
    feed = feed[pd.to_datetime(feed.route_date).dt.date == DELIVERY]
    stops = _t(spark, cfg, "route_stops")
    stops = stops[pd.to_datetime(stops.route_date).dt.date == DELIVERY]
    planned = stops[stops.stop_type == "planned"]
    assert len(planned) == len(feed), "a planned stop was dropped"
    for rid, g in planned.sort_values("sequence").groupby("route_id"):
        assert g.planned_seq.tolist() == sorted(feed[feed.route_id == rid].stop_seq.tolist())  # same route, same order
    assert (planned.planned_arrival <= planned.window_end).all()
    proactive = stops[stops.stop_type == "proactive"]
    ships = _t(spark, cfg, "proactive_shipments").set_index("shipment_id")
    assert len(proactive) == nightly.counts["proactive_stops_routed"] > 0
    assert (proactive.planned_arrival >= proactive.window_start).all() and (proactive.planned_arrival <= proactive.window_end).all()
    assert set(proactive.shipment_id) == set(ships[ships.status == "notified"].index)
    plans = _t(spark, cfg, "route_plans")
    assert (plans.km_after >= plans.km_before - 1e-6).all() and plans.proactive_stops.sum() == len(proactive)
    notes = _t(spark, cfg, "notifications")
    assert set(notes[notes.kind == "heads_up"].shipment_id) == set(proactive.shipment_id)
    assert notes.cancel_token.notna().all() and (notes.cancel_token != notes.postpone_token).all()
    assert (notes.incentive_type == "early_bird").all()
    _assert_users_told_the_current_plan(spark, cfg)


def test_reservations_match_shipments_and_rerun_changes_nothing(spark, pworld, nightly):
    from bundlecast.jobs.proactive import job as proactive
    cfg = pworld["cfg"]
    names = ["proactive_shipments", "inventory_reservations", "route_stops", "route_plans", "notifications",
             "proactive_thresholds"]
    key_cols = {"proactive_shipments": ["shipment_id", "status", "route_id", "planned_arrival"],
                "inventory_reservations": ["reservation_id", "status", "quantity"],
                "route_stops": ["route_id", "sequence", "stop_type", "shipment_id", "order_id", "planned_arrival"],
                "route_plans": ["route_id", "km_after", "proactive_stops", "dropped_at_depot"],
                "notifications": ["notification_id"],
                "proactive_thresholds": ["dt", "category", "shipments", "threshold"]}
    before = {n: _t(spark, cfg, n)[key_cols[n]].sort_values(key_cols[n][:2]).reset_index(drop=True) for n in names}
    res = before["inventory_reservations"]
    active = _t(spark, cfg, "inventory_reservations").query("status == 'active'")
    ships = _t(spark, cfg, "proactive_shipments")
    live = ships[ships.status.isin(["planned", "notified"])]
    assert sorted(active.shipment_id.unique()) == sorted(live.shipment_id)
    assert len(active) == sum(len(x) for x in live["items"])
    proactive.run(spark, DT, "nightly", "pro-1", cfg, progress=lambda m: None)
    after = {n: _t(spark, cfg, n)[key_cols[n]].sort_values(key_cols[n][:2]).reset_index(drop=True) for n in names}
    for n in names:
        pd.testing.assert_frame_equal(before[n], after[n], obj=n)
    assert len(res)


def test_concurrent_reservations_never_oversell(spark, pworld, nightly):
    """Two runs plan on the same ledger version (a barrier makes sure) for more units than
    the warehouse has: one commit wins, the other conflicts, re-reads and re-plans."""
    from bundlecast.jobs.core.runs import StepRun
    from bundlecast.jobs.proactive import reservations
    cfg = pworld["cfg"]
    stock = reservations.stock_by_warehouse(spark, cfg)
    held = _t(spark, cfg, "inventory_reservations").query("status == 'active'")
    wid, key = stock.warehouse_id.iloc[0], stock.key.iloc[0]
    already = int(((held.warehouse_id == wid) & (held.site_id + "|" + held.item_id == key)).sum())
    available = int(stock[(stock.warehouse_id == wid) & (stock.key == key)].available.iloc[0]) - already
    want = available // 2 + 2  # each run wants more than half: together more than there is
    barrier = threading.Barrier(2)
    summaries = [StepRun("proactive", DT, f"race-{i}", "nightly") for i in range(2)]
    got, errors = [0, 0], []

    def plan_for(i):
        first = [True]

        def plan(active):
            mine = int(((active.warehouse_id == wid) & (active.site_id + "|" + active.item_id == key)).sum())
            free = max(available + already - mine, 0)
            n = min(want, free)
            rows = pd.DataFrame([{"shipment_id": f"RACE{i}-{k}", "user_id": f"race{i}", "warehouse_id": wid,
                                  "items": [key]} for k in range(n)])
            if first[0]:
                first[0] = False
                barrier.wait(timeout=120)  # both have read the same version before either commits
            return reservations.reservation_rows(rows, DT, f"race{i}", f"race-{i}", summaries[i].now) if n else None, n
        return plan

    def worker(i):
        try:
            got[i] = reservations.commit_reservations(spark, cfg, plan_for(i), summaries[i])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join(600) for t in threads]
    assert not errors, errors
    active = _t(spark, cfg, "inventory_reservations").query("status == 'active'")
    now_held = int(((active.warehouse_id == wid) & (active.site_id + "|" + active.item_id == key)).sum())
    assert now_held <= available + already, "oversold"
    assert sum(got) == min(2 * want, available) and now_held == already + sum(got)
    assert sum(s.counts.get("reservation_conflicts_retried", 0) for s in summaries) >= 1


def test_feedback_cancel_releases_and_unroutes_postpone_moves(spark, pworld, nightly):
    from bundlecast.jobs.proactive import job as proactive
    cfg = pworld["cfg"]
    ships = _t(spark, cfg, "proactive_shipments")
    routed = ships[ships.status == "notified"].sort_values("shipment_id")
    cancel, postpone, victim = routed.iloc[0], routed.iloc[1], routed.iloc[2]
    fb = _with_tokens(spark, cfg, pd.DataFrame([
        {"feedback_id": "FX-C", "feedback_ts": datetime(2026, 11, 20, 20), "user_id": cancel.user_id,
         "kind": "shipment_cancel", "reference_id": cancel.shipment_id, "postpone_days": None},
        {"feedback_id": "FX-P", "feedback_ts": datetime(2026, 11, 20, 20, 5), "user_id": postpone.user_id,
         "kind": "shipment_postpone", "reference_id": postpone.shipment_id, "postpone_days": 1}]))
    # Forged the old way (HMAC of the shipment id with the committed default key), and
    # another user's valid cancel token replayed on the victim's shipment: both refused.
    forged = hmac.new(b"bundlecast-dev-secret", victim.shipment_id.encode(), hashlib.sha256).hexdigest()[:32]
    fb = pd.concat([fb, pd.DataFrame([
        {"feedback_id": "FX-F", "feedback_ts": datetime(2026, 11, 20, 20, 6), "user_id": victim.user_id,
         "kind": "shipment_cancel", "reference_id": victim.shipment_id, "postpone_days": None, "token": forged},
        {"feedback_id": "FX-R", "feedback_ts": datetime(2026, 11, 20, 20, 7), "user_id": victim.user_id,
         "kind": "shipment_cancel", "reference_id": victim.shipment_id, "postpone_days": None,
         "token": fb.token.iloc[0]}])], ignore_index=True)
    _append(spark, cfg, "feedback", fb.assign(dt=date.fromisoformat(DT), _source_file="planted"))
    s = proactive.run(spark, DT, "hourly", "pro-h1", cfg, progress=lambda m: None)
    assert s.counts["feedback_cancelled"] == 1 and s.counts["feedback_postponed"] == 1
    assert s.counts["feedback_refused_bad_signature"] == 1 and s.counts["feedback_refused_wrong_shipment"] == 1
    assert _t(spark, cfg, "proactive_shipments").set_index("shipment_id").loc[victim.shipment_id, "status"] == "notified"
    after = _t(spark, cfg, "proactive_shipments").set_index("shipment_id")
    assert after.loc[cancel.shipment_id, "status"] == "cancelled"
    assert after.loc[postpone.shipment_id, "status"] == "postponed"
    assert pd.Timestamp(after.loc[postpone.shipment_id, "delivery_date"]).date() == DELIVERY + timedelta(days=1)
    res = _t(spark, cfg, "inventory_reservations")
    assert (res[res.shipment_id == cancel.shipment_id].status == "released").all()
    assert (res[res.shipment_id == postpone.shipment_id].status == "active").all()
    stops = _t(spark, cfg, "route_stops")
    today = stops[pd.to_datetime(stops.route_date).dt.date == DELIVERY]
    assert cancel.shipment_id not in set(today.shipment_id) and postpone.shipment_id not in set(today.shipment_id)
    moved = stops[pd.to_datetime(stops.route_date).dt.date == DELIVERY + timedelta(days=1)]
    assert postpone.shipment_id in set(moved.shipment_id)
    notes = _t(spark, cfg, "notifications")
    assert {"cancelled", "postponed"} <= set(notes[notes.shipment_id.isin([cancel.shipment_id, postpone.shipment_id])].kind)
    _assert_users_told_the_current_plan(spark, cfg)
    # the hourly re-plan keeps counting the day's shipments an earlier plan dropped
    ships = _t(spark, cfg, "proactive_shipments")
    plans = _t(spark, cfg, "route_plans")
    plans = plans[pd.to_datetime(plans.route_date).dt.date == DELIVERY].groupby("depot_id").dropped_at_depot.max()
    gone = ships[(pd.to_datetime(ships.delivery_date).dt.date == DELIVERY) & (ships.status == "dropped")]
    assert plans.reindex(gone.warehouse_id.unique()).fillna(0).astype(int).to_dict() == \
        gone.warehouse_id.value_counts().to_dict()

    # Nothing new since: the next hourly keeps each day's plan as it is (no solve, no commit);
    # the plan of the day after, which the postpone changed, was re-planned by the run above.
    from delta.tables import DeltaTable

    from bundlecast.jobs.core import catalog
    stops_log = DeltaTable.forPath(spark, catalog.table_path("route_stops", cfg))
    version = stops_log.history(1).first().version
    quiet = proactive.run(spark, DT, "hourly", "pro-h1-quiet", cfg, progress=lambda m: None)
    assert quiet.counts.get("shipments_planned", 0) == 0 and quiet.counts["skipped_replan_unchanged"] == 1
    assert stops_log.history(1).first().version == version
    pd.testing.assert_frame_equal(_t(spark, cfg, "proactive_shipments").sort_values("shipment_id").reset_index(drop=True),
                                  ships.sort_values("shipment_id").reset_index(drop=True))


def test_consolidation_potential_is_the_exact_insertion_cost(spark, pworld, nightly):
    from bundlecast.jobs.core.delta import read_table
    from bundlecast.jobs.proactive import job as proactive
    cfg = pworld["cfg"]
    stops = _t(spark, cfg, "route_stops")
    stops = stops[(pd.to_datetime(stops.route_date).dt.date == DELIVERY) & (stops.stop_type == "planned")]
    one = stops.iloc[0]
    wh = read_table(spark, "warehouses", cfg).toPandas().set_index("warehouse_id")
    day = pd.Timestamp(DELIVERY)
    pts = pd.DataFrame({"lat": [one.lat + 0.001, float(wh.lat[one.depot_id]) + 1.5],
                        "lon": [one.lon, float(wh.lon[one.depot_id])], "window_start": [day + pd.Timedelta(hours=7)] * 2,
                        "window_end": [day + pd.Timedelta(hours=19)] * 2, "warehouse_id": [one.depot_id] * 2,
                        "weight_kg": [1.0, 1.0], "volume_l": [2.0, 2.0]})
    out = proactive.consolidation_potential(spark, cfg, str(DELIVERY), pts)
    assert out.added_km.iloc[0] < 1.0 < out.added_km.iloc[1]


def test_proof_of_delivery_closes_shipments_and_feedback_applies_once_in_order(spark, pworld, nightly):
    """Dispatch's proof closes a routed shipment (delivered: stock fulfilled; failed: stock
    released); a customer's cancel after the delivery day is too late; a routed shipment
    without proof keeps its stock for ``proof_grace_days``, then counts as delivered. An
    accept followed by a postpone stays postponed when the run is repeated."""
    from bundlecast.jobs.proactive import job as proactive
    cfg = pworld["cfg"]
    ships = _t(spark, cfg, "proactive_shipments")
    left = ships[ships.status == "notified"].sort_values("shipment_id")
    got, failed, late, moved = (left.iloc[i] for i in range(4))
    day = datetime(2026, 11, 21)
    fb = _with_tokens(spark, cfg, pd.DataFrame([
        {"feedback_id": "FP-1", "feedback_ts": day + timedelta(hours=15), "user_id": got.user_id,
         "kind": "shipment_delivered", "reference_id": got.shipment_id, "postpone_days": None},
        {"feedback_id": "FP-2", "feedback_ts": day + timedelta(hours=16), "user_id": failed.user_id,
         "kind": "shipment_failed", "reference_id": failed.shipment_id, "postpone_days": None},
        {"feedback_id": "FP-3", "feedback_ts": day + timedelta(days=1, hours=9), "user_id": late.user_id,
         "kind": "shipment_cancel", "reference_id": late.shipment_id, "postpone_days": None},
        {"feedback_id": "FP-4", "feedback_ts": day - timedelta(hours=3), "user_id": moved.user_id,
         "kind": "shipment_accept", "reference_id": moved.shipment_id, "postpone_days": None},
        {"feedback_id": "FP-5", "feedback_ts": day - timedelta(hours=2), "user_id": moved.user_id,
         "kind": "shipment_postpone", "reference_id": moved.shipment_id, "postpone_days": 2}]))
    _append(spark, cfg, "feedback", fb.assign(dt=date(2026, 11, 22), _source_file="planted"))
    first = proactive.run(spark, "2026-11-22", "hourly", "pro-h2", cfg, progress=lambda m: None)
    c = first.counts
    assert c["proof_delivered"] == 1 and c["proof_failed"] == 1 and c["feedback_after_delivery_day"] == 1
    assert c["shipments_awaiting_proof"] >= 1 and c["shipments_delivered_assumed"] == 0
    after = _t(spark, cfg, "proactive_shipments").set_index("shipment_id")
    assert after.loc[got.shipment_id, ["status", "status_reason"]].tolist() == ["delivered", "proof of delivery"]
    assert after.loc[failed.shipment_id, "status"] == "failed"
    assert after.loc[late.shipment_id, "status"] == "notified"
    assert after.loc[moved.shipment_id, "status"] == "postponed"
    assert pd.Timestamp(after.loc[moved.shipment_id, "delivery_date"]).date() == date(2026, 11, 23)
    res = _t(spark, cfg, "inventory_reservations")
    assert (res[res.shipment_id == got.shipment_id].status == "fulfilled").all()
    assert (res[res.shipment_id == failed.shipment_id].reason == "delivery_failed").all()
    assert (res[res.shipment_id == late.shipment_id].status == "active").all()  # held while awaiting proof

    proactive.run(spark, "2026-11-22", "hourly", "pro-h2", cfg, progress=lambda m: None)
    again = _t(spark, cfg, "proactive_shipments").set_index("shipment_id")
    cols = ["status", "status_reason", "delivery_date", "feedback_id"]
    pd.testing.assert_frame_equal(after[cols].sort_index(), again[cols].sort_index())  # the accept is not re-applied

    later = proactive.run(spark, "2026-11-24", "hourly", "pro-h3", cfg, progress=lambda m: None)
    assert later.counts["shipments_delivered_assumed"] >= 1
    closed = _t(spark, cfg, "proactive_shipments").set_index("shipment_id").loc[late.shipment_id]
    assert closed.status == "delivered" and "no proof" in closed.status_reason
    res = _t(spark, cfg, "inventory_reservations")
    assert (res[res.shipment_id == late.shipment_id].status == "fulfilled").all()

