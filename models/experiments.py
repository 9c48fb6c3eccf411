"""A/B testing maths: deterministic assignment and the analysis statistics. Pure numpy.

Assignment: a user's variant is fixed by ``sha256(salt | user_id)`` mapped to [0, 1) and
cut at the cumulative variant shares, so it is stable across runs and machines and
independent between experiments with different salts.
"""
from __future__ import annotations

import hashlib
from datetime import date

import numpy as np
import pandas as pd

Z95 = 1.959963984540054


def active(experiments: list[dict], dt: str) -> list[dict]:
    d = date.fromisoformat(dt)
    return [e for e in experiments or [] if date.fromisoformat(str(e["start"])) <= d <= date.fromisoformat(str(e["end"]))]


def validate(exp: dict) -> None:
    shares = [float(v["share"]) for v in exp["variants"].values()]
    if abs(sum(shares) - 1) > 1e-6 or min(shares) <= 0:
        raise ValueError(f"experiment {exp['name']!r}: variant shares must be positive and sum to 1 (got {shares})")
    if "control" not in exp["variants"]:
        raise ValueError(f"experiment {exp['name']!r}: needs a 'control' variant (no offer)")


def assign(user_ids, exp: dict) -> np.ndarray:
    """Variant name per user (deterministic)."""
    validate(exp)
    names = list(exp["variants"])
    cuts = np.cumsum([float(exp["variants"][n]["share"]) for n in names])
    u = np.array([int.from_bytes(hashlib.sha256(f"{exp['salt']}|{x}".encode()).digest()[:8], "big") / 2**64
                  for x in user_ids])
    return np.asarray(names, dtype=object)[np.minimum(np.searchsorted(cuts, u, side="right"), len(names) - 1)]


def wilson(successes: float, n: float) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    return float(centre - half), float(centre + half)


def mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(np.mean(x))
    se = float(np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return m, m - Z95 * se, m + Z95 * se


def diff(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Mean(x) - mean(y) with a 95% Welch interval and its two-sided p-value (normal
    approximation; for 0/1 outcomes this is the unpooled two-proportion z-test)."""
    from scipy.stats import norm

    if len(x) < 2 or len(y) < 2:
        return float("nan"), float("nan"), float("nan"), float("nan")
    d = float(np.mean(x) - np.mean(y))
    se = float(np.sqrt(np.var(x, ddof=1) / len(x) + np.var(y, ddof=1) / len(y)))
    if se == 0:
        return d, d, d, 1.0 if d == 0 else 0.0
    return d, d - Z95 * se, d + Z95 * se, float(2 * norm.sf(abs(d) / se))


def srm_p_value(counts: dict[str, int], shares: dict[str, float]) -> float:
    """Sample-ratio mismatch: chi-square test of observed users per variant against the
    configured split (a small p-value means the assignment or the logging is broken)."""
    from scipy.stats import chisquare

    names = list(shares)
    obs = np.array([counts.get(n, 0) for n in names], dtype=float)
    if obs.sum() == 0:
        return float("nan")
    exp = np.array([shares[n] for n in names], dtype=float) * obs.sum()
    return float(chisquare(obs, exp).pvalue)


def analyse(per_user: pd.DataFrame, exp: dict, metrics=("conversion", "revenue_per_user", "margin_per_user")) -> pd.DataFrame:
    """One row per variant and metric from ``per_user`` (columns variant + the metrics):
    estimate and 95% interval (Wilson for conversion), difference to control with its
    interval and p-value, the SRM p-value, and per metric the winner: the variant with the
    best estimate whose difference to control is significantly positive."""
    shares = {k: float(v["share"]) for k, v in exp["variants"].items()}
    srm = srm_p_value(per_user.variant.value_counts().to_dict(), shares)
    control = per_user[per_user.variant == "control"]
    rows = []
    for metric in metrics:
        for variant in shares:
            x = per_user.loc[per_user.variant == variant, metric].to_numpy(float)
            if metric == "conversion":
                est = float(x.mean()) if len(x) else float("nan")
                lo, hi = wilson(float(x.sum()), len(x))
            else:
                est, lo, hi = mean_ci(x)
            d, dlo, dhi, p = (float("nan"),) * 4 if variant == "control" else diff(x, control[metric].to_numpy(float))
            rows.append(dict(variant=variant, metric=metric, users=len(x), estimate=est, ci_low=lo, ci_high=hi,
                             diff_vs_control=d, diff_ci_low=dlo, diff_ci_high=dhi, p_value=p, srm_p_value=srm))
    out = pd.DataFrame(rows)
    out["winner"] = False
    for metric, g in out.groupby("metric"):
        sig = g[(g.variant != "control") & (g.diff_ci_low > 0)]
        if len(sig):
            out.loc[sig.estimate.idxmax(), "winner"] = True
    return out
