"""Ingestion on real files: contract sources pass, bad drops are accounted for row by row,
re-runs are idempotent, a bad dataset fails with one clear message."""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bundlecast.jobs.core import catalog
from bundlecast.jobs.core.errors import DataQualityError
from bundlecast.jobs.ingest import job as ingest


def _silver(spark, name, cfg, dt=None):
    df = spark.read.format("delta").load(catalog.table_path(name, cfg))
    return df.filter(f"dt = DATE'{dt}'") if dt else df


def test_generated_world_passes_the_contract(tiny_world, spark, cfg):
    for name, audit in tiny_world["audits"].items():
        assert audit.rows_read == tiny_world["rows"][name], name
        assert audit.rows_quarantined == 0 and audit.duplicates_dropped == 0, (name, audit.top_reasons)
        assert audit.expectations_passed, name
        assert audit.balanced()
    assert _silver(spark, "events", cfg).count() == tiny_world["rows"]["events"]


def test_tables_are_in_the_persistent_catalog_and_readable_by_delta_rs(tiny_world, spark, cfg):
    from deltalake import DeltaTable
    spark_count = spark.sql("SELECT COUNT(*) AS n FROM bundlecast.orders").first().n
    assert spark_count == tiny_world["rows"]["orders"]
    assert DeltaTable(catalog.table_path("orders", cfg)).to_pyarrow_dataset().count_rows() == spark_count


def test_rerun_leaves_the_same_rows(tiny_world, spark, cfg):
    before = {t: sorted(map(tuple, _silver(spark, t, cfg).drop("_source_file").collect())) for t in ("users", "events")}
    ingest.run(spark, tiny_world["date"], ["users", "events"], cfg=cfg, with_expectations=False, skip_unchanged=False,
               progress=lambda m: None)
    after = {t: sorted(map(tuple, _silver(spark, t, cfg).drop("_source_file").collect())) for t in ("users", "events")}
    assert before == after


