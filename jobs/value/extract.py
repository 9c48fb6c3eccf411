"""Reads of the value step: the behaviour it learns from."""
from __future__ import annotations

from dataclasses import dataclass

from bundlecast.jobs.core.commerce import with_local_day


@dataclass
class ValueInputs:
    orders: object       # Spark DataFrames, as in the catalog, orders and events with their site-local ``day``
    order_lines: object
    events: object
    users: object


def extract(tables) -> ValueInputs:
    return ValueInputs(with_local_day(tables, tables.read("orders"), "order_ts"), tables.read("order_lines"),
                       with_local_day(tables, tables.read("events"), "event_ts"), tables.read("users"))
