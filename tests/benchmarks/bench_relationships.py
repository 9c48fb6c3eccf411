"""Relationship-scoring benchmark (`make bench`, after the ingestion benchmark has filled
the world's silver tables): wall time and peak memory of

* the floor: a single-process SciPy sparse co-occurrence on the same events (binary
  user x item matrix X, then X.T @ X), reading the events with delta-rs;
* the nightly full run, with about 1% of the events (the last two days) held back;
* one hourly incremental run folding those held-back events in.

    python tests/benchmarks/bench_relationships.py --scale medium
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import date, timedelta
from pathlib import Path

from _common import PeakMemory, bench_world


def scipy_floor(events_path: str) -> tuple[float, float, int, int]:
    """(read seconds, co-occurrence seconds, events, non-zero pairs)."""
    import numpy as np
    import pyarrow.compute as pc
    import scipy.sparse as sp
    from deltalake import DeltaTable

    t0 = time.time()
    table = DeltaTable(events_path).to_pyarrow_table(columns=["user_id", "site_id", "item_id"])
    read_s = time.time() - t0
    t0 = time.time()
    users = pc.dictionary_encode(table["user_id"]).combine_chunks()
    items = pc.dictionary_encode(pc.binary_join_element_wise(table["site_id"], table["item_id"], "|")).combine_chunks()
    rows, cols = users.indices.to_numpy(), items.indices.to_numpy()
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                      shape=(len(users.dictionary), len(items.dictionary)))
    x.data[:] = 1.0  # binary: viewed or not
    co = (x.T @ x).tocsr()
    return read_s, time.time() - t0, len(rows), co.nnz


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="medium")
    args = parser.parse_args()
    home = bench_world(args.scale)
    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.relationships import job as relationships

    cfg = config()
    events_path = catalog.table_path("events", cfg)
    if not Path(events_path, "_delta_log").is_dir():
        raise SystemExit(f"no events table under {home}: run tests/benchmarks/bench_ingestion.py --scale {args.scale} first")
    demo = date.fromisoformat(cfg["demo"]["date"])
    with PeakMemory() as floor_mem:
        read_s, floor_s, n_events, nnz = scipy_floor(events_path)
    spark = get_spark("bundlecast-bench-relationships")
    held_back_from = str(demo - timedelta(days=3))  # full run sees events up to the end of that day
    with PeakMemory() as full_mem:
        t0 = time.time()
        full = relationships.run_full(spark, held_back_from, "bench-full", cfg)
        full_s = time.time() - t0
    print(relationships.render_summary(full))
    with PeakMemory() as incr_mem:
        t0 = time.time()
        incr = relationships.run_incremental(spark, str(demo), "bench-incremental", cfg)
        incr_s = time.time() - t0
    print(relationships.render_summary(incr))
    share = incr.counts["events_read"] / max(full.counts["events_read"], 1)
    print(f"\nscale={args.scale} events={n_events:,} cores={os.cpu_count()} driver memory={cfg['spark']['driver_memory']}")
    print(f"{'':44s}{'seconds':>10s}{'peak RSS MiB':>15s}")
    print(f"{'SciPy X.T @ X (read ' + f'{read_s:.1f} s not included)':44s}{floor_s:10.1f}{floor_mem.peak / 2**20:15,.0f}")
    print(f"{'full run (nightly, with weight fit)':44s}{full_s:10.1f}{full_mem.peak / 2**20:15,.0f}")
    print(f"{'incremental run (' + f'{share:.1%} new rows)':44s}{incr_s:10.1f}{incr_mem.peak / 2**20:15,.0f}")
    print(f"full / floor = {full_s / floor_s:.1f}x (target <= 3x); incremental / full = {incr_s / full_s:.0%} "
          f"(target <= 10%); SciPy pairs (non-zeros) {nnz:,}")
    print("full run steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in full.timings.items()))
    print("incremental steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in incr.timings.items()))


if __name__ == "__main__":
    main()
