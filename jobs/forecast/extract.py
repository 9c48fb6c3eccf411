"""Reads of the forecast step: daily demand per series, weather by day, holidays."""
from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from bundlecast.jobs.core.commerce import with_local_day


def daily_demand(tables, dt: str, lookback_days: int, level: list[str]):
    """Units per (level, site-local day) over the lookback window ending with ``dt``; lines of
    unknown items are dropped here and counted by the caller."""
    from pyspark.sql import functions as F

    end = date.fromisoformat(dt)
    start = end - timedelta(days=lookback_days - 1)
    orders = (with_local_day(tables, tables.read("orders").filter(F.col("status") != "cancelled"), "order_ts", "ds")
              .select("order_id", "user_id", "ds")
              .filter(F.col("ds").between(F.lit(start), F.lit(end))))
    users = tables.read("users").select("user_id", "region")
    lines = tables.read("order_lines").select("order_id", "site_id", "item_id", "quantity")
    items = tables.read("items").select("site_id", "item_id")
    rows = (lines.join(orders, "order_id").join(users, "user_id", "left")
            .withColumn("region", F.coalesce("region", F.lit("unknown"))))
    known = rows.join(items, ["site_id", "item_id"], "left_semi")
    unknown = rows.join(items, ["site_id", "item_id"], "left_anti")
    demand = known.groupBy(*level, "ds").agg(F.sum("quantity").cast("double").alias("y"))
    return demand, unknown


def weather_by_day(tables, by_region: bool) -> pd.DataFrame:
    """region (or '*'), ds, temperature_c, precipitation_mm: observations where there are
    any, the feed's forecast rows otherwise (the future)."""
    from pyspark.sql import functions as F

    w = tables.read("weather").select("region", F.col("date").alias("ds"), "temperature_c",
                                                 "precipitation_mm", "is_forecast")
    frame = w.toPandas()
    if frame.empty:
        return pd.DataFrame(columns=["region", "ds", "temperature_c", "precipitation_mm"])
    frame = frame.sort_values("is_forecast").drop_duplicates(["region", "ds"], keep="first")  # observed first
    if not by_region:
        frame = frame.groupby("ds", as_index=False)[["temperature_c", "precipitation_mm"]].mean().assign(region="*")
    frame["ds"] = pd.to_datetime(frame.ds)
    return frame[["region", "ds", "temperature_c", "precipitation_mm"]]


def holidays_frame(tables) -> pd.DataFrame:
    """region, holiday, ds from ``calendar_events`` (region 'ALL' applies everywhere)."""
    from pyspark.sql import functions as F

    ev = tables.read("calendar_events").select("region", F.col("event_name").alias("holiday"),
                                                          F.col("date").alias("ds")).toPandas()
    ev["ds"] = pd.to_datetime(ev.ds)
    return ev


def backtest_slot(level: list[str], every_days: int):
    """A series' backtest day in the ``every_days`` cycle (a Spark column, 0 .. every_days - 1),
    from a hash of its key: the series are spread evenly over the days."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(*level), F.lit(every_days))


def slot_of(dt: str, every_days: int) -> int:
    """The slot whose series are backtested on ``dt``."""
    return date.fromisoformat(dt).toordinal() % every_days


def stored_choices(tables, dt: str, every_days: int, level: list[str]):
    """Per series, the method its latest backtest chose, when that backtest ran on one of
    the ``every_days - 1`` days before ``dt`` and ``dt`` is not the series' own backtest
    day (``backtest_slot``); columns: level, reuse_method, reuse_reason, backtested_on.
    None when every series is backtested today (``every_days`` <= 1).

    So after the first night (every series) each night backtests about 1/every_days of the
    series, not all of them once a week: the weekly backtest costs the same every night.
    Only earlier dates are read, so a re-run of ``dt`` makes the same choices."""
    from pyspark.sql import functions as F

    if every_days <= 1:
        return None
    end = date.fromisoformat(dt)
    window = F.col("dt").between(F.lit(end - timedelta(days=every_days - 1)), F.lit(end - timedelta(days=1)))
    keys = level if "region" in level else level + ["region"]
    pick = (lambda f: f) if "region" in level else (lambda f: f.filter(F.col("region") == "*"))
    latest = (pick(tables.read("forecast_metrics").filter(window)).groupBy(*keys)
              .agg(F.max("dt").alias("dt")))
    chosen = (pick(tables.read("demand_forecast").filter(window)).select(*keys, "dt", "method", "reason")
              .dropDuplicates([*keys, "dt"]))
    return (latest.join(chosen, [*keys, "dt"])
            .filter(backtest_slot(level, every_days) != F.lit(slot_of(dt, every_days)))
            .select(*level, F.col("method").alias("reuse_method"), F.col("reason").alias("reuse_reason"),
                    F.col("dt").cast("string").alias("backtested_on")))
