"""Whole-pipeline benchmark (`make bench`): the nightly's steps end to end, then one hourly
run after 1% new events, each step's wall time and peak memory, against two floors measured
in the same run. A benchmark, not a test: it prints numbers.

    python tests/benchmarks/bench_pipeline.py --scales tiny,small [--airflow]

For each scale (its own world under ``BUNDLECAST_HOME/bench-<scale>``, generated once):

* **bare job**: a fresh process starts a Spark session with Delta, reads one small Delta
  table and writes one row (what every task paid when each task was its own spark-submit);
* **plain pass**: Spark's own readers over the landing's behaviour rows (events, orders,
  order lines), raw to Parquet, no checks: the yardstick for the nightly's data work;
* **first night**: every step as the nightly DAG runs it (ingest of the landing, relationships
  full, forecast of every series, need train + score of every active user, value, bundles,
  proactive, offers, experiments), each sent to one warm driver (``jobs/tools/driver.py``)
  exactly as the DAG's tasks send them, on a state directory emptied first (only the
  generated landing of the whole history is kept); the driver's start is counted in the total;
* **nightly** (steady state): the next day lands (``bundlecast generate --next-day``: the
  last day's behaviour one day later, the day's stock snapshot, weather and routes) and the
  same steps run again for that day, as every night after the first: history in place, the
  forecast's backtests on their weekly schedule;
* **hourly**: 1% of the history's events land again as a new file of the next day (new ids), then
  the hourly DAG's steps run on a freshly started driver (as a scheduled hourly finds it: the
  previous run's teardown stopped the driver), its start counted;
* **warm hourly**: another 1% lands and the hourly runs again on that same, now warm, driver:
  what an hourly costs when the driver outlives a run. The files are removed afterwards.
* ``--airflow`` (tiny only, slow elsewhere): the nightly DAG through Airflow
  (``bundlecast run nightly``), timed as a whole against the bare job.

Peak memory is the resident memory of the driver process and its children (JVM; Python
workers by proportional set size) sampled every 0.5 s during the step. The growth table divides each step's time
ratio between two scales by their ratio of events (1.0 = linear).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

# The nightly ingest reads the whole landing (--reingest): a fresh day, not one its hourly runs already read.
NIGHTLY = [["ingest", "--reingest"], ["relationships", "--mode", "full"], ["forecast"], ["need", "--mode", "train"], ["value"],
           ["bundles"], ["proactive", "--mode", "nightly"], ["offers", "--mode", "nightly"], ["experiments"]]
HOURLY = [["ingest", "--datasets", "events,orders,order_lines,inventory,feedback"],
          ["relationships", "--mode", "incremental"], ["need", "--mode", "rescore"], ["proactive", "--mode", "hourly"],
          ["offers", "--mode", "reprice"]]
BEHAVIOUR = ("events", "orders", "order_lines")
HOURLY_FILE = "part-bench-hourly.jsonl"
WARM_HOURLY_FILE = "part-bench-hourly-2.jsonl"
RESULTS = "bench_pipeline.json"
FIRST = "first night"


def _memory(proc: psutil.Process) -> int:
    """Resident memory of one process; for a small one (a forked Python worker) its proportional
    set size, so pages shared between the workers are counted once in total, not once per worker.
    Reading a process's page map costs ~0.1 s for the multi-GiB JVM, which would make the
    sampler itself a load on 2 cores; the JVM's heap is private, so its resident set is exact enough."""
    rss = proc.memory_info().rss
    if rss > 1 << 30:
        return rss
    try:
        return proc.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return rss


def tree_rss(pid: int) -> int:
    """Memory of a process and its children (JVM, Python workers)."""
    try:
        proc = psutil.Process(pid)
        total = _memory(proc)
        for child in proc.children(recursive=True):
            try:
                total += _memory(child)
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


