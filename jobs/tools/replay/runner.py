"""``bundlecast replay``: the nightly over a real history, date by date, then its decisions
against what users did afterwards.

For every day from the first replay date to the last, the history's rows of that day are
landed (``history.Lander``: one file per day, in the landing folder of the replay date that
ingests it). On each replay date (every ``--every`` days) the days landed since the last one
are ingested in one run and the nightly steps run on the state landed up to the end of that
day, with run id ``replay-<date>``, and their decisions are scored against the history after
it (``outcomes``): ``replay_outcomes`` and ``replay_shipments`` for the date, then
``replay_summary`` pooled over every finished date, the HTML report and its MLflow run.

Resumable: ``BUNDLECAST_HOME/replay/state.json`` records the days landed and the dates done;
a killed replay started again with the same arguments continues after the last finished
day (a half-finished one is done again: every write is keyed on its date, so the rows are
the same). Another history or range in the same state directory is refused.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from bundlecast.jobs.core.config import config
from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.tools.replay import history as hist
from bundlecast.jobs.tools.replay import outcomes as oc

# Between refits (``--retrain-every``): relationships folded forward, need and value scored by their champions.
LIGHT = {"relationships": {"mode": "incremental"}, "need": {"mode": "score"}, "value": {"mode": "score"}}
NIGHTLY = (("relationships", {"mode": "full"}), ("forecast", {}), ("need", {"mode": "train"}), ("value", {}),
           ("bundles", {}), ("proactive", {"mode": "nightly"}), ("offers", {"mode": "nightly"}))


@dataclass(frozen=True)
class Plan:
    source: str
    first: str
    last: str
    every: int
    retrain_every: int | None = None  # days between full refits (None: on every replay date, as the nightly)

    def refits(self, day: str) -> bool:
        """Relationships rebuilt and the need model retrained on this replay date."""
        if not self.retrain_every:
            return True
        return (date.fromisoformat(day) - date.fromisoformat(self.first)).days % self.retrain_every < self.every

    @property
    def dates(self) -> list[str]:
        a, b = date.fromisoformat(self.first), date.fromisoformat(self.last)
        return [str(a + timedelta(days=i)) for i in range(0, (b - a).days + 1, self.every)]

    @property
    def days(self) -> list[str]:
        return hist.landing_days(self.first, self.dates[-1])

    def batch_of(self, day: str) -> str:
        """The replay date whose nightly ingests ``day``'s landing: the first on or after it."""
        return next(d for d in self.dates if d >= day)


def parse_every(text: str) -> int:
    """``1d`` / ``7d`` / ``7`` -> days."""
    t = str(text).strip().lower().removesuffix("d")
    if not t.isdigit() or int(t) < 1:
        raise BundlecastError(f"--every {text!r}: expected a number of days such as 1d or 7d")
    return int(t)


class State:
    """``replay/state.json``: the plan, the days landed and ingested, the dates done."""

    def __init__(self, home: str | Path):
        self.path = Path(home) / "replay" / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else None

    def start(self, plan: Plan, history: hist.History, raw: Path) -> None:
        wanted = {"source": plan.source, "first": plan.first, "last": plan.last, "every": plan.every,
                  "retrain_every": plan.retrain_every, "digest": history.digest()}
        if self.data is None:
            if raw.exists() and any(raw.iterdir()):
                raise BundlecastError(f"{raw} already holds landings that no replay made: a replay needs a fresh "
                                      "BUNDLECAST_HOME")
            self.data = {**wanted, "history": history.source, "filled": history.filled, "landed": [], "done": []}
            self.save()
        elif {k: self.data.get(k) for k in wanted} != wanted:
            raise BundlecastError(f"{self.path} holds another replay ({self.data['source']} {self.data['first']}.."
                                  f"{self.data['last']} every {self.data['every']}d): use a fresh BUNDLECAST_HOME")

    def mark(self, key: str, day: str) -> None:
        if day not in self.data[key]:
            self.data[key].append(day)
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def replay(history_path: str, first: str, last: str, every: int = 7, hourly: bool = False, settings: str | None = None,
           retrain_every: int | None = None, echo=print) -> dict:
    """Run (or resume) the replay; returns the summary figures the report heads with.
    ``settings``: a YAML file that becomes the state directory's overlay when it has none."""
    from bundlecast.jobs.core.spark import get_spark

    if settings:
        _start_overlay(Path(settings), echo)
    cfg = config()
    t0 = time.time()
    history = hist.load(history_path)
    plan = Plan(str(Path(history_path).resolve()), first, last, every, retrain_every)
    raw = Path(cfg["storage"]["raw"])
    state = State(cfg["home"])
    state.start(plan, history, raw)
    if state.data["done"]:
        echo(f"resuming: {len(state.data['done'])} of {len(plan.dates)} replay dates done "
             f"(last {state.data['done'][-1]})")
    bought = oc.purchases(history.datasets)
    _check_room(cfg, plan, bought)
    lander = hist.Lander(history, raw, plan.first)
    spark = get_spark("bundlecast-replay")
    for day in plan.days:
        if day in state.data["done"]:
            continue
        if day not in state.data["landed"]:
            rows = lander.land(day, plan.batch_of(day))
            state.mark("landed", day)
            echo(f"landed {day}: " + (", ".join(f"{k} {v:,}" for k, v in sorted(rows.items())) or "nothing"))
        if day in plan.dates:
            _ingest(spark, day, raw)
            started = time.time()
            refit = plan.refits(day)
            _nightly(spark, day, refit, echo)
            if hourly:
                _step(spark, "need", day, echo, mode="rescore")
                spark.catalog.clearCache()
            n = score_date(spark, cfg, day, bought, history)
            state.mark("done", day)
            echo(f"replay date {day} done in {time.time() - started:.0f} s ({n} outcome rows)")
    return _report(spark, cfg, state, plan, seconds=time.time() - t0, echo=echo)


