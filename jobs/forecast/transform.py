"""Pure transforms of the forecast step: settings, the per-series function run by
``applyInPandas`` (backtest + forecast, ``models/forecast.py``), the backtest summary."""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.models import forecast as fc

LEVELS = {"item": ["site_id", "item_id"], "item_region": ["site_id", "item_id", "region"]}
# Columns a series' rows carry when an earlier backtest chose its method (see job.stored_choices).
REUSED = ("reuse_method", "reuse_reason", "backtested_on")
HEAD = "head"  # boolean column: the series carries the volume (Prophet); false: long tail (statsforecast)
OUT_COLUMNS = ["kind", "ds", "yhat", "yhat_lower", "yhat_upper", "method", "reason", "origin", "mae", "smape",
               "mase", "n_days", "history_days"]


def settings(cfg: dict) -> tuple[fc.ForecastSettings, dict]:
    section = cfg["forecast"]
    if section.get("level") not in LEVELS:
        raise BundlecastError(f"forecast.level must be one of {sorted(LEVELS)}, not {section.get('level')!r}")
    try:
        return fc.ForecastSettings.from_config(section), section
    except ValueError as exc:
        raise BundlecastError(str(exc)) from None


def series_function(level: list[str], dt: str, s: fc.ForecastSettings, weather: pd.DataFrame,
                    holidays: pd.DataFrame):
    """The per-series function for applyInPandas: one group's sparse daily demand in,
    forecast rows (kind 'forecast') and backtest rows (kind 'metric') out."""
    end = pd.Timestamp(dt)
    future_days = pd.date_range(end + pd.Timedelta(days=1), periods=s.horizon_days, freq="D")
    by_region = "region" in level

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        key = {c: pdf[c].iloc[0] for c in level}
        region = key.get("region", "*")
        pdf = pdf.assign(ds=pd.to_datetime(pdf.ds))
        days = pd.date_range(pdf.ds.min(), end, freq="D")
        history = pd.DataFrame({"ds": days}).merge(pdf[["ds", "y"]], on="ds", how="left").fillna({"y": 0.0})
        future = pd.DataFrame({"ds": future_days})
        w = weather[weather.region == (region if by_region else "*")].drop(columns="region")
        history, future = history.merge(w, on="ds", how="left"), future.merge(w, on="ds", how="left")
        hol = holidays[holidays.region.isin(["ALL", region] if by_region else holidays.region.unique())]
        hol = hol[["holiday", "ds"]].drop_duplicates()
        head = bool(pdf[HEAD].iloc[0]) if HEAD in pdf else True
        reason = _method_reason(history, s, head)
        known = pdf[REUSED[0]].iloc[0] if REUSED[0] in pdf else None
        if pd.isna(known):
            known = None
        else:  # chosen by a backtest of the last days
            reason = f"{pdf[REUSED[1]].iloc[0]} (method from the backtest of {pdf[REUSED[2]].iloc[0]})"
        # Prophet's intervals are sampled: a seed per series makes a re-run give the same rows.
        np.random.seed(zlib.crc32("|".join(str(v) for v in key.values()).encode()))
        try:
            forecast, metrics, method = fc.forecast_series(history, future, hol, s, method=known, head=head)
        except Exception as exc:  # noqa: BLE001 - a series that cannot be fitted falls back, counted
            method, reason = "sba", f"fit failed ({type(exc).__name__}: {str(exc)[:120]}); SBA instead"
            train = history.assign(y=fc.winsorize(history.y.to_numpy(), s.winsorize_quantile))
            forecast, metrics = fc.predict(train, future, "sba", None, s), pd.DataFrame()
        if method == "seasonal_naive" and len(metrics):
            by = metrics.groupby("method").mase.mean()
            reason = f"backtest MASE {by.drop('seasonal_naive').min():.2f} > seasonal naive {by['seasonal_naive']:.2f}"
        out = forecast.assign(kind="forecast", method=method, reason=reason, history_days=len(history))
        if len(metrics):
            out = pd.concat([out, metrics.assign(kind="metric", ds=metrics.origin, history_days=len(history))],
                            ignore_index=True)
        for c in OUT_COLUMNS:
            if c not in out:
                out[c] = None
        out = out[OUT_COLUMNS]
        out["ds"] = pd.to_datetime(out.ds).dt.date
        out["origin"] = pd.to_datetime(out.origin).dt.date
        for c, v in key.items():
            out.insert(0, c, v)
        return out

    return run


def _method_reason(history: pd.DataFrame, s: fc.ForecastSettings, head: bool = True) -> str:
    if len(history) < s.min_history_days:
        return f"short history ({len(history)} days < {s.min_history_days}): SBA"
    share = float((history.y > 0).mean())
    if share < s.min_nonzero_share:
        return f"intermittent ({share:.0%} of days with demand < {s.min_nonzero_share:.0%}): SBA"
    if head:
        return f"{len(history)} days, {share:.0%} with demand, carries the volume: best of {'/'.join(s.head_methods)}"
    return f"{len(history)} days, {share:.0%} with demand, long tail: best of {'/'.join(s.tail_methods)}"


def output_schema(level: list[str]) -> str:
    keys = ", ".join(f"{c} string" for c in level)
    return (f"{keys}, kind string, ds date, yhat double, yhat_lower double, yhat_upper double, method string, "
            "reason string, origin date, mae double, smape double, mase double, n_days int, history_days int")


def backtest_summary(m: pd.DataFrame) -> dict[str, float]:
    """Mean MAE, sMAPE and MASE over the backtest windows of each series' model (Prophet or
    SBA: ``model``) and of seasonal naive on the same windows (``seasonal_naive``)."""
    if m.empty:
        return {}
    m = m.assign(family=np.where(m.method == "seasonal_naive", "seasonal_naive", "model"))
    out = {}
    for fam, part in m.groupby("family"):
        for metric in ("mae", "smape", "mase"):
            out[f"{fam}_{metric}"] = float(part[metric].astype(float).mean(skipna=True))
    for method, part in m[m.method != "seasonal_naive"].groupby("method"):
        out[f"{method}_mase"] = float(part.mase.astype(float).mean(skipna=True))
    return out
