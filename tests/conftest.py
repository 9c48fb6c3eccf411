"""Shared fixtures: one Spark session per test session, in its own BUNDLECAST_HOME.

Every test world shares the jar cache of the project's state directory
(BUNDLECAST_JAR_CACHE), so the Delta jars are fetched once per machine, not per test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
os.environ.setdefault("BUNDLECAST_JAR_CACHE", str(Path(os.environ.get("BUNDLECAST_HOME", PROJECT / "var")) / "jars"))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
SHARED_DATA = PROJECT.parent / "shared" / "data"
# Fixtures that build a generated world, run Airflow or install the package: a test using
# one is a world test (`make test` runs it; `make test-fast` leaves it out).
WORLD_FIXTURES = {"tiny_world", "test_world", "e2e_home", "installed_bundlecast", "world", "pworld", "nightly",
                  "bad_drop", "rel_world", "dagbag", "corpus", "stack_home", "replayed"}


# `make test` runs two pytest-xdist workers with --dist loadscope: each takes whole modules,
# longest first, so the Airflow end-to-end module (mostly waiting on its DAG runs) runs on
# one worker while the modelling modules run on the other. Each worker builds the session
# worlds it needs itself, in its own temporary state directory.
LONGEST_FIRST = ("test_stack", "test_end_to_end", "test_replay", "test_forecast", "test_relationships", "test_need", "test_offers",
                 "test_export", "test_proactive", "test_driver", "test_ingest_corpus", "test_ingest")


def _rank(item) -> int:
    module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if WORLD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.world)
    items.sort(key=_rank)  # stable: a module keeps its own order


@pytest.fixture(scope="session")
def installed_bundlecast(tmp_path_factory) -> Path:
    """``pip install .`` (not editable) into a fresh virtual environment; returns its bin/.

    The fresh environment gets this environment's third-party packages through a .pth
    line (so no download), but not the checkout: bundlecast itself comes only from the
    wheel pip builds, with conf/, dags/ and expectations/ as package data.
    """
    import shutil
    import subprocess
    import sys
    import sysconfig

    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_bundlecast_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # From a copy of the sources: a build never leaves build/ in the checkout, and a stale
    # build/ of the checkout never reaches the wheel.
    source = tmp_path_factory.mktemp("source") / "bundlecast"
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns(".venv", "var", ".git", "build", "*.egg-info",
                                                                   "__pycache__", ".pytest_cache"))
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                           "--no-build-isolation", str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


@pytest.fixture(scope="session")
def world_home(tmp_path_factory) -> Path:
    """The state directory of the in-process Spark session (one per test session)."""
    home = tmp_path_factory.mktemp("home")
    os.environ["BUNDLECAST_HOME"] = str(home)
    os.environ["BUNDLECAST_SPARK_MASTER"] = "local[2]"
    return home


@pytest.fixture(scope="session")
def cfg(world_home):
    from bundlecast.jobs.core.config import config
    return config()


@pytest.fixture(scope="session")
def spark(cfg):
    from bundlecast.jobs.core.spark import get_spark
    session = get_spark("bundlecast-tests", cfg, extra_conf={"spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def tiny_world(cfg, spark):
    """The tiny demo world, generated and ingested once (dimensions and facts)."""
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.tools.demo_world import generate

    rows = generate(Path(cfg["storage"]["raw"]), Path(cfg["home"]) / "demo" / "ground_truth.json", "tiny", 7,
                    cfg["demo"]["date"])
    audits = ingest.run(spark, cfg["demo"]["date"], cfg=cfg, progress=lambda m: None)
    return {"date": cfg["demo"]["date"], "rows": rows, "audits": {a.dataset: a for a in audits}}


TEST_WORLD_DATE = "2026-11-20"


@pytest.fixture(scope="session")
def test_world(spark, tmp_path_factory):
    """The `test` demo world (1,000 users, 120 items, 60 days) in its own state directory
    and catalog database, ingested once for the modelling tests (relationships, forecast).
    Returns its config and the generator's ground truth."""
    import json

    from bundlecast.jobs.core.config import load_config
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.tools.demo_world import generate

    home = tmp_path_factory.mktemp("testworld")
    cfg = load_config(state_home=home)
    cfg["storage"]["database"] = "bundlecast_testworld"
    spark.sql("CREATE DATABASE IF NOT EXISTS bundlecast_testworld")
    generate(Path(cfg["storage"]["raw"]), home / "truth.json", "test", 11, TEST_WORLD_DATE)
    ingest.run(spark, TEST_WORLD_DATE, ["sites", "warehouses", "items", "users", "events", "orders", "order_lines",
                                        "reviews", "inventory", "weather", "calendar_events"],
               cfg=cfg, with_expectations=False, progress=lambda m: None)
    return {"cfg": cfg, "truth": json.loads((home / "truth.json").read_text()), "date": TEST_WORLD_DATE}
