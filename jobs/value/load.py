"""Writes of the value step."""
from __future__ import annotations

import pandas as pd

from bundlecast.jobs.core import catalog


def write_user_value(tables, rows: pd.DataFrame, dt: str) -> None:
    """Replace the run date's ``user_value`` rows (with none when the run was skipped, so a
    re-run never leaves stale rows; a skipped date that never had rows makes no commit)."""
    if not len(rows) and not tables.has_rows("user_value", dt=dt):
        return
    frame = tables.frame("user_value", rows[[c.name for c in catalog.table("user_value").columns]]
                         if len(rows) else None)
    tables.replace("user_value", frame, dt=dt)
