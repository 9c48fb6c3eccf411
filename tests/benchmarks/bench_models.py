"""Model benchmarks (`make bench`, after the ingestion benchmark has filled the world's
silver tables): on 2 cores,

* need model: wall time and peak memory of training (examples at every cut-off,
  evaluation against the baselines, MLflow logging, gate) and of scoring every active user;
* demand forecast: series per second of the forecast job (backtest + forecast per
  series) on a fixed sample of item series.

    python tests/benchmarks/bench_models.py --scale medium [--series 400]
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
    parser.add_argument("--series", type=int, default=400, help="forecast series sampled for the throughput")
    parser.add_argument("--parts", default="forecast,train,score",
                        help="which of forecast,train,score to run (score needs a champion from an earlier train)")
    args = parser.parse_args()
    home = bench_world(args.scale)
    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.need import job as need

    cfg = config()
    if not Path(catalog.table_path("orders", cfg), "_delta_log").is_dir():
        raise SystemExit(f"no orders table under {home}: run tests/benchmarks/bench_ingestion.py --scale {args.scale} first")
    dt = cfg["demo"]["date"]
    spark = get_spark("bundlecast-bench-models")
    # The ingestion benchmark loads the behaviour datasets only; the models also read
    # inventory, weather and the calendar (not timed here).
    missing = [d for d in ("inventory", "weather", "calendar_events", "reviews")
               if not Path(catalog.table_path(d, cfg), "_delta_log").is_dir()]
    if missing:
        from bundlecast.jobs.ingest import job as ingest
        ingest.run(spark, dt, missing, cfg=cfg, progress=print)
    print(f"scale={args.scale} cores={os.cpu_count()} driver memory={cfg['spark']['driver_memory']}")
    # Forecast first (the quickest); each figure is printed as soon as it is measured.
    parts = set(args.parts.split(","))
    if "forecast" in parts:
        _forecast(spark, cfg, dt, args.series)
    if "train" in parts:
        with PeakMemory() as train_mem:
            t0 = time.time()
            trained = need.train(spark, dt, "bench-need", cfg)
            train_s = time.time() - t0
        print(need.render(trained))
        n_train, n_eval = trained.counts["train_examples"], trained.counts["eval_examples"]
        _row(f"need model training ({n_train:,} + {n_eval:,} examples)", train_s, train_mem)
        print(f"need model recall@10 {trained.metrics['model']['recall_at_10']:.4f} vs top-frequency "
              f"{trained.metrics['topfreq']['recall_at_10']:.4f}")
    if "score" in parts:
        with PeakMemory() as score_mem:
            t0 = time.time()
            scored = need.score(spark, dt, "bench-need", cfg)
            score_s = time.time() - t0
        print(need.render_scoring(scored))
        _row(f"need scoring ({scored.counts['users_scored']:,} users, {scored.counts['predictions']:,} predictions)", score_s, score_mem)


def _forecast(spark, cfg: dict, dt: str, series: int) -> None:
    """The same sampled series in one run: (1) the path before the long tail went to
    statsforecast (Prophet on every series with enough history: prophet_volume_share 1,
    head_methods [prophet]); (2) the configured head/tail split; both on a backtest night
    (every series backtested, none stored yet for the day before). Then (3) the next
    night with the configured split, reusing the stored choices except for the series whose
    day of the backtest cycle it is: the steady-state night."""
    import copy
    from datetime import date, timedelta

    from bundlecast.jobs.forecast import job as forecast

    section = cfg["forecast"]
    nxt = str(date.fromisoformat(dt) + timedelta(days=1))
    runs = (("Prophet everywhere (before)", dt, dict(prophet_volume_share=1.0, head_methods=["prophet"])),
            ("head/tail split, backtest night", dt, {}),
            ("head/tail split, next night", nxt, {}))
    timings = {}
    for label, day, overrides in runs:
        run_cfg = copy.deepcopy(cfg)
        run_cfg["forecast"] = {**section, "level": "item", "sample_series": series, **overrides}
        with PeakMemory() as fc_mem:
            t0 = time.time()
            fc = forecast.run(spark, day, "bench-forecast", run_cfg)
            timings[label] = time.time() - t0
        _row(f"forecast, {label} ({fc.counts['series']:,} series)", timings[label], fc_mem)
        b = fc.metrics.get("backtest", {})
        print(f"forecast throughput, {label}: {fc.counts['series'] / timings[label]:.2f} series/s "
              f"({forecast.methods(fc)}; backtested {fc.counts.get('backtests_run', 0)}, reused "
              f"{fc.counts.get('backtests_reused', 0)}; backtest MASE model {b.get('model_mase', float('nan')):.3f} "
              f"vs seasonal naive {b.get('seasonal_naive_mase', float('nan')):.3f})", flush=True)
    before, split, steady = timings.values()
    print(f"forecast: the head/tail split takes {split / before:.2f}x the time of the path before on a backtest "
          f"night; a night in between {steady / before:.2f}x", flush=True)


def _row(label: str, seconds: float, mem: PeakMemory) -> None:
    print(f"BENCH {label:60s}{seconds:10.1f} s{mem.peak / 2**20:12,.0f} MiB peak RSS", flush=True)


if __name__ == "__main__":
    main()
