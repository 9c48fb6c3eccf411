"""The need step's run (see the package docstring)."""
from __future__ import annotations

import json
import time
import uuid
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, last_watermark, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.need.candidates import candidates, cutoff_frame
from bundlecast.jobs.need.extract import extract, latest_activity, touched_users
from bundlecast.jobs.need.features import _sampled_training_frame, active_users, examples, features
from bundlecast.models import need as nm

EXPERIMENT = "bundlecast-need-model"


def train(spark, dt: str, run_id: str, cfg: dict, summary: StepRun | None = None) -> StepRun:
    """Train on a strict time split, evaluate against the baselines on the same users,
    register in MLflow and promote through the gate."""
    s = settings(cfg)
    H = int(s["horizon_days"])
    summary = summary or StepRun("need", dt, run_id, "train")
    inputs = extract(Tables(spark, cfg)).persisted()
    eval_cut = date.fromisoformat(dt) - timedelta(days=H)
    train_cuts = [eval_cut - timedelta(days=H + i * int(s["cutoff_step_days"])) for i in range(int(s["train_cutoffs"]))]
    with summary.timed("examples"):
        train_pd, eval_pd, bought = training_frames(inputs, eval_cut, train_cuts, H, s)
        baskets = next_baskets(inputs, eval_cut, H, s)
    summary.counts["train_examples"], summary.counts["eval_examples"] = len(train_pd), len(eval_pd)
    if train_pd.label.nunique() < 2 or eval_pd.label.nunique() < 2:
        raise BundlecastError(f"need model: too little history to train (train positives {int(train_pd.label.sum())}, "
                              f"evaluation positives {int(eval_pd.label.sum())}); need at least {2 * H} days of orders")
    with summary.timed("fit"):
        model = nm.fit(train_pd, seed=int(s["seed"]))
    with summary.timed("evaluate"):
        p_model = nm.predict(model, eval_pd)
        summary.metrics, typical, weights, date_model = evaluate_with_baselines(
            train_pd, eval_pd, p_model, bought, eval_cut, H, int(s["k"]), baskets, s.get("tifuknn") or {})
    # The need-date regressor travels with the classifier (one registered model); None when
    # it did not beat the rules on the evaluation positives.
    model.need_date_model_ = date_model
    _register_and_gate(cfg, s, dt, run_id, summary, model, train_pd, eval_pd, p_model, bought,
                       {"eval_cutoff": str(eval_cut), "train_cutoffs": ",".join(map(str, train_cuts)),
                        "typical_days_to_need": typical, "need_date_weights": weights})
    inputs.unpersist()
    summary.figures["train_seconds"] = round(time.time() - summary.started, 1)
    return summary


