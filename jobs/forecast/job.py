"""Daily demand forecast per item (x region) for the next ``forecast.horizon_days`` days.

    spark-submit jobs/forecast.py --date 2026-11-20
    bundlecast forecast --date 2026-11-20

Demand is the units of non-cancelled order lines per day, by item and by the buyer's home
region (``forecast.level``). Every series is forecast in one ``groupBy(level)
.applyInPandas`` pass (``models/forecast.py``): a rolling-origin backtest of its method and
of seasonal naive on the same windows, then the forecast. Prophet gets weekly (and, with a
year of history, yearly) seasonality, the ``calendar_events`` of the region and the
network as holidays, and the region's weather as regressors (observations for the past,
the feed's forecast rows for the future). Short or intermittent series use SBA; a series
whose method loses its backtest to seasonal naive is forecast with seasonal naive. The
table says which method made each forecast, and why.

Writes ``demand_forecast`` and ``forecast_metrics`` (replacing the run date's rows) and one
MLflow run in experiment ``bundlecast-demand-forecast`` whose id is on every row.
"""
from __future__ import annotations

import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.delta import read_table, replace_rows
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.models import forecast as fc

EXPERIMENT = "bundlecast-demand-forecast"
LEVELS = {"item": ["site_id", "item_id"], "item_region": ["site_id", "item_id", "region"]}
OUT_COLUMNS = ["kind", "ds", "yhat", "yhat_lower", "yhat_upper", "method", "reason", "origin", "mae", "smape",
               "mase", "n_days", "history_days"]


@dataclass
class ForecastSummary:
    dt: str
    run_id: str
    mlflow_run_id: str = ""
    series: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    items_without_sales: int = 0
    order_lines_unknown_item: int = 0
    failed_fits: int = 0
    backtest: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def settings(cfg: dict) -> tuple[fc.ForecastSettings, dict]:
    section = cfg.get("forecast", {})
    if section.get("level", "item_region") not in LEVELS:
        raise BundlecastError(f"forecast.level must be one of {sorted(LEVELS)}, not {section.get('level')!r}")
    return fc.ForecastSettings.from_config(section), section


def daily_demand(spark, cfg: dict, dt: str, lookback_days: int, level: list[str]):
    """Units per (level, day) over the lookback window ending with ``dt``; lines of
    unknown items are dropped here and counted by the caller."""
    from pyspark.sql import functions as F

    end = date.fromisoformat(dt)
    start = end - timedelta(days=lookback_days - 1)
    orders = (read_table(spark, "orders", cfg).filter(F.col("status") != "cancelled")
              .select("order_id", "user_id", F.to_date("order_ts").alias("ds"))
              .filter(F.col("ds").between(F.lit(start), F.lit(end))))
    users = read_table(spark, "users", cfg).select("user_id", "region")
    lines = read_table(spark, "order_lines", cfg).select("order_id", "site_id", "item_id", "quantity")
    items = read_table(spark, "items", cfg).select("site_id", "item_id")
    rows = (lines.join(orders, "order_id").join(users, "user_id", "left")
            .withColumn("region", F.coalesce("region", F.lit("unknown"))))
    known = rows.join(items, ["site_id", "item_id"], "left_semi")
    unknown = rows.join(items, ["site_id", "item_id"], "left_anti")
    demand = known.groupBy(*level, "ds").agg(F.sum("quantity").cast("double").alias("y"))
    return demand, unknown


def weather_by_day(spark, cfg: dict, by_region: bool) -> pd.DataFrame:
    """region (or '*'), ds, temperature_c, precipitation_mm: observations where there are
    any, the feed's forecast rows otherwise (the future)."""
    from pyspark.sql import functions as F

    w = read_table(spark, "weather", cfg).select("region", F.col("date").alias("ds"), "temperature_c",
                                                 "precipitation_mm", "is_forecast")
    frame = w.toPandas()
    if frame.empty:
        return pd.DataFrame(columns=["region", "ds", "temperature_c", "precipitation_mm"])
    frame = frame.sort_values("is_forecast").drop_duplicates(["region", "ds"], keep="first")  # observed first
    if not by_region:
        frame = frame.groupby("ds", as_index=False)[["temperature_c", "precipitation_mm"]].mean().assign(region="*")
    frame["ds"] = pd.to_datetime(frame.ds)
    return frame[["region", "ds", "temperature_c", "precipitation_mm"]]


