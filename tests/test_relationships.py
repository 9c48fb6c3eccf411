"""Item relationships on the `test` demo world (1,000 users, 120 items, 60 days): planted
complements and substitutes come out on top with the right relation, the hourly fold equals
a full rebuild, bad input is counted, the query API ranks and filters.

The world (conftest ``test_world``) lives in its own state directory and catalog database
so it does not disturb the tiny world the other tests share; it reuses the session's Spark.
"""
from __future__ import annotations

import numpy as np
import pytest

from bundlecast.jobs.core.errors import BundlecastError

pytestmark = pytest.mark.slow
DT = "2026-11-20"


@pytest.fixture(scope="module")
def rel_world(test_world):
    return test_world


def _frame(spark, cfg, name, drop=()):
    from bundlecast.jobs.core.delta import read_table
    return read_table(spark, name, cfg).drop(*drop).toPandas()


@pytest.fixture(scope="module")
def incremental_then_full(spark, rel_world):
    """Full run up to the day before the last day of behaviour, the hourly fold of the last
    day, then a full rebuild over the same data with the same weights."""
    from bundlecast.jobs.relationships import job as R

    cfg = rel_world["cfg"]
    first = R.run_full(spark, "2026-11-18", "full-18", cfg)
    incremental = R.run_incremental(spark, DT, "incr-20", cfg)
    after_fold = {t: _frame(spark, cfg, t, ["run_id", "dt"]) for t in ("item_pair_counts", "item_relationships")}
    full = R.run_full(spark, DT, "full-20", cfg, fit=False)
    after_full = {t: _frame(spark, cfg, t, ["run_id", "dt"]) for t in ("item_pair_counts", "item_relationships")}
    return dict(first=first, incremental=incremental, full=full, fold=after_fold, rebuild=after_full)


def test_incremental_fold_equals_full_rebuild(incremental_then_full):
    run = incremental_then_full
    assert run["incremental"].mode == "incremental"
    # ~1.6% of the rows are new: the fold read only those.
    assert 0 < run["incremental"].counts["events_read"] < 0.05 * run["full"].counts["events_read"]
    keys = ["kind", "site_a", "item_a", "site_b", "item_b"]
    fold, full = (run[k]["item_pair_counts"].sort_values(keys).reset_index(drop=True) for k in ("fold", "rebuild"))
    assert len(fold) == len(full) > 1000
    assert (fold[keys + ["units", "last_day"]] == full[keys + ["units", "last_day"]]).all().all()
    np.testing.assert_allclose(fold.weight, full.weight, rtol=1e-9)
    keys = ["site_a", "item_a", "site_b", "item_b"]
    fold, full = (run[k]["item_relationships"].sort_values(keys).reset_index(drop=True) for k in ("fold", "rebuild"))
    assert (fold[keys + ["relation", "rank", "co_view_support", "co_purchase_support"]]
            == full[keys + ["relation", "rank", "co_view_support", "co_purchase_support"]]).all().all()
    for col in ("co_view_rate", "co_purchase_lift", "complementary_score", "alternative_score", "score"):
        np.testing.assert_allclose(fold[col], full[col], rtol=1e-7, atol=1e-9, err_msg=col)


def test_planted_complements_and_substitutes_come_out_on_top(spark, rel_world, incremental_then_full):
    rel = _frame(spark, rel_world["cfg"], "item_relationships")
    rel["a"], rel["b"] = rel.site_a + "|" + rel.item_a, rel.site_b + "|" + rel.item_b
    hits = 0
    pairs = rel_world["truth"]["complementary_pairs"]
    for a, b in pairs:
        mine = rel[(rel.a == a) & (rel.relation == "complementary")].sort_values("complementary_score", ascending=False)
        hits += b in mine.b.head(3).tolist()
    assert hits >= 0.8 * len(pairs), (hits, len(pairs))
    # Complements are cross-site: the network view is what finds them.
    assert all(a.split("|")[0] != b.split("|")[0] for a, b in pairs)
    found = total = 0
    for group in rel_world["truth"]["substitute_groups"]:
        for a in group:
            mine = rel[(rel.a == a) & (rel.relation == "alternative")].sort_values("alternative_score", ascending=False)
            top = set(mine.b.head(5))
            found += len(top & (set(group) - {a}))
            total += len(group) - 1
    assert found >= 0.8 * total, (found, total)
    # No planted complement is called an alternative, no substitute a complement.
    comp = {(a, b) for a, b in pairs}
    assert not rel[[(x, y) in comp for x, y in zip(rel.a, rel.b)]].relation.eq("alternative").any()


