"""The offers step's run (see the package docstring)."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
from bundlecast.jobs.core.commerce import available_stock, competitor_reference, item_prices, stable_id, user_warehouses
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.models import experiments as X
from bundlecast.models import incentives as I
from bundlecast.models import offer_types
from bundlecast.models.pricing import allocate, fit_acceptance


def _pd(df) -> pd.DataFrame:
    return df.toPandas()


def candidates(spark, cfg: dict, dt: str, counts: dict) -> pd.DataFrame:
    """One row per (user, candidate bundle) with items (warehouse-keyed for the stock
    constraint), list price, bundle price, cost and acceptance at the bundle price."""
    from pyspark.sql import functions as F

    day = F.lit(dt).cast("date")
    nb = _pd(Tables(spark, cfg).read("need_bundles").filter(F.col("dt") == day)
             .select("user_id", "bundle_id", "items", "list_price", "cost", "confidence", "warehouse_id"))
    pb = _pd(Tables(spark, cfg).read("bundles").filter((F.col("dt") == day) & F.col("kind").isin("complementary", "value"))
             .select("bundle_id", "kind", "anchor", "items", "list_price", "bundle_price", "cost", "expected_acceptance"))
    need = _pd(Tables(spark, cfg).read("need_predictions").filter(F.col("dt") == day)
               .select("user_id", F.concat_ws("|", "site_id", "item_id").alias("anchor"), "probability"))
    counts["need_bundles_read"] = len(nb)
    rows = [pd.DataFrame({"user_id": nb.user_id, "bundle_id": nb.bundle_id, "bundle_kind": "need", "items": nb["items"],
                          "list_price": nb.list_price, "bundle_price": nb.list_price, "cost": nb.cost,
                          "acceptance": nb.confidence, "warehouse_id": nb.warehouse_id})]
    if len(pb) and len(need):
        joined = need.merge(pb, on="anchor")
        wh = _pd(user_warehouses(Tables(spark, cfg))).set_index("user_id").warehouse_id
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

    users = _pd(tables.read("users").select("user_id", "lat", "lon", "region", "proactive_opt_in")).set_index("user_id")
    values, last = tables.latest("user_value", dt)
    value = (_pd(values.select("user_id", "predicted_value", "value_decile")).set_index("user_id")
             if last is not None else pd.DataFrame(columns=["predicted_value", "value_decile"]))
    wh = _pd(tables.read("warehouses").select("warehouse_id", "lat", "lon")).set_index("warehouse_id")
    next_day = date.fromisoformat(dt) + timedelta(days=1)
    stops = _pd(tables.read("routes").filter(F.col("route_date") == F.lit(next_day)).select("depot_id", "lat", "lon"))
    fc, fc_last = tables.latest("demand_forecast", dt)
    fc_units = (_pd(fc.groupBy(F.concat_ws("|", "site_id", "item_id").alias("key"))
                    .agg(F.sum("yhat").alias("units"))).set_index("key").units if fc_last is not None else pd.Series(dtype=float))
    return {"users": users, "value": value, "warehouses": wh, "stops": stops, "forecast_units": fc_units}


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


def past_offers(spark, cfg: dict, dt: str) -> pd.DataFrame:
    """Past offers whose validity has ended, with whether they were redeemed."""
    from pyspark.sql import functions as F

    offers = Tables(spark, cfg).read("offers").filter((F.col("dt") < F.lit(dt).cast("date"))
                                                     & (F.col("valid_to") <= F.lit(dt).cast("timestamp")))
    redeemed = (Tables(spark, cfg).read("feedback").filter(F.col("kind") == "offer_redeem")
                .select(F.col("reference_id").alias("offer_id")).distinct().withColumn("redeemed", F.lit(1)))
    h = _pd(offers.join(redeemed, "offer_id", "left").select("factors", "incentive_value", "list_price", "redeemed"))
    if h.empty:
        return pd.DataFrame(columns=["discount_share", "redeemed", "base"])
    base = h.factors.map(lambda s: json.loads(s).get("acceptance_at_price", np.nan))
    return pd.DataFrame({"discount_share": h.incentive_value / h.list_price, "redeemed": h.redeemed.fillna(0).astype(int),
                         "base": base}).dropna()


def build(spark, cfg: dict, dt: str, run_id: str, summary: StepRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Offers and exposures of run date ``dt`` (pandas)."""
    c = summary.counts
    tables = Tables(spark, cfg)
    cand = candidates(spark, cfg, dt, c)
    exps = X.active(cfg.get("experiments") or [], dt)
    if len(exps) > 1:
        raise BundlecastError(f"{len(exps)} experiments active on {dt} ({', '.join(e['name'] for e in exps)}): "
                              "offers run one at a time; end one or move its dates")
    exp = exps[0] if exps else None
    users = cand.user_id.drop_duplicates().to_numpy()
    variant = (pd.Series(X.assign(users, exp), index=users) if exp else pd.Series("default", index=users))
    cand["variant"] = cand.user_id.map(variant).to_numpy()
    spec = (exp["variants"] if exp else {})
    in_control = cand.variant.map(lambda v: spec.get(v, {}).get("offer", True) is False).to_numpy(bool)
    c["control_users"] = int(cand[in_control].user_id.nunique())
    cand = cand[~in_control].reset_index(drop=True)
    acc = fit_acceptance(past_offers(spark, cfg, dt), cfg["pricing"])
    stock = _pd(available_stock(tables))
    summary.notes.append(f"price response: {acc.source} (beta {acc.beta:.2f})")
    if len(cand):
        cand = context(cand, context_inputs(tables, dt), c, stock, item_prices(tables, {}), cfg["incentives"])
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
    c["offer_candidates"] = len(cand)
    stock_map = dict(zip(stock.warehouse_id + "|" + stock.key, stock.available.astype(int)))
    if len(cand):
        alloc = allocate(cand.assign(items=cand.stock_keys), stock_map, float(cfg["offers"]["budget"]), cfg["offers"])
        chosen = cand[alloc.chosen].copy()
        summary.figures.update(expected_profit=alloc.objective, greedy_expected_profit=alloc.greedy_objective,
                               upper_bound=alloc.bound, allocation_seconds=alloc.seconds,
                               binding_items=alloc.binding_items, model_candidates=alloc.model_candidates)
        summary.notes.append(f"allocation {alloc.status}")
    else:
        chosen = cand
    valid_from = datetime.combine(date.fromisoformat(dt) + timedelta(days=1), datetime.min.time())
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    offers = pd.DataFrame({
        "offer_id": [stable_id("OF", u, b, dt) for u, b in zip(chosen.user_id, chosen.bundle_id)],
        "user_id": chosen.user_id, "bundle_id": chosen.bundle_id, "bundle_kind": chosen.bundle_kind,
        "items": chosen["items"], "offer_type": chosen.get("offer_type"), "list_price": chosen.list_price,
        "price": np.round(chosen.get("price", chosen.bundle_price).astype(float), 2),
        "incentive_value": chosen.get("incentive_value"), "incentive_cost": np.round(chosen.get("spend"), 4),
        "expected_acceptance": chosen.get("expected_acceptance"), "expected_profit": np.round(chosen.get("profit"), 4),
        "factors": chosen.get("factors"), "experiment": exp["name"] if exp else None, "variant": chosen.variant,
        "status": "active", "status_reason": None, "valid_from": valid_from,
        "valid_to": valid_from + timedelta(days=int(cfg["offers"]["valid_days"])), "created_by": run_id,
        "updated_at": now, "dt": dt})
    summary.figures["budget"] = float(cfg["offers"]["budget"])
    summary.figures["incentive_cost"] = float(offers.incentive_cost.sum()) if len(offers) else 0.0
    c["offers"] = len(offers)
    for t, n in offers.offer_type.value_counts().items():
        c[f"offers_{t}"] = int(n)
    offer_of = offers.set_index("user_id").offer_id
    exposures = pd.DataFrame({"experiment": exp["name"] if exp else "none", "user_id": users,
                              "variant": variant.reindex(users).to_numpy(),
                              "offer_id": pd.Series(users).map(offer_of).to_numpy(), "exposed_at": valid_from,
                              "dt": dt, "run_id": run_id})
    if not exp:
        exposures = exposures.iloc[0:0]
    return offers, exposures


