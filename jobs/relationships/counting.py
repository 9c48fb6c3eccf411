"""Counting behaviour: units (a user's session or day) as item arrays, pair and item counts,
from events and order lines."""
from __future__ import annotations

from datetime import datetime

from bundlecast.jobs.core.commerce import with_local_day
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun
from bundlecast.jobs.core.tables import Tables

SIGNALS = ["co_view_rate", "co_view_jaccard", "co_view_lift_log", "co_purchase_rate", "co_purchase_jaccard",
           "co_purchase_lift_log", "text_similarity", "complementary_score", "alternative_score",
           "inventory_correlation"]
ALL = "*"


def settings(cfg: dict) -> dict:
    return cfg["relationships"]


def stable_sum(column: str):
    """The sum of a double column to 12 significant digits: Spark adds a group's terms in the
    order its shuffle delivers them (partitions, executors, a retried task), and the last bits
    of a double sum follow that order. Rounded, the counts, the weight fit on them and every
    score downstream are the same rows however the job was partitioned or retried."""
    from pyspark.sql import functions as F

    total = F.sum(column)
    scale = F.pow(F.lit(10.0), F.floor(F.log10(F.abs(total))) - 11)
    return F.when(total == 0, total).otherwise(F.rint(total / scale) * scale)


def _bucket(window: str):
    from pyspark.sql import functions as F
    if window == "session":
        return F.col("session_id")
    if window == "day":  # the site-local day (see ``behaviour``)
        return F.col("day").cast("string")
    if window == "week":
        return F.date_format(F.date_trunc("week", F.col("day").cast("timestamp")), "yyyy-MM-dd")
    raise BundlecastError(f"relationships window must be session, day or week, not {window!r}")


def behaviour(spark, cfg: dict, until: datetime, since: datetime, summary: StepRun | None = None,
              users=None):
    """(view rows, purchase rows) with known items and users, bot user-days removed.

    view rows: user_id, site_id, item_id, ts, day, session_id, bought (the event was a purchase).
    purchase rows: user_id, site_id, item_id, ts, day, session_id (null for order lines).
    ``day`` is the site-local day of ``ts`` (units by day and bot user-days count by it).
    ``users`` (a DataFrame of user_id) restricts the read to those users.
    """
    from pyspark.sql import functions as F

    s = settings(cfg)
    window = (F.col("ts") > F.lit(since)) & (F.col("ts") <= F.lit(until))
    events = (Tables(spark, cfg).read("events")
              .select("user_id", "site_id", "item_id", F.col("event_ts").alias("ts"), "session_id",
                      (F.col("event_type") == "purchase").alias("bought")).filter(window))
    orders = Tables(spark, cfg).read("orders").filter(F.col("status") != "cancelled") \
        .select("order_id", "user_id", F.col("order_ts").alias("ts")).filter(window)
    lines = Tables(spark, cfg).read("order_lines").select("order_id", "site_id", "item_id")
    ordered = lines.join(orders, "order_id").select("user_id", "site_id", "item_id", "ts",
                                                    F.lit(None).cast("string").alias("session_id"),
                                                    F.lit(True).alias("bought"))
    rows = events.withColumn("source", F.lit("event")).unionByName(ordered.withColumn("source", F.lit("order")))
    if users is not None:
        rows = rows.join(F.broadcast(users), "user_id", "left_semi")
    items = Tables(spark, cfg).read("items").select("site_id", "item_id", F.lit(True).alias("_known_item"))
    known_users = Tables(spark, cfg).read("users").select("user_id", F.lit(True).alias("_known_user"))
    rows = with_local_day(Tables(spark, cfg), rows.join(F.broadcast(items), ["site_id", "item_id"], "left")
                          .join(known_users, "user_id", "left"), "ts")
    # Bot user-days: an aggregate (few rows) broadcast back, not a window over every row.
    bot_days = (rows.groupBy("user_id", "day").count().filter(F.col("count") > s["max_events_per_user_day"])
                .select("user_id", "day", F.lit(True).alias("_bot")))
    rows = rows.join(F.broadcast(bot_days), ["user_id", "day"], "left") \
        .withColumn("_bot", F.coalesce(F.col("_bot"), F.lit(False)))
    if summary is not None:  # read twice (the tallies, then the units): cached, released by _finish
        rows = rows.persist()
        stats = rows.agg(F.count(F.lit(1)).alias("n"),
                         F.sum(F.col("_known_item").isNull().cast("long")).alias("unknown_item"),
                         F.sum((F.col("_known_item").isNotNull() & F.col("_known_user").isNull()).cast("long"))
                         .alias("unknown_user"),
                         F.max("ts").alias("wm")).first()
        summary.counts["events_read"] += stats["n"] or 0
        summary.counts["skipped_unknown_item"] += stats["unknown_item"] or 0
        summary.counts["skipped_unknown_user"] += stats["unknown_user"] or 0
        summary.counts["skipped_bot_user_days"] += rows.filter("_bot").select("user_id", "day").distinct().count()
        summary.watermark = stats["wm"]
    clean = rows.filter(F.col("_known_item") & F.col("_known_user") & ~F.col("_bot"))
    views = clean.filter(F.col("source") == "event").select("user_id", "site_id", "item_id", "ts", "day", "session_id",
                                                            "bought")
    purchases = clean.filter(F.col("bought")).select("user_id", "site_id", "item_id", "ts", "day", "session_id")
    return views, purchases, rows


