"""Per-series demand forecasting: Prophet for the series that carry the volume (the
head) where its rolling backtest beats statsforecast's ETS(A,N,A) and Theta; those two
alone for the long tail (about a tenth of a Prophet fit each); SBA (Croston with the
Syntetos-Boylan correction) for short or intermittent series; seasonal naive (same
weekday last week) as the baseline every method is measured against.

Everything here works on one series in pandas, so the Spark job can run it with
``groupBy(...).applyInPandas(...)`` and a test or a notebook can call it directly.

A series is a daily frame with columns ``ds`` (date), ``y`` (units, NaN for future days)
and optional regressors (``temperature_c``, ``precipitation_mm``). ``holidays`` is a
Prophet holidays frame (``holiday``, ``ds``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SEASON = 7
BACKTEST_COLUMNS = ["origin", "method", "mae", "smape", "mase", "n_days"]
REGRESSORS = ("temperature_c", "precipitation_mm")
TAIL_METHODS = ("ets", "theta")  # statsforecast models for the long tail (see statsforecast_forecast)


@dataclass(frozen=True)
class ForecastSettings:
    horizon_days: int = 14
    min_history_days: int = 56        # shorter series go to SBA
    min_nonzero_share: float = 0.3    # sparser (intermittent) series go to SBA
    backtest_origins: int = 3         # rolling origins, each horizon_days apart
    winsorize_quantile: float = 0.99  # training values above this quantile are capped (bulk orders)
    interval_width: float = 0.8
    seasonality_mode: str = "additive"
    yearly_min_days: int = 365        # yearly seasonality only with at least this much history
    yearly_fourier: int = 10          # Fourier order of the yearly seasonality (Prophet's default 10)
    transform: str = "none"           # none | log1p: fit log(1 + y), forecast the back-transformed median
    changepoint_prior_scale: float = 0.05
    uncertainty_samples: int = 200
    country_holidays: str | None = None
    sba_alpha: float = 0.1
    prophet_volume_share: float = 0.8  # head: the largest series that together make this share of the units
    tail_methods: tuple[str, ...] = TAIL_METHODS  # backtested against each other for a long-tail series
    head_methods: tuple[str, ...] = ("prophet", *TAIL_METHODS)  # Prophet stays where it wins the backtest
    regressors: tuple[str, ...] = field(default=REGRESSORS)

    @classmethod
    def from_config(cls, section: dict) -> "ForecastSettings":
        known = {k: v for k, v in section.items() if k in cls.__dataclass_fields__}
        for name in ("regressors", "tail_methods", "head_methods"):
            if name in known:
                known[name] = tuple(known[name] or ())
        for name, allowed in (("tail_methods", TAIL_METHODS), ("head_methods", ("prophet", *TAIL_METHODS))):
            if name in known and (not known[name] or set(known[name]) - set(allowed)):
                raise ValueError(f"forecast.{name} must be a non-empty list of {list(allowed)}, "
                                 f"not {list(known[name])}")
        return cls(**known)


# ----------------------------------------------------------------------------- metrics
def mae(actual, forecast) -> float:
    return float(np.mean(np.abs(np.asarray(actual, float) - np.asarray(forecast, float))))


def smape(actual, forecast) -> float:
    """Symmetric MAPE in 0..2; a day with both actual and forecast 0 counts as 0."""
    a, f = np.asarray(actual, float), np.asarray(forecast, float)
    denom = np.abs(a) + np.abs(f)
    return float(np.mean(np.divide(2 * np.abs(a - f), denom, out=np.zeros_like(denom), where=denom > 0)))


def mase(actual, forecast, train, season: int = SEASON) -> float:
    """MAE scaled by the in-sample MAE of the seasonal-naive forecast (NaN when the
    training series is constant over the season, where MASE is undefined)."""
    t = np.asarray(train, float)
    if len(t) <= season:
        return float("nan")
    scale = np.mean(np.abs(t[season:] - t[:-season]))
    return float("nan") if scale == 0 else mae(actual, forecast) / scale


# ---------------------------------------------------------------------------- methods
def seasonal_naive(train: np.ndarray, horizon: int, season: int = SEASON) -> np.ndarray:
    """Same weekday last week, repeated; the mean when there is less than a season."""
    t = np.asarray(train, float)
    if len(t) < season:
        return np.full(horizon, t.mean() if len(t) else 0.0)
    return np.resize(t[-season:], horizon)


def sba(train: np.ndarray, horizon: int, alpha: float = 0.1) -> np.ndarray:
    """Croston's method with the Syntetos-Boylan bias correction: demand size z and
    interval p smoothed at each non-zero day; forecast (1 - alpha/2) * z / p, flat.

    Initialised with the mean size and the mean interval between demands (one demand: the
    length of the history), not the first interval: a series whose history starts on its
    first sale would otherwise start at an interval of one day and, with few demands to
    correct it, forecast several times the real rate (seen in the replay)."""
    t = np.asarray(train, float)
    nonzero = np.flatnonzero(t > 0)
    if len(nonzero) == 0:
        return np.zeros(horizon)
    p0 = float(np.diff(nonzero).mean()) if len(nonzero) > 1 else float(len(t))
    z, p, last = float(t[nonzero].mean()), p0, nonzero[0]
    for i in nonzero[1:]:
        z += alpha * (t[i] - z)
        p += alpha * ((i - last) - p)
        last = i
    return np.full(horizon, (1 - alpha / 2) * z / p)


def empirical_interval(train: np.ndarray, yhat: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """yhat -/+ the ``width`` quantile of the absolute week-on-week changes of the history."""
    t = np.asarray(train, float)
    spread = np.quantile(np.abs(t[SEASON:] - t[:-SEASON]), width) if len(t) > SEASON else (t.std() if len(t) else 0.0)
    return np.maximum(yhat - spread, 0.0), yhat + spread


def winsorize(y: np.ndarray, q: float) -> np.ndarray:
    """Cap values above the q-quantile of the non-zero days (bulk orders, spikes)."""
    y = np.asarray(y, float)
    nz = y[y > 0]
    if q >= 1 or len(nz) < 10:
        return y
    return np.minimum(y, np.quantile(nz, q))


def choose_method(train: pd.DataFrame, s: ForecastSettings, head: bool = True) -> str:
    """The family a series is forecast with: ``sba`` for short or intermittent series,
    otherwise ``prophet`` for a head series and ``tail`` (the statsforecast models,
    ``s.tail_methods``, backtested against each other) for a long-tail one."""
    if len(train) >= s.min_history_days and (train.y > 0).mean() >= s.min_nonzero_share:
        return "prophet" if head else "tail"
    return "sba"


def candidates(family: str, s: ForecastSettings) -> list[str]:
    """The methods a backtest compares for a family (seasonal naive is always added)."""
    return list(s.head_methods if family == "prophet" else s.tail_methods if family == "tail" else [family])


def head_series(volume: pd.Series, share: float, total: float | None = None) -> pd.Series:
    """True for the series that carry the volume: sorted by units, the largest ones whose
    running total, before them, is below ``share`` of all units (so at least one series;
    ties broken by the index for a stable split). ``share`` 1 makes every series head,
    0 none. ``total`` is all units when ``volume`` holds only the largest series (the
    rest are smaller than every one given); by default the sum of ``volume``."""
    if share <= 0 or volume.empty:
        return pd.Series(False, index=volume.index)
    v = volume.astype(float).clip(lower=0)
    order = v.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
    before = order.cumsum() - order
    total = float(order.sum()) if total is None else float(total)
    head = before < share * total if total > 0 else pd.Series(share >= 1, index=order.index)
    return head.reindex(volume.index)


def _quiet_stan() -> None:
    """Prophet and cmdstanpy log every fit at INFO; keep errors only."""
    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "plotly failed": we plot with matplotlib
    try:
        from cmdstanpy.utils import get_logger  # configures its handler lazily, at INFO
        get_logger().setLevel(logging.ERROR)
    except ImportError:
        pass


def prophet_forecast(train: pd.DataFrame, future: pd.DataFrame, holidays: pd.DataFrame | None,
                     s: ForecastSettings) -> pd.DataFrame:
    """Fit Prophet on ``train`` (ds, y, regressors) and predict ``future`` (ds, regressors).
    Returns ds, yhat, yhat_lower, yhat_upper, clipped at 0. Regressors are used only when
    known on every training and future day."""
    _quiet_stan()
    from prophet import Prophet

    model = Prophet(weekly_seasonality=True, daily_seasonality=False,
                    yearly_seasonality=s.yearly_fourier if len(train) >= s.yearly_min_days else False,
                    seasonality_mode=s.seasonality_mode, interval_width=s.interval_width,
                    changepoint_prior_scale=s.changepoint_prior_scale,
                    uncertainty_samples=s.uncertainty_samples,
                    holidays=holidays if holidays is not None and len(holidays) else None)
    if s.country_holidays:
        model.add_country_holidays(country_name=s.country_holidays)
    used = [r for r in s.regressors if r in train and r in future
            and train[r].notna().all() and future[r].notna().all() and train[r].std() > 0]
    for r in used:
        model.add_regressor(r)
    fit_on = train[["ds", "y", *used]].copy()
    if s.transform == "log1p":
        fit_on["y"] = np.log1p(fit_on.y.clip(lower=0))
    model.fit(fit_on)
    out = model.predict(future[["ds", *used]])[["ds", "yhat", "yhat_lower", "yhat_upper"]]
    for c in ("yhat", "yhat_lower", "yhat_upper"):
        out[c] = (np.expm1(out[c]) if s.transform == "log1p" else out[c]).clip(lower=0.0)
    return out


def statsforecast_forecast(train: pd.DataFrame, future: pd.DataFrame, method: str,
                           s: ForecastSettings) -> pd.DataFrame:
    """A long-tail forecast with statsforecast: ``ets`` is ETS(A,N,A) (additive error, no
    trend, additive weekly season), ``theta`` the standard Theta method with a weekly
    seasonal test. Same transform and interval width as Prophet; clipped at 0."""
    from statsforecast.models import AutoETS, Theta

    model = AutoETS(season_length=SEASON, model="ANA") if method == "ets" else Theta(season_length=SEASON)
    y = train.y.to_numpy(float)
    if s.transform == "log1p":
        y = np.log1p(np.clip(y, 0, None))
    level = int(round(s.interval_width * 100))
    out = model.forecast(y=y, h=len(future), level=[level])
    back = np.expm1 if s.transform == "log1p" else (lambda a: a)
    cols = {"yhat": out["mean"], "yhat_lower": out[f"lo-{level}"], "yhat_upper": out[f"hi-{level}"]}
    return pd.DataFrame({"ds": future.ds.to_numpy(),
                         **{k: np.clip(back(np.asarray(v, float)), 0.0, None) for k, v in cols.items()}})


def predict(train: pd.DataFrame, future: pd.DataFrame, method: str, holidays: pd.DataFrame | None,
            s: ForecastSettings) -> pd.DataFrame:
    """Forecast ``future`` days with ``method`` (prophet | ets | theta | sba |
    seasonal_naive) from a training frame whose y is already winsorised."""
    horizon = len(future)
    if method == "prophet":
        return prophet_forecast(train, future, holidays, s)
    if method in TAIL_METHODS:
        return statsforecast_forecast(train, future, method, s)
    y = train.y.to_numpy(float)
    yhat = sba(y, horizon, s.sba_alpha) if method == "sba" else seasonal_naive(y, horizon)
    lower, upper = empirical_interval(y, yhat, s.interval_width)
    return pd.DataFrame({"ds": future.ds.to_numpy(), "yhat": yhat, "yhat_lower": lower, "yhat_upper": upper})


def backtest(history: pd.DataFrame, family: str, holidays: pd.DataFrame | None, s: ForecastSettings) -> pd.DataFrame:
    """Rolling-origin backtest of a family's methods (``candidates``) and of seasonal naive
    on the same windows. Origins are the last ``backtest_origins`` multiples of
    horizon_days before the end of ``history``; each fits on the days before the origin
    only (a window whose training days are too short or sparse for the family uses SBA).
    Returns one row per (origin, method): origin, method, mae, smape, mase, n_days."""
    h = s.horizon_days
    rows = []
    for k in range(s.backtest_origins, 0, -1):
        cut = len(history) - k * h
        if cut < SEASON * 2:
            continue
        train, test = history.iloc[:cut].copy(), history.iloc[cut:cut + h]
        train["y"] = winsorize(train.y.to_numpy(), s.winsorize_quantile)
        fits = family if family == "sba" or choose_method(train, s, family == "prophet") == family else "sba"
        for name in dict.fromkeys([*candidates(fits, s), "seasonal_naive"]):
            f = predict(train, test.drop(columns="y"), name, holidays, s).yhat.to_numpy()
            rows.append(dict(origin=test.ds.iloc[0], method=name, mae=mae(test.y, f), smape=smape(test.y, f),
                             mase=mase(test.y, f, train.y), n_days=len(test)))
    return pd.DataFrame(rows, columns=BACKTEST_COLUMNS)


def pick(metrics: pd.DataFrame, family: str, s: ForecastSettings) -> str:
    """The family's method with the lowest backtest mean MASE (ties: the order of
    ``candidates``), or seasonal naive if it beats that one on the same windows."""
    own = candidates(family, s)
    by = metrics.groupby("method").mase.mean()
    scored = [m for m in own if m in by and np.isfinite(by[m])]
    best = min(scored, key=lambda m: (by[m], own.index(m))) if scored else own[0]
    if best in by and "seasonal_naive" in by and by["seasonal_naive"] < by[best]:
        return "seasonal_naive"
    return best


def forecast_series(history: pd.DataFrame, future: pd.DataFrame, holidays: pd.DataFrame | None,
                    s: ForecastSettings, method: str | None = None,
                    head: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Backtest, pick the method, forecast. Returns (forecast, backtest metrics, method).

    The family is Prophet (a head series with enough history), the statsforecast models
    (a long-tail series with enough history: the best of ``tail_methods`` on the backtest)
    or SBA (short or intermittent series). If the chosen method's backtest MASE is worse
    than seasonal naive's on the same windows, seasonal naive makes the forecast
    instead, so a series never gets a forecast worse than the baseline's on its own
    recent history. A ``method`` chosen by an earlier backtest skips the backtest (no
    metrics): one fit instead of ``backtest_origins + 1``.
    """
    if method is not None:
        metrics = pd.DataFrame(columns=BACKTEST_COLUMNS)
        chosen = method
    else:
        family = choose_method(history, s, head)
        metrics = backtest(history, family, holidays, s)
        chosen = pick(metrics, family, s) if len(metrics) else candidates(family, s)[0]
    train = history.copy()
    train["y"] = winsorize(train.y.to_numpy(), s.winsorize_quantile)
    forecast = predict(train, future, chosen, holidays, s)
    return forecast, metrics, chosen
