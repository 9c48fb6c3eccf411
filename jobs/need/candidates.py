"""Candidate items per user at each cut-off: repeats, neighbours, ALS, popular items.

Every frame here is keyed by ``cutoff`` (a date column): the training cut-offs and the
evaluation cut-off are built in one pass over the history (one set of Spark stages for
all of them, instead of one chain per cut-off), and each row sees only the history up to
its own cut-off (``window``)."""
from __future__ import annotations

from datetime import date


def cutoff_frame(spark, cutoffs: list[date]):
    """One row per cut-off (column ``cutoff``, a date)."""
    return spark.createDataFrame([(c,) for c in sorted(set(cutoffs))], "cutoff date")


def window(frame, cuts, days: int, column: str = "day"):
    """The rows of ``frame`` in each cut-off's last ``days`` days (``cutoff - days < day <=
    cutoff``), once per cut-off, with its ``cutoff`` column. ``cuts``: ``cutoff_frame``."""
    from pyspark.sql import functions as F
    c = F.col(column)
    return frame.join(F.broadcast(cuts), (c <= F.col("cutoff")) & (c > F.date_sub(F.col("cutoff"), int(days))))


def co_purchase_neighbours(purchases, cuts, k: int, lookback_days: int, max_items_per_unit: int | None = None):
    """Top-k items co-bought with each item (same user and week, across sites) before each
    cut-off: cutoff, site_a, item_a, site_b, item_b, co_rate (share of a's buyer-weeks with b).

    Buyer-weeks of more than ``max_items_per_unit`` items (wholesale orders) are left out,
    as the relationship step leaves them out: a basket of n items makes n^2 pairs, and on
    Online Retail those few baskets were most of this step's time."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    p = window(purchases, cuts, lookback_days)
    units = p.select("cutoff", "user_id", "site_id", "item_id", F.date_trunc("week", "day").alias("week")).distinct()
    if max_items_per_unit:
        size = F.count("*").over(Window.partitionBy("cutoff", "user_id", "week"))
        units = units.withColumn("_n", size).filter(F.col("_n") <= int(max_items_per_unit)).drop("_n")
    a = units.select("cutoff", "user_id", "week", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a"))
    b = units.select("cutoff", "user_id", "week", F.col("site_id").alias("site_b"), F.col("item_id").alias("item_b"))
    per_a = units.groupBy("cutoff", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a")) \
        .agg(F.count("*").alias("n_a"))
    pairs = (a.join(b, ["cutoff", "user_id", "week"])
             .filter((F.col("site_a") != F.col("site_b")) | (F.col("item_a") != F.col("item_b")))
             .groupBy("cutoff", "site_a", "item_a", "site_b", "item_b").agg(F.count("*").alias("n_ab"))
             .filter(F.col("n_ab") >= 2)
             .join(per_a, ["cutoff", "site_a", "item_a"]).withColumn("co_rate", F.col("n_ab") / F.col("n_a")))
    rank = F.row_number().over(Window.partitionBy("cutoff", "site_a", "item_a")
                               .orderBy(F.col("co_rate").desc(), "site_b", "item_b"))
    return (pairs.withColumn("r", rank).filter(F.col("r") <= k)
            .select("cutoff", "site_a", "item_a", "site_b", "item_b", "co_rate"))


def als_candidates(purchases, cuts, s: dict, users):
    """Top ``cf_k`` items per (cut-off, user) from implicit-feedback ALS (purchase days per
    item in the lookback), fitted on the driver (``models.collaborative``) once per
    cut-off, on that cut-off's history only (a fit on later data would leak the labels of
    the earlier cut-offs into ``cf_score``). The ratings of every cut-off come back in one
    Spark job; a fit costs well under a second there against several Spark jobs per
    iteration in Spark ML."""
    import pandas as pd
    from pyspark.sql import functions as F

    from bundlecast.models import collaborative

    spark = purchases.sparkSession
    ratings = (window(purchases, cuts, int(s["lookback_days"])).groupBy("cutoff", "user_id", "site_id", "item_id")
               .agg(F.countDistinct("day").cast("float").alias("strength")).toPandas())
    if ratings.empty:
        return None
    wanted = users.toPandas()
    out = []
    for cutoff, r in ratings.groupby("cutoff", sort=True):
        # Items keyed by their position in (site_id, item_id) order, mapped back after.
        items = r[["site_id", "item_id"]].drop_duplicates().sort_values(["site_id", "item_id"], ignore_index=True)
        r = r.merge(items.rename_axis("item_key").reset_index(), on=["site_id", "item_id"])
        recs = collaborative.recommend(r, wanted.user_id[wanted.cutoff == cutoff], int(s["cf_k"]),
                                       rank=int(s["als_rank"]), reg=float(s["als_reg"]), alpha=float(s["als_alpha"]),
                                       iterations=int(s["als_iterations"]), seed=7)
        out.append(items.iloc[recs.item_key.to_numpy(int)].reset_index(drop=True).assign(
            cutoff=cutoff, user_id=recs.user_id.to_numpy(), cf_score=recs.cf_score.to_numpy(float)))
    out = pd.concat(out, ignore_index=True)
    return spark.createDataFrame(out[["cutoff", "user_id", "site_id", "item_id", "cf_score"]],
                                 "cutoff date, user_id string, site_id string, item_id string, cf_score double")


def candidates(inputs, cuts, users, s: dict, with_table: bool = False):
    """(cutoff, user_id, site_id, item_id, src_*, cf_score, rel_score) for ``users``
    (cutoff, user_id) at their cut-offs: repeats, co-purchase neighbours, ALS, the segment's
    popular items and (scoring) the relationship step's neighbours. ``s``: the ``need``
    settings."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    purchases = inputs.purchases
    keys = ["cutoff", "user_id", "site_id", "item_id"]
    lookback = window(purchases, cuts, int(s["lookback_days"])).join(users, ["cutoff", "user_id"], "left_semi")
    repeat = lookback.select(*keys).distinct().withColumn("src_repeat", F.lit(1.0))
    recent = (window(purchases, cuts, int(s["recent_days"])).join(users, ["cutoff", "user_id"], "left_semi")
              .select("cutoff", "user_id", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a")).distinct())
    neighbours = co_purchase_neighbours(purchases, cuts, int(s["related_k"]), int(s["lookback_days"]),
                                        s.get("max_items_per_unit"))
    related = (recent.join(neighbours, ["cutoff", "site_a", "item_a"])
               .groupBy("cutoff", "user_id", F.col("site_b").alias("site_id"), F.col("item_b").alias("item_id"))
               .agg(F.max("co_rate").alias("rel_score")).withColumn("src_related", F.lit(1.0)))
    parts = [repeat, related]
    if with_table:  # scoring: the relationship job's neighbours widen the candidate set
        rel = inputs.relationships.filter(F.col("rank") <= int(s["related_k"]))
        parts.append(recent.join(rel.select("site_a", "item_a", "site_b", "item_b"), ["site_a", "item_a"])
                     .select("cutoff", "user_id", F.col("site_b").alias("site_id"), F.col("item_b").alias("item_id"))
                     .distinct().withColumn("src_related", F.lit(1.0)))
    cf = als_candidates(purchases, cuts, s, users)
    if cf is not None:
        parts.append(cf.withColumn("src_cf", F.lit(1.0)))
    segs = inputs.users.select("user_id", "segment")
    top = (window(purchases, cuts, 28).join(segs, "user_id").groupBy("cutoff", "segment", "site_id", "item_id")
           .agg(F.countDistinct("user_id").alias("buyers"))
           .withColumn("r", F.row_number().over(Window.partitionBy("cutoff", "segment")
                                                .orderBy(F.col("buyers").desc(), "site_id", "item_id")))
           .filter(F.col("r") <= int(s["popular_k"])).select("cutoff", "segment", "site_id", "item_id"))
    parts.append(users.join(segs, "user_id").join(F.broadcast(top), ["cutoff", "segment"]).select(*keys)
                 .withColumn("src_popular", F.lit(1.0)))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p, allowMissingColumns=True)
    return (out.groupBy(*keys).agg(*[F.max(c).alias(c) for c in ("src_repeat", "src_related", "src_cf", "src_popular",
                                                                  "cf_score", "rel_score")])
            .na.fill(0.0))
