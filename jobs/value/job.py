"""The value step's run: extract, transform, train and gate in MLflow, load, record."""
from __future__ import annotations

import uuid
from datetime import date, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.value.extract import extract
from bundlecast.jobs.value.load import write_user_value
from bundlecast.jobs.value.transform import FEATURES, TARGETS, frame_at, metrics, new_model, user_value_rows
from bundlecast.models.need import matrix

EXPERIMENT = "bundlecast-user-value"


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print,
        mode: str = "train") -> StepRun:
    """``train`` (nightly): fit on a time split, compare with the baseline and BG/NBD x
    Gamma-Gamma, register, gate, then score every user with the champion; ``score``: score
    with the champion only (between refits, as the replay does on its light dates)."""
    from bundlecast.models import registry

    cfg = cfg or config()
    if mode not in ("train", "score"):
        raise BundlecastError(f"mode must be train or score, not {mode!r}")
    tables = Tables(spark, cfg)
    s = cfg["value"]
    V = int(s["horizon_days"])
    summary = StepRun("value", dt, run_id or f"value-{dt}-{uuid.uuid4().hex[:8]}", mode)
    end = date.fromisoformat(dt)
    inputs = extract(tables)
    segments = cfg["need"]["segments"]
    if mode == "score":
        return _score_only(cfg, tables, inputs, summary, end, V, segments, progress)
    # A young shop (no order 2 x V days before the run date) is skipped after one small read.
    first_cut = end - timedelta(days=2 * V)
    too_little = None if _any_order_before(inputs.orders, first_cut) else \
        f"too little history: no order before {first_cut} (the training cut-off needs {2 * V} days of orders)"
    if too_little is None:
        train_pd = frame_at(inputs, first_cut, V, segments)
        eval_pd = frame_at(inputs, end - timedelta(days=V), V, segments)
        if len(train_pd) < int(s["min_users"]) or len(eval_pd) < int(s["min_users"]) or not eval_pd.spend_next.sum():
            too_little = (f"too little history: {len(train_pd)} / {len(eval_pd)} users with orders at the training / "
                          f"evaluation cut-offs (need {s['min_users']}, and {2 * V} days of orders)")
    if too_little:
        # Not an error for the nightly DAG (a young shop has no 2 x V days yet): skipped, said once.
        summary.notes.append(f"{too_little}; nothing written")
        summary.labels["skipped"] = "true"
        write_user_value(tables, pd.DataFrame(), dt)
        record(tables, summary.finish())
        progress(f"user value {summary.run_id} for {dt}: skipped, {summary.notes[0]}")
        return summary
    model = new_model(int(s["seed"])).fit(matrix(train_pd, FEATURES), train_pd[TARGETS].to_numpy(float))
    pred = model.predict(matrix(eval_pd, FEATURES))
    summary.metrics = {"model": metrics(eval_pd, pred[:, 0], pred[:, 1]),
                       "baseline": metrics(eval_pd, eval_pd.baseline_orders.to_numpy(float),
                                           eval_pd.baseline_spend.to_numpy(float)),
                       # the standard model: BG/NBD orders x Gamma-Gamma spend, on the same users
                       "bgnbd": metrics(eval_pd, eval_pd.bgnbd_orders.to_numpy(float),
                                        eval_pd.bgnbd_spend.to_numpy(float))}
    # For scoring, the same model refitted on the latest complete window.
    final = new_model(int(s["seed"])).fit(matrix(eval_pd, FEATURES), eval_pd[TARGETS].to_numpy(float))
    now = frame_at(inputs, end, V, segments, with_targets=False)
    _register_and_gate(cfg, dt, summary, final, train_pd, eval_pd, pred)
    champ = registry.champion(cfg, s["model_name"])
    if champ is None:
        raise BundlecastError(f"user value: no champion for {s['model_name']} ({summary.labels['decision']})")
    _score(tables, summary, champ, now, V, end)
    progress(render(summary))
    return summary


def _score_only(cfg: dict, tables, inputs, summary: StepRun, end: date, V: int, segments, progress) -> StepRun:
    from bundlecast.models import registry

    champ = registry.champion(cfg, cfg["value"]["model_name"])
    if champ is None:
        raise BundlecastError(f"user value: no champion for {cfg['value']['model_name']}: run `bundlecast value` "
                              "(mode train) first")
    _score(tables, summary, champ, frame_at(inputs, end, V, segments, with_targets=False), V, end)
    progress(f"user value {summary.run_id} for {summary.dt}: {summary.counts['users_scored']:,} users scored with "
             f"champion version {champ.version} in {summary.seconds:.0f} s")
    return summary


