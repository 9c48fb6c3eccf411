"""The forecast job on the `test` demo world: every series gets horizon_days of forecasts
with the method that made them, the backtest holds both methods on the same windows, the
MLflow run has what an ML engineer looks for, a re-run leaves the same rows, bad
configuration and empty input end cleanly."""
from __future__ import annotations

import copy

import pytest

from bundlecast.jobs.core.errors import BundlecastError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fc_cfg(test_world):
    cfg = copy.deepcopy(test_world["cfg"])
    # 60 days of demo history: per item (not item x region) and 4 weeks minimum, so dense
    # items go to Prophet (the head) or statsforecast (the tail) and the rest to SBA.
    cfg["forecast"].update(level="item", min_history_days=28, backtest_origins=2, horizon_days=7)
    return cfg


@pytest.fixture(scope="module")
def first_run(spark, test_world, fc_cfg):
    from bundlecast.jobs.forecast import job as forecast
    return forecast.run(spark, test_world["date"], "fc-1", fc_cfg, progress=lambda m: None)


def _table(spark, cfg, name):
    from bundlecast.jobs.core.delta import read_table
    return read_table(spark, name, cfg).toPandas()


def test_every_series_is_forecast_with_its_method(spark, fc_cfg, first_run):
    f = _table(spark, fc_cfg, "demand_forecast")
    assert first_run.counts["series"] == f.groupby(["site_id", "item_id"]).ngroups > 50
    assert (f.groupby(["site_id", "item_id"]).size() == 7).all()
    assert str(f.date.min()) == "2026-11-21" and str(f.date.max()) == "2026-11-27"
    assert (f.yhat >= 0).all() and (f.yhat_lower <= f.yhat + 1e-9).all() and (f.yhat <= f.yhat_upper + 1e-9).all()
    assert set(f.method) <= {"prophet", "ets", "theta", "sba", "seasonal_naive"} and "prophet" in set(f.method)
    assert {"ets", "theta"} & set(f.method)  # the long tail is forecast by statsforecast
    # Prophet only for the series that together carry the volume share (of the window's units).
    per = f.drop_duplicates(["site_id", "item_id"])
    assert first_run.counts["head_series"] + first_run.counts["tail_series"] == len(per)
    assert 0 < first_run.counts["head_series"] < len(per)
    # A head series keeps Prophet only where it won its backtest; a tail series never fits it.
    assert per[per.method == "prophet"].reason.str.contains("carries the volume").all()
    tail = per.reason.str.contains("long tail")
    assert tail.any() and not (per.method[tail] == "prophet").any()
    assert per[per.method.isin(["ets", "theta"])].reason.str.contains("long tail|carries the volume").all()
    assert f.reason.notna().all() and (f.region == "*").all()
    assert (f.model_run_id == first_run.labels["mlflow_run_id"]).all() and first_run.counts["failed_fits"] == 0
    from bundlecast.jobs.forecast.job import methods
    assert methods(first_run) == f.drop_duplicates(["site_id", "item_id"]).method.value_counts().to_dict()


def test_backtest_compares_each_method_with_seasonal_naive_on_the_same_windows(spark, fc_cfg, first_run):
    m = _table(spark, fc_cfg, "forecast_metrics")
    per_window = m.groupby(["site_id", "item_id", "origin"]).method.apply(set)
    assert len(per_window) > 50
    head, tail = {"prophet", "ets", "theta", "seasonal_naive"}, {"ets", "theta", "seasonal_naive"}
    assert all(v in (head, tail, {"sba", "seasonal_naive"}) for v in per_window)
    assert head in list(per_window) and tail in list(per_window)
    assert (m.n_days == 7).all() and (m.mae >= 0).all() and m.smape.between(0, 2).all()
    assert {"model_mase", "seasonal_naive_mase"} <= set(first_run.metrics["backtest"])


def test_mlflow_run_has_params_metrics_and_plot(first_run, fc_cfg):
    import mlflow

    client = mlflow.MlflowClient(fc_cfg["mlflow"]["tracking_uri"])
    run = client.get_run(first_run.labels["mlflow_run_id"])
    assert run.data.params["level"] == "site_idxitem_id" and run.data.params["run_date"] == "2026-11-20"
    assert {"backtest_model_mase", "backtest_seasonal_naive_mase", "series"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"forecast_vs_actuals.png", "backtest_metrics.json"} <= artifacts


