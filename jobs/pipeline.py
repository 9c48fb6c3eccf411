"""The pipeline's steps in data-flow order, each with what it reads and writes.

    spark-submit jobs/submit.py relationships --date 2026-11-20 --mode full
    bundlecast relationships --date 2026-11-20 --mode full          (the same, in this process)

This is the one list of steps: the command lines, the ``bundlecast`` sub-commands and the
DAG tasks' inlets and outlets are all built from it. Cheap to import (DAG files read it at
parse time): no step module is imported until a step runs.
"""
from __future__ import annotations

from bundlecast.jobs.core.step import Arg, Step

SILVER = ("sites", "warehouses", "items", "users", "events", "orders", "order_lines", "reviews", "inventory",
          "weather", "calendar_events", "routes", "competitor_prices", "feedback")
INGEST_OPS = ("quarantine", "quarantine_files", "ingestion_audit")
RELATIONSHIP_STATE = ("item_pair_counts", "item_unit_counts", "relationship_text_models", "relationship_weights")
COMMERCE = ("items", "inventory", "inventory_reservations", "warehouses", "competitor_prices", "users")

STEPS: dict[str, Step] = {s.name: s for s in (
    Step("ingest", "bundlecast.jobs.ingest.job", "validate raw -> silver (contract + Great Expectations)",
         reads=(), writes=SILVER + INGEST_OPS,
         args=(Arg("--datasets", "datasets", "comma-separated datasets (default: all)", kind="list"),
               Arg("--no-expectations", "with_expectations", "skip the Great Expectations suites", kind="off"),
               Arg("--reingest", "skip_unchanged", "read every dataset, even one whose landing is unchanged since "
                   "its last ok run for the date", kind="off"),
               Arg("--until", "until", "cut-off (ISO time with zone, the hourly run's interval end): rows dated at "
                   "or after it are left for a later run"))),
    Step("relationships", "bundlecast.jobs.relationships.job", "score item relationships",
         reads=("events", "orders", "order_lines", "items", "users", "reviews", "inventory", "item_relationships",
                "step_runs") + RELATIONSHIP_STATE,
         writes=RELATIONSHIP_STATE + ("item_relationships", "step_runs"), modes=("full", "incremental")),
    Step("forecast", "bundlecast.jobs.forecast.job", "demand forecast with its backtest",
         reads=("orders", "order_lines", "items", "users", "weather", "calendar_events"),
         writes=("demand_forecast", "forecast_metrics")),
    Step("need", "bundlecast.jobs.need.job", "need model: train + gate + score, score, or hourly rescore",
         reads=("events", "orders", "order_lines", "items", "users", "weather", "item_relationships",
                "demand_forecast", "need_predictions", "step_runs"),
         writes=("need_predictions", "step_runs"), modes=("train", "score", "rescore")),
    Step("value", "bundlecast.jobs.value.job", "user value model: train, gate, score",
         reads=("events", "orders", "order_lines", "users"), writes=("user_value",), modes=("train", "score")),
    Step("bundles", "bundlecast.jobs.bundles.job", "need bundles and priced product bundles",
         reads=("need_predictions", "item_relationships", "orders", "order_lines") + COMMERCE,
         writes=("need_bundles", "bundles", "step_runs")),
    Step("proactive", "bundlecast.jobs.proactive.job",
         "proactive shipping: feedback, decide, reserve, pack, route, notify",
         reads=("need_bundles", "need_predictions", "feedback", "routes", "items", "inventory", "inventory_reservations",
                "warehouses", "users", "proactive_shipments", "proactive_thresholds", "notifications", "route_stops"),
         writes=("proactive_shipments", "inventory_reservations", "route_stops", "route_plans", "notifications",
                 "proactive_thresholds", "step_runs"), modes=("nightly", "hourly")),
    Step("offers", "bundlecast.jobs.offers.job", "personalised offers: nightly allocation, or hourly re-pricing",
         reads=("bundles", "need_bundles", "need_predictions", "demand_forecast", "user_value", "orders",
                "order_lines", "routes", "feedback", "offers") + COMMERCE,
         writes=("offers", "experiment_exposures", "step_runs"), modes=("nightly", "reprice"),
         writes_by_mode={"reprice": ("offers", "step_runs")}),
    Step("experiments", "bundlecast.jobs.experiments.job", "A/B analysis: conversion, revenue, margin per variant",
         reads=("experiment_exposures", "offers", "orders", "order_lines", "items", "feedback"),
         writes=("experiment_results",)),
)}


RUN_LOG = "step_runs"  # every step writes its own rows of the run log: not data between steps


def upstream(reads: list[set[str]], writes: list[set[str]]) -> list[list[int]]:
    """For each of a sequence of runs in data-flow order (the tables each reads and
    writes), the earlier runs that write a table it reads, the run log aside: the one rule
    by which the DAGs wire their tasks (``dags/_steps.data_flow``) and the replay groups its
    steps (``stages``)."""
    return [[j for j in range(i) if (reads[i] - {RUN_LOG}) & (writes[j] - {RUN_LOG})] for i in range(len(reads))]


def stages(runs: list[tuple[str, str | None]]) -> list[list[tuple[str, str | None]]]:
    """``runs`` ((step, mode), in data-flow order) grouped into stages that can run side by
    side: each run comes in the stage after the last of its ``upstream`` runs, as the DAGs
    order their tasks. The nightly's are [relationships, forecast, value], [need],
    [bundles], [proactive], [offers]."""
    before = upstream([set(step(name).reads) for name, _ in runs],
                      [set(step(name).outputs(mode)) for name, mode in runs])
    level: list[int] = []
    for i in range(len(runs)):
        level.append(1 + max((level[j] for j in before[i]), default=-1))
    return [[runs[i] for i in range(len(runs)) if level[i] == n] for n in range(max(level, default=-1) + 1)]


def step(name: str) -> Step:
    from bundlecast.jobs.core.errors import BundlecastError

    try:
        return STEPS[name]
    except KeyError:
        raise BundlecastError(f"unknown step {name!r}: expected one of {list(STEPS)}") from None


def main(argv: list[str] | None = None) -> int:
    from bundlecast.jobs.core.step import main as step_main

    return step_main(STEPS, argv)
