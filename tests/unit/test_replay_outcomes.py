"""The replay's parts on explicit rows: landing day by day, scoring decisions against what
users bought afterwards, and thresholds from that evidence."""
from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
import yaml

from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.tools.next_day import read_landed
from bundlecast.jobs.tools.replay import history as hist
from bundlecast.jobs.tools.replay import outcomes as oc
from bundlecast.jobs.tools.replay import thresholds as th
from bundlecast.jobs.tools.replay.runner import Plan, parse_every

D = date(2026, 11, 10)


def bought_rows(rows):
    """(user, item, day offset from D) -> purchases as oc.purchases gives them."""
    return pd.DataFrame([dict(user_id=u, site_id="s", item_id=i, item=f"s|{i}", day=date.fromordinal(D.toordinal() + k),
                              quantity=1.0, value=10.0, region="r", category="c") for u, i, k in rows])


def small_history() -> hist.History:
    sites = pd.DataFrame([dict(site_id="s", name="S", country="GB", currency="GBP", timezone="UTC")])
    items = pd.DataFrame([dict(site_id="s", item_id=i, title=i, category="c", price="10") for i in "ab"])
    users = pd.DataFrame([dict(user_id="u1", home_site_id="s", segment="x", region="r", proactive_opt_in="true",
                               signup_date="2026-11-01"),
                          dict(user_id="u2", home_site_id="s", segment="x", region="r", proactive_opt_in="true",
                               signup_date="")])
    orders = pd.DataFrame([dict(order_id="o1", user_id="u1", site_id="s", order_ts="2026-11-02T10:00:00Z",
                                status="delivered"),
                           dict(order_id="o2", user_id="u2", site_id="s", order_ts="2026-11-05T23:30:00Z",
                                status="delivered"),
                           dict(order_id="o3", user_id="u1", site_id="s", order_ts="2026-11-06T00:10:00Z",
                                status="cancelled")])
    lines = pd.DataFrame([dict(order_id=o, line_no="1", site_id="s", item_id="a", quantity="1", unit_price="10",
                               discount="0") for o in ("o1", "o2", "o3")])
    return hist.History(dict(sites=sites, items=items, users=users, orders=orders, order_lines=lines), source="t")


def test_each_landing_holds_only_its_day_and_the_first_everything_before(tmp_path):
    h = small_history()
    lander = hist.Lander(h, tmp_path, "2026-11-03")
    first = lander.land("2026-11-03")
    assert first == {"sites": 1, "items": 2, "users": 1, "orders": 1, "order_lines": 1}  # u2 lands with its first order
    assert lander.land("2026-11-04") == {}
    day5 = lander.land("2026-11-05")
    assert day5 == {"users": 1, "orders": 1, "order_lines": 1}
    assert read_landed(hist.file_of(tmp_path, "order_lines", "2026-11-05", "2026-11-05")).order_id.tolist() == ["o2"]
    # A weekly batch: each day's rows in its own file of the batch's landing folder.
    assert lander.land("2026-11-06", batch="2026-11-10") == {"orders": 1, "order_lines": 1}  # a line follows its order
    assert [p.name for p in (tmp_path / "orders" / "dt=2026-11-10").iterdir()] == ["arrived-2026-11-06.csv"]
    again = hist.file_of(tmp_path, "orders", "2026-11-05", "2026-11-05").read_bytes()
    lander.land("2026-11-05")
    assert hist.file_of(tmp_path, "orders", "2026-11-05", "2026-11-05").read_bytes() == again  # again: same file


def test_purchases_leave_cancelled_orders_out_and_use_the_site_day():
    h = small_history()
    h.datasets["sites"].loc[0, "timezone"] = "America/New_York"
    p = oc.purchases(h.datasets)
    assert sorted(p.user_id) == ["u1", "u2"]  # o3 is cancelled
    assert p.set_index("user_id").day["u2"] == date(2026, 11, 5)  # 23:30 UTC is 18:30 in New York


