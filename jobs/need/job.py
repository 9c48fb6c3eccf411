"""The need step's run (see the package docstring)."""
from __future__ import annotations

import time
import uuid
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.delta import read_table
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, last_watermark, record
from bundlecast.jobs.core.tables import Tables
from bundlecast.models import need as nm

EXPERIMENT = "bundlecast-need-model"


def settings(cfg: dict) -> dict:
    s = dict(cfg["need"])
    if not 1 <= int(s["horizon_days"]) <= 14:
        raise BundlecastError(f"need.horizon_days must be between 1 and 14 (3-7 is usual), not {s['horizon_days']}")
    return s


# ------------------------------------------------------------------------------ history
def history(spark, cfg: dict):
    """(purchases, browsing): purchases are non-cancelled order lines with the order day;
    browsing is view / add-to-cart events. Both restricted to known items."""
    from pyspark.sql import functions as F

    items = read_table(spark, "items", cfg).select("site_id", "item_id")
    orders = read_table(spark, "orders", cfg).filter(F.col("status") != "cancelled") \
        .select("order_id", "user_id", F.to_date("order_ts").alias("day"))
    lines = read_table(spark, "order_lines", cfg).select("order_id", "site_id", "item_id", "quantity", "unit_price",
                                                         F.coalesce("discount", F.lit(0.0)).alias("discount"))
    purchases = lines.join(orders, "order_id").join(F.broadcast(items), ["site_id", "item_id"], "left_semi") \
        .drop("order_id")
    browsing = (read_table(spark, "events", cfg).filter(F.col("event_type") != "purchase")
                .select("user_id", "site_id", "item_id", F.to_date("event_ts").alias("day"), "event_type")
                .join(F.broadcast(items), ["site_id", "item_id"], "left_semi"))
    return purchases, browsing


def _d(day):
    from pyspark.sql import functions as F
    return F.lit(day).cast("date")


# --------------------------------------------------------------------------- candidates
def co_purchase_neighbours(purchases, cutoff: date, k: int, lookback_days: int):
    """Top-k items co-bought with each item (same user and week, across sites) before the
    cut-off: site_a, item_a, site_b, item_b, co_rate (share of a's buyer-weeks with b)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    p = purchases.filter((F.col("day") <= _d(cutoff)) & (F.col("day") > _d(cutoff - timedelta(days=lookback_days))))
    units = p.select("user_id", "site_id", "item_id", F.date_trunc("week", "day").alias("week")).distinct()
    a = units.select("user_id", "week", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a"))
    b = units.select("user_id", "week", F.col("site_id").alias("site_b"), F.col("item_id").alias("item_b"))
    per_a = units.groupBy(F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a")).agg(F.count("*").alias("n_a"))
    pairs = (a.join(b, ["user_id", "week"])
             .filter((F.col("site_a") != F.col("site_b")) | (F.col("item_a") != F.col("item_b")))
             .groupBy("site_a", "item_a", "site_b", "item_b").agg(F.count("*").alias("n_ab"))
             .filter(F.col("n_ab") >= 2)
             .join(per_a, ["site_a", "item_a"]).withColumn("co_rate", F.col("n_ab") / F.col("n_a")))
    rank = F.row_number().over(Window.partitionBy("site_a", "item_a").orderBy(F.col("co_rate").desc(), "site_b", "item_b"))
    return pairs.withColumn("r", rank).filter(F.col("r") <= k).select("site_a", "item_a", "site_b", "item_b", "co_rate")


def als_candidates(spark, purchases, cutoff: date, s: dict, users):
    """Top ``cf_k`` items per user from ALS on implicit feedback (purchase days per item)."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as F

    p = purchases.filter((F.col("day") <= _d(cutoff)) &
                         (F.col("day") > _d(cutoff - timedelta(days=int(s["lookback_days"])))))
    ratings = (p.withColumn("item_key", F.concat_ws("|", "site_id", "item_id"))
               .groupBy("user_id", "item_key").agg(F.countDistinct("day").cast("float").alias("strength")))
    if ratings.limit(1).count() == 0:
        return None
    users_ix = StringIndexer(inputCol="user_id", outputCol="u", handleInvalid="skip").fit(ratings)
    items_ix = StringIndexer(inputCol="item_key", outputCol="i", handleInvalid="skip").fit(ratings)
    data = items_ix.transform(users_ix.transform(ratings)).select(F.col("u").cast("int"), F.col("i").cast("int"),
                                                                 "strength").localCheckpoint()
    als = ALS(userCol="u", itemCol="i", ratingCol="strength", implicitPrefs=True, rank=int(s["als_rank"]),
              regParam=float(s["als_reg"]), alpha=float(s["als_alpha"]), maxIter=int(s["als_iterations"]),
              coldStartStrategy="drop", seed=7)
    model = als.fit(data)
    wanted = users_ix.transform(users.select("user_id")).select(F.col("u").cast("int"))
    recs = model.recommendForUserSubset(wanted, int(s["cf_k"]))
    user_keys = spark.createDataFrame(pd.DataFrame({"user_id": users_ix.labelsArray[0]}).reset_index()
                                      .rename(columns={"index": "u"}))
    labels = items_ix.labelsArray[0]
    item_keys = spark.createDataFrame(pd.DataFrame({"i": np.arange(len(labels), dtype="int32"),
                                                    "site_id": [x.split("|", 1)[0] for x in labels],
                                                    "item_id": [x.split("|", 1)[1] for x in labels]}))
    return (recs.select("u", F.explode("recommendations").alias("r"))
            .select("u", F.col("r.i").alias("i"), F.col("r.rating").alias("cf_score"))
            .join(F.broadcast(user_keys), "u").join(F.broadcast(item_keys), "i")
            .select("user_id", "site_id", "item_id", "cf_score"))


