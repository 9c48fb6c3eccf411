"""The relationships step's run (see the package docstring)."""
from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.delta import catalog_frame, ensure_table, read_table, replace_rows
from bundlecast.jobs.core.errors import BundlecastError

log = logging.getLogger("bundlecast.relationships")
SIGNALS = ["co_view_rate", "co_view_jaccard", "co_view_lift_log", "co_purchase_rate", "co_purchase_jaccard",
           "co_purchase_lift_log", "text_similarity", "complementary_score", "alternative_score",
           "inventory_correlation"]
ALL = "*"


@dataclass
class RunSummary:
    run_id: str
    dt: str
    mode: str
    watermark: datetime | None = None
    events_read: int = 0
    skipped_unknown_item: int = 0
    skipped_unknown_user: int = 0
    skipped_bot_user_days: int = 0
    skipped_oversized_units: int = 0
    items_without_text: int = 0
    sites_without_events: int = 0
    pairs_counted: int = 0
    pairs_scored: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str):
        t0 = time.time()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.time() - t0, 1)


def settings(cfg: dict) -> dict:
    return cfg["relationships"]


# ------------------------------------------------------------------------------ behaviour
def _bucket(window: str):
    from pyspark.sql import functions as F
    if window == "session":
        return F.col("session_id")
    if window == "day":
        return F.date_format("ts", "yyyy-MM-dd")
    if window == "week":
        return F.date_format(F.date_trunc("week", "ts"), "yyyy-MM-dd")
    raise BundlecastError(f"relationships window must be session, day or week, not {window!r}")


def behaviour(spark, cfg: dict, until: datetime, since: datetime, summary: RunSummary | None = None,
              users=None):
    """(view rows, purchase rows) with known items and users, bot user-days removed.

    view rows: user_id, site_id, item_id, ts, session_id, bought (the event was a purchase).
    purchase rows: user_id, site_id, item_id, ts, session_id (null for order lines).
    ``users`` (a DataFrame of user_id) restricts the read to those users.
    """
    from pyspark.sql import functions as F

    s = settings(cfg)
    window = (F.col("ts") > F.lit(since)) & (F.col("ts") <= F.lit(until))
    events = (read_table(spark, "events", cfg)
              .select("user_id", "site_id", "item_id", F.col("event_ts").alias("ts"), "session_id",
                      (F.col("event_type") == "purchase").alias("bought")).filter(window))
    orders = read_table(spark, "orders", cfg).filter(F.col("status") != "cancelled") \
        .select("order_id", "user_id", F.col("order_ts").alias("ts")).filter(window)
    lines = read_table(spark, "order_lines", cfg).select("order_id", "site_id", "item_id")
    ordered = lines.join(orders, "order_id").select("user_id", "site_id", "item_id", "ts",
                                                    F.lit(None).cast("string").alias("session_id"),
                                                    F.lit(True).alias("bought"))
    rows = events.withColumn("source", F.lit("event")).unionByName(ordered.withColumn("source", F.lit("order")))
    if users is not None:
        rows = rows.join(F.broadcast(users), "user_id", "left_semi")
    items = read_table(spark, "items", cfg).select("site_id", "item_id", F.lit(True).alias("_known_item"))
    known_users = read_table(spark, "users", cfg).select("user_id", F.lit(True).alias("_known_user"))
    rows = (rows.join(F.broadcast(items), ["site_id", "item_id"], "left")
            .join(known_users, "user_id", "left")
            .withColumn("day", F.to_date("ts")))
    # Bot user-days: an aggregate (few rows) broadcast back, not a window over every row.
    bot_days = (rows.groupBy("user_id", "day").count().filter(F.col("count") > s["max_events_per_user_day"])
                .select("user_id", "day", F.lit(True).alias("_bot")))
    rows = rows.join(F.broadcast(bot_days), ["user_id", "day"], "left") \
        .withColumn("_bot", F.coalesce(F.col("_bot"), F.lit(False)))
    if summary is not None:  # read twice (the tallies, then the units): cached, released by _finish
        rows = rows.persist()
        stats = rows.agg(F.count(F.lit(1)).alias("n"),
                         F.sum(F.col("_known_item").isNull().cast("long")).alias("unknown_item"),
                         F.sum((F.col("_known_item").isNotNull() & F.col("_known_user").isNull()).cast("long"))
                         .alias("unknown_user"),
                         F.max("ts").alias("wm")).first()
        summary.events_read += stats["n"] or 0
        summary.skipped_unknown_item += stats["unknown_item"] or 0
        summary.skipped_unknown_user += stats["unknown_user"] or 0
        summary.skipped_bot_user_days += rows.filter("_bot").select("user_id", "day").distinct().count()
        summary.watermark = stats["wm"]
    clean = rows.filter(F.col("_known_item") & F.col("_known_user") & ~F.col("_bot"))
    views = clean.filter(F.col("source") == "event").select("user_id", "site_id", "item_id", "ts", "session_id", "bought")
    purchases = clean.filter(F.col("bought")).select("user_id", "site_id", "item_id", "ts", "session_id")
    return views, purchases, rows


