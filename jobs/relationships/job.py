"""The relationships step's run: a full rebuild (nightly) or an incremental fold (hourly)."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.runs import StepRun, last_watermark, record
from bundlecast.jobs.core.tables import Tables, committed
from bundlecast.jobs.relationships.counting import ALL, all_units, behaviour, counts_from_units, settings, stable_sum
from bundlecast.jobs.relationships.signals import inventory_correlation, score_pairs
from bundlecast.jobs.relationships.text import item_text_vectors, latest_text_models, text_models_frame
from bundlecast.jobs.relationships.weights import fit_weights, latest_weights


def _day_end(dt: str) -> datetime:
    return datetime.combine(date.fromisoformat(dt), datetime.min.time()) + timedelta(days=1)


def _oversized(units) -> int:
    return units.filter("oversized").count()


def run_full(spark, dt: str, run_id: str, cfg: dict, fit: bool = True) -> StepRun:
    """Nightly: rebuild the counts from the lookback window, refit the weights and the text
    models, rescore all. ``fit=False`` keeps the latest stored weights and text models."""
    s = settings(cfg)
    summary = StepRun("relationships", dt, run_id, "full")
    until = _day_end(dt)
    with summary.timed("read behaviour"):
        views, purchases, rows = behaviour(spark, cfg, until, until - timedelta(days=s["lookback_days"]), summary)
    with summary.timed("count pairs"):
        vu, pu = (u.persist() for u in all_units(views, purchases, cfg))
        pairs, counts = counts_from_units(vu, pu)
        Tables(spark, cfg).replace("item_pair_counts", pairs)
        Tables(spark, cfg).replace("item_unit_counts", counts)
        summary.counts["skipped_oversized_units"] = _oversized(vu) + _oversized(pu)
    with summary.timed("text"):
        items_pd = item_text_vectors(spark, cfg)
        summary.counts["items_without_text"] = int((~items_pd.has_text).sum()) if len(items_pd) else 0
    with summary.timed("inventory"):
        inventory = inventory_correlation(spark, cfg, pu).localCheckpoint()
    if fit:
        with summary.timed("fit weights"):
            weights = fit_weights(spark, cfg, dt, run_id, vu, pu, purchases, items_pd)
            tables = Tables(spark, cfg)
            tables.replace("relationship_weights", tables.frame("relationship_weights", weights), dt=dt)
    vu.unpersist(), pu.unpersist()
    with summary.timed("score"):
        pair_state = Tables(spark, cfg).read("item_pair_counts")
        unit_state = Tables(spark, cfg).read("item_unit_counts")
        stored = None if fit else latest_text_models(spark, cfg, dt)
        rel, summary.notes, text_models = score_pairs(spark, cfg, pair_state, unit_state, items_pd, run_id, dt,
                                                      latest_weights(spark, cfg, dt), None, inventory, stored)
        Tables(spark, cfg).replace("item_relationships", rel)
        if stored is None:  # refitted: the hourly runs apply these until the next night
            Tables(spark, cfg).replace("relationship_text_models", text_models_frame(spark, text_models, dt, run_id),
                                       dt=dt)
    _finish(spark, cfg, summary, rows)
    return summary


def run_incremental(spark, dt: str, run_id: str, cfg: dict) -> StepRun:
    """Hourly: fold the events after the last watermark into the counts and rescore the
    items they touched. Falls back to a full run when there is no earlier run."""

    last = last_watermark(Tables(spark, cfg), "relationships")
    if last is None:
        return run_full(spark, dt, run_id, cfg)
    summary = StepRun("relationships", dt, run_id, "incremental")
    until = max(_day_end(dt), last)
    with summary.timed("read new behaviour"):
        new_views, new_purchases, rows = behaviour(spark, cfg, until, last, summary)
    if summary.counts["events_read"] == 0:
        summary.watermark = last
        _finish(spark, cfg, summary, rows)
        return summary
    with summary.timed("fold counts"):
        anchors = _fold(spark, cfg, summary, rows, new_views, new_purchases, last, until)
    with summary.timed("rescore"):
        items_pd = item_text_vectors(spark, cfg)
        summary.counts["items_without_text"] = int((~items_pd.has_text).sum()) if len(items_pd) else 0
        current = Tables(spark, cfg).read("item_relationships")
        inventory = current.select("site_a", "item_a", "site_b", "item_b", "inventory_correlation")
        rel, summary.notes, _ = score_pairs(spark, cfg, Tables(spark, cfg).read("item_pair_counts"),
                                            Tables(spark, cfg).read("item_unit_counts"), items_pd, run_id, dt,
                                            latest_weights(spark, cfg, dt), anchors, inventory,
                                            latest_text_models(spark, cfg, dt))
        rel = rel.localCheckpoint()  # materialise before the table it was derived from is rewritten
        kept = current.join(anchors, ["site_a", "item_a"], "left_anti")
        Tables(spark, cfg).replace("item_relationships", kept.unionByName(rel))
    _finish(spark, cfg, summary, rows)
    return summary


def _fold(spark, cfg: dict, summary: StepRun, rows, new_views, new_purchases, last: datetime, until: datetime):
    """MERGE into the count tables the difference that the new rows make to the units they
    touch (each touched unit re-derived whole, minus its previous contribution).
    Returns the touched items as anchors (site_a, item_a) to rescore."""
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
            summary.counts["skipped_oversized_units"] = _oversized(vu) + _oversized(pu)
        pairs, counts = counts_from_units(vu, pu)
        deltas_p.append(pairs.withColumn("units", F.col("units") * sign).withColumn("weight", F.col("weight") * sign))
        deltas_i.append(counts.withColumn("units", F.col("units") * sign).withColumn("weight", F.col("weight") * sign))
    pk, ik = ["kind", "site_a", "item_a", "site_b", "item_b"], ["kind", "site_id", "item_id"]
    dp = (deltas_p[0].unionByName(deltas_p[1]).groupBy(*pk)
          .agg(F.sum("units").alias("units"), stable_sum("weight").alias("weight"), F.max("last_day").alias("last_day"))
          .filter((F.col("units") != 0) | (F.abs(F.col("weight")) > 0))).localCheckpoint()
    di = (deltas_i[0].unionByName(deltas_i[1]).groupBy(*ik)
          .agg(F.sum("units").alias("units"), stable_sum("weight").alias("weight"))).localCheckpoint()
    for name, delta in (("item_pair_counts", dp), ("item_unit_counts", di)):
        update = {"units": "t.units + s.units", "weight": "t.weight + s.weight"}
        if name == "item_pair_counts":
            update["last_day"] = "greatest(t.last_day, s.last_day)"
        # One pass: counts that fall to zero are deleted, the rest updated, new keys inserted
        # (the increments apply to the table as it is when the commit succeeds).
        committed(name, lambda name=name, delta=delta, update=update: (
            Tables(spark, cfg).merge(name, delta)
            .whenMatchedDelete(condition="t.units + s.units <= 0")
            .whenMatchedUpdate(set=update).whenNotMatchedInsertAll(condition="s.units > 0").execute()))
    return (dp.select("site_a", "item_a")
            .unionByName(dp.select(F.col("site_b").alias("site_a"), F.col("item_b").alias("item_a")))
            .unionByName(di.filter(F.col("site_id") != ALL).select(F.col("site_id").alias("site_a"),
                                                                     F.col("item_id").alias("item_a")))
            .distinct().localCheckpoint())


def _finish(spark, cfg: dict, summary: StepRun, rows) -> None:
    from pyspark.sql import functions as F

    items = Tables(spark, cfg).read("items").select("site_id").distinct()
    active = rows.filter(F.col("_known_item")).select("site_id").distinct()
    summary.counts["sites_without_events"] = items.join(active, "site_id", "left_anti").count()
    summary.counts["pairs_counted"] = Tables(spark, cfg).read("item_pair_counts").count()
    summary.counts["pairs_scored"] = Tables(spark, cfg).read("item_relationships").count()
    rows.unpersist()
    # One row per (date, mode): re-running a date replaces its row (the latest run's watermark counts).
    record(Tables(spark, cfg), summary.finish())


def run(spark, dt: str, mode: str = "full", run_id: str | None = None, cfg: dict | None = None,
        progress=print) -> StepRun:
    cfg = cfg or config()
    run_id = run_id or f"relationships-{dt}-{uuid.uuid4().hex[:8]}"
    if mode not in ("full", "incremental"):
        raise BundlecastError(f"mode must be full or incremental, not {mode!r}")
    summary = (run_full if mode == "full" else run_incremental)(spark, dt, run_id, cfg)
    progress(render_summary(summary))
    return summary


def render_summary(s: StepRun) -> str:
    lines = [f"relationships {s.mode} run {s.run_id} for {s.dt}: {s.seconds:.0f} s, watermark {s.watermark}",
             f"  read {s.counts['events_read']:,} events/order lines; skipped: unknown item {s.counts['skipped_unknown_item']:,}, "
             f"unknown user {s.counts['skipped_unknown_user']:,}, bot user-days {s.counts['skipped_bot_user_days']:,}, "
             f"oversized units {s.counts['skipped_oversized_units']:,}",
             f"  items without text {s.counts['items_without_text']:,}; sites without events {s.counts['sites_without_events']:,}",
             f"  pair counts {s.counts['pairs_counted']:,}; relationships {s.counts['pairs_scored']:,}",
             "  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in s.timings.items())]
    return "\n".join(lines + [f"  note: {n}" for n in s.notes])