def test_rerun_leaves_the_same_rows(spark, test_world, fc_cfg, first_run):
    from bundlecast.jobs.forecast import job as forecast

    before = _table(spark, fc_cfg, "demand_forecast").drop(columns=["model_run_id", "run_id"])
    forecast.run(spark, test_world["date"], "fc-2", fc_cfg, progress=lambda m: None)
    after = _table(spark, fc_cfg, "demand_forecast").drop(columns=["model_run_id", "run_id"])
    keys = ["site_id", "item_id", "date"]
    before, after = (x.sort_values(keys).reset_index(drop=True) for x in (before, after))
    assert len(before) == len(after)
    assert before.equals(after)  # seeded per series: the intervals too


def test_the_next_night_reuses_the_backtested_choice_and_a_week_later_backtests_again(spark, test_world, fc_cfg,
                                                                                       first_run):
    """Backtests choose each series' method once in backtest_every_days, each series on its
    own day of the cycle; the nights in between fit only the chosen method (no metric
    rows) and say whose backtest they used."""
    from pyspark.sql import functions as F

    from bundlecast.jobs.core.tables import Tables
    from bundlecast.jobs.forecast import job as forecast
    from bundlecast.jobs.forecast.extract import backtest_slot, slot_of, stored_choices

    level = ["site_id", "item_id"]
    day0 = _table(spark, fc_cfg, "demand_forecast")
    day0 = day0[day0.dt.astype(str) == "2026-11-20"].drop_duplicates(level).set_index(level)
    backtested = _table(spark, fc_cfg, "forecast_metrics")
    backtested = set(map(tuple, backtested[backtested.dt.astype(str) == "2026-11-20"][level]
                         .drop_duplicates().to_numpy()))
    slots = (spark.createDataFrame(sorted(backtested), level).withColumn("slot", backtest_slot(level, 7))
             .toPandas().set_index(level).slot)
    due = {k for k in backtested if slots[k] == slot_of("2026-11-21", 7)}  # this series' day of the week
    assert 0 < len(due) < len(backtested) / 3  # spread over the week, not all on one night
    next_night = forecast.run(spark, "2026-11-21", "fc-next", fc_cfg, progress=lambda m: None)
    f = _table(spark, fc_cfg, "demand_forecast")
    f = f[f.dt.astype(str) == "2026-11-21"].drop_duplicates(level).set_index(level)
    reused = f[f.reason.str.contains("method from the backtest of 2026-11-20", regex=False)]
    assert set(reused.index) == backtested - due and next_night.counts["backtests_reused"] == len(reused)
    assert (reused.method == day0.loc[reused.index].method).all()
    m = _table(spark, fc_cfg, "forecast_metrics")
    again = set(map(tuple, m[m.dt.astype(str) == "2026-11-21"][level].drop_duplicates().to_numpy()))
    assert again == due and next_night.counts["backtests_run"] == len(again)
    assert {"model_mase", "seasonal_naive_mase"} <= set(next_night.metrics["backtest"])
    tables = Tables(spark, fc_cfg)
    on_26 = stored_choices(tables, "2026-11-26", 7, level)  # still within the week, but not on its own day
    assert on_26.count() == len({k for k in backtested if slots[k] != slot_of("2026-11-26", 7)})
    assert on_26.filter(F.col("backtested_on") == "2026-11-21").count() == len(due)
    assert stored_choices(tables, "2026-11-27", 7, level).filter("backtested_on = '2026-11-20'").count() == 0
    assert stored_choices(tables, "2026-11-21", 1, level) is None  # backtest_every_days 1: every night


def test_bad_configuration_and_empty_window(spark, test_world, fc_cfg):
    from bundlecast.jobs.forecast import job as forecast

    bad = copy.deepcopy(fc_cfg)
    bad["forecast"]["level"] = "warehouse"
    with pytest.raises(BundlecastError, match="forecast.level"):
        forecast.run(spark, test_world["date"], "fc-bad", bad, progress=lambda m: None)
    bad["forecast"].update(level="item", tail_methods=["arima"])
    with pytest.raises(BundlecastError, match="tail_methods"):
        forecast.run(spark, test_world["date"], "fc-bad", bad, progress=lambda m: None)
    # Long before any order: no series, nothing written for that date, the run still ends.
    empty = forecast.run(spark, "2020-01-01", "fc-empty", fc_cfg, progress=lambda m: None)
    assert empty.counts["series"] == 0 and empty.counts["items_without_sales"] > 0
    assert empty.counts["head_series"] == empty.counts["tail_series"] == 0
