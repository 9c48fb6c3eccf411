"""The forecast step's run: extract, one ``applyInPandas`` pass over every series, load, MLflow."""
from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import date, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.forecast.extract import daily_demand, holidays_frame, stored_choices, weather_by_day
from bundlecast.jobs.forecast.load import write_forecast
from bundlecast.jobs.forecast.transform import HEAD, LEVELS, backtest_summary, output_schema, series_function, settings
from bundlecast.models.forecast import head_series

EXPERIMENT = "bundlecast-demand-forecast"


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print) -> StepRun:
    import mlflow
    from pyspark.sql import functions as F

    from bundlecast.models.tracking import experiment

    cfg = cfg or config()
    date.fromisoformat(dt)  # a clear error for a bad date
    tables = Tables(spark, cfg)
    s, section = settings(cfg)
    level = LEVELS[section["level"]]
    summary = StepRun("forecast", dt, run_id or f"forecast-{dt}-{uuid.uuid4().hex[:8]}")
    demand, unknown = daily_demand(tables, dt, int(section["lookback_days"]), level)
    summary.counts["order_lines_unknown_item"] = unknown.count()
    if section.get("sample_series"):  # a fixed hash sample of the series (trials, benchmarks)
        keys = (demand.select(*level).distinct().orderBy(F.xxhash64(*level), *level)
                .limit(int(section["sample_series"])))
        demand = demand.join(F.broadcast(keys), level, "left_semi")
    # Read once: the head/tail split, the per-series pass and the plot all use it.
    demand = demand.localCheckpoint()
    demand, summary.counts["head_series"], summary.counts["tail_series"] = _with_head(demand, level,
                                                                                      s.prophet_volume_share)
    # A series' method is chosen by its rolling backtest once every backtest_every_days and
    # reused in between: one fit per series on the other nights instead of backtest_origins + 1.
    reused = stored_choices(tables, dt, int(section.get("backtest_every_days") or 1), level)
    if reused is not None:
        reused = reused.localCheckpoint()
        demand = demand.join(F.broadcast(reused), level, "left")
    weather = weather_by_day(tables, "region" in level)
    holidays = holidays_frame(tables)
    fn = series_function(level, dt, s, weather, holidays)
    # One series per task group; the shuffle spreads them over the cores.
    result = demand.groupBy(*level).applyInPandas(fn, output_schema(level)).localCheckpoint()

    experiment(cfg, EXPERIMENT)
    with mlflow.start_run(run_name=f"forecast-{dt}") as mrun:
        summary.labels["mlflow_run_id"] = mrun.info.run_id
        stamp = [F.lit(dt).cast("date").alias("dt"), F.lit(mrun.info.run_id).alias("model_run_id"),
                 F.lit(summary.run_id).alias("run_id")]
        forecast = result.filter(F.col("kind") == "forecast").select(
            *level, F.col("ds").alias("date"), "yhat", "yhat_lower", "yhat_upper", "method", "reason", "history_days",
            *stamp)
        metrics = result.filter(F.col("kind") == "metric").select(
            *level, F.col("origin"), "method", "mae", "smape", "mase", "n_days", *stamp)
        if "region" not in level:
            forecast = forecast.withColumn("region", F.lit("*"))
            metrics = metrics.withColumn("region", F.lit("*"))
        write_forecast(tables, forecast, metrics, dt)

        per_series = forecast.groupBy(*level, "method").agg(F.sum("yhat").alias("total")).toPandas()
        summary.counts["series"] = len(per_series)
        summary.counts.update({f"series_{k}": v for k, v in per_series.method.value_counts().to_dict().items()})
        summary.counts["failed_fits"] = forecast.filter(F.col("reason").startswith("fit failed")).select(
            *level).distinct().count()
        items = tables.read("items").select("site_id", "item_id")
        summary.counts["items_without_sales"] = items.join(forecast.select("site_id", "item_id"),
                                                           ["site_id", "item_id"], "left_anti").count()
        m = metrics.toPandas()
        summary.counts["backtests_run"] = len(m.drop_duplicates(level)) if len(m) else 0
        if reused is not None:  # the run's scores include the backtests it reused
            used = forecast.filter(F.col("reason").contains("(method from the backtest of")).select(*level).distinct()
            summary.counts["backtests_reused"] = used.count()
            m = pd.concat([m, _reused_metrics(tables, reused.join(used, level, "left_semi"), level).toPandas()],
                          ignore_index=True)
        summary.metrics["backtest"] = backtest_summary(m)
        _log_run(cfg, dt, section, s, summary, m, forecast, demand, level)
    record(tables, summary.finish())
    progress(render_summary(summary))
    return summary


def _with_head(demand, level: list[str], share: float):
    """demand with a ``head`` column: the series that together carry ``share`` of the
    window's units are Prophet's, the rest the long tail's (``models.forecast.head_series``).
    One small aggregate to the driver: a row per series. Returns (demand, head, tail)."""
    from pyspark.sql import functions as F

    volume = demand.groupBy(*level).agg(F.sum("y").alias("units")).toPandas()
    flags = volume[level].assign(**{HEAD: head_series(volume.set_index(level).units, share).to_numpy()})
    schema = ", ".join([*(f"{c} string" for c in level), f"{HEAD} boolean"])
    keyed = demand.sparkSession.createDataFrame(flags, schema)
    n_head = int(flags[HEAD].sum())
    return demand.join(F.broadcast(keyed), level), n_head, len(flags) - n_head


