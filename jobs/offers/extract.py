"""Reads of the offers step: candidates (need and product bundles per user), what the
incentives depend on, and past offers with their redemptions."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core.commerce import user_warehouses
from bundlecast.jobs.core.tables import Tables


def to_pandas(df) -> pd.DataFrame:
    return df.toPandas()


def candidates(spark, cfg: dict, dt: str, counts: dict) -> pd.DataFrame:
    """One row per (user, candidate bundle) with items (warehouse-keyed for the stock
    constraint), list price, bundle price, cost and acceptance at the bundle price."""
    from pyspark.sql import functions as F

    day = F.lit(dt).cast("date")
    nb = to_pandas(Tables(spark, cfg).read("need_bundles").filter(F.col("dt") == day)
             .select("user_id", "bundle_id", "items", "list_price", "cost", "confidence", "warehouse_id"))
    pb = to_pandas(Tables(spark, cfg).read("bundles").filter((F.col("dt") == day) & F.col("kind").isin("complementary", "value"))
             .select("bundle_id", "kind", "anchor", "items", "list_price", "bundle_price", "cost", "expected_acceptance"))
    need = to_pandas(Tables(spark, cfg).read("need_predictions").filter(F.col("dt") == day)
               .select("user_id", F.concat_ws("|", "site_id", "item_id").alias("anchor"), "probability"))
    counts["need_bundles_read"] = len(nb)
    rows = [pd.DataFrame({"user_id": nb.user_id, "bundle_id": nb.bundle_id, "bundle_kind": "need", "items": nb["items"],
                          "list_price": nb.list_price, "bundle_price": nb.list_price, "cost": nb.cost,
                          "acceptance": nb.confidence, "warehouse_id": nb.warehouse_id})]
    if len(pb) and len(need):
        joined = need.merge(pb, on="anchor")
        wh = to_pandas(user_warehouses(Tables(spark, cfg))).set_index("user_id").warehouse_id
        rows.append(pd.DataFrame({"user_id": joined.user_id, "bundle_id": joined.bundle_id, "bundle_kind": joined.kind,
                                  "items": joined["items"], "list_price": joined.list_price,
                                  "bundle_price": joined.bundle_price, "cost": joined.cost,
                                  "acceptance": joined.probability * joined.expected_acceptance,
                                  "warehouse_id": joined.user_id.map(wh)}))
    cand = pd.concat(rows, ignore_index=True)
    no_wh = cand.warehouse_id.isna()
    counts["candidates_without_warehouse"] = int(no_wh.sum())
    cand = cand[~no_wh & (cand.acceptance > 0)]
    k = int(cfg["offers"]["max_candidates_per_user"])
    cand = (cand.assign(_v=cand.acceptance * (cand.bundle_price - cand.cost))
            .sort_values(["user_id", "_v", "bundle_id"], ascending=[True, False, True])
            .groupby("user_id", sort=False).head(k).drop(columns="_v").reset_index(drop=True))
    counts["candidates"] = len(cand)
    counts["candidate_users"] = int(cand.user_id.nunique())
    # Users with no history have no need predictions, hence no candidates: counted, no offer.
    counts["users_without_candidates"] = int(Tables(spark, cfg).read("users").count()) - counts["candidate_users"]
    return cand


def context_inputs(tables, dt: str) -> dict[str, pd.DataFrame]:
    """What ``context`` needs, read once (pandas): users with location and opt-in, the
    latest user value on or before ``dt``, warehouses, the next day's planned stops, and
    the latest forecast's units per item."""
    from pyspark.sql import functions as F

    users = to_pandas(tables.read("users").select("user_id", "lat", "lon", "region", "proactive_opt_in")).set_index("user_id")
    values, last = tables.latest("user_value", dt)
    value = (to_pandas(values.select("user_id", "predicted_value", "value_decile")).set_index("user_id")
             if last is not None else pd.DataFrame(columns=["predicted_value", "value_decile"]))
    wh = to_pandas(tables.read("warehouses").select("warehouse_id", "lat", "lon")).set_index("warehouse_id")
    next_day = date.fromisoformat(dt) + timedelta(days=1)
    stops = to_pandas(tables.read("routes").filter(F.col("route_date") == F.lit(next_day)).select("depot_id", "lat", "lon"))
    fc, fc_last = tables.latest("demand_forecast", dt)
    fc_units = (to_pandas(fc.groupBy(F.concat_ws("|", "site_id", "item_id").alias("key"))
                    .agg(F.sum("yhat").alias("units"))).set_index("key").units if fc_last is not None else pd.Series(dtype=float))
    return {"users": users, "value": value, "warehouses": wh, "stops": stops, "forecast_units": fc_units}


def past_offers(spark, cfg: dict, dt: str) -> pd.DataFrame:
    """Past offers whose validity has ended, with whether they were redeemed."""
    from pyspark.sql import functions as F

    offers = Tables(spark, cfg).read("offers").filter((F.col("dt") < F.lit(dt).cast("date"))
                                                     & (F.col("valid_to") <= F.lit(dt).cast("timestamp")))
    redeemed = (Tables(spark, cfg).read("feedback").filter(F.col("kind") == "offer_redeem")
                .select(F.col("reference_id").alias("offer_id")).distinct().withColumn("redeemed", F.lit(1)))
    h = to_pandas(offers.join(redeemed, "offer_id", "left").select("factors", "incentive_value", "list_price", "redeemed"))
    if h.empty:
        return pd.DataFrame(columns=["discount_share", "redeemed", "base"])
    base = h.factors.map(lambda s: json.loads(s).get("acceptance_at_price", np.nan))
    return pd.DataFrame({"discount_share": h.incentive_value / h.list_price, "redeemed": h.redeemed.fillna(0).astype(int),
                         "base": base}).dropna()
