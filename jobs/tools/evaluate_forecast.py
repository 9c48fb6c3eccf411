"""Forecast evaluation on real data, UCI Online Retail (``../shared/data/online_retail``),
last ``holdout_days`` held out, on two groups of daily item series:

* ``top100``: the 100 items with the most units (``daily_item_sales_top100_*.csv``), 29%
  of the store's units: under ``forecast.prophet_volume_share`` these are the head;
* ``tail``: the ``tail`` items ranked just below them (101, 102, ...), built from the two
  transaction files with the same rules as the derived daily files (product sale lines,
  every calendar day, 0 without sales).

For each series, fitted on the days before the holdout only:
* ``prophet``: the Prophet path of ``models/forecast.py`` forced on every series;
* ``statsforecast``: the long-tail path forced (ETS(A,N,A) or Theta, picked by the rolling
  backtest before the holdout);
* ``pipeline``: what the nightly job does: Prophet for a series that carries the volume,
  the long-tail path otherwise, SBA for short or intermittent series, seasonal naive where
  the chosen method loses its own rolling backtest;
* ``seasonal_naive``: the same weekday of the last training week, repeated (the baseline).

Mean MASE (scaled by the training series' in-sample seasonal-naive MAE), sMAPE and MAE
over the series, and the seconds one series costs each method (backtest included);
logged to MLflow (experiment ``bundlecast-forecast-eval``).

    bundlecast eval forecast --data ../shared/data/online_retail [--tail 200]
"""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.models import forecast as fc

METHODS = ("prophet", "statsforecast", "pipeline", "seasonal_naive")
GROUPS = ("top100", "tail")
EXPERIMENT = "bundlecast-forecast-eval"
PRODUCT = re.compile(r"^\d{5}")


def load_series(data_dir: str | Path) -> pd.DataFrame:
    """series, ds, y from the top-100 daily item file (one clear error if it is missing)."""
    files = sorted(Path(data_dir).glob("daily_item_sales_top100_*.csv"))
    if not files:
        raise BundlecastError(f"no daily_item_sales_top100_*.csv under {data_dir} (see ../shared/data/README.md)")
    raw = pd.read_csv(files[0], dtype={"StockCode": str})
    return pd.DataFrame({"series": raw.StockCode, "ds": pd.to_datetime(raw.date), "y": raw.quantity.astype(float)})


def store_units(data_dir: str | Path) -> pd.DataFrame:
    """ds, y: the whole store's units per day (``daily_sales_*.csv``)."""
    files = sorted(Path(data_dir).glob("daily_sales_*.csv"))
    if not files:
        raise BundlecastError(f"no daily_sales_*.csv under {data_dir} (see ../shared/data/README.md)")
    raw = pd.read_csv(files[0])
    return pd.DataFrame({"ds": pd.to_datetime(raw.date), "y": raw.quantity.astype(float)})


def load_tail_series(data_dir: str | Path, n: int, skip: int = 100) -> pd.DataFrame:
    """series, ds, y for the items ranked ``skip + 1`` .. ``skip + n`` by units, from the
    Online Retail II rows before 2010-12-01 and every Online Retail row: product sale lines
    only (invoice not starting with C or A, quantity and price > 0, StockCode of 5 digits),
    every calendar day of the files' span, 0 on days without sales."""
    d = Path(data_dir)
    old, new = d / "online_retail_II_2009_2010.csv.gz", d / "online_retail_2010_2011.csv.gz"
    for f in (old, new):
        if not f.exists():
            raise BundlecastError(f"{f} is missing (see ../shared/data/README.md)")

    def read(f: Path) -> pd.DataFrame:  # both files: invoice, code, _, quantity, date, price, ...
        x = pd.read_csv(f, usecols=[0, 1, 3, 4, 5], dtype=str)
        x.columns = ["invoice", "code", "qty", "ts", "price"]
        return x.assign(qty=pd.to_numeric(x.qty), price=pd.to_numeric(x.price),
                        ds=pd.to_datetime(x.ts).dt.normalize())

    a, b = read(old), read(new)
    rows = pd.concat([a[a.ds < "2010-12-01"], b], ignore_index=True)
    sale = (~rows.invoice.str.match(r"^[CA]")) & (rows.qty > 0) & (rows.price > 0) & rows.code.str.match(PRODUCT)
    daily = rows[sale].groupby(["code", "ds"], as_index=False).qty.sum()
    ranked = daily.groupby("code").qty.sum().sort_values(ascending=False, kind="stable")
    keep = ranked.index[skip:skip + n]
    days = pd.date_range(rows.ds.min(), rows.ds.max(), freq="D")
    grid = pd.MultiIndex.from_product([keep, days], names=["code", "ds"])
    full = daily.set_index(["code", "ds"]).qty.reindex(grid, fill_value=0).reset_index()
    return pd.DataFrame({"series": full.code, "ds": full.ds, "y": full.qty.astype(float)})


