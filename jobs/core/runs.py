"""One run record for every step: the :class:`StepRun` a step fills in, and ``step_runs``.

Every step returns a ``StepRun`` and records it as one ``step_runs`` row per (date, step,
mode), replaced on a re-run: what it read, built and skipped (``counts``, by reason),
its figures (metrics, objective, seconds), labels (model version, gate decision, MLflow
run), notes, and the watermark of the data it folded in (the hourly runs start from the
last one).
"""
from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from bundlecast.jobs.core.errors import BundlecastError


def utc_now() -> datetime:
    """The wall clock, UTC, naive (how every ``*_at`` column is stored). Jobs read it once
    and hand it to their transforms."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass
class StepRun:
    """What one run of one step did."""
    step: str
    dt: str
    run_id: str
    mode: str = ""
    counts: Counter = field(default_factory=Counter)  # a missing count reads as 0: counts[k] += n
    figures: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metric -> value
    notes: list[str] = field(default_factory=list)
    watermark: datetime | None = None
    now: datetime = field(default_factory=lambda: utc_now().replace(microsecond=0))  # the run's clock, read once
    timings: dict[str, float] = field(default_factory=dict)  # seconds per part of the run
    seconds: float = 0.0
    started: float = field(default_factory=time.time, repr=False)

    def __post_init__(self):
        # Every step builds its run record first: a run date that is not a plain
        # YYYY-MM-DD date stops here, whatever the entry point (CLI, spark-submit, DAG, API).
        try:
            ok = date.fromisoformat(str(self.dt)).isoformat() == str(self.dt)
        except ValueError:
            ok = False
        if not ok:
            raise BundlecastError(f"{self.step}: run date must be YYYY-MM-DD, not {str(self.dt)[:40]!r}")

    @contextmanager
    def timed(self, part: str):
        """Add the wall time of the ``with`` block to ``timings[part]``."""
        t0 = time.time()
        try:
            yield
        finally:
            self.timings[part] = round(self.timings.get(part, 0.0) + time.time() - t0, 1)

    def finish(self) -> StepRun:
        self.seconds = round(time.time() - self.started, 1)
        return self

    def summary(self, limit: int = 8) -> str:
        """One line for the operator: what the run read, wrote and skipped, and its time."""
        counts = [f"{k} {int(v):,}" for k, v in list(self.counts.items())[:limit] if v]
        more = f" (+{len(self.counts) - limit} more)" if len(self.counts) > limit else ""
        return f"{', '.join(counts) or 'nothing counted'}{more}; {self.seconds:.1f} s"

    def row(self, now: datetime) -> dict:
        figures = {k: float(v) for k, v in self.figures.items() if v is not None}
        figures.update({f"seconds.{k}": float(v) for k, v in self.timings.items()})
        for model, values in self.metrics.items():
            figures.update({f"{model}.{k}": float(v) for k, v in values.items() if v is not None})
        return {"step": self.step, "mode": self.mode, "dt": self.dt, "run_id": self.run_id,
                "watermark": self.watermark, "counts": {k: int(v) for k, v in self.counts.items()},
                "figures": figures, "labels": {k: str(v) for k, v in self.labels.items()},
                "notes": "; ".join(self.notes), "seconds": float(self.seconds), "finished_at": now}


SUMMARY_PREFIX = "[bundlecast] summary: "


def record(tables, run: StepRun, echo=print) -> StepRun:
    """Write the run's ``step_runs`` row (replacing the same date, step and mode) and print
    its one-line summary (``SUMMARY_PREFIX``: the DAG task repeats it in its end line)."""
    tables.replace("step_runs", tables.frame("step_runs", [run.row(utc_now())]),
                   dt=run.dt, step=run.step, mode=run.mode)
    echo(f"{SUMMARY_PREFIX}{run.step}{'/' + run.mode if run.mode else ''} {run.dt}: {run.summary()}")
    return run


def last_watermark(tables, step: str, modes: tuple[str, ...] | None = None, skip_empty: bool = True) -> datetime | None:
    """The watermark of the step's latest finished run (in one of ``modes``; by default
    the latest run that had one), or None."""
    from pyspark.sql import functions as F

    runs = tables.read("step_runs").filter(F.col("step") == step)
    if skip_empty:
        runs = runs.filter(F.col("watermark").isNotNull())
    if modes:
        runs = runs.filter(F.col("mode").isin(*modes))
    last = runs.orderBy(F.col("finished_at").desc()).select("watermark").first()
    return last[0] if last else None
