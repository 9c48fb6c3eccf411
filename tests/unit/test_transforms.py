"""Step transforms on a few explicit rows: each test builds its inputs by hand, calls one
pure function (no table, no config file, no clock) and checks the whole answer."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

INCENTIVES = {"road_factor": 1.3, "co2_kg_per_km": 0.25, "cost_per_km": 0.6, "stop_fixed_saving": 1.0,
              "holding_cost_rate_per_day": 0.001, "cover_days": 10, "forecast_days": 10}


# ------------------------------------------------------------------------------ offer types
def test_offer_type_costs_agree_between_pandas_and_spark(spark):
    """The A/B margin (Spark) and the offer's cost (numpy) come from one table of types."""
    from pyspark.sql import functions as F

    from bundlecast.models import offer_types as T

    types = T.NAMES
    value = np.arange(1, len(types) + 1, dtype=float)
    cash = T.cash_cost(types, value, 0.6)
    assert dict(zip(types, cash))["loyalty_points"] == pytest.approx(0.6 * (types.index("loyalty_points") + 1))
    assert all(c == v for t, c, v in zip(types, cash, value) if t != "loyalty_points")
    frame = spark.createDataFrame(list(zip(types, value.tolist())), "offer_type string, incentive_value double")
    beyond = {r.offer_type: r.cost for r in frame.select(
        "offer_type", T.cost_beyond_revenue_column(F.col("offer_type"), F.col("incentive_value"), 0.6).alias("cost"))
        .collect()}
    for t, c in zip(types, cash):
        # a price type is already in the order's revenue; every other type costs its cash cost on top
        assert beyond[t] == pytest.approx(0.0 if t in T.PRICE_TYPES else c), t
    assert T.EARLY_BIRD in T.PRICE_TYPES and "loyalty_points" in T.LOYALTY_TYPES


# --------------------------------------------------------------------------------- commerce
def test_usable_prices_drop_and_count_unpriced_and_loss_making_items():
    from bundlecast.jobs.core.commerce import usable_prices

    items = pd.DataFrame({"key": ["s|a", "s|b", "s|c", "s|d"], "price": [10.0, None, 5.0, 0.0],
                          "cost": [4.0, 1.0, 6.0, 1.0]})
    counts = {}
    kept = usable_prices(items, counts)
    assert list(kept.index) == ["s|a"]
    assert counts == {"items_without_price_or_cost": 2, "items_with_negative_margin": 1}


# ---------------------------------------------------------------------------------- bundles
def test_need_bundles_group_likely_items_with_confidence_and_stock(spark):
    from bundlecast.jobs.bundles.transform import need_bundles

    preds = spark.createDataFrame(
        [("U1", "s", "a", 0.9, date(2026, 11, 23)), ("U1", "s", "b", 0.6, date(2026, 11, 22)),
         ("U1", "s", "c", 0.2, date(2026, 11, 21)), ("U1", "s", "x", 0.8, date(2026, 11, 21)),
         ("U2", "s", "a", 0.5, date(2026, 11, 24))],
        "user_id string, site_id string, item_id string, probability double, need_date date")
    priced = spark.createDataFrame([("s|a", 10.0, 4.0, 1.0, 0.5), ("s|b", 20.0, 8.0, 2.0, 1.0),
                                    ("s|c", 5.0, 2.0, 1.0, 1.0)],
                                   "key string, price double, cost double, volume_l double, weight_kg double")
    user_wh = spark.createDataFrame([("U1", "W1"), ("U2", "W1")], "user_id string, warehouse_id string")
    stock = spark.createDataFrame([("W1", "s|a", 5), ("W1", "s|b", 0)], "warehouse_id string, key string, available long")
    counts = {}
    s = {"min_probability": 0.3, "max_items": 3, "main_share": 0.5}
    rows = {r.user_id: r for r in need_bundles(preds, priced, user_wh, stock, s, "2026-11-20", "run", counts).collect()}
    assert counts == {"need_items_without_price": 1}  # x is likely but has no usable price
    u1 = rows["U1"]
    assert u1.items == ["s|a", "s|b"] and u1.main_items == ["s|a", "s|b"]  # c is below min_probability
    assert u1.confidence == pytest.approx(0.9 * 0.6) and u1.need_date == date(2026, 11, 22)
    assert u1.list_price == 30.0 and u1.short_items == ["s|b"] and u1.stock_ok is False
    assert rows["U2"].stock_ok is True and rows["U2"].bundle_id.startswith("NB")


