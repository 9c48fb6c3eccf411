"""Routing benchmark (`make bench`):

* **solomon**: the 56 Solomon VRPTW instances (``../shared/data/solomon_vrptw``), OR-Tools
  (bundlecast's solver code) and PyVRP (the reference peer) at the same time limit, every
  solution checked independently, gap to the best-known distance-only solution
  (``bundlecast routing bench``; results under ``$BUNDLECAST_HOME/bench/routing``);
* **insertion**: the proactive-shipping run of the `medium` world's next delivery day
  (after the model and offer benchmarks wrote its need bundles): decisions, reservations,
  packaging, route insertion into that day's planned routes, notifications; wall time,
  peak memory and the routing share.

    python tests/benchmarks/bench_routing.py --scale medium [--parts solomon,insertion] [--time-limit 10]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from _common import PeakMemory, bench_world

SOLOMON = Path(__file__).resolve().parents[3] / "shared" / "data" / "solomon_vrptw"


def solomon(time_limit: float, out: Path) -> None:
    from bundlecast.jobs.tools import routing_bench

    if not (SOLOMON / "instances").is_dir():
        print(f"BENCH solomon: skipped, no instances under {SOLOMON}")
        return
    t0 = time.time()
    frame = routing_bench.run(SOLOMON / "instances", time_limit, ["ortools", "pyvrp"], out,
                              SOLOMON / "solomon_100_bks.csv", progress=lambda m: None)
    summary = routing_bench.summarise(frame, time_limit)
    print(routing_bench.render(summary))
    for solver in ("ortools", "pyvrp"):
        s = summary[solver]
        fams = ", ".join(f"{k[-3:].strip('_')} {v:.2f}%" for k, v in s.items() if k.startswith("mean_gap_pct_"))
        print(f"BENCH solomon {solver:8s} feasible {s['feasible']}/{s['instances']}, mean gap {s['mean_gap_pct']:.2f}% "
              f"(max {s['max_gap_pct']:.2f}%; {fams})")
    print(f"solomon: {time.time() - t0:.0f} s in all; per instance and routes: {out}")


def insertion(scale: str) -> None:
    home = bench_world(scale)
    from pyspark.sql import functions as F

    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.core.delta import read_table
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.pipeline import STEPS
    from bundlecast.jobs.proactive import job as proactive

    cfg = config()
    dt = cfg["demo"]["date"]
    spark = get_spark("bundlecast-bench-routing")
    if read_table(spark, "need_bundles", cfg).filter(F.col("dt") == F.lit(dt).cast("date")).limit(1).count() == 0:
        raise SystemExit(f"no need bundles for {dt} under {home}: run bench_models.py and bench_offers.py first")
    missing = [d for d in ("inventory", "routes", "feedback") if not Path(catalog.table_path(d, cfg), "_delta_log").is_dir()]
    if missing:
        ingest.run(spark, dt, missing, cfg=cfg, with_expectations=False, progress=print)
    # Measure a first decision for the day: forget earlier benchmark runs' proactive state.
    for name in STEPS["proactive"].writes:
        if name != "step_runs":
            spark.sql(f"DROP TABLE IF EXISTS {catalog.qualified_name(name, cfg)}")
            shutil.rmtree(catalog.table_path(name, cfg), ignore_errors=True)
    print(f"scale={scale} cores={os.cpu_count()} driver memory={cfg['spark']['driver_memory']}")
    with PeakMemory() as mem:
        t0 = time.time()
        s = proactive.run(spark, dt, "nightly", f"bench-proactive-{int(t0)}", cfg)
        secs = time.time() - t0
    c, f = s.counts, s.figures
    print(f"BENCH proactive nightly (decide, reserve, pack, route, notify){'':4s}{secs:10.1f} s"
          f"{mem.peak / 2**20:12,.0f} MiB peak RSS", flush=True)
    print(f"BENCH route insertion (OR-Tools, every depot of the day){'':9s}{f.get('routing_seconds', 0):10.1f} s")
    print(f"{c.get('need_bundles_read', 0):,} need bundles -> {c.get('shipments_planned', 0):,} new shipments; "
          f"{c.get('proactive_stops_routed', 0):,} routed, {c.get('proactive_stops_dropped', 0):,} dropped; "
          f"{c.get('planned_windows_widened', 0):,} planned windows widened; "
          f"{c.get('reservation_conflicts_retried', 0)} reservation conflicts retried")
    print(f"route solves ended by the {cfg['proactive']['solve_seconds']} s cap (not the solution limit): "
          f"{c.get('route_solves_at_time_cap', 0)}")
    key = ["route_date", "route_id", "sequence"]
    stops = read_table(spark, "route_stops", cfg).drop("run_id").toPandas().sort_values(key).reset_index(drop=True)
    t0 = time.time()
    again = proactive.run(spark, dt, "nightly", f"bench-proactive-rerun-{int(t0)}", cfg)
    restops = read_table(spark, "route_stops", cfg).drop("run_id").toPandas().sort_values(key).reset_index(drop=True)
    print(f"BENCH proactive nightly re-run (same date, new run id){'':12s}{time.time() - t0:10.1f} s: "
          f"{again.counts.get('shipments_planned', 0)} new shipments, route stops "
          f"{'identical' if stops.equals(restops) else 'CHANGED'} ({len(restops):,})")
    plans = read_table(spark, "route_plans", cfg).toPandas()
    if len(plans):
        print(f"routes: {len(plans):,}, planned stops {int(plans.planned_stops.sum()):,}, km {plans.km_before.sum():,.1f} -> "
              f"{plans.km_after.sum():,.1f}, dedicated-trip km avoided {plans.dedicated_km.sum():,.1f}, "
              f"CO2 saved {plans.co2_kg_saved.sum():,.1f} kg")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--parts", default="solomon,insertion")
    parser.add_argument("--time-limit", type=float, default=10.0)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "solomon" in parts:
        home = Path(os.environ.get("BUNDLECAST_HOME", "var")).resolve()
        solomon(args.time_limit, home / "bench" / "routing")
    if "insertion" in parts:
        insertion(args.scale)


if __name__ == "__main__":
    main()