def _reused_metrics(tables, reused, level: list[str]):
    """The stored backtest rows behind the reused choices, in the shape of this run's metrics."""
    from pyspark.sql import functions as F

    m = tables.read("forecast_metrics")
    if "region" not in level:
        m = m.filter(F.col("region") == "*")
    return (m.join(F.broadcast(reused.select(*level, F.col("backtested_on").cast("date").alias("dt"))), [*level, "dt"],
                   "left_semi")
            .select(*level, "origin", "method", "mae", "smape", "mase", "n_days"))


def _log_run(cfg, dt, section, s, summary, metrics_pd, forecast, demand, level) -> None:
    import mlflow

    mlflow.log_params({**{k: v for k, v in asdict(s).items() if k != "regressors"},
                       "regressors": ",".join(s.regressors), "level": "x".join(level), "run_date": dt,
                       "lookback_days": section["lookback_days"]})
    mlflow.log_metrics({f"backtest_{k}": v for k, v in summary.metrics["backtest"].items() if np.isfinite(v)})
    mlflow.log_metrics({"series": summary.counts["series"], "failed_fits": summary.counts["failed_fits"],
                        "head_series": summary.counts["head_series"], "tail_series": summary.counts["tail_series"],
                        **{f"series_{k}": v for k, v in methods(summary).items()}})
    mlflow.set_tags({"bundlecast.run_id": summary.run_id, "data_window_end": dt})
    if not metrics_pd.empty:
        mlflow.log_table(metrics_pd.astype({"origin": str}), "backtest_metrics.json")
    _plot_series(forecast, demand, level, dt)


def _plot_series(forecast, demand, level, dt: str, n: int = 4) -> None:
    """Forecast with its interval against the last 8 weeks of actuals, for the n series
    with the largest forecast volume."""
    import mlflow
    from matplotlib.figure import Figure  # not pyplot: no global state, safe beside another step's plots
    from pyspark.sql import functions as F

    top = forecast.groupBy(*level).agg(F.sum("yhat").alias("v")).orderBy(F.col("v").desc(), *level).limit(n).toPandas()
    if top.empty:
        return
    keys = top[level]
    f = forecast.join(forecast.sparkSession.createDataFrame(keys), level, "left_semi").toPandas()
    start = date.fromisoformat(dt) - timedelta(days=56)
    a = demand.filter(F.col("ds") > F.lit(start)).join(forecast.sparkSession.createDataFrame(keys), level,
                                                        "left_semi").toPandas()
    fig = Figure(figsize=(9, 2.6 * len(keys)))
    axes = fig.subplots(len(keys), 1, squeeze=False)
    for ax, (_, k) in zip(axes[:, 0], keys.iterrows()):
        sel_f = f.loc[(f[level] == k.values).all(axis=1)].sort_values("date")
        sel_a = a.loc[(a[level] == k.values).all(axis=1)].sort_values("ds")
        ax.plot(pd.to_datetime(sel_a.ds), sel_a.y, ".", color="black", label="actual")
        ax.plot(pd.to_datetime(sel_f.date), sel_f.yhat, color="tab:blue", label=str(sel_f.method.iloc[0]))
        ax.fill_between(pd.to_datetime(sel_f.date), sel_f.yhat_lower, sel_f.yhat_upper, alpha=0.25)
        ax.set_title(" / ".join(str(v) for v in k.values), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    mlflow.log_figure(fig, "forecast_vs_actuals.png")


def methods(s: StepRun) -> dict[str, int]:
    """Series per forecasting method of a forecast run."""
    return {k.removeprefix("series_"): v for k, v in s.counts.items() if k.startswith("series_")}


def render_summary(s: StepRun) -> str:
    c = s.counts
    mix = ", ".join(f"{k} {v:,}" for k, v in sorted(methods(s).items()))
    lines = [f"forecast run {s.run_id} for {s.dt}: {c['series']:,} series ({mix}) in {s.seconds:.0f} s; "
             f"MLflow run {s.labels.get('mlflow_run_id')}",
             f"  head (Prophet where it wins its backtest) {c.get('head_series', 0):,} series, long tail "
             f"(statsforecast) {c.get('tail_series', 0):,}; short or intermittent series of either: SBA",
             f"  items without sales in the window (no series) {c['items_without_sales']:,}; order lines of unknown "
             f"items skipped {c['order_lines_unknown_item']:,}; fits failed (SBA instead) {c['failed_fits']:,}"]
    b = s.metrics.get("backtest", {})
    if b:
        lines.append(f"  backtest mean MASE: model {b.get('model_mase', float('nan')):.3f} vs seasonal naive "
                     f"{b.get('seasonal_naive_mase', float('nan')):.3f}; sMAPE {b.get('model_smape', float('nan')):.3f}"
                     f" vs {b.get('seasonal_naive_smape', float('nan')):.3f} (series backtested today "
                     f"{c.get('backtests_run', 0):,}, choices reused from the last days {c.get('backtests_reused', 0):,})")
    return "\n".join(lines)
