"""Bundles: need bundles per user and product bundles (complementary, alternative, value),
priced for expected margin.

    spark-submit jobs/bundles.py --date 2026-11-20
    bundlecast bundles --date 2026-11-20
    bundlecast bundle USER ITEM [--site S]      (the best bundle for one user looking at one item)

* ``need_bundles``: per user, the items of ``need_predictions`` with probability >=
  ``bundles.need.min_probability`` (at most ``max_items``), the main items (probability >=
  ``main_share`` x the top one), confidence = the chance the user needs all main items,
  the earliest need date, and whether the user's region warehouse covers every item.
* ``bundles``: per anchor item, from ``item_relationships``: complementary (anchor + its
  best complementary neighbours), alternative (anchor + its best alternatives: a choice at
  other price points), value (anchor + its best non-alternative neighbours at a bundle
  price). Acceptance at list price comes from the data (the anchor's co-purchase rates;
  for alternatives the share of co-viewed units that ended in a purchase); the price is the
  point of a grid that maximises expected margin under the minimum margin and the maximum
  discount, penalised above the competitor reference (``models.pricing``).

Bad input never makes a wrong bundle: items without a price or cost, or whose cost is not
below the price, are left out and counted; competitor prices <= 0 are ignored and counted;
bundles with no price that keeps the minimum margin are not written and counted. The counts
go to ``offer_runs`` (step ``bundles``).
"""
from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.delta import catalog_frame, read_table, replace_rows
from bundlecast.jobs.core.errors import BundlecastError


@dataclass
class StepSummary:
    """What a bundle or offer step built and skipped (``offer_runs``)."""
    dt: str
    run_id: str
    counts: Counter = field(default_factory=Counter)  # a missing count reads as 0: counts[k] += n
    figures: dict[str, float] = field(default_factory=dict)
    notes: str = ""


