"""Offline evaluation of item relationships on held-out baskets, against two baselines.

    bundlecast eval relationships --cutoff 2011-09-01 [--k 10]
    make eval-relationships          (imports UCI Online Retail into its own state dir first)

Protocol: everything is fitted on behaviour before the cut-off (``run_full`` for the day
before it, weights included). Each basket (order) after the cut-off with at least two items
gives one query per item it holds: the item's top-k related items are compared with the
other items of the basket. Hit rate@k = share of queries with at least one of them in the
top k; NDCG@k with binary relevance. Three rankers on the same queries:

* ``combined``: item_relationships ranked by ``score`` (the fitted combination);
* ``lift``: plain co-occurrence lift of the same purchase units, support >= min_support;
* ``fpgrowth``: Spark MLlib FPGrowth association rules (one-item antecedent) on the
  training orders, ranked by confidence.

A query whose item a ranker knows nothing about counts as a miss for that ranker. The
numbers go to MLflow (experiment ``bundlecast-relationships-eval``) and are printed.
"""
from __future__ import annotations

import time
from datetime import date, timedelta

import numpy as np
import pandas as pd

from bundlecast.jobs.core.tables import Tables


def test_queries(spark, cfg: dict, cutoff: str) -> pd.DataFrame:
    """(order_id, site_id, item_id) of every non-cancelled order on or after the cut-off with 2+ items."""
    from pyspark.sql import functions as F

    orders = Tables(spark, cfg).read("orders").filter((F.col("order_ts") >= F.lit(cutoff).cast("timestamp"))
                                                     & (F.col("status") != "cancelled")).select("order_id")
    lines = Tables(spark, cfg).read("order_lines").join(orders, "order_id").select("order_id", "site_id", "item_id") \
        .distinct().toPandas()
    size = lines.groupby("order_id").item_id.transform("size")
    return lines[size >= 2].reset_index(drop=True)


def rank_metrics(baskets: pd.DataFrame, ranked: dict[tuple, list[tuple]], k: int) -> dict:
    """Hit rate@k and NDCG@k over every (basket, item) query."""
    hits, ndcgs, covered = [], [], []
    discounts = 1 / np.log2(np.arange(2, k + 2))
    for _, group in baskets.groupby("order_id"):
        items = list(zip(group.site_id, group.item_id))
        for anchor in items:
            targets = set(items) - {anchor}
            top = ranked.get(anchor, [])[:k]
            covered.append(float(bool(top)))
            rel = np.array([1.0 if t in targets else 0.0 for t in top])
            hits.append(float(rel.any()) if len(rel) else 0.0)
            dcg = float((rel * discounts[:len(rel)]).sum()) if len(rel) else 0.0
            ideal = float(discounts[:min(len(targets), k)].sum())
            ndcgs.append(dcg / ideal if ideal else 0.0)
    return {f"hit_rate_at_{k}": float(np.mean(hits)) if hits else 0.0,
            f"ndcg_at_{k}": float(np.mean(ndcgs)) if ndcgs else 0.0, "queries": len(hits),
            "coverage": float(np.mean(covered)) if covered else 0.0}


def _top(frame: pd.DataFrame, order: str, k: int) -> dict[tuple, list[tuple]]:
    frame = frame.sort_values(["site_a", "item_a", order, "site_b", "item_b"], ascending=[True, True, False, True, True])
    frame = frame.groupby(["site_a", "item_a"]).head(k)
    out: dict[tuple, list[tuple]] = {}
    for row in frame.itertuples(index=False):
        out.setdefault((row.site_a, row.item_a), []).append((row.site_b, row.item_b))
    return out


def combined_ranking(spark, cfg: dict, k: int) -> dict:
    rel = Tables(spark, cfg).read("item_relationships").select("site_a", "item_a", "site_b", "item_b", "score").toPandas()
    return _top(rel, "score", k)


def lift_ranking(spark, cfg: dict, k: int, min_support: int) -> dict:
    """Unweighted lift of purchase units from the same pair counts."""
    from pyspark.sql import functions as F

    pairs = Tables(spark, cfg).read("item_pair_counts").filter((F.col("kind") == "purchase")
                                                              & (F.col("units") >= min_support)).toPandas()
    counts = Tables(spark, cfg).read("item_unit_counts").filter(F.col("kind") == "purchase").toPandas()
    total = float(counts[counts.site_id == "*"].units.iloc[0]) if len(counts) else 0.0
    n = dict(zip(zip(counts.site_id, counts.item_id), counts.units.astype(float)))
    both = pd.concat([pairs, pairs.rename(columns={"site_a": "site_b", "item_a": "item_b",
                                                   "site_b": "site_a", "item_b": "item_a"})], ignore_index=True)
    both["lift"] = [u * total / (n[(sa, ia)] * n[(sb, ib)]) for u, sa, ia, sb, ib in
                    zip(both.units, both.site_a, both.item_a, both.site_b, both.item_b)]
    return _top(both, "lift", k)


