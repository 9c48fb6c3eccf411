"""The offers step's run (see the package docstring)."""
from __future__ import annotations

import uuid

import pandas as pd

from bundlecast.jobs.core.commerce import available_stock, competitor_reference, item_prices, user_warehouses
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.offers.extract import candidates, context_inputs, past_offers, to_pandas
from bundlecast.jobs.offers.transform import (
    context,
    offer_rows,
    offers_short_of_stock,
    priced_candidates,
    recheck_offers,
    valid_from,
)
from bundlecast.models import experiments as X
from bundlecast.models.pricing import allocate, fit_acceptance


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
    # The reservations as this date's first offers run saw them (a re-run gives the same offers).
    stock = to_pandas(available_stock(tables, reservations=tables.pinned("inventory_reservations", dt, "offers")))
    summary.notes.append(f"price response: {acc.source} (beta {acc.beta:.2f})")
    if len(cand):
        cand = context(cand, context_inputs(tables, dt), c, stock, item_prices(tables, {}), cfg["incentives"])
        cand = priced_candidates(cand, spec, acc, cfg)
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
    offers = offer_rows(chosen, exp, dt, run_id, cfg["offers"], summary.now)
    summary.figures["budget"] = float(cfg["offers"]["budget"])
    summary.figures["incentive_cost"] = float(offers.incentive_cost.sum()) if len(offers) else 0.0
    c["offers"] = len(offers)
    for t, n in offers.offer_type.value_counts().items():
        c[f"offers_{t}"] = int(n)
    offer_of = offers.set_index("user_id").offer_id
    exposures = pd.DataFrame({"experiment": exp["name"] if exp else "none", "user_id": users,
                              "variant": variant.reindex(users).to_numpy(),
                              "offer_id": pd.Series(users).map(offer_of).to_numpy(), "exposed_at": valid_from(dt),
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
    offers = to_pandas(latest)
    active = offers.status != "withdrawn"
    c["offers_checked"] = int(active.sum())
    now = summary.now
    stock = to_pandas(available_stock(tables))
    stock_map = dict(zip(stock.warehouse_id + "|" + stock.key, stock.available.astype(int)))
    wh = to_pandas(user_warehouses(Tables(spark, cfg))).set_index("user_id").warehouse_id
    short = offers_short_of_stock(offers[active], stock_map, wh)
    # Behaviour: the user bought any of the items after the offer was made.
    lines = (Tables(spark, cfg).read("orders").filter(F.col("order_ts") > F.lit(last).cast("timestamp") + F.expr("INTERVAL 1 DAY"))
             .filter(F.col("status") != "cancelled").select("order_id", "user_id")
             .join(Tables(spark, cfg).read("order_lines"), "order_id")
             .select("user_id", F.concat_ws("|", "site_id", "item_id").alias("key")))
    bought = to_pandas(lines.join(spark.createDataFrame(offers[["user_id"]].drop_duplicates()), "user_id"))
    bought_by = bought.groupby("user_id").key.agg(set).to_dict() if len(bought) else {}
    reference = competitor_reference(Tables(spark, cfg), c)
    prices = item_prices(Tables(spark, cfg), {})
    changed = recheck_offers(offers, active, short, bought_by, prices, reference, cfg, now, c)
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