def unit_items(rows, window: str, cap: int, epoch: str, half_life: float):
    """One row per unit: user_id, unit, unit_day, weight, n_items, oversized (more than
    ``cap`` items) and items, the unit's distinct items as a sorted array of
    struct(site_id, item_id, bought).

    The rows are shuffled once, by unit; both aggregations then run where the rows are, and
    pairs are later generated from the array (no self-join on the unit).
    """
    from pyspark.sql import functions as F

    if "bought" not in rows.columns:
        rows = rows.withColumn("bought", F.lit(True))
    if "day" not in rows.columns:  # rows not from ``behaviour``: the UTC day
        rows = rows.withColumn("day", F.to_date("ts"))
    per_item = (rows.withColumn("unit", F.concat_ws("|", "user_id", _bucket(window))).repartition("unit")
                .groupBy("unit", "user_id", "site_id", "item_id")
                .agg(F.max("bought").alias("bought"), F.max("day").alias("day")))
    units = per_item.groupBy("unit", "user_id").agg(
        F.sort_array(F.collect_list(F.struct("site_id", "item_id", "bought"))).alias("items"),
        F.max("day").alias("unit_day"))
    return (units.withColumn("n_items", F.size("items"))
            .withColumn("oversized", F.col("n_items") > cap)
            .withColumn("weight", F.pow(F.lit(2.0), F.datediff("unit_day", F.lit(epoch)) / F.lit(float(half_life)))))


def unit_pairs(units):
    """One row per unordered pair (a < b) within each unit that is not oversized: unit,
    unit_day, weight, site_a, item_a, bought_a, site_b, item_b, bought_b."""
    from pyspark.sql import functions as F

    items, n = F.col("items"), F.size("items")
    # Each item paired with the items after it in the sorted array: every pair once, a < b.
    pairs = F.flatten(F.transform(items, lambda x, i: F.transform(
        F.slice(items, i + 2, F.greatest(n - i - 1, F.lit(0))), lambda y: F.struct(x.alias("a"), y.alias("b")))))
    p = units.filter(~F.col("oversized")).select("unit", "unit_day", "weight", F.explode(pairs).alias("p"))
    return p.select("unit", "unit_day", "weight",
                    *[F.col(f"p.{side}.{field}").alias(f"{name}_{side}") for side in ("a", "b")
                      for field, name in (("site_id", "site"), ("item_id", "item"), ("bought", "bought"))])


def pair_counts(units, kind: str, with_one_bought: bool = False):
    """Unordered pair counts (a < b) over units: kind, site_a, item_a, site_b, item_b, units, weight, last_day.
    ``with_one_bought`` adds kind ``view_one_bought``: units where exactly one of the two was bought."""
    from pyspark.sql import functions as F

    keys = ["site_a", "item_a", "site_b", "item_b"]
    one = F.col("bought_a") != F.col("bought_b")
    agg = (unit_pairs(units).groupBy(*keys)
           .agg(F.count(F.lit(1)).alias("units"), stable_sum("weight").alias("weight"), F.max("unit_day").alias("last_day"),
                F.sum(one.cast("long")).alias("one_units"), stable_sum(F.when(one, F.col("weight"))).alias("one_weight"),
                F.max(F.when(one, F.col("unit_day"))).alias("one_last_day")))
    out = agg.select(*keys, "units", "weight", "last_day", F.lit(kind).alias("kind"))
    if not with_one_bought:
        return out
    one_bought = agg.filter(F.col("one_units") > 0).select(
        *keys, F.col("one_units").alias("units"), F.col("one_weight").alias("weight"),
        F.col("one_last_day").alias("last_day"), F.lit("view_one_bought").alias("kind"))
    return out.unionByName(one_bought)


def item_counts(units, kind: str):
    """Units per item, plus the total as site_id = item_id = '*'."""
    from pyspark.sql import functions as F

    u = units.filter(~F.col("oversized"))
    per_item = (u.select("weight", F.explode("items").alias("i"))
                .groupBy(F.col("i.site_id").alias("site_id"), F.col("i.item_id").alias("item_id"))
                .agg(F.count(F.lit(1)).alias("units"), stable_sum("weight").alias("weight")))
    total = u.agg(F.count(F.lit(1)).alias("units"), stable_sum("weight").alias("weight")) \
        .select(F.lit(ALL).alias("site_id"), F.lit(ALL).alias("item_id"), "units", "weight")
    return per_item.unionByName(total).withColumn("kind", F.lit(kind))


def all_units(views, purchases, cfg: dict):
    """(view units, purchase units) as built by :func:`unit_items` with the configured windows."""
    s = settings(cfg)
    vu = unit_items(views, s["co_view_window"], s["max_items_per_unit"], s["epoch"], s["half_life_days"])
    pu = unit_items(purchases.drop("session_id") if s["co_purchase_window"] != "session" else purchases,
                    s["co_purchase_window"], s["max_items_per_unit"], s["epoch"], s["half_life_days"])
    return vu, pu


def counts_from_units(vu, pu):
    """(pair counts, item counts) of view and purchase units."""
    pairs = pair_counts(vu, "view", with_one_bought=True).unionByName(pair_counts(pu, "purchase"))
    items = item_counts(vu, "view").unionByName(item_counts(pu, "purchase"))
    return pairs, items


def touching(pairs, anchors):
    """The unordered pairs (a < b) with either side among ``anchors`` (site_a, item_a)."""
    from pyspark.sql import functions as F

    a = anchors.withColumn("_a", F.lit(True))
    b = anchors.select(F.col("site_a").alias("site_b"), F.col("item_a").alias("item_b"), F.lit(True).alias("_b"))
    return (pairs.join(F.broadcast(a), ["site_a", "item_a"], "left").join(F.broadcast(b), ["site_b", "item_b"], "left")
            .filter(F.col("_a").isNotNull() | F.col("_b").isNotNull()).drop("_a", "_b"))
