"""The ``bundlecast`` command.

    bundlecast setup                         fetch Spark jars once, prepare Airflow's database
    bundlecast generate --scale tiny --seed 42 [--date D]
    bundlecast import online-retail PATH [--date D] [--limit N]
    bundlecast ingest --date D [--datasets a,b]          (Spark, in this process, no Airflow)
    bundlecast run nightly|hourly --date D                (through Airflow 3)
    bundlecast tables [--json]
    bundlecast sql "SELECT * FROM bundlecast.orders LIMIT 5"
    bundlecast export TABLE --date D [--target URI] [--format parquet|jsonl]
    bundlecast proactive --date D [--mode nightly|hourly]     (proactive shipping, no Airflow)
    bundlecast routing bench --instances DIR [--time-limit S]  (Solomon VRPTW, OR-Tools vs PyVRP)
    bundlecast contract                                   (print the contract as Markdown)
    bundlecast summary                                    (what `make run` prints at the end)

Errors are printed as one line (BUNDLECAST_DEBUG=1 shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bundlecast.jobs.core.cli_support import run_main
from bundlecast.jobs.core.config import PROJECT_ROOT, config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.step import iso_date as _date
from bundlecast.jobs.pipeline import STEPS
from bundlecast.jobs.tools.demo_spec import SCALES


def _progress(msg: str) -> None:
    print(f"  {msg}", flush=True)


def cmd_setup(args) -> None:
    from bundlecast.jobs.core.spark import cached_jars, get_spark
    from bundlecast.jobs.tools.airflow_run import ensure_airflow_db

    cfg = config()
    for sub in ("raw", "warehouse", "mlflow", "exports", "gx"):
        Path(cfg["home"], sub).mkdir(parents=True, exist_ok=True)
    if cached_jars(cfg) is None:
        print(f"fetching Delta jars into {cfg['spark']['jar_cache']} (once)...", flush=True)
        get_spark("bundlecast-setup").stop()
    print(f"jars: {len(cached_jars(cfg) or [])} cached in {cfg['spark']['jar_cache']}")
    ensure_airflow_db(cfg)
    print(f"airflow: metadata database ready under {cfg['airflow']['home']}")


def cmd_generate(args) -> None:
    from bundlecast.jobs.tools.demo_world import generate

    cfg = config()
    dt = args.date or cfg["demo"]["date"]
    if args.next_day:
        from bundlecast.jobs.tools.next_day import land_next_day

        new_dt, rows = land_next_day(Path(cfg["storage"]["raw"]), dt)
        print(f"landed {new_dt} from the landing of {dt}: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
        return
    print(f"generating the {args.scale} demo world (seed {args.seed}) landed on {dt}...", flush=True)
    rows = generate(Path(cfg["storage"]["raw"]), Path(cfg["home"], "demo", "ground_truth.json"),
                    args.scale, args.seed, dt, progress=_progress)
    for name, n in rows.items():
        print(f"  {name:18s} {n:>12,} rows")
    print(f"raw zone: {cfg['storage']['raw']}; ground truth: {Path(cfg['home'], 'demo', 'ground_truth.json')}")


def cmd_import(args) -> None:
    from bundlecast.jobs.tools.import_online_retail import import_online_retail

    cfg = config()
    counts = import_online_retail(Path(args.path), Path(cfg["storage"]["raw"]), args.date, args.limit)
    for name, n in counts.items():
        print(f"  {name:18s} {n:>12,} rows -> raw/{name}/dt={args.date}/")
    print(f"next: bundlecast run nightly --date {args.date}")


def cmd_step(args) -> None:
    """Any pipeline step, in this process (no Airflow): ``bundlecast STEP --date D ...``."""
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.pipeline import step

    declared = step(args.command)
    declared.run(get_spark(f"bundlecast-{declared.name}"), args.date, progress=_progress, **declared.kwargs(args))


def cmd_run(args) -> None:
    from bundlecast.jobs.tools.airflow_run import run_dag

    run_dag(args.kind, args.date, echo=lambda m: print(m, flush=True), hour=args.hour)
    if args.kind == "nightly" or args.summary:
        cmd_summary(args)


def cmd_replay(args) -> None:
    """``bundlecast replay [run|thresholds|report]`` (``bundlecast.jobs.tools.replay``)."""
    from bundlecast.jobs.tools.replay import runner

    if args.action == "run":
        missing = [f for f in ("history", "start", "end") if getattr(args, f) is None]
        if missing:
            raise BundlecastError("replay run needs " + ", ".join(f"--{m}" for m in missing))
        figures = runner.replay(args.history, args.start, args.end, runner.parse_every(args.every),
                                hourly=args.hourly, settings=args.config,
                                retrain_every=runner.parse_every(args.retrain_every) if args.retrain_every else None,
                                echo=lambda m: print(m, flush=True))
        print(runner.render(figures))
    elif args.action == "report":
        print(runner.render(runner.report_again(echo=lambda m: print(m, flush=True))))
    else:
        from bundlecast.jobs.core.spark import get_spark
        from bundlecast.jobs.tools.replay import thresholds

        r = config().get("replay") or {}
        target = args.target_precision if args.target_precision is not None else float(r.get("target_precision", 0.7))
        minimum = args.min_shipments if args.min_shipments is not None else int(r.get("min_shipments", 20))
        proposal, path = thresholds.run(get_spark("bundlecast-replay"), target, minimum, args.by, write=not args.dry_run)
        print(proposal.to_string(index=False))
        print(f"written to {path}" if path else "dry run: nothing written")


def cmd_status(args) -> None:
    """The last runs of both DAGs and their tasks, the state lease, the last failures."""
    from bundlecast.jobs.tools import failures, lease
    from bundlecast.jobs.tools.airflow_run import recent_runs, render_status

    print(render_status(recent_runs(args.runs), lease.holder_of(), failures.latest(args.failures)))


def cmd_stack(args) -> None:
    """The local production stack (``bundlecast.jobs.tools.stack``)."""
    from bundlecast.jobs.tools import stack

    if args.action == "up":
        stack.up(echo=lambda m: print(m, flush=True))
        print("stack up: `bundlecast stack status`; Airflow CLI against it: `bundlecast stack airflow ...`")
    elif args.action == "down":
        stack.down()
    elif args.action == "airflow":
        done = stack.run([sys.executable, "-m", "airflow", *args.rest])
        print(done.stdout, end="")
        print(done.stderr, end="", file=sys.stderr)
        if done.returncode:
            raise SystemExit(done.returncode)
    else:
        alive = stack.status()
        state = stack.read_state() or {}
        if not alive:
            print("stack not running")
        for name, up in alive.items():
            port = (state.get("ports") or {}).get(name)
            print(f"{name:22s} {'up' if up else 'DOWN'}{f'  127.0.0.1:{port}' if port else ''}")


def cmd_driver(args) -> None:
    """The warm Spark driver the DAG tasks share (``bundlecast.jobs.tools.driver``)."""
    from bundlecast.jobs.tools import driver

    if args.action == "start":
        state = driver.ensure(echo=lambda m: print(m, flush=True))
        print(f"warm Spark driver running: pid {state['pid']}, port {state['port']}, application {state['app_id']}")
    elif args.action == "stop":
        print("warm Spark driver stopped" if driver.stop() else "no warm Spark driver was running")
    else:
        state = driver.status()
        print(f"running: pid {state['pid']}, port {state['port']}, since {state['started']}, "
              f"application {state['app_id']}" if state else "not running")


def cmd_tables(args) -> None:
    from bundlecast.jobs.tools.tables import all_tables, render

    rows = all_tables()
    print(json.dumps(rows, indent=1) if args.json else render(rows))


def cmd_sql(args) -> None:
    from bundlecast.jobs.core.delta import register_existing
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.tools.sql_guard import check_read_only, read_only_session

    spark = get_spark("bundlecast-sql")
    register_existing(spark, config())
    spark.sql(f"USE {config()['storage']['database']}")
    if not args.allow_writes:
        read_only_session(spark)
        check_read_only(spark, args.query)
    result = spark.sql(args.query)
    if args.json:
        for row in result.limit(args.limit).toJSON().collect():
            print(row)
    else:
        result.show(args.limit, truncate=80)


def cmd_export(args) -> None:
    from bundlecast.jobs.export.job import export_table

    manifest = export_table(args.table, args.date, args.target, args.format)
    print(f"{manifest['row_count']:,} rows of {args.table} (Delta version {manifest['delta_version']}) "
          f"-> {manifest['location']} ({len(manifest['files'])} files, manifest last)")


def cmd_contract(args) -> None:
    from bundlecast.jobs.core.catalog import contract_markdown

    print(contract_markdown())


def cmd_summary(args) -> None:
    from bundlecast.jobs.ingest.quality import data_docs_index
    from bundlecast.jobs.tools.tables import all_tables, render

    cfg = config()
    print("\n" + render(all_tables(cfg)))
    print(f"\nstate directory : {cfg['home']}")
    print(f"exports         : {cfg['exports']['target']}  (each <table>/dt=<date>/ has a _manifest.json)")
    print(f"data docs       : {data_docs_index(cfg['quality']['gx_project'])}")
    print(f"airflow logs    : {cfg['airflow']['home']}/runs/")
    print("look at them    : bundlecast tables --json | bundlecast sql \"SELECT * FROM bundlecast.ingestion_audit\"")


def cmd_related(args) -> None:
    from bundlecast.jobs.relationships import query as relationships

    rows = relationships.related_items(args.item, args.k, args.relation, args.site, args.segment)
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
    else:
        print(relationships.render_related(args.item, rows))


def cmd_models(args) -> None:
    import pandas as pd

    from bundlecast.models import registry

    runs = registry.compare(config(), args.model, args.n)
    if runs.empty:
        print(f"no runs yet for {args.model} (experiment {registry.COMPARE[args.model][0]})")
        return
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(runs.to_string(index=False))


def cmd_eval(args) -> None:
    from bundlecast.jobs.core.spark import get_spark

    if args.what == "relationships":
        from bundlecast.jobs.tools import evaluate_relationships as ev
        if not args.cutoff:
            raise BundlecastError("eval relationships needs --cutoff DATE")
        results = ev.evaluate(get_spark("bundlecast-eval"), config(), args.cutoff, args.k)
        name = "bundlecast-relationships-eval"
    else:
        from bundlecast.jobs.tools import evaluate_forecast as ev
        results = ev.evaluate(get_spark("bundlecast-eval"), config(), args.data, args.holdout_days, args.tail)
        name = ev.EXPERIMENT
    print(ev.render(results))
    print(f"logged to MLflow ({config()['mlflow']['tracking_uri']}), experiment {name}")


def cmd_bundle(args) -> None:
    from bundlecast.jobs.bundles.query import generate_bundle

    b = generate_bundle(args.user, args.item, args.site)
    if args.json:
        print(json.dumps(b, default=str))
        return
    if not b.get("bundle_price"):
        print(f"no bundle for {args.user} looking at {b['anchor']}: {b.get('reason') or b.get('price_reason')}")
        return
    print(f"best bundle for {b['user_id']} looking at {b['anchor']}: {' + '.join(b['items'])}")
    print(f"  list {b['list_price']:.2f} -> bundle price {b['bundle_price']:.2f} ({b['discount_share']:.1%} off; "
          f"competitor reference {b['competitor_reference']:.2f}); expected acceptance {b['expected_acceptance']:.1%}, "
          f"expected margin {b['expected_margin']:.2f} ({b['price_reason']})")
    for why in b["why"]:
        print(f"  - {why}")
    if b["filtered_out_recently_bought"]:
        print(f"  ({b['filtered_out_recently_bought']} related items left out: bought recently)")


def cmd_experiments(args) -> None:
    from bundlecast.jobs.experiments import job as experiments

    if args.action == "analyse":
        from bundlecast.jobs.core.spark import get_spark
        if not args.date:
            raise BundlecastError("experiments analyse needs --date")
        experiments.run(get_spark("bundlecast-experiments"), args.date)
    else:
        print(experiments.report(args.date, args.experiment))


def cmd_routing(args) -> None:
    from bundlecast.jobs.tools import routing_bench

    out = Path(args.out) if args.out else Path(config()["home"]) / "bench" / "routing"
    bks = Path(args.bks) if args.bks else Path(args.instances).resolve().parent / "solomon_100_bks.csv"
    frame = routing_bench.run(Path(args.instances), args.time_limit, args.solvers.split(","), out, bks,
                              args.only.split(",") if args.only else None)
    print(routing_bench.render(routing_bench.summarise(frame, args.time_limit)))
    print(f"per instance: {out / 'results.csv'}; routes: {out / 'routes'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bundlecast", description="Anticipatory-commerce batch pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="fetch jars once, prepare Airflow").set_defaults(func=cmd_setup)
    _step_commands(sub)
    _data_commands(sub)
    _analysis_commands(sub)
    sub.add_parser("contract", help="print the input data contract (Markdown)").set_defaults(func=cmd_contract)
    sub.add_parser("summary", help="tables, exports and where to look").set_defaults(func=cmd_summary)
    return parser


def _step_commands(sub) -> None:
    """One sub-command per pipeline step, built from its declaration (jobs/pipeline.py)."""
    for declared in STEPS.values():
        if declared.name == "experiments":
            continue  # `experiments report|analyse` below
        p = sub.add_parser(declared.name, help=f"{declared.help} (this process, no Airflow)")
        declared.add_arguments(p)
        p.set_defaults(func=cmd_step)


def _data_commands(sub) -> None:
    """Worlds, runs and tables: generate, import, run, tables, sql, export."""
    p = sub.add_parser("generate", help="write the demo world into the raw zone")
    p.add_argument("--scale", choices=list(SCALES), default="tiny")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--date", type=_date, help="landing date (default: demo.date)")
    p.add_argument("--next-day", action="store_true",
                   help="land the day after --date from its landing (the last day's behaviour one day later)")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("import", help="import real data into the raw zone")
    p.add_argument("source", choices=["online-retail"])
    p.add_argument("path")
    p.add_argument("--date", type=_date, default="2011-12-10", help="landing date (default 2011-12-10)")
    p.add_argument("--limit", type=int, help="read only the first N lines of each file")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("run", help="run a DAG for a date through Airflow")
    p.add_argument("kind", choices=["nightly", "hourly"])
    p.add_argument("--date", type=_date, required=True, help="the landing day to process")
    p.add_argument("--hour", type=int, choices=range(24), metavar="H",
                   help="hourly only: fold in events up to the end of hour H of the day (default: the whole day)")
    p.add_argument("--summary", action="store_true", help="print the table summary after an hourly run too")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("stack", help="the local production stack: Postgres, S3 (moto), Spark standalone, MLflow "
                       "server, Airflow scheduler and friends")
    p.add_argument("action", choices=["up", "down", "status", "airflow"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="airflow: the Airflow command line to run against the stack")
    p.set_defaults(func=cmd_stack)
    p = sub.add_parser("status", help="the last runs of both DAGs with their tasks, the state lease, failures")
    p.add_argument("--runs", type=int, default=2, help="runs per DAG (default 2)")
    p.add_argument("--failures", type=int, default=5, help="latest failures shown (default 5)")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("driver", help="the warm Spark driver every step task of a run talks to")
    p.add_argument("action", choices=["start", "status", "stop"])
    p.set_defaults(func=cmd_driver)
    p = sub.add_parser("tables", help="every catalog table: location, Delta version, rows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tables)
    p = sub.add_parser("sql", help="read-only Spark SQL over the bundlecast catalog")
    p.add_argument("query")
    p.add_argument("--allow-writes", action="store_true",
                   help="maintenance: allow statements that change tables or read files by path")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sql)
    p = sub.add_parser("export", help="export a table snapshot")
    p.add_argument("table")
    p.add_argument("--date", type=_date, required=True)
    p.add_argument("--target")
    p.add_argument("--format", choices=["parquet", "jsonl"])
    p.set_defaults(func=cmd_export)


def _analysis_commands(sub) -> None:
    """Looking at results: related items, evaluations, model runs, bundles, A/B tests, routing."""
    p = sub.add_parser("related", help="the items most related to one item, with every signal")
    p.add_argument("item")
    p.add_argument("--site", help="site of the item (ids are unique per site)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--relation", choices=["complementary", "alternative", "other"])
    p.add_argument("--segment", help="rank with this user segment's fitted weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_related)
    p = sub.add_parser("eval", help="offline evaluation against baselines, logged to MLflow")
    p.add_argument("what", choices=["relationships", "forecast"])
    p.add_argument("--cutoff", type=_date, help="relationships: fit before, evaluate baskets from this date")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--data", default=str(PROJECT_ROOT.parent / "shared" / "data" / "online_retail"),
                   help="forecast: folder with the Online Retail daily item series")
    p.add_argument("--holdout-days", type=int, default=56)
    p.add_argument("--tail", type=int, default=200,
                   help="forecast: also the items ranked just below the top 100, this many (0: none)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("models", help="ML engineers: recent runs of a model side by side")
    p.add_argument("action", choices=["compare"])
    p.add_argument("model", nargs="?", default="need", choices=["need", "forecast", "value"])
    p.add_argument("--n", type=int, default=10)
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("bundle", help="the best bundle for one user looking at one item, and why")
    p.add_argument("user")
    p.add_argument("item")
    p.add_argument("--site", help="site of the item (ids are unique per site)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bundle)
    p = sub.add_parser("experiments", help="A/B tests: the latest analysis, or analyse now")
    p.add_argument("action", choices=["report", "analyse"])
    p.add_argument("--date", type=_date)
    p.add_argument("--experiment")
    p.set_defaults(func=cmd_experiments)
    p = sub.add_parser("replay", help="the nightly over a real history, scored against what users did afterwards")
    p.add_argument("action", nargs="?", default="run", choices=["run", "thresholds", "report"])
    p.add_argument("--history", help="run: UCI Online Retail files (a folder or one file) or a raw zone")
    p.add_argument("--start", type=_date, help="run: first replay date (everything up to it is landed at once)")
    p.add_argument("--end", type=_date, help="run: last replay date (inclusive)")
    p.add_argument("--every", default="7d", help="run: cadence of the replay dates (1d, 7d; days land daily)")
    p.add_argument("--hourly", action="store_true", help="run: also the hourly need rescore on each replay date")
    p.add_argument("--retrain-every", help="run: days between full refits (relationships rebuilt, need retrained); "
                   "in between relationships are folded forward and the need champion scores (default: every date)")
    p.add_argument("--config", help="run: YAML that becomes the state directory's overlay (when it has none)")
    p.add_argument("--target-precision", type=float, default=None,
                   help="thresholds: the precision each category must reach (default replay.target_precision)")
    p.add_argument("--min-shipments", type=int, default=None,
                   help="thresholds: bundles needed behind a threshold (default replay.min_shipments)")
    p.add_argument("--by", choices=["items", "value"], default="items", help="thresholds: precision of items or value")
    p.add_argument("--dry-run", action="store_true", help="thresholds: print the proposal, write no overlay")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("routing", help="route solver: benchmark on Solomon VRPTW instances vs PyVRP")
    p.add_argument("action", choices=["bench"])
    p.add_argument("--instances", required=True, help="a Solomon instance file, or a folder of them")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds per instance and solver")
    p.add_argument("--solvers", default="ortools,pyvrp")
    p.add_argument("--only", help="comma-separated instance names")
    p.add_argument("--bks", help="best-known solutions CSV (default: solomon_100_bks.csv next to the folder)")
    p.add_argument("--out", help="results folder (default: $BUNDLECAST_HOME/bench/routing)")
    p.set_defaults(func=cmd_routing)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
