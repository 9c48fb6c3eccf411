"""The table layer: partition predicates, one commit per write, write modes and keys
from the catalog; the run record."""
from __future__ import annotations

import shutil
from datetime import date, datetime

import pytest

from bundlecast.jobs.core.errors import BundlecastError
from bundlecast.jobs.core.tables import merge_condition, predicate


def test_predicate_quotes_values_and_types_dates():
    assert predicate("offers", {"dt": "2026-11-20"}) == "`dt` = DATE'2026-11-20'"
    assert predicate("quarantine", {"dataset": ["users", "events"], "dt": date(2026, 11, 20)}) == \
        "`dataset` IN ('events', 'users') AND `dt` = DATE'2026-11-20'"
    # a quote in a value stays inside the literal: no way out of the predicate
    assert predicate("step_runs", {"step": "x' OR '1'='1"}) == "`step` = 'x\\' OR \\'1\\'=\\'1'"
    assert predicate("offers", {}) is None
    with pytest.raises(BundlecastError, match="not a column"):
        predicate("offers", {"no_such": 1})


def test_merge_condition_comes_from_the_catalog_keys():
    assert merge_condition("notifications") == "t.`notification_id` <=> s.`notification_id`"
    assert merge_condition("ingestion_audit") == "t.`dataset` <=> s.`dataset` AND t.`dt` <=> s.`dt`"


def _thresholds(day: str, category: str, value: float) -> dict:
    return {"dt": day, "category": category, "shipments": 3, "cancelled": 0, "cancel_rate": 0.0,
            "base_threshold": 0.8, "threshold": value}


def test_replace_touches_only_its_partition_in_one_commit(unit_tables):
    from delta.tables import DeltaTable

    t = unit_tables
    t.replace("proactive_thresholds", t.frame("proactive_thresholds", [_thresholds("2026-11-19", "a", 0.8)]),
              dt="2026-11-19")
    t.replace("proactive_thresholds", t.frame("proactive_thresholds", [_thresholds("2026-11-20", "a", 0.8),
                                                                       _thresholds("2026-11-20", "b", 0.9)]),
              dt="2026-11-20")
    version = DeltaTable.forPath(t.spark, t.path("proactive_thresholds")).history(1).first()["version"]
    t.replace("proactive_thresholds", t.frame("proactive_thresholds", [_thresholds("2026-11-20", "c", 0.7)]),
              dt="2026-11-20")
    rows = sorted((str(r.dt), r.category) for r in t.read("proactive_thresholds").collect())
    assert rows == [("2026-11-19", "a"), ("2026-11-20", "c")]
    assert DeltaTable.forPath(t.spark, t.path("proactive_thresholds")).history(1).first()["version"] == version + 1
    latest, day = t.latest("proactive_thresholds", "2026-11-19")
    assert str(day) == "2026-11-19" and [r.category for r in latest.collect()] == ["a"]
    assert t.latest("proactive_thresholds", "2026-11-01")[1] is None


def test_upsert_merges_on_keys_and_write_modes_are_enforced(unit_tables):
    t = unit_tables
    now = datetime(2026, 11, 20, 8)

    def note(nid, kind):
        return {"notification_id": nid, "shipment_id": "SH1", "user_id": "U1", "kind": kind, "channel": "app",
                "items": ["s|i"], "expected_from": now, "expected_to": now, "incentive_type": None,
                "incentive_value": None, "cancel_token": "t", "postpone_token": "t", "accept_token": "t",
                "dt": "2026-11-20", "run_id": "r", "created_at": now}
    t.upsert("notifications", t.frame("notifications", [note("N1", "heads_up")]))
    t.upsert("notifications", t.frame("notifications", [note("N1", "changed"), note("N2", "heads_up")]), update=False)
    assert sorted((r.notification_id, r.kind) for r in t.read("notifications").collect()) == \
        [("N1", "heads_up"), ("N2", "heads_up")]  # insert-only: N1 kept as first sent
    t.upsert("notifications", t.frame("notifications", [note("N1", "changed")]))
    assert {r.notification_id: r.kind for r in t.read("notifications").collect()}["N1"] == "changed"
    with pytest.raises(BundlecastError, match="write: upsert, not replace"):
        t.replace("notifications", t.frame("notifications", []))
    with pytest.raises(BundlecastError, match="write: replace, not upsert"):
        t.upsert("offers", t.frame("offers", []))


def test_a_rewriting_upsert_leaves_the_rows_a_merge_leaves(unit_tables):
    t = unit_tables

    def site(sid, name, tz="UTC"):
        return {"site_id": sid, "name": name, "country": "GB", "currency": "GBP", "timezone": tz,
                "dt": "2026-11-20", "_source_file": "f"}
    first = t.frame("sites", [site("S1", "one"), site("S2", "two"), site("S3", "three")])
    drop = t.frame("sites", [site("S2", "two again", "Europe/London"), site("S4", "four")])
    merged, rewritten = {}, {}
    for rewrite, out in ((False, merged), (True, rewritten)):
        t.spark.sql(f"DROP TABLE IF EXISTS {t.cfg['storage']['database']}.sites")
        shutil.rmtree(t.path("sites"), ignore_errors=True)  # each way starts from no table
        t.upsert("sites", first, rewrite=rewrite)
        t.upsert("sites", drop, rewrite=rewrite)
        out.update({r.site_id: r.asDict() for r in t.read("sites").collect()})
    assert merged == rewritten and sorted(merged) == ["S1", "S2", "S3", "S4"]
    assert merged["S2"]["name"] == "two again" and merged["S1"]["name"] == "one"
    with pytest.raises(BundlecastError, match="insert-only"):
        t.upsert("sites", drop, update=False, rewrite=True)