def _start_overlay(settings: Path, echo) -> None:
    from bundlecast.jobs.core.config import home, state_overlay_path

    if not settings.is_file():
        raise BundlecastError(f"--config {settings}: no such file")
    target = state_overlay_path(home())
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(settings.read_text())
        echo(f"configuration: {settings} -> {target}")


def _check_room(cfg: dict, plan: Plan, bought: pd.DataFrame) -> None:
    """The last replay date must leave a whole outcome horizon of history after it."""
    if bought.empty:
        raise BundlecastError("the history has no purchases to replay")
    first, last = bought.day.min(), bought.day.max()
    need = horizon(cfg) + int(cfg["proactive"].get("delivery_offset_days", 1))
    latest = last - timedelta(days=need)
    if date.fromisoformat(plan.dates[-1]) > latest:
        raise BundlecastError(f"the history's purchases end on {last}: the last replay date can be {latest} at the "
                              f"latest ({need} days of outcomes after it), not {plan.dates[-1]}")
    if date.fromisoformat(plan.first) <= first:
        raise BundlecastError(f"the history's purchases start on {first}: the first replay date must come after it")


def horizon(cfg: dict) -> int:
    return int((cfg.get("replay") or {}).get("horizon_days") or cfg["need"]["horizon_days"])


def _ingest(spark, day: str, raw: Path) -> None:
    """Landing ``dt=day`` (the days since the last replay date, one file each), ingested by
    the replay date's nightly with its expectation suites (only the datasets that landed)."""
    from bundlecast.jobs.pipeline import step

    datasets = sorted(p.parent.name for p in raw.glob(f"*/dt={day}") if any(p.iterdir()))
    if datasets:
        step("ingest").run(spark, day, datasets=datasets, run_id=f"replay-{day}", with_expectations=True)


def _nightly(spark, day: str, refit: bool, echo) -> None:
    """The nightly steps of replay date ``day`` (the light ones between refits), the steps
    with no table between them side by side (``pipeline.stages``, as the DAG orders its
    tasks): on two cores one step's driver-side work (pandas, model fits, MLflow, Delta
    commits) overlaps another's Spark tasks. Every step reads only tables of earlier stages,
    so the rows are those of one step after another."""
    from concurrent.futures import ThreadPoolExecutor

    from bundlecast.jobs.pipeline import stages

    kws = {name: kw if refit else {**kw, **LIGHT.get(name, {})} for name, kw in NIGHTLY}
    for stage in stages([(name, kw.get("mode")) for name, kw in kws.items()]):
        if len(stage) == 1:
            _step(spark, stage[0][0], day, echo, **kws[stage[0][0]])
        else:
            with ThreadPoolExecutor(len(stage), thread_name_prefix="replay-step") as pool:
                running = [pool.submit(_step, spark, name, day, echo, **kws[name]) for name, _ in stage]
                for future in running:  # the first failure, once all have ended
                    future.result()
        spark.catalog.clearCache()


def _step(spark, name: str, day: str, echo, **kw) -> None:
    from bundlecast.jobs.pipeline import step

    started = time.time()
    step(name).run(spark, day, run_id=f"replay-{day}", **kw)
    echo(f"  {day} {name}{' ' + kw['mode'] if 'mode' in kw else ''}: {time.time() - started:.0f} s")


