"""BG/NBD and Gamma-Gamma: fitted on customers simulated from the models themselves, they
recover the parameters and predict the holdout better than the last period repeated."""
from __future__ import annotations

import numpy as np

from bundlecast.models import clv


def _simulate(n: int, r: float, alpha: float, a: float, b: float, T: float, horizon: float, seed: int):
    """(x, t_x, T, holdout purchases) of BG/NBD customers whose first purchase is day 0."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    xs, txs, hold = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t, alive, times = 0.0, True, []
        while alive:
            t += rng.exponential(1.0 / lam[i])
            if t > T + horizon:
                break
            times.append(t)
            alive = rng.random() > p[i]
        cal = [s for s in times if s <= T]
        xs[i], txs[i] = len(cal), (cal[-1] if cal else 0.0)
        hold[i] = len(times) - len(cal)
    return xs, txs, np.full(n, T), hold


def test_bgnbd_recovers_its_parameters_and_beats_the_last_period():
    x, t_x, T, hold = _simulate(3000, r=0.6, alpha=40.0, a=0.7, b=2.5, T=300.0, horizon=90.0, seed=1)
    model = clv.fit_bgnbd(x, t_x, T)
    assert abs(model.r / model.alpha - 0.6 / 40.0) / (0.6 / 40.0) < 0.25  # the mean purchase rate
    assert abs(model.a / (model.a + model.b) - 0.7 / 3.2) < 0.1           # the mean drop-out probability
    predicted = model.expected_purchases(90.0, x, t_x, T)
    last_period = x * 90.0 / 300.0  # the customer's own rate, as if always alive
    assert np.abs(predicted - hold).mean() < np.abs(last_period - hold).mean()
    assert abs(predicted.sum() - hold.sum()) / hold.sum() < 0.2


def test_gamma_gamma_recovers_the_mean_spend_and_shrinks_to_it():
    rng = np.random.default_rng(2)
    p, q, gamma = 6.0, 4.0, 15.0
    v = rng.gamma(q, 1.0 / gamma, 4000)
    n = rng.integers(1, 12, 4000)
    m = np.array([rng.gamma(p, 1.0 / vi, k).mean() for vi, k in zip(v, n)])
    model = clv.fit_gamma_gamma(n, m)
    assert abs(model.p * model.gamma / (model.q - 1.0) - p * gamma / (q - 1.0)) / (p * gamma / (q - 1.0)) < 0.1
    one, many = model.expected_spend_per_order([1, 50], [100.0, 100.0])
    population = model.expected_spend_per_order([0], [0.0])[0]
    assert abs(one - population) < abs(many - population)  # one order says less than fifty