def run(spark, dt: str, mode: str = "nightly", run_id: str | None = None, cfg: dict | None = None,
        progress=print) -> StepRun:
    cfg = cfg or config()
    if mode not in ("nightly", "reprice"):
        raise BundlecastError(f"unknown offers mode {mode!r}: nightly or reprice")
    summary = StepRun("offers", dt, run_id or f"offers-{dt}-{uuid.uuid4().hex[:8]}", mode)
    tables = Tables(spark, cfg)
    if mode == "reprice":
        reprice(spark, cfg, dt, summary)
    else:
        offers, exposures = build(spark, cfg, dt, summary.run_id, summary)
        tables.replace("offers", tables.frame("offers", offers), dt=dt)
        tables.replace("experiment_exposures", tables.frame("experiment_exposures", exposures), dt=dt)
    record(tables, summary.finish())
    progress(render(summary))
    return summary


def reprice(spark, cfg: dict, dt: str, summary: StepRun) -> None:
    """Withdraw or re-price the active offers of the latest nightly run on or before ``dt``."""
    from pyspark.sql import functions as F

    c = summary.counts
    tables = Tables(spark, cfg)
    latest, last = tables.latest("offers", dt)
    if last is None:
        summary.notes.append("no offers yet")
        return
    offers = _pd(latest)
    active = offers.status != "withdrawn"
    c["offers_checked"] = int(active.sum())
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    stock = _pd(available_stock(tables))
    stock_map = dict(zip(stock.warehouse_id + "|" + stock.key, stock.available.astype(int)))
    wh = _pd(user_warehouses(Tables(spark, cfg))).set_index("user_id").warehouse_id
    # Stock: offers on each warehouse item, in order of expected profit, while it lasts.
    o = offers[active].sort_values("expected_profit", ascending=False)
    used: dict[str, int] = {}
    short = set()
    for r in o.itertuples():
        keys = [f"{wh.get(r.user_id)}|{k}" for k in r.items]
        if any(stock_map.get(k, 0) - used.get(k, 0) < 1 for k in keys):
            short.add(r.offer_id)
            continue
        for k in keys:
            used[k] = used.get(k, 0) + 1
    # Behaviour: the user bought any of the items after the offer was made.
    lines = (Tables(spark, cfg).read("orders").filter(F.col("order_ts") > F.lit(last).cast("timestamp") + F.expr("INTERVAL 1 DAY"))
             .filter(F.col("status") != "cancelled").select("order_id", "user_id")
             .join(Tables(spark, cfg).read("order_lines"), "order_id")
             .select("user_id", F.concat_ws("|", "site_id", "item_id").alias("key")))
    bought = _pd(lines.join(spark.createDataFrame(offers[["user_id"]].drop_duplicates()), "user_id"))
    bought_by = bought.groupby("user_id").key.agg(set).to_dict() if len(bought) else {}
    reference = competitor_reference(Tables(spark, cfg), c)
    prices = item_prices(Tables(spark, cfg), {})
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
    c["offers_changed"] = changed
    summary.notes.append(f"checked the offers of {last}")
    if changed:
        offers["dt"] = str(last)
        tables.replace("offers", tables.frame("offers", offers), dt=str(last))


def render(s: StepRun) -> str:
    c, f = s.counts, s.figures
    if "offers" not in c:
        return (f"offers reprice {s.run_id} for {s.dt}: {c.get('offers_checked', 0):,} checked, "
                f"{c.get('offers_withdrawn', 0):,} withdrawn, {c.get('offers_repriced', 0):,} re-priced ({'; '.join(s.notes)})")
    types = ", ".join(f"{k[7:]} {v:,}" for k, v in sorted(c.items()) if k.startswith("offers_"))
    return (f"offers {s.run_id} for {s.dt}: {c['offers']:,} offers to {c.get('candidate_users', 0):,} candidate users "
            f"({c.get('control_users', 0):,} in control, no offer); {types}\n"
            f"  expected profit {f.get('expected_profit', 0):,.2f} (greedy baseline {f.get('greedy_expected_profit', 0):,.2f}, "
            f"upper bound {f.get('upper_bound', float('nan')):,.2f} on {f.get('model_candidates', 0):,.0f} "
            f"candidates); incentive cost {f.get('incentive_cost', 0):,.2f} "
            f"of budget {f.get('budget', 0):,.2f}; {s.seconds:.0f} s\n  {'; '.join(s.notes)}")