def test_a_wanted_shipment_is_correct_and_an_unwanted_one_is_not():
    bought = bought_rows([("right", "a", 2), ("right", "b", 3), ("half", "a", 1), ("wrong", "a", -1),
                          ("late", "a", 9)])
    bundles = pd.DataFrame([dict(user_id=u, bundle_id=f"b-{u}", items=["s|a", "s|b"], confidence=c, stock_ok=True)
                            for u, c in (("right", 0.9), ("half", 0.6), ("wrong", 0.8), ("late", 0.3))])
    cats = pd.Series({"s|a": "cat-a", "s|b": "cat-b"})
    prices = pd.Series({"s|a": 10.0, "s|b": 30.0})
    s = oc.shipment_outcomes(bundles, cats, prices, bought, D, horizon=7).set_index("user_id")
    assert s.correct.to_dict() == {"right": True, "half": False, "wrong": False, "late": False}
    assert s.wanted["half"] == ["s|a"] and s.wanted["wrong"] == [] and s.wanted["late"] == []  # before / after
    assert s.wanted_value["half"] == 10.0 and s.shipped_value["half"] == 40.0
    assert (s.category == "cat-a").all()  # the most likely item's category
    curve = pd.DataFrame(oc.curve_rows(s.reset_index()))
    at = curve[(curve.category == "*") & (curve.bin == 0.6)].set_index("metric").value
    assert at["bundles"] == 3 and at["shipped_items"] == 6 and at["wanted_items"] == 3 and at["returned_items"] == 3


def test_thresholds_take_the_lowest_that_reaches_the_target_with_enough_shipments(tmp_path):
    rows = []
    for i in range(40):  # cat-a: confident bundles are right, doubtful ones wrong
        conf = 0.2 + i * 0.02
        rows.append(dict(category="cat-a", confidence=conf, shipped_items=1, wanted_items=int(conf >= 0.5),
                         shipped_value=1.0, wanted_value=float(conf >= 0.5), dt=D))
    for i in range(40):  # cat-b: never good enough
        rows.append(dict(category="cat-b", confidence=0.9, shipped_items=2, wanted_items=i % 2 * 1,
                         shipped_value=2.0, wanted_value=0.0, dt=D))
    cfg = {"proactive": {"threshold": 0.6, "category_thresholds": {"cat-b": 0.65}}}
    p = th.propose(pd.DataFrame(rows), target=0.7, min_shipments=10, cfg=cfg).set_index("category")
    assert p.loc["cat-a", "source"] == "replay"
    # at 0.3: 35 bundles, 25 wanted (0.71); at 0.25: 25 of 37 (0.68)
    assert p.loc["cat-a", "threshold"] == pytest.approx(0.3)
    assert p.loc["cat-a", "precision"] >= 0.7 and p.loc["cat-a", "bundles"] >= 10
    assert p.loc["cat-b", "source"].startswith("fall-back") and p.loc["cat-b", "threshold"] == 0.65
    path = th.write_overlay(p.reset_index(), 0.7, home=str(tmp_path))
    overlay = yaml.safe_load(path.read_text())
    assert overlay == {"proactive": {"category_thresholds": {"cat-a": pytest.approx(p.loc["cat-a", "threshold"])}}}


def test_need_outcomes_score_the_model_and_both_baselines_on_the_same_users():
    history = [("u", "a", -3), ("u", "a", -10), ("u", "b", -20), ("v", "a", -2)]
    future = [("u", "a", 2), ("u", "c", 3), ("v", "b", 1), ("new", "a", 1)]
    bought = bought_rows(history + future)
    preds = pd.DataFrame([dict(user_id="u", site_id="s", item_id="c", probability=0.9, need_date="2026-11-13",
                               need_date_basis="item cycle"),
                          dict(user_id="u", site_id="s", item_id="a", probability=0.5, need_date="2026-11-14",
                               need_date_basis="typical lead time"),
                          dict(user_id="v", site_id="s", item_id="a", probability=0.4, need_date="2026-11-14",
                               need_date_basis="typical lead time")])
    rows, labelled = oc.need_outcomes(preds, bought, D, horizon=7, lookback=365, k=10)
    r = pd.DataFrame(rows)
    need = r[r.kind == "need"].set_index(["scorer", "metric"]).value
    assert need["model", "recall_at_10"] == pytest.approx((1.0 + 0.0) / 2)  # u: a and c both; v: b missed
    assert need["topfreq", "recall_at_10"] == pytest.approx((0.5 + 0.0) / 2)  # u: a (c never bought before)
    assert need["model", "recall_explore_at_10"] == pytest.approx((1.0 + 0.0) / 2)
    assert set(r[(r.kind == "need") & r.metric.str.startswith("recall")].n) == {2}  # "new" had no history: not evaluated
    dates = r[r.kind == "need_date"].set_index(["scorer", "metric"]).value
    assert dates["model", "mae_days"] == pytest.approx((0 + 2) / 2)  # c on D+3 predicted D+3; a on D+2 predicted D+4
    assert dates["constant", "lead_days"] == 4
    assert labelled.label.tolist() == [1, 1, 0]


