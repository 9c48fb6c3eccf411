"""Acceptance as a function of price, bundle price optimisation, and the global offer
allocation (OR-Tools CP-SAT).

Acceptance model: ``logit(a) = logit(base) + beta * discount_share - gamma * max(0, price / reference - 1)``,
where ``base`` is the chance of acceptance at list price (the need probability for a need
bundle, the historical purchase rate for a product bundle), ``reference`` what the items
cost elsewhere (competitor prices where known, else ours). ``beta`` is fitted on past offers
and their redemptions (``offers`` x ``feedback``) when there are enough of them with varying
discounts; otherwise the configured prior is used and the run says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def _logit(p):
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, float)))


@dataclass
class Acceptance:
    beta: float               # log-odds per unit of discount share (0.10 off -> +0.1 * beta)
    gamma: float              # log-odds lost per unit of price above the reference
    source: str               # "fitted on N offers" or "prior: <why>"
    offers: int = 0

    def __call__(self, base, discount_share, price=None, reference=None) -> np.ndarray:
        x = _logit(base) + self.beta * np.asarray(discount_share, float)
        if price is not None and reference is not None:
            ref = np.asarray(reference, float)
            over = np.where(ref > 0, np.clip(np.asarray(price, float) / np.where(ref > 0, ref, 1) - 1, 0, None), 0.0)
            x = x - self.gamma * over
        return _sigmoid(x)


def fit_acceptance(history: pd.DataFrame, cfg: dict) -> Acceptance:
    """Fit ``beta`` from past offers (columns ``discount_share``, ``redeemed`` 0/1, and
    ``base``, the offer's acceptance at list price as predicted then). Falls back to the
    prior when there are fewer than ``min_offers`` offers, the discounts barely vary, or
    the fit says discounts hurt (a sign of confounding, not of customers)."""
    prior = Acceptance(float(cfg["prior_beta"]), float(cfg["gamma"]), "prior", 0)
    n = len(history)
    if n < int(cfg["min_offers"]):
        prior.source = f"prior (only {n} past offers with an outcome, need {cfg['min_offers']})"
        return prior
    d = history.discount_share.to_numpy(float)
    if np.std(d) < 0.01:
        prior.source = f"prior (past discounts do not vary: sd {np.std(d):.3f})"
        return prior
    # The base rate enters as an offset; beta is the one free coefficient (Newton's method).
    y = history.redeemed.to_numpy(int)
    offset = _logit(history.base.to_numpy(float))
    beta = 0.0
    for _ in range(25):
        p = _sigmoid(offset + beta * d)
        grad, hess = np.sum((y - p) * d), np.sum(p * (1 - p) * d * d) + 1e-9
        step = grad / hess
        beta += step
        if abs(step) < 1e-6:
            break
    if not np.isfinite(beta) or beta <= 0:
        prior.source = f"prior (fitted beta {beta:.2f} on {n} offers is not positive)"
        return prior
    return Acceptance(float(beta), float(cfg["gamma"]), f"fitted on {n} past offers", n)


def optimise_price(list_price, cost, base, reference, acceptance: Acceptance, cfg: dict) -> pd.DataFrame:
    """Per bundle, the discount share on a grid (0 .. ``max_discount``) that maximises
    expected profit ``a(price) * (price - cost)`` subject to ``price - cost >= min_margin * price``.
    Returns discount_share, bundle_price, acceptance, expected_margin (profit per offer) and
    a reason. A bundle with no feasible price (cost too high) gets NaN and reason ``no_margin``."""
    lp, c = np.asarray(list_price, float)[:, None], np.asarray(cost, float)[:, None]
    grid = np.arange(0, float(cfg["max_discount"]) + 1e-9, float(cfg["price_step"]))[None, :]
    price = np.round(lp * (1 - grid), 2)
    feasible = price - c >= float(cfg["min_margin"]) * price
    a = acceptance(np.asarray(base, float)[:, None], grid, price, np.asarray(reference, float)[:, None])
    profit = np.where(feasible, a * (price - c), -np.inf)
    best = np.argmax(profit, axis=1)
    rows = np.arange(len(best))
    ok = np.isfinite(profit[rows, best])
    ref = np.asarray(reference, float)
    reason = np.where(~ok, "no_margin",
                      np.where(grid[0, best] == 0, "list price maximises expected margin",
                               np.where(price[rows, best] <= ref + 1e-9,
                                        "discount maximises expected margin", "discount towards competitor price")))
    return pd.DataFrame({"discount_share": np.where(ok, grid[0, best], np.nan),
                         "bundle_price": np.where(ok, price[rows, best], np.nan),
                         "acceptance": np.where(ok, a[rows, best], np.nan),
                         "expected_margin": np.where(ok, profit[rows, best], np.nan), "reason": reason})


@dataclass
class Allocation:
    chosen: np.ndarray        # bool per candidate
    objective: float          # expected profit of the chosen offers
    greedy_objective: float   # the greedy baseline's, same candidates and constraints
    bound: float              # CP-SAT's upper bound on the optimum
    status: str
    binding_items: int        # items whose candidate demand exceeded stock
    seconds: float
    model_candidates: int = 0  # candidates in the CP-SAT model (the core)


def allocate(cand: pd.DataFrame, stock: dict, budget: float, cfg: dict) -> Allocation:
    """Choose offers across all users at once. ``cand``: one row per (user, candidate offer)
    with ``user_id``, ``items`` (list of item keys), ``profit`` (expected, after incentive)
    and ``spend`` (expected incentive cost). Constraints: at most ``max_offers_per_user`` per
    user; per item, offers containing it <= ``stock[item]`` (an offer promises its stock:
    never promise a unit twice); total ``spend`` <= ``budget``. Maximises total profit.

    Up to ``cp_sat_max_candidates`` candidates in the model, CP-SAT solves it (proved
    optimal on small instances); above, the LP relaxation with rounding (``_lp_round``),
    which scales to every user of the medium world and still gives an upper bound.

    A greedy pass (best profit first, or best profit per unit of spend when the budget
    binds, while stock and budget last) is the baseline and the CP-SAT hint, so the
    solver's answer is never worse. Items whose candidate demand fits
    in their stock need no constraint and are left out of the model."""
    import time

    t0 = time.time()
    cand = cand.reset_index(drop=True)
    n = len(cand)
    profit = np.round(cand.profit.to_numpy(float) * 100).astype(np.int64)
    # Spend rounds up to the cent, so the budget holds in currency, not just in cents.
    spend = np.ceil(cand.spend.to_numpy(float) * 100 - 1e-9).astype(np.int64)
    budget_c = int(np.floor(budget * 100)) if np.isfinite(budget) else None
    per_user = int(cfg["max_offers_per_user"])
    users = cand.user_id.to_numpy()
    # Item -> candidate rows, only for items where demand can exceed stock.
    exploded = cand[["items"]].explode("items").dropna()
    demand = exploded.groupby("items").size()
    binding = {k: int(stock.get(k, 0)) for k, d in demand.items() if d > stock.get(k, 0)}
    rows_of = exploded[exploded["items"].isin(binding)].groupby("items").groups

    items = cand["items"].tolist()
    binds = budget_c is not None and spend.sum() > budget_c
    # With a binding budget, the greedy goes by profit per unit of spend (knapsack order).
    order = np.argsort(-(profit / (spend + 1.0)) if binds else -profit, kind="stable")
    greedy = _greedy(profit, spend, users, items, stock, budget_c, per_user, order)
    # The model holds the "core": candidates by that order up to core_spend_factor x the
    # budget (at most max_model_candidates); the rest cannot compete for a binding budget.
    core = np.arange(n)
    if binds or n > int(cfg["max_model_candidates"]):
        cum = np.cumsum(spend[order])
        keep = cum <= float(cfg["core_spend_factor"]) * budget_c if binds else np.ones(n, bool)
        core = np.sort(order[keep][: int(cfg["max_model_candidates"])])
        core = np.union1d(core, np.flatnonzero(greedy))
    in_core = np.zeros(n, bool)
    in_core[core] = True
    if len(core) > int(cfg["cp_sat_max_candidates"]):
        chosen, bound, status_name = _lp_round(core, profit, spend, users, items, rows_of, binding, binds, budget_c,
                                               per_user, stock, order, float(cfg["time_limit_s"]))
        if profit[chosen].sum() < profit[greedy].sum():
            chosen = greedy
        return Allocation(chosen, float(profit[chosen].sum() / 100), float(profit[greedy].sum() / 100), bound,
                          status_name, len(binding), round(time.time() - t0, 2), len(core))
    chosen, bound, status_name = _cp_sat(core, in_core, profit, spend, users, rows_of, binding, binds, budget_c,
                                         per_user, greedy, cfg)
    return Allocation(chosen, float(profit[chosen].sum() / 100), float(profit[greedy].sum() / 100), bound,
                      status_name, len(binding), round(time.time() - t0, 2), len(core))


def _cp_sat(core, in_core, profit, spend, users, rows_of, binding, binds, budget_c, per_user, greedy,
            cfg: dict) -> tuple[np.ndarray, float, str]:
    """The exact allocation of the ``core`` candidates with CP-SAT, hinted with the greedy
    choice; never worse than the greedy. Returns (chosen mask, upper bound, status)."""
    from ortools.sat.python import cp_model

    n = len(profit)
    model = cp_model.CpModel()
    x = {i: model.NewBoolVar("") for i in core}
    for idx in pd.Series(core).groupby(users[core]).groups.values():
        if len(idx) > per_user:
            model.Add(sum(x[core[j]] for j in idx) <= per_user)
    for item, idx in rows_of.items():
        idx = [i for i in idx if in_core[i]]
        if len(idx) > binding[item]:
            model.Add(sum(x[i] for i in idx) <= binding[item])
    if binds and spend[core].sum() > budget_c:
        model.Add(sum(int(spend[i]) * x[i] for i in core if spend[i]) <= budget_c)
    model.Maximize(sum(int(profit[i]) * x[i] for i in core if profit[i]))
    for i in core:
        model.AddHint(x[i], bool(greedy[i]))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(cfg["time_limit_s"])
    solver.parameters.num_workers = int(cfg["workers"])
    solver.parameters.random_seed = 0
    status = solver.Solve(model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        chosen = np.zeros(n, bool)
        chosen[core] = [solver.BooleanValue(x[i]) for i in core]
        if profit[chosen].sum() < profit[greedy].sum():
            chosen = greedy
        bound = solver.BestObjectiveBound() / 100
    else:
        chosen, bound = greedy, float("nan")
    return chosen, float(bound), solver.StatusName(status)


def _lp_round(core, profit, spend, users, items, rows_of, binding, binds, budget_c, per_user, stock, order,
              time_limit_s: float):
    """Large instances: the LP relaxation of the same model (OR-Tools GLOP) gives an upper
    bound, and its solution, rounded by filling candidates in order of their LP value
    (then the greedy order) while stock, budget and the per-user limit last, a feasible
    allocation. A basic LP solution has at most as many fractional values as binding
    constraints, so the rounding loses little. Returns (chosen, bound, status)."""
    from ortools.linear_solver import pywraplp

    solver = pywraplp.Solver.CreateSolver("GLOP")
    solver.SetTimeLimit(int(time_limit_s * 1000))
    x = {i: solver.NumVar(0.0, 1.0, "") for i in core}
    for idx in pd.Series(core).groupby(users[core]).groups.values():
        if len(idx) > per_user:
            solver.Add(solver.Sum([x[core[j]] for j in idx]) <= per_user)
    for item, idx in rows_of.items():
        idx = [i for i in idx if i in x]
        if len(idx) > binding[item]:
            solver.Add(solver.Sum([x[i] for i in idx]) <= binding[item])
    if binds and spend[core].sum() > budget_c:
        solver.Add(solver.Sum([float(spend[i]) * x[i] for i in core if spend[i]]) <= budget_c)
    solver.Maximize(solver.Sum([float(profit[i]) * x[i] for i in core if profit[i]]))
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        return _greedy(profit, spend, users, items, stock, budget_c, per_user, order), float("nan"), "LP failed: greedy"
    value = np.zeros(len(profit))
    value[core] = [x[i].solution_value() for i in core]
    rank = np.empty(len(profit))
    rank[order] = np.arange(len(profit))
    lp_order = np.lexsort((rank, -np.round(value, 6)))
    chosen = _greedy(profit, spend, users, items, stock, budget_c, per_user, lp_order[value[lp_order] > 1e-6])
    status_name = "LP relaxation (GLOP) + rounding" + ("" if status == pywraplp.Solver.OPTIMAL else ", LP not optimal")
    return chosen, solver.Objective().Value() / 100 if status == pywraplp.Solver.OPTIMAL else float("nan"), status_name


def _greedy(profit, spend, users, items, stock, budget_c, per_user, order) -> np.ndarray:
    left = dict(stock)
    taken: dict[str, int] = {}
    budget_left = budget_c if budget_c is not None else np.inf
    chosen = np.zeros(len(profit), dtype=bool)
    for i in order:
        if profit[i] <= 0:
            continue
        if taken.get(users[i], 0) >= per_user or spend[i] > budget_left:
            continue
        if any(left.get(k, 0) < 1 for k in items[i]):
            continue
        for k in items[i]:
            left[k] = left.get(k, 0) - 1
        taken[users[i]] = taken.get(users[i], 0) + 1
        budget_left -= spend[i]
        chosen[i] = True
    return chosen