def holidays_frame(spark, cfg: dict) -> pd.DataFrame:
    """region, holiday, ds from ``calendar_events`` (region 'ALL' applies everywhere)."""
    from pyspark.sql import functions as F

    ev = read_table(spark, "calendar_events", cfg).select("region", F.col("event_name").alias("holiday"),
                                                          F.col("date").alias("ds")).toPandas()
    ev["ds"] = pd.to_datetime(ev.ds)
    return ev


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
        reason = _method_reason(history, s)
        # Prophet's intervals are sampled: a seed per series makes a re-run give the same rows.
        np.random.seed(zlib.crc32("|".join(str(v) for v in key.values()).encode()))
        try:
            forecast, metrics, method = fc.forecast_series(history, future, hol, s)
        except Exception as exc:  # noqa: BLE001 - a series that cannot be fitted falls back, counted
            method, reason = "sba", f"fit failed ({type(exc).__name__}: {str(exc)[:120]}); SBA instead"
            train = history.assign(y=fc.winsorize(history.y.to_numpy(), s.winsorize_quantile))
            forecast, metrics = fc.predict(train, future, "sba", None, s), pd.DataFrame()
        if method == "seasonal_naive":
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


def _method_reason(history: pd.DataFrame, s: fc.ForecastSettings) -> str:
    if len(history) < s.min_history_days:
        return f"short history ({len(history)} days < {s.min_history_days}): SBA"
    share = float((history.y > 0).mean())
    if share < s.min_nonzero_share:
        return f"intermittent ({share:.0%} of days with demand < {s.min_nonzero_share:.0%}): SBA"
    return f"{len(history)} days, {share:.0%} with demand: Prophet"


def output_schema(level: list[str]) -> str:
    keys = ", ".join(f"{c} string" for c in level)
    return (f"{keys}, kind string, ds date, yhat double, yhat_lower double, yhat_upper double, method string, "
            "reason string, origin date, mae double, smape double, mase double, n_days int, history_days int")


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print) -> ForecastSummary:
    import mlflow
    from bundlecast.models.tracking import experiment
    from pyspark.sql import functions as F

    cfg = cfg or config()
    date.fromisoformat(dt)  # a clear error for a bad date
    t0 = time.time()
    s, section = settings(cfg)
    level = LEVELS[section.get("level", "item_region")]
    summary = ForecastSummary(dt, run_id or f"forecast-{dt}-{uuid.uuid4().hex[:8]}")
    demand, unknown = daily_demand(spark, cfg, dt, int(section.get("lookback_days", 730)), level)
    summary.order_lines_unknown_item = unknown.count()
    if section.get("sample_series"):  # a fixed hash sample of the series (trials, benchmarks)
        keys = (demand.select(*level).distinct().orderBy(F.xxhash64(*level), *level)
                .limit(int(section["sample_series"])))
        demand = demand.join(F.broadcast(keys), level, "left_semi")
    weather = weather_by_day(spark, cfg, "region" in level)
    holidays = holidays_frame(spark, cfg)
    fn = series_function(level, dt, s, weather, holidays)
    # One series per task group; the shuffle spreads them over the cores.
    result = demand.groupBy(*level).applyInPandas(fn, output_schema(level)).localCheckpoint()

    experiment(cfg, EXPERIMENT)
    with mlflow.start_run(run_name=f"forecast-{dt}") as mrun:
        summary.mlflow_run_id = mrun.info.run_id
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
        write_f = forecast.select(*[c.name for c in catalog.table("demand_forecast").columns])
        write_m = metrics.select(*[c.name for c in catalog.table("forecast_metrics").columns])
        replace_rows(spark, write_f, "demand_forecast", f"dt = DATE'{dt}'", cfg)
        replace_rows(spark, write_m, "forecast_metrics", f"dt = DATE'{dt}'", cfg)

        per_series = forecast.groupBy(*level, "method").agg(F.sum("yhat").alias("total")).toPandas()
        summary.series = len(per_series)
        summary.methods = per_series.method.value_counts().to_dict()
        summary.failed_fits = forecast.filter(F.col("reason").startswith("fit failed")).select(*level).distinct().count()
        items = read_table(spark, "items", cfg).select("site_id", "item_id")
        summary.items_without_sales = items.join(forecast.select("site_id", "item_id"), ["site_id", "item_id"],
                                                 "left_anti").count()
        m = metrics.toPandas()
        summary.backtest = backtest_summary(m)
        _log_run(cfg, dt, section, s, summary, m, forecast, demand, level)
    summary.seconds = round(time.time() - t0, 1)
    progress(render_summary(summary))
    return summary


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


