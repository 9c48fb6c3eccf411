"""Per-series forecasting (models/forecast.py) on synthetic series whose answer is known:
the metrics, the two simple methods, the choice between them and Prophet, and that
Prophet uses what it is given (weekly pattern, holidays, weather)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bundlecast.models import forecast as fc

S = fc.ForecastSettings(backtest_origins=2)


def series(n: int, seed: int = 0, weekly=(1, 1.2, 1.1, 1, 1.5, 2.5, 0.3), level: float = 10.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2025-01-06", periods=n, freq="D")  # a Monday
    return pd.DataFrame({"ds": ds, "y": rng.poisson(level * np.asarray(weekly)[ds.dayofweek]).astype(float)})


def test_metrics():
    assert fc.mae([1, 2, 3], [1, 2, 5]) == pytest.approx(2 / 3)
    assert fc.smape([0, 0, 10], [0, 10, 10]) == pytest.approx((0 + 2 + 0) / 3)  # 0/0 counts as 0
    train = np.arange(14, dtype=float)  # week-on-week change is always 7
    assert fc.mase([10, 10], [13, 3], train) == pytest.approx(5 / 7)
    assert np.isnan(fc.mase([1], [1], np.ones(14)))  # constant history: undefined, not infinite


def test_seasonal_naive_and_sba():
    train = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], float)
    assert fc.seasonal_naive(train, 9).tolist() == [7, 8, 9, 10, 11, 12, 13, 7, 8]
    # 4 units every 4th day: size 4, interval 4 -> SBA (1 - alpha/2) * 1.
    y = np.zeros(40)
    y[3::4] = 4
    assert fc.sba(y, 3, alpha=0.1) == pytest.approx([0.95] * 3)
    assert fc.sba(np.zeros(10), 2).tolist() == [0, 0]
    # A history that starts on the first sale: 3 units every 10th day is 0.3 a day, not the
    # 3 a day an initial one-day interval would give.
    y = np.zeros(30)
    y[0::10] = 3
    assert fc.sba(y, 1)[0] == pytest.approx(0.95 * 0.3)
    assert fc.sba(np.r_[5.0, np.zeros(19)], 1)[0] == pytest.approx(0.95 * 5 / 20)  # one sale in 20 days
    lower, upper = fc.empirical_interval(train, np.array([1.0]), 0.8)
    assert lower[0] == 0.0 and upper[0] == pytest.approx(8.0)  # week-on-week change is 7


def test_winsorize_caps_spikes_only():
    y = np.r_[np.full(50, 10.0), 5000.0]
    capped = fc.winsorize(y, 0.99)
    assert capped.max() < 5000 and (capped[:50] == 10).all()


def test_method_choice_by_history():
    assert fc.choose_method(series(30), S) == "sba"  # short
    sparse = series(120)
    sparse.loc[sparse.index % 5 != 0, "y"] = 0  # demand on 20% of days
    assert fc.choose_method(sparse, S) == "sba"
    assert fc.choose_method(series(120), S) == "prophet"


def test_prophet_beats_seasonal_naive_on_a_noisy_weekly_series():
    full = series(210, seed=3)
    train, test = full.iloc[:-28], full.iloc[-28:]
    p = fc.predict(train, test[["ds"]], "prophet", None, S)
    naive = fc.seasonal_naive(train.y.to_numpy(), 28)
    assert (p.yhat >= 0).all() and (p.yhat_lower <= p.yhat).all() and (p.yhat <= p.yhat_upper).all()
    assert fc.mase(test.y, p.yhat, train.y) < 0.85 * fc.mase(test.y, naive, train.y)
    # It learned the weekly shape: Saturday high, Sunday low.
    by_day = p.assign(dow=p.ds.dt.dayofweek).groupby("dow").yhat.mean()
    assert by_day.idxmax() == 5 and by_day.idxmin() == 6


def test_prophet_uses_holidays_and_weather():
    full = series(280, seed=5)
    rng = np.random.default_rng(1)
    full["temperature_c"] = 12 + 8 * np.sin(np.arange(len(full)) / 9) + rng.normal(0, 1, len(full))
    full["precipitation_mm"] = rng.gamma(0.6, 4, len(full))
    full["y"] += 3 * np.clip(full.temperature_c - 12, 0, None)  # sells with heat
    sale_days = full.ds[full.ds.dt.day == 15]
    full.loc[full.ds.isin(sale_days), "y"] *= 4
    holidays = pd.DataFrame({"holiday": "sale", "ds": sale_days})
    train, test = full.iloc[:-40], full.iloc[-40:]
    with_all = fc.predict(train, test.drop(columns="y"), "prophet", holidays, S)
    plain = fc.predict(train[["ds", "y"]], test[["ds"]], "prophet", None,
                       fc.ForecastSettings(backtest_origins=2, regressors=()))
    assert fc.mae(test.y, with_all.yhat) < 0.7 * fc.mae(test.y, plain.yhat)
    sale = test.ds.dt.day.to_numpy() == 15
    assert sale.any() and with_all.yhat.to_numpy()[sale].min() > 2 * with_all.yhat.to_numpy()[~sale].mean()


def test_forecast_series_backtests_and_falls_back_to_seasonal_naive_when_it_wins():
    rng = np.random.default_rng(2)
    ds = pd.date_range("2025-01-06", periods=120, freq="D")
    mondays_only = pd.DataFrame({"ds": ds, "y": np.where(ds.dayofweek == 0, rng.integers(9, 12, len(ds)), 0).astype(float)})
    future = pd.DataFrame({"ds": pd.date_range(ds[-1] + pd.Timedelta(days=1), periods=14)})
    forecast, metrics, method = fc.forecast_series(mondays_only, future, None, S)
    # Intermittent (1 day in 7) -> SBA, but seasonal naive knows the weekday: it wins the backtest.
    assert set(metrics.method) == {"sba", "seasonal_naive"} and len(metrics) == 2 * S.backtest_origins
    assert method == "seasonal_naive"
    assert (forecast.yhat.to_numpy()[future.ds.dt.dayofweek == 0] > 8).all()
    assert (forecast.yhat.to_numpy()[future.ds.dt.dayofweek != 0] == 0).all()
    # A dense noisy weekly head series: Prophet and the cheap models on the same windows;
    # the one with the lowest backtest MASE forecasts. Prophet alone when head_methods says so.
    dense = series(150, seed=4)
    fut = pd.DataFrame({"ds": pd.date_range(dense.ds.iloc[-1] + pd.Timedelta(days=1), periods=14)})
    _, metrics, method = fc.forecast_series(dense, fut, None, S)
    assert metrics.groupby("origin").method.apply(set).tolist() == [{"prophet", "ets", "theta", "seasonal_naive"}] * 2
    assert method == metrics.groupby("method").mase.mean().idxmin()
    only = fc.ForecastSettings(backtest_origins=2, head_methods=("prophet",))
    _, metrics, method = fc.forecast_series(dense, fut, None, only)
    assert method == "prophet"
    assert metrics.groupby("origin").method.apply(set).tolist() == [{"prophet", "seasonal_naive"}] * 2


def test_head_series_carry_the_volume_share():
    v = pd.Series([5.0, 50, 10, 30, 5], index=list("edcba"))
    assert fc.head_series(v, 0.8).to_dict() == dict(e=False, d=True, c=False, b=True, a=False)
    assert fc.head_series(v, 0.81).sum() == 3  # 80 units before the third largest: below 81% of 100
    assert fc.head_series(v, 1.0).all() and not fc.head_series(v, 0.0).any()
    ties = pd.Series([1.0, 1, 1, 1], index=list("dcba"))
    assert fc.head_series(ties, 0.5).to_dict() == dict(d=False, c=False, b=True, a=True)  # stable by key
    assert fc.head_series(pd.Series([0.0, 0.0], index=["x", "y"]), 0.8).tolist() == [False, False]


def test_a_long_tail_series_gets_the_better_statsforecast_model_on_its_backtest():
    dense = series(150, seed=4)
    fut = pd.DataFrame({"ds": pd.date_range(dense.ds.iloc[-1] + pd.Timedelta(days=1), periods=28)})
    forecast, metrics, method = fc.forecast_series(dense, fut, None, S, head=False)
    assert metrics.groupby("origin").method.apply(set).tolist() == [{"ets", "theta", "seasonal_naive"}] * 2
    by = metrics.groupby("method").mase.mean()
    assert method == by.drop("seasonal_naive").idxmin() and by[method] < by["seasonal_naive"]
    assert (forecast.yhat >= 0).all() and (forecast.yhat_lower <= forecast.yhat + 1e-9).all()
    assert (forecast.yhat <= forecast.yhat_upper + 1e-9).all() and len(forecast) == 28
    # Both models learn the weekly shape (Saturday high, Sunday low), with or without log1p.
    for transform in ("none", "log1p"):
        s = fc.ForecastSettings(backtest_origins=2, transform=transform)
        for m in fc.TAIL_METHODS:
            f = fc.predict(dense, fut, m, None, s)
            by_day = f.assign(dow=f.ds.dt.dayofweek).groupby("dow").yhat.mean()
            assert by_day.idxmax() == 5 and by_day.idxmin() == 6, (m, transform)
    # The head/tail split does not change what a short or sparse series gets.
    assert fc.choose_method(series(30), S, head=False) == "sba"
    assert fc.choose_method(series(120), S, head=False) == "tail"


def test_tail_methods_are_checked():
    assert fc.ForecastSettings.from_config({"tail_methods": ["theta"]}).tail_methods == ("theta",)
    with pytest.raises(ValueError, match="tail_methods must be a non-empty list"):
        fc.ForecastSettings.from_config({"tail_methods": ["arima"]})
    with pytest.raises(ValueError, match="tail_methods"):
        fc.ForecastSettings.from_config({"tail_methods": []})
    with pytest.raises(ValueError, match="head_methods must be a non-empty list of .'prophet', 'ets', 'theta'."):
        fc.ForecastSettings.from_config({"head_methods": ["sba"]})


def test_head_series_against_a_larger_whole():
    v = pd.Series([30.0, 20, 10], index=list("abc"))  # the 3 largest of a store selling 200 units
    assert fc.head_series(v, 0.2, total=200).tolist() == [True, True, False]  # 30 < 40, 50 >= 40