def training_frames(inputs, eval_cut: date, train_cuts: list[date], H: int, s: dict):
    """(training examples, sampled per cut-off; evaluation examples; items bought per
    evaluation user), as pandas.

    Every cut-off, training and evaluation, is built in one pass: the frames carry a
    ``cutoff`` column and each row sees the history up to its own cut-off only. On a small
    world this is one set of short Spark stages instead of one per cut-off; on a large one
    the history is read once."""
    from pyspark.sql import functions as F

    spark = inputs.purchases.sparkSession
    cuts = cutoff_frame(spark, [*train_cuts, eval_cut])
    users = active_users(inputs.purchases, cutoff_frame(spark, train_cuts), s, s.get("max_train_users")).unionByName(
        active_users(inputs.purchases, cutoff_frame(spark, [eval_cut]), s, s.get("max_eval_users"))).localCheckpoint()
    frame, bought = examples(inputs, cuts, H, users, s)
    frame = frame.localCheckpoint()
    is_eval = F.col("cutoff") == F.lit(eval_cut)
    train_pd = _sampled_training_frame(frame.filter(~is_eval), int(s["max_train_examples"]) // len(train_cuts))
    # Rows in a fixed order (cut-offs as given, then user and item), whatever order Spark
    # returns them in: the fit's validation split and calibration folds depend on it.
    order = {str(c): i for i, c in enumerate(train_cuts)}
    keys = ["user_id", "site_id", "item_id"]
    train_pd = (train_pd.assign(_order=train_pd.cutoff.map(order)).sort_values(["_order", *keys], ignore_index=True)
                .drop(columns="_order"))
    eval_pd = frame.filter(is_eval).drop("cutoff").toPandas().sort_values(keys, ignore_index=True)
    bought = bought[bought.index.get_level_values("cutoff") == eval_cut].droplevel("cutoff")
    return train_pd, eval_pd, bought


def next_baskets(inputs, eval_cut: date, H: int, s: dict) -> dict[str, pd.DataFrame]:
    """The evaluation users' baskets before the cut-off (``history``: user_id, basket = the
    local day, item = ``site|item``, within the lookback) and what each bought in the
    horizon after it (``truth``: user_id, item, repeat = bought before), as pandas: what
    the next-basket metrics and TIFU-KNN need, on the users the model is evaluated on."""
    from pyspark.sql import functions as F

    from bundlecast.jobs.need.candidates import window
    from bundlecast.jobs.need.features import labels

    spark = inputs.purchases.sparkSession
    cut = cutoff_frame(spark, [eval_cut])
    users = active_users(inputs.purchases, cut, s, s.get("max_eval_users")).select("user_id")
    item = F.concat_ws("|", "site_id", "item_id").alias("item")
    history = (window(inputs.purchases, cut, int(s["lookback_days"])).join(users, "user_id", "left_semi")
               .select("user_id", F.col("day").cast("string").alias("basket"), item).distinct().toPandas())
    truth = (labels(inputs.purchases, cut, H).join(users, "user_id", "left_semi").select("user_id", item)
             .toPandas())
    seen = pd.MultiIndex.from_frame(history[["user_id", "item"]].drop_duplicates())
    truth["repeat"] = pd.MultiIndex.from_frame(truth[["user_id", "item"]]).isin(seen)
    return {"history": history.sort_values(["user_id", "basket", "item"], ignore_index=True),
            "truth": truth.sort_values(["user_id", "item"], ignore_index=True)}


def evaluate_with_baselines(train_pd: pd.DataFrame, eval_pd: pd.DataFrame, p_model, bought, eval_cut: date, H: int,
                            k: int, baskets: dict | None = None,
                            tifu_params: dict | None = None) -> tuple[dict, int, dict, object]:
    """Pure: the model's metrics and each baseline's on the same evaluation frame, plus
    the need-date error; returns (metrics per scorer, typical days to need, the cycle
    blend's weights, the need-date regressor or None).

    With ``baskets`` (``next_baskets``) every scorer's top-k list is also measured as a next
    basket (recall, NDCG, repeat and explore recall over *every* item bought, candidates or
    not), and TIFU-KNN, which ranks every item from the baskets alone, joins as a scorer."""
    from bundlecast.models import tifuknn

    metrics = {"model": nm.evaluate(eval_pd, p_model, bought, k)}
    rank_scores = {"model": p_model}
    for name, fn in nm.BASELINES.items():
        metrics[name] = nm.evaluate(eval_pd, nm.calibrate_score(train_pd, fn)(eval_pd), bought, k,
                                    rank_score=fn(eval_pd))
        rank_scores[name] = fn(eval_pd)
    if baskets is not None:
        for name, score in rank_scores.items():
            metrics[name].update(_prefixed(nm.basket_metrics(nm.top_k_lists(eval_pd, score, k), baskets["truth"], k)))
        users = baskets["truth"].user_id.unique()
        recs = tifuknn.recommend(baskets["history"], k, users=users, **(tifu_params or {}))
        metrics["tifuknn"] = _prefixed(nm.basket_metrics(recs, baskets["truth"], k))
    # Need dates: the typical lead time, how far to trust each user's own cycle against it,
    # and the regressor, all from the training positives; measured on the evaluation
    # positives (predicted vs actual first purchase day). The regressor is kept only if it
    # beats both the blend and the constant there.
    train_pos = train_pd[train_pd.label == 1]
    typical = int(round(float(train_pos.days_to_need.median()))) if len(train_pos) else H // 2
    weights = nm.fit_need_date_weights(train_pos, H, typical) if len(train_pos) else {}
    date_model = nm.fit_date_model(train_pos, H)
    pos = eval_pd[eval_pd.label == 1]
    if len(pos):
        actual = pd.Timestamp(eval_cut) + pd.to_timedelta(pos.days_to_need, unit="D")

        def mae(w, reg=None) -> float:
            dates = nm.need_dates(pos, pd.Timestamp(eval_cut), H, typical, w, date_model=reg)[0]
            return float((dates - actual).dt.days.abs().mean())
        m = metrics["model"]
        m["need_date_mae_days_blend"] = mae(weights)
        m["need_date_mae_days_cycle_rule"] = mae(None)
        m["need_date_mae_days_typical_only"] = mae({})
        if date_model is not None:
            m["need_date_mae_days_regressor"] = mae(None, date_model)
            if m["need_date_mae_days_regressor"] >= min(m["need_date_mae_days_blend"], m["need_date_mae_days_typical_only"]):
                date_model = None
        m["need_date_mae_days"] = m["need_date_mae_days_regressor"] if date_model is not None else \
            m["need_date_mae_days_blend"]
        m["need_date_uses_regressor"] = float(date_model is not None)
    else:
        date_model = None
    return metrics, typical, weights, date_model


def _prefixed(m: dict) -> dict:
    """Next-basket metrics under ``nb_`` (over every item bought), apart from the candidate-frame ones."""
    return {f"nb_{key}": value for key, value in m.items()}


def _register_and_gate(cfg: dict, s: dict, dt: str, run_id: str, summary: StepRun, model, train_pd, eval_pd, p_model,
                       bought, params: dict) -> None:
    """One MLflow run: parameters, metrics, plots, the registered version and the gate's decision."""
    import mlflow

    from bundlecast.models import registry
    from bundlecast.models.tracking import experiment

    H, metrics, typical = int(s["horizon_days"]), summary.metrics, params["typical_days_to_need"]
    experiment(cfg, EXPERIMENT)
    with mlflow.start_run(run_name=f"need-{dt}") as run:
        summary.labels["mlflow_run_id"] = run.info.run_id
        mlflow.log_params({"horizon_days": H, "eval_cutoff": params["eval_cutoff"],
                           "train_cutoffs": params["train_cutoffs"],
                           "train_examples": len(train_pd), "eval_examples": len(eval_pd),
                           "train_positive_share": round(float(train_pd.label.mean()), 5),
                           "typical_days_to_need": typical, **{f"cfg_{k}": v for k, v in s.items() if k != "segments"}})
        mlflow.set_tags({"data_window_end": dt, "bundlecast.run_id": run_id})
        for scorer, m in metrics.items():
            mlflow.log_metrics({f"{scorer}.{k}": v for k, v in m.items() if np.isfinite(v)})
        with summary.timed("mlflow plots"):
            _log_plots(model, eval_pd, p_model, metrics, bought, s)
        with summary.timed("mlflow register"):
            version = registry.log_and_register(model, eval_pd[nm.FEATURES].head(200), p_model[:200], s["model_name"],
                                                {"typical_days_to_need": typical, "horizon_days": H,
                                                 "need_date_weights": json.dumps(params["need_date_weights"],
                                                                                 sort_keys=True)})
        summary.labels["model_version"] = str(version)
        k, metric = int(s["k"]), s["gate_metric"]
        checks = []
        if s["gate_requires_baseline"]:
            ours, base = metrics["model"][f"recall_at_{k}"], metrics["topfreq"][f"recall_at_{k}"]
            checks.append((ours > base, f"recall@{k} {ours:.4f} {'>' if ours > base else 'does not beat'} "
                                        f"personal top-frequency {base:.4f}"))
        with summary.timed("mlflow gate"):
            decision = registry.gate(
                s["model_name"], version, metric, metrics["model"][metric],
                lambda champ: nm.evaluate(eval_pd, nm.predict(champ, eval_pd), bought, k)[metric],
                higher_is_better=metric not in ("brier", "ece"), margin=float(s["gate_margin"]), checks=checks)
        summary.labels.update(promoted=str(decision["promoted"]).lower(), decision=decision["reason"])
        mlflow.set_tags({"promoted": str(decision["promoted"]).lower(), "gate_reason": decision["reason"]})
        mlflow.log_metric("promoted", float(decision["promoted"]))


def _log_plots(model, eval_pd, p_model, metrics, bought, s) -> None:
    import mlflow
    from matplotlib.figure import Figure  # not pyplot: no global state, safe beside another step's plots
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import precision_recall_curve

    y = eval_pd.label.to_numpy(int)
    fig = Figure(figsize=(10, 4))
    ax = fig.subplots(1, 2)
    cal = nm.calibration_table(y, p_model)
    ax[0].plot([0, cal.predicted.max()], [0, cal.predicted.max()], "--", color="grey")
    ax[0].plot(cal.predicted, cal.observed, "o-", label="model")
    ax[0].set(xlabel="predicted probability", ylabel="observed rate", title="calibration (10 equal-count bins)")
    prec, rec, _ = precision_recall_curve(y, p_model)
    ax[1].plot(rec, prec, label=f"model (PR AUC {metrics['model']['pr_auc']:.3f})")
    ax[1].set(xlabel="recall", ylabel="precision", title="precision-recall")
    ax[1].legend()
    fig.tight_layout()
    mlflow.log_figure(fig, "calibration_and_pr.png")
    mlflow.log_table(cal, "calibration_table.json")
    sample = eval_pd.sample(min(len(eval_pd), 5000), random_state=0)
    imp = permutation_importance(model, nm.matrix(sample), sample.label.to_numpy(int),
                                 scoring="average_precision", n_repeats=3, random_state=0)
    order = np.argsort(imp.importances_mean)
    fig = Figure(figsize=(7, 8))
    ax = fig.subplots()
    ax.barh(np.array(nm.FEATURES)[order], imp.importances_mean[order])
    ax.set(title="permutation importance (PR AUC drop)")
    fig.tight_layout()
    mlflow.log_figure(fig, "feature_importance.png")


# --------------------------------------------------------------------------------- score
def score(spark, dt: str, run_id: str, cfg: dict, users_since: datetime | None = None,
          summary: StepRun | None = None) -> StepRun:
    """Score with the champion: every active user (nightly) or those with events since
    ``users_since`` (hourly). Replaces those users' rows for the run date."""
    import mlflow
    from pyspark.sql import functions as F

    from bundlecast.models import registry

    s = settings(cfg)
    H = int(s["horizon_days"])
    summary = summary or StepRun("need", dt, run_id, "score")
    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    if registry.champion_version(s["model_name"]) is None:
        raise BundlecastError(f"no champion for model {s['model_name']}: run `bundlecast need --mode train` first")
    cutoff = date.fromisoformat(dt)
    tables = Tables(spark, cfg)
    inputs = extract(tables).persisted()
    cuts = cutoff_frame(spark, [cutoff])
    users = active_users(inputs.purchases, cuts, s)
    if users_since is not None:
        touched = touched_users(tables, users_since)
        users = users.join(touched.distinct(), "user_id", "left_semi").localCheckpoint()
        if users.isEmpty():  # nothing arrived since the last run: no model to load, no candidates to build
            inputs.unpersist()
            summary.labels["scored_with_version"] = str(registry.champion_version(s["model_name"]).version)
            return summary.finish()
    model, version, meta, _ = registry.champion(cfg, s["model_name"])
    n_users = users.count()
    cands = candidates(inputs, cuts, users, s, with_table=inputs.relationships.limit(1).count() > 0)
    feats = features(inputs, cands, cuts, H, s).drop("cutoff")
    # Scored where the features are, in groups of about need.score_users_per_batch users (a
    # hash of the user): the model goes to the Python workers, the predictions stay in
    # Spark, and a group's candidates bound a worker's memory. No candidate row passes
    # through the driver.
    groups = max(spark.sparkContext.defaultParallelism, -(-n_users // int(s["score_users_per_batch"])))
    now = summary.now

    def score_group(frame: pd.DataFrame) -> pd.DataFrame:
        return _top_predictions(frame.drop(columns="_group"), model, version, meta, s, cutoff, H, run_id, now)
    with summary.timed("candidates, features and scores"):
        out = (feats.withColumn("_group", F.pmod(F.xxhash64("user_id"), F.lit(groups))).groupBy("_group")
               .applyInPandas(score_group, catalog.table("need_predictions").ddl()).localCheckpoint())
    summary.counts["users_scored"] = n_users
    summary.counts["predictions"] = out.count()
    with summary.timed("write"):
        if users_since is None:
            tables.replace("need_predictions", out, dt=dt)
        else:
            tables.replace("need_predictions", _with_users_replaced(tables, out, users, dt), dt=dt)
    inputs.unpersist()
    summary.labels["scored_with_version"] = str(version)
    return summary.finish()


def _top_predictions(frame: pd.DataFrame, model, version, meta: dict, s: dict, cutoff: date, H: int,
                     run_id: str, now: datetime) -> pd.DataFrame:
    """``need_predictions`` rows of one group of users (all of each user's candidates): the
    most likely candidates per user (at most ``max_per_user``, probability >=
    ``min_probability``) with their need dates. Ties keep the item order, so a re-run gives
    the same rows."""
    frame = frame.sort_values(["user_id", "site_id", "item_id"], ignore_index=True)
    frame["probability"] = nm.predict(model, frame)
    frame = frame[frame.probability >= float(s["min_probability"])]
    frame = frame.sort_values(["user_id", "probability"], ascending=[True, False], kind="stable") \
        .groupby("user_id").head(int(s["max_per_user"]))
    # A champion registered before the weights were fitted keeps the cycle rule (None).
    weights = json.loads(meta["need_date_weights"]) if meta.get("need_date_weights") else None
    need_date, basis = nm.need_dates(frame, pd.Timestamp(cutoff), H, int(meta.get("typical_days_to_need", H // 2)),
                                     weights, date_model=getattr(model, "need_date_model_", None))
    return pd.DataFrame({
        "user_id": frame.user_id, "site_id": frame.site_id, "item_id": frame.item_id, "category": frame.category,
        "probability": frame.probability.astype(float), "need_date": need_date.dt.date, "need_date_basis": basis,
        "horizon_days": H, "model_name": s["model_name"], "model_version": str(version),
        "scored_at": now, "dt": cutoff, "run_id": run_id})


def _with_users_replaced(tables, out, users, dt: str):
    """Hourly: the run date's predictions with the rescored users' rows swapped for
    ``out``, materialised, so the date is replaced in one commit (a reader never sees the
    table half-written)."""
    from pyspark.sql import functions as F

    kept = (tables.read("need_predictions").filter(F.col("dt") == F.lit(dt).cast("date"))
            .join(users.select("user_id"), "user_id", "left_anti"))
    columns = [c.name for c in catalog.table("need_predictions").columns]
    return kept.select(*columns).unionByName(out.select(*columns)).localCheckpoint()


def settings(cfg: dict) -> dict:
    s = dict(cfg["need"])
    if not 1 <= int(s["horizon_days"]) <= 14:
        raise BundlecastError(f"need.horizon_days must be between 1 and 14 (3-7 is usual), not {s['horizon_days']}")
    return s


def run(spark, dt: str, mode: str = "train", run_id: str | None = None, cfg: dict | None = None,
        progress=print) -> StepRun:
    """``train`` (nightly): train, evaluate, gate, then score every active user with the
    champion; ``score``: score every active user; ``rescore`` (hourly): score the users
    with events or orders after the last run's watermark."""

    cfg = cfg or config()
    date.fromisoformat(dt)
    run_id = run_id or f"need-{dt}-{uuid.uuid4().hex[:8]}"
    if mode not in ("train", "score", "rescore"):
        raise BundlecastError(f"mode must be train, score or rescore, not {mode!r}")
    tables = Tables(spark, cfg)
    summary = StepRun("need", dt, run_id, mode)
    if mode == "train":
        train(spark, dt, run_id, cfg, summary)
        progress(render(summary))
    since = last_watermark(tables, "need", skip_empty=False) if mode == "rescore" else None
    summary.watermark = latest_activity(tables)
    if since is not None:
        summary.labels["users_since"] = since.isoformat(sep=" ")
    score(spark, dt, run_id, cfg, since, summary)
    progress(render_scoring(summary))
    return record(tables, summary)


def render_scoring(s: StepRun) -> str:
    return (f"need scoring {s.run_id} for {s.dt}: {s.counts['users_scored']:,} users, {s.counts['predictions']:,} "
            f"predictions with model version {s.labels.get('scored_with_version')} in {s.seconds:.0f} s")


def render(s: StepRun) -> str:
    """The training part of a need run."""
    k = next((m for m in s.metrics.get("model", {}) if m.startswith("recall_at_")), "recall_at_10")
    c, lab = s.counts, s.labels
    lines = [f"need training {s.run_id} for {s.dt}: {c['train_examples']:,} training / {c['eval_examples']:,} "
             f"evaluation examples; MLflow run {lab.get('mlflow_run_id')}, version {lab.get('model_version')}",
             f"  {'scorer':12s} {'ROC AUC':>8s} {'PR AUC':>8s} {'Brier':>8s} {'ECE':>7s} {k:>12s} "
             f"{k.replace('recall', 'precision'):>15s}"]
    nan = float("nan")
    for name, m in s.metrics.items():
        if "roc_auc" in m:  # scorers of the candidate frame (TIFU-KNN ranks every item instead)
            lines.append(f"  {name:12s} {m['roc_auc']:8.4f} {m['pr_auc']:8.4f} {m['brier']:8.5f} {m['ece']:7.4f} "
                         f"{m[k]:12.4f} {m[k.replace('recall', 'precision')]:15.4f}")
    n = k.removeprefix("recall_at_")
    if any(f"nb_recall_at_{n}" in m for m in s.metrics.values()):
        lines.append(f"  next basket, every item bought counts: {'scorer':12s} {'recall@' + n:>10s} {'NDCG@' + n:>9s} "
                     f"{'repeat':>8s} {'explore':>8s}")
        for name, m in s.metrics.items():
            lines.append(f"  {'':39s} {name:12s} {m.get(f'nb_recall_at_{n}', nan):10.4f} "
                         f"{m.get(f'nb_ndcg_at_{n}', nan):9.4f} {m.get(f'nb_recall_repeat_at_{n}', nan):8.4f} "
                         f"{m.get(f'nb_recall_explore_at_{n}', nan):8.4f}")
    m = s.metrics.get("model", {})
    if "need_date_mae_days" in m:
        used = "the regressor" if m.get("need_date_uses_regressor") else "the cycle blend"
        lines.append(f"  need-date MAE (days): {m['need_date_mae_days']:.3f} with {used}; constant lead "
                     f"{m['need_date_mae_days_typical_only']:.3f}, cycle blend {m['need_date_mae_days_blend']:.3f}, "
                     f"regressor {m.get('need_date_mae_days_regressor', nan):.3f}")
    promoted = "promoted to champion" if lab.get("promoted") == "true" else "not promoted"
    lines.append(f"  gate: {promoted} ({lab.get('decision')})")
    lines.append("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s.timings.items()))
    return "\n".join(lines)