# -------------------------------------------------------------------------------- relations
def test_unit_pairs_pair_each_items_once_and_skip_oversized_units(spark):
    from bundlecast.jobs.relationships.counting import unit_items, unit_pairs

    rows = spark.createDataFrame(
        [("U1", "S1", "s", "a", "2026-11-20 10:00:00"), ("U1", "S1", "s", "b", "2026-11-20 10:01:00"),
         ("U1", "S1", "s", "c", "2026-11-20 10:02:00"), ("U1", "S1", "s", "a", "2026-11-20 10:03:00"),
         ("U2", "S2", "s", "a", "2026-11-20 11:00:00"), ("U2", "S2", "s", "b", "2026-11-20 11:00:00"),
         ("U2", "S2", "s", "c", "2026-11-20 11:00:00"), ("U2", "S2", "s", "d", "2026-11-20 11:00:00")],
        "user_id string, session_id string, site_id string, item_id string, ts string") \
        .selectExpr("user_id", "session_id", "site_id", "item_id", "CAST(ts AS timestamp) AS ts")
    units = unit_items(rows, "session", cap=3, epoch="2026-11-20", half_life=30.0)
    sizes = {r.user_id: (r.n_items, r.oversized) for r in units.collect()}
    assert sizes == {"U1": (3, False), "U2": (4, True)}
    pairs = sorted((r.item_a, r.item_b) for r in unit_pairs(units).collect())
    assert pairs == [("a", "b"), ("a", "c"), ("b", "c")]  # U2 is oversized: no pairs


# ----------------------------------------------------------------------------------- offers
def test_need_neighbours_see_only_their_cutoff_and_skip_wholesale_weeks(spark):
    """Co-purchase neighbours per cut-off, in one pass: a cut-off counts only the weeks up to
    it, and a buyer-week of more items than the cap (a wholesale order) counts for nothing."""
    from bundlecast.jobs.need.candidates import co_purchase_neighbours, cutoff_frame

    rows = [(f"u{u}", "s1", item, date(2026, 3, 2)) for u in range(3) for item in ("a", "b")]   # 3 weeks a+b, week 1
    rows += [("u9", "s1", item, date(2026, 3, 3)) for item in ["a", "c"] + [f"x{i}" for i in range(8)]]  # 10 items
    rows += [(f"u{u}", "s1", item, date(2026, 3, 10)) for u in range(2) for item in ("a", "c")]  # week 2: a+c twice
    purchases = spark.createDataFrame(rows, "user_id string, site_id string, item_id string, day date")
    cuts = cutoff_frame(spark, [date(2026, 3, 8), date(2026, 3, 15)])
    got = co_purchase_neighbours(purchases, cuts, k=5, lookback_days=365, max_items_per_unit=5).toPandas()
    pairs = {(str(r.cutoff), r.item_a, r.item_b): round(r.co_rate, 3) for r in got.itertuples()}
    assert pairs == {("2026-03-08", "a", "b"): 1.0, ("2026-03-08", "b", "a"): 1.0,     # u9's 10-item week skipped
                     ("2026-03-15", "a", "b"): 0.6, ("2026-03-15", "b", "a"): 1.0,     # a: 5 buyer-weeks, 3 with b
                     ("2026-03-15", "a", "c"): 0.4, ("2026-03-15", "c", "a"): 1.0}     # the week after 03-08 only here


def test_order_days_and_weekdays_are_counted_relative_to_each_cutoff(spark):
    """share_dk: the share of a user's order days on the weekday of cut-off + k, per cut-off
    (a Thursday and the Monday after it); the same orders, other shares. A day ordered
    twice is one order day."""
    from bundlecast.jobs.need.candidates import cutoff_frame, window
    from bundlecast.jobs.need.features import _order_days

    days = [date(2026, 11, 9), date(2026, 11, 13), date(2026, 11, 16), date(2026, 11, 16)]  # Mon, Fri, Mon (twice)
    purchases = spark.createDataFrame([("u1", d) for d in days], "user_id string, day date")
    cuts = cutoff_frame(spark, [date(2026, 11, 19), date(2026, 11, 23)])
    got = {str(r.cutoff): r for r in _order_days(window(purchases, cuts, 365)).collect()}
    thursday, monday = got["2026-11-19"], got["2026-11-23"]
    # from Thursday 11-19: Friday is k = 1, Monday k = 4; three order days, 3.5 days apart
    assert [thursday[f"share_d{k}"] for k in range(1, 8)] == pytest.approx([1 / 3, 0, 0, 2 / 3, 0, 0, 0])
    assert thursday.mean_gap_order == pytest.approx(3.5)
    assert (thursday.n_order_days, thursday.days_since_order) == (3, 3.0)
    # from Monday 11-23: Friday is k = 4, Monday k = 7
    assert [monday[f"share_d{k}"] for k in range(1, 8)] == pytest.approx([0, 0, 0, 1 / 3, 0, 0, 2 / 3])
    assert (monday.n_order_days, monday.days_since_order) == (3, 7.0)