def _log_run(cfg, dt, section, s, summary, metrics_pd, forecast, demand, level) -> None:
    import mlflow

    mlflow.log_params({**{k: v for k, v in asdict(s).items() if k != "regressors"},
                       "regressors": ",".join(s.regressors), "level": "x".join(level), "run_date": dt,
                       "lookback_days": section.get("lookback_days", 730)})
    mlflow.log_metrics({f"backtest_{k}": v for k, v in summary.backtest.items() if np.isfinite(v)})
    mlflow.log_metrics({"series": summary.series, "failed_fits": summary.failed_fits,
                        **{f"series_{k}": v for k, v in summary.methods.items()}})
    mlflow.set_tags({"bundlecast.run_id": summary.run_id, "data_window_end": dt})
    if not metrics_pd.empty:
        mlflow.log_table(metrics_pd.astype({"origin": str}), "backtest_metrics.json")
    _plot_series(forecast, demand, level, dt)


def _plot_series(forecast, demand, level, dt: str, n: int = 4) -> None:
    """Forecast with its interval against the last 8 weeks of actuals, for the n series
    with the largest forecast volume."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from pyspark.sql import functions as F

    top = forecast.groupBy(*level).agg(F.sum("yhat").alias("v")).orderBy(F.col("v").desc(), *level).limit(n).toPandas()
    if top.empty:
        return
    keys = top[level]
    f = forecast.join(forecast.sparkSession.createDataFrame(keys), level, "left_semi").toPandas()
    start = date.fromisoformat(dt) - timedelta(days=56)
    a = demand.filter(F.col("ds") > F.lit(start)).join(forecast.sparkSession.createDataFrame(keys), level,
                                                        "left_semi").toPandas()
    fig, axes = plt.subplots(len(keys), 1, figsize=(9, 2.6 * len(keys)), squeeze=False)
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
    plt.close(fig)


def render_summary(s: ForecastSummary) -> str:
    methods = ", ".join(f"{k} {v:,}" for k, v in sorted(s.methods.items()))
    lines = [f"forecast run {s.run_id} for {s.dt}: {s.series:,} series ({methods}) in {s.seconds:.0f} s; "
             f"MLflow run {s.mlflow_run_id}",
             f"  items without sales in the window (no series) {s.items_without_sales:,}; order lines of unknown "
             f"items skipped {s.order_lines_unknown_item:,}; fits failed (SBA instead) {s.failed_fits:,}"]
    b = s.backtest
    if b:
        lines.append(f"  backtest mean MASE: model {b.get('model_mase', float('nan')):.3f} vs seasonal naive "
                     f"{b.get('seasonal_naive_mase', float('nan')):.3f}; sMAPE {b.get('model_smape', float('nan')):.3f}"
                     f" vs {b.get('seasonal_naive_smape', float('nan')):.3f}")
    return "\n".join(lines)