def evaluate_series(history: pd.DataFrame, holdout_days: int, s: fc.ForecastSettings, head: bool = True) -> list[dict]:
    """One row per method for one series: mae, smape, mase on the holdout, seconds, and the
    method the pipeline and the long-tail path chose."""
    history = history.sort_values("ds").reset_index(drop=True)
    train, test = history.iloc[:-holdout_days].copy(), history.iloc[-holdout_days:]
    future = test.drop(columns="y")
    capped = train.assign(y=fc.winsorize(train.y.to_numpy(), s.winsorize_quantile))
    runs = {"prophet": lambda: (fc.predict(capped, future, "prophet", None, s), "prophet"),
            "statsforecast": lambda: _path(fc.forecast_series(train, future, None, s, head=False)),
            "pipeline": lambda: _path(fc.forecast_series(train, future, None, s, head=head)),
            "seasonal_naive": lambda: (fc.predict(train, future, "seasonal_naive", None, s), "seasonal_naive")}
    rows = []
    for m, make in runs.items():
        t0 = time.perf_counter()
        f, chosen = make()
        rows.append(dict(method=m, chosen=chosen, mae=fc.mae(test.y, f.yhat), smape=fc.smape(test.y, f.yhat),
                         mase=fc.mase(test.y, f.yhat, train.y), seconds=time.perf_counter() - t0))
    return rows


def _path(result) -> tuple[pd.DataFrame, str]:
    forecast, _, chosen = result
    return forecast, chosen


def head_flags(series: pd.DataFrame, store: pd.DataFrame, train_end: pd.Timestamp, share: float) -> pd.Series:
    """Per series, whether it carries the volume as the nightly job decides it
    (``models.forecast.head_series``), over the training days, against the whole store's
    units (the items outside these files are all smaller: the files hold the largest)."""
    units = series[series.ds <= train_end].groupby("series").y.sum()
    return fc.head_series(units, share, total=float(store[store.ds <= train_end].y.sum()))


