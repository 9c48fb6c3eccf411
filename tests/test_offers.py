"""Bundles, offers and the A/B test on the `test` demo world (conftest ``test_world``).

The world gets its relationships and need predictions from the real jobs (re-used when an
earlier test module already wrote them), then: bundles, offers, planted responses to the
offers (``demo_offers.simulate_offer_responses``: conversion 10% / 18% / 28% for control /
auto / generous), ingestion of those responses, the analysis, and the hourly re-pricing.
"""
import copy
import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def catalog_path(cfg, name):
    from bundlecast.jobs.core import catalog
    return catalog.table_path(name, cfg)


def _table(spark, cfg, name, dt=None):
    from pyspark.sql import functions as F

    from bundlecast.jobs.core.delta import read_table
    t = read_table(spark, name, cfg)
    return (t.filter(F.col("dt") == F.lit(dt).cast("date")) if dt else t).toPandas()


@pytest.fixture(scope="module")
def world(spark, test_world):
    from pyspark.sql import functions as F

    from bundlecast.jobs.bundles import job as bundles
    from bundlecast.jobs.core.delta import read_table
    from bundlecast.jobs.need import job as need
    from bundlecast.jobs.offers import job as offers
    from bundlecast.jobs.relationships import job as relationships

    cfg = copy.deepcopy(test_world["cfg"])
    cfg["need"].update(lookback_days=60, train_cutoffs=3, cutoff_step_days=7, model_name="bundlecast-need-test")
    dt = test_world["date"]
    if read_table(spark, "item_relationships", cfg).limit(1).count() == 0:
        relationships.run_full(spark, dt, "rel-offers", cfg)
    if read_table(spark, "need_predictions", cfg).filter(F.col("dt") == F.lit(dt).cast("date")).limit(1).count() == 0:
        need.run(spark, dt, "train", "need-offers", cfg, progress=lambda m: None)
    # Competitor prices and routes land with the world; ingest them (not in the shared fixture).
    from bundlecast.jobs.ingest import job as ingest
    ingest.run(spark, dt, ["competitor_prices", "routes", "feedback"], cfg=cfg, with_expectations=False,
               progress=lambda m: None)
    # Bad input: a competitor price of zero must be ignored (and counted), never followed.
    from bundlecast.jobs.core.delta import read_table as rt
    comp = rt(spark, "competitor_prices", cfg)
    comp.limit(1).withColumn("price", F.lit(0.0)).withColumn("competitor", F.lit("broken-feed")) \
        .write.format("delta").mode("append").save(catalog_path(cfg, "competitor_prices"))
    b = bundles.run(spark, dt, "bundles-1", cfg, progress=lambda m: None)
    o = offers.run(spark, dt, "nightly", "offers-1", cfg, progress=lambda m: None)
    return dict(cfg=cfg, dt=dt, bundles=b, offers=o, truth=test_world["truth"])


def test_need_bundles_group_the_likely_needs_with_confidence_and_stock(spark, world):
    cfg, dt = world["cfg"], world["dt"]
    nb = _table(spark, cfg, "need_bundles", dt)
    preds = _table(spark, cfg, "need_predictions", dt)
    s = cfg["bundles"]["need"]
    eligible = preds[preds.probability >= s["min_probability"]].user_id.unique()
    assert len(nb) > 100 and set(nb.user_id) == set(eligible)
    for r in nb.head(200).itertuples():
        p = list(r.probabilities)
        assert p == sorted(p, reverse=True) and len(p) <= s["max_items"]
        main = [q for q in p if q >= p[0] * s["main_share"]]
        assert r.confidence == pytest.approx(float(np.prod(main)), rel=1e-6)
        assert set(r.main_items) <= set(r.items)
        assert r.stock_ok == (len(r.short_items) == 0 and r.warehouse_id is not None)
    assert world["bundles"].counts["need_bundles"] == len(nb)
    assert world["bundles"].counts["competitor_prices_ignored_not_positive"] == 1


def test_product_bundles_are_priced_within_margin_and_discount_and_ids_are_stable(spark, world):
    from bundlecast.jobs.bundles import job as bundles
    cfg, dt = world["cfg"], world["dt"]
    pb = _table(spark, cfg, "bundles", dt)
    assert {"complementary", "alternative", "value"} <= set(pb.kind)
    p = cfg["pricing"]
    assert ((pb.bundle_price - pb.cost) >= p["min_margin"] * pb.bundle_price - 1e-6).all()
    assert (pb.competitor_price > 0).all()
    assert (pb.discount_share <= p["max_discount"] + 1e-9).all() and (pb.discount_share >= 0).all()
    assert np.allclose(pb.expected_margin, pb.expected_acceptance * (pb.bundle_price - pb.cost), rtol=1e-6)
    # Cross-site bundles exist (the planted complements are cross-site).
    assert (pb.sites.map(len) > 1).any()
    planted = {tuple(x) for x in world["truth"]["complementary_pairs"]}
    comp = pb[pb.kind == "complementary"]
    found = sum(any((r.anchor, b) in planted for b in r.items[1:]) for r in comp.itertuples())
    assert found >= 0.5 * len(planted)
    # Re-running the date leaves the same rows.
    bundles.run(spark, dt, "bundles-2", cfg, progress=lambda m: None)
    again = _table(spark, cfg, "bundles", dt)
    cols = ["bundle_id", "kind", "bundle_price", "expected_margin"]
    pd.testing.assert_frame_equal(pb[cols].sort_values("bundle_id").reset_index(drop=True),
                                  again[cols].sort_values("bundle_id").reset_index(drop=True))


