"""Forecast evaluation on real data: the UCI Online Retail daily series of the top 100
items (``../shared/data/online_retail/daily_item_sales_top100_*.csv``), last
``holdout_days`` held out.

For each series, fitted on the days before the holdout only:
* ``prophet``: the Prophet path of ``models/forecast.py`` forced on every series;
* ``pipeline``: what the nightly job would do (Prophet or SBA by history, seasonal naive
  where the series' method loses its own rolling backtest before the holdout);
* ``seasonal_naive``: the same weekday of the last training week, repeated (the baseline).

Mean MASE (scaled by the training series' in-sample seasonal-naive MAE), sMAPE and MAE
over the series; logged to MLflow (experiment ``bundlecast-forecast-eval``).

    bundlecast eval forecast --data ../shared/data/online_retail
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.models import forecast as fc

METHODS = ("prophet", "pipeline", "seasonal_naive")
EXPERIMENT = "bundlecast-forecast-eval"


def load_series(data_dir: str | Path) -> pd.DataFrame:
    """series, ds, y from the top-100 daily item file (one clear error if it is missing)."""
    files = sorted(Path(data_dir).glob("daily_item_sales_top100_*.csv"))
    if not files:
        raise BundlecastError(f"no daily_item_sales_top100_*.csv under {data_dir} (see ../shared/data/README.md)")
    raw = pd.read_csv(files[0], dtype={"StockCode": str})
    return pd.DataFrame({"series": raw.StockCode, "ds": pd.to_datetime(raw.date), "y": raw.quantity.astype(float)})


def evaluate_series(history: pd.DataFrame, holdout_days: int, s: fc.ForecastSettings) -> list[dict]:
    """One row per method for one series: mae, smape, mase on the holdout."""
    history = history.sort_values("ds").reset_index(drop=True)
    train, test = history.iloc[:-holdout_days].copy(), history.iloc[-holdout_days:]
    future = test.drop(columns="y")
    capped = train.assign(y=fc.winsorize(train.y.to_numpy(), s.winsorize_quantile))
    forecasts = {"prophet": fc.predict(capped, future, "prophet", None, s),
                 "seasonal_naive": fc.predict(train, future, "seasonal_naive", None, s)}
    pipeline, _, chosen = fc.forecast_series(train, future, None, s)
    forecasts["pipeline"] = pipeline
    return [dict(method=m, chosen=chosen if m == "pipeline" else m, mae=fc.mae(test.y, f.yhat),
                 smape=fc.smape(test.y, f.yhat), mase=fc.mase(test.y, f.yhat, train.y))
            for m, f in forecasts.items()]


def evaluate(spark, cfg: dict, data_dir: str | Path, holdout_days: int = 56) -> dict:
    """Per-series holdout metrics for every method, in parallel over the Spark cores."""
    series = load_series(data_dir)
    section = dict(cfg.get("forecast", {}))
    section.setdefault("country_holidays", "GB")
    if section.get("country_holidays") is None:
        section["country_holidays"] = "GB"  # UK retailer: Prophet's UK holidays
    s = fc.ForecastSettings.from_config(section)
    # The backtest that picks the pipeline's method uses the holdout's horizon.
    s = dataclasses.replace(s, horizon_days=holdout_days)

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        rows = evaluate_series(pdf[["ds", "y"]], holdout_days, s)
        return pd.DataFrame(rows).assign(series=pdf.series.iloc[0])

    schema = "method string, chosen string, mae double, smape double, mase double, series string"
    per_series = (spark.createDataFrame(series.assign(ds=series.ds.dt.date)).repartition(8, "series")
                  .groupBy("series").applyInPandas(lambda pdf: run(pdf.assign(ds=pd.to_datetime(pdf.ds))), schema)
                  .toPandas())
    summary = {m: {k: float(per_series[per_series.method == m][k].mean()) for k in ("mase", "smape", "mae")}
               for m in METHODS}
    chosen = per_series[per_series.method == "pipeline"].chosen.value_counts().to_dict()
    results = {**summary, "_meta": dict(series=int(per_series.series.nunique()), holdout_days=holdout_days,
                                        train_end=str((series.ds.max() - pd.Timedelta(days=holdout_days)).date()),
                                        pipeline_methods=chosen, country_holidays=s.country_holidays,
                                        seasonality_mode=s.seasonality_mode)}
    results["_meta"]["run_id"] = log_to_mlflow(cfg, results, per_series)
    return results


def log_to_mlflow(cfg: dict, results: dict, per_series: pd.DataFrame) -> str:
    import mlflow

    from bundlecast.models.tracking import experiment
    experiment(cfg, EXPERIMENT)
    meta = results["_meta"]
    with mlflow.start_run(run_name=f"online-retail-holdout-{meta['holdout_days']}d") as run:
        mlflow.log_params({k: v for k, v in meta.items() if k != "pipeline_methods"})
        for m in METHODS:
            mlflow.log_metrics({f"{m}.{k}": v for k, v in results[m].items() if np.isfinite(v)})
        mlflow.log_dict(results, "results.json")
        mlflow.log_table(per_series, "per_series.json")
        return run.info.run_id


def render(results: dict) -> str:
    meta = results["_meta"]
    lines = [f"{meta['series']} series, last {meta['holdout_days']} days held out (trained up to {meta['train_end']})",
             f"{'method':16s} {'mean MASE':>10s} {'mean sMAPE':>11s} {'mean MAE':>9s}"]
    for m in METHODS:
        r = results[m]
        lines.append(f"{m:16s} {r['mase']:10.3f} {r['smape']:11.3f} {r['mae']:9.2f}")
    lines.append(f"pipeline methods: {meta['pipeline_methods']}")
    verdict = "beats" if results["prophet"]["mase"] < results["seasonal_naive"]["mase"] else "does NOT beat"
    lines.append(f"prophet {verdict} seasonal naive on mean MASE")
    return "\n".join(lines)