def unit_items(rows, window: str, cap: int, epoch: str, half_life: float):
    """One row per unit: user_id, unit, unit_day, weight, n_items, oversized (more than
    ``cap`` items) and items, the unit's distinct items as a sorted array of
    struct(site_id, item_id, bought).

    The rows are shuffled once, by unit; both aggregations then run where the rows are, and
    pairs are later generated from the array (no self-join on the unit).
    """
    from pyspark.sql import functions as F

    if "bought" not in rows.columns:
        rows = rows.withColumn("bought", F.lit(True))
    per_item = (rows.withColumn("unit", F.concat_ws("|", "user_id", _bucket(window))).repartition("unit")
                .groupBy("unit", "user_id", "site_id", "item_id")
                .agg(F.max("bought").alias("bought"), F.max(F.to_date("ts")).alias("day")))
    units = per_item.groupBy("unit", "user_id").agg(
        F.sort_array(F.collect_list(F.struct("site_id", "item_id", "bought"))).alias("items"),
        F.max("day").alias("unit_day"))
    return (units.withColumn("n_items", F.size("items"))
            .withColumn("oversized", F.col("n_items") > cap)
            .withColumn("weight", F.pow(F.lit(2.0), F.datediff("unit_day", F.lit(epoch)) / F.lit(float(half_life)))))


def unit_pairs(units):
    """One row per unordered pair (a < b) within each unit that is not oversized: unit,
    unit_day, weight, site_a, item_a, bought_a, site_b, item_b, bought_b."""
    from pyspark.sql import functions as F

    items, n = F.col("items"), F.size("items")
    # Each item paired with the items after it in the sorted array: every pair once, a < b.
    pairs = F.flatten(F.transform(items, lambda x, i: F.transform(
        F.slice(items, i + 2, F.greatest(n - i - 1, F.lit(0))), lambda y: F.struct(x.alias("a"), y.alias("b")))))
    p = units.filter(~F.col("oversized")).select("unit", "unit_day", "weight", F.explode(pairs).alias("p"))
    return p.select("unit", "unit_day", "weight",
                    *[F.col(f"p.{side}.{field}").alias(f"{name}_{side}") for side in ("a", "b")
                      for field, name in (("site_id", "site"), ("item_id", "item"), ("bought", "bought"))])


def pair_counts(units, kind: str, with_one_bought: bool = False):
    """Unordered pair counts (a < b) over units: kind, site_a, item_a, site_b, item_b, units, weight, last_day.
    ``with_one_bought`` adds kind ``view_one_bought``: units where exactly one of the two was bought."""
    from pyspark.sql import functions as F

    keys = ["site_a", "item_a", "site_b", "item_b"]
    one = F.col("bought_a") != F.col("bought_b")
    agg = (unit_pairs(units).groupBy(*keys)
           .agg(F.count(F.lit(1)).alias("units"), F.sum("weight").alias("weight"), F.max("unit_day").alias("last_day"),
                F.sum(one.cast("long")).alias("one_units"), F.sum(F.when(one, F.col("weight"))).alias("one_weight"),
                F.max(F.when(one, F.col("unit_day"))).alias("one_last_day")))
    out = agg.select(*keys, "units", "weight", "last_day", F.lit(kind).alias("kind"))
    if not with_one_bought:
        return out
    one_bought = agg.filter(F.col("one_units") > 0).select(
        *keys, F.col("one_units").alias("units"), F.col("one_weight").alias("weight"),
        F.col("one_last_day").alias("last_day"), F.lit("view_one_bought").alias("kind"))
    return out.unionByName(one_bought)


def item_counts(units, kind: str):
    """Units per item, plus the total as site_id = item_id = '*'."""
    from pyspark.sql import functions as F

    u = units.filter(~F.col("oversized"))
    per_item = (u.select("weight", F.explode("items").alias("i"))
                .groupBy(F.col("i.site_id").alias("site_id"), F.col("i.item_id").alias("item_id"))
                .agg(F.count(F.lit(1)).alias("units"), F.sum("weight").alias("weight")))
    total = u.agg(F.count(F.lit(1)).alias("units"), F.sum("weight").alias("weight")) \
        .select(F.lit(ALL).alias("site_id"), F.lit(ALL).alias("item_id"), "units", "weight")
    return per_item.unionByName(total).withColumn("kind", F.lit(kind))


def all_units(views, purchases, cfg: dict):
    """(view units, purchase units) as built by :func:`unit_items` with the configured windows."""
    s = settings(cfg)
    vu = unit_items(views, s["co_view_window"], s["max_items_per_unit"], s["epoch"], s["half_life_days"])
    pu = unit_items(purchases.drop("session_id") if s["co_purchase_window"] != "session" else purchases,
                    s["co_purchase_window"], s["max_items_per_unit"], s["epoch"], s["half_life_days"])
    return vu, pu


def counts_from_units(vu, pu):
    """(pair counts, item counts) of view and purchase units."""
    pairs = pair_counts(vu, "view", with_one_bought=True).unionByName(pair_counts(pu, "purchase"))
    items = item_counts(vu, "view").unionByName(item_counts(pu, "purchase"))
    return pairs, items


