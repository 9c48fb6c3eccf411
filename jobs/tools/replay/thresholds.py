"""Confidence thresholds from the replay's evidence.

    bundlecast replay thresholds --target-precision 0.7 [--min-shipments 20] [--by items|value]

Per category, the lowest threshold on the grid at which the bundles at or above it would
have reached the target precision (share of shipped items, or of shipped value, that the
user bought within the horizon after delivery) over every replay date, with at least
``min_shipments`` bundles behind it. A category without such a threshold keeps its
configured one (the fall-back). The proposal is written to the state directory's overlay
(``BUNDLECAST_HOME/conf/config.yaml``, key ``proactive.category_thresholds``), which the
nightly reads last; the cancellation rule still raises a category's threshold on top.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from bundlecast.jobs.core.config import config, state_overlay_path
from bundlecast.jobs.tools.replay.outcomes import GRID


def propose(shipped: pd.DataFrame, target: float, min_shipments: int, cfg: dict, by: str = "items") -> pd.DataFrame:
    """One row per category: the proposed threshold (or the fall-back), with the precision
    and volume at it. ``shipped``: replay_shipments rows of every replay date."""
    p = cfg["proactive"]
    fallback = {c: float(t) for c, t in (p.get("category_thresholds") or {}).items()}
    rows = []
    for category, part in shipped.groupby("category"):
        chosen = None
        for t in GRID:
            s = part[part.confidence >= t - 1e-12]
            if len(s) < min_shipments:
                break
            precision = _precision(s, by)
            if precision >= target:
                chosen = (t, precision, s)
                break
        base = fallback.get(category, float(p["threshold"]))
        if chosen is None:
            s = part[part.confidence >= base - 1e-12]
            rows.append(dict(category=category, threshold=base, source="fall-back (configured)",
                             precision=_precision(s, by) if len(s) else None, bundles=len(s), candidates=len(part)))
        else:
            t, precision, s = chosen
            rows.append(dict(category=category, threshold=float(t), source="replay", precision=precision,
                             bundles=len(s), candidates=len(part)))
    return pd.DataFrame(rows, columns=["category", "threshold", "source", "precision", "bundles", "candidates"])


def _precision(s: pd.DataFrame, by: str) -> float:
    shipped, wanted = (s.shipped_value, s.wanted_value) if by == "value" else (s.shipped_items, s.wanted_items)
    total = float(shipped.sum())
    return float(wanted.sum()) / total if total else 0.0


def at_thresholds(shipped: pd.DataFrame, proposal: pd.DataFrame) -> dict:
    """Precision (items, value) and volume of what the proposed thresholds would have shipped."""
    limit = proposal.set_index("category").threshold
    s = shipped[shipped.confidence >= shipped.category.map(limit).fillna(1.01) - 1e-12]
    return {"bundles": int(len(s)), "items": int(s.shipped_items.sum()), "precision_items": _precision(s, "items"),
            "precision_value": _precision(s, "value"), "returned_items": int((s.shipped_items - s.wanted_items).sum()),
            "dates": int(s.dt.nunique()) if "dt" in s and len(s) else 0}


def write_overlay(proposal: pd.DataFrame, target: float, home: str | None = None) -> Path:
    """Merge the replay-backed thresholds into the state directory's overlay."""
    path = state_overlay_path(Path(home or config()["home"]))
    overlay = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    chosen = proposal[proposal.source == "replay"]
    section = overlay.setdefault("proactive", {})
    section["category_thresholds"] = {**(section.get("category_thresholds") or {}),
                                      **{r.category: float(r.threshold) for r in chosen.itertuples()}}
    header = (f"# proactive.category_thresholds proposed by `bundlecast replay thresholds --target-precision {target}`\n"
              f"# ({len(chosen)} categories from the replay; the others keep conf/)\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(overlay, sort_keys=True))
    return path


def run(spark, target: float, min_shipments: int, by: str = "items", write: bool = True) -> tuple[pd.DataFrame, Path | None]:
    from bundlecast.jobs.core.tables import Tables

    cfg = config()
    shipped = Tables(spark, cfg).read("replay_shipments").toPandas()
    proposal = propose(shipped, target, min_shipments, cfg, by)
    return proposal, (write_overlay(proposal, target, cfg["home"]) if write else None)