def evaluate(spark, cfg: dict, data_dir: str | Path, holdout_days: int = 56, tail: int = 200) -> dict:
    """Per-series holdout metrics for every method and group, in parallel over the Spark cores."""
    section = dict(cfg.get("forecast", {}))
    if section.get("country_holidays") is None:
        section["country_holidays"] = "GB"  # UK retailer: Prophet's UK holidays
    s = fc.ForecastSettings.from_config(section)
    # The backtest that picks the pipeline's method uses the holdout's horizon.
    s = dataclasses.replace(s, horizon_days=holdout_days)
    frames = {"top100": load_series(data_dir)}
    if tail:
        frames["tail"] = load_tail_series(data_dir, tail)
    store = store_units(data_dir)
    train_end = frames["top100"].ds.max() - pd.Timedelta(days=holdout_days)
    store_total = float(store[store.ds <= train_end].y.sum())
    series = pd.concat([f.assign(group=g) for g, f in frames.items()], ignore_index=True)
    # Head or tail as the nightly would see it: the top 100 are the largest items, the tail
    # items come right after them.
    head = head_flags(series, store, train_end, s.prophet_volume_share)
    series = series.assign(head=series.series.map(head).fillna(False).astype(bool))
    units_share = (series[series.ds <= train_end].groupby("group").y.sum() / store_total).to_dict()

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        rows = evaluate_series(pdf[["ds", "y"]], holdout_days, s, bool(pdf["head"].iloc[0]))
        return pd.DataFrame(rows).assign(series=pdf.series.iloc[0], group=pdf.group.iloc[0],
                                         head=bool(pdf["head"].iloc[0]))

    schema = ("method string, chosen string, mae double, smape double, mase double, seconds double, "
              "series string, group string, head boolean")
    per_series = (spark.createDataFrame(series.assign(ds=series.ds.dt.date)).repartition(16, "series")
                  .groupBy("series").applyInPandas(lambda pdf: run(pdf.assign(ds=pd.to_datetime(pdf.ds))), schema)
                  .toPandas())
    results = {g: summarise(per_series[per_series.group == g]) for g in frames}
    results["_meta"] = dict(series=int(per_series.series.nunique()), holdout_days=holdout_days,
                            train_end=str(train_end.date()), country_holidays=s.country_holidays,
                            seasonality_mode=s.seasonality_mode, prophet_volume_share=s.prophet_volume_share,
                            tail_methods=",".join(s.tail_methods), units_share=units_share)
    results["_meta"]["run_id"] = log_to_mlflow(cfg, results, per_series)
    return results


def summarise(part: pd.DataFrame) -> dict:
    """Per method: mean MASE, sMAPE, MAE, seconds per series, and the methods chosen."""
    out = {}
    for m in METHODS:
        rows = part[part.method == m]
        out[m] = {k: float(rows[k].mean()) for k in ("mase", "smape", "mae", "seconds")}
        out[m]["chosen"] = rows.chosen.value_counts().to_dict()
    out["series"] = int(part.series.nunique())
    out["head_series"] = int(part.drop_duplicates("series")["head"].sum())
    return out


def log_to_mlflow(cfg: dict, results: dict, per_series: pd.DataFrame) -> str:
    import mlflow

    from bundlecast.models.tracking import experiment
    experiment(cfg, EXPERIMENT)
    meta = results["_meta"]
    with mlflow.start_run(run_name=f"online-retail-holdout-{meta['holdout_days']}d") as run:
        mlflow.log_params({k: v for k, v in meta.items() if k != "units_share"})
        for g in GROUPS:
            for m in METHODS if g in results else ():
                mlflow.log_metrics({f"{g}.{m}.{k}": v for k, v in results[g][m].items()
                                    if k != "chosen" and np.isfinite(v)})
        mlflow.log_dict(results, "results.json")
        mlflow.log_table(per_series, "per_series.json")
        return run.info.run_id


def render(results: dict) -> str:
    meta = results["_meta"]
    lines = [f"{meta['series']} series, last {meta['holdout_days']} days held out (trained up to {meta['train_end']}); "
             f"Prophet for the series that carry {meta['prophet_volume_share']:.0%} of the units, "
             f"{meta['tail_methods']} for the tail"]
    for g in GROUPS:
        if g not in results:
            continue
        r = results[g]
        lines += [f"{g}: {r['series']} series, {meta['units_share'][g]:.1%} of the store's units, "
                  f"{r['head_series']} of them head",
                  f"  {'method':16s} {'mean MASE':>10s} {'mean sMAPE':>11s} {'mean MAE':>9s} {'s/series':>9s}  chosen"]
        for m in METHODS:
            x = r[m]
            chosen = ", ".join(f"{k} {v}" for k, v in sorted(x["chosen"].items())) if m in ("pipeline",
                                                                                          "statsforecast") else ""
            lines.append(f"  {m:16s} {x['mase']:10.3f} {x['smape']:11.3f} {x['mae']:9.2f} {x['seconds']:9.3f}  {chosen}")
        verdict = "beats" if r["pipeline"]["mase"] < r["seasonal_naive"]["mase"] else "does NOT beat"
        lines.append(f"  the pipeline {verdict} seasonal naive on mean MASE")
    return "\n".join(lines)
