"""Signals: behaviour rates, lifts and beyond-chance scores per item pair, combined with the
text and inventory signals into complementary and alternative scores."""
from __future__ import annotations

import numpy as np

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.commerce import with_local_day
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.relationships.counting import ALL, SIGNALS, settings, stable_sum, touching, unit_pairs
from bundlecast.jobs.relationships.text import fit_text_models, text_candidates, text_model_exprs


def _directed(pairs):
    """Unordered (a < b) rows -> both directions."""
    from pyspark.sql import functions as F
    swapped = pairs.select(F.col("site_b").alias("site_a"), F.col("item_b").alias("item_a"),
                           F.col("site_a").alias("site_b"), F.col("item_a").alias("item_b"),
                           *[c for c in pairs.columns if c not in ("site_a", "item_a", "site_b", "item_b")])
    return pairs.unionByName(swapped)


def behaviour_signals(spark, pair_counts_df, item_counts_df, min_support: int, pseudo_units: float = 3.0):
    """Directed pairs with enough support and their rates, Jaccard and lift per kind."""
    from pyspark.sql import functions as F

    keys = ["site_a", "item_a", "site_b", "item_b"]
    wide = (pair_counts_df.groupBy(*keys).pivot("kind", ["view", "purchase", "view_one_bought"])
            .agg(F.first("units").alias("units"), F.first("weight").alias("weight")).na.fill(0))
    wide = wide.filter((F.col("view_units") >= min_support) | (F.col("purchase_units") >= min_support))
    directed = _directed(wide)
    totals = {r["kind"]: r["weight"] for r in item_counts_df.filter(F.col("site_id") == ALL).collect()}
    for kind, name in (("view", "co_view"), ("purchase", "co_purchase")):
        ic = item_counts_df.filter((F.col("kind") == kind) & (F.col("site_id") != ALL))
        wa = ic.select(F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a"), F.col("weight").alias("_wa"))
        wb = ic.select(F.col("site_id").alias("site_b"), F.col("item_id").alias("item_b"), F.col("weight").alias("_wb"))
        total = float(totals.get(kind) or 0.0)
        p = F.col(f"{kind}_weight")
        directed = (directed.join(wa, ["site_a", "item_a"], "left").join(wb, ["site_b", "item_b"], "left")
                    .withColumn(f"{name}_support", F.col(f"{kind}_units").cast("long"))
                    .withColumn(f"{name}_rate", F.coalesce(F.try_divide(p, F.col("_wa")), F.lit(0.0)))
                    .withColumn(f"{name}_jaccard", F.coalesce(F.try_divide(p, F.col("_wa") + F.col("_wb") - p),
                                                              F.lit(0.0)))
                    .withColumn(f"{name}_lift", F.coalesce(F.try_divide(p * F.lit(total), F.col("_wa") * F.col("_wb")),
                                                           F.lit(0.0)))
                    .withColumn(f"_{kind}_beyond_chance", _beyond_chance(p, F.col(f"{kind}_units"),
                                                                         F.col("_wa") * F.col("_wb") / F.lit(total or 1.0),
                                                                         pseudo_units))
                    .drop("_wa", "_wb"))
    return directed.withColumn("view_one_bought_support", F.col("view_one_bought_units").cast("long"))


def with_log_lifts(df):
    """The lift signals enter models as log(1 + lift)."""
    from pyspark.sql import functions as F
    return df.withColumn("co_view_lift_log", F.log1p("co_view_lift")) \
        .withColumn("co_purchase_lift_log", F.log1p("co_purchase_lift"))


def _beyond_chance(observed, units, expected, pseudo_units: float):
    """Share of the co-occurrence that chance does not explain, 0..1: 1 - (expected + c) /
    (observed + c), with c pseudo-units of prior at chance level, so a pair seen 3 times
    where 0.5 were expected is discounted far more than one seen 40 times."""
    from pyspark.sql import functions as F
    c = F.lit(float(pseudo_units)) * F.try_divide(observed, F.greatest(units.cast("double"), F.lit(1.0)))
    return F.coalesce(F.greatest(F.lit(0.0), F.lit(1.0) - F.try_divide(expected + c, observed + c)), F.lit(0.0))


def score_pairs(spark, cfg: dict, pair_counts_df, item_counts_df, items_pd, run_id: str, dt: str,
                weights_df=None, anchors=None, inventory=None, text_models=None):
    """Every signal, the text model and the combined score for directed pairs.

    ``anchors`` (DataFrame of site_a, item_a) restricts the anchors scored (hourly);
    ``weights_df`` are the fitted weights (None: a neutral combination until the first fit);
    ``text_models`` are stored text models to apply (None: fit them on these pairs). With
    both anchors and text models, only the pairs touching an anchor are read at all.
    Returns (relationships DataFrame, notes, the text models used).
    """
    from pyspark.sql import functions as F

    s = settings(cfg)
    notes = []
    only_anchors = anchors if anchors is not None and text_models is not None else None
    signals = _candidate_pairs(spark, s, pair_counts_df, item_counts_df, items_pd, only_anchors)
    # Materialised once: the text models, the weights and the write all read it.
    signals = _with_pair_features(spark, signals, pair_counts_df, item_counts_df, items_pd).localCheckpoint()
    if text_models is None:
        text_models = fit_text_models(signals, s)
    notes += [f"text model for {t}: {m['source']} ({m['n_positive']} positive of {m['n_labelled']} labelled pairs)"
              for t, m in text_models.items() if m["source"] != "fitted"]
    comp_text, alt_text = text_model_exprs(text_models)
    if anchors is not None:  # after the text models, which learn from every pair
        signals = signals.join(F.broadcast(anchors), ["site_a", "item_a"], "left_semi")
    k = float(s["shrinkage_units"])
    signals = (signals.withColumn("comp_text", comp_text).withColumn("alt_text", alt_text)
               .withColumn("complementary_score", (F.col("evidence") * F.col("comp_behaviour") + k * F.col("comp_text"))
                           / (F.col("evidence") + k))
               .withColumn("alternative_score", (F.col("evidence") * F.col("alt_behaviour") + k * F.col("alt_text"))
                           / (F.col("evidence") + k)))
    signals = with_log_lifts(signals)
    if inventory is not None:
        signals = signals.join(inventory, ["site_a", "item_a", "site_b", "item_b"], "left")
    signals = signals.withColumn("inventory_correlation",
                                 F.coalesce(F.col("inventory_correlation") if inventory is not None else F.lit(None),
                                            F.lit(0.0)).cast("double"))
    return _ranked(_combine(spark, signals, weights_df), s, dt, run_id), notes, text_models


def _candidate_pairs(spark, s: dict, pair_counts_df, item_counts_df, items_pd, only_anchors=None):
    """Behaviour signals of every counted pair, plus the text neighbours (zeros where a
    signal is missing); ``only_anchors`` restricts both to pairs touching those anchors."""
    from pyspark.sql import functions as F

    if only_anchors is not None:
        pair_counts_df = touching(pair_counts_df, only_anchors)
    signals = behaviour_signals(spark, pair_counts_df, item_counts_df, s["min_support"], s["chance_pseudo_units"])
    text = text_candidates(items_pd, s["text_neighbours"])
    if len(text):
        text_df = spark.createDataFrame(text)
        if only_anchors is not None:
            text_df = text_df.join(F.broadcast(only_anchors), ["site_a", "item_a"], "left_semi")
        signals = signals.unionByName(text_df, allowMissingColumns=True) \
            .groupBy("site_a", "item_a", "site_b", "item_b").agg(
                *[F.max(c).alias(c) for c in signals.columns if c not in ("site_a", "item_a", "site_b", "item_b")])
    return signals.na.fill(0)


def _with_pair_features(spark, signals, category_pairs, item_counts_df, items_pd):
    """The item attributes of both sides (category, brand, price, text embedding), category
    affinity (from every pair's counts) and the behaviour and attribute features the text
    models and scores use."""
    from pyspark.sql import functions as F

    # Item attributes (category, price, brand, embedding) for both sides.
    attrs = spark.createDataFrame(items_pd[["site_id", "item_id", "category", "brand", "price"]]
                                  .assign(embedding=items_pd.embedding.map(lambda v: [float(x) for x in v])))
    for side in ("a", "b"):
        signals = signals.join(F.broadcast(attrs.select(*[F.col(c).alias(f"{c}_{side}") if c not in ("site_id", "item_id")
                                                           else F.col(c).alias(f"{c.split('_')[0]}_{side}")
                                                           for c in attrs.columns])),
                               [f"site_{side}", f"item_{side}"], "left")
    signals = signals.withColumn("text_similarity", F.greatest(F.lit(0.0), F.coalesce(F.aggregate(
        F.zip_with("embedding_a", "embedding_b", lambda x, y: x * y), F.lit(0.0), lambda acc, x: acc + x), F.lit(0.0))))
    # Category affinity: co-purchase lift between the two categories (from the counts).
    cat_aff = _category_affinity(spark, category_pairs, item_counts_df, items_pd)
    signals = signals.join(F.broadcast(cat_aff), ["category_a", "category_b"], "left") \
        .withColumn("category_affinity", F.coalesce("category_affinity", F.lit(0.0)))
    # Behaviour: bought together vs viewed together with one bought, each discounted by chance.
    n_cp, n_vob = F.col("purchase_units").cast("double"), F.col("view_one_bought_units").cast("double")
    evidence = n_cp + n_vob
    comp_beh = F.when(evidence > 0, n_cp / evidence * F.col("_purchase_beyond_chance")).otherwise(F.lit(0.0))
    alt_beh = F.when(evidence > 0, n_vob / evidence * F.col("_view_beyond_chance")).otherwise(F.lit(0.0))
    signals = (signals.withColumn("comp_behaviour", comp_beh).withColumn("alt_behaviour", alt_beh)
               .withColumn("evidence", evidence)
               .withColumn("same_category", (F.col("category_a") == F.col("category_b")).cast("double"))
               .withColumn("same_site", (F.col("site_a") == F.col("site_b")).cast("double"))
               .withColumn("same_brand", F.coalesce((F.col("brand_a") == F.col("brand_b")).cast("double"), F.lit(0.0)))
               .withColumn("price_gap", F.abs(F.log(F.greatest(F.col("price_a"), F.lit(0.01)) /
                                                    F.greatest(F.col("price_b"), F.lit(0.01))))))
    return signals.drop("embedding_a", "embedding_b")


def _ranked(scored, s: dict, dt: str, run_id: str):
    """The relation of each pair (complementary, alternative or other, by the larger score
    over the threshold) and the top ``max_neighbours`` per anchor, as ``item_relationships`` rows."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    th = float(s["relation_threshold"])
    # Compared and ordered at 9 decimals: two scores that tie exactly in one run may differ in
    # their last bits in another (sums in another order); the tie-break then decides, the same.
    comp, alt = F.round("complementary_score", 9), F.round("alternative_score", 9)
    relation = (F.when((comp >= alt) & (comp >= th), "complementary")
                .when((alt > comp) & (alt >= th), "alternative").otherwise("other"))
    rank = F.row_number().over(Window.partitionBy("site_a", "item_a")
                               .orderBy(F.round("score", 9).desc(), F.col("site_b"), F.col("item_b")))
    out = (scored.withColumn("relation", relation).withColumn("rank", rank)
           .filter(F.col("rank") <= s["max_neighbours"])
           .withColumn("dt", F.lit(dt).cast("date")).withColumn("run_id", F.lit(run_id)))
    return out.select(*[c.name for c in catalog.table("item_relationships").columns])


def _category_affinity(spark, pair_counts_df, item_counts_df, items_pd):
    """Symmetric co-purchase lift between categories, from the pair and item counts."""
    import pandas as pd
    from pyspark.sql import functions as F

    cats = spark.createDataFrame(items_pd[["site_id", "item_id", "category"]])
    pc = pair_counts_df.filter(F.col("kind") == "purchase")
    pc = (pc.join(F.broadcast(cats.withColumnRenamed("site_id", "site_a").withColumnRenamed("item_id", "item_a")
                              .withColumnRenamed("category", "c1")), ["site_a", "item_a"])
          .join(F.broadcast(cats.withColumnRenamed("site_id", "site_b").withColumnRenamed("item_id", "item_b")
                            .withColumnRenamed("category", "c2")), ["site_b", "item_b"])
          .groupBy("c1", "c2").agg(stable_sum("weight").alias("w")).toPandas()
          .sort_values(["c1", "c2"], ignore_index=True))
    ic = (item_counts_df.filter((F.col("kind") == "purchase") & (F.col("site_id") != ALL))
          .join(F.broadcast(cats), ["site_id", "item_id"]).groupBy("category").agg(stable_sum("weight").alias("w")).toPandas()
          .sort_values("category", ignore_index=True))
    total = item_counts_df.filter((F.col("kind") == "purchase") & (F.col("site_id") == ALL)).select("weight").first()
    if pc.empty or ic.empty or total is None or not total["weight"]:
        return spark.createDataFrame([], "category_a string, category_b string, category_affinity double")
    both = pd.concat([pc, pc.rename(columns={"c1": "c2", "c2": "c1"})]).groupby(["c1", "c2"], as_index=False).w.sum()
    both.loc[both.c1 == both.c2, "w"] /= 2
    per = dict(zip(ic.category, ic.w))
    both["category_affinity"] = np.log1p(both.w * float(total["weight"]) /
                                         (both.c1.map(per).astype(float) * both.c2.map(per).astype(float)))
    both = both.rename(columns={"c1": "category_a", "c2": "category_b"})
    return spark.createDataFrame(both[["category_a", "category_b", "category_affinity"]].astype({"category_affinity": float}))


def _combine(spark, signals, weights_df):
    """score = sigmoid(intercept + sum(weights * signals)) with the weights fitted for the
    anchor's category (all segments), and the same per segment in segment_scores."""
    from pyspark.sql import functions as F

    if weights_df is None or weights_df.rdd.isEmpty():
        # Before the first fit: a neutral average of the normalised signals.
        neutral = sum(F.least(F.col(c), F.lit(1.0)) for c in ("co_view_jaccard", "co_purchase_jaccard",
                                                              "complementary_score", "alternative_score",
                                                              "text_similarity")) / F.lit(5.0)
        return signals.withColumn("score", neutral).withColumn("segment_scores", F.create_map())
    w = weights_df.select("segment", "category", "intercept", "weights")

    def linear(prefix: str):
        expr = F.col(f"{prefix}intercept")
        for c in SIGNALS:
            expr = expr + F.coalesce(F.col(f"{prefix}weights")[c], F.lit(0.0)) * F.col(c)
        return F.lit(1.0) / (F.lit(1.0) + F.exp(-expr))

    fallback = w.filter(F.col("category") == ALL)
    by_cat = w.filter(F.col("category") != ALL)
    # Weights for (segment, category_a), falling back to (segment, '*').
    cats = signals.select("category_a").distinct()
    chosen = (cats.crossJoin(fallback.select("segment", F.col("intercept").alias("fi"), F.col("weights").alias("fw")))
              .join(by_cat.withColumnRenamed("category", "category_a"), ["segment", "category_a"], "left")
              .select("category_a", "segment", F.coalesce("intercept", "fi").alias("w_intercept"),
                      F.coalesce("weights", "fw").alias("w_weights")))
    per_segment = (signals.select("site_a", "item_a", "site_b", "item_b", "category_a", *SIGNALS)
                   .join(F.broadcast(chosen), "category_a").withColumn("p", linear("w_"))
                   .groupBy("site_a", "item_a", "site_b", "item_b")
                   .agg(F.map_from_entries(F.array_sort(F.collect_list(F.struct("segment", "p")))).alias("all_scores")))
    return (signals.join(per_segment, ["site_a", "item_a", "site_b", "item_b"], "left")
            .withColumn("score", F.coalesce(F.col("all_scores")[ALL], F.lit(0.0)))
            .withColumn("segment_scores", F.map_filter("all_scores", lambda k, v: k != ALL))
            .drop("all_scores"))


def inventory_correlation(spark, cfg: dict, purchase_units, min_units: int = 3):
    """Per unordered pair seen in stock data: share of its co-purchase units on days both
    items were in stock, minus the share of those stock days on which both were in stock
    (what stock alone explains). Pairs with fewer than ``min_units`` such units get none."""
    from pyspark.sql import functions as F

    tables = Tables(spark, cfg)
    stock = (with_local_day(tables, tables.read("inventory"), "snapshot_ts")
             .groupBy("site_id", "item_id", "day")
             .agg((F.sum(F.col("on_hand") - F.col("reserved")) > 0).alias("in_stock")))
    days = stock.select("day").distinct()
    u = purchase_units.join(F.broadcast(days), F.col("unit_day") == F.col("day"), "left_semi")
    pairs = unit_pairs(u).select("unit", F.col("unit_day").alias("day"), "site_a", "item_a", "site_b", "item_b")
    sa = stock.select(F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a"), "day", F.col("in_stock").alias("in_a"))
    sb = stock.select(F.col("site_id").alias("site_b"), F.col("item_id").alias("item_b"), "day", F.col("in_stock").alias("in_b"))
    keys = ["site_a", "item_a", "site_b", "item_b"]
    co = (pairs.join(sa, ["site_a", "item_a", "day"]).join(sb, ["site_b", "item_b", "day"])
          .groupBy(*keys).agg(F.count(F.lit(1)).alias("n"), F.avg((F.col("in_a") & F.col("in_b")).cast("double")).alias("observed"))
          .filter(F.col("n") >= min_units))
    expected = (co.select(*keys).crossJoin(F.broadcast(days)).join(sa, ["site_a", "item_a", "day"])
                .join(sb, ["site_b", "item_b", "day"]).groupBy(*keys)
                .agg(F.avg((F.col("in_a") & F.col("in_b")).cast("double")).alias("expected")))
    result = co.join(expected, keys).select(*keys, (F.col("observed") - F.col("expected")).alias("inventory_correlation"))
    return _directed(result)
