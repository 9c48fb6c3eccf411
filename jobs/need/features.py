"""Features and labels of (user, candidate item) at a cut-off, from data up to it only."""
from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from bundlecast.jobs.need.candidates import _d, candidates
from bundlecast.models import need as nm


def features(inputs, cands, cutoff: date, horizon: int, s: dict):
    """The candidate frame with every column of ``models.need.FEATURES``, from data up to
    the cut-off only. ``s``: the ``need`` settings."""
    from pyspark.sql import functions as F

    purchases, browsing = inputs.purchases, inputs.browsing
    T = _d(cutoff)
    since = lambda days: _d(cutoff - timedelta(days=days))  # noqa: E731
    p = purchases.filter((F.col("day") <= T) & (F.col("day") > since(int(s["lookback_days"]))))
    items = inputs.items.select("site_id", "item_id", "category", "price")
    users = inputs.users.select("user_id", "age", "segment", "region", "home_site_id")

    per_item, per_cat, per_user, per_view, user_views = _user_features(p, browsing, items, T, since)
    item_stats, seg_share = _item_features(inputs, purchases, users, T, since, cutoff, horizon)
    weather = (inputs.weather.filter((F.col("date") <= T) & (F.col("date") > since(7))
                                                       & ~F.col("is_forecast"))
               .groupBy("region").agg(F.avg("temperature_c").alias("temperature_7")))
    segment_codes = {seg: i for i, seg in enumerate(sorted(s["segments"]))}
    seg_code = F.coalesce(F.element_at(F.create_map(*[x for k, v in segment_codes.items()
                                                      for x in (F.lit(k), F.lit(v))]), F.col("segment")),
                          F.lit(len(segment_codes)))
    frame = (cands.join(per_item, ["user_id", "site_id", "item_id"], "left")
             .join(F.broadcast(items), ["site_id", "item_id"], "left")
             .join(per_cat, ["user_id", "category"], "left")
             .join(per_user, "user_id", "left")
             .join(users, "user_id", "left")
             .join(per_view, ["user_id", "site_id", "item_id"], "left")
             .join(user_views, "user_id", "left")
             .join(item_stats, ["site_id", "item_id"], "left")
             .join(seg_share, ["segment", "site_id", "item_id"], "left")
             .join(F.broadcast(weather), "region", "left")
             .withColumn("segment_code", seg_code.cast("double"))
             .withColumn("home_site", (F.col("site_id") == F.col("home_site_id")).cast("double")))
    # Never-bought: "days since" is the whole lookback, gaps and due dates unknown (NaN for the booster).
    fill_zero = ["n_days_item", "qty_item", "n_days_cat", "n_order_days", "n_items_user", "n_sites_user",
                 "revenue_user", "views_user_7", "views_item_7", "views_item_30", "carts_item_7", "item_buyers_28",
                 "seg_share_28", "item_forecast_h", "discount_28"]
    frame = frame.na.fill(0, subset=fill_zero).na.fill(float(s["lookback_days"]),
                                                       subset=["days_since_item", "days_since_cat", "days_since_order"])
    frame = frame.na.fill(1.0, subset=["item_trend"])
    return frame.select("user_id", "site_id", "item_id", "category", *[F.col(c).cast("double") for c in nm.FEATURES])


def _forecast_h(forecast, cutoff: date, horizon: int):
    """Forecast units over the H days after the cut-off, when a forecast was made on the
    cut-off date (scoring); None otherwise (training cut-offs use the trailing rate)."""
    from pyspark.sql import functions as F

    f = forecast.filter(F.col("dt") == _d(cutoff))
    if f.limit(1).count() == 0:
        return None
    return (f.filter(F.col("date") <= _d(cutoff + timedelta(days=horizon)))
            .groupBy("site_id", "item_id").agg(F.sum("yhat").alias("_forecast")))


def labels(purchases, cutoff: date, horizon: int):
    """(user_id, site_id, item_id, label=1, days_to_need) for purchases in (cut-off, cut-off + H]."""
    from pyspark.sql import functions as F
    window = (F.col("day") > _d(cutoff)) & (F.col("day") <= _d(cutoff + timedelta(days=horizon)))
    return (purchases.filter(window).groupBy("user_id", "site_id", "item_id")
            .agg(F.min("day").alias("_first")).withColumn("label", F.lit(1))
            .withColumn("days_to_need", F.datediff("_first", _d(cutoff))).drop("_first"))


def active_users(purchases, cutoff: date, s: dict, sample: int | None = None):
    """Users with a purchase in the lookback before the cut-off (a fixed hash sample when
    ``sample`` is set)."""
    from pyspark.sql import functions as F
    u = purchases.filter((F.col("day") <= _d(cutoff)) &
                         (F.col("day") > _d(cutoff - timedelta(days=int(s["lookback_days"]))))).select("user_id").distinct()
    if sample:
        u = u.orderBy(F.xxhash64("user_id"), "user_id").limit(int(sample))
    return u.localCheckpoint()


def examples(inputs, cutoff: date, horizon: int, users, s: dict):
    """Candidates with features at the cut-off and their labels; and the number of
    distinct items each user bought in the window (for recall)."""
    from pyspark.sql import functions as F

    cands = candidates(inputs, cutoff, users, s)
    frame = features(inputs, cands, cutoff, horizon, s)
    lab = labels(inputs.purchases, cutoff, horizon).join(F.broadcast(users), "user_id", "left_semi").localCheckpoint()
    frame = frame.join(lab, ["user_id", "site_id", "item_id"], "left").na.fill(0, subset=["label"])
    bought = lab.groupBy("user_id").agg(F.count("*").alias("n")).toPandas().set_index("user_id").n
    return frame, bought


