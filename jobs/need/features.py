"""Features and labels of (cutoff, user, candidate item), each row from data up to its own
cut-off only. Every frame is keyed by ``cutoff`` so that all cut-offs of a run are built
in one pass (see ``candidates``)."""
from __future__ import annotations

import pandas as pd

from bundlecast.jobs.need.candidates import candidates, window
from bundlecast.models import need as nm


def features(inputs, cands, cuts, horizon: int, s: dict):
    """The candidate frame with ``cutoff`` and every column of ``models.need.COLUMNS``,
    each row from data up to its cut-off only. ``cuts``: ``cutoff_frame``; ``s``: the
    ``need`` settings."""
    from pyspark.sql import functions as F

    purchases, browsing = inputs.purchases, inputs.browsing
    p = window(purchases, cuts, int(s["lookback_days"]))
    items = inputs.items.select("site_id", "item_id", "category", "price")
    users = inputs.users.select("user_id", "age", "segment", "region", "home_site_id")

    per_item, per_cat, per_user, per_view, user_views = _user_features(p, browsing, items, cuts)
    item_stats, seg_share = _item_features(inputs, purchases, users, cuts, horizon)
    weather = (window(inputs.weather.filter(~F.col("is_forecast")), cuts, 7, "date")
               .groupBy("cutoff", "region").agg(F.avg("temperature_c").alias("temperature_7")))
    segment_codes = {seg: i for i, seg in enumerate(sorted(s["segments"]))}
    seg_code = F.coalesce(F.element_at(F.create_map(*[x for k, v in segment_codes.items()
                                                      for x in (F.lit(k), F.lit(v))]), F.col("segment")),
                          F.lit(len(segment_codes)))
    frame = (cands.join(per_item, ["cutoff", "user_id", "site_id", "item_id"], "left")
             .join(F.broadcast(items), ["site_id", "item_id"], "left")
             .join(per_cat, ["cutoff", "user_id", "category"], "left")
             .join(per_user, ["cutoff", "user_id"], "left")
             .join(users, "user_id", "left")
             .join(per_view, ["cutoff", "user_id", "site_id", "item_id"], "left")
             .join(user_views, ["cutoff", "user_id"], "left")
             .join(item_stats, ["cutoff", "site_id", "item_id"], "left")
             .join(seg_share, ["cutoff", "segment", "site_id", "item_id"], "left")
             .join(F.broadcast(weather), ["cutoff", "region"], "left")
             .withColumn("segment_code", seg_code.cast("double"))
             .withColumn("home_site", (F.col("site_id") == F.col("home_site_id")).cast("double")))
    # Never-bought: "days since" is the whole lookback, gaps and due dates unknown (NaN for the booster).
    fill_zero = ["n_days_item", "qty_item", "n_days_cat", "n_order_days", "n_items_user", "n_sites_user",
                 "revenue_user", "views_user_7", "views_item_7", "views_item_30", "carts_item_7", "item_buyers_28",
                 "seg_share_28", "item_forecast_h", "discount_28"]
    frame = frame.na.fill(0, subset=fill_zero).na.fill(float(s["lookback_days"]),
                                                       subset=["days_since_item", "days_since_cat", "days_since_order"])
    frame = frame.na.fill(1.0, subset=["item_trend"])
    return frame.select("cutoff", "user_id", "site_id", "item_id", "category",
                        *[F.col(c).cast("double") for c in nm.COLUMNS])


def _forecast_h(forecast, cuts, horizon: int):
    """(cutoff, site_id, item_id, _forecast): forecast units over the H days after each
    cut-off that has a forecast made on it (scoring; training cut-offs fall back to the
    trailing rate)."""
    from pyspark.sql import functions as F

    f = forecast.join(F.broadcast(cuts), F.col("dt") == F.col("cutoff"))
    return (f.filter(F.col("date") <= F.date_add(F.col("cutoff"), int(horizon)))
            .groupBy("cutoff", "site_id", "item_id").agg(F.sum("yhat").alias("_forecast")))


def labels(purchases, cuts, horizon: int):
    """(cutoff, user_id, site_id, item_id, label=1, days_to_need) for purchases in
    (cut-off, cut-off + H]."""
    from pyspark.sql import functions as F
    ahead = purchases.join(F.broadcast(cuts), (F.col("day") > F.col("cutoff"))
                           & (F.col("day") <= F.date_add(F.col("cutoff"), int(horizon))))
    return (ahead.groupBy("cutoff", "user_id", "site_id", "item_id")
            .agg(F.min("day").alias("_first")).withColumn("label", F.lit(1))
            .withColumn("days_to_need", F.datediff("_first", "cutoff")).drop("_first"))


