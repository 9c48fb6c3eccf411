"""Unit tests: transforms and the table layer on a few explicit rows (``make test-fast``)."""
from __future__ import annotations

import copy

import pytest


@pytest.fixture()
def unit_tables(spark, cfg, tmp_path):
    """A :class:`Tables` over an empty warehouse of its own (own catalog database)."""
    from bundlecast.jobs.core.tables import Tables

    own = copy.deepcopy(cfg)
    own["storage"]["warehouse"] = str(tmp_path / "warehouse")
    own["storage"]["database"] = "bundlecast_unit"
    spark.sql("CREATE DATABASE IF NOT EXISTS bundlecast_unit")
    return Tables(spark, own)