def fpgrowth_ranking(spark, cfg: dict, cutoff: str, k: int, min_support: float, min_confidence: float) -> dict:
    """FPGrowth rules with a one-item antecedent, trained on the orders before the cut-off
    (baskets over ``relationships.max_items_per_unit`` items left out, as the scorer does:
    wholesale invoices of hundreds of lines make FP-trees explode)."""
    from pyspark.ml.fpm import FPGrowth
    from pyspark.sql import functions as F

    orders = Tables(spark, cfg).read("orders").filter((F.col("order_ts") < F.lit(cutoff).cast("timestamp"))
                                                     & (F.col("status") != "cancelled")).select("order_id")
    baskets = (Tables(spark, cfg).read("order_lines").join(orders, "order_id")
               .select("order_id", F.concat_ws("|", "site_id", "item_id").alias("item"))
               .groupBy("order_id").agg(F.array_distinct(F.collect_list("item")).alias("items"))
               .filter(F.size("items") <= int(cfg["relationships"]["max_items_per_unit"])))
    model = FPGrowth(itemsCol="items", minSupport=min_support, minConfidence=min_confidence).fit(baskets)
    rules = (model.associationRules.filter(F.size("antecedent") == 1)
             .select(F.col("antecedent")[0].alias("a"), F.explode("consequent").alias("b"), "confidence")
             .groupBy("a", "b").agg(F.max("confidence").alias("confidence")).toPandas())
    rules[["site_a", "item_a"]] = rules.a.str.split("|", n=1, expand=True)
    rules[["site_b", "item_b"]] = rules.b.str.split("|", n=1, expand=True)
    return _top(rules, "confidence", k)


def evaluate(spark, cfg: dict, cutoff: str, k: int = 10, fpgrowth_support: float = 0.01,
             progress=print) -> dict:
    """Fit on behaviour before ``cutoff`` and score the three rankers on later baskets."""
    from bundlecast.jobs.relationships import job as relationships

    t0 = time.time()
    fit_day = str(date.fromisoformat(cutoff) - timedelta(days=1))
    summary = relationships.run_full(spark, fit_day, f"eval-{cutoff}", cfg)
    progress(relationships.render_summary(summary))
    baskets = test_queries(spark, cfg, cutoff)
    min_support = int(cfg["relationships"]["min_support"])
    rankers = {"combined": combined_ranking(spark, cfg, k), "lift": lift_ranking(spark, cfg, k, min_support),
               "fpgrowth": fpgrowth_ranking(spark, cfg, cutoff, k, fpgrowth_support, 0.01)}
    results = {name: rank_metrics(baskets, ranked, k) for name, ranked in rankers.items()}
    results["_meta"] = dict(cutoff=cutoff, k=k, baskets=int(baskets.order_id.nunique()), seconds=round(time.time() - t0),
                            fpgrowth_min_support=fpgrowth_support, min_support=min_support,
                            co_purchase_window=cfg["relationships"]["co_purchase_window"])
    log_to_mlflow(cfg, results)
    return results


def log_to_mlflow(cfg: dict, results: dict) -> str:
    import mlflow

    from bundlecast.models.tracking import experiment
    experiment(cfg, "bundlecast-relationships-eval")
    meta = results["_meta"]
    with mlflow.start_run(run_name=f"cutoff-{meta['cutoff']}") as run:
        mlflow.log_params(meta)
        for ranker, metrics in results.items():
            if ranker != "_meta":
                mlflow.log_metrics({f"{ranker}.{m}": v for m, v in metrics.items()})
        mlflow.log_dict(results, "results.json")
        return run.info.run_id


def render(results: dict) -> str:
    meta, k = results["_meta"], results["_meta"]["k"]
    lines = [f"held-out baskets after {meta['cutoff']}: {meta['baskets']:,} baskets, "
             f"{results['combined']['queries']:,} queries (k={k})",
             f"{'ranker':10s} {'hit rate@' + str(k):>12s} {'NDCG@' + str(k):>10s} {'coverage':>9s}"]
    for name in ("combined", "lift", "fpgrowth"):
        r = results[name]
        lines.append(f"{name:10s} {r[f'hit_rate_at_{k}']:12.4f} {r[f'ndcg_at_{k}']:10.4f} {r['coverage']:9.1%}")
    best = max(("lift", "fpgrowth"), key=lambda n: results[n][f"ndcg_at_{k}"])
    verdict = "beats" if (results["combined"][f"ndcg_at_{k}"] > results[best][f"ndcg_at_{k}"] and
                          results["combined"][f"hit_rate_at_{k}"] > max(results[n][f"hit_rate_at_{k}"]
                                                                         for n in ("lift", "fpgrowth"))) \
        else "does NOT beat"
    lines.append(f"combined {verdict} both baselines")
    return "\n".join(lines)
