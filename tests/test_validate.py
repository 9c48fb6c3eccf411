"""Validation transforms on a few explicit rows: every contract rule and its reason."""
import pytest

from bundlecast.jobs.core.catalog import Column, DatasetSpec, Reference
from bundlecast.jobs.ingest.extract import CORRUPT
from bundlecast.jobs.ingest.transform import deduplicate, validate

SPEC = DatasetSpec(
    name="lines", description="", keys=("order_id", "line_no"), load="partition",
    columns=(Column("order_id", "string", required=True), Column("line_no", "int", required=True, min=1),
             Column("item_id", "string", required=True), Column("quantity", "int", required=True, min=1),
             Column("unit_price", "double", min=0), Column("kind", "string", allowed=("a", "b")),
             Column("paid_ts", "timestamp"), Column("gift", "boolean")),
    refs=(Reference(("item_id",), "items", ("item_id",)),))
RAW = "order_id string, line_no string, item_id string, quantity string, unit_price string, kind string, " \
      "paid_ts string, gift string, _corrupt_record string, _source_file string"


def _check(spark, rows):
    raw = spark.createDataFrame(rows, RAW)
    items = spark.createDataFrame([("I1",), ("I2",)], "item_id string")
    out = validate(raw, SPEC, {"unknown:item_id": items})
    return {r["order_id"] or r["record"]: r for r in out.collect()}


def test_valid_row_is_typed_and_has_no_reason(spark):
    rows = _check(spark, [("O1", "1", "I1", "2", "3.50", "a", "2026-11-20T10:00:00+02:00", "true", None, "f")])
    row = rows["O1"]
    assert row["_reasons"] == []
    assert row["line_no"] == 1 and row["quantity"] == 2 and row["unit_price"] == 3.5 and row["gift"] is True
    assert str(row["paid_ts"]) == "2026-11-20 08:00:00"  # offset converted to UTC


@pytest.mark.parametrize("row, reason", [
    (("O2", "1", "I1", "two", None, None, None, None, None, "f"), "bad_type:quantity"),
    (("O3", "1", "I1", "1.5", None, None, None, None, None, "f"), "bad_type:quantity"),
    (("O4", "1", "I1", "-3", None, None, None, None, None, "f"), "below_min:quantity"),
    (("O5", "1", None, "1", None, None, None, None, None, "f"), "missing:item_id"),
    (("O6", "1", "I1", "1", None, "z", None, None, None, "f"), "not_allowed:kind"),
    (("O7", "1", "I1", "1", None, None, "2026-11-20 10:00:00", None, None, "f"), "timestamp_without_zone:paid_ts"),
    (("O8", "1", "I9", "1", None, None, None, None, None, "f"), "unknown:item_id"),
    (("O9", "1", "I1", "1", "-1", None, None, None, None, "f"), "below_min:unit_price"),
    (("O10", "1", "I1", "1", None, None, None, "maybe", None, "f"), "bad_type:gift"),
    (("O11", "1", "I1", "1", None, None, "2026-13-45T99:00:00Z", None, None, "f"), "bad_type:paid_ts"),
])
def test_each_rule_gives_its_reason(spark, row, reason):
    result = _check(spark, [row])[row[0]]
    assert result["_reasons"] == [reason]


def test_several_broken_rules_are_all_reported(spark):
    rows = _check(spark, [("O1", "0", "I9", "-1", "x", None, None, None, None, "f")])
    assert set(rows["O1"]["_reasons"]) == {"below_min:line_no", "below_min:quantity", "bad_type:unit_price",
                                            "unknown:item_id"}


def test_malformed_record_keeps_its_raw_text(spark):
    rows = _check(spark, [(None, None, None, None, None, None, None, None, '{"order_id": "O1", "line', "f")])
    row = rows['{"order_id": "O1", "line']
    assert row["_reasons"] == ["malformed_record"]


def test_deduplicate_keeps_one_row_per_key_from_the_last_file(spark):
    raw = spark.createDataFrame([("O1", 1, "a.csv", "r1"), ("O1", 1, "b.csv", "r2"), ("O1", 2, "a.csv", "r3")],
                                "order_id string, line_no int, _source_file string, record string")
    out = sorted((r.order_id, r.line_no, r._source_file) for r in deduplicate(raw, ["order_id", "line_no"]).collect())
    assert out == [("O1", 1, "b.csv"), ("O1", 2, "a.csv")]
    assert CORRUPT == "_corrupt_record"
