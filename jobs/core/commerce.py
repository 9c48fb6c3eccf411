"""Shared commerce helpers, below every step that sells or ships: stable ids, usable
prices, available stock, each user's warehouse, competitor references.

Bundles, offers and proactive shipping read prices and stock the same way through these
functions (``tables``: a :class:`bundlecast.jobs.core.tables.Tables`).
"""
from __future__ import annotations

import hashlib

import pandas as pd


def stable_id(prefix: str, *parts) -> str:
    return prefix + hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def with_local_day(tables, frame, ts: str, name: str = "day"):
    """``frame`` (with ``site_id``) plus ``name``: the calendar day of timestamp ``ts`` in its
    site's time zone (``sites.timezone``; UTC for a site without a row). Timestamps are
    stored in UTC; a day is the site's: a New York order at 20:00 local is that evening's
    day, not the next UTC date. Every step that counts by day goes through this."""
    from pyspark.sql import functions as F

    zones = tables.read("sites").select("site_id", F.col("timezone").alias("_zone"))
    return (frame.join(F.broadcast(zones), "site_id", "left")
            .withColumn(name, F.to_date(F.from_utc_timestamp(F.col(ts), F.coalesce("_zone", F.lit("UTC")))))
            .drop("_zone"))


def item_prices(tables, counts: dict) -> pd.DataFrame:
    """Items with a usable price and cost, keyed ``site|item`` (see ``usable_prices``)."""
    from pyspark.sql import functions as F

    items = tables.read("items").select(
        F.concat_ws("|", "site_id", "item_id").alias("key"), "site_id", "item_id", "category", "price", "cost",
        "volume_l", "weight_kg", "perishable").toPandas()
    return usable_prices(items, counts)


def usable_prices(items: pd.DataFrame, counts: dict) -> pd.DataFrame:
    """Keep items with a positive price and a cost below it; count the others (an item
    without a price or cost, or sold at a loss, never enters a bundle or an offer)."""
    no_price = items.price.isna() | (items.price <= 0) | items.cost.isna()
    negative = ~no_price & (items.cost >= items.price)
    counts["items_without_price_or_cost"] = int(no_price.sum())
    counts["items_with_negative_margin"] = int(negative.sum())
    return items[~no_price & ~negative].set_index("key")


def available_stock(tables, subtract_reservations: bool = True, reservations=None):
    """Latest snapshot per warehouse: available = on_hand - reserved (>= 0), per
    (warehouse_id, key), less the active proactive-shipping reservations
    (``reservations``, default the ``inventory_reservations`` table as it is now; a nightly
    step passes the version its date pinned, ``Tables.pinned``) unless
    ``subtract_reservations`` is False."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    inv = tables.read("inventory")
    latest = Window.partitionBy("warehouse_id")
    stock = (inv.withColumn("_last", F.max("snapshot_ts").over(latest)).filter(F.col("snapshot_ts") == F.col("_last"))
             .groupBy("warehouse_id", F.concat_ws("|", "site_id", "item_id").alias("key"))
             .agg(F.sum(F.greatest(F.col("on_hand") - F.col("reserved"), F.lit(0))).cast("long").alias("available")))
    if not subtract_reservations:
        return stock
    reservations = tables.read("inventory_reservations") if reservations is None else reservations
    held = (reservations.filter(F.col("status") == "active")
            .groupBy("warehouse_id", F.concat_ws("|", "site_id", "item_id").alias("key"))
            .agg(F.sum("quantity").alias("_held")))
    return (stock.join(held, ["warehouse_id", "key"], "left")
            .select("warehouse_id", "key", F.greatest(F.col("available") - F.coalesce(F.col("_held"), F.lit(0)), F.lit(0))
                    .cast("long").alias("available")))


def user_warehouses(tables):
    """user_id -> the warehouse of the user's region (the first by id where a region has
    several); users whose region has none get null (counted where used)."""
    from pyspark.sql import functions as F

    warehouses = tables.read("warehouses").groupBy("region").agg(F.min("warehouse_id").alias("warehouse_id"))
    return tables.read("users").select("user_id", "region").join(F.broadcast(warehouses), "region", "left") \
        .select("user_id", "warehouse_id")


def competitor_reference(tables, counts: dict) -> pd.Series:
    """Cheapest competitor price per item over the last observations (<= 0 ignored, counted)."""
    from pyspark.sql import functions as F

    comp = tables.read("competitor_prices")
    bad = comp.filter(F.col("price") <= 0).count()
    counts["competitor_prices_ignored_not_positive"] = int(bad)
    last = comp.agg(F.max("observed_ts")).first()[0]
    if last is None:
        return pd.Series(dtype=float)
    recent = comp.filter((F.col("price") > 0) & (F.col("observed_ts") >= F.lit(last) - F.expr("INTERVAL 7 DAYS")))
    pdf = recent.groupBy(F.concat_ws("|", "site_id", "item_id").alias("key")).agg(F.min("price").alias("p")).toPandas()
    return pdf.set_index("key").p