# ----------------------------------------------------------------------------------- text
def item_text_vectors(spark, cfg: dict, dims: int = 64):
    """Item catalogue with a normalised text embedding (TF-IDF of title, description,
    category, brand, attribute values and review texts, reduced by truncated SVD)."""
    from pyspark.sql import functions as F
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    items = read_table(spark, "items", cfg).select("site_id", "item_id", "title", "description", "category", "brand",
                                                   "price", "attributes").toPandas()
    reviews = (read_table(spark, "reviews", cfg).groupBy("site_id", "item_id")
               .agg(F.concat_ws(" ", F.slice(F.collect_list("review_text"), 1, 50)).alias("reviews"),
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


# -------------------------------------------------------------------------------- scoring
def _directed(pairs):
    """Unordered (a < b) rows -> both directions."""
    from pyspark.sql import functions as F
    swapped = pairs.select(F.col("site_b").alias("site_a"), F.col("item_b").alias("item_a"),
                           F.col("site_a").alias("site_b"), F.col("item_a").alias("item_b"),
                           *[c for c in pairs.columns if c not in ("site_a", "item_a", "site_b", "item_b")])
    return pairs.unionByName(swapped)


def behaviour_signals(spark, pair_counts_df, item_counts_df, min_support: int, pseudo_units: float = 3.0):
    """Directed pairs with enough support and their rates, Jaccard and lift per kind."""
    from pyspark.sql import functions as F

    keys = ["site_a", "item_a", "site_b", "item_b"]
    wide = (pair_counts_df.groupBy(*keys).pivot("kind", ["view", "purchase", "view_one_bought"])
            .agg(F.first("units").alias("units"), F.first("weight").alias("weight")).na.fill(0))
    wide = wide.filter((F.col("view_units") >= min_support) | (F.col("purchase_units") >= min_support))
    directed = _directed(wide)
    totals = {r["kind"]: r["weight"] for r in item_counts_df.filter(F.col("site_id") == ALL).collect()}
    for kind, name in (("view", "co_view"), ("purchase", "co_purchase")):
        ic = item_counts_df.filter((F.col("kind") == kind) & (F.col("site_id") != ALL))
        wa = ic.select(F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a"), F.col("weight").alias("_wa"))
        wb = ic.select(F.col("site_id").alias("site_b"), F.col("item_id").alias("item_b"), F.col("weight").alias("_wb"))
        total = float(totals.get(kind) or 0.0)
        p = F.col(f"{kind}_weight")
        directed = (directed.join(wa, ["site_a", "item_a"], "left").join(wb, ["site_b", "item_b"], "left")
                    .withColumn(f"{name}_support", F.col(f"{kind}_units").cast("long"))
                    .withColumn(f"{name}_rate", F.coalesce(F.try_divide(p, F.col("_wa")), F.lit(0.0)))
                    .withColumn(f"{name}_jaccard", F.coalesce(F.try_divide(p, F.col("_wa") + F.col("_wb") - p),
                                                              F.lit(0.0)))
                    .withColumn(f"{name}_lift", F.coalesce(F.try_divide(p * F.lit(total), F.col("_wa") * F.col("_wb")),
                                                           F.lit(0.0)))
                    .withColumn(f"_{kind}_beyond_chance", _beyond_chance(p, F.col(f"{kind}_units"),
                                                                         F.col("_wa") * F.col("_wb") / F.lit(total or 1.0),
                                                                         pseudo_units))
                    .drop("_wa", "_wb"))
    return directed.withColumn("view_one_bought_support", F.col("view_one_bought_units").cast("long"))


def with_log_lifts(df):
    """The lift signals enter models as log(1 + lift)."""
    from pyspark.sql import functions as F
    return df.withColumn("co_view_lift_log", F.log1p("co_view_lift")) \
        .withColumn("co_purchase_lift_log", F.log1p("co_purchase_lift"))


def _beyond_chance(observed, units, expected, pseudo_units: float):
    """Share of the co-occurrence that chance does not explain, 0..1: 1 - (expected + c) /
    (observed + c), with c pseudo-units of prior at chance level, so a pair seen 3 times
    where 0.5 were expected is discounted far more than one seen 40 times."""
    from pyspark.sql import functions as F
    c = F.lit(float(pseudo_units)) * F.try_divide(observed, F.greatest(units.cast("double"), F.lit(1.0)))
    return F.coalesce(F.greatest(F.lit(0.0), F.lit(1.0) - F.try_divide(expected + c, observed + c)), F.lit(0.0))


def score_pairs(spark, cfg: dict, pair_counts_df, item_counts_df, items_pd, run_id: str, dt: str,
                weights_df=None, anchors=None, inventory=None, text_models=None):
    """Every signal, the text model and the combined score for directed pairs.

    ``anchors`` (DataFrame of site_a, item_a) restricts the anchors scored (hourly);
    ``weights_df`` are the fitted weights (None: a neutral combination until the first fit);
    ``text_models`` are stored text models to apply (None: fit them on these pairs). With
    both anchors and text models, only the pairs touching an anchor are read at all.
    Returns (relationships DataFrame, notes, the text models used).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    s = settings(cfg)
    notes = []
    category_pairs = pair_counts_df  # category affinity needs every pair
    if anchors is not None and text_models is not None:
        pair_counts_df = touching(pair_counts_df, anchors)
    signals = behaviour_signals(spark, pair_counts_df, item_counts_df, s["min_support"], s["chance_pseudo_units"])
    text = text_candidates(items_pd, s["text_neighbours"])
    if len(text):
        text_df = spark.createDataFrame(text)
        if anchors is not None and text_models is not None:
            text_df = text_df.join(F.broadcast(anchors), ["site_a", "item_a"], "left_semi")
        signals = signals.unionByName(text_df, allowMissingColumns=True) \
            .groupBy("site_a", "item_a", "site_b", "item_b").agg(
                *[F.max(c).alias(c) for c in signals.columns if c not in ("site_a", "item_a", "site_b", "item_b")])
    signals = signals.na.fill(0)
    # Item attributes (category, price, brand, embedding) for both sides.
    attrs = spark.createDataFrame(items_pd[["site_id", "item_id", "category", "brand", "price"]]
                                  .assign(embedding=items_pd.embedding.map(lambda v: [float(x) for x in v])))
    for side in ("a", "b"):
        signals = signals.join(F.broadcast(attrs.select(*[F.col(c).alias(f"{c}_{side}") if c not in ("site_id", "item_id")
                                                           else F.col(c).alias(f"{c.split('_')[0]}_{side}")
                                                           for c in attrs.columns])),
                               [f"site_{side}", f"item_{side}"], "left")
    signals = signals.withColumn("text_similarity", F.greatest(F.lit(0.0), F.coalesce(F.aggregate(
        F.zip_with("embedding_a", "embedding_b", lambda x, y: x * y), F.lit(0.0), lambda acc, x: acc + x), F.lit(0.0))))
    # Category affinity: co-purchase lift between the two categories (from the counts).
    cat_aff = _category_affinity(spark, category_pairs, item_counts_df, items_pd)
    signals = signals.join(F.broadcast(cat_aff), ["category_a", "category_b"], "left") \
        .withColumn("category_affinity", F.coalesce("category_affinity", F.lit(0.0)))
    # Behaviour: bought together vs viewed together with one bought, each discounted by chance.
    n_cp, n_vob = F.col("purchase_units").cast("double"), F.col("view_one_bought_units").cast("double")
    evidence = n_cp + n_vob
    comp_beh = F.when(evidence > 0, n_cp / evidence * F.col("_purchase_beyond_chance")).otherwise(F.lit(0.0))
    alt_beh = F.when(evidence > 0, n_vob / evidence * F.col("_view_beyond_chance")).otherwise(F.lit(0.0))
    signals = (signals.withColumn("comp_behaviour", comp_beh).withColumn("alt_behaviour", alt_beh)
               .withColumn("evidence", evidence)
               .withColumn("same_category", (F.col("category_a") == F.col("category_b")).cast("double"))
               .withColumn("same_site", (F.col("site_a") == F.col("site_b")).cast("double"))
               .withColumn("same_brand", F.coalesce((F.col("brand_a") == F.col("brand_b")).cast("double"), F.lit(0.0)))
               .withColumn("price_gap", F.abs(F.log(F.greatest(F.col("price_a"), F.lit(0.01)) /
                                                    F.greatest(F.col("price_b"), F.lit(0.01))))))
    # Materialised once: the text models, the weights and the write all read it.
    signals = signals.drop("embedding_a", "embedding_b").localCheckpoint()
    if text_models is None:
        text_models = fit_text_models(signals, s)
    notes += [f"text model for {t}: {m['source']} ({m['n_positive']} positive of {m['n_labelled']} labelled pairs)"
              for t, m in text_models.items() if m["source"] != "fitted"]
    comp_text, alt_text = text_model_exprs(text_models)
    if anchors is not None:  # after the text models, which learn from every pair
        signals = signals.join(F.broadcast(anchors), ["site_a", "item_a"], "left_semi")
    k = float(s["shrinkage_units"])
    signals = (signals.withColumn("comp_text", comp_text).withColumn("alt_text", alt_text)
               .withColumn("complementary_score", (F.col("evidence") * F.col("comp_behaviour") + k * F.col("comp_text"))
                           / (F.col("evidence") + k))
               .withColumn("alternative_score", (F.col("evidence") * F.col("alt_behaviour") + k * F.col("alt_text"))
                           / (F.col("evidence") + k)))
    signals = with_log_lifts(signals)
    if inventory is not None:
        signals = signals.join(inventory, ["site_a", "item_a", "site_b", "item_b"], "left")
    signals = signals.withColumn("inventory_correlation",
                                 F.coalesce(F.col("inventory_correlation") if inventory is not None else F.lit(None),
                                            F.lit(0.0)).cast("double"))
    scored = _combine(spark, signals, weights_df)
    th = float(s["relation_threshold"])
    relation = (F.when((F.col("complementary_score") >= F.col("alternative_score")) & (F.col("complementary_score") >= th),
                       "complementary")
                .when((F.col("alternative_score") > F.col("complementary_score")) & (F.col("alternative_score") >= th),
                      "alternative").otherwise("other"))
    rank = F.row_number().over(Window.partitionBy("site_a", "item_a")
                               .orderBy(F.col("score").desc(), F.col("site_b"), F.col("item_b")))
    out = (scored.withColumn("relation", relation).withColumn("rank", rank)
           .filter(F.col("rank") <= s["max_neighbours"])
           .withColumn("dt", F.lit(dt).cast("date")).withColumn("run_id", F.lit(run_id)))
    return out.select(*[c.name for c in catalog.table("item_relationships").columns]), notes, text_models


def _category_affinity(spark, pair_counts_df, item_counts_df, items_pd):
    """Symmetric co-purchase lift between categories, from the pair and item counts."""
    import pandas as pd
    from pyspark.sql import functions as F

    cats = spark.createDataFrame(items_pd[["site_id", "item_id", "category"]])
    pc = pair_counts_df.filter(F.col("kind") == "purchase")
    pc = (pc.join(F.broadcast(cats.withColumnRenamed("site_id", "site_a").withColumnRenamed("item_id", "item_a")
                              .withColumnRenamed("category", "c1")), ["site_a", "item_a"])
          .join(F.broadcast(cats.withColumnRenamed("site_id", "site_b").withColumnRenamed("item_id", "item_b")
                            .withColumnRenamed("category", "c2")), ["site_b", "item_b"])
          .groupBy("c1", "c2").agg(F.sum("weight").alias("w")).toPandas())
    ic = (item_counts_df.filter((F.col("kind") == "purchase") & (F.col("site_id") != ALL))
          .join(F.broadcast(cats), ["site_id", "item_id"]).groupBy("category").agg(F.sum("weight").alias("w")).toPandas())
    total = item_counts_df.filter((F.col("kind") == "purchase") & (F.col("site_id") == ALL)).select("weight").first()
    if pc.empty or ic.empty or total is None or not total["weight"]:
        return spark.createDataFrame([], "category_a string, category_b string, category_affinity double")
    both = pd.concat([pc, pc.rename(columns={"c1": "c2", "c2": "c1"})]).groupby(["c1", "c2"], as_index=False).w.sum()
    both.loc[both.c1 == both.c2, "w"] /= 2
    per = dict(zip(ic.category, ic.w))
    both["category_affinity"] = np.log1p(both.w * float(total["weight"]) /
                                         (both.c1.map(per).astype(float) * both.c2.map(per).astype(float)))
    both = both.rename(columns={"c1": "category_a", "c2": "category_b"})
    return spark.createDataFrame(both[["category_a", "category_b", "category_affinity"]].astype({"category_affinity": float}))


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
    from pyspark.sql import functions as F
    t = read_table(spark, "relationship_text_models", cfg).filter(F.col("dt") <= F.lit(dt).cast("date"))
    last = t.agg(F.max("dt")).first()[0]
    if last is None:
        return None
    return {r["target"]: dict(r.asDict(), weights=dict(r["weights"] or {}))
            for r in t.filter(F.col("dt") == F.lit(last)).collect()}


def _combine(spark, signals, weights_df):
    """score = sigmoid(intercept + sum(weights * signals)) with the weights fitted for the
    anchor's category (all segments), and the same per segment in segment_scores."""
    from pyspark.sql import functions as F

    if weights_df is None or weights_df.rdd.isEmpty():
        # Before the first fit: a neutral average of the normalised signals.
        neutral = sum(F.least(F.col(c), F.lit(1.0)) for c in ("co_view_jaccard", "co_purchase_jaccard",
                                                              "complementary_score", "alternative_score",
                                                              "text_similarity")) / F.lit(5.0)
        return signals.withColumn("score", neutral).withColumn("segment_scores", F.create_map())
    w = weights_df.select("segment", "category", "intercept", "weights")

    def linear(prefix: str):
        expr = F.col(f"{prefix}intercept")
        for c in SIGNALS:
            expr = expr + F.coalesce(F.col(f"{prefix}weights")[c], F.lit(0.0)) * F.col(c)
        return F.lit(1.0) / (F.lit(1.0) + F.exp(-expr))

    fallback = w.filter(F.col("category") == ALL)
    by_cat = w.filter(F.col("category") != ALL)
    # Weights for (segment, category_a), falling back to (segment, '*').
    cats = signals.select("category_a").distinct()
    chosen = (cats.crossJoin(fallback.select("segment", F.col("intercept").alias("fi"), F.col("weights").alias("fw")))
              .join(by_cat.withColumnRenamed("category", "category_a"), ["segment", "category_a"], "left")
              .select("category_a", "segment", F.coalesce("intercept", "fi").alias("w_intercept"),
                      F.coalesce("weights", "fw").alias("w_weights")))
    per_segment = (signals.select("site_a", "item_a", "site_b", "item_b", "category_a", *SIGNALS)
                   .join(F.broadcast(chosen), "category_a").withColumn("p", linear("w_"))
                   .groupBy("site_a", "item_a", "site_b", "item_b")
                   .agg(F.map_from_entries(F.collect_list(F.struct("segment", "p"))).alias("all_scores")))
    return (signals.join(per_segment, ["site_a", "item_a", "site_b", "item_b"], "left")
            .withColumn("score", F.coalesce(F.col("all_scores")[ALL], F.lit(0.0)))
            .withColumn("segment_scores", F.map_filter("all_scores", lambda k, v: k != ALL))
            .drop("all_scores"))


# ------------------------------------------------------------------------------ inventory
def inventory_correlation(spark, cfg: dict, purchase_units, min_units: int = 3):
    """Per unordered pair seen in stock data: share of its co-purchase units on days both
    items were in stock, minus the share of those stock days on which both were in stock
    (what stock alone explains). Pairs with fewer than ``min_units`` such units get none."""
    from pyspark.sql import functions as F

    stock = (read_table(spark, "inventory", cfg)
             .groupBy("site_id", "item_id", F.to_date("snapshot_ts").alias("day"))
             .agg((F.sum(F.col("on_hand") - F.col("reserved")) > 0).alias("in_stock")))
    days = stock.select("day").distinct()
    u = purchase_units.join(F.broadcast(days), F.col("unit_day") == F.col("day"), "left_semi")
    pairs = unit_pairs(u).select("unit", F.col("unit_day").alias("day"), "site_a", "item_a", "site_b", "item_b")
    sa = stock.select(F.col("site_id").alias("site_a"), F.col("item_id").alias("item_a"), "day", F.col("in_stock").alias("in_a"))
    sb = stock.select(F.col("site_id").alias("site_b"), F.col("item_id").alias("item_b"), "day", F.col("in_stock").alias("in_b"))
    keys = ["site_a", "item_a", "site_b", "item_b"]
    co = (pairs.join(sa, ["site_a", "item_a", "day"]).join(sb, ["site_b", "item_b", "day"])
          .groupBy(*keys).agg(F.count(F.lit(1)).alias("n"), F.avg((F.col("in_a") & F.col("in_b")).cast("double")).alias("observed"))
          .filter(F.col("n") >= min_units))
    expected = (co.select(*keys).crossJoin(F.broadcast(days)).join(sa, ["site_a", "item_a", "day"])
                .join(sb, ["site_b", "item_b", "day"]).groupBy(*keys)
                .agg(F.avg((F.col("in_a") & F.col("in_b")).cast("double")).alias("expected")))
    result = co.join(expected, keys).select(*keys, (F.col("observed") - F.col("expected")).alias("inventory_correlation"))
    return _directed(result)


# -------------------------------------------------------------------------------- weights
def fit_weights(spark, cfg: dict, dt: str, run_id: str, vu, pu, purchases, items_pd):
    """Fit the combined-score weights per segment x category on a strict time split.

    Features are the relationship signals computed from behaviour *before* the cut-off
    (dt - label_days); an example is (user, item a the user bought in the anchor_days before
    the cut-off, candidate b among a's neighbours); the label is whether the user bought b in
    the label_days after it. Users are split 70/30 by hash for the fit quality (ROC AUC),
    reported next to co-purchase lift alone on the same users.
    """
    import pandas as pd
    from pyspark.sql import functions as F
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

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
    segments = read_table(spark, "users", cfg).select("user_id", "segment")
    rel_c = with_log_lifts(rel_c)
    examples = (anchors.join(rel_c.select("site_a", "item_a", "site_b", "item_b", "category_a", *SIGNALS),
                             ["site_a", "item_a"])
                .join(later, ["user_id", "site_b", "item_b"], "left").join(segments, "user_id")
                .withColumn("label", F.coalesce("label", F.lit(0)))
                .withColumn("holdout", (F.abs(F.xxhash64("user_id")) % 10) < 3)
                .orderBy(F.xxhash64("user_id", "item_a", "item_b")).limit(int(ws["max_examples"]))
                .select("segment", "category_a", "label", "holdout", *SIGNALS).toPandas())
    pairs_c.unpersist(), items_c.unpersist()
    examples[SIGNALS] = examples[SIGNALS].astype(float)

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


def touching(pairs, anchors):
    """The unordered pairs (a < b) with either side among ``anchors`` (site_a, item_a)."""
    from pyspark.sql import functions as F

    a = anchors.withColumn("_a", F.lit(True))
    b = anchors.select(F.col("site_a").alias("site_b"), F.col("item_a").alias("item_b"), F.lit(True).alias("_b"))
    return (pairs.join(F.broadcast(a), ["site_a", "item_a"], "left").join(F.broadcast(b), ["site_b", "item_b"], "left")
            .filter(F.col("_a").isNotNull() | F.col("_b").isNotNull()).drop("_a", "_b"))


def _counts_before(spark, cfg: dict, recent_vu, recent_pu, anchor_items):
    """(pair counts, item counts) as they were before the recent units: the stored state
    minus the recent units' counts. Pairs are kept only where one side is an anchor item."""
    from pyspark.sql import functions as F

    recent_p, recent_i = counts_from_units(recent_vu, recent_pu)
    negate = [(-F.col("units")).alias("units"), (-F.col("weight")).alias("weight")]
    pk, ik = ["kind", "site_a", "item_a", "site_b", "item_b"], ["kind", "site_id", "item_id"]
    pairs = (touching(read_table(spark, "item_pair_counts", cfg), anchor_items).select(*pk, "units", "weight", "last_day")
             .unionByName(touching(recent_p, anchor_items).select(*pk, *negate, F.lit(None).cast("date").alias("last_day")))
             .groupBy(*pk).agg(F.sum("units").alias("units"), F.sum("weight").alias("weight"),
                               F.max("last_day").alias("last_day"))
             .filter(F.col("units") > 0))
    items = (read_table(spark, "item_unit_counts", cfg).select(*ik, "units", "weight")
             .unionByName(recent_i.select(*ik, *negate)).groupBy(*ik)
             .agg(F.sum("units").alias("units"), F.sum("weight").alias("weight")).filter(F.col("units") > 0))
    return pairs.persist(), items.persist()


def latest_weights(spark, cfg: dict, dt: str):
    """The most recent fitted weights on or before ``dt`` (None before the first fit)."""
    from pyspark.sql import functions as F
    w = read_table(spark, "relationship_weights", cfg).filter(F.col("dt") <= F.lit(dt).cast("date"))
    last = w.agg(F.max("dt")).first()[0]
    return None if last is None else w.filter(F.col("dt") == F.lit(last))


# ------------------------------------------------------------------------------------ runs
def _day_end(dt: str) -> datetime:
    return datetime.combine(date.fromisoformat(dt), datetime.min.time()) + timedelta(days=1)


def _overwrite(spark, df, name: str, cfg: dict) -> None:
    replace_rows(spark, df, name, None, cfg)


def _oversized(units) -> int:
    return units.filter("oversized").count()


def run_full(spark, dt: str, run_id: str, cfg: dict, fit: bool = True) -> RunSummary:
    """Nightly: rebuild the counts from the lookback window, refit the weights and the text
    models, rescore all. ``fit=False`` keeps the latest stored weights and text models."""
    t0 = time.time()
    s = settings(cfg)
    summary = RunSummary(run_id, dt, "full")
    until = _day_end(dt)
    with summary.step("read behaviour"):
        views, purchases, rows = behaviour(spark, cfg, until, until - timedelta(days=s["lookback_days"]), summary)
    with summary.step("count pairs"):
        vu, pu = (u.persist() for u in all_units(views, purchases, cfg))
        pairs, counts = counts_from_units(vu, pu)
        _overwrite(spark, pairs, "item_pair_counts", cfg)
        _overwrite(spark, counts, "item_unit_counts", cfg)
        summary.skipped_oversized_units = _oversized(vu) + _oversized(pu)
    with summary.step("text"):
        items_pd = item_text_vectors(spark, cfg)
        summary.items_without_text = int((~items_pd.has_text).sum()) if len(items_pd) else 0
    with summary.step("inventory"):
        inventory = inventory_correlation(spark, cfg, pu).localCheckpoint()
    if fit:
        with summary.step("fit weights"):
            weights = fit_weights(spark, cfg, dt, run_id, vu, pu, purchases, items_pd)
            replace_rows(spark, catalog_frame(spark, "relationship_weights", weights), "relationship_weights", f"dt = DATE'{dt}'", cfg)
    vu.unpersist(), pu.unpersist()
    with summary.step("score"):
        pair_state = read_table(spark, "item_pair_counts", cfg)
        unit_state = read_table(spark, "item_unit_counts", cfg)
        stored = None if fit else latest_text_models(spark, cfg, dt)
        rel, summary.notes, text_models = score_pairs(spark, cfg, pair_state, unit_state, items_pd, run_id, dt,
                                                      latest_weights(spark, cfg, dt), None, inventory, stored)
        _overwrite(spark, rel, "item_relationships", cfg)
        if stored is None:  # refitted: the hourly runs apply these until the next night
            replace_rows(spark, text_models_frame(spark, text_models, dt, run_id), "relationship_text_models",
                         f"dt = DATE'{dt}'", cfg)
    _finish(spark, cfg, summary, rows, t0)
    return summary


def run_incremental(spark, dt: str, run_id: str, cfg: dict) -> RunSummary:
    """Hourly: fold the events after the last watermark into the counts and rescore the
    items they touched. Falls back to a full run when there is no earlier run."""
    from pyspark.sql import functions as F

    t0 = time.time()
    latest = (read_table(spark, "relationship_runs", cfg).filter(F.col("watermark").isNotNull())
              .orderBy(F.col("finished_at").desc()).select("watermark").first())
    last = latest["watermark"] if latest else None
    if last is None:
        return run_full(spark, dt, run_id, cfg)
    summary = RunSummary(run_id, dt, "incremental")
    until = max(_day_end(dt), last)
    with summary.step("read new behaviour"):
        new_views, new_purchases, rows = behaviour(spark, cfg, until, last, summary)
    if summary.events_read == 0:
        summary.watermark = last
        _finish(spark, cfg, summary, rows, t0)
        return summary
    with summary.step("fold counts"):
        anchors = _fold(spark, cfg, summary, rows, new_views, new_purchases, last, until)
    with summary.step("rescore"):
        items_pd = item_text_vectors(spark, cfg)
        summary.items_without_text = int((~items_pd.has_text).sum()) if len(items_pd) else 0
        current = read_table(spark, "item_relationships", cfg)
        inventory = current.select("site_a", "item_a", "site_b", "item_b", "inventory_correlation")
        rel, summary.notes, _ = score_pairs(spark, cfg, read_table(spark, "item_pair_counts", cfg),
                                            read_table(spark, "item_unit_counts", cfg), items_pd, run_id, dt,
                                            latest_weights(spark, cfg, dt), anchors, inventory,
                                            latest_text_models(spark, cfg, dt))
        rel = rel.localCheckpoint()  # materialise before the table it was derived from is rewritten
        kept = current.join(anchors, ["site_a", "item_a"], "left_anti")
        _overwrite(spark, kept.unionByName(rel), "item_relationships", cfg)
    _finish(spark, cfg, summary, rows, t0)
    return summary


def _fold(spark, cfg: dict, summary: RunSummary, rows, new_views, new_purchases, last: datetime, until: datetime):
    """MERGE into the count tables the difference that the new rows make to the units they
    touch (each touched unit re-derived whole, minus its previous contribution).
    Returns the touched items as anchors (site_a, item_a) to rescore."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    # Units end within 8 days (sessions, days, weeks), so a margin of 8 days re-derives them whole.
    margin = datetime.combine((last - timedelta(days=8)).date(), datetime.min.time())
    users = rows.select("user_id").distinct().localCheckpoint()
    new_vu, new_pu = all_units(new_views, new_purchases, cfg)
    touched_v = new_vu.select("unit").distinct().localCheckpoint()
    touched_p = new_pu.select("unit").distinct().localCheckpoint()
    deltas_p, deltas_i = [], []
    for sign, upto in ((1, until), (-1, last)):
        views, purchases, _ = behaviour(spark, cfg, upto, margin, None, users)
        vu, pu = all_units(views, purchases, cfg)
        vu, pu = vu.join(touched_v, "unit", "left_semi"), pu.join(touched_p, "unit", "left_semi")
        if sign == 1:
            summary.skipped_oversized_units = _oversized(vu) + _oversized(pu)
        pairs, counts = counts_from_units(vu, pu)
        deltas_p.append(pairs.withColumn("units", F.col("units") * sign).withColumn("weight", F.col("weight") * sign))
        deltas_i.append(counts.withColumn("units", F.col("units") * sign).withColumn("weight", F.col("weight") * sign))
    pk, ik = ["kind", "site_a", "item_a", "site_b", "item_b"], ["kind", "site_id", "item_id"]
    dp = (deltas_p[0].unionByName(deltas_p[1]).groupBy(*pk)
          .agg(F.sum("units").alias("units"), F.sum("weight").alias("weight"), F.max("last_day").alias("last_day"))
          .filter((F.col("units") != 0) | (F.abs(F.col("weight")) > 0))).localCheckpoint()
    di = (deltas_i[0].unionByName(deltas_i[1]).groupBy(*ik)
          .agg(F.sum("units").alias("units"), F.sum("weight").alias("weight"))).localCheckpoint()
    for name, delta, keys in (("item_pair_counts", dp, pk), ("item_unit_counts", di, ik)):
        table = DeltaTable.forPath(spark, ensure_table(spark, name, cfg))
        update = {"units": "t.units + s.units", "weight": "t.weight + s.weight"}
        if name == "item_pair_counts":
            update["last_day"] = "greatest(t.last_day, s.last_day)"
        # One pass: counts that fall to zero are deleted, the rest updated, new keys inserted.
        (table.alias("t").merge(delta.alias("s"), " AND ".join(f"t.{k} = s.{k}" for k in keys))
         .whenMatchedDelete(condition="t.units + s.units <= 0")
         .whenMatchedUpdate(set=update).whenNotMatchedInsertAll(condition="s.units > 0").execute())
    return (dp.select("site_a", "item_a")
            .unionByName(dp.select(F.col("site_b").alias("site_a"), F.col("item_b").alias("item_a")))
            .unionByName(di.filter(F.col("site_id") != ALL).select(F.col("site_id").alias("site_a"),
                                                                     F.col("item_id").alias("item_a")))
            .distinct().localCheckpoint())


def _finish(spark, cfg: dict, summary: RunSummary, rows, t0: float) -> None:
    from pyspark.sql import functions as F

    items = read_table(spark, "items", cfg).select("site_id").distinct()
    active = rows.filter(F.col("_known_item")).select("site_id").distinct()
    summary.sites_without_events = items.join(active, "site_id", "left_anti").count()
    summary.pairs_counted = read_table(spark, "item_pair_counts", cfg).count()
    summary.pairs_scored = read_table(spark, "item_relationships", cfg).count()
    rows.unpersist()
    summary.seconds = round(time.time() - t0, 1)
    row = {k: v for k, v in asdict(summary).items() if k not in ("notes", "timings")}
    row["finished_at"] = datetime.now(timezone.utc).replace(tzinfo=None)
    frame = catalog_frame(spark, "relationship_runs", [row])
    # One row per (date, mode): re-running a date replaces its row (the latest run's watermark counts).
    replace_rows(spark, frame, "relationship_runs", f"dt = DATE'{summary.dt}' AND mode = '{summary.mode}'", cfg)


def run(spark, dt: str, mode: str = "full", run_id: str | None = None, cfg: dict | None = None,
        progress=print) -> RunSummary:
    cfg = cfg or config()
    run_id = run_id or f"relationships-{dt}-{uuid.uuid4().hex[:8]}"
    if mode not in ("full", "incremental"):
        raise BundlecastError(f"mode must be full or incremental, not {mode!r}")
    summary = (run_full if mode == "full" else run_incremental)(spark, dt, run_id, cfg)
    progress(render_summary(summary))
    return summary


def render_summary(s: RunSummary) -> str:
    lines = [f"relationships {s.mode} run {s.run_id} for {s.dt}: {s.seconds:.0f} s, watermark {s.watermark}",
             f"  read {s.events_read:,} events/order lines; skipped: unknown item {s.skipped_unknown_item:,}, "
             f"unknown user {s.skipped_unknown_user:,}, bot user-days {s.skipped_bot_user_days:,}, "
             f"oversized units {s.skipped_oversized_units:,}",
             f"  items without text {s.items_without_text:,}; sites without events {s.sites_without_events:,}",
             f"  pair counts {s.pairs_counted:,}; relationships {s.pairs_scored:,}",
             "  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in s.timings.items())]
    return "\n".join(lines + [f"  note: {n}" for n in s.notes])


# ----------------------------------------------------------------------------------- query
def related_items(item: str, k: int = 10, relation: str | None = None, site: str | None = None,
                  segment: str | None = None, spark=None, cfg: dict | None = None) -> list[dict]:
    """The k items most related to ``item`` (optionally of one relation), best first, with
    every signal. ``segment`` ranks by that segment's fitted weights."""
    from pyspark.sql import functions as F

    cfg = cfg or config()
    if spark is None:
        from bundlecast.jobs.core.spark import get_spark
        spark = get_spark("bundlecast-related", cfg)
    if relation not in (None, "complementary", "alternative", "other"):
        raise BundlecastError(f"relation must be complementary, alternative or other, not {relation!r}")
    rel = read_table(spark, "item_relationships", cfg).filter(F.col("item_a") == item)
    if site:
        rel = rel.filter(F.col("site_a") == site)
    if relation:
        rel = rel.filter(F.col("relation") == relation)
    order = F.coalesce(F.col("segment_scores")[segment], F.col("score")) if segment else F.col("score")
    return [r.asDict() for r in rel.withColumn("_order", order).orderBy(F.col("_order").desc(), "site_b", "item_b")
            .drop("_order").limit(k).collect()]


def render_related(item: str, rows: list[dict]) -> str:
    if not rows:
        return f"no related items for {item} (unknown item, or no relationships scored yet)"
    head = (f"{'site':9s} {'item':12s} {'relation':13s} {'score':>6s} {'compl':>6s} {'altern':>6s} {'co-buy':>7s} "
            f"{'lift':>6s} {'co-view':>7s} {'text':>5s} {'stock':>6s}")
    lines = [f"related to {rows[0]['site_a']}/{item}:", head]
    for r in rows:
        lines.append(f"{r['site_b']:9s} {r['item_b']:12s} {r['relation']:13s} {r['score']:6.3f} "
                     f"{r['complementary_score']:6.3f} {r['alternative_score']:6.3f} "
                     f"{r['co_purchase_support']:>7d} {r['co_purchase_lift']:6.1f} {r['co_view_support']:>7d} "
                     f"{r['text_similarity']:5.2f} {r['inventory_correlation']:6.2f}")
    return "\n".join(lines)
