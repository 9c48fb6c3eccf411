"""Reads of the value step: the behaviour it learns from."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ValueInputs:
    orders: object       # Spark DataFrames, as in the catalog
    order_lines: object
    events: object
    users: object


def extract(tables) -> ValueInputs:
    return ValueInputs(tables.read("orders"), tables.read("order_lines"), tables.read("events"), tables.read("users"))
