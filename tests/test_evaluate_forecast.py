"""The forecast evaluation (``bundlecast eval forecast``): the long-tail series are the items
ranked just below the top 100, built with the same rules as the derived daily files; the
head/tail split is the nightly job's; every method is scored on the same held-out days."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from bundlecast.jobs.tools import evaluate_forecast as ev
from bundlecast.models import forecast as fc


def _write_transactions(folder, rows_old, rows_new):
    old = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
    new = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    for name, header, rows in (("online_retail_II_2009_2010.csv.gz", old, rows_old),
                               ("online_retail_2010_2011.csv.gz", new, rows_new)):
        with gzip.open(folder / name, "wt") as f:
            f.write(header + "".join(f"{inv},{code},x,{q},{ts},{p},1,UK\n" for inv, code, q, ts, p in rows))


def test_tail_series_follow_the_derived_files_rules(tmp_path):
    rows_old = [("1", "10001", 50, "2010-11-29 10:00:00", 1.0),   # rank 1: skipped with skip=1
                ("2", "10002", 9, "2010-11-29 11:00:00", 1.0),
                ("3", "10002", 4, "2010-12-01 09:00:00", 1.0),    # on/after 2010-12-01: the newer file's
                ("C4", "10003", 100, "2010-11-29 12:00:00", 1.0),  # a cancellation: not a sale
                ("5", "POST", 100, "2010-11-29 12:00:00", 1.0)]    # not a product
    rows_new = [("6", "10002", 3, "2010-12-01 09:00:00", 1.0),
                ("7", "10003", 2, "2010-12-02 09:00:00", 0.0),     # price 0: not a sale
                ("8", "10004", 1, "2010-12-02 09:00:00", 2.0),
                ("9", "10004", -5, "2010-12-02 10:00:00", 2.0)]    # a return: not a sale
    _write_transactions(tmp_path, rows_old, rows_new)
    tail = ev.load_tail_series(tmp_path, n=5, skip=1)
    assert sorted(tail.series.unique()) == ["10002", "10004"]  # ranks 2 and 3; no 10003, POST
    daily = tail.pivot(index="ds", columns="series", values="y")
    assert list(daily.index.strftime("%m-%d")) == ["11-29", "11-30", "12-01", "12-02"]  # every day, 0 filled
    assert daily["10002"].tolist() == [9, 0, 3, 0] and daily["10004"].tolist() == [0, 0, 0, 1]


def test_every_method_is_scored_on_the_same_holdout_and_the_split_is_the_jobs():
    rng = np.random.default_rng(0)
    ds = pd.date_range("2025-01-06", periods=140, freq="D")
    history = pd.DataFrame({"ds": ds, "y": rng.poisson(8 * np.r_[1, 1.2, 1.1, 1, 1.5, 2.5, 0.3][ds.dayofweek])
                            .astype(float)})
    s = fc.ForecastSettings(backtest_origins=2, horizon_days=28)
    rows = {r["method"]: r for r in ev.evaluate_series(history, 28, s, head=False)}
    assert set(rows) == set(ev.METHODS)
    assert rows["pipeline"]["chosen"] in fc.TAIL_METHODS and rows["statsforecast"]["chosen"] in fc.TAIL_METHODS
    assert rows["pipeline"]["mase"] == pytest.approx(rows["statsforecast"]["mase"])  # a tail series: the same path
    assert rows["pipeline"]["mase"] < rows["seasonal_naive"]["mase"]
    assert all(r["seconds"] >= 0 for r in rows.values())
    head = {r["method"]: r for r in ev.evaluate_series(history, 28, s, head=True)}
    assert head["pipeline"]["chosen"] in ("prophet", *fc.TAIL_METHODS)
    # The files hold the largest items; the whole store's units decide what is head.
    series = pd.DataFrame({"series": ["a"] * 2 + ["b"] * 2, "ds": pd.to_datetime(["2025-01-01", "2025-01-02"] * 2),
                           "y": [30.0, 30, 10, 10]})
    store = pd.DataFrame({"ds": pd.to_datetime(["2025-01-01", "2025-01-02"]), "y": [100.0, 100]})
    flags = ev.head_flags(series, store, pd.Timestamp("2025-01-02"), 0.5)
    assert flags.to_dict() == {"a": True, "b": True}  # 60 units before b: below 100
    assert ev.head_flags(series, store, pd.Timestamp("2025-01-02"), 0.25).to_dict() == {"a": True, "b": False}
