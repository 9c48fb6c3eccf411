"""Validation transforms on a few explicit rows: every contract rule and its reason."""
import pytest

from bundlecast.jobs.core.catalog import Column, DatasetSpec, Limits, Reference
from bundlecast.jobs.ingest.transform import deduplicate, validate

SPEC = DatasetSpec(
    name="lines", description="", keys=("order_id", "line_no"), load="partition",
    columns=(Column("order_id", "string", required=True), Column("line_no", "int", required=True, min=1),
             Column("item_id", "string", required=True), Column("quantity", "int", required=True, min=1),
             Column("unit_price", "double", min=0), Column("kind", "string", allowed=("a", "b")),
             Column("paid_ts", "timestamp"), Column("gift", "boolean"), Column("note", "string", text=True),
             Column("ship_on", "date", days_ahead=14)),
    refs=(Reference(("item_id",), "items", ("item_id",)),))
RAW = "order_id string, line_no string, item_id string, quantity string, unit_price string, kind string, " \
      "paid_ts string, gift string, note string, ship_on string, _source_file string, _line long, _raw binary, " \
      "_raw_text string, _parse_error string"
LANDED = "2026-11-20"
BOUNDS = Limits(earliest="2000-01-01", days_ahead=1, string_length=20, text_length=50)


def _row(order_id, line_no="1", item_id="I1", quantity="1", unit_price=None, kind=None, paid_ts=None, gift=None,
         note=None, ship_on=None, error=None):
    return (order_id, line_no, item_id, quantity, unit_price, kind, paid_ts, gift, note, ship_on, "f", 1,
            (order_id or "").encode(), None, error)


def _check(spark, rows):
    raw = spark.createDataFrame(rows, RAW)
    items = spark.createDataFrame([("I1",), ("I2",)], "item_id string")
    out = validate(raw, SPEC, LANDED, {"unknown:item_id": items}, BOUNDS)
    # A year-0001 value cannot become a Python datetime: only rows without reasons are
    # collected whole, the way ingestion only publishes those.
    out = out.selectExpr("*", "CASE WHEN size(_reasons) = 0 THEN paid_ts END AS paid").drop("paid_ts") \
        .withColumnRenamed("paid", "paid_ts")
    return {r["order_id"] or r["_raw"].decode(): r for r in out.collect()}


def test_valid_row_is_typed_and_has_no_reason(spark):
    rows = _check(spark, [_row("O1", "1", "I1", "2", "3.50", "a", "2026-11-20T10:00:00+02:00", "true",
                               "a note\nwith a line", "2026-12-01")])
    row = rows["O1"]
    assert row["_reasons"] == []
    assert row["line_no"] == 1 and row["quantity"] == 2 and row["unit_price"] == 3.5 and row["gift"] is True
    assert str(row["paid_ts"]) == "2026-11-20 08:00:00"  # offset converted to UTC


@pytest.mark.parametrize("row, reason", [
    (_row("O2", quantity="two"), "bad_type:quantity"),
    (_row("O3", quantity="1.5"), "bad_type:quantity"),
    (_row("O4", quantity="-3"), "below_min:quantity"),
    (_row("O5", item_id=None), "missing:item_id"),
    (_row("O6", kind="z"), "not_allowed:kind"),
    (_row("O7", paid_ts="2026-11-20 10:00:00"), "timestamp_without_zone:paid_ts"),
    (_row("O8", item_id="I9"), "unknown:item_id"),
    (_row("O9", unit_price="-1"), "below_min:unit_price"),
    (_row("O10", gift="maybe"), "bad_type:gift"),
    (_row("O11", paid_ts="2026-13-45T99:00:00Z"), "bad_type:paid_ts"),
    (_row("O12", unit_price="NaN"), "not_finite:unit_price"),
    (_row("O13", unit_price="Infinity"), "not_finite:unit_price"),
    (_row("O14", unit_price="1e400"), "not_finite:unit_price"),
    (_row("O15", paid_ts="0001-01-01T00:00:00Z"), "too_early:paid_ts"),
    (_row("O16", paid_ts="1900-01-01T00:00:00Z"), "too_early:paid_ts"),
    (_row("O17", paid_ts="2099-01-01T00:00:00Z"), "too_late:paid_ts"),
    (_row("O18", paid_ts="2026-11-22T00:00:00Z"), "too_late:paid_ts"),      # landing date + 2 days
    (_row("O19", ship_on="2026-12-05"), "too_late:ship_on"),               # past its 14 days ahead
    (_row("O20", ship_on="1999-12-31"), "too_early:ship_on"),
    (_row("O21", kind="a" * 21), "too_long:kind"),
    (_row("O22", note="x" * 51), "too_long:note"),
    (_row("O23", note="nul\x00inside"), "control_character:note"),
    (_row("O24", item_id="I1\x00"), "control_character:item_id"),
    (_row("O25", item_id="I1\u0007"), "control_character:item_id"),
])
def test_each_rule_gives_its_reason(spark, row, reason):
    result = _check(spark, [row])[row[0]]
    assert reason in result["_reasons"] and len(result["_reasons"]) <= 2, result["_reasons"]


def test_the_last_allowed_day_passes(spark):
    rows = _check(spark, [_row("O1", paid_ts="2026-11-21T23:59:59Z", ship_on="2026-12-04")])
    assert rows["O1"]["_reasons"] == []


def test_several_broken_rules_are_all_reported(spark):
    rows = _check(spark, [_row("O1", "0", "I9", "-1", "x")])
    assert set(rows["O1"]["_reasons"]) == {"below_min:line_no", "below_min:quantity", "bad_type:unit_price",
                                            "unknown:item_id"}


def test_a_record_that_could_not_be_parsed_keeps_only_that_reason(spark):
    rows = _check(spark, [_row(None, None, None, None, error="malformed_record:not valid JSON")])
    assert rows[""]["_reasons"] == ["malformed_record:not valid JSON"]


def test_deduplicate_keeps_one_row_per_key_from_the_last_file_and_line(spark):
    raw = spark.createDataFrame([("O1", 1, "a.csv", 1), ("O1", 1, "b.csv", 1), ("O1", 2, "a.csv", 2),
                                 ("O1", 2, "a.csv", 7)],
                                "order_id string, line_no int, _source_file string, _line long")
    out = sorted((r.order_id, r.line_no, r._source_file, r._line)
                 for r in deduplicate(raw, ["order_id", "line_no"]).collect())
    assert out == [("O1", 1, "b.csv", 1), ("O1", 2, "a.csv", 7)]
