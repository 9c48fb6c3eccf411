"""Ingestion benchmark (`make bench`): rows per second and peak memory of the validated
ingestion on a generated world, against the floor of Spark's own readers over the same raw
files (no per-file parse, no checks) written straight to Parquet. A benchmark, not a test: it prints numbers.

    python tests/benchmarks/bench_ingestion.py --scale medium [--datasets events,orders,order_lines]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from _common import PeakMemory, bench_world


def plain_read(spark, paths, spec):
    """The floor: Spark's own readers over the same files, every column as text, no checks."""
    from pyspark.sql import functions as F

    schema = ", ".join(f"`{c}` string" for c in spec.column_names)
    frames = []
    for fmt, reader in (("jsonl", lambda p: spark.read.schema(schema).json(p)),
                        ("csv", lambda p: spark.read.schema(schema).option("header", True).csv(p)),
                        ("parquet", lambda p: spark.read.parquet(*p).select(
                            *[F.col(c).cast("string") for c in spec.column_names]))):
        chosen = [str(p) for p in paths if p.suffix == f".{fmt}"]
        if chosen:
            frames.append(reader(chosen).select(*spec.column_names))
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--datasets", default="sites,warehouses,items,users,events,orders,order_lines")
    args = parser.parse_args()
    home = bench_world(args.scale)
    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.tools.demo_world import generate

    cfg = config()
    dt = cfg["demo"]["date"]
    marker = home / "demo" / "ground_truth.json"
    if not marker.exists():
        t0 = time.time()
        generate(Path(cfg["storage"]["raw"]), marker, args.scale, 42, dt, progress=print)
        print(f"generated {args.scale} world in {time.time() - t0:.0f} s")
    shutil.rmtree(cfg["storage"]["warehouse"], ignore_errors=True)
    datasets = args.datasets.split(",")
    spark = get_spark("bundlecast-bench")

    with PeakMemory() as floor_mem:
        t0 = time.time()
        floor_rows = 0
        for name in datasets:
            raw = plain_read(spark, ingest.list_raw_files(cfg["storage"]["raw"], name, dt), catalog.dataset(name))
            raw.write.mode("overwrite").parquet(f"{cfg['storage']['warehouse']}/_floor/{name}")
            floor_rows += spark.read.parquet(f"{cfg['storage']['warehouse']}/_floor/{name}").count()
        floor_s = time.time() - t0
    with PeakMemory() as ingest_mem:
        t0 = time.time()
        audits = ingest.run(spark, dt, datasets, cfg=cfg, progress=print)
        ingest_s = time.time() - t0
    rows = sum(a.rows_read for a in audits)
    assert rows == floor_rows, (rows, floor_rows)
    print(f"\nscale={args.scale} datasets={len(datasets)} rows={rows:,} cores={os.cpu_count()}")
    print(f"{'':28s}{'seconds':>10s}{'rows/s':>12s}{'peak RSS MiB':>15s}")
    print(f"{'plain read -> Parquet':28s}{floor_s:10.1f}{rows / floor_s:12,.0f}{floor_mem.peak / 2**20:15,.0f}")
    print(f"{'validated ingestion':28s}{ingest_s:10.1f}{rows / ingest_s:12,.0f}{ingest_mem.peak / 2**20:15,.0f}")
    print(f"ingestion costs {ingest_s / floor_s:.1f}x the plain read")


if __name__ == "__main__":
    main()