def candidates(spark, cfg: dict, purchases, cutoff: date, users, with_table: bool = False):
    """(user_id, site_id, item_id, src_*, cf_score, rel_score) for ``users`` at the cut-off."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    s = settings(cfg)
    keys = ["user_id", "site_id", "item_id"]
    before = purchases.filter(F.col("day") <= _d(cutoff)).join(F.broadcast(users), "user_id", "left_semi")
    lookback = _d(cutoff - timedelta(days=int(s["lookback_days"])))
    repeat = before.filter(F.col("day") > lookback).select(*keys).distinct().withColumn("src_repeat", F.lit(1.0))
    recent = before.filter(F.col("day") > _d(cutoff - timedelta(days=int(s["recent_days"])))) \
        .select("user_id", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a")).distinct()
    neighbours = co_purchase_neighbours(purchases, cutoff, int(s["related_k"]), int(s["lookback_days"]))
    related = (recent.join(neighbours, ["site_a", "item_a"])
               .groupBy("user_id", F.col("site_b").alias("site_id"), F.col("item_b").alias("item_id"))
               .agg(F.max("co_rate").alias("rel_score")).withColumn("src_related", F.lit(1.0)))
    parts = [repeat, related]
    if with_table:  # scoring: the relationship job's neighbours widen the candidate set
        rel = read_table(spark, "item_relationships", cfg).filter(F.col("rank") <= int(s["related_k"]))
        parts.append(recent.join(rel.select("site_a", "item_a", "site_b", "item_b"), ["site_a", "item_a"])
                     .select("user_id", F.col("site_b").alias("site_id"), F.col("item_b").alias("item_id"))
                     .distinct().withColumn("src_related", F.lit(1.0)))
    cf = als_candidates(spark, purchases, cutoff, s, users)
    if cf is not None:
        parts.append(cf.withColumn("src_cf", F.lit(1.0)))
    segs = read_table(spark, "users", cfg).select("user_id", "segment")
    window = purchases.filter((F.col("day") <= _d(cutoff)) & (F.col("day") > _d(cutoff - timedelta(days=28))))
    top = (window.join(segs, "user_id").groupBy("segment", "site_id", "item_id")
           .agg(F.countDistinct("user_id").alias("buyers"))
           .withColumn("r", F.row_number().over(Window.partitionBy("segment")
                                                .orderBy(F.col("buyers").desc(), "site_id", "item_id")))
           .filter(F.col("r") <= int(s["popular_k"])).select("segment", "site_id", "item_id"))
    parts.append(users.join(segs, "user_id").join(F.broadcast(top), "segment").select(*keys)
                 .withColumn("src_popular", F.lit(1.0)))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p, allowMissingColumns=True)
    return (out.groupBy(*keys).agg(*[F.max(c).alias(c) for c in ("src_repeat", "src_related", "src_cf", "src_popular",
                                                                  "cf_score", "rel_score")])
            .na.fill(0.0))


# ----------------------------------------------------------------------------- features
def features(spark, cfg: dict, purchases, browsing, cands, cutoff: date, horizon: int):
    """The candidate frame with every column of ``models.need.FEATURES``, from data up to
    the cut-off only."""
    from pyspark.sql import functions as F

    s = settings(cfg)
    T = _d(cutoff)
    since = lambda days: _d(cutoff - timedelta(days=days))  # noqa: E731
    p = purchases.filter((F.col("day") <= T) & (F.col("day") > since(int(s["lookback_days"]))))
    items = read_table(spark, "items", cfg).select("site_id", "item_id", "category", "price")
    users = read_table(spark, "users", cfg).select("user_id", "age", "segment", "region", "home_site_id")
    none = F.lit(None).cast("double")

    def cycle(frame, keys, suffix):
        g = frame.groupBy(*keys).agg(F.countDistinct("day").alias(f"n_days_{suffix}"), F.max("day").alias("_last"),
                                     F.min("day").alias("_first"), F.sum("quantity").alias(f"qty_{suffix}"))
        gap = F.when(F.col(f"n_days_{suffix}") >= 2, F.datediff("_last", "_first") / (F.col(f"n_days_{suffix}") - 1))
        return (g.withColumn(f"days_since_{suffix}", F.datediff(T, "_last").cast("double"))
                .withColumn(f"mean_gap_{suffix}", gap.cast("double"))
                .withColumn(f"due_in_{suffix}", F.col(f"mean_gap_{suffix}") - F.col(f"days_since_{suffix}"))
                .drop("_last", "_first"))

    per_item = cycle(p, ["user_id", "site_id", "item_id"], "item") \
        .withColumn("cycle_ratio_item", F.col("days_since_item") / F.col("mean_gap_item"))
    pc = p.join(F.broadcast(items.select("site_id", "item_id", "category")), ["site_id", "item_id"])
    per_cat = cycle(pc, ["user_id", "category"], "cat").drop("qty_cat")
    per_user = p.groupBy("user_id").agg(
        F.countDistinct("day").alias("n_order_days"), F.datediff(T, F.max("day")).cast("double").alias("days_since_order"),
        F.countDistinct("site_id", "item_id").alias("n_items_user"), F.countDistinct("site_id").alias("n_sites_user"),
        F.sum(F.col("quantity") * F.col("unit_price") * (1 - F.col("discount"))).alias("revenue_user"))
    b = browsing.filter((F.col("day") <= T) & (F.col("day") > since(30)))
    b7 = F.col("day") > since(7)
    per_view = b.groupBy("user_id", "site_id", "item_id").agg(
        F.sum((b7 & (F.col("event_type") == "view")).cast("int")).alias("views_item_7"),
        F.sum((F.col("event_type") == "view").cast("int")).alias("views_item_30"),
        F.sum((b7 & (F.col("event_type") == "add_to_cart")).cast("int")).alias("carts_item_7"))
    user_views = b.filter(b7).groupBy("user_id").agg(F.count("*").alias("views_user_7"))
    # The item: buyers and trend, segment share, price and discount, demand over the horizon.
    last28 = purchases.filter((F.col("day") <= T) & (F.col("day") > since(28)))
    item_stats = last28.groupBy("site_id", "item_id").agg(
        F.countDistinct("user_id").alias("item_buyers_28"),
        F.countDistinct(F.when(F.col("day") > since(7), F.col("user_id"))).alias("_buyers_7"),
        F.sum("quantity").alias("_qty_28"), F.avg("discount").alias("discount_28"))
    item_stats = (item_stats.withColumn("item_trend", (F.col("_buyers_7") * 4 + 1) / (F.col("item_buyers_28") + 1))
                  .withColumn("_rate_h", F.col("_qty_28") / 28.0 * horizon).drop("_buyers_7", "_qty_28"))
    forecast = _forecast_h(spark, cfg, cutoff, horizon)
    if forecast is not None:
        item_stats = item_stats.join(forecast, ["site_id", "item_id"], "left")
    else:
        item_stats = item_stats.withColumn("_forecast", none)
    item_stats = item_stats.withColumn("item_forecast_h", F.coalesce("_forecast", "_rate_h")).drop("_forecast", "_rate_h")
    seg_buyers = last28.join(users.select("user_id", "segment"), "user_id")
    seg_share = (seg_buyers.groupBy("segment", "site_id", "item_id").agg(F.countDistinct("user_id").alias("_n"))
                 .join(seg_buyers.groupBy("segment").agg(F.countDistinct("user_id").alias("_all")), "segment")
                 .select("segment", "site_id", "item_id", (F.col("_n") / F.col("_all")).alias("seg_share_28")))
    weather = (read_table(spark, "weather", cfg).filter((F.col("date") <= T) & (F.col("date") > since(7))
                                                       & ~F.col("is_forecast"))
               .groupBy("region").agg(F.avg("temperature_c").alias("temperature_7")))
    segment_codes = {seg: i for i, seg in enumerate(sorted(s["segments"]))}
    seg_code = F.coalesce(F.element_at(F.create_map(*[x for k, v in segment_codes.items()
                                                      for x in (F.lit(k), F.lit(v))]), F.col("segment")),
                          F.lit(len(segment_codes)))
    frame = (cands.join(per_item, ["user_id", "site_id", "item_id"], "left")
             .join(F.broadcast(items), ["site_id", "item_id"], "left")
             .join(per_cat, ["user_id", "category"], "left")
             .join(per_user, "user_id", "left")
             .join(users, "user_id", "left")
             .join(per_view, ["user_id", "site_id", "item_id"], "left")
             .join(user_views, "user_id", "left")
             .join(item_stats, ["site_id", "item_id"], "left")
             .join(seg_share, ["segment", "site_id", "item_id"], "left")
             .join(F.broadcast(weather), "region", "left")
             .withColumn("segment_code", seg_code.cast("double"))
             .withColumn("home_site", (F.col("site_id") == F.col("home_site_id")).cast("double")))
    # Never-bought: "days since" is the whole lookback, gaps and due dates unknown (NaN for the booster).
    fill_zero = ["n_days_item", "qty_item", "n_days_cat", "n_order_days", "n_items_user", "n_sites_user",
                 "revenue_user", "views_user_7", "views_item_7", "views_item_30", "carts_item_7", "item_buyers_28",
                 "seg_share_28", "item_forecast_h", "discount_28"]
    frame = frame.na.fill(0, subset=fill_zero).na.fill(float(s["lookback_days"]),
                                                       subset=["days_since_item", "days_since_cat", "days_since_order"])
    frame = frame.na.fill(1.0, subset=["item_trend"])
    return frame.select("user_id", "site_id", "item_id", "category", *[F.col(c).cast("double") for c in nm.FEATURES])


def _forecast_h(spark, cfg: dict, cutoff: date, horizon: int):
    """Forecast units over the H days after the cut-off, when a forecast was made on the
    cut-off date (scoring); None otherwise (training cut-offs use the trailing rate)."""
    from pyspark.sql import functions as F

    f = read_table(spark, "demand_forecast", cfg).filter(F.col("dt") == _d(cutoff))
    if f.limit(1).count() == 0:
        return None
    return (f.filter(F.col("date") <= _d(cutoff + timedelta(days=horizon)))
            .groupBy("site_id", "item_id").agg(F.sum("yhat").alias("_forecast")))


def labels(purchases, cutoff: date, horizon: int):
    """(user_id, site_id, item_id, label=1, days_to_need) for purchases in (cut-off, cut-off + H]."""
    from pyspark.sql import functions as F
    window = (F.col("day") > _d(cutoff)) & (F.col("day") <= _d(cutoff + timedelta(days=horizon)))
    return (purchases.filter(window).groupBy("user_id", "site_id", "item_id")
            .agg(F.min("day").alias("_first")).withColumn("label", F.lit(1))
            .withColumn("days_to_need", F.datediff("_first", _d(cutoff))).drop("_first"))


def active_users(spark, cfg: dict, purchases, cutoff: date, s: dict, sample: int | None = None):
    """Users with a purchase in the lookback before the cut-off (a fixed hash sample when
    ``sample`` is set)."""
    from pyspark.sql import functions as F
    u = purchases.filter((F.col("day") <= _d(cutoff)) &
                         (F.col("day") > _d(cutoff - timedelta(days=int(s["lookback_days"]))))).select("user_id").distinct()
    if sample:
        u = u.orderBy(F.xxhash64("user_id"), "user_id").limit(int(sample))
    return u.localCheckpoint()


def examples(spark, cfg: dict, purchases, browsing, cutoff: date, horizon: int, users):
    """Candidates with features at the cut-off and their labels, as pandas; and the number
    of distinct items each user bought in the window (for recall)."""
    from pyspark.sql import functions as F

    cands = candidates(spark, cfg, purchases, cutoff, users)
    frame = features(spark, cfg, purchases, browsing, cands, cutoff, horizon)
    lab = labels(purchases, cutoff, horizon).join(F.broadcast(users), "user_id", "left_semi").localCheckpoint()
    frame = frame.join(lab, ["user_id", "site_id", "item_id"], "left").na.fill(0, subset=["label"])
    bought = lab.groupBy("user_id").agg(F.count("*").alias("n")).toPandas().set_index("user_id").n
    return frame, bought


def _sampled_training_frame(frame, max_examples: int, seed: int = 11) -> pd.DataFrame:
    """All positives and a hashed share of negatives (weight = 1 / share), as pandas."""
    from pyspark.sql import functions as F

    counts = {r["label"]: r["count"] for r in frame.groupBy("label").count().collect()}
    pos, neg = counts.get(1, 0), counts.get(0, 0)
    share = 1.0 if pos + neg <= max_examples else max(0.001, (max_examples - pos) / max(neg, 1))
    keep = (F.col("label") == 1) | ((F.abs(F.xxhash64("user_id", "site_id", "item_id", F.lit(seed))) % 1_000_000)
                                    < F.lit(int(share * 1_000_000)))
    out = frame.filter(keep).withColumn("weight", F.when(F.col("label") == 1, 1.0).otherwise(1.0 / share)).toPandas()
    return out


# --------------------------------------------------------------------------------- train
def train(spark, dt: str, run_id: str, cfg: dict, summary: StepRun | None = None) -> StepRun:
    import mlflow

    from bundlecast.models import registry
    from bundlecast.models.tracking import experiment

    s = settings(cfg)
    H = int(s["horizon_days"])
    summary = summary or StepRun("need", dt, run_id, "train")
    purchases, browsing = history(spark, cfg)
    purchases, browsing = purchases.persist(), browsing.persist()
    eval_cut = date.fromisoformat(dt) - timedelta(days=H)
    train_cuts = [eval_cut - timedelta(days=H + i * int(s["cutoff_step_days"])) for i in range(int(s["train_cutoffs"]))]
    parts = []
    for cut in train_cuts:
        users = active_users(spark, cfg, purchases, cut, s, s.get("max_train_users"))
        frame, _ = examples(spark, cfg, purchases, browsing, cut, H, users)
        part = _sampled_training_frame(frame, int(s["max_train_examples"]) // len(train_cuts))
        parts.append(part.assign(cutoff=str(cut)))
    train_pd = pd.concat(parts, ignore_index=True)
    users = active_users(spark, cfg, purchases, eval_cut, s, s.get("max_eval_users"))
    eval_frame, bought = examples(spark, cfg, purchases, browsing, eval_cut, H, users)
    eval_pd = eval_frame.toPandas()
    summary.counts["train_examples"], summary.counts["eval_examples"] = len(train_pd), len(eval_pd)
    if train_pd.label.nunique() < 2 or eval_pd.label.nunique() < 2:
        raise BundlecastError(f"need model: too little history to train (train positives {int(train_pd.label.sum())}, "
                              f"evaluation positives {int(eval_pd.label.sum())}); need at least {2 * H} days of orders")
    model = nm.fit(train_pd, seed=int(s.get("seed", 0)))
    p_model = nm.predict(model, eval_pd)
    metrics = {"model": nm.evaluate(eval_pd, p_model, bought, int(s["k"]))}
    for name, fn in nm.BASELINES.items():
        metrics[name] = nm.evaluate(eval_pd, nm.calibrate_score(train_pd, fn)(eval_pd), bought, int(s["k"]),
                                    rank_score=fn(eval_pd))
    # Need date quality on the evaluation positives: predicted vs actual first purchase day.
    typical = int(round(float(train_pd.loc[train_pd.label == 1, "days_to_need"].median()))) if train_pd.label.sum() else H // 2
    pos = eval_pd[eval_pd.label == 1]
    if len(pos):
        dates, _ = nm.need_dates(pos, pd.Timestamp(eval_cut), H, typical)
        actual = pd.Timestamp(eval_cut) + pd.to_timedelta(pos.days_to_need, unit="D")
        metrics["model"]["need_date_mae_days"] = float((dates - actual).dt.days.abs().mean())
        naive = pd.Timestamp(eval_cut) + pd.Timedelta(days=typical)
        metrics["model"]["need_date_mae_days_typical_only"] = float((naive - actual).dt.days.abs().mean())
    summary.metrics = metrics

    experiment(cfg, EXPERIMENT)
    with mlflow.start_run(run_name=f"need-{dt}") as run:
        summary.labels["mlflow_run_id"] = run.info.run_id
        mlflow.log_params({"horizon_days": H, "eval_cutoff": str(eval_cut), "train_cutoffs": ",".join(map(str, train_cuts)),
                           "train_examples": len(train_pd), "eval_examples": len(eval_pd),
                           "train_positive_share": round(float(train_pd.label.mean()), 5),
                           "typical_days_to_need": typical, **{f"cfg_{k}": v for k, v in s.items() if k != "segments"}})
        mlflow.set_tags({"data_window_end": dt, "bundlecast.run_id": run_id})
        for scorer, m in metrics.items():
            mlflow.log_metrics({f"{scorer}.{k}": v for k, v in m.items() if np.isfinite(v)})
        _log_plots(model, eval_pd, p_model, metrics, bought, s)
        version = registry.log_and_register(model, eval_pd[nm.FEATURES].head(200), p_model[:200], s["model_name"],
                                            {"typical_days_to_need": typical, "horizon_days": H})
        summary.labels["model_version"] = str(version)
        k, metric = int(s["k"]), s["gate_metric"]
        checks = []
        if s.get("gate_requires_baseline", True):
            ours, base = metrics["model"][f"recall_at_{k}"], metrics["topfreq"][f"recall_at_{k}"]
            checks.append((ours > base, f"recall@{k} {ours:.4f} {'>' if ours > base else 'does not beat'} "
                                        f"personal top-frequency {base:.4f}"))
        decision = registry.gate(
            s["model_name"], version, metric, metrics["model"][metric],
            lambda champ: nm.evaluate(eval_pd, nm.predict(champ, eval_pd), bought, k)[metric],
            higher_is_better=metric not in ("brier", "ece"), margin=float(s["gate_margin"]), checks=checks)
        summary.labels.update(promoted=str(decision["promoted"]).lower(), decision=decision["reason"])
        mlflow.set_tags({"promoted": str(decision["promoted"]).lower(), "gate_reason": decision["reason"]})
        mlflow.log_metric("promoted", float(decision["promoted"]))
    purchases.unpersist(), browsing.unpersist()
    summary.figures["train_seconds"] = round(time.time() - summary.started, 1)
    return summary


def _log_plots(model, eval_pd, p_model, metrics, bought, s) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import precision_recall_curve

    y = eval_pd.label.to_numpy(int)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
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
    plt.close(fig)
    mlflow.log_table(cal, "calibration_table.json")
    sample = eval_pd.sample(min(len(eval_pd), 5000), random_state=0)
    imp = permutation_importance(model, nm.matrix(sample), sample.label.to_numpy(int),
                                 scoring="average_precision", n_repeats=3, random_state=0)
    order = np.argsort(imp.importances_mean)
    fig, ax = plt.subplots(figsize=(7, 8))
    ax.barh(np.array(nm.FEATURES)[order], imp.importances_mean[order])
    ax.set(title="permutation importance (PR AUC drop)")
    fig.tight_layout()
    mlflow.log_figure(fig, "feature_importance.png")
    plt.close(fig)


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
    purchases, browsing = history(spark, cfg)
    purchases, browsing = purchases.persist(), browsing.persist()
    users = active_users(spark, cfg, purchases, cutoff, s)
    if users_since is not None:
        touched = read_table(spark, "events", cfg).filter(F.col("event_ts") > F.lit(users_since)).select("user_id")
        touched = touched.unionByName(read_table(spark, "orders", cfg).filter(F.col("order_ts") > F.lit(users_since))
                                      .select("user_id"))
        users = users.join(touched.distinct(), "user_id", "left_semi").localCheckpoint()
        if users.isEmpty():  # nothing arrived since the last run: no model to load, no candidates to build
            purchases.unpersist(), browsing.unpersist()
            summary.labels["scored_with_version"] = str(registry.champion_version(s["model_name"]).version)
            return summary.finish()
    model, version, meta = registry.champion(cfg, s["model_name"])
    cands = candidates(spark, cfg, purchases, cutoff, users, with_table=_has_rows(spark, cfg, "item_relationships"))
    feats = features(spark, cfg, purchases, browsing, cands, cutoff, H).persist()
    n_rows = feats.count()
    # Scored in hash batches of users, so the driver never holds every candidate at once
    # (on the medium world the whole frame is over 1 GB).
    batches = max(1, -(-n_rows // int(s.get("score_batch_rows") or 500_000)))
    parts = []
    summary.counts["users_scored"] = 0
    for b in range(batches):
        frame = (feats if batches == 1 else feats.filter(F.pmod(F.hash("user_id"), F.lit(batches)) == b)).toPandas()
        summary.counts["users_scored"] += int(frame.user_id.nunique())
        if len(frame):
            parts.append(_top_predictions(frame, model, version, meta, s, cutoff, H, run_id))
    feats.unpersist()
    rows = (pd.concat(parts, ignore_index=True) if parts
            else pd.DataFrame(columns=[c.name for c in catalog.table("need_predictions").columns]))
    summary.counts["predictions"] = len(rows)
    out = spark.createDataFrame(rows, catalog.table("need_predictions").ddl()) if len(rows) else \
        spark.createDataFrame([], catalog.table("need_predictions").ddl())
    tables = Tables(spark, cfg)
    if users_since is None:
        tables.replace("need_predictions", out, dt=dt)
    else:
        tables.replace("need_predictions", _with_users_replaced(tables, out, users, dt), dt=dt)
    purchases.unpersist(), browsing.unpersist()
    summary.labels["scored_with_version"] = str(version)
    return summary.finish()


def _top_predictions(frame: pd.DataFrame, model, version, meta: dict, s: dict, cutoff: date, H: int,
                     run_id: str) -> pd.DataFrame:
    """``need_predictions`` rows of one batch of users: the most likely candidates per user
    (at most ``max_per_user``, probability >= ``min_probability``) with their need dates."""
    frame["probability"] = nm.predict(model, frame)
    frame = frame[frame.probability >= float(s["min_probability"])]
    frame = frame.sort_values(["user_id", "probability"], ascending=[True, False]) \
        .groupby("user_id").head(int(s["max_per_user"]))
    need_date, basis = nm.need_dates(frame, pd.Timestamp(cutoff), H, int(meta.get("typical_days_to_need", H // 2)))
    return pd.DataFrame({
        "user_id": frame.user_id, "site_id": frame.site_id, "item_id": frame.item_id, "category": frame.category,
        "probability": frame.probability.astype(float), "need_date": need_date.dt.date, "need_date_basis": basis,
        "horizon_days": H, "model_name": s["model_name"], "model_version": str(version),
        "scored_at": datetime.now(timezone.utc).replace(tzinfo=None), "dt": cutoff, "run_id": run_id})


def _with_users_replaced(tables, out, users, dt: str):
    """Hourly: the run date's predictions with the rescored users' rows swapped for
    ``out``, materialised, so the date is replaced in one commit (a reader never sees the
    table half-written)."""
    from pyspark.sql import functions as F

    kept = (tables.read("need_predictions").filter(F.col("dt") == F.lit(dt).cast("date"))
            .join(users.select("user_id"), "user_id", "left_anti"))
    columns = [c.name for c in catalog.table("need_predictions").columns]
    return kept.select(*columns).unionByName(out.select(*columns)).localCheckpoint()


def _has_rows(spark, cfg: dict, name: str) -> bool:
    return read_table(spark, name, cfg).limit(1).count() > 0


def run(spark, dt: str, mode: str = "train", run_id: str | None = None, cfg: dict | None = None,
        progress=print) -> StepRun:
    """``train`` (nightly): train, evaluate, gate, then score every active user with the
    champion; ``score``: score every active user; ``rescore`` (hourly): score the users
    with events or orders after the last run's watermark."""
    from pyspark.sql import functions as F

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
    summary.watermark = max((t for t in (tables.read("events").agg(F.max("event_ts")).first()[0],
                                         tables.read("orders").agg(F.max("order_ts")).first()[0]) if t is not None),
                            default=None)
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
    for name, m in s.metrics.items():
        lines.append(f"  {name:12s} {m['roc_auc']:8.4f} {m['pr_auc']:8.4f} {m['brier']:8.5f} {m['ece']:7.4f} "
                     f"{m[k]:12.4f} {m[k.replace('recall', 'precision')]:15.4f}")
    promoted = "promoted to champion" if lab.get("promoted") == "true" else "not promoted"
    lines.append(f"  gate: {promoted} ({lab.get('decision')})")
    return "\n".join(lines)
