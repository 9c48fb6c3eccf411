"""The bundles step's run (see the package docstring)."""
from __future__ import annotations

import uuid

import pandas as pd

from bundlecast.jobs.bundles.extract import need_bundle_inputs, relationship_frame, stock_as_of_run
from bundlecast.jobs.bundles.transform import need_bundles, product_bundles
from bundlecast.jobs.core.commerce import (
    competitor_reference,
    item_prices,
)
from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.runs import StepRun, record
from bundlecast.jobs.core.tables import Tables


def build_need_bundles(tables, cfg: dict, dt: str, run_id: str, prices: pd.DataFrame, counts: dict):
    """The run date's need bundles (extract + transform), for this step and the hourly
    proactive run."""
    return need_bundles(**need_bundle_inputs(tables, dt, prices), s=cfg["bundles"]["need"], dt=dt, run_id=run_id,
                        counts=counts)


def run(spark, dt: str, run_id: str | None = None, cfg: dict | None = None, progress=print) -> StepRun:
    from pyspark.sql import functions as F

    cfg = cfg or config()
    summary = StepRun("bundles", dt, run_id or f"bundles-{dt}-{uuid.uuid4().hex[:8]}")
    c = summary.counts
    tables = Tables(spark, cfg)
    prices = item_prices(tables, c)
    nb = build_need_bundles(tables, cfg, dt, summary.run_id, prices, c).cache()
    tables.replace("need_bundles", nb, dt=dt)
    agg = nb.agg(F.count("*"), F.sum(F.col("stock_ok").cast("int")), F.avg("confidence")).first()
    c["need_bundles"], c["need_bundles_stock_ok"] = int(agg[0]), int(agg[1] or 0)
    summary.figures["need_bundle_mean_confidence"] = float(agg[2] or 0.0)
    nb.unpersist()
    network = stock_as_of_run(tables, dt).groupBy("key").agg(F.sum("available").alias("available")).toPandas()
    network = network.set_index("key").available
    reference = competitor_reference(tables, c)
    rel = relationship_frame(tables)
    c["relationships_read"] = len(rel)
    pb = product_bundles(rel, prices, network, reference, cfg, c)
    pb["dt"], pb["run_id"] = dt, summary.run_id
    tables.replace("bundles", tables.frame("bundles", pb), dt=dt)
    summary.notes.append("product bundle acceptance: co-purchase rates of the anchor at list price, price response from "
                     "the pricing prior (offers refit it once redemptions exist)")
    record(tables, summary.finish())
    progress(render(summary))
    return summary


def render(s: StepRun) -> str:
    c = s.counts
    skipped = {k: v for k, v in c.items() if ("skipped" in k or "without" in k or "ignored" in k or "negative" in k) and v}
    return (f"bundles {s.run_id} for {s.dt}: {c.get('need_bundles', 0):,} need bundles "
            f"({c.get('need_bundles_stock_ok', 0):,} covered by stock, mean confidence "
            f"{s.figures.get('need_bundle_mean_confidence', 0):.2f}); product bundles: "
            f"{c.get('bundles_complementary', 0):,} complementary, {c.get('bundles_alternative', 0):,} alternative, "
            f"{c.get('bundles_value', 0):,} value; {s.seconds:.0f} s"
            + (f"\n  skipped: {', '.join(f'{k} {v:,}' for k, v in skipped.items())}" if skipped else ""))