def stable_id(prefix: str, *parts) -> str:
    return prefix + hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def item_prices(spark, cfg: dict, counts: dict) -> pd.DataFrame:
    """Items with a usable price and cost, keyed ``site|item`` (see ``usable_prices``)."""
    from pyspark.sql import functions as F

    items = read_table(spark, "items", cfg).select(
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


def available_stock(spark, cfg: dict, subtract_reservations: bool = True):
    """Latest snapshot per warehouse: available = on_hand - reserved (>= 0), per
    (warehouse_id, key), less the active proactive-shipping reservations
    (``inventory_reservations``) unless ``subtract_reservations`` is False."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    inv = read_table(spark, "inventory", cfg)
    latest = Window.partitionBy("warehouse_id")
    stock = (inv.withColumn("_last", F.max("snapshot_ts").over(latest)).filter(F.col("snapshot_ts") == F.col("_last"))
             .groupBy("warehouse_id", F.concat_ws("|", "site_id", "item_id").alias("key"))
             .agg(F.sum(F.greatest(F.col("on_hand") - F.col("reserved"), F.lit(0))).cast("long").alias("available")))
    if not subtract_reservations:
        return stock
    held = (read_table(spark, "inventory_reservations", cfg).filter(F.col("status") == "active")
            .groupBy("warehouse_id", F.concat_ws("|", "site_id", "item_id").alias("key"))
            .agg(F.sum("quantity").alias("_held")))
    return (stock.join(held, ["warehouse_id", "key"], "left")
            .select("warehouse_id", "key", F.greatest(F.col("available") - F.coalesce(F.col("_held"), F.lit(0)), F.lit(0))
                    .cast("long").alias("available")))


def user_warehouses(spark, cfg: dict):
    """user_id -> the warehouse of the user's region (the first by id where a region has
    several); users whose region has none get null (counted where used)."""
    from pyspark.sql import functions as F

    warehouses = read_table(spark, "warehouses", cfg).groupBy("region").agg(F.min("warehouse_id").alias("warehouse_id"))
    return read_table(spark, "users", cfg).select("user_id", "region").join(F.broadcast(warehouses), "region", "left") \
        .select("user_id", "warehouse_id")


def competitor_reference(spark, cfg: dict, counts: dict) -> pd.Series:
    """Cheapest competitor price per item over the last observations (<= 0 ignored, counted)."""
    from pyspark.sql import functions as F

    comp = read_table(spark, "competitor_prices", cfg)
    bad = comp.filter(F.col("price") <= 0).count()
    counts["competitor_prices_ignored_not_positive"] = int(bad)
    last = comp.agg(F.max("observed_ts")).first()[0]
    if last is None:
        return pd.Series(dtype=float)
    recent = comp.filter((F.col("price") > 0) & (F.col("observed_ts") >= F.lit(last) - F.expr("INTERVAL 7 DAYS")))
    pdf = recent.groupBy(F.concat_ws("|", "site_id", "item_id").alias("key")).agg(F.min("price").alias("p")).toPandas()
    return pdf.set_index("key").p


def need_bundles(spark, cfg: dict, dt: str, run_id: str, prices: pd.DataFrame, counts: dict):
    """The ``need_bundles`` rows of run date ``dt`` (a Spark DataFrame)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    s = cfg["bundles"]["need"]
    preds = (read_table(spark, "need_predictions", cfg).filter(F.col("dt") == F.lit(dt).cast("date"))
             .withColumn("key", F.concat_ws("|", "site_id", "item_id")))
    priced = spark.createDataFrame(prices.reset_index()[["key", "price", "cost", "volume_l", "weight_kg"]])
    joined = preds.join(F.broadcast(priced), "key", "left")
    counts["need_items_without_price"] = int(joined.filter(F.col("price").isNull()
                                                           & (F.col("probability") >= s["min_probability"])).count())
    w = Window.partitionBy("user_id").orderBy(F.desc("probability"), "key")
    top = (joined.filter(F.col("price").isNotNull() & (F.col("probability") >= float(s["min_probability"])))
           .withColumn("rk", F.row_number().over(w)).filter(F.col("rk") <= int(s["max_items"]))
           .withColumn("top_p", F.max("probability").over(Window.partitionBy("user_id")))
           .withColumn("main", F.col("probability") >= F.col("top_p") * float(s["main_share"])))
    stock = available_stock(spark, cfg)
    top = (top.join(user_warehouses(spark, cfg), "user_id", "left")
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


def relationship_frame(spark, cfg: dict) -> pd.DataFrame:
    from pyspark.sql import functions as F

    return read_table(spark, "item_relationships", cfg).select(
        F.concat_ws("|", "site_a", "item_a").alias("a"), F.concat_ws("|", "site_b", "item_b").alias("b"),
        "relation", "score", "complementary_score", "alternative_score", "co_purchase_rate",
        "co_view_support", "view_one_bought_support", "rank").toPandas()


def product_bundles(rel: pd.DataFrame, prices: pd.DataFrame, network_stock: pd.Series, reference: pd.Series,
                    cfg: dict, counts: dict) -> pd.DataFrame:
    """Complementary, alternative and value bundles per anchor, priced. One row per bundle."""
    from bundlecast.models.pricing import Acceptance, optimise_price

    b = cfg["bundles"]
    ok = rel.a.isin(prices.index) & rel.b.isin(prices.index)
    counts["relationships_skipped_unpriced"] = int((~ok).sum())
    rel = rel[ok & (rel.score.fillna(0) >= 0)].sort_values(["a", "score", "b"], ascending=[True, False, True])
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


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print) -> StepSummary:
    from pyspark.sql import functions as F

    cfg = cfg or config()
    summary = StepSummary(dt, run_id or f"bundles-{dt}-{uuid.uuid4().hex[:8]}")
    t0 = time.time()
    c = summary.counts
    prices = item_prices(spark, cfg, c)
    nb = need_bundles(spark, cfg, dt, summary.run_id, prices, c).cache()
    replace_rows(spark, nb, "need_bundles", f"dt = DATE'{dt}'", cfg)
    agg = nb.agg(F.count("*"), F.sum(F.col("stock_ok").cast("int")), F.avg("confidence")).first()
    c["need_bundles"], c["need_bundles_stock_ok"] = int(agg[0]), int(agg[1] or 0)
    summary.figures["need_bundle_mean_confidence"] = float(agg[2] or 0.0)
    nb.unpersist()
    network = available_stock(spark, cfg).groupBy("key").agg(F.sum("available").alias("available")).toPandas()
    network = network.set_index("key").available
    reference = competitor_reference(spark, cfg, c)
    rel = relationship_frame(spark, cfg)
    c["relationships_read"] = len(rel)
    pb = product_bundles(rel, prices, network, reference, cfg, c)
    pb["dt"], pb["run_id"] = dt, summary.run_id
    frame = catalog_frame(spark, "bundles", pb) if len(pb) else spark.createDataFrame([], _ddl("bundles"))
    replace_rows(spark, frame, "bundles", f"dt = DATE'{dt}'", cfg)
    summary.figures["seconds"] = round(time.time() - t0, 1)
    summary.notes = ("product bundle acceptance: co-purchase rates of the anchor at list price, price response from "
                     "the pricing prior (offers refit it once redemptions exist)")
    record(spark, cfg, dt, "bundles", summary)
    progress(render(summary))
    return summary


