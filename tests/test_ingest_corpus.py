"""The bad-input corpus (tests/corpus.py) mixed into one day's drop, ingested for real:
every bad row quarantined with its reason, every good row published, nothing lost, every
table still readable by delta-rs and exportable."""
from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import pytest

from bundlecast.jobs.core import catalog

BASE_DT, DT = "2026-11-20", "2026-11-21"
DATASETS = ["items", "events", "orders", "inventory"]
KEYS = {"events": ["event_id"], "items": ["site_id", "item_id"], "orders": ["order_id"],
        "inventory": ["snapshot_ts", "warehouse_id", "site_id", "item_id"]}


@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory):
    import corpus as hostile

    from bundlecast.jobs.core.config import load_config
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.tools.demo_world import generate

    home = tmp_path_factory.mktemp("corpus")
    cfg = load_config(state_home=home)
    cfg["storage"]["database"] = "bundlecast_corpus"
    cfg["ingestion"]["quarantine_threshold"] = 0.95
    spark.sql("CREATE DATABASE IF NOT EXISTS bundlecast_corpus")
    raw = Path(cfg["storage"]["raw"])
    generate(raw, home / "truth.json", "tiny", 7, BASE_DT)
    ingest.run(spark, BASE_DT, ["sites", "warehouses", "items", "users"], cfg=cfg, with_expectations=False,
               progress=lambda m: None)
    drop = hostile.build(raw, BASE_DT, DT)
    audits = {a.dataset: a for a in ingest.run(spark, DT, DATASETS, run_id="corpus-run", cfg=cfg,
                                               progress=lambda m: None)}
    return {"cfg": cfg, "drop": drop, "audits": audits}


def _table(spark, name, cfg):
    return spark.read.format("delta").load(catalog.table_path(name, cfg))


def _quarantine(spark, cfg):
    rows = _table(spark, "quarantine", cfg).filter(f"dt = DATE'{DT}'").collect()
    return {(r.dataset, Path(r._source_file).name, r.line): r for r in rows}


def test_accounting_balances_per_dataset_and_matches_the_records_landed(corpus):
    drop = corpus["drop"]
    for name in DATASETS:
        a = corpus["audits"][name]
        want = Counter("published" if e.outcome == "published" else "duplicate" if e.outcome == "duplicate"
                       else "quarantined" for e in drop.expect if e.dataset == name)
        assert a.balanced() and a.status == "ok", (name, a)
        assert a.rows_read == sum(want.values()), name
        assert (a.rows_accepted, a.rows_quarantined, a.duplicates_dropped) == \
            (want["published"], want["quarantined"], want["duplicate"]), name
        refused = sum(1 for d, _ in drop.refused if d == name)
        assert a.files_quarantined == refused, name


def test_every_bad_row_is_quarantined_with_its_reason_and_no_good_row_is(corpus, spark):
    quarantined = _quarantine(spark, corpus["cfg"])
    expected_bad = [e for e in corpus["drop"].expect if e.outcome not in ("published", "duplicate")]
    for e in expected_bad:
        row = quarantined.get((e.dataset, e.file, e.line))
        assert row is not None, f"{e.category}: {e.file}:{e.line} not in quarantine"
        assert any(r.startswith(e.outcome) for r in row.reasons), (e.category, row.reasons)
        assert row.run_id == "corpus-run"
    assert len(quarantined) == len(expected_bad), "a row was quarantined that should not have been"


def test_the_quarantine_keeps_the_exact_bytes_and_a_readable_text(corpus, spark):
    raw = Path(corpus["cfg"]["storage"]["raw"])
    for (dataset, name, line), row in _quarantine(spark, corpus["cfg"]).items():
        exact = base64.b64decode(row.record_base64)
        if name.endswith(".jsonl"):
            assert exact == (raw / dataset / f"dt={DT}" / name).read_bytes().split(b"\n")[line - 1]
        assert row.record  # always valid text: invalid bytes shown as \xNN
    bad_byte = next(r for k, r in _quarantine(spark, corpus["cfg"]).items() if "invalid_encoding:utf-8" in r.reasons
                    and k[0] == "events")
    assert b"caf\xe9" in base64.b64decode(bad_byte.record_base64) and "caf\\xe9" in bad_byte.record


