"""Pure transforms of the offers step: each candidate's context, incentive, type and
price, and the offer rows."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core.commerce import stable_id
from bundlecast.models import incentives as I
from bundlecast.models import offer_types


def context(cand: pd.DataFrame, inputs: dict, counts: dict, stock: pd.DataFrame, prices: pd.DataFrame,
            incentives: dict) -> pd.DataFrame:
    """Pure: per candidate, user value, opt-in, consolidation with the next day's routes,
    inventory cost and stock-out risk of its items, carbon (``inputs``: ``context_inputs``;
    ``incentives``: the ``incentives`` settings)."""
    users, value, wh, stops = inputs["users"], inputs["value"], inputs["warehouses"], inputs["stops"]
    fc_units = inputs["forecast_units"]
    counts["candidates_without_user_value"] = int((~cand.user_id.isin(value.index)).sum())
    counts["route_stops_next_day"] = len(stops)
    out = cand.copy()
    u = users.reindex(out.user_id)
    out["value_90d"] = out.user_id.map(value.predicted_value).fillna(0.0).to_numpy()
    out["value_decile"] = out.user_id.map(value.value_decile).fillna(5).to_numpy()
    out["opt_in"] = u.proactive_opt_in.fillna(False).to_numpy(bool)
    # Consolidation per user, once.
    per_user = out.drop_duplicates("user_id")[["user_id", "warehouse_id"]].reset_index(drop=True)
    uu = users.reindex(per_user.user_id)
    depot = wh.reindex(per_user.warehouse_id)
    cons = []
    for w, idx in per_user.groupby("warehouse_id").groups.items():
        s = stops[stops.depot_id == w]
        c = I.consolidation(uu.lat.to_numpy()[idx], uu.lon.to_numpy()[idx], depot.lat.to_numpy()[idx],
                            depot.lon.to_numpy()[idx], s.lat, s.lon, incentives)
        c.index = per_user.user_id.to_numpy()[idx]
        cons.append(c)
    cons = pd.concat(cons) if cons else pd.DataFrame(columns=["saving", "co2_saved_kg", "detour_km"])
    missing_loc = uu.lat.isna().to_numpy()
    counts["users_without_location"] = int(missing_loc.sum())
    out["saving"] = out.user_id.map(cons.saving).fillna(0.0).to_numpy()
    out["co2_kg"] = out.user_id.map(cons.co2_saved_kg).fillna(0.0).to_numpy()
    # Inventory: per item at the user's warehouse, against the network forecast share.
    n_wh = max(1, stock.warehouse_id.nunique())
    counts["candidates_without_forecast"] = int((~out["items"].map(lambda i: all(k in fc_units.index for k in i))).sum())
    ex = out[["warehouse_id", "items"]].reset_index().explode("items").rename(columns={"items": "key"})
    ex = ex.merge(stock, on=["warehouse_id", "key"], how="left")
    ex["available"] = ex.available.fillna(0)
    ex["units"] = ex.key.map(fc_units).fillna(0.0) / n_wh
    ex["unit_cost"] = ex.key.map(prices.cost).fillna(0.0)
    ex["holding"], ex["risk"] = I.inventory_factor(ex.available, ex.units, ex.unit_cost, incentives)
    g = ex.groupby("index")
    out["holding"] = g.holding.sum().reindex(out.index).fillna(0.0).to_numpy()
    out["stockout_risk"] = g.risk.max().reindex(out.index).fillna(0.0).to_numpy()
    out["stock_keys"] = [[f"{w}|{k}" for k in items] for w, items in zip(out.warehouse_id, out["items"])]
    return out


def priced_candidates(cand: pd.DataFrame, spec: dict, acc, cfg: dict) -> pd.DataFrame:
    """Pure: each candidate's incentive (sized per experiment variant), offer type, price,
    expected acceptance, profit and spend; only candidates with a positive expected profit
    are kept. ``spec``: the experiment's variants; ``acc``: the fitted price response."""
    cand = cand.copy()
    inc_cfg = {**cfg["incentives"], **cfg["pricing"]}
    parts = []
    for v, g in cand.groupby("variant", sort=True):
        vs = spec.get(v, {})
        f = I.size(g.bundle_price, g.cost, g.value_90d, g.saving, g.holding, g.stockout_risk, g.co2_kg, inc_cfg,
                   float(vs.get("level", 1.0)))
        f.index = g.index
        proactive_ok = g.opt_in.to_numpy() & (g.bundle_kind == "need").to_numpy()
        f["offer_type"] = I.choose_type(f, proactive_ok, g.value_decile, g.bundle_price, inc_cfg, vs.get("policy", "auto"))
        parts.append(f)
    f = pd.concat(parts).reindex(cand.index)
    # Stay within the maximum discount counting the bundle's own discount too.
    room = np.clip(cand.bundle_price - cand.list_price * (1 - float(cfg["pricing"]["max_discount"])), 0, None)
    f["bound_by"] = np.where(f["value"] > room + 1e-9, "max_discount", f.bound_by)
    f["value"] = np.round(np.minimum(f["value"], room), 2)
    cand["offer_type"], cand["incentive_value"] = f.offer_type, f["value"]
    is_price = cand.offer_type.isin(offer_types.PRICE_TYPES).to_numpy()
    cand["price"] = np.where(is_price, cand.bundle_price - cand.incentive_value, cand.bundle_price)
    cash = offer_types.cash_cost(cand.offer_type, cand.incentive_value, cfg["incentives"]["loyalty_cost_share"])
    a = acc(cand.acceptance, cand.incentive_value / cand.bundle_price)
    cand["expected_acceptance"] = a
    cand["profit"] = a * (cand.bundle_price - cand.cost - cash)
    cand["spend"] = a * cash
    cand["factors"] = [json.dumps({**json.loads(js), "acceptance_at_price": round(float(b), 5)})
                       for js, b in zip(I.factors_json(f), cand.acceptance)]
    cand = cand[cand.profit > 0].reset_index(drop=True)
    return cand