def active_users(purchases, cuts, s: dict, sample: int | None = None):
    """(cutoff, user_id): users with a purchase in the lookback before each cut-off (a
    fixed hash sample of ``sample`` users per cut-off when set), checkpointed."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    u = window(purchases, cuts, int(s["lookback_days"])).select("cutoff", "user_id").distinct()
    if sample:
        order = Window.partitionBy("cutoff").orderBy(F.xxhash64("user_id"), "user_id")
        u = u.withColumn("_r", F.row_number().over(order)).filter(F.col("_r") <= int(sample)).drop("_r")
    return u.localCheckpoint()


def examples(inputs, cuts, horizon: int, users, s: dict):
    """Candidates with features at their cut-offs and their labels; and the number of
    distinct items each user bought in the window (pandas, indexed by cutoff and user)."""
    from pyspark.sql import functions as F

    cands = candidates(inputs, cuts, users, s)
    frame = features(inputs, cands, cuts, horizon, s)
    lab = labels(inputs.purchases, cuts, horizon).join(users, ["cutoff", "user_id"], "left_semi").localCheckpoint()
    frame = frame.join(lab, ["cutoff", "user_id", "site_id", "item_id"], "left").na.fill(0, subset=["label"])
    bought = lab.groupBy("cutoff", "user_id").agg(F.count("*").alias("n")).toPandas().set_index(["cutoff", "user_id"]).n
    return frame, bought


def _sampled_training_frame(frame, max_examples_per_cutoff: int, seed: int = 11) -> pd.DataFrame:
    """All positives and, per cut-off, a hashed share of its negatives (weight = 1 / share),
    as pandas with ``cutoff`` as an ISO date string."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # Counted, then sampled: materialised once, not computed twice.
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    counts: dict = {}
    for r in frame.groupBy("cutoff", "label").count().collect():
        counts.setdefault(r["cutoff"], {})[r["label"]] = r["count"]
    shares = {}
    for cutoff, c in counts.items():
        pos, neg = c.get(1, 0), c.get(0, 0)
        shares[cutoff] = 1.0 if pos + neg <= max_examples_per_cutoff else \
            max(0.001, (max_examples_per_cutoff - pos) / max(neg, 1))
    share = F.element_at(F.create_map(*[x for c, v in shares.items() for x in (F.lit(c), F.lit(v))]), F.col("cutoff")) \
        if shares else F.lit(1.0)
    keep = (F.col("label") == 1) | ((F.abs(F.xxhash64("user_id", "site_id", "item_id", F.lit(seed))) % 1_000_000)
                                    < (share * 1_000_000).cast("long"))
    out = (frame.filter(keep).withColumn("weight", F.when(F.col("label") == 1, 1.0).otherwise(1.0 / share))
           .withColumn("cutoff", F.date_format("cutoff", "yyyy-MM-dd")).toPandas())
    frame.unpersist()
    return out