def test_every_good_row_is_published_and_no_bad_one(corpus, spark):
    cfg = corpus["cfg"]
    for name in DATASETS:
        published = {e.key for e in corpus["drop"].expect if e.dataset == name and e.outcome == "published"}
        frame = _table(spark, name, cfg)
        if name != "items":
            frame = frame.filter(f"dt = DATE'{DT}'")
        else:
            frame = frame.filter("item_id LIKE 'CI%'")
        keys = ["|".join(map(str, r)) for r in frame.select(*KEYS[name]).collect()]
        assert len(keys) == len(set(keys)) == len(published), name
        assert set(keys) == published, name


def test_rfc4180_values_arrive_whole(corpus, spark):
    item = _table(spark, "items", corpus["cfg"]).filter("item_id = 'CI001'").first()
    assert item.description == 'two lines,\nwith "quotes", commas\r\nand a CRLF'


def test_unreadable_files_are_listed_with_their_reason(corpus, spark):
    rows = _table(spark, "quarantine_files", corpus["cfg"]).filter(f"dt = DATE'{DT}'").collect()
    got = {(r.dataset, Path(r.source_file).name): r.reason for r in rows}
    assert set(got) == set(corpus["drop"].refused)
    for key, fragment in corpus["drop"].refused.items():
        assert fragment in got[key] and "\n" not in got[key], (key, got[key])


def test_every_table_stays_readable_by_delta_rs_and_exportable(corpus, tmp_path):
    from deltalake import DeltaTable

    from bundlecast.jobs.export.job import export_table

    cfg = corpus["cfg"]
    for name in DATASETS + ["quarantine", "quarantine_files", "ingestion_audit"]:
        DeltaTable(catalog.table_path(name, cfg)).to_pyarrow_table()
    manifest = export_table("events", DT, target=f"file://{tmp_path}/exports", cfg=cfg)
    assert manifest["row_count"] == corpus["audits"]["events"].rows_accepted


def test_a_rerun_leaves_the_same_rows(corpus, spark):
    from bundlecast.jobs.ingest import job as ingest

    before = sorted(_quarantine(spark, corpus["cfg"]))
    ingest.run(spark, DT, ["events"], run_id="corpus-rerun", cfg=corpus["cfg"], skip_unchanged=False,
               progress=lambda m: None)
    assert sorted(_quarantine(spark, corpus["cfg"])) == before


def test_audit_reasons_name_every_category(corpus):
    reasons = json.loads(corpus["audits"]["events"].top_reasons)
    assert "too_early:event_ts" in reasons and reasons["too_early:event_ts"] == 2


def test_one_failing_dataset_stops_neither_the_others_nor_the_audit(spark, tmp_path):
    """order_lines cannot be checked (its required reference, orders, was never ingested):
    it is not published and the run fails naming it, but sites is published and the audit
    holds both."""
    from bundlecast.jobs.core.config import load_config
    from bundlecast.jobs.core.errors import DataQualityError
    from bundlecast.jobs.ingest import job as ingest
    from bundlecast.jobs.tools.demo_world import generate

    cfg = load_config(state_home=tmp_path)
    cfg["storage"]["database"] = "bundlecast_isolation"
    spark.sql("CREATE DATABASE IF NOT EXISTS bundlecast_isolation")
    generate(Path(cfg["storage"]["raw"]), tmp_path / "truth.json", "tiny", 3, BASE_DT)
    with pytest.raises(DataQualityError, match="order_lines: not published: .*ingest orders first") as err:
        ingest.run(spark, BASE_DT, ["sites", "order_lines"], cfg=cfg, with_expectations=False, progress=lambda m: None)
    assert "\n" not in str(err.value)
    audit = {r.dataset: r for r in _table(spark, "ingestion_audit", cfg).collect()}
    assert audit["sites"].status == "ok" and audit["order_lines"].status == "error"
    assert _table(spark, "sites", cfg).count() == audit["sites"].rows_accepted > 0


def test_staged_records_are_removed_after_the_run(corpus):
    staged = Path(corpus["cfg"]["home"]) / "work" / "ingest"
    assert not staged.exists() or not any(staged.iterdir())