def valid_from(dt: str) -> datetime:
    """Offers of run date ``dt`` are valid from the start of the next day."""
    return datetime.combine(date.fromisoformat(dt) + timedelta(days=1), datetime.min.time())


def offer_rows(chosen: pd.DataFrame, exp: dict | None, dt: str, run_id: str, settings: dict,
               now: datetime) -> pd.DataFrame:
    """Pure: the ``offers`` rows of the chosen candidates (``settings``: ``offers``)."""
    start = valid_from(dt)
    return pd.DataFrame({
        "offer_id": [stable_id("OF", u, b, dt) for u, b in zip(chosen.user_id, chosen.bundle_id)],
        "user_id": chosen.user_id, "bundle_id": chosen.bundle_id, "bundle_kind": chosen.bundle_kind,
        "items": chosen["items"], "offer_type": chosen.get("offer_type"), "list_price": chosen.list_price,
        "price": np.round(chosen.get("price", chosen.bundle_price).astype(float), 2),
        "incentive_value": chosen.get("incentive_value"), "incentive_cost": np.round(chosen.get("spend"), 4),
        "expected_acceptance": chosen.get("expected_acceptance"), "expected_profit": np.round(chosen.get("profit"), 4),
        "factors": chosen.get("factors"), "experiment": exp["name"] if exp else None, "variant": chosen.variant,
        "status": "active", "status_reason": None, "valid_from": start,
        "valid_to": start + timedelta(days=int(settings["valid_days"])), "created_by": run_id,
        "updated_at": now, "dt": dt})


def offers_short_of_stock(active: pd.DataFrame, stock: dict, warehouse_of: pd.Series) -> set:
    """Pure: the offers the stock no longer covers, giving stock to the offers with the
    highest expected profit first (``stock``: ``warehouse|site|item`` -> units)."""
    o = active.sort_values("expected_profit", ascending=False)
    used: dict[str, int] = {}
    short = set()
    for r in o.itertuples():
        keys = [f"{warehouse_of.get(r.user_id)}|{k}" for k in r.items]
        if any(stock.get(k, 0) - used.get(k, 0) < 1 for k in keys):
            short.add(r.offer_id)
            continue
        for k in keys:
            used[k] = used.get(k, 0) + 1
    return short


def recheck_offers(offers: pd.DataFrame, active: pd.Series, short: set, bought_by: dict, prices: pd.DataFrame,
                   reference: pd.Series, cfg: dict, now, c) -> int:
    """Pure: withdraw (stock gone, items bought since, competitor below our margin floor)
    or re-price (competitor below our price) the active offers, in place; returns how many
    changed and counts them in ``c``."""
    min_margin, drop = float(cfg["pricing"]["min_margin"]), float(cfg["offers"]["reprice_price_drop"])
    changed = 0
    for i in offers.index[active]:
        r = offers.loc[i]
        reason = None
        if r.offer_id in short:
            reason, status = "stock no longer covers the offer", "withdrawn"
        elif set(r["items"]) & bought_by.get(r.user_id, set()):
            reason, status = "user bought the items since", "withdrawn"
        else:
            ref = sum(min(prices.price.get(k, np.inf), reference.get(k, np.inf)) for k in r["items"])
            if np.isfinite(ref) and ref < r.price * (1 - drop):
                cost = float(prices.cost.reindex(r["items"]).sum())
                floor = cost / (1 - min_margin)
                if ref >= floor:
                    offers.loc[i, "price"] = round(float(ref), 2)
                    reason, status = f"competitor price {ref:.2f} below ours", "repriced"
                else:
                    reason, status = f"competitor price {ref:.2f} below our margin floor {floor:.2f}", "withdrawn"
        if reason and (r.status != status or r.status_reason != reason):
            offers.loc[i, ["status", "status_reason", "updated_at"]] = [status, reason, now]
            changed += 1
            c[f"offers_{status}"] = c.get(f"offers_{status}", 0) + 1
    return changed
