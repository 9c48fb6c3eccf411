"""``bundlecast routing bench``: the route solver on standard VRPTW instances (Solomon's
format), next to PyVRP at the same time limit, every solution checked independently.

Writes, under ``--out`` (default ``$BUNDLECAST_HOME/bench/routing``):

* ``results.csv``: one row per instance and solver: vehicles, distance, feasibility and
  the first violation, solve seconds, best-known (distance-only) distance and the gap;
* ``routes/<solver>/<instance>.json``: the routes themselves (customer numbers of the
  instance file), so anyone can re-check them;
* ``summary.json``: per solver, instances, feasible count, mean/max gap, mean seconds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.models import routing


def _bks(path: Path | None) -> dict[str, float]:
    if path is None or not path.exists():
        return {}
    frame = pd.read_csv(path)
    return dict(zip(frame["instance"], frame["mindist_distance"].astype(float)))


def run(instances: Path, time_limit: float, solvers: list[str], out: Path, bks: Path | None = None,
        only: list[str] | None = None, progress=print) -> pd.DataFrame:
    files = sorted(instances.glob("*.txt")) if instances.is_dir() else [instances]
    if only:
        files = [f for f in files if f.stem in set(only)]
    if not files:
        raise BundlecastError(f"no Solomon instances (*.txt) in {instances}")
    best = _bks(bks)
    rows = []
    for f in files:
        problem = routing.load_solomon(f)
        for solver in solvers:
            solved = routing.solve(problem, solver, time_limit)
            violations = routing.check(problem, solved.routes)
            dist = routing.distance(problem, solved.routes)
            ref = best.get(problem.name, math.nan)
            rows.append({"instance": problem.name, "solver": solver, "vehicles": routing.vehicles_used(solved.routes),
                         "distance": round(dist, 3), "feasible": not violations,
                         "violation": violations[0] if violations else "", "seconds": round(solved.seconds, 2),
                         "best_known": ref, "gap_pct": round(100 * routing.gap(dist, ref), 3)})
            target = out / "routes" / solver / f"{problem.name}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({"instance": problem.name, "solver": solver, "time_limit": time_limit,
                                          "distance": dist, "routes": [[int(problem.labels[n]) for n in r]
                                                                      for r in solved.routes if r]}))
            progress(f"{problem.name:6s} {solver:8s} vehicles {rows[-1]['vehicles']:3d} distance {dist:9.2f} "
                     f"gap {rows[-1]['gap_pct']:6.2f}% {'feasible' if not violations else 'INFEASIBLE: ' + violations[0]}")
    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    summary = summarise(frame, time_limit)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return frame


def summarise(frame: pd.DataFrame, time_limit: float) -> dict:
    out = {"time_limit_s": time_limit}
    for solver, part in frame.groupby("solver"):
        out[solver] = {"instances": int(len(part)), "feasible": int(part["feasible"].sum()),
                       "mean_gap_pct": round(float(part["gap_pct"].mean()), 3),
                       "max_gap_pct": round(float(part["gap_pct"].max()), 3),
                       "mean_seconds": round(float(part["seconds"].mean()), 2),
                       "vehicles": int(part["vehicles"].sum())}
        for family in ("C1", "C2", "R1", "R2", "RC1", "RC2"):
            fam = part[part["instance"].str.fullmatch(rf"{family}\d\d")]
            if len(fam):
                out[solver][f"mean_gap_pct_{family}"] = round(float(fam["gap_pct"].mean()), 3)
    return out


def render(summary: dict) -> str:
    lines = [f"time limit {summary['time_limit_s']:g} s per instance",
             f"{'solver':8s} {'instances':>9s} {'feasible':>8s} {'mean gap':>9s} {'max gap':>8s} {'mean s':>7s}"]
    for solver, s in summary.items():
        if isinstance(s, dict):
            lines.append(f"{solver:8s} {s['instances']:9d} {s['feasible']:8d} {s['mean_gap_pct']:8.2f}% "
                         f"{s['max_gap_pct']:7.2f}% {s['mean_seconds']:7.1f}")
    return "\n".join(lines)