def _user_features(p, browsing, items, cuts):
    """The user's own history before each cut-off (``p``: purchases in the lookback, with
    ``cutoff``): purchase cycles per item and per category, order totals, and browsing of
    the last 7 and 30 days."""
    from pyspark.sql import functions as F

    def cycle(frame, keys, suffix):
        g = frame.groupBy("cutoff", *keys).agg(F.countDistinct("day").alias(f"n_days_{suffix}"),
                                               F.max("day").alias("_last"), F.min("day").alias("_first"),
                                               F.sum("quantity").alias(f"qty_{suffix}"))
        gap = F.when(F.col(f"n_days_{suffix}") >= 2, F.datediff("_last", "_first") / (F.col(f"n_days_{suffix}") - 1))
        return (g.withColumn(f"days_since_{suffix}", F.datediff("cutoff", "_last").cast("double"))
                .withColumn(f"mean_gap_{suffix}", gap.cast("double"))
                .withColumn(f"due_in_{suffix}", F.col(f"mean_gap_{suffix}") - F.col(f"days_since_{suffix}"))
                .drop("_last", "_first"))

    per_item = cycle(p, ["user_id", "site_id", "item_id"], "item") \
        .withColumn("cycle_ratio_item", F.col("days_since_item") / F.col("mean_gap_item"))
    pc = p.join(F.broadcast(items.select("site_id", "item_id", "category")), ["site_id", "item_id"])
    per_cat = cycle(pc, ["user_id", "category"], "cat").drop("qty_cat")
    per_user = p.groupBy("cutoff", "user_id").agg(
        F.countDistinct("site_id", "item_id").alias("n_items_user"), F.countDistinct("site_id").alias("n_sites_user"),
        F.sum(F.col("quantity") * F.col("unit_price") * (1 - F.col("discount"))).alias("revenue_user"))
    per_user = per_user.join(_order_days(p), ["cutoff", "user_id"])
    b = window(browsing, cuts, 30)
    b7 = F.col("day") > F.date_sub(F.col("cutoff"), 7)
    per_view = b.groupBy("cutoff", "user_id", "site_id", "item_id").agg(
        F.sum((b7 & (F.col("event_type") == "view")).cast("int")).alias("views_item_7"),
        F.sum((F.col("event_type") == "view").cast("int")).alias("views_item_30"),
        F.sum((b7 & (F.col("event_type") == "add_to_cart")).cast("int")).alias("carts_item_7"))
    user_views = b.filter(b7).groupBy("cutoff", "user_id").agg(F.count("*").alias("views_user_7"))
    return per_item, per_cat, per_user, per_view, user_views


def _order_days(p):
    """(cutoff, user_id, n_order_days, days_since_order, share_d1..share_d7, mean_gap_order),
    in one aggregate over the user's distinct order days: how many, how long since the last,
    the mean days between them, and the share that fell on the weekday of cut-off + k days
    (k = 1..7). On Online Retail the weekday profile is the one signal found that dates a
    need better than a constant lead time (``tests/benchmarks/need_date_ceiling.py``)."""
    from pyspark.sql import functions as F

    days = p.select("cutoff", "user_id", "day").distinct()
    offset = F.pmod(F.datediff("day", "cutoff"), F.lit(7))  # 0: the cut-off's weekday, i.e. k = 7
    n = F.count("*")
    gap = F.when(n >= 2, F.datediff(F.max("day"), F.min("day")) / (n - 1))
    return days.groupBy("cutoff", "user_id").agg(
        n.alias("n_order_days"), F.datediff(F.col("cutoff"), F.max("day")).cast("double").alias("days_since_order"),
        *[F.avg((offset == (k % 7)).cast("double")).alias(f"share_d{k}") for k in range(1, 8)],
        gap.cast("double").alias("mean_gap_order"))


def _item_features(inputs, purchases, users, cuts, horizon: int):
    """The item before each cut-off: buyers and trend, discount and demand over the horizon
    (the forecast when one was made on the cut-off date, else the trailing rate), and its
    share of each segment."""
    from pyspark.sql import functions as F

    last28 = window(purchases, cuts, 28)
    item_stats = last28.groupBy("cutoff", "site_id", "item_id").agg(
        F.countDistinct("user_id").alias("item_buyers_28"),
        F.countDistinct(F.when(F.col("day") > F.date_sub(F.col("cutoff"), 7), F.col("user_id"))).alias("_buyers_7"),
        F.sum("quantity").alias("_qty_28"), F.avg("discount").alias("discount_28"))
    item_stats = (item_stats.withColumn("item_trend", (F.col("_buyers_7") * 4 + 1) / (F.col("item_buyers_28") + 1))
                  .withColumn("_rate_h", F.col("_qty_28") / 28.0 * horizon).drop("_buyers_7", "_qty_28"))
    item_stats = (item_stats.join(_forecast_h(inputs.forecast, cuts, horizon), ["cutoff", "site_id", "item_id"], "left")
                  .withColumn("item_forecast_h", F.coalesce("_forecast", "_rate_h")).drop("_forecast", "_rate_h"))
    seg_buyers = last28.join(users.select("user_id", "segment"), "user_id")
    seg_share = (seg_buyers.groupBy("cutoff", "segment", "site_id", "item_id").agg(F.countDistinct("user_id").alias("_n"))
                 .join(seg_buyers.groupBy("cutoff", "segment").agg(F.countDistinct("user_id").alias("_all")),
                       ["cutoff", "segment"])
                 .select("cutoff", "segment", "site_id", "item_id", (F.col("_n") / F.col("_all")).alias("seg_share_28")))
    return item_stats, seg_share
