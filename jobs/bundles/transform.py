"""Pure transforms of the bundles step: need bundles per user (Spark) and priced product
bundles per anchor (pandas)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bundlecast.jobs.core.commerce import stable_id


def need_bundles(preds, priced, user_warehouse, stock, s: dict, dt: str, run_id: str, counts: dict):
    """The ``need_bundles`` rows of run date ``dt`` (a Spark DataFrame) from the run date's
    need predictions, the usable prices (``key``, price, cost, volume_l, weight_kg), each
    user's warehouse and the available stock per (warehouse, key); ``s``: ``bundles.need``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    preds = preds.withColumn("key", F.concat_ws("|", "site_id", "item_id"))
    joined = preds.join(F.broadcast(priced), "key", "left")
    counts["need_items_without_price"] = int(joined.filter(F.col("price").isNull()
                                                           & (F.col("probability") >= s["min_probability"])).count())
    w = Window.partitionBy("user_id").orderBy(F.desc("probability"), "key")
    top = (joined.filter(F.col("price").isNotNull() & (F.col("probability") >= float(s["min_probability"])))
           .withColumn("rk", F.row_number().over(w)).filter(F.col("rk") <= int(s["max_items"]))
           .withColumn("top_p", F.max("probability").over(Window.partitionBy("user_id")))
           .withColumn("main", F.col("probability") >= F.col("top_p") * float(s["main_share"])))
    top = (top.join(user_warehouse, "user_id", "left")
           .join(stock, ["warehouse_id", "key"], "left").na.fill(0, subset=["available"]))
    srt = F.array_sort(F.collect_list(F.struct(F.col("rk"), F.col("key"), F.col("probability"))))
    out = top.groupBy("user_id").agg(
        srt.alias("_items"),
        F.sort_array(F.collect_list(F.when(F.col("main"), F.col("key")))).alias("main_items"),
        F.min(F.when(F.col("main"), F.col("need_date"))).alias("need_date"),
        F.exp(F.sum(F.when(F.col("main"), F.log("probability")).otherwise(0.0))).alias("confidence"),
        F.sum("price").alias("list_price"), F.sum("cost").alias("cost"),
        F.sum("volume_l").alias("volume_l"), F.sum("weight_kg").alias("weight_kg"),
        F.first("warehouse_id", ignorenulls=True).alias("warehouse_id"),
        F.sort_array(F.collect_list(F.when(F.col("available") < 1, F.col("key")))).alias("short_items"))
    return out.select(
        F.concat(F.lit("NB"), F.substring(F.sha1(F.concat_ws("|", "user_id", F.lit(dt))), 1, 16)).alias("bundle_id"),
        "user_id", F.col("_items.key").alias("items"), "main_items", F.col("_items.probability").alias("probabilities"),
        "need_date", "confidence", "list_price", "cost", "volume_l", "weight_kg", "warehouse_id",
        (F.col("warehouse_id").isNotNull() & (F.size("short_items") == 0)).alias("stock_ok"), "short_items",
        F.lit(dt).cast("date").alias("dt"), F.lit(run_id).alias("run_id"))


