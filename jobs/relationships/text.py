"""Text: item text vectors (TF-IDF + SVD), their nearest neighbours, and the text models that
predict complementary / alternative behaviour from item attributes."""
from __future__ import annotations

import json

import numpy as np

from bundlecast.jobs.core.delta import catalog_frame
from bundlecast.jobs.core.tables import Tables


def item_text_vectors(spark, cfg: dict, dims: int = 64):
    """Item catalogue with a normalised text embedding (TF-IDF of title, description,
    category, brand, attribute values and review texts, reduced by truncated SVD)."""
    from pyspark.sql import functions as F
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    items = Tables(spark, cfg).read("items").select("site_id", "item_id", "title", "description", "category", "brand",
                                                   "price", "attributes").toPandas()
    reviews = (Tables(spark, cfg).read("reviews").groupBy("site_id", "item_id")
               .agg(F.concat_ws(" ", F.slice(F.array_sort(F.collect_list("review_text")), 1, 50)).alias("reviews"),
                    F.avg("rating").alias("rating")).toPandas())
    # A fixed row order: the SVD and the neighbour ties must not depend on file layout.
    items = items.merge(reviews, on=["site_id", "item_id"], how="left") \
        .sort_values(["site_id", "item_id"]).reset_index(drop=True)

    def attribute_words(raw):
        try:
            return " ".join(str(v) for v in json.loads(raw).values()) if raw else ""
        except (ValueError, AttributeError):
            return ""

    category_words = items.category.fillna("").str.replace("/", " ")
    docs = (items.title.fillna("") + " " + items.description.fillna("") + " " + category_words + " "
            + items.brand.fillna("") + " " + items.attributes.map(attribute_words) + " " + items.reviews.fillna(""))
    items["has_text"] = (items.title.fillna("").str.strip() + items.description.fillna("").str.strip()) != ""
    if len(items) == 0:
        return items.assign(embedding=[])
    tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1,
                            token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b").fit_transform(docs)
    k = max(1, min(dims, tfidf.shape[1] - 1, len(items) - 1))
    dense = TruncatedSVD(n_components=k, random_state=0).fit_transform(tfidf) if k < tfidf.shape[1] else tfidf.toarray()
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    dense = np.divide(dense, norms, out=np.zeros_like(dense), where=norms > 0)
    items["embedding"] = list(dense.astype("float64"))
    return items


def text_candidates(items, k: int):
    """Top-k most text-similar items of every item (cross-site included), in chunks: the
    pairs (site_a, item_a, site_b, item_b) of the item frame from :func:`item_text_vectors`."""
    import pandas as pd

    if len(items) < 2 or k <= 0:
        return pd.DataFrame(columns=["site_a", "item_a", "site_b", "item_b"])
    emb = np.vstack(items.embedding.to_numpy())
    rows = []
    for lo in range(0, len(items), 2048):
        sim = emb[lo:lo + 2048] @ emb.T
        for r in range(sim.shape[0]):
            sim[r, lo + r] = -np.inf
        top = np.argpartition(-sim, min(k, sim.shape[1] - 1) - 1, axis=1)[:, :k]
        rows.append(pd.DataFrame({"a": np.repeat(np.arange(lo, lo + sim.shape[0]), top.shape[1]), "b": top.ravel()}))
    pairs = pd.concat(rows, ignore_index=True)
    return pd.DataFrame({"site_a": items.site_id.to_numpy()[pairs.a], "item_a": items.item_id.to_numpy()[pairs.a],
                         "site_b": items.site_id.to_numpy()[pairs.b], "item_b": items.item_id.to_numpy()[pairs.b]})


TEXT_FEATURES = ["text_similarity", "same_category", "category_affinity", "same_site", "same_brand", "price_gap"]
TEXT_TARGETS = ("comp_behaviour", "alt_behaviour")


def fit_text_models(signals, s: dict) -> dict[str, dict]:
    """Logistic models from text features to the behavioural complementary / alternative
    labels of well-supported pairs: {target: {intercept, weights, n_labelled, n_positive,
    source}}. With too little behaviour a target gets a stated fall-back rule instead."""
    from pyspark.sql import functions as F
    from sklearn.linear_model import LogisticRegression

    labelled = (signals.filter(F.col("evidence") >= s["min_support"])
                .select(*TEXT_FEATURES, *TEXT_TARGETS)
                .orderBy(*TEXT_FEATURES, *TEXT_TARGETS).limit(200_000).toPandas())
    models = {}
    for target in TEXT_TARGETS:
        y = (labelled[target] >= 0.5).astype(int) if len(labelled) else None
        positives = 0 if y is None else int(y.sum())
        if y is None or positives < 10 or (len(y) - positives) < 10:
            models[target] = dict(intercept=None, weights={}, n_labelled=len(labelled), n_positive=positives,
                                  source="fallback: too few labelled pairs")
            continue
        model = LogisticRegression(C=1.0, max_iter=500, class_weight="balanced")
        model.fit(labelled[TEXT_FEATURES].to_numpy(float), y.to_numpy())
        models[target] = dict(intercept=float(model.intercept_[0]),
                              weights={f: float(w) for f, w in zip(TEXT_FEATURES, model.coef_[0])},
                              n_labelled=len(labelled), n_positive=positives, source="fitted")
    return models


def text_model_exprs(models: dict[str, dict]):
    """(complementary, alternative) text scores as Spark expressions, so every candidate
    pair (new items included) gets one. Fall-backs: category affinity across different
    categories for complementary, text similarity within a category for alternative."""
    from pyspark.sql import functions as F

    exprs = []
    for target in TEXT_TARGETS:
        m = models.get(target) or {}
        if m.get("intercept") is None:
            if target == "comp_behaviour":
                exprs.append((1 - F.col("same_category")) * (1 - F.exp(-F.col("category_affinity"))) * 0.5)
            else:
                exprs.append(F.col("same_category") * F.col("text_similarity") * 0.5)
            continue
        linear = F.lit(m["intercept"])
        for f in TEXT_FEATURES:
            linear = linear + F.lit(float(m["weights"].get(f, 0.0))) * F.col(f)
        exprs.append(F.lit(1.0) / (F.lit(1.0) + F.exp(-linear)))
    return exprs[0], exprs[1]


def text_models_frame(spark, models: dict[str, dict], dt: str, run_id: str):
    rows = [dict(dt=dt, target=t, intercept=m["intercept"], weights=m["weights"], n_labelled=int(m["n_labelled"]),
                 n_positive=int(m["n_positive"]), source=m["source"], run_id=run_id) for t, m in models.items()]
    return catalog_frame(spark, "relationship_text_models", rows)


def latest_text_models(spark, cfg: dict, dt: str) -> dict[str, dict] | None:
    """The text models of the latest full run on or before ``dt`` (None before the first)."""
    models, last = Tables(spark, cfg).latest("relationship_text_models", dt)
    if last is None:
        return None
    return {r["target"]: dict(r.asDict(), weights=dict(r["weights"] or {})) for r in models.collect()}