def test_weights_are_fitted_per_segment_and_category_with_fit_quality(spark, rel_world, incremental_then_full):
    w = _frame(spark, rel_world["cfg"], "relationship_weights")
    overall = w[(w.segment == "*") & (w.category == "*")].iloc[0]
    assert overall.source == "fitted" and overall.n_positive > 0
    # The fitted combination beats co-purchase lift alone on held-out users.
    assert overall.auc > overall.baseline_auc
    assert {"family", "single", "senior", "business"} <= set(w.segment)
    assert w.category.nunique() > 5
    assert set(dict(overall.weights)) >= {"co_purchase_rate", "complementary_score", "alternative_score"}


def test_related_items_ranks_filters_and_explains(spark, rel_world, incremental_then_full):
    from bundlecast.jobs.relationships.query import related_items, render_related

    cfg = rel_world["cfg"]
    a, b = rel_world["truth"]["complementary_pairs"][0]
    site, item = a.split("|")
    rows = related_items(item, k=5, site=site, spark=spark, cfg=cfg)
    assert 0 < len(rows) <= 5
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    comp = related_items(item, k=5, relation="complementary", site=site, spark=spark, cfg=cfg)
    assert comp and all(r["relation"] == "complementary" for r in comp)
    text = render_related(item, comp)
    assert "compl" in text and comp[0]["item_b"] in text
    seg = related_items(item, k=3, site=site, segment="family", spark=spark, cfg=cfg)
    assert all("family" in r["segment_scores"] for r in seg)
    with pytest.raises(BundlecastError, match="relation must be"):
        related_items(item, relation="cheaper", spark=spark, cfg=cfg)
    assert related_items("NO-SUCH-ITEM", spark=spark, cfg=cfg) == []


def test_bad_input_is_skipped_and_counted(spark, rel_world, incremental_then_full):
    """Behaviour that reached silver around ingestion (a backfill, a bug) must not break the job."""
    from datetime import datetime, timedelta

    from pyspark.sql import functions as F

    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.delta import read_table
    from bundlecast.jobs.relationships import job as R

    cfg = rel_world["cfg"]
    events = read_table(spark, "events", cfg)
    base = datetime(2026, 11, 15, 10)
    bot = [(f"BOT{i}", base + timedelta(seconds=i), "U0000001", "grocery", "GRO000001", "view", "S-bot")
           for i in range(600)]
    odd = [("X1", base, "U0000002", "grocery", "NOT-AN-ITEM", "view", "S-x"),
           ("X2", base, "NOT-A-USER", "grocery", "GRO000002", "view", "S-y")]
    extra = (spark.createDataFrame(bot + odd, "event_id string, event_ts timestamp, user_id string, site_id string, "
                                              "item_id string, event_type string, session_id string")
             .withColumn("dt", F.lit("2026-11-21").cast("date")).withColumn("_source_file", F.lit("test")))
    extra.select(*events.columns).write.format("delta").mode("append").save(catalog.table_path("events", cfg))
    items = read_table(spark, "items", cfg)
    new_items = (items.limit(1).withColumn("site_id", F.lit("outlet")).withColumn("item_id", F.lit("OUT1"))
                 .withColumn("title", F.lit(" ")).withColumn("description", F.lit(None).cast("string")))
    new_items.write.format("delta").mode("append").save(catalog.table_path("items", cfg))
    summary = R.run_full(spark, DT, "full-bad", cfg, fit=False)
    assert summary.counts["skipped_unknown_item"] == 1
    assert summary.counts["skipped_unknown_user"] == 1
    assert summary.counts["skipped_bot_user_days"] == 1
    assert summary.counts["items_without_text"] == 1
    assert summary.counts["sites_without_events"] == 1
    runs = _frame(spark, cfg, "step_runs")
    runs = runs[runs.step == "relationships"]
    # One row per (date, mode): the re-run replaced the earlier full run of the date.
    assert runs.groupby(["dt", "mode"]).size().max() == 1
    row = runs[runs.run_id == "full-bad"].iloc[0]
    assert row.counts["skipped_bot_user_days"] == 1 and row.counts["skipped_unknown_item"] == 1
    assert summary.counts["events_read"] == incremental_then_full["full"].counts["events_read"] + len(bot) + len(odd)
    assert summary.counts["pairs_scored"] > 0