def product_bundles(rel: pd.DataFrame, prices: pd.DataFrame, network_stock: pd.Series, reference: pd.Series,
                    cfg: dict, counts: dict) -> pd.DataFrame:
    """Complementary, alternative and value bundles per anchor, priced. One row per bundle."""
    from bundlecast.models.pricing import Acceptance, optimise_price

    b = cfg["bundles"]
    ok = rel.a.isin(prices.index) & rel.b.isin(prices.index)
    counts["relationships_skipped_unpriced"] = int((~ok).sum())
    # Ordered by the score at 9 decimals, then the item: last-bit differences between two runs
    # (Spark sums in another order) never reorder near-ties.
    rel = (rel[ok & (rel.score.fillna(0) >= 0)].assign(_order=lambda r: r.score.round(9))
           .sort_values(["a", "_order", "b"], ascending=[True, False, True]).drop(columns="_order"))
    if b.get("max_anchors"):
        keep = rel.a.value_counts().head(int(b["max_anchors"])).index
        rel = rel[rel.a.isin(keep)]
    floor = float(cfg["pricing"]["min_bundle_acceptance"])
    built = []

    def take(frame, col, k, kind, base_of, why, threshold=float(b["min_score"])):
        picked = frame[frame[col] >= threshold].groupby("a", sort=False).head(k)
        grouped = picked.groupby("a", sort=False)
        for anchor, g in grouped:
            built.append((kind, anchor, [anchor, *g.b.tolist()], base_of(g), why(g)))

    comp = rel[rel.relation == "complementary"]
    take(comp, "complementary_score", int(b["complementary_k"]), "complementary",
         lambda g: max(floor, float(g.co_purchase_rate.fillna(0).mean())),
         lambda g: f"used together: complementary score {g.complementary_score.mean():.2f}, "
                   f"co-purchase rate {g.co_purchase_rate.fillna(0).mean():.1%}")
    alt = rel[rel.relation == "alternative"]
    take(alt, "alternative_score", int(b["alternative_k"]), "alternative",
         lambda g: max(floor, float((g.view_one_bought_support / g.co_view_support.clip(lower=1)).fillna(0).mean())),
         lambda g: f"same need, other price points: alternative score {g.alternative_score.mean():.2f}")
    # Value: the anchor's best non-alternative neighbours by combined score (a fitted chance
    # of a later co-purchase, so no absolute threshold), at least two of them.
    val = rel[(rel.relation != "alternative") & (rel.score.fillna(0) > 0)].copy()
    val["_s"] = val.score
    val = val[val.groupby("a").b.transform("size") >= 2]
    take(val, "_s", int(b["value_k"]), "value",
         lambda g: max(floor, float(g.co_purchase_rate.fillna(0).mean())),
         lambda g: f"often bought with the anchor: combined score {g._s.mean():.2f}; sold at a bundle price",
         threshold=0.0)
    if not built:
        return pd.DataFrame()
    out = pd.DataFrame(built, columns=["kind", "anchor", "items", "base", "why"])
    out = out[out["items"].map(len) >= 2]
    out["bundle_id"] = [stable_id("PB", k, *sorted(i)) for k, i in zip(out.kind, out["items"])]
    out = out.drop_duplicates("bundle_id").reset_index(drop=True)
    price, cost = prices.price, prices.cost
    alt_only = out.kind == "alternative"
    out["list_price"] = np.where(alt_only, out.anchor.map(price), out["items"].map(lambda i: float(price[i].sum())))
    out["cost"] = np.where(alt_only, out.anchor.map(cost), out["items"].map(lambda i: float(cost[i].sum())))
    ref_of = lambda k: float(min(price[k], reference.get(k, np.inf)))  # noqa: E731
    out["competitor_price"] = np.where(alt_only, out.anchor.map(ref_of),
                                       out["items"].map(lambda i: sum(ref_of(k) for k in i)))
    out["sites"] = out["items"].map(lambda i: sorted({k.split("|", 1)[0] for k in i}))
    out["stock_units"] = np.where(alt_only, out.anchor.map(lambda k: int(network_stock.get(k, 0))),
                                  out["items"].map(lambda i: int(min(network_stock.get(k, 0) for k in i))))
    acc = Acceptance(float(cfg["pricing"]["prior_beta"]), float(cfg["pricing"]["gamma"]), "prior")
    priced = optimise_price(out.list_price, out.cost, out.base, out.competitor_price, acc, cfg["pricing"])
    out = pd.concat([out, priced], axis=1)
    bad = out.bundle_price.isna()
    counts["bundles_skipped_no_margin"] = int(bad.sum())
    out = out[~bad].copy()
    out["expected_acceptance"] = out.acceptance
    out["stock_ok"] = out.stock_units > 0
    out["reason"] = out.why + "; " + out.reason
    for kind in ("complementary", "alternative", "value"):
        counts[f"bundles_{kind}"] = int((out.kind == kind).sum())
    return out.reset_index(drop=True)