def _read(tables, name: str, day: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    from pyspark.sql import functions as F

    frame = tables.read(name)
    if day is not None:
        frame = frame.filter(F.col("dt") == F.lit(day).cast("date"))
    if columns:
        frame = frame.select(*columns)
    return frame.toPandas()


def score_date(spark, cfg: dict, day: str, bought: pd.DataFrame, history: hist.History) -> int:
    """The outcome rows of replay date ``day`` (replaced for the date)."""
    from bundlecast.jobs.core.tables import Tables

    tables = Tables(spark, cfg)
    d = date.fromisoformat(day)
    r = cfg.get("replay") or {}
    H = horizon(cfg)
    k = int(r.get("k", 10))
    rows, _ = oc.need_outcomes(_read(tables, "need_predictions", day), bought, d, H, int(cfg["need"]["lookback_days"]),
                               k, tifu_params=cfg["need"].get("tifuknn"))
    items = history.datasets["items"].assign(item=lambda f: f.site_id + "|" + f.item_id).set_index("item")
    prices = pd.to_numeric(items.price, errors="coerce").fillna(0.0)
    bundles = _read(tables, "need_bundles", day, ["user_id", "bundle_id", "items", "confidence", "stock_ok"])
    offset = int(cfg["proactive"].get("delivery_offset_days", 1))
    shipped = oc.shipment_outcomes(bundles, items.category, prices, bought, d, H, offset)
    real = _read(tables, "proactive_shipments", columns=["bundle_id", "status"])
    real_ids = set(real[real.status != "dropped"].bundle_id)
    shipped["shipped"] = shipped.bundle_id.isin(real_ids)
    rows += oc.curve_rows(shipped)
    rows += _actual_rows(shipped[shipped.shipped])
    rows += oc.offer_outcomes(_read(tables, "offers", day, ["offer_id", "user_id", "bundle_kind", "items", "valid_from",
                                                            "valid_to"]), bought)
    rows += oc.forecast_outcomes(_read(tables, "demand_forecast", day, ["site_id", "item_id", "region", "date", "yhat",
                                                                       "method"]),
                                 bought, d, level=cfg["forecast"].get("level", "item_region"))
    rel = _read(tables, "item_relationships", columns=["site_a", "item_a", "site_b", "item_b", "rank"])
    rows += oc.relationship_outcomes(rel[rel["rank"] <= k], bought, d, H, k)
    run_id = f"replay-{day}"
    out = pd.DataFrame(rows).assign(dt=d, run_id=run_id)
    tables.replace("replay_outcomes", tables.frame("replay_outcomes", out), dt=day)
    tables.replace("replay_shipments", tables.frame("replay_shipments", shipped.assign(dt=d, run_id=run_id)), dt=day)
    return len(out)


def _actual_rows(shipped: pd.DataFrame) -> list[dict]:
    """What the proactive step actually shipped (opt-in, stock, cool-down, routes applied)."""
    if shipped.empty:
        return []
    return [oc.row("shipped", "bundles", len(shipped))] + [
        oc.row("shipped", m, float(shipped[m].sum()))
        for m in ("shipped_items", "wanted_items", "shipped_value", "wanted_value")]


def summarise(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Pure: replay_outcomes pooled over the dates: counts summed, rates weighted by n."""
    if outcomes.empty:
        raise BundlecastError("no replay date finished: nothing to summarise")
    key = ["kind", "scorer", "category", "bin", "metric"]
    rows = outcomes.assign(bin=outcomes["bin"].astype(float), w=outcomes.n.fillna(1).astype(float))
    rows["wv"] = rows.value * rows.w
    g = rows.groupby(key, dropna=False)
    out = g.agg(total=("value", "sum"), wv=("wv", "sum"), w=("w", "sum"), n=("n", "sum"), dates=("dt", "nunique"),
                first_dt=("dt", "min"), last_dt=("dt", "max")).reset_index()
    counts = out.metric.isin(oc.COUNTS)
    out["value"] = out.total.where(counts, out.wv / out.w.where(out.w > 0))
    return out.drop(columns=["total", "wv", "w"])


def _report(spark, cfg: dict, state: State, plan: Plan, seconds: float, echo) -> dict:
    """``replay_summary`` over every finished date, the HTML report and its MLflow run."""
    from bundlecast.jobs.core.tables import Tables
    from bundlecast.jobs.tools.replay import report

    tables = Tables(spark, cfg)
    outcomes = tables.read("replay_outcomes").toPandas()
    summary = summarise(outcomes)
    tables.replace("replay_summary", tables.frame("replay_summary", summary))
    source = {"source": state.data.get("history", plan.source), "filled": state.data.get("filled", [])}
    return report.write(spark, cfg, source, plan, outcomes, summary, seconds=seconds, echo=echo)


def report_again(echo=print) -> dict:
    """The summary, report and MLflow run again from the finished dates (no step runs)."""
    from bundlecast.jobs.core.spark import get_spark

    cfg = config()
    state = State(cfg["home"])
    if state.data is None:
        raise BundlecastError(f"no replay under {cfg['home']}: run `bundlecast replay run` first")
    d = state.data
    plan = Plan(d["source"], d["first"], d["last"], d["every"], d.get("retrain_every"))
    return _report(get_spark("bundlecast-replay"), cfg, state, plan, seconds=0.0, echo=echo)


def render(figures: dict) -> str:
    """The headline figures, one per line."""
    return "\n".join(f"  {k:48s} {v:.4f}" if isinstance(v, float) else f"  {k:48s} {v}" for k, v in figures.items())
