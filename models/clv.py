"""The standard customer-value model, the baseline the user value model must beat: BG/NBD
for the number of orders (Fader, Hardie and Lee, "Counting your customers the easy way",
Marketing Science 2005) and Gamma-Gamma for the spend per order (Fader, Hardie and Lee,
"RFM and CLV: using iso-value curves", JMR 2005), fitted by maximum likelihood with SciPy
(the closed-form likelihoods; the same models pymc-marketing and lifetimes fit).

Inputs per user at a cut-off, in days: ``x`` repeat purchases (order days after the first),
``t_x`` the day of the last purchase counted from the first, ``T`` the days from the first
purchase to the cut-off, and for the spend ``n`` orders with mean value ``m``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    def expected_purchases(self, t: float, x, t_x, T) -> np.ndarray:
        """E[orders in the next ``t`` days | x, t_x, T] (equation 10 of the paper)."""
        x, t_x, T = (np.asarray(v, float) for v in (x, t_x, T))
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1.0, z)
        first = (a + b + x - 1.0) / (a - 1.0) * (1.0 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        alive_odds = np.where(x > 0, a / np.maximum(b + x - 1.0, 1e-12) * ((alpha + T) / (alpha + t_x)) ** (r + x), 0.0)
        return first / (1.0 + alive_odds)


def bgnbd_log_likelihood(params, x, t_x, T) -> np.ndarray:
    """Per-user log-likelihood of BG/NBD (equation 6 of the paper)."""
    r, alpha, a, b = params
    ln_a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    ln_a2 = special.betaln(a, b + x) - special.betaln(a, b)
    ln_a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore"):
        ln_a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1.0, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return ln_a1 + ln_a2 + np.logaddexp(ln_a3, ln_a4)


def fit_bgnbd(x, t_x, T) -> BGNBD:
    """Maximum-likelihood BG/NBD (parameters optimised on the log scale, L-BFGS-B)."""
    x, t_x, T = (np.asarray(v, float) for v in (x, t_x, T))
    scale = max(float(T.max()), 1.0)  # days scaled to about 1 for the optimiser; alpha scales back

    def loss(log_params):
        r, alpha, a, b = np.exp(log_params)
        return -bgnbd_log_likelihood((r, alpha, a, b), x, t_x / scale, T / scale).sum() / len(x)

    best = optimize.minimize(loss, np.zeros(4), method="L-BFGS-B", bounds=[(-8, 8)] * 4)
    r, alpha, a, b = np.exp(best.x)
    return BGNBD(float(r), float(alpha * scale), float(a), float(b))


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    gamma: float

    def expected_spend_per_order(self, n, m) -> np.ndarray:
        """E[value of an order | n orders of mean value m]; the population mean where n = 0."""
        n, m = np.asarray(n, float), np.asarray(m, float)
        p, q, g = self.p, self.q, self.gamma
        population = p * g / (q - 1.0)
        posterior = (p * (g + n * m)) / (p * n + q - 1.0)
        return np.where(n > 0, posterior, population)


def fit_gamma_gamma(n, m) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma on users with at least one order of positive value
    (q kept above 1 so that the mean spend exists)."""
    n, m = np.asarray(n, float), np.asarray(m, float)
    keep = (n > 0) & (m > 0)
    n, m = n[keep], m[keep]
    scale = max(float(np.median(m)), 1e-9)
    ms = m / scale

    def loss(params):
        p, q, g = np.exp(params[0]), 1.0 + np.exp(params[1]), np.exp(params[2])
        ll = (special.gammaln(p * n + q) - special.gammaln(p * n) - special.gammaln(q) + q * np.log(g)
              + (p * n - 1.0) * np.log(ms) + p * n * np.log(n) - (p * n + q) * np.log(g + ms * n))
        return -ll.sum() / len(n)

    best = optimize.minimize(loss, np.zeros(3), method="L-BFGS-B", bounds=[(-8, 8)] * 3)
    return GammaGamma(float(np.exp(best.x[0])), float(1.0 + np.exp(best.x[1])), float(np.exp(best.x[2]) * scale))


def fit_predict(frame, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(orders, spend) in the next ``horizon`` days for the users of ``frame``, the value
    step's (``frame_at``): ``orders_365`` order days and ``spend_365`` in the year before
    the cut-off, ``tenure_days`` since the first order in it and ``days_since_order``. The
    models are fitted on the same users' history up to the cut-off (they use no label)."""
    def rfm(frame):
        n = frame.orders_365.to_numpy(float)
        T = frame.tenure_days.to_numpy(float)
        return n - 1.0, T - frame.days_since_order.to_numpy(float), T, n, \
            frame.spend_365.to_numpy(float) / np.maximum(n, 1.0)

    x, t_x, T, n, m = rfm(frame)
    bg, gg = fit_bgnbd(x, t_x, T), fit_gamma_gamma(n, m)
    orders = bg.expected_purchases(float(horizon), x, t_x, T)
    return orders, orders * gg.expected_spend_per_order(n, m)
