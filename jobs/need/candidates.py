"""Candidate items per user at a cut-off: repeats, neighbours, ALS, popular items."""
from __future__ import annotations

from datetime import date, timedelta


def _d(day):
    from pyspark.sql import functions as F
    return F.lit(day).cast("date")


def co_purchase_neighbours(purchases, cutoff: date, k: int, lookback_days: int):
    """Top-k items co-bought with each item (same user and week, across sites) before the
    cut-off: site_a, item_a, site_b, item_b, co_rate (share of a's buyer-weeks with b)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    p = purchases.filter((F.col("day") <= _d(cutoff)) & (F.col("day") > _d(cutoff - timedelta(days=lookback_days))))
    units = p.select("user_id", "site_id", "item_id", F.date_trunc("week", "day").alias("week")).distinct()
    a = units.select("user_id", "week", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a"))
    b = units.select("user_id", "week", F.col("site_id").alias("site_b"), F.col("item_id").alias("item_b"))
    per_a = units.groupBy(F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a")).agg(F.count("*").alias("n_a"))
    pairs = (a.join(b, ["user_id", "week"])
             .filter((F.col("site_a") != F.col("site_b")) | (F.col("item_a") != F.col("item_b")))
             .groupBy("site_a", "item_a", "site_b", "item_b").agg(F.count("*").alias("n_ab"))
             .filter(F.col("n_ab") >= 2)
             .join(per_a, ["site_a", "item_a"]).withColumn("co_rate", F.col("n_ab") / F.col("n_a")))
    rank = F.row_number().over(Window.partitionBy("site_a", "item_a").orderBy(F.col("co_rate").desc(), "site_b", "item_b"))
    return pairs.withColumn("r", rank).filter(F.col("r") <= k).select("site_a", "item_a", "site_b", "item_b", "co_rate")


def als_candidates(purchases, cutoff: date, s: dict, users):
    """Top ``cf_k`` items per user from implicit-feedback ALS (purchase days per item in
    the lookback), fitted on the driver (``models.collaborative``): the ratings are one
    small aggregate, and a fit costs milliseconds there against several Spark jobs per
    iteration in Spark ML."""
    from pyspark.sql import functions as F

    from bundlecast.models import collaborative

    spark = purchases.sparkSession
    p = purchases.filter((F.col("day") <= _d(cutoff)) &
                         (F.col("day") > _d(cutoff - timedelta(days=int(s["lookback_days"])))))
    ratings = (p.groupBy("user_id", "site_id", "item_id")
               .agg(F.countDistinct("day").cast("float").alias("strength")).toPandas())
    if ratings.empty:
        return None
    # Items keyed by their position in (site_id, item_id) order, mapped back after.
    items = ratings[["site_id", "item_id"]].drop_duplicates().sort_values(["site_id", "item_id"], ignore_index=True)
    ratings = ratings.merge(items.rename_axis("item_key").reset_index(), on=["site_id", "item_id"])
    recs = collaborative.recommend(ratings, users.toPandas().user_id, int(s["cf_k"]), rank=int(s["als_rank"]),
                                   reg=float(s["als_reg"]), alpha=float(s["als_alpha"]),
                                   iterations=int(s["als_iterations"]), seed=7)
    out = items.iloc[recs.item_key.to_numpy(int)].reset_index(drop=True).assign(
        user_id=recs.user_id.to_numpy(), cf_score=recs.cf_score.to_numpy(float))
    return spark.createDataFrame(out[["user_id", "site_id", "item_id", "cf_score"]],
                                 "user_id string, site_id string, item_id string, cf_score double")


def candidates(inputs, cutoff: date, users, s: dict, with_table: bool = False):
    """(user_id, site_id, item_id, src_*, cf_score, rel_score) for ``users`` at the cut-off:
    repeats, co-purchase neighbours, ALS, the segment's popular items and (scoring) the
    relationship step's neighbours. ``s``: the ``need`` settings."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    purchases = inputs.purchases
    keys = ["user_id", "site_id", "item_id"]
    before = purchases.filter(F.col("day") <= _d(cutoff)).join(F.broadcast(users), "user_id", "left_semi")
    lookback = _d(cutoff - timedelta(days=int(s["lookback_days"])))
    repeat = before.filter(F.col("day") > lookback).select(*keys).distinct().withColumn("src_repeat", F.lit(1.0))
    recent = before.filter(F.col("day") > _d(cutoff - timedelta(days=int(s["recent_days"])))) \
        .select("user_id", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a")).distinct()
    neighbours = co_purchase_neighbours(purchases, cutoff, int(s["related_k"]), int(s["lookback_days"]))
    related = (recent.join(neighbours, ["site_a", "item_a"])
               .groupBy("user_id", F.col("site_b").alias("site_id"), F.col("item_b").alias("item_id"))
               .agg(F.max("co_rate").alias("rel_score")).withColumn("src_related", F.lit(1.0)))
    parts = [repeat, related]
    if with_table:  # scoring: the relationship job's neighbours widen the candidate set
        rel = inputs.relationships.filter(F.col("rank") <= int(s["related_k"]))
        parts.append(recent.join(rel.select("site_a", "item_a", "site_b", "item_b"), ["site_a", "item_a"])
                     .select("user_id", F.col("site_b").alias("site_id"), F.col("item_b").alias("item_id"))
                     .distinct().withColumn("src_related", F.lit(1.0)))
    cf = als_candidates(purchases, cutoff, s, users)
    if cf is not None:
        parts.append(cf.withColumn("src_cf", F.lit(1.0)))
    segs = inputs.users.select("user_id", "segment")
    window = purchases.filter((F.col("day") <= _d(cutoff)) & (F.col("day") > _d(cutoff - timedelta(days=28))))
    top = (window.join(segs, "user_id").groupBy("segment", "site_id", "item_id")
           .agg(F.countDistinct("user_id").alias("buyers"))
           .withColumn("r", F.row_number().over(Window.partitionBy("segment")
                                                .orderBy(F.col("buyers").desc(), "site_id", "item_id")))
           .filter(F.col("r") <= int(s["popular_k"])).select("segment", "site_id", "item_id"))
    parts.append(users.join(segs, "user_id").join(F.broadcast(top), "segment").select(*keys)
                 .withColumn("src_popular", F.lit(1.0)))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p, allowMissingColumns=True)
    return (out.groupBy(*keys).agg(*[F.max(c).alias(c) for c in ("src_repeat", "src_related", "src_cf", "src_popular",
                                                                  "cf_score", "rel_score")])
            .na.fill(0.0))