def _ddl(name: str) -> str:
    from bundlecast.jobs.core import catalog
    return catalog.table(name).ddl()


def record(spark, cfg: dict, dt: str, step: str, summary) -> None:
    """One ``offer_runs`` row per date and step (replaced on re-run)."""
    row = {"dt": dt, "step": step, "run_id": summary.run_id, "counts": {k: int(v) for k, v in summary.counts.items()},
           "figures": {k: float(v) for k, v in summary.figures.items()}, "notes": summary.notes,
           "finished_at": datetime.now(timezone.utc).replace(tzinfo=None)}
    replace_rows(spark, catalog_frame(spark, "offer_runs", [row]), "offer_runs",
                 f"dt = DATE'{dt}' AND step = '{step}'", cfg)


def render(s: StepSummary) -> str:
    c = s.counts
    skipped = {k: v for k, v in c.items() if ("skipped" in k or "without" in k or "ignored" in k or "negative" in k) and v}
    return (f"bundles {s.run_id} for {s.dt}: {c.get('need_bundles', 0):,} need bundles "
            f"({c.get('need_bundles_stock_ok', 0):,} covered by stock, mean confidence "
            f"{s.figures.get('need_bundle_mean_confidence', 0):.2f}); product bundles: "
            f"{c.get('bundles_complementary', 0):,} complementary, {c.get('bundles_alternative', 0):,} alternative, "
            f"{c.get('bundles_value', 0):,} value; {s.figures.get('seconds', 0):.0f} s"
            + (f"\n  skipped: {', '.join(f'{k} {v:,}' for k, v in skipped.items())}" if skipped else ""))


