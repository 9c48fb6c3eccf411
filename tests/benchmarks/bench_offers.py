"""Bundle and offer benchmark (`make bench`, after the model benchmark has written the
medium world's need predictions): wall time and peak memory of

* bundle generation (need bundles for every scored user, priced product bundles), and
* the offer step (candidates, incentives, the global CP-SAT allocation under stock and budget),

on 2 cores, with the expected profit of the allocation against its greedy baseline.

    python tests/benchmarks/bench_offers.py --scale medium
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import PeakMemory, bench_world


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="medium")
    args = parser.parse_args()
    home = bench_world(args.scale)
    from pyspark.sql import functions as F

    from bundlecast.jobs.bundles import job as bundles
    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.core.delta import read_table
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.offers import job as offers

    cfg = config()
    dt = cfg["demo"]["date"]
    spark = get_spark("bundlecast-bench-offers")
    if read_table(spark, "need_predictions", cfg).filter(F.col("dt") == F.lit(dt).cast("date")).limit(1).count() == 0:
        raise SystemExit(f"no need predictions for {dt} under {home}: run tests/benchmarks/bench_models.py first")
    missing = [d for d in ("inventory", "competitor_prices", "routes", "feedback")
               if not Path(catalog.table_path(d, cfg), "_delta_log").is_dir()]
    if missing:
        ingest.run(spark, dt, missing, cfg=cfg, with_expectations=False, progress=print)
    print(f"scale={args.scale} cores={os.cpu_count()} driver memory={cfg['spark']['driver_memory']}")
    with PeakMemory() as b_mem:
        t0 = time.time()
        bundles.run(spark, dt, "bench-bundles", cfg)
        b_s = time.time() - t0
    print(f"BENCH bundle generation{'':37s}{b_s:10.1f} s{b_mem.peak / 2**20:12,.0f} MiB peak RSS", flush=True)
    with PeakMemory() as o_mem:
        t0 = time.time()
        o = offers.run(spark, dt, "nightly", "bench-offers", cfg)
        o_s = time.time() - t0
    print(f"BENCH offers incl. allocation{'':31s}{o_s:10.1f} s{o_mem.peak / 2**20:12,.0f} MiB peak RSS", flush=True)
    f, c = o.figures, o.counts
    print(f"{c.get('need_bundles_read', 0):,} need bundles, {c.get('candidates', 0):,} candidates for "
          f"{c.get('candidate_users', 0):,} users -> {c.get('offers', 0):,} offers; allocation "
          f"{f.get('allocation_seconds', 0):.1f} s, expected profit {f.get('expected_profit', 0):,.2f} vs greedy "
          f"{f.get('greedy_expected_profit', 0):,.2f} (upper bound {f.get('upper_bound', float('nan')):,.2f})")


if __name__ == "__main__":
    main()
