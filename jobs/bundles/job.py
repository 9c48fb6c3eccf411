"""The bundles step's run (see the package docstring)."""
from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from bundlecast.jobs.bundles.extract import need_bundle_inputs, relationship_frame
from bundlecast.jobs.bundles.transform import need_bundles, product_bundles
from bundlecast.jobs.core.commerce import (
    available_stock,
    competitor_reference,
    item_prices,
)
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables


def build_need_bundles(tables, cfg: dict, dt: str, run_id: str, prices: pd.DataFrame, counts: dict):
    """The run date's need bundles (extract + transform), for this step and the hourly
    proactive run."""
    return need_bundles(**need_bundle_inputs(tables, dt, prices), s=cfg["bundles"]["need"], dt=dt, run_id=run_id,
                        counts=counts)


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print) -> StepRun:
    from pyspark.sql import functions as F

    cfg = cfg or config()
    summary = StepRun("bundles", dt, run_id or f"bundles-{dt}-{uuid.uuid4().hex[:8]}")
    c = summary.counts
    tables = Tables(spark, cfg)
    prices = item_prices(tables, c)
    nb = build_need_bundles(tables, cfg, dt, summary.run_id, prices, c).cache()
    tables.replace("need_bundles", nb, dt=dt)
    agg = nb.agg(F.count("*"), F.sum(F.col("stock_ok").cast("int")), F.avg("confidence")).first()
    c["need_bundles"], c["need_bundles_stock_ok"] = int(agg[0]), int(agg[1] or 0)
    summary.figures["need_bundle_mean_confidence"] = float(agg[2] or 0.0)
    nb.unpersist()
    network = available_stock(tables).groupBy("key").agg(F.sum("available").alias("available")).toPandas()
    network = network.set_index("key").available
    reference = competitor_reference(tables, c)
    rel = relationship_frame(tables)
    c["relationships_read"] = len(rel)
    pb = product_bundles(rel, prices, network, reference, cfg, c)
    pb["dt"], pb["run_id"] = dt, summary.run_id
    tables.replace("bundles", tables.frame("bundles", pb), dt=dt)
    summary.notes.append("product bundle acceptance: co-purchase rates of the anchor at list price, price response from "
                     "the pricing prior (offers refit it once redemptions exist)")
    record(tables, summary.finish())
    progress(render(summary))
    return summary


def render(s: StepRun) -> str:
    c = s.counts
    skipped = {k: v for k, v in c.items() if ("skipped" in k or "without" in k or "ignored" in k or "negative" in k) and v}
    return (f"bundles {s.run_id} for {s.dt}: {c.get('need_bundles', 0):,} need bundles "
            f"({c.get('need_bundles_stock_ok', 0):,} covered by stock, mean confidence "
            f"{s.figures.get('need_bundle_mean_confidence', 0):.2f}); product bundles: "
            f"{c.get('bundles_complementary', 0):,} complementary, {c.get('bundles_alternative', 0):,} alternative, "
            f"{c.get('bundles_value', 0):,} value; {s.seconds:.0f} s"
            + (f"\n  skipped: {', '.join(f'{k} {v:,}' for k, v in skipped.items())}" if skipped else ""))


def generate_bundle(user_id: str, item: str, site: str | None = None, cfg: dict | None = None, spark=None) -> dict:
    """The best bundle for one user looking at one item: the item's related items
    (complementary first, then other non-alternative neighbours), without items the user
    bought in the last ``need.recent_days`` unless the need model expects them again, and
    ranked up where the user's need predictions expect them; then the price that maximises
    expected margin for this user (acceptance at list price from the user's need
    probability of the add-ons, else the anchor's co-purchase rate). Returns a dict with
    items, prices and the reasons."""
    from pyspark.sql import functions as F

    from bundlecast.models.pricing import Acceptance, optimise_price

    cfg = cfg or config()
    if spark is None:
        from bundlecast.jobs.core.spark import get_spark
        spark = get_spark("bundlecast-bundle")
    counts: dict = {}
    prices = item_prices(Tables(spark, cfg), counts)
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
    if Tables(spark, cfg).read("users").filter(F.col("user_id") == user_id).limit(1).count() == 0:
        raise BundlecastError(f"unknown user {user_id!r}")
    a_site, a_item = anchor.split("|", 1)
    rel = (Tables(spark, cfg).read("item_relationships").filter((F.col("site_a") == a_site) & (F.col("item_a") == a_item))
           .select(F.concat_ws("|", "site_b", "item_b").alias("b"), "relation", "score", "complementary_score",
                   "co_purchase_rate").toPandas())
    need = (Tables(spark, cfg).read("need_predictions").filter(F.col("user_id") == user_id)
            .select(F.concat_ws("|", "site_id", "item_id").alias("b"), "probability", "dt").toPandas())
    need = need[need.dt == need.dt.max()].set_index("b").probability if len(need) else pd.Series(dtype=float)
    recent_days = int(cfg["need"]["recent_days"])
    orders = (Tables(spark, cfg).read("orders").filter(F.col("user_id") == user_id)
              .select("order_id", F.to_date("order_ts").alias("day")))
    bought = (orders.join(Tables(spark, cfg).read("order_lines"), "order_id")
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
    reference = competitor_reference(Tables(spark, cfg), counts)
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
