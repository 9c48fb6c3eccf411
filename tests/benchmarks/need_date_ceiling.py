"""How well can *any* need-date rule do on Online Retail? A ceiling check, outside the pipeline.

For each weekly cut-off D of the replay (Thursdays 2011-09-15 .. 12-01), every (customer,
item) first bought in (D, D + 7] by a customer with history is a positive; its target is the
days from D to that purchase. Three predictors, each from what was known at D:

- ``constant``: the median days-to-need of the 9 cut-offs before (the replay's constant);
- ``weekday rule``: the first day after D falling on the customer's most frequent order weekday;
- ``weekday model``: gradient boosting (absolute error) on the customer's order-weekday
  profile over the next 7 days, recency, cadence and the item's own cycle, refitted every
  week on the 9 earlier cut-offs (what ``models.need.fit_date_model`` could learn at best
  from these signals).

    .venv/bin/python tests/benchmarks/need_date_ceiling.py ../shared/data/online_retail

Prints the mean absolute error per cut-off and pooled. On Online Retail (2011-09-15 .. 12-01,
111,076 positives): constant 1.598 days, weekday rule 1.905, weekday model 1.574 (better than
the constant on 9 of 12 cut-offs, by 1.5% pooled). The customer's order-weekday profile is the
one signal found that beats the constant here; the pipeline's date regressor now has it
(``models.need.WEEKDAY_PROFILE``, in ``DATE_FEATURES``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = [f"share_d{k}" for k in range(1, 8)] + ["n_days", "since", "gap", "due", "weekday_rule", "item_since",
                                                   "item_gap", "item_due"]


def purchases(folder: Path) -> pd.DataFrame:
    d = pd.read_csv(folder / "online_retail_2010_2011.csv.gz", dtype={"CustomerID": str, "StockCode": str},
                    usecols=["InvoiceNo", "StockCode", "InvoiceDate", "CustomerID"])
    d = d[d.CustomerID.notna() & ~d.InvoiceNo.astype(str).str.startswith("C")]
    d["day"] = pd.to_datetime(d.InvoiceDate).dt.normalize()
    return d[["CustomerID", "StockCode", "day"]].drop_duplicates()


def positives(p: pd.DataFrame, cut: pd.Timestamp, horizon: int = 7, lookback: int = 180) -> pd.DataFrame:
    """The positives of cut-off ``cut`` with their features (customer and item history before it)."""
    hist = p[(p.day <= cut) & (p.day > cut - pd.Timedelta(days=lookback))]
    ahead = p[(p.day > cut) & (p.day <= cut + pd.Timedelta(days=horizon))]
    first = ahead.groupby(["CustomerID", "StockCode"]).day.min().reset_index()
    first = first[first.CustomerID.isin(hist.CustomerID)].assign(target=lambda f: (f.day - cut).dt.days)
    days = hist[["CustomerID", "day"]].drop_duplicates().assign(weekday=lambda f: f.day.dt.dayofweek)
    per_weekday = days.groupby(["CustomerID", "weekday"]).size().unstack(fill_value=0)
    share = per_weekday.div(per_weekday.sum(axis=1), axis=0)
    f = pd.DataFrame(index=per_weekday.index)
    for k in range(1, 8):
        weekday = (cut.dayofweek + k) % 7
        f[f"share_d{k}"] = share[weekday] if weekday in share else 0.0
    g = days.groupby("CustomerID").day
    f["n_days"] = per_weekday.sum(axis=1)
    f["since"] = (cut - g.max()).dt.days
    f["gap"] = (g.max() - g.min()).dt.days / (f.n_days - 1).where(f.n_days > 1)
    f["due"] = f.gap - f.since
    f["weekday_rule"] = ((per_weekday.idxmax(axis=1) - cut.dayofweek) % 7).replace(0, 7)
    item = hist.groupby(["CustomerID", "StockCode"]).day.agg(["max", "min", "nunique"])
    out = first.join(f, on="CustomerID").join(item, on=["CustomerID", "StockCode"])
    out["item_since"] = (cut - out["max"]).dt.days
    out["item_gap"] = (out["max"] - out["min"]).dt.days / (out["nunique"] - 1).where(out["nunique"] > 1)
    out["item_due"] = out.item_gap - out.item_since
    return out.assign(cut=cut)


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the Online Retail folder (../shared/data/online_retail)")
    parser.add_argument("--first", default="2011-09-15")
    parser.add_argument("--last", default="2011-12-01")
    parser.add_argument("--train-weeks", type=int, default=9)
    args = parser.parse_args()
    p = purchases(args.folder)
    first, last = pd.Timestamp(args.first), pd.Timestamp(args.last)
    cuts = pd.date_range(first - pd.Timedelta(weeks=args.train_weeks + 1), last, freq="7D")
    frame = pd.concat([positives(p, c) for c in cuts], ignore_index=True)
    rows = []
    for cut in cuts[cuts >= first]:
        # the cut-offs whose 7 days ended by D: known on D
        train = frame[(frame.cut <= cut - pd.Timedelta(days=7))
                      & (frame.cut > cut - pd.Timedelta(weeks=args.train_weeks + 1))]
        test = frame[frame.cut == cut]
        model = HistGradientBoostingRegressor(loss="absolute_error", max_iter=200, learning_rate=0.05,
                                              max_leaf_nodes=15, random_state=0).fit(train[FEATURES], train.target)
        predicted = np.clip(np.round(model.predict(test[FEATURES])), 1, 7)
        rows.append({"cut-off": cut.date(), "positives": len(test),
                     "constant": (test.target - train.target.median()).abs().mean(),
                     "weekday rule": (test.target - test.weekday_rule).abs().mean(),
                     "weekday model": (test.target - predicted).abs().mean()})
    out = pd.DataFrame(rows)
    print(out.to_string(index=False, float_format="%.3f"))
    weights = out.positives / out.positives.sum()
    print("pooled MAE (days): " + ", ".join(f"{c} {(out[c] * weights).sum():.3f}"
                                           for c in ("constant", "weekday rule", "weekday model")))


if __name__ == "__main__":
    main()