def generate_bundle(user_id: str, item: str, site: str | None = None, cfg: dict | None = None, spark=None) -> dict:
    """The best bundle for one user looking at one item: the item's related items
    (complementary first, then other non-alternative neighbours), without items the user
    bought in the last ``need.recent_days`` unless the need model expects them again, and
    ranked up where the user's need predictions expect them; then the price that maximises
    expected margin for this user (acceptance at list price from the user's need
    probability of the add-ons, else the anchor's co-purchase rate). Returns a dict with
    items, prices and the reasons."""
    from bundlecast.models.pricing import Acceptance, optimise_price
    from pyspark.sql import functions as F

    cfg = cfg or config()
    if spark is None:
        from bundlecast.jobs.core.spark import get_spark
        spark = get_spark("bundlecast-bundle")
    counts: dict = {}
    prices = item_prices(spark, cfg, counts)
    if site is None:
        matches = [k for k in prices.index if k.split("|", 1)[1] == item]
        if len(matches) != 1:
            raise BundlecastError(f"item {item!r}: {'not found (or without price/cost)' if not matches else 'on several sites'}"
                                  f"{'' if not matches else ': give --site ' + ' or '.join(m.split('|')[0] for m in matches)}")
        anchor = matches[0]
    else:
        anchor = f"{site}|{item}"
        if anchor not in prices.index:
            raise BundlecastError(f"item {anchor!r} not found, or it has no usable price and cost")
    if read_table(spark, "users", cfg).filter(F.col("user_id") == user_id).limit(1).count() == 0:
        raise BundlecastError(f"unknown user {user_id!r}")
    a_site, a_item = anchor.split("|", 1)
    rel = (read_table(spark, "item_relationships", cfg).filter((F.col("site_a") == a_site) & (F.col("item_a") == a_item))
           .select(F.concat_ws("|", "site_b", "item_b").alias("b"), "relation", "score", "complementary_score",
                   "co_purchase_rate").toPandas())
    need = (read_table(spark, "need_predictions", cfg).filter(F.col("user_id") == user_id)
            .select(F.concat_ws("|", "site_id", "item_id").alias("b"), "probability", "dt").toPandas())
    need = need[need.dt == need.dt.max()].set_index("b").probability if len(need) else pd.Series(dtype=float)
    recent_days = int(cfg["need"]["recent_days"])
    orders = (read_table(spark, "orders", cfg).filter(F.col("user_id") == user_id)
              .select("order_id", F.to_date("order_ts").alias("day")))
    bought = (orders.join(read_table(spark, "order_lines", cfg), "order_id")
              .select(F.concat_ws("|", "site_id", "item_id").alias("b"), "day").toPandas())
    if len(bought):
        last_day = bought.day.max()
        recent = set(bought[bought.day > last_day - pd.Timedelta(days=recent_days)].b)
    else:
        recent = set()
    rel = rel[rel.b.isin(prices.index) & (rel.relation != "alternative")]
    dropped_recent = rel.b.isin(recent) & ~rel.b.isin(need.index)
    rel = rel[~dropped_recent].copy()
    rel["need_p"] = rel.b.map(need).fillna(0.0)
    rel["rank_key"] = (rel.relation == "complementary").astype(int) + rel.need_p + rel.score.fillna(0)
    picked = rel.sort_values(["rank_key", "b"], ascending=[False, True]).head(int(cfg["bundles"]["complementary_k"]))
    if picked.empty:
        return {"user_id": user_id, "anchor": anchor, "items": [anchor], "bundle": None,
                "reason": "no related item passes the filters (unpriced, alternatives, or bought recently)"}
    items = [anchor, *picked.b]
    base = float(np.mean([max(p, c or 0.0) for p, c in zip(picked.need_p, picked.co_purchase_rate)]))
    base = max(base, float(cfg["pricing"]["min_bundle_acceptance"]))
    reference = competitor_reference(spark, cfg, counts)
    ref = sum(min(prices.price[k], reference.get(k, np.inf)) for k in items)
    lp, cost = float(prices.price[items].sum()), float(prices.cost[items].sum())
    acc = Acceptance(float(cfg["pricing"]["prior_beta"]), float(cfg["pricing"]["gamma"]), "prior")
    p = optimise_price([lp], [cost], [base], [ref], acc, cfg["pricing"]).iloc[0]
    why = [f"{r.b}: {r.relation}, score {r.score:.2f}" + (f", you are likely to need it (p={r.need_p:.2f})" if r.need_p else "")
           for r in picked.itertuples()]
    return {"user_id": user_id, "anchor": anchor, "items": items, "list_price": round(lp, 2),
            "bundle_price": None if pd.isna(p.bundle_price) else float(p.bundle_price),
            "discount_share": None if pd.isna(p.discount_share) else float(p.discount_share),
            "expected_acceptance": None if pd.isna(p.acceptance) else round(float(p.acceptance), 4),
            "expected_margin": None if pd.isna(p.expected_margin) else round(float(p.expected_margin), 2),
            "competitor_reference": round(float(ref), 2), "price_reason": p.reason, "why": why,
            "filtered_out_recently_bought": int(dropped_recent.sum())}