def test_offer_context_sizes_consolidation_value_and_inventory_from_explicit_inputs():
    from bundlecast.jobs.offers.transform import context

    cand = pd.DataFrame({"user_id": ["U1", "U2"], "warehouse_id": ["W1", "W1"], "items": [["s|a"], ["s|a", "s|b"]]})
    inputs = {
        "users": pd.DataFrame({"lat": [52.0, None], "lon": [13.0, None], "region": ["n", "n"],
                               "proactive_opt_in": [True, None]}, index=pd.Index(["U1", "U2"], name="user_id")),
        "value": pd.DataFrame({"predicted_value": [120.0], "value_decile": [9]}, index=pd.Index(["U1"], name="user_id")),
        "warehouses": pd.DataFrame({"lat": [52.5], "lon": [13.0]}, index=pd.Index(["W1"], name="warehouse_id")),
        "stops": pd.DataFrame({"depot_id": ["W1"], "lat": [52.0], "lon": [13.001]}),
        "forecast_units": pd.Series({"s|a": 10.0}),
    }
    stock = pd.DataFrame({"warehouse_id": ["W1", "W1"], "key": ["s|a", "s|b"], "available": [100, 0]})
    prices = pd.DataFrame({"cost": [2.0, 3.0]}, index=pd.Index(["s|a", "s|b"], name="key"))
    counts = {}
    out = context(cand, inputs, counts, stock, prices, INCENTIVES)
    assert counts == {"candidates_without_user_value": 1, "route_stops_next_day": 1, "users_without_location": 1,
                      "candidates_without_forecast": 1}
    assert out.value_90d.tolist() == [120.0, 0.0] and out.value_decile.tolist() == [9, 5]
    assert out.opt_in.tolist() == [True, False]
    assert out.saving[0] > 0 and out.saving[1] == 0.0  # U1 lives next to a planned stop; U2 has no location
    # 100 units against 10 days of cover for 10 units of demand: 90 over-stock units held 10 days
    assert out.holding[0] == pytest.approx(90 * 2.0 * 0.001 * 10)
    assert out.stockout_risk.tolist() == [0.0, 0.0] and out.stock_keys[1] == ["W1|s|a", "W1|s|b"]


# ------------------------------------------------------------------------------------ value
def test_user_value_rows_rank_users_into_deciles():
    from bundlecast.jobs.value.transform import user_value_rows

    users = pd.DataFrame({"user_id": [f"U{i:02d}" for i in range(20)], "baseline_spend": np.arange(20.0)})
    predicted = np.column_stack([np.ones(20), np.arange(20.0)[::-1]])
    out = user_value_rows(users, predicted, 90, "3", "mlflow-run", date(2026, 11, 20), "run")
    assert out.value_decile.tolist() == [10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert set(out.model_version) == {"3"} and (out.dt == date(2026, 11, 20)).all()


# --------------------------------------------------------------------------------- forecast
def test_backtest_summary_compares_each_method_with_seasonal_naive():
    from bundlecast.jobs.forecast.transform import backtest_summary

    m = pd.DataFrame({"method": ["prophet", "prophet", "sba", "seasonal_naive", "seasonal_naive"],
                      "mae": [1.0, 3.0, 2.0, 4.0, 2.0], "smape": [0.1, 0.3, 0.2, 0.4, 0.2],
                      "mase": [0.5, 0.7, 0.9, 1.0, 1.2]})
    out = backtest_summary(m)
    assert out["model_mae"] == pytest.approx(2.0) and out["seasonal_naive_mae"] == pytest.approx(3.0)
    assert out["prophet_mase"] == pytest.approx(0.6) and out["sba_mase"] == pytest.approx(0.9)
    assert backtest_summary(m.iloc[:0]) == {}


def test_stock_goes_to_the_most_profitable_offers_first():
    from bundlecast.jobs.offers.transform import offers_short_of_stock

    active = pd.DataFrame({"offer_id": ["O1", "O2", "O3"], "user_id": ["U1", "U2", "U3"],
                           "items": [["s|a"], ["s|a"], ["s|a", "s|b"]], "expected_profit": [1.0, 5.0, 3.0]})
    warehouse_of = pd.Series({"U1": "W1", "U2": "W1", "U3": "W2"})
    stock = {"W1|s|a": 1, "W2|s|a": 4, "W2|s|b": 0}
    # W1 has one unit of a: O2 (profit 5) keeps it, O1 loses it; W2 has no b at all
    assert offers_short_of_stock(active, stock, warehouse_of) == {"O1", "O3"}
