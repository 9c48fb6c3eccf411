"""Weights: the per segment x category weights of the signals, fitted on pre-cut-off counts,
and the latest fitted weights."""
from __future__ import annotations

from datetime import date, datetime, timedelta

from bundlecast.jobs.core.tables import Tables
from bundlecast.jobs.relationships.counting import ALL, SIGNALS, counts_from_units, settings, stable_sum, touching
from bundlecast.jobs.relationships.signals import inventory_correlation, score_pairs, with_log_lifts


def fit_weights(spark, cfg: dict, dt: str, run_id: str, vu, pu, purchases, items_pd):
    """Fit the combined-score weights per segment x category on a strict time split.

    Features are the relationship signals computed from behaviour *before* the cut-off
    (dt - label_days); an example is (user, item a the user bought in the anchor_days before
    the cut-off, candidate b among a's neighbours); the label is whether the user bought b in
    the label_days after it. Users are split 70/30 by hash for the fit quality (ROC AUC),
    reported next to co-purchase lift alone on the same users.
    """
    ws = settings(cfg)["weights"]
    return fit_weight_table(weight_examples(spark, cfg, dt, run_id, vu, pu, purchases, items_pd), ws, dt, run_id)


def weight_examples(spark, cfg: dict, dt: str, run_id: str, vu, pu, purchases, items_pd):
    """The labelled examples of the weight fit (pandas): segment, category_a, label,
    holdout and every signal as of the cut-off (see ``fit_weights``)."""
    from pyspark.sql import functions as F

    ws = settings(cfg)["weights"]
    end = datetime.combine(date.fromisoformat(dt), datetime.min.time()) + timedelta(days=1)
    cutoff = end - timedelta(days=ws["label_days"])
    before = F.col("ts") < F.lit(cutoff)
    anchors = (purchases.filter(before & (F.col("ts") >= F.lit(cutoff - timedelta(days=ws["anchor_days"]))))
               .select("user_id", F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a")).distinct())
    # A fixed pseudo-random sample of anchor items bounds the scoring pass of the fit.
    anchor_items = (anchors.select("site_a", "item_a").distinct().orderBy(F.xxhash64("site_a", "item_a"), "site_a", "item_a")
                    .limit(int(ws["max_anchor_items"])).localCheckpoint())
    anchors = anchors.join(F.broadcast(anchor_items), ["site_a", "item_a"], "left_semi")
    # Features only from units that ended before the cut-off. Counts add up per unit, so the
    # counts as of the cut-off are the stored counts minus those of the units ended since.
    ended = F.col("unit_day") < F.lit(cutoff.date())
    pairs_c, items_c = _counts_before(spark, cfg, vu.filter(~ended), pu.filter(~ended), anchor_items)
    inventory_c = inventory_correlation(spark, cfg, pu.filter(ended))
    rel_c, _, _ = score_pairs(spark, cfg, pairs_c, items_c, items_pd, run_id, dt, None, anchor_items, inventory_c)
    later = (purchases.filter(~before).select("user_id", F.col("site_id").alias("site_b"),
                                              F.col("item_id").alias("item_b")).distinct()
             .withColumn("label", F.lit(1)))
    segments = Tables(spark, cfg).read("users").select("user_id", "segment")
    rel_c = with_log_lifts(rel_c)
    examples = (anchors.join(rel_c.select("site_a", "item_a", "site_b", "item_b", "category_a", *SIGNALS),
                             ["site_a", "item_a"])
                .join(later, ["user_id", "site_b", "item_b"], "left").join(segments, "user_id")
                .withColumn("label", F.coalesce("label", F.lit(0)))
                .withColumn("holdout", (F.abs(F.xxhash64("user_id")) % 10) < 3)
                .orderBy(F.xxhash64("user_id", "item_a", "item_b"), "user_id", "site_a", "item_a", "site_b", "item_b")
                .limit(int(ws["max_examples"]))
                .select("segment", "category_a", "label", "holdout", *SIGNALS).toPandas())
    pairs_c.unpersist(), items_c.unpersist()
    examples[SIGNALS] = examples[SIGNALS].astype(float)
    # One row order whatever the partitioning: the solver's sums follow it.
    return examples.sort_values(list(examples.columns), kind="mergesort", ignore_index=True)


def fit_weight_table(examples, ws: dict, dt: str, run_id: str):
    """Pure: a logistic regression per segment x category (and per segment, per category,
    overall), each falling back to its parent where there are too few examples; one
    ``relationship_weights`` row per cell with its fit quality against co-purchase lift."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    def fit(frame):
        train, test = frame[~frame.holdout], frame[frame.holdout]
        if (len(frame) < ws["min_examples"] or train.label.nunique() < 2 or test.label.nunique() < 2
                or train.label.sum() < 10):
            return None
        model = LogisticRegression(C=1.0, max_iter=1000).fit(train[SIGNALS].to_numpy(), train.label.to_numpy())
        auc = roc_auc_score(test.label, model.predict_proba(test[SIGNALS].to_numpy())[:, 1])
        base = roc_auc_score(test.label, test.co_purchase_lift_log)
        return dict(intercept=float(model.intercept_[0]), weights={k: float(v) for k, v in zip(SIGNALS, model.coef_[0])},
                    n_examples=len(frame), n_positive=int(frame.label.sum()), auc=float(auc), baseline_auc=float(base),
                    source="fitted")

    rows = {}
    default = dict(intercept=-3.0, weights={k: (1.0 if k in ("co_purchase_jaccard", "complementary_score",
                                                             "alternative_score", "text_similarity") else 0.0)
                                            for k in SIGNALS},
                   n_examples=len(examples), n_positive=int(examples.label.sum()) if len(examples) else 0,
                   auc=float("nan"), baseline_auc=float("nan"), source="default: too few examples to fit")
    rows[(ALL, ALL)] = fit(examples) or default
    segs = sorted(examples.segment.dropna().unique()) if len(examples) else []
    cats = sorted(examples.category_a.dropna().unique()) if len(examples) else []
    for seg in segs:
        rows[(seg, ALL)] = fit(examples[examples.segment == seg]) or dict(rows[(ALL, ALL)], source=f"inherited:{ALL}/{ALL}")
    for cat in cats:
        rows[(ALL, cat)] = fit(examples[examples.category_a == cat]) or dict(rows[(ALL, ALL)], source=f"inherited:{ALL}/{ALL}")
        for seg in segs:
            part = examples[(examples.segment == seg) & (examples.category_a == cat)]
            rows[(seg, cat)] = fit(part) or dict(rows[(seg, ALL)], source=f"inherited:{seg}/{ALL}")
    table = pd.DataFrame([dict(dt=dt, segment=seg, category=cat, run_id=run_id, **v) for (seg, cat), v in rows.items()])
    table["n_examples"] = table.n_examples.astype("int64")
    table["n_positive"] = table.n_positive.astype("int64")
    return table


def _counts_before(spark, cfg: dict, recent_vu, recent_pu, anchor_items):
    """(pair counts, item counts) as they were before the recent units: the stored state
    minus the recent units' counts. Pairs are kept only where one side is an anchor item."""
    from pyspark.sql import functions as F

    recent_p, recent_i = counts_from_units(recent_vu, recent_pu)
    negate = [(-F.col("units")).alias("units"), (-F.col("weight")).alias("weight")]
    pk, ik = ["kind", "site_a", "item_a", "site_b", "item_b"], ["kind", "site_id", "item_id"]
    pairs = (touching(Tables(spark, cfg).read("item_pair_counts"), anchor_items).select(*pk, "units", "weight", "last_day")
             .unionByName(touching(recent_p, anchor_items).select(*pk, *negate, F.lit(None).cast("date").alias("last_day")))
             .groupBy(*pk).agg(F.sum("units").alias("units"), stable_sum("weight").alias("weight"),
                               F.max("last_day").alias("last_day"))
             .filter(F.col("units") > 0))
    items = (Tables(spark, cfg).read("item_unit_counts").select(*ik, "units", "weight")
             .unionByName(recent_i.select(*ik, *negate)).groupBy(*ik)
             .agg(F.sum("units").alias("units"), stable_sum("weight").alias("weight")).filter(F.col("units") > 0))
    return pairs.persist(), items.persist()


def latest_weights(spark, cfg: dict, dt: str):
    """The most recent fitted weights on or before ``dt`` (None before the first fit)."""
    weights, last = Tables(spark, cfg).latest("relationship_weights", dt)
    return None if last is None else weights