def test_offers_respect_stock_budget_control_and_explain_themselves(spark, world):
    from bundlecast.jobs.core.commerce import available_stock, user_warehouses
    from bundlecast.jobs.core.tables import Tables
    cfg, dt = world["cfg"], world["dt"]
    of = _table(spark, cfg, "offers", dt)
    ex = _table(spark, cfg, "experiment_exposures", dt)
    assert len(of) > 50
    assert of.offer_id.is_unique and of.user_id.value_counts().max() <= cfg["offers"]["max_offers_per_user"]
    # Control users are exposed (logged) but get no offer; every offer's user is exposed.
    control = set(ex[ex.variant == "control"].user_id)
    assert control and not control & set(of.user_id)
    assert set(of.user_id) <= set(ex.user_id)
    assert ex.set_index("user_id").loc[of.user_id, "offer_id"].tolist() == of.offer_id.tolist()
    # Never more offers on an item than its warehouse has.
    nb = user_warehouses(Tables(spark, cfg)).toPandas().set_index("user_id").warehouse_id
    stock = available_stock(Tables(spark, cfg)).toPandas()
    stock = dict(zip(stock.warehouse_id + "|" + stock.key, stock.available))
    used = pd.Series([f"{nb[u]}|{k}" for u, items in zip(of.user_id, of["items"]) for k in items]).value_counts()
    assert all(n <= stock.get(k, 0) for k, n in used.items())
    assert of.incentive_cost.sum() <= cfg["offers"]["budget"] + 1e-6
    # The price never breaks the margin floor; the factors explain the incentive.
    f = of.factors.map(json.loads)
    assert all({"user_value", "consolidation", "inventory", "carbon", "value", "bound_by"} <= set(x) for x in f)
    assert (f.map(lambda x: x["value"]) == of.incentive_value).all()
    s = world["offers"]
    assert s.figures["expected_profit"] >= s.figures["greedy_expected_profit"] - 1e-6
    assert (of[of.variant == "generous"].offer_type == "percent_discount").all()


def test_ab_analysis_finds_the_planted_winner_and_covers_the_planted_rates(spark, world):
    from bundlecast.jobs.experiments import job as experiments
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.tools.demo_offers import PLANTED_CONVERSION, simulate_offer_responses
    cfg, dt = world["cfg"], world["dt"]
    exposures = _table(spark, cfg, "experiment_exposures", dt)
    offers = _table(spark, cfg, "offers", dt)
    items = _table(spark, cfg, "items")
    landed = simulate_offer_responses(cfg["storage"]["raw"], exposures, offers, items, seed=3)
    for day in landed:
        ingest.run(spark, day, ["orders", "order_lines", "feedback"], cfg=cfg, with_expectations=False,
                   progress=lambda m: None)
    day1 = landed[-1]  # the day the last response landed
    analysis_day = str(date.fromisoformat(dt) + timedelta(days=1 + cfg["experiments"][0]["attribution_days"]))
    out = experiments.run(spark, analysis_day, "exp-1", cfg, progress=lambda m: None)
    conv = out[out.metric == "conversion"].set_index("variant")
    assert conv.users.sum() == len(exposures)
    for variant, rate in PLANTED_CONVERSION.items():
        assert conv.ci_low[variant] <= rate <= conv.ci_high[variant], (variant, conv.loc[variant].to_dict())
    assert conv.winner["generous"] and conv.winner.sum() == 1
    assert conv.srm_p_value.iloc[0] > 0.001
    stored = _table(spark, cfg, "experiment_results", analysis_day)
    assert len(stored) == len(out)
    assert "WINNER" in experiments.report(analysis_day, cfg=cfg, spark=spark)
    # Hourly: the offers whose items the user has since bought are withdrawn, once.
    from bundlecast.jobs.offers import job as O
    r = O.run(spark, day1, "reprice", "reprice-1", cfg, progress=lambda m: None)
    after = _table(spark, cfg, "offers", dt).set_index("offer_id")
    redeemed = set(_table(spark, cfg, "feedback").query("kind == 'offer_redeem'").reference_id)
    assert redeemed and (after.loc[list(redeemed & set(after.index)), "status"] == "withdrawn").all()
    assert r.counts["offers_withdrawn"] >= len(redeemed & set(after.index))
    again = O.run(spark, day1, "reprice", "reprice-2", cfg, progress=lambda m: None)
    assert again.counts["offers_changed"] == 0


def test_generate_bundle_explains_the_best_bundle_for_a_user(spark, world):
    from bundlecast.jobs.bundles.query import generate_bundle
    from bundlecast.jobs.core.errors import BundlecastError
    cfg = world["cfg"]
    a, b = world["truth"]["complementary_pairs"][0]
    user = _table(spark, cfg, "need_predictions", world["dt"]).user_id.iloc[0]
    site, item = a.split("|")
    out = generate_bundle(user, item, site, cfg=cfg, spark=spark)
    assert out["items"][0] == a and len(out["items"]) >= 2
    assert out["bundle_price"] <= out["list_price"] and out["why"]
    with pytest.raises(BundlecastError, match="unknown user"):
        generate_bundle("nobody", item, site, cfg=cfg, spark=spark)
    with pytest.raises(BundlecastError, match="not found"):
        generate_bundle(user, "NOPE", site, cfg=cfg, spark=spark)