def _sampled_training_frame(frame, max_examples: int, seed: int = 11) -> pd.DataFrame:
    """All positives and a hashed share of negatives (weight = 1 / share), as pandas."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # Counted, then sampled: materialised once, not computed twice.
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    counts = {r["label"]: r["count"] for r in frame.groupBy("label").count().collect()}
    pos, neg = counts.get(1, 0), counts.get(0, 0)
    share = 1.0 if pos + neg <= max_examples else max(0.001, (max_examples - pos) / max(neg, 1))
    keep = (F.col("label") == 1) | ((F.abs(F.xxhash64("user_id", "site_id", "item_id", F.lit(seed))) % 1_000_000)
                                    < F.lit(int(share * 1_000_000)))
    out = frame.filter(keep).withColumn("weight", F.when(F.col("label") == 1, 1.0).otherwise(1.0 / share)).toPandas()
    frame.unpersist()
    return out


def _user_features(p, browsing, items, T, since):
    """The user's own history: purchase cycles per item and per category, order totals,
    and browsing of the last 7 and 30 days."""
    from pyspark.sql import functions as F

    def cycle(frame, keys, suffix):
        g = frame.groupBy(*keys).agg(F.countDistinct("day").alias(f"n_days_{suffix}"), F.max("day").alias("_last"),
                                     F.min("day").alias("_first"), F.sum("quantity").alias(f"qty_{suffix}"))
        gap = F.when(F.col(f"n_days_{suffix}") >= 2, F.datediff("_last", "_first") / (F.col(f"n_days_{suffix}") - 1))
        return (g.withColumn(f"days_since_{suffix}", F.datediff(T, "_last").cast("double"))
                .withColumn(f"mean_gap_{suffix}", gap.cast("double"))
                .withColumn(f"due_in_{suffix}", F.col(f"mean_gap_{suffix}") - F.col(f"days_since_{suffix}"))
                .drop("_last", "_first"))

    per_item = cycle(p, ["user_id", "site_id", "item_id"], "item") \
        .withColumn("cycle_ratio_item", F.col("days_since_item") / F.col("mean_gap_item"))
    pc = p.join(F.broadcast(items.select("site_id", "item_id", "category")), ["site_id", "item_id"])
    per_cat = cycle(pc, ["user_id", "category"], "cat").drop("qty_cat")
    per_user = p.groupBy("user_id").agg(
        F.countDistinct("day").alias("n_order_days"), F.datediff(T, F.max("day")).cast("double").alias("days_since_order"),
        F.countDistinct("site_id", "item_id").alias("n_items_user"), F.countDistinct("site_id").alias("n_sites_user"),
        F.sum(F.col("quantity") * F.col("unit_price") * (1 - F.col("discount"))).alias("revenue_user"))
    b = browsing.filter((F.col("day") <= T) & (F.col("day") > since(30)))
    b7 = F.col("day") > since(7)
    per_view = b.groupBy("user_id", "site_id", "item_id").agg(
        F.sum((b7 & (F.col("event_type") == "view")).cast("int")).alias("views_item_7"),
        F.sum((F.col("event_type") == "view").cast("int")).alias("views_item_30"),
        F.sum((b7 & (F.col("event_type") == "add_to_cart")).cast("int")).alias("carts_item_7"))
    user_views = b.filter(b7).groupBy("user_id").agg(F.count("*").alias("views_user_7"))
    return per_item, per_cat, per_user, per_view, user_views


def _item_features(inputs, purchases, users, T, since, cutoff: date, horizon: int):
    """The item: buyers and trend, discount and demand over the horizon (the forecast when
    one was made on the cut-off date, else the trailing rate), and its share of each segment."""
    from pyspark.sql import functions as F

    none = F.lit(None).cast("double")
    last28 = purchases.filter((F.col("day") <= T) & (F.col("day") > since(28)))
    item_stats = last28.groupBy("site_id", "item_id").agg(
        F.countDistinct("user_id").alias("item_buyers_28"),
        F.countDistinct(F.when(F.col("day") > since(7), F.col("user_id"))).alias("_buyers_7"),
        F.sum("quantity").alias("_qty_28"), F.avg("discount").alias("discount_28"))
    item_stats = (item_stats.withColumn("item_trend", (F.col("_buyers_7") * 4 + 1) / (F.col("item_buyers_28") + 1))
                  .withColumn("_rate_h", F.col("_qty_28") / 28.0 * horizon).drop("_buyers_7", "_qty_28"))
    forecast = _forecast_h(inputs.forecast, cutoff, horizon)
    if forecast is not None:
        item_stats = item_stats.join(forecast, ["site_id", "item_id"], "left")
    else:
        item_stats = item_stats.withColumn("_forecast", none)
    item_stats = item_stats.withColumn("item_forecast_h", F.coalesce("_forecast", "_rate_h")).drop("_forecast", "_rate_h")
    seg_buyers = last28.join(users.select("user_id", "segment"), "user_id")
    seg_share = (seg_buyers.groupBy("segment", "site_id", "item_id").agg(F.countDistinct("user_id").alias("_n"))
                 .join(seg_buyers.groupBy("segment").agg(F.countDistinct("user_id").alias("_all")), "segment")
                 .select("segment", "site_id", "item_id", (F.col("_n") / F.col("_all")).alias("seg_share_28")))
    return item_stats, seg_share