def test_step_runs_keep_one_row_per_date_step_and_mode_and_the_latest_watermark(unit_tables):
    from bundlecast.jobs.core.runs import StepRun, last_watermark, record

    t = unit_tables
    first = StepRun("need", "2026-11-20", "r1", "train", watermark=datetime(2026, 11, 20, 1))
    first.counts["users_scored"] += 3
    first.metrics["model"] = {"recall_at_10": 0.5}
    with first.timed("score"):
        pass
    record(t, first.finish())
    record(t, StepRun("need", "2026-11-20", "r2", "train", watermark=datetime(2026, 11, 20, 2)).finish())
    record(t, StepRun("need", "2026-11-20", "r3", "rescore", watermark=datetime(2026, 11, 20, 3)).finish())
    rows = {(r.step, r.mode): r for r in t.read("step_runs").collect()}
    assert set(rows) == {("need", "train"), ("need", "rescore")} and rows[("need", "train")].run_id == "r2"
    assert last_watermark(t, "need") == datetime(2026, 11, 20, 3)
    assert last_watermark(t, "need", modes=("train",)) == datetime(2026, 11, 20, 2)
    assert first.row(datetime(2026, 11, 20))["figures"] == {"seconds.score": 0.0, "model.recall_at_10": 0.5}


@pytest.mark.parametrize("dt", ["2026-11-20' OR '1'='1", "2026-11-20/../../etc", "20261120", "", "2026-02-30"])
def test_a_run_date_that_is_not_a_date_stops_every_step(dt):
    from bundlecast.jobs.core.errors import BundlecastError
    from bundlecast.jobs.core.runs import StepRun
    with pytest.raises(BundlecastError, match="run date must be YYYY-MM-DD"):
        StepRun("ingest", dt, "r")


def test_partition_values_are_typed_literals_never_pasted_text():
    from bundlecast.jobs.core.tables import sql_literal
    assert sql_literal("a' OR '1'='1") == "'a\\' OR \\'1\\'=\\'1'"
    with pytest.raises(ValueError):
        predicate("quarantine", {"dt": "2026-11-20' OR '1'='1"})


def test_a_table_written_by_an_earlier_release_gains_the_catalog_columns_it_lacks(unit_tables):
    """Additive schema evolution: ingestion_audit without landing_digest (as an earlier
    release wrote it) gets the column, old rows read it as null, and new rows write it."""
    from datetime import datetime

    from bundlecast.jobs.core import catalog, delta

    t = unit_tables
    path = catalog.table_path("ingestion_audit", t.cfg)
    old_ddl = ", ".join(f"`{c.name}` {c.spark_type}" for c in catalog.table("ingestion_audit").columns
                        if c.name != "landing_digest")
    row = {"dataset": "users", "dt": "2026-11-20", "run_id": "old", "files_read": 1, "files_quarantined": 0,
           "rows_read": 1, "rows_accepted": 1, "rows_quarantined": 0, "duplicates_dropped": 0, "quarantine_share": 0.0,
           "top_reasons": "{}", "expectations_passed": True, "status": "ok", "ingested_at": datetime(2026, 11, 20)}
    t.spark.createDataFrame([{k: v for k, v in row.items() if k != "dt"}], old_ddl.replace("`dt` date, ", "")) \
        .selectExpr("*", "DATE'2026-11-20' AS dt").select(*[c.split("`")[1] for c in old_ddl.split(", ")]) \
        .write.format("delta").save(path)
    delta._ENSURED.clear()
    assert "landing_digest" in t.read("ingestion_audit").columns
    assert t.read("ingestion_audit").first().landing_digest is None
    t.upsert("ingestion_audit", t.frame("ingestion_audit", [{**row, "dt": "2026-11-21", "run_id": "new",
                                                             "landing_digest": "abc"}]))
    got = {r.run_id: r.landing_digest for r in t.read("ingestion_audit").collect()}
    assert got == {"old": None, "new": "abc"}


def test_a_pinned_read_gives_a_re_run_the_rows_its_first_run_read(unit_tables):
    """The first bundles run of a date pins the reservations' version; a later reservation
    (the same night's proactive step) is not seen by a re-run of that date, but is by the
    next date's run."""
    t = unit_tables

    def reserve(rid):
        t.upsert("inventory_reservations", t.frame("inventory_reservations", [{
            "reservation_id": rid, "shipment_id": "s", "user_id": "u", "warehouse_id": "w", "site_id": "x",
            "item_id": rid, "quantity": 1, "status": "active", "dt": "2026-11-20"}]))

    reserve("r1")
    first = {r.reservation_id for r in t.pinned("inventory_reservations", "2026-11-20", "bundles", "run-1").collect()}
    reserve("r2")
    again = {r.reservation_id for r in t.pinned("inventory_reservations", "2026-11-20", "bundles", "run-2").collect()}
    nxt = {r.reservation_id for r in t.pinned("inventory_reservations", "2026-11-21", "bundles", "run-3").collect()}
    assert first == again == {"r1"} and nxt == {"r1", "r2"}
    pins = t.read("input_versions").toPandas()
    assert len(pins) == 2 and set(pins.run_id) == {"run-1", "run-3"}  # the first run's pin stays
