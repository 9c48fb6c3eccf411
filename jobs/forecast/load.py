"""Writes of the forecast step."""
from __future__ import annotations

from bundlecast.jobs.core import catalog


def write_forecast(tables, forecast, metrics, dt: str) -> None:
    """Replace the run date's ``demand_forecast`` and ``forecast_metrics`` rows."""
    tables.replace("demand_forecast", forecast.select(*[c.name for c in catalog.table("demand_forecast").columns]), dt=dt)
    tables.replace("forecast_metrics", metrics.select(*[c.name for c in catalog.table("forecast_metrics").columns]), dt=dt)