def test_forecast_mase_is_zero_for_a_perfect_forecast_and_seasonal_naive_is_worse():
    days = [date.fromordinal(D.toordinal() + k) for k in range(-55, 8)]
    units = [float(k % 7 == 0) * 3 + (k % 3) for k in range(len(days))]
    bought = pd.DataFrame(dict(site_id="s", item_id="a", region="*", day=days, quantity=units))
    future = [(d, u) for d, u in zip(days, units) if d > D]
    fc = pd.DataFrame([dict(site_id="s", item_id="a", region="*", date=str(d), yhat=u, method="prophet")
                       for d, u in future])
    r = pd.DataFrame(oc.forecast_outcomes(fc, bought, D, level="item"))
    r = r[r.metric == "mase"].set_index(["scorer", "category"]).value
    assert r["model", "*"] == pytest.approx(0.0)
    assert r["seasonal_naive", "*"] > 0


def test_the_plan_and_its_cadence():
    assert parse_every("7d") == 7 and parse_every("1") == 1
    with pytest.raises(BundlecastError, match="number of days"):
        parse_every("weekly")
    plan = Plan("x", "2026-11-01", "2026-11-16", 7)
    assert plan.dates == ["2026-11-01", "2026-11-08", "2026-11-15"]
    assert plan.days[0] == "2026-11-01" and plan.days[-1] == "2026-11-15" and len(plan.days) == 15
    # Each day is ingested by the first replay date on or after it; refits every 14 days.
    assert [plan.batch_of(d) for d in ("2026-11-01", "2026-11-02", "2026-11-08", "2026-11-09")] == \
        ["2026-11-01", "2026-11-08", "2026-11-08", "2026-11-15"]
    monthly = Plan("x", "2026-11-01", "2026-12-20", 7, retrain_every=14)
    assert [d for d in monthly.dates if monthly.refits(d)] == ["2026-11-01", "2026-11-15", "2026-11-29", "2026-12-13"]
    assert all(plan.refits(d) for d in plan.dates)  # without --retrain-every: every date, as the nightly


def test_the_typical_lead_is_what_the_shop_knew_on_the_date():
    # Returning buyers' first purchases 2 and 4 days after earlier cut-offs; later purchases do not count.
    bought = bought_rows([("u", "a", -30), ("u", "a", -12), ("u", "b", -5), ("v", "a", -40), ("v", "a", -19),
                          ("u", "a", 2), ("u", "c", 3)])
    # cut-offs D-7 (u: b on day 2), D-14 (u: a on day 2), D-21 (v: a on day 2), D-28 (nothing)
    assert oc.typical_lead(bought, D, horizon=7) == 2
    assert oc.typical_lead(bought_rows([("u", "a", 1)]), D, horizon=7) == 3  # nothing before: H // 2


def test_online_retail_gets_one_well_stocked_snapshot_before_its_first_order():
    orders = pd.DataFrame(dict(order_id=[f"o{i}" for i in range(6)], order_ts=[
        "2011-01-03T10:00:00Z", "2011-01-04T10:00:00Z", "2011-01-12T10:00:00Z", "2011-03-01T10:00:00Z",
        "2011-03-02T10:00:00Z", "2011-03-03T10:00:00Z"]))
    lines = pd.DataFrame(dict(order_id=[f"o{i}" for i in range(6)], site_id="s", item_id=["a", "a", "a", "a", "b", "b"],
                              quantity=["5", "5", "20", "1", "2", "-3"]))
    stock = hist._ample_stock(orders, lines, "wh").set_index("item_id")
    assert set(stock.snapshot_ts) == {"2011-01-03T00:00:00Z"}  # lands in the first landing, before any order
    assert stock.on_hand.to_dict() == {"a": "30", "b": "2"}  # a: weeks of Jan 3 and Jan 10 together; returns ignored
    assert set(stock.warehouse_id) == {"wh"} and set(stock.reserved) == {"0"}


def test_the_nightly_stages_follow_the_data_between_steps():
    from bundlecast.jobs.pipeline import stages
    from bundlecast.jobs.tools.replay.runner import LIGHT, NIGHTLY

    nightly = [(name, kw.get("mode")) for name, kw in NIGHTLY]
    assert stages(nightly) == [[("relationships", "full"), ("forecast", None), ("value", None)], [("need", "train")],
                               [("bundles", None)], [("proactive", "nightly")], [("offers", "nightly")]]
    light = [(name, {**kw, **LIGHT.get(name, {})}.get("mode")) for name, kw in NIGHTLY]
    assert [len(s) for s in stages(light)] == [3, 1, 1, 1, 1]
    # a step after one whose table it reads, never beside it; the run log does not count
    assert stages([("need", "score"), ("bundles", None), ("forecast", None)]) == \
        [[("need", "score"), ("forecast", None)], [("bundles", None)]]
    assert stages([]) == []
