"""Offer types: the one table of definitions every step reads.

Incentive sizing (``models.incentives``) chooses among them, offers price and cost them,
proactive shipping gives the early-bird one, and the A/B analysis (``jobs/experiments``)
costs redemptions with :func:`cost_beyond_revenue_column`, built from this same table, so
a new type or a changed rule is made here once.

Two facts decide the money: whether the type **lowers the price** the user pays (then the
incentive is already inside the order's revenue), and what share of its face value a
redemption **costs the shop** (loyalty points cost ``loyalty_cost_share``, everything else
its face value).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OfferType:
    name: str
    lowers_price: bool  # the user pays less: the incentive is already in the order's revenue
    loyalty: bool       # points: a redemption costs loyalty_cost_share of the face value
    summary: str


OFFER_TYPES: dict[str, OfferType] = {t.name: t for t in (
    OfferType("percent_discount", True, False, "a percentage off the bundle price"),
    OfferType("fixed_discount", True, False, "an amount off the bundle price"),
    OfferType("free_shipping", False, False, "delivery paid by the shop"),
    OfferType("instant_rebate", True, False, "an amount off at checkout"),
    OfferType("loyalty_points", False, True, "points worth the incentive, redeemed later"),
    OfferType("early_bird", True, False, "a discount for accepting a consolidated (proactive) delivery"),
    OfferType("premium_shipping", False, False, "a faster delivery at the standard price"),
    OfferType("carbon_offset", False, False, "a carbon-offset contribution worth the CO2 the consolidation saves"),
)}
NAMES = list(OFFER_TYPES)
PRICE_TYPES = frozenset(n for n, t in OFFER_TYPES.items() if t.lowers_price)
LOYALTY_TYPES = frozenset(n for n, t in OFFER_TYPES.items() if t.loyalty)
EARLY_BIRD = "early_bird"


def cash_cost(offer_type, value, loyalty_cost_share: float) -> np.ndarray:
    """What an incentive costs the shop if redeemed (per offer, arrays)."""
    t = np.asarray(offer_type, dtype=object)
    v = np.asarray(value, float)
    return np.where(np.isin(t, list(LOYALTY_TYPES)), v * float(loyalty_cost_share), v)


def cost_beyond_revenue_column(offer_type, value, loyalty_cost_share: float):
    """The Spark column of what a redeemed incentive costs on top of the order's revenue:
    nothing for price types (the user paid less), the cash cost for the others."""
    from pyspark.sql import functions as F

    return (F.when(offer_type.isin(*sorted(LOYALTY_TYPES)), value * float(loyalty_cost_share))
            .when(offer_type.isin(*sorted(PRICE_TYPES)), F.lit(0.0))
            .otherwise(value))