class Sampler:
    """Peak resident memory of a process tree while the block runs."""

    def __init__(self, pid_of):
        import threading

        self.pid_of, self.peak, self._stop = pid_of, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            pid = self.pid_of()
            if pid:
                self.peak = max(self.peak, tree_rss(pid))
            time.sleep(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child_env(home: Path) -> dict:
    env = dict(os.environ, BUNDLECAST_HOME=str(home))
    env.setdefault("BUNDLECAST_JAR_CACHE", str(home.parent / "jars"))
    return env


def timed_process(args: list[str], env: dict) -> tuple[float, int, str]:
    """(seconds, peak RSS of the process tree, last line of output)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with Sampler(lambda: proc.pid) as mem:
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:4])} failed: {out.strip().splitlines()[-1:]}")
    return time.monotonic() - started, mem.peak, (out.strip().splitlines() or [""])[-1]


# ------------------------------------------------------------------ run inside a child process
def child_bare() -> None:
    """Start a session, read one small Delta table, write one row."""
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.core.spark import get_spark

    cfg = config()
    spark = get_spark("bundlecast-bare")
    from bundlecast.jobs.core import catalog

    n = spark.read.format("delta").load(catalog.table_path("sites", cfg)).count()
    spark.createDataFrame([(n,)], "sites long").write.format("delta").mode("overwrite") \
        .save(f"{cfg['storage']['warehouse']}/_bench/bare")
    print(json.dumps({"sites": n}))


def child_plain() -> None:
    """Spark's plain pass over the behaviour rows: raw to Parquet, timed after the session is up."""
    from bench_ingestion import plain_read

    from bundlecast.jobs.core import catalog
    from bundlecast.jobs.core.config import config
    from bundlecast.jobs.core.spark import get_spark
    from bundlecast.jobs.ingest.extract import list_raw_files

    cfg = config()
    spark = get_spark("bundlecast-plain")
    dt = cfg["demo"]["date"]
    started, rows = time.monotonic(), 0
    for name in BEHAVIOUR:
        files = [p for p in list_raw_files(cfg["storage"]["raw"], name, dt) if not _is_bench_file(p)]
        target = f"{cfg['storage']['warehouse']}/_bench/plain/{name}"
        plain_read(spark, files, catalog.dataset(name)).write.mode("overwrite").parquet(target)
        rows += spark.read.parquet(target).count()
    print(json.dumps({"seconds": time.monotonic() - started, "rows": rows}))


# ------------------------------------------------------------------------- the orchestrator
def prepare(scale: str, home: Path) -> dict:
    """Generate the world once; returns its size."""
    env = child_env(home)
    truth = home / "demo" / "ground_truth.json"
    if not truth.exists():
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "bundlecast.jobs.tools.cli", "generate", "--scale", scale, "--seed", "42",
                        "--date", "2026-11-20"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        print(f"  generated the {scale} world in {time.monotonic() - t0:.0f} s", flush=True)
    return json.loads(truth.read_text())


def land_hourly(home: Path, source: str, dt: str, part: int = 0, share: float = 0.01, name: str = HOURLY_FILE,
                prefix: str = "H") -> int:
    """1% of the history's events (the landing of ``source``) as a new file of the landing
    ``dt`` with new ids, in the landing's own format (JSON lines on tiny and small, Parquet on
    medium and large). Their times move to day ``dt``, squeezed into its first half (``part``
    0) or its second (``part`` 1): the second hourly's events come after the first's, as they
    would, so its fold finds them past the first one's watermark."""
    import pandas as pd

    from bundlecast.jobs.tools.next_day import read_landed, utc_timestamps, write_landed

    landed = [p for p in sorted((home / "raw" / "events" / f"dt={source}").glob("*"))
              if p.is_file() and not _is_bench_file(p)]
    frame = pd.concat([read_landed(p) for p in landed], ignore_index=True)
    frame = frame.iloc[part::max(int(1 / share), 1)].reset_index(drop=True)
    ts = utc_timestamps(frame.event_ts)
    moved = pd.Timestamp(dt, tz="UTC") + pd.Timedelta(hours=12 * part) + (ts - ts.dt.floor("D")) / 2
    if pd.api.types.is_datetime64_any_dtype(frame.event_ts):
        frame["event_ts"] = moved if frame.event_ts.dt.tz is not None else moved.dt.tz_localize(None)
    else:
        frame["event_ts"] = moved.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame["event_id"] = [f"{prefix}{i:010d}" for i in range(len(frame))]
    write_landed(frame, home / "raw" / "events" / f"dt={dt}" / f"{Path(name).stem}{landed[0].suffix}")
    return len(frame)


def _is_bench_file(path: Path) -> bool:
    return path.stem in (Path(HOURLY_FILE).stem, Path(WARM_HOURLY_FILE).stem)


def _remove_bench_files(home: Path, dt: str) -> None:
    for path in (home / "raw" / "events" / f"dt={dt}").glob("*"):
        if _is_bench_file(path):
            path.unlink()


def run_steps(steps: list[list[str]], dt: str, home: Path, label: str, result: dict, start: bool = True) -> None:
    """Each step on the warm driver, as the DAG's tasks send them; appends (step, seconds, peak)
    to ``result["steps"]`` and stores the result after each step, so a run cut short keeps its
    figures. ``start``: the driver is started (and its start counted) first; else it must be running."""
    os.environ["BUNDLECAST_HOME"] = str(home)
    os.environ.setdefault("BUNDLECAST_JAR_CACHE", str(home.parent / "jars"))
    from bundlecast.jobs.tools import driver

    out = result["steps"]
    if start:
        t0 = time.monotonic()
        with Sampler(lambda: (driver.status() or {}).get("pid")) as mem:
            driver.ensure(echo=lambda m: None)
        out.append({"step": f"{label}: driver start", "seconds": time.monotonic() - t0, "peak": mem.peak})
    for argv in steps:
        name = " ".join(a for a in argv if not a.startswith("--") and a not in {"events,orders,order_lines,inventory,feedback"})
        t0 = time.monotonic()
        lines = []
        with Sampler(lambda: (driver.status() or {}).get("pid")) as mem:
            code = driver.run_step([argv[0], "--date", dt, "--run-id", f"bench-{label}", *argv[1:]], echo=lines.append)
        if code:
            result["failed"] = f"{label}: {name}: {[ln for ln in lines if 'error' in ln][-1:]}"
            store(home, result)
            raise SystemExit(f"{name} failed: {[ln for ln in lines if 'error' in ln][-1:]}")
        out.append({"step": f"{label}: {name}", "seconds": time.monotonic() - t0, "peak": mem.peak})
        store(home, result)
        print(f"  {out[-1]['step']:34s}{out[-1]['seconds']:9.1f} s{mem.peak / 2**20:9,.0f} MiB", flush=True)


def store(home: Path, result: dict) -> None:
    """The scale's figures so far, with when and on what they were measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    result.update(measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), commit=commit,
                  load=round(os.getloadavg()[0], 2))
    (home / RESULTS).write_text(json.dumps(result, indent=1))


def stored(root: Path, scale: str) -> dict | None:
    """A scale's stored figures; in those from before the steady-state run (no "steady"), the
    nightly was a first night and is labelled so."""
    path = root / f"bench-{scale}" / RESULTS
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if not result.get("steady"):
        result["steps"] = [dict(s, step=s["step"].replace("nightly:", f"{FIRST}:", 1)) for s in result["steps"]]
    return result


STATE = ("airflow", "gx", "metastore", "mlflow", "run", "warehouse", "work", "exports")


def _fresh_state(home: Path, dt: str) -> None:
    """Everything but the generated landing of ``dt`` goes: the first night starts from nothing."""
    import shutil

    for name in STATE:
        shutil.rmtree(home / name, ignore_errors=True)
    for folder in (home / "raw").glob("*/dt=*"):
        if folder.name != f"dt={dt}":
            shutil.rmtree(folder)


def _finished(result: dict | None, label: str, steps: list) -> list[dict]:
    """The stored steps of a finished ``label`` run (driver start included), else []."""
    done = [s for s in (result or {}).get("steps", []) if s["step"].startswith(f"{label}:")]
    return done if len(done) == len(steps) + 1 else []


def bench_scale(scale: str, root: Path, with_airflow: bool, resume: bool = False) -> dict:
    """First night on the landing of the whole history (date D), then the steady state: the
    next day (D + 1) lands (``bundlecast generate --next-day``) and the nightly runs as it does
    every night, then the floors and the hourly runs on D + 1."""
    from bundlecast.jobs.tools import driver
    from bundlecast.jobs.tools.next_day import land_next_day

    home = root / f"bench-{scale}"
    print(f"\n== {scale} ({home})", flush=True)
    truth = prepare(scale, home)
    env = child_env(home)
    dt = truth["landing_date"]
    me = [sys.executable, str(Path(__file__).resolve())]
    os.environ["BUNDLECAST_HOME"] = str(home)
    driver.stop()
    earlier = stored(root, scale) if resume else None
    first, steady = _finished(earlier, FIRST, NIGHTLY), _finished(earlier, "nightly", NIGHTLY)
    result = {"scale": scale, "steps": first + steady, "steady": True}
    if first:
        print(f"  first night: stored figures of {earlier.get('nightly_measured', earlier['measured'])} (--resume)")
        result["nightly_measured"] = earlier.get("nightly_measured", earlier["measured"])
    else:
        _fresh_state(home, dt)
        run_steps(NIGHTLY, dt, home, FIRST, result)
    driver.stop()
    t0 = time.monotonic()
    next_dt, landed = land_next_day(home / "raw", dt)
    print(f"  landed {next_dt} in {time.monotonic() - t0:.1f} s: {landed['events']:,} events, "
          f"{landed['orders']:,} orders, {landed['order_lines']:,} lines", flush=True)
    if steady:
        print("  steady nightly: stored figures (--resume)", flush=True)
    else:
        run_steps(NIGHTLY, next_dt, home, "nightly", result)
    driver.stop()
    bare_s, bare_peak, _ = timed_process(me + ["--child", "bare"], env)
    print(f"  bare job (session + read + write one row) {bare_s:.1f} s", flush=True)
    plain_s, plain_peak, line = timed_process(me + ["--child", "plain"], env)
    plain = json.loads(line)
    print(f"  plain pass over {plain['rows']:,} behaviour rows {plain['seconds']:.1f} s (process {plain_s:.1f} s)",
          flush=True)
    _remove_bench_files(home, next_dt)
    new_events = land_hourly(home, dt, next_dt)
    try:
        run_steps(HOURLY, next_dt, home, "hourly", result)
        # The next hour on the same driver: what an hourly costs when the driver outlives a run
        # (spark.warm_driver.idle_seconds longer than the schedule's interval, no teardown stop).
        land_hourly(home, dt, next_dt, part=1, name=WARM_HOURLY_FILE, prefix="W")
        run_steps(HOURLY, next_dt, home, "warm hourly", result, start=False)
    finally:
        driver.stop()
        _remove_bench_files(home, next_dt)
    result.update(bare=bare_s, bare_peak=bare_peak, plain=plain["seconds"], plain_peak=plain_peak,
                  rows=plain["rows"], new_events=new_events, next_day_events=landed["events"])
    store(home, result)
    if with_airflow:
        # A fresh landing for the nightly: every file's time moves, so no dataset is skipped as unchanged.
        for path in (home / "raw").rglob("*"):
            if path.is_file() and f"dt={next_dt}" in path.parts:
                os.utime(path)
        airflow_s, airflow_peak, _ = timed_process([sys.executable, "-m", "bundlecast.jobs.tools.cli", "run", "nightly",
                                                    "--date", next_dt], env)
        result.update(airflow=airflow_s, airflow_peak=airflow_peak)
        print(f"  nightly DAG through Airflow {airflow_s:.1f} s", flush=True)
        store(home, result)
    return result


def report(results: list[dict]) -> None:
    print(f"\ncores={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
    for r in results:
        first = sum(s["seconds"] for s in r["steps"] if s["step"].startswith(FIRST))
        nightly = sum(s["seconds"] for s in r["steps"] if s["step"].startswith("nightly"))
        hourly = sum(s["seconds"] for s in r["steps"] if s["step"].startswith("hourly"))
        warm = sum(s["seconds"] for s in r["steps"] if s["step"].startswith("warm hourly"))
        print(f"\n{r['scale']}: {r['rows']:,} behaviour rows, next day +{r.get('next_day_events', 0):,} events, "
              f"hourly +{r['new_events']:,} events "
              f"(measured {r['measured']} at {r['commit']}, load {r['load']})")
        print(f"{'step':36s}{'seconds':>9s}{'peak MiB':>10s}{'/ plain':>9s}{'/ bare':>8s}")
        for s in r["steps"]:
            print(f"{s['step']:36s}{s['seconds']:9.1f}{s['peak'] / 2**20:10,.0f}{s['seconds'] / r['plain']:9.2f}"
                  f"{s['seconds'] / r['bare']:8.2f}")
        print(f"{'first night total':36s}{first:9.1f}{'':10s}{first / r['plain']:9.2f}{first / r['bare']:8.2f}")
        print(f"{'nightly total (steady state)':36s}{nightly:9.1f}{'':10s}{nightly / r['plain']:9.2f}"
              f"{nightly / r['bare']:8.2f}")
        print(f"{'hourly total':36s}{hourly:9.1f}{'':10s}{hourly / r['plain']:9.2f}{hourly / r['bare']:8.2f}")
        print(f"{'warm hourly total (driver kept)':36s}{warm:9.1f}{'':10s}{warm / r['plain']:9.2f}{warm / r['bare']:8.2f}")
        print(f"{'bare job (floor)':36s}{r['bare']:9.1f}{r['bare_peak'] / 2**20:10,.0f}")
        print(f"{'plain pass (yardstick)':36s}{r['plain']:9.1f}{r['plain_peak'] / 2**20:10,.0f}")
        print(f"hourly / nightly = {hourly / nightly:.3f}")
        if "airflow" in r:
            print(f"nightly DAG through Airflow {r['airflow']:.1f} s = {r['airflow'] / r['bare']:.1f} bare jobs")
    for small, big in zip(results, results[1:]):
        data = big["rows"] / small["rows"]
        print(f"\ngrowth {small['scale']} -> {big['scale']} (rows x{data:.1f}; time ratio / data ratio, 1.0 = linear)")
        times = {s["step"]: s["seconds"] for s in small["steps"]}
        for s in big["steps"]:
            if s["step"] in times and times[s["step"]] > 0:
                print(f"  {s['step']:34s}{s['seconds'] / times[s['step']] / data:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="small,medium")
    parser.add_argument("--airflow", action="store_true", help="also time the nightly DAG through Airflow")
    parser.add_argument("--stored", default="", help="scales to report from their stored figures, not re-run "
                        "(e.g. --scales medium --stored small: the growth table against an earlier small run)")
    parser.add_argument("--resume", action="store_true", help="keep a scale's stored nightly figures when its nightly "
                        "finished in an earlier run, and measure only the floors and the hourly runs")
    parser.add_argument("--child", choices=["bare", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(Path(__file__).parent))
        {"bare": child_bare, "plain": child_plain}[args.child]()
        return
    root = Path(os.environ.get("BUNDLECAST_HOME", "var")).resolve()
    os.environ.setdefault("BUNDLECAST_JAR_CACHE", str(root / "jars"))
    from bundlecast.jobs.tools.demo_spec import SCALES

    reuse = set(filter(None, args.stored.split(",")))
    results = []
    for scale in sorted(set(filter(None, args.scales.split(","))) | reuse, key=list(SCALES).index):
        result = stored(root, scale) if scale in reuse else bench_scale(scale, root, args.airflow, args.resume)
        if result is None or "plain" not in result:
            raise SystemExit(f"no complete stored figures for {scale}: run it with --scales {scale} first")
        results.append(result)
    report(results)


if __name__ == "__main__":
    main()