def test_an_unchanged_landing_is_skipped_and_a_changed_one_is_read_with_what_references_it(tiny_world, spark, cfg):
    """The hourly re-reads only what changed: a dataset whose files (and contract, suite,
    settings, referenced datasets) are as its last ok run found them is skipped; a touched
    file, or new keys in a referenced dataset, make it read again."""
    import os

    dt = tiny_world["date"]

    def ingest_run(run_cfg=cfg, **kw):
        lines = []
        ingest.run(spark, dt, ["users", "feedback"], cfg=run_cfg, with_expectations=False, progress=lines.append, **kw)
        return {ln.split()[0]: ("skipped" if ln.endswith("skipped") else "read") for ln in lines}

    def audit_runs():
        return {r.dataset: r.run_id for r in spark.read.format("delta").load(catalog.table_path("ingestion_audit", cfg))
                .filter(f"dt = DATE'{dt}' AND dataset IN ('users', 'feedback')").collect()}

    ingest_run(skip_unchanged=False)   # the digests of this very setting (no expectations)
    runs = audit_runs()
    rows = _silver(spark, "feedback", cfg, dt).count()
    assert ingest_run() == {"users": "skipped", "feedback": "skipped"}
    assert audit_runs() == runs and _silver(spark, "feedback", cfg, dt).count() == rows
    one_at_a_time = {**cfg, "ingestion": {**cfg["ingestion"], "parallel_datasets": 1}}   # how, not what
    assert ingest_run(one_at_a_time) == {"users": "skipped", "feedback": "skipped"}

    feedback_file = next((Path(cfg["storage"]["raw"]) / "feedback" / f"dt={dt}").iterdir())
    st = feedback_file.stat()
    os.utime(feedback_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # rewritten in place
    assert ingest_run() == {"users": "skipped", "feedback": "read"}
    assert audit_runs()["users"] == runs["users"] and audit_runs()["feedback"] != runs["feedback"]
    assert _silver(spark, "feedback", cfg, dt).count() == rows

    users_file = next((Path(cfg["storage"]["raw"]) / "users" / f"dt={dt}").iterdir())
    st = users_file.stat()
    os.utime(users_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert ingest_run() == {"users": "read", "feedback": "read"}   # feedback references users
    assert ingest_run(skip_unchanged=False) == {"users": "read", "feedback": "read"}


BAD_DATE = "2026-11-21"


@pytest.fixture(scope="module")
def bad_drop(tiny_world, spark, cfg):
    """A drop of order_lines with every kind of bad input mixed into good rows."""
    folder = Path(cfg["storage"]["raw"]) / "order_lines" / f"dt={BAD_DATE}"
    folder.mkdir(parents=True, exist_ok=True)
    good = spark.read.format("delta").load(catalog.table_path("order_lines", cfg)).limit(20).toPandas()
    cols = catalog.dataset("order_lines").column_names
    good = good[cols]
    good.iloc[:10].to_csv(folder / "a-good.csv", index=False)
    lines = [json.dumps({c: (v.item() if hasattr(v, "item") else v) for c, v in row.items()})
             for row in good.iloc[10:15].to_dict("records")]
    bad = [
        {**json.loads(lines[0]), "line_no": 91, "quantity": "lots"},          # wrong type
        {**json.loads(lines[0]), "line_no": 92, "quantity": -2},              # negative quantity
        {**json.loads(lines[0]), "line_no": 93, "item_id": "NOPE"},           # unknown id
        {**json.loads(lines[0]), "line_no": 94, "order_id": "O-UNKNOWN"},     # unknown order
    ]
    (folder / "b-mixed.jsonl").write_text("\n".join(lines + [json.dumps(b) for b in bad] + [lines[0]]) + "\n"
                                           + '{"order_id": "O1", "line_no": 1, "site_')  # duplicate + truncated line
    missing = good.iloc[15:18].drop(columns=["unit_price"])                   # missing required column
    missing.to_csv(folder / "c-missing-column.csv", index=False)
    pq.write_table(pa.Table.from_pandas(good.iloc[18:20], preserve_index=False), folder / "d-good.parquet")
    (folder / "e-truncated.parquet").write_bytes((folder / "d-good.parquet").read_bytes()[:60])
    (folder / "f-wrong-format.xlsx").write_bytes(b"PK\x03\x04 not a contract format")
    old = cfg["ingestion"]["quarantine_threshold"]
    cfg["ingestion"]["quarantine_threshold"] = 0.9
    try:
        audits = ingest.run(spark, BAD_DATE, ["order_lines"], run_id="bad-run", cfg=cfg, progress=lambda m: None)
    finally:
        cfg["ingestion"]["quarantine_threshold"] = old
    return audits[0]


def test_every_row_is_accepted_quarantined_or_a_counted_duplicate(bad_drop, spark, cfg):
    a = bad_drop
    # 10 + 5 good, 4 bad, 1 duplicate, 1 truncated line, 3 missing price, 2 good parquet
    assert a.rows_read == 10 + 5 + 4 + 1 + 1 + 3 + 2
    assert a.rows_accepted == 17 and a.duplicates_dropped == 1 and a.rows_quarantined == 8
    assert a.balanced()
    assert a.files_read == 6 and a.files_quarantined == 2
    audit = spark.read.format("delta").load(catalog.table_path("ingestion_audit", cfg)) \
        .filter(f"dataset = 'order_lines' AND dt = DATE'{BAD_DATE}'").first()
    assert audit.rows_read == audit.rows_accepted + audit.rows_quarantined + audit.duplicates_dropped


def test_quarantine_keeps_each_row_with_its_reason_and_source(bad_drop, spark, cfg):
    q = spark.read.format("delta").load(catalog.table_path("quarantine", cfg)) \
        .filter(f"dataset = 'order_lines' AND dt = DATE'{BAD_DATE}'").collect()
    reasons = sorted(r for row in q for r in row.reasons)
    assert reasons == sorted(["bad_type:quantity", "below_min:quantity", "unknown:site_id+item_id",
                              "unknown:order_id", "malformed_record:not valid JSON"] + ["missing:unit_price"] * 3)
    assert all(row.run_id == "bad-run" and row._source_file and row.record for row in q)
    files = spark.read.format("delta").load(catalog.table_path("quarantine_files", cfg)) \
        .filter(f"dt = DATE'{BAD_DATE}'").collect()
    by_name = {Path(f.source_file).name: f.reason for f in files}
    assert set(by_name) == {"e-truncated.parquet", "f-wrong-format.xlsx"}
    assert "Parquet" in by_name["e-truncated.parquet"] and "unsupported file format" in by_name["f-wrong-format.xlsx"]


def test_accepted_rows_reach_silver_once(bad_drop, spark, cfg):
    assert _silver(spark, "order_lines", cfg, BAD_DATE).count() == bad_drop.rows_accepted


def test_threshold_fails_with_dataset_count_and_reasons(bad_drop, spark, cfg):
    with pytest.raises(DataQualityError) as err:
        ingest.run(spark, BAD_DATE, ["order_lines"], cfg=cfg, with_expectations=False, progress=lambda m: None)
    message = str(err.value)
    assert message.startswith("order_lines: 8 of 26 rows quarantined")
    assert "missing:unit_price (3)" in message and "\n" not in message


def test_expectation_failures_are_quarantined(tiny_world, spark, cfg):
    folder = Path(cfg["storage"]["raw"]) / "items" / "dt=2026-11-22"
    folder.mkdir(parents=True, exist_ok=True)
    items = spark.read.format("delta").load(catalog.table_path("items", cfg)).limit(3).toPandas()
    items = items[catalog.dataset("items").column_names]
    items.loc[0, "price"] = 250000.0  # passes the contract (>= 0), fails the GX plausibility rule
    items.to_json(folder / "items.jsonl", orient="records", lines=True)
    cfg["ingestion"]["quarantine_threshold"] = 0.5
    try:
        audit = ingest.run(spark, "2026-11-22", ["items"], cfg=cfg, progress=lambda m: None)[0]
    finally:
        cfg["ingestion"]["quarantine_threshold"] = 0.05
    assert audit.rows_quarantined == 1 and audit.rows_accepted == 2 and not audit.expectations_passed
    assert "expectation:expect_column_values_to_be_between:price" in audit.top_reasons


def test_online_retail_import_passes_the_contract(spark, cfg, tmp_path):
    from conftest import SHARED_DATA

    from bundlecast.jobs.tools.import_online_retail import import_online_retail

    source = SHARED_DATA / "online_retail" / "online_retail_2010_2011.csv.gz"
    if not source.exists():
        pytest.skip("shared data not present")
    world = dict(cfg, storage=dict(cfg["storage"], raw=str(tmp_path / "raw"),
                                   warehouse=str(tmp_path / "wh")), ingestion=dict(cfg["ingestion"], quarantine_threshold=0.2))
    counts = import_online_retail(source, tmp_path / "raw", "2011-12-10", limit=4000)
    audits = {a.dataset: a for a in ingest.run(spark, "2011-12-10", list(counts), cfg=world,
                                                with_expectations=False, progress=lambda m: None)}
    for name, n in counts.items():
        a = audits[name]
        assert a.rows_read == n and a.balanced(), name
    # Only the documented rejections: adjustments with negative quantity or zero price.
    reasons = set()
    for a in audits.values():
        reasons |= set(json.loads(a.top_reasons))
    assert reasons <= {"below_min:quantity", "below_min:unit_price", "unknown:order_id", "bad_type:unit_price"}, reasons
    assert audits["orders"].rows_quarantined == 0 and audits["items"].rows_quarantined == 0
    cancelled = spark.read.format("delta").load(f"{tmp_path}/wh/silver/orders").filter("status = 'cancelled'").count()
    assert cancelled > 0


def test_a_fixed_drop_empties_its_quarantine_and_a_clean_date_commits_nothing(bad_drop, tiny_world, spark, cfg,
                                                                              tmp_path):
    """Re-ingesting a date after upstream fixed its files leaves no stale quarantine rows;
    a date that never had a rejected row costs no quarantine commit at all."""
    quarantine = catalog.table_path("quarantine", cfg)
    folder = Path(cfg["storage"]["raw"]) / "order_lines" / f"dt={BAD_DATE}"
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("b-mixed.jsonl", "c-missing-column.csv", "e-truncated.parquet", "f-wrong-format.xlsx"):
        (folder / name).rename(moved / name)
    try:
        ingest.run(spark, BAD_DATE, ["order_lines"], cfg=cfg, with_expectations=False, progress=lambda m: None)
        left = spark.read.format("delta").load(quarantine).filter(f"dataset = 'order_lines' AND dt = DATE'{BAD_DATE}'")
        assert left.count() == 0
    finally:
        for path in moved.iterdir():
            path.rename(folder / path.name)
    from delta.tables import DeltaTable

    version = DeltaTable.forPath(spark, quarantine).history(1).first().version
    ingest.run(spark, tiny_world["date"], ["users"], cfg=cfg, with_expectations=False, skip_unchanged=False,
               progress=lambda m: None)
    assert DeltaTable.forPath(spark, quarantine).history(1).first().version == version


def test_an_hourly_cut_off_reads_the_rows_before_it_and_defers_the_rest(tiny_world, spark, cfg):
    """``--until`` (the hourly's interval end): rows dated at or after it, and the lines of
    such orders, wait for a later run: counted as deferred, neither published nor
    quarantined; a run without a cut-off (the nightly) publishes them all again."""
    from pyspark.sql import functions as F

    dt, names = tiny_world["date"], ["orders", "order_lines", "events"]
    full = {n: _silver(spark, n, cfg, dt).count() for n in names}
    times = sorted(r.order_ts for r in _silver(spark, "orders", cfg, dt).select("order_ts").collect())
    cut = times[len(times) // 2]
    until = cut.isoformat() + "+00:00"
    late_orders = {r.order_id for r in _silver(spark, "orders", cfg, dt).filter(F.col("order_ts") >= F.lit(cut))
                   .select("order_id").collect()}
    late_lines = _silver(spark, "order_lines", cfg, dt).filter(F.col("order_id").isin(*late_orders)).count()
    late_events = _silver(spark, "events", cfg, dt).filter(F.col("event_ts") >= F.lit(cut)).count()
    try:
        audits = {a.dataset: a for a in ingest.run(spark, dt, names, cfg=cfg, with_expectations=False, until=until,
                                                   progress=lambda m: None)}
        assert (audits["orders"].rows_deferred, audits["order_lines"].rows_deferred,
                audits["events"].rows_deferred) == (len(late_orders), late_lines, late_events)
        for name in names:
            a = audits[name]
            assert a.rows_quarantined == 0 and a.balanced(), (name, a.top_reasons)
            assert _silver(spark, name, cfg, dt).count() == full[name] - a.rows_deferred == a.rows_accepted, name
        assert _silver(spark, "orders", cfg, dt).filter(F.col("order_ts") >= F.lit(cut)).count() == 0
        with pytest.raises(Exception, match="time with its zone"):
            ingest.run(spark, dt, names, cfg=cfg, until="2026-11-20 10:00", progress=lambda m: None)
    finally:  # the nightly's run: everything, for the tests after this one
        again = {a.dataset: a for a in ingest.run(spark, dt, names, cfg=cfg, with_expectations=False,
                                                  progress=lambda m: None)}
    assert {n: _silver(spark, n, cfg, dt).count() for n in names} == full
    assert all(again[n].rows_deferred == 0 for n in names)
