"""Pure transforms of the value step: features as of a cut-off, metrics, the output rows."""
from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

FEATURES = ["orders_30", "orders_90", "orders_365", "spend_30", "spend_90", "spend_365", "days_since_order",
            "tenure_days", "avg_order_value", "n_sites", "n_items", "views_30", "age", "segment_code",
            # the standard model's expectations (BG/NBD x Gamma-Gamma, fitted at the same cut-off)
            "bgnbd_orders", "bgnbd_spend"]
TARGETS = ["orders_next", "spend_next"]


def frame_at(inputs, cutoff: date, horizon: int, segments: list[str], with_targets: bool = True) -> pd.DataFrame:
    """One row per user with an order in the year before the cut-off: FEATURES as of the
    cut-off, the baseline (the last ``horizon`` days repeat) and, if asked, the targets.
    ``inputs``: the step's frames (orders, order_lines, events, users)."""
    from pyspark.sql import functions as F

    T = F.lit(cutoff).cast("date")
    since = lambda d: F.lit(cutoff - timedelta(days=d)).cast("date")  # noqa: E731
    orders = (inputs.orders.filter(F.col("status") != "cancelled")
              .select("order_id", "user_id", "day"))
    lines = inputs.order_lines.select(
        "order_id", "site_id", "item_id",
        (F.col("quantity") * F.col("unit_price") * (1 - F.coalesce("discount", F.lit(0.0)))).alias("amount"))
    p = lines.join(orders, "order_id")
    past = p.filter((F.col("day") <= T) & (F.col("day") > since(365)))

    def window(days):
        w = F.col("day") > since(days)
        return [F.countDistinct(F.when(w, F.col("day"))).alias(f"orders_{days}"),
                F.sum(F.when(w, F.col("amount")).otherwise(0.0)).alias(f"spend_{days}")]

    feats = past.groupBy("user_id").agg(
        *window(30), *window(90), *window(365),
        F.datediff(T, F.max("day")).alias("days_since_order"), F.datediff(T, F.min("day")).alias("tenure_days"),
        F.countDistinct("site_id").alias("n_sites"), F.countDistinct("site_id", "item_id").alias("n_items"),
        F.countDistinct(F.when(F.col("day") > since(horizon), F.col("day"))).alias("baseline_orders"),
        F.sum(F.when(F.col("day") > since(horizon), F.col("amount")).otherwise(0.0)).alias("baseline_spend"))
    feats = feats.withColumn("avg_order_value", F.col("spend_365") / F.greatest(F.col("orders_365"), F.lit(1)))
    views = (inputs.events.filter((F.col("day") <= T) & (F.col("day") > since(30)))
             .groupBy("user_id").agg(F.count("*").alias("views_30")))
    segments = sorted(segments)
    code = F.coalesce(F.element_at(F.create_map(*[x for i, seg in enumerate(segments) for x in (F.lit(seg), F.lit(i))]),
                                   F.col("segment")), F.lit(len(segments)))
    users = inputs.users.select("user_id", "age", code.alias("segment_code"))
    out = feats.join(views, "user_id", "left").join(users, "user_id", "left").na.fill(0, subset=["views_30"])
    if with_targets:
        nxt = (p.filter((F.col("day") > T) & (F.col("day") <= F.lit(cutoff + timedelta(days=horizon)).cast("date")))
               .groupBy("user_id").agg(F.countDistinct("day").alias("orders_next"), F.sum("amount").alias("spend_next")))
        out = out.join(nxt, "user_id", "left").na.fill(0, subset=TARGETS)
    return with_standard_model(out.toPandas().sort_values("user_id").reset_index(drop=True), horizon)


def with_standard_model(frame: pd.DataFrame, horizon: int, min_users: int = 20) -> pd.DataFrame:
    """``frame`` plus ``bgnbd_orders`` and ``bgnbd_spend``: BG/NBD orders x Gamma-Gamma spend
    expected in the next ``horizon`` days, fitted on these users' history up to the cut-off
    (no label is used). They are the baseline the model must beat and two of its features:
    the booster starts from the standard model and corrects it. NaN for fewer than
    ``min_users`` users (the booster routes missing values)."""
    from bundlecast.models import clv

    frame = frame.copy()
    if len(frame) < min_users:
        frame["bgnbd_orders"], frame["bgnbd_spend"] = np.nan, np.nan
        return frame
    frame["bgnbd_orders"], frame["bgnbd_spend"] = clv.fit_predict(frame, horizon)
    return frame


def new_model(seed: int = 0):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.multioutput import MultiOutputRegressor
    return MultiOutputRegressor(HistGradientBoostingRegressor(loss="poisson", max_iter=200, learning_rate=0.05,
                                                              min_samples_leaf=30, random_state=seed))


def metrics(actual: pd.DataFrame, orders: np.ndarray, spend: np.ndarray) -> dict[str, float]:
    """Spend: MAE, RMSE, Spearman rank correlation, share of actual spend held by the
    predicted top decile; orders: MAE."""
    from scipy.stats import spearmanr

    a = actual.spend_next.to_numpy(float)
    top = np.argsort(-spend, kind="stable")[: max(1, len(spend) // 10)]
    rho = spearmanr(a, spend).statistic if len(a) > 2 and np.std(spend) > 0 else float("nan")
    return {"mae": float(np.mean(np.abs(a - spend))), "rmse": float(np.sqrt(np.mean((a - spend) ** 2))),
            "spearman": float(rho), "top_decile_share": float(a[top].sum() / a.sum()) if a.sum() > 0 else float("nan"),
            "orders_mae": float(np.mean(np.abs(actual.orders_next.to_numpy(float) - orders)))}


def user_value_rows(users: pd.DataFrame, predicted: np.ndarray, horizon: int, version: str, mlflow_run_id: str,
                    day: date, run_id: str) -> pd.DataFrame:
    """``user_value`` rows from the champion's predictions (orders, spend) for ``users``,
    with the value decile (10 = the most valuable tenth)."""
    out = pd.DataFrame({"user_id": users.user_id, "predicted_orders": predicted[:, 0], "predicted_value": predicted[:, 1],
                        "baseline_value": users.baseline_spend.astype(float), "horizon_days": horizon,
                        "model_version": str(version), "model_run_id": mlflow_run_id, "dt": day, "run_id": run_id})
    out["value_decile"] = (pd.qcut(out.predicted_value.rank(method="first"), 10, labels=False) + 1
                           if len(out) >= 10 else 10)
    return out
