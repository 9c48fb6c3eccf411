"""Query: the best bundle for one user looking at one item, and why (``bundlecast bundle``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bundlecast.jobs.core.commerce import competitor_reference, item_prices, with_local_day
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.tables import Tables


def generate_bundle(user_id: str, item: str, site: str | None = None, cfg: dict | None = None, spark=None) -> dict:
    """The best bundle for one user looking at one item: the item's related items
    (complementary first, then other non-alternative neighbours), without items the user
    bought in the last ``need.recent_days`` unless the need model expects them again, and
    ranked up where the user's need predictions expect them; then the price that maximises
    expected margin for this user (acceptance at list price from the user's need
    probability of the add-ons, else the anchor's co-purchase rate). Returns a dict with
    items, prices and the reasons."""
    from bundlecast.models.pricing import Acceptance, optimise_price

    cfg = cfg or config()
    if spark is None:
        from bundlecast.jobs.core.spark import get_spark
        spark = get_spark("bundlecast-bundle")
    tables, counts = Tables(spark, cfg), {}
    prices = item_prices(tables, counts)
    anchor = anchor_key(prices, item, site)
    rel, need, recent = user_context(tables, user_id, anchor, int(cfg["need"]["recent_days"]))
    picked, dropped_recent = pick_addons(rel, prices, need, recent, int(cfg["bundles"]["complementary_k"]))
    if picked.empty:
        return {"user_id": user_id, "anchor": anchor, "items": [anchor], "bundle": None,
                "reason": "no related item passes the filters (unpriced, alternatives, or bought recently)"}
    items = [anchor, *picked.b]
    base = float(np.mean([max(p, c or 0.0) for p, c in zip(picked.need_p, picked.co_purchase_rate)]))
    base = max(base, float(cfg["pricing"]["min_bundle_acceptance"]))
    reference = competitor_reference(tables, counts)
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
            "filtered_out_recently_bought": int(dropped_recent)}


def anchor_key(prices: pd.DataFrame, item: str, site: str | None) -> str:
    """``site|item`` of the item the user looks at (the site may be left out when the id is
    unique across sites); a clear error when it is unknown or has no usable price."""
    if site is None:
        matches = [k for k in prices.index if k.split("|", 1)[1] == item]
        if len(matches) != 1:
            where = ": give --site " + " or ".join(m.split("|")[0] for m in matches) if matches else ""
            raise BundlecastError(f"item {item!r}: {'not found (or without price/cost)' if not matches else 'on several sites'}"
                                  f"{where}")
        return matches[0]
    anchor = f"{site}|{item}"
    if anchor not in prices.index:
        raise BundlecastError(f"item {anchor!r} not found, or it has no usable price and cost")
    return anchor


def user_context(tables, user_id: str, anchor: str, recent_days: int) -> tuple[pd.DataFrame, pd.Series, set]:
    """(the anchor's related items, the user's latest need probabilities, the items the
    user bought in the last ``recent_days`` of their orders)."""
    from pyspark.sql import functions as F

    if tables.read("users").filter(F.col("user_id") == user_id).limit(1).count() == 0:
        raise BundlecastError(f"unknown user {user_id!r}")
    a_site, a_item = anchor.split("|", 1)
    rel = (tables.read("item_relationships").filter((F.col("site_a") == a_site) & (F.col("item_a") == a_item))
           .select(F.concat_ws("|", "site_b", "item_b").alias("b"), "relation", "score", "complementary_score",
                   "co_purchase_rate").toPandas())
    need = (tables.read("need_predictions").filter(F.col("user_id") == user_id)
            .select(F.concat_ws("|", "site_id", "item_id").alias("b"), "probability", "dt").toPandas())
    need = need[need.dt == need.dt.max()].set_index("b").probability if len(need) else pd.Series(dtype=float)
    orders = with_local_day(tables, tables.read("orders").filter(F.col("user_id") == user_id), "order_ts") \
        .select("order_id", "day")
    bought = (orders.join(tables.read("order_lines"), "order_id")
              .select(F.concat_ws("|", "site_id", "item_id").alias("b"), "day").toPandas())
    recent = set(bought[bought.day > bought.day.max() - pd.Timedelta(days=recent_days)].b) if len(bought) else set()
    return rel, need, recent


def pick_addons(rel: pd.DataFrame, prices: pd.DataFrame, need: pd.Series, recent: set, k: int) -> tuple[pd.DataFrame, int]:
    """Pure: the ``k`` best add-ons (complementary first, then by need probability and
    score) among priced, non-alternative neighbours not bought recently unless needed
    again; and how many were left out as bought recently."""
    rel = rel[rel.b.isin(prices.index) & (rel.relation != "alternative")]
    dropped_recent = rel.b.isin(recent) & ~rel.b.isin(need.index)
    rel = rel[~dropped_recent].copy()
    rel["need_p"] = rel.b.map(need).fillna(0.0)
    rel["rank_key"] = (rel.relation == "complementary").astype(int) + rel.need_p + rel.score.fillna(0)
    return rel.sort_values(["rank_key", "b"], ascending=[False, True]).head(k), int(dropped_recent.sum())
