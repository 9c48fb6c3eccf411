"""Incentive logic shared by offers (bundles issue) and proactive shipping: how much a user
is offered, of which type, and why. Pure numpy/pandas; every function works on arrays so a
whole run is sized at once.

An incentive is a sum of money-valued factors, each explainable on its own:

* **user value**: a share of the user's predicted 90-day spend (``user_value``), so a
  valuable user is worth a larger incentive, capped;
* **consolidation**: a share of the delivery cost saved when the delivery joins a route that
  already passes nearby (a dedicated trip versus a detour from the nearest planned stop);
* **inventory**: a share of the holding cost of over-stock (stock beyond the forecast
  demand of ``cover_days``), minus a penalty when the forecast says the item will run out
  (never discount what is about to sell out);
* **carbon**: the CO2 the consolidation saves, priced per kg, offered as a carbon-offset
  contribution or added to the incentive.

The sum is capped by the maximum discount and by what keeps the bundle above its minimum
margin. ``choose_type`` picks the offer type from the factors (or the experiment variant's
policy) and ``factors`` gives the per-offer breakdown a marketer reads.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bundlecast.models.offer_types import EARLY_BIRD
from bundlecast.models.offer_types import NAMES as OFFER_TYPES

EARTH_KM = 6371.0


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance (km), broadcasting over arrays."""
    la1, lo1, la2, lo2 = (np.radians(np.asarray(x, dtype=float)) for x in (lat1, lon1, lat2, lon2))
    a = np.sin((la2 - la1) / 2) ** 2 + np.cos(la1) * np.cos(la2) * np.sin((lo2 - lo1) / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def consolidation(user_lat, user_lon, depot_lat, depot_lon, stop_lat, stop_lon, cfg: dict) -> pd.DataFrame:
    """Cheap estimate of joining an existing route, per user: the detour from the nearest
    planned stop (there and back, times ``road_factor``) against a dedicated trip from the
    user's depot. Returns detour_km, dedicated_km, saving (currency) and co2_saved_kg.
    With no planned stops the detour equals the dedicated trip (nothing saved).
    ``bundlecast.jobs.proactive.job.consolidation_potential`` gives the exact marginal cost (cheapest
    feasible insertion into that day's plan); this is the fast estimate used to size
    incentives for every user's offer."""
    road = float(cfg["road_factor"])
    user_lat, user_lon = np.asarray(user_lat, float), np.asarray(user_lon, float)
    dedicated = 2 * road * haversine_km(user_lat, user_lon, depot_lat, depot_lon)
    stop_lat, stop_lon = np.asarray(stop_lat, float), np.asarray(stop_lon, float)
    if len(stop_lat):
        nearest = np.empty(len(user_lat))
        for lo in range(0, len(user_lat), 4096):  # bounded memory: users x stops in blocks
            d = haversine_km(user_lat[lo:lo + 4096, None], user_lon[lo:lo + 4096, None], stop_lat[None], stop_lon[None])
            nearest[lo:lo + 4096] = d.min(axis=1)
        detour = np.minimum(2 * road * nearest, dedicated)
    else:
        detour = dedicated
    saved_km = np.clip(dedicated - detour, 0, None)
    return pd.DataFrame({"detour_km": detour, "dedicated_km": dedicated,
                         "saving": saved_km * float(cfg["cost_per_km"]) + np.where(saved_km > 0, float(cfg["stop_fixed_saving"]), 0.0),
                         "co2_saved_kg": saved_km * float(cfg["co2_kg_per_km"])})


def inventory_factor(available, forecast_units, unit_cost, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(over-stock holding cost over the cover period, stock-out risk 0..1) per item:
    over-stock is stock beyond ``cover_days`` of forecast demand; the risk is the share of
    the forecast demand the stock does not cover."""
    available = np.clip(np.asarray(available, float), 0, None)
    demand = np.clip(np.nan_to_num(np.asarray(forecast_units, float)), 0, None)
    cover = demand * float(cfg["cover_days"]) / float(cfg["forecast_days"])
    over = np.clip(available - cover, 0, None)
    holding = over * np.asarray(unit_cost, float) * float(cfg["holding_cost_rate_per_day"]) * float(cfg["cover_days"])
    risk = np.where(cover > 0, np.clip(1 - available / np.maximum(cover, 1e-9), 0, 1), 0.0)
    return holding, risk


def size(price, cost, value_90d, saving, holding, stockout_risk, co2_kg, cfg: dict,
         level: float = 1.0) -> pd.DataFrame:
    """Incentive value (currency) per offer from its factors, scaled by ``level`` (an
    experiment variant's discount level), capped by ``max_discount`` x price and by the
    minimum margin. Returns one column per factor, the uncapped sum, the value and the cap
    that bound it."""
    price, cost = np.asarray(price, float), np.asarray(cost, float)
    f = pd.DataFrame({
        "user_value": np.minimum(np.nan_to_num(np.asarray(value_90d, float)) * float(cfg["value_share"]),
                                 float(cfg["value_cap"])),
        "consolidation": np.nan_to_num(np.asarray(saving, float)) * float(cfg["consolidation_pass_through"]),
        "inventory": (np.nan_to_num(np.asarray(holding, float)) * float(cfg["holding_pass_through"])
                      - np.asarray(stockout_risk, float) * price * float(cfg["stockout_penalty"])),
        "carbon": np.nan_to_num(np.asarray(co2_kg, float)) * float(cfg["carbon_price_per_kg"]),
    })
    base = price * float(cfg["base_discount"])
    raw = np.clip((base + f.sum(axis=1).to_numpy()) * level, 0, None)
    cap_discount = price * float(cfg["max_discount"])
    cap_margin = np.clip(price - cost - price * float(cfg["min_margin"]), 0, None)
    value = np.minimum(raw, np.minimum(cap_discount, cap_margin))
    f["base"] = base
    f["uncapped"] = raw
    f["value"] = np.round(value, 2)
    f["bound_by"] = np.where(raw <= np.minimum(cap_discount, cap_margin), "factors",
                             np.where(cap_margin < cap_discount, "min_margin", "max_discount"))
    return f


def choose_type(f: pd.DataFrame, proactive_ok, value_decile, price, cfg: dict, policy: str = "auto") -> np.ndarray:
    """Offer type per offer. ``policy`` (an experiment variant's) forces one type, or
    ``auto`` picks from the factors: early-bird when the delivery consolidates and the user
    accepts proactive deliveries, carbon offset when carbon dominates, loyalty points for
    the most valuable users (points cost less than cash), free shipping below the
    free-shipping threshold, otherwise a percentage discount."""
    n = len(f)
    if policy != "auto":
        if policy not in OFFER_TYPES:
            raise ValueError(f"unknown offer type policy {policy!r}: expected auto or one of {OFFER_TYPES}")
        return np.full(n, policy, dtype=object)
    proactive_ok = np.asarray(proactive_ok, bool)
    out = np.full(n, "percent_discount", dtype=object)
    out[np.asarray(price, float) < float(cfg["free_shipping_below"])] = "free_shipping"
    out[np.asarray(value_decile, float) >= int(cfg["loyalty_decile"])] = "loyalty_points"
    out[(f.carbon > f[["user_value", "consolidation"]].max(axis=1)).to_numpy() & (f.carbon > 0).to_numpy()] = "carbon_offset"
    out[proactive_ok & (f.consolidation > f.user_value).to_numpy() & (f.consolidation > 0).to_numpy()] = EARLY_BIRD
    return out


def factors_json(f: pd.DataFrame) -> list[str]:
    """Per-offer JSON breakdown (currency, rounded) for the offers table."""
    cols = ["base", "user_value", "consolidation", "inventory", "carbon", "uncapped", "value"]
    rounded = f[cols].round(2)
    return [json.dumps({**r, "bound_by": b}) for r, b in zip(rounded.to_dict("records"), f.bound_by)]