def _score(tables, summary: StepRun, champ, now: pd.DataFrame, V: int, end: date) -> None:
    """The champion's (``registry.Champion``) ``user_value`` rows for the run date (replaced, each naming the
    champion's version and the MLflow run that trained it), and the run recorded."""
    p_now = np.clip(champ.model.predict(matrix(now, FEATURES)), 0, None) if len(now) else np.zeros((0, 2))
    out = user_value_rows(now, p_now, V, str(champ.version), champ.run_id, end, summary.run_id)
    summary.counts["users_scored"] = len(out)
    summary.labels["scored_with_version"] = str(champ.version)
    write_user_value(tables, out, summary.dt)
    record(tables, summary.finish())


def _any_order_before(orders, day: date) -> bool:
    """Whether any order was placed before ``day`` (site-local)."""
    from pyspark.sql import functions as F
    return orders.filter(F.col("day") < F.lit(day)).limit(1).count() > 0


def _register_and_gate(cfg: dict, dt: str, summary: StepRun, final, train_pd: pd.DataFrame, eval_pd: pd.DataFrame,
                       pred: np.ndarray) -> None:
    """One MLflow run: parameters, metrics, the plot, the registered version and the gate's
    decision (spend MAE; it must beat the baseline and the champion)."""
    import mlflow

    from bundlecast.models import registry
    from bundlecast.models.tracking import experiment

    s = cfg["value"]
    V = int(s["horizon_days"])
    end = date.fromisoformat(dt)
    experiment(cfg, EXPERIMENT)
    with mlflow.start_run(run_name=f"value-{dt}") as run:
        summary.labels["mlflow_run_id"] = run.info.run_id
        mlflow.log_params({"horizon_days": V, "train_cutoff": str(end - timedelta(days=2 * V)),
                           "eval_cutoff": str(end - timedelta(days=V)), "train_users": len(train_pd),
                           "eval_users": len(eval_pd), "model": "MultiOutput HistGradientBoosting (poisson)"})
        mlflow.set_tags({"data_window_end": dt, "bundlecast.run_id": summary.run_id})
        for scorer, m in summary.metrics.items():
            mlflow.log_metrics({f"{scorer}.{k}": v for k, v in m.items() if np.isfinite(v)})
        _plot(eval_pd, pred[:, 1])
        example = eval_pd[FEATURES].head(50).astype(float)
        version = registry.log_and_register(
            final, example, final.predict(matrix(example, FEATURES)), s["model_name"], {"horizon_days": V})
        summary.labels["model_version"] = str(version)
        ours, base = summary.metrics["model"]["mae"], summary.metrics["baseline"]["mae"]
        checks = [(ours < base, f"spend MAE {ours:.2f} {'<' if ours < base else 'not below'} baseline {base:.2f}")]
        if s.get("gate_requires_bgnbd", True):
            std = summary.metrics["bgnbd"]["mae"]
            checks.append((ours < std, f"{'<' if ours < std else 'not below'} BG/NBD x Gamma-Gamma {std:.2f}"))
        decision = registry.gate(
            s["model_name"], version, "spend MAE", summary.metrics["model"]["mae"],
            lambda champ: metrics(eval_pd, *champ.predict(matrix(eval_pd, FEATURES)).T)["mae"],
            higher_is_better=False, margin=float(s["gate_margin"]), checks=checks)
        summary.labels.update(promoted=str(decision["promoted"]).lower(), decision=decision["reason"])
        mlflow.set_tags({"promoted": str(decision["promoted"]).lower(), "gate_reason": decision["reason"]})


def _plot(eval_pd: pd.DataFrame, spend: np.ndarray) -> None:
    import mlflow
    from matplotlib.figure import Figure  # not pyplot: no global state, safe beside another step's plots

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(eval_pd.spend_next, spend, s=4, alpha=0.4)
    top = max(float(eval_pd.spend_next.max()), float(spend.max()) if len(spend) else 0.0, 1.0)
    ax.plot([0, top], [0, top], "--", color="grey")
    ax.set(xlabel="actual spend", ylabel="predicted spend", title="user value: evaluation cut-off")
    fig.tight_layout()
    mlflow.log_figure(fig, "predicted_vs_actual.png")


def render(s: StepRun) -> str:
    promoted = "promoted" if s.labels.get("promoted") == "true" else "not promoted"
    lines = [f"user value {s.run_id} for {s.dt}: {s.counts['users_scored']:,} users scored in {s.seconds:.0f} s; "
             f"MLflow run {s.labels.get('mlflow_run_id')}, version {s.labels.get('model_version')} "
             f"({promoted}: {s.labels.get('decision')})",
             f"  {'scorer':9s} {'spend MAE':>10s} {'RMSE':>9s} {'Spearman':>9s} {'top-10% share':>14s} {'orders MAE':>11s}"]
    for name, m in s.metrics.items():
        lines.append(f"  {name:9s} {m['mae']:10.2f} {m['rmse']:9.2f} {m['spearman']:9.3f} {m['top_decile_share']:14.1%} "
                     f"{m['orders_mae']:11.3f}")
    return "\n".join(lines)
