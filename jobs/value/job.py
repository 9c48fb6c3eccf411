"""User value: predicted number of order days and spend over the next ``value.horizon_days``
(90 by default) per user, against the baseline "the last period repeats".

    spark-submit jobs/value.py --date 2026-11-20
    bundlecast value --date 2026-11-20

Features are RFM and browsing as of a cut-off; targets are the order days and spend of
the horizon V after it. The model (gradient boosting with a Poisson loss, one per target)
is trained at dt - 2V (targets up to dt - V) and evaluated at dt - V (targets up to dt)
against the baseline on the same users; then refitted on the dt - V window, registered,
and gated on spend MAE (it must beat the baseline and the champion). Scoring uses the
champion. Writes ``user_value`` (the run date's rows) and logs to MLflow
(``bundlecast-user-value``).
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.delta import read_table, replace_rows
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.models.need import matrix

EXPERIMENT = "bundlecast-user-value"
FEATURES = ["orders_30", "orders_90", "orders_365", "spend_30", "spend_90", "spend_365", "days_since_order",
            "tenure_days", "avg_order_value", "n_sites", "n_items", "views_30", "age", "segment_code"]
TARGETS = ["orders_next", "spend_next"]


@dataclass
class ValueSummary:
    dt: str
    run_id: str
    mlflow_run_id: str = ""
    model_version: str = ""
    promoted: bool | None = None
    decision: str = ""
    skipped: str = ""
    users: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def frame_at(spark, cfg: dict, cutoff: date, horizon: int, with_targets: bool = True) -> pd.DataFrame:
    """One row per user with an order in the year before the cut-off: FEATURES as of the
    cut-off, the baseline (the last ``horizon`` days repeat) and, if asked, the targets."""
    from pyspark.sql import functions as F

    T = F.lit(cutoff).cast("date")
    since = lambda d: F.lit(cutoff - timedelta(days=d)).cast("date")  # noqa: E731
    orders = (read_table(spark, "orders", cfg).filter(F.col("status") != "cancelled")
              .select("order_id", "user_id", F.to_date("order_ts").alias("day")))
    lines = read_table(spark, "order_lines", cfg).select(
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
    views = (read_table(spark, "events", cfg).filter((F.to_date("event_ts") <= T) & (F.to_date("event_ts") > since(30)))
             .groupBy("user_id").agg(F.count("*").alias("views_30")))
    segments = sorted(cfg["need"]["segments"])
    code = F.coalesce(F.element_at(F.create_map(*[x for i, seg in enumerate(segments) for x in (F.lit(seg), F.lit(i))]),
                                   F.col("segment")), F.lit(len(segments)))
    users = read_table(spark, "users", cfg).select("user_id", "age", code.alias("segment_code"))
    out = feats.join(views, "user_id", "left").join(users, "user_id", "left").na.fill(0, subset=["views_30"])
    if with_targets:
        nxt = (p.filter((F.col("day") > T) & (F.col("day") <= F.lit(cutoff + timedelta(days=horizon)).cast("date")))
               .groupBy("user_id").agg(F.countDistinct("day").alias("orders_next"), F.sum("amount").alias("spend_next")))
        out = out.join(nxt, "user_id", "left").na.fill(0, subset=TARGETS)
    return out.toPandas().sort_values("user_id").reset_index(drop=True)


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


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print) -> ValueSummary:
    import mlflow
    from bundlecast.models import registry
    from bundlecast.models.tracking import experiment

    cfg = cfg or config()
    s = cfg["value"]
    V = int(s["horizon_days"])
    summary = ValueSummary(dt, run_id or f"value-{dt}-{uuid.uuid4().hex[:8]}")
    t0 = time.time()
    end = date.fromisoformat(dt)
    train_pd = frame_at(spark, cfg, end - timedelta(days=2 * V), V)
    eval_pd = frame_at(spark, cfg, end - timedelta(days=V), V)
    if len(train_pd) < int(s["min_users"]) or len(eval_pd) < int(s["min_users"]) or not eval_pd.spend_next.sum():
        # Not an error for the nightly DAG (a young shop has no 2 x V days yet): skipped, said once.
        summary.skipped = (f"too little history: {len(train_pd)} / {len(eval_pd)} users with orders at the training / "
                           f"evaluation cut-offs (need {s['min_users']}, and {2 * V} days of orders); nothing written")
        # The date's rows are still replaced (by none): a re-run never leaves stale rows.
        replace_rows(spark, spark.createDataFrame([], catalog.table("user_value").ddl()), "user_value",
                     f"dt = DATE'{dt}'", cfg)
        summary.seconds = round(time.time() - t0, 1)
        progress(f"user value {summary.run_id} for {dt}: skipped, {summary.skipped}")
        return summary
    model = new_model(int(s.get("seed", 0))).fit(matrix(train_pd, FEATURES), train_pd[TARGETS].to_numpy(float))
    pred = model.predict(matrix(eval_pd, FEATURES))
    summary.metrics = {"model": metrics(eval_pd, pred[:, 0], pred[:, 1]),
                       "baseline": metrics(eval_pd, eval_pd.baseline_orders.to_numpy(float),
                                           eval_pd.baseline_spend.to_numpy(float))}
    # For scoring, the same model refitted on the latest complete window.
    final = new_model(int(s.get("seed", 0))).fit(matrix(eval_pd, FEATURES), eval_pd[TARGETS].to_numpy(float))
    now = frame_at(spark, cfg, end, V, with_targets=False)
    experiment(cfg, EXPERIMENT)
    with mlflow.start_run(run_name=f"value-{dt}") as run:
        summary.mlflow_run_id = run.info.run_id
        mlflow.log_params({"horizon_days": V, "train_cutoff": str(end - timedelta(days=2 * V)),
                           "eval_cutoff": str(end - timedelta(days=V)), "train_users": len(train_pd),
                           "eval_users": len(eval_pd), "model": "MultiOutput HistGradientBoosting (poisson)"})
        mlflow.set_tags({"data_window_end": dt, "bundlecast.run_id": summary.run_id})
        for scorer, m in summary.metrics.items():
            mlflow.log_metrics({f"{scorer}.{k}": v for k, v in m.items() if np.isfinite(v)})
        _plot(eval_pd, pred[:, 1])
        example = eval_pd[FEATURES].head(50).astype(float)
        version = summary.model_version = registry.log_and_register(
            final, example, final.predict(matrix(example, FEATURES)), s["model_name"], {"horizon_days": V})
        ours, base = summary.metrics["model"]["mae"], summary.metrics["baseline"]["mae"]
        decision = registry.gate(
            s["model_name"], version, "spend MAE", summary.metrics["model"]["mae"],
            lambda champ: metrics(eval_pd, *champ.predict(matrix(eval_pd, FEATURES)).T)["mae"],
            higher_is_better=False, margin=float(s["gate_margin"]),
            checks=[(ours < base, f"spend MAE {ours:.2f} {'<' if ours < base else 'not below'} baseline {base:.2f}")])
        summary.promoted, summary.decision = decision["promoted"], decision["reason"]
        mlflow.set_tags({"promoted": str(decision["promoted"]).lower(), "gate_reason": decision["reason"]})
    champ = registry.champion(cfg, s["model_name"])
    if champ is None:
        raise BundlecastError(f"user value: no champion for {s['model_name']} ({summary.decision})")
    champ_model, champ_version, _ = champ
    p_now = np.clip(champ_model.predict(matrix(now, FEATURES)), 0, None) if len(now) else np.zeros((0, 2))
    out = pd.DataFrame({"user_id": now.user_id, "predicted_orders": p_now[:, 0], "predicted_value": p_now[:, 1],
                        "baseline_value": now.baseline_spend.astype(float), "horizon_days": V,
                        "model_version": str(champ_version), "model_run_id": summary.mlflow_run_id,
                        "dt": end, "run_id": summary.run_id})
    out["value_decile"] = (pd.qcut(out.predicted_value.rank(method="first"), 10, labels=False) + 1
                           if len(out) >= 10 else 10)
    summary.users = len(out)
    ddl = catalog.table("user_value").ddl()
    frame = spark.createDataFrame(out[[c.name for c in catalog.table("user_value").columns]], ddl) if len(out) \
        else spark.createDataFrame([], ddl)
    replace_rows(spark, frame, "user_value", f"dt = DATE'{dt}'", cfg)
    summary.seconds = round(time.time() - t0, 1)
    progress(render(summary))
    return summary


def _plot(eval_pd: pd.DataFrame, spend: np.ndarray) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(eval_pd.spend_next, spend, s=4, alpha=0.4)
    top = max(float(eval_pd.spend_next.max()), float(spend.max()) if len(spend) else 0.0, 1.0)
    ax.plot([0, top], [0, top], "--", color="grey")
    ax.set(xlabel="actual spend", ylabel="predicted spend", title="user value: evaluation cut-off")
    fig.tight_layout()
    mlflow.log_figure(fig, "predicted_vs_actual.png")
    plt.close(fig)


def render(s: ValueSummary) -> str:
    lines = [f"user value {s.run_id} for {s.dt}: {s.users:,} users scored in {s.seconds:.0f} s; MLflow run "
             f"{s.mlflow_run_id}, version {s.model_version} ({'promoted' if s.promoted else 'not promoted'}: {s.decision})",
             f"  {'scorer':9s} {'spend MAE':>10s} {'RMSE':>9s} {'Spearman':>9s} {'top-10% share':>14s} {'orders MAE':>11s}"]
    for name, m in s.metrics.items():
        lines.append(f"  {name:9s} {m['mae']:10.2f} {m['rmse']:9.2f} {m['spearman']:9.3f} {m['top_decile_share']:14.1%} "
                     f"{m['orders_mae']:11.3f}")
    return "\n".join(lines)
