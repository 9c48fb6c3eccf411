"""Reads of the need step: behaviour history and the tables the features join."""
from __future__ import annotations

from dataclasses import dataclass, replace

from bundlecast.jobs.core.commerce import with_local_day


@dataclass(frozen=True)
class NeedInputs:
    """Spark DataFrames the need step computes from (``extract``)."""
    purchases: object   # non-cancelled order lines with the order day (known items)
    browsing: object    # view / add-to-cart events with the day (known items)
    items: object
    users: object
    weather: object
    forecast: object    # demand_forecast
    relationships: object  # item_relationships

    def persisted(self) -> NeedInputs:
        return replace(self, purchases=self.purchases.persist(), browsing=self.browsing.persist())

    def unpersist(self) -> None:
        self.purchases.unpersist()
        self.browsing.unpersist()


def history(tables):
    """(purchases, browsing): purchases are non-cancelled order lines with the order day;
    browsing is view / add-to-cart events. Both restricted to known items; days are the
    order's (event's) site-local day."""
    from pyspark.sql import functions as F

    items = tables.read("items").select("site_id", "item_id")
    orders = with_local_day(tables, tables.read("orders").filter(F.col("status") != "cancelled"), "order_ts") \
        .select("order_id", "user_id", "day")
    lines = tables.read("order_lines").select("order_id", "site_id", "item_id", "quantity", "unit_price",
                                                         F.coalesce("discount", F.lit(0.0)).alias("discount"))
    purchases = lines.join(orders, "order_id").join(F.broadcast(items), ["site_id", "item_id"], "left_semi") \
        .drop("order_id")
    browsing = (with_local_day(tables, tables.read("events").filter(F.col("event_type") != "purchase"), "event_ts")
                .select("user_id", "site_id", "item_id", "day", "event_type")
                .join(F.broadcast(items), ["site_id", "item_id"], "left_semi"))
    return purchases, browsing


def extract(tables) -> NeedInputs:
    purchases, browsing = history(tables)
    return NeedInputs(purchases, browsing, tables.read("items"), tables.read("users"), tables.read("weather"),
                      tables.read("demand_forecast"), tables.read("item_relationships"))


def touched_users(tables, since):
    """Users with an event or an order after ``since``."""
    from pyspark.sql import functions as F

    touched = tables.read("events").filter(F.col("event_ts") > F.lit(since)).select("user_id")
    return touched.unionByName(tables.read("orders").filter(F.col("order_ts") > F.lit(since)).select("user_id"))


def latest_activity(tables):
    """The latest event or order time (the run's watermark), or None."""
    from pyspark.sql import functions as F

    return max((t for t in (tables.read("events").agg(F.max("event_ts")).first()[0],
                            tables.read("orders").agg(F.max("order_ts")).first()[0]) if t is not None), default=None)
