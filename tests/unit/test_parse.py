"""Reading one landed file on its own terms (jobs/ingest/parse.py), no Spark: every record
comes out with its line and bytes, or the file is refused with one reason."""
import codecs
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bundlecast.jobs.ingest.parse import FileRefused, csv_records, file_format, json_records, read_file

COLS = ["id", "name", "price"]


def rows(records):
    return [{c: records.values[c][i] for c in records.columns} for i in range(len(records))]


def test_rfc4180_quoted_newlines_commas_and_quotes_stay_in_one_record():
    data = b'id,name,price\r\n1,"two\r\nlines, and ""quotes""",3.5\r\n2,plain,1\r\n'
    out = csv_records(data, COLS)
    assert rows(out) == [{"id": "1", "name": 'two\r\nlines, and "quotes"', "price": "3.5"},
                         {"id": "2", "name": "plain", "price": "1"}]
    assert out.lines == [2, 4] and out.raws[0] == b'1,"two\r\nlines, and ""quotes""",3.5\r\n'


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"id,name,price\n1,x,2\n")
    assert rows(read_file(path, COLS)) == [{"id": "1", "name": "x", "price": "2"}]


def test_invalid_utf8_anywhere_marks_its_record_and_only_it():
    body = b"".join(b"%d,name%d,1\n" % (i, i) for i in range(2000))  # far past the first 8 KB
    out = csv_records(b"id,name,price\n" + body + b"9999,caf\xe9,2\n", COLS)
    assert out.errors[:-1] == [None] * 2000
    assert out.errors[-1] == "invalid_encoding:utf-8" and out.values["id"][-1] is None
    assert out.raws[-1] == b"9999,caf\xe9,2\n" and out.texts[-1] == "9999,caf\\xe9,2\n"


@pytest.mark.parametrize("data, reason", [
    (b"id,name,id\n1,x,2\n", r"repeats column\(s\) id"),
    (b'{"id": "1", "name": "x"}\n', "JSON text in a .csv file"),
    (b"", "empty CSV file"),
    (b"foo,bar\n1,2\n", "none of the contract's columns"),
])
def test_a_csv_file_that_cannot_be_its_dataset_is_refused_with_a_reason(data, reason):
    with pytest.raises(FileRefused, match=reason):
        csv_records(data, COLS)


def test_utf16_text_is_refused_as_a_file(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes("id,name\n1,x\n".encode("utf-16"))
    with pytest.raises(FileRefused, match="UTF-16"):
        read_file(path, COLS)


@pytest.mark.parametrize("name", ["_SUCCESS", ".part-0.csv.crc", "x.xlsx", "noext"])
def test_hidden_marker_and_unknown_files_are_refused_by_name(tmp_path, name):
    with pytest.raises(FileRefused):
        file_format(tmp_path / name)


def test_csv_field_count_and_quoting_errors_are_malformed_records_not_file_errors():
    out = csv_records(b'id,name,price\n1,x\n2,"a"b,3\n3,y,4\n', COLS)
    assert [e.split(" ")[0] if e else None for e in out.errors] == ["malformed_record:csv", "malformed_record:csv",
                                                                    None]
    assert out.values["id"][2] == "3"


@pytest.mark.parametrize("line, reason", [
    (b'{"id": "1"} {"id": "2"}', "malformed_record:more than one JSON value on the line"),
    (b'[1, 2]', "malformed_record:a JSON list, not an object"),
    (b'{"id": "1", "id": "2"}', "malformed_record:json repeats key id"),
    (b'{"id": "1", "na', "malformed_record:not valid JSON"),
    (b'{"id": "caf\xe9"}', "invalid_encoding:utf-8"),
])
def test_one_json_object_per_line_or_the_line_is_quarantined(line, reason):
    out = json_records(b'{"id": "0"}\n' + line + b"\n\n", COLS)
    assert out.errors == [None, reason] and out.lines == [1, 2] and out.raws[1] == line


def test_json_numbers_keep_their_text_so_the_contract_sees_1e400_and_nan():
    out = json_records(b'{"id": 1, "price": 1e400, "name": true}\n{"id": 2, "price": NaN, "name": {"a": 1}}\n', COLS)
    assert rows(out) == [{"id": "1", "name": "true", "price": "1e400"}, {"id": "2", "name": '{"a":1}', "price": "NaN"}]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",))), min_size=3, max_size=3),
                max_size=20))
def test_any_csv_written_by_the_csv_module_reads_back_exactly(values):
    """Property: whatever the values (quotes, commas, newlines, NUL, any Unicode), a file
    written per RFC 4180 reads back value for value, one record per row, none lost."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLS)
    writer.writerows(values)
    out = csv_records(buf.getvalue().encode(), COLS)
    assert len(out) == len(values) and all(e is None for e in out.errors)
    assert [[out.values[c][i] for c in COLS] for i in range(len(out))] == values


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(COLS), st.one_of(st.none(), st.text(), st.integers(),
                                                                    st.booleans())), max_size=20))
def test_any_json_lines_file_reads_back_one_record_per_object(objects):
    data = "\n".join(json.dumps(o) for o in objects).encode()
    out = json_records(data, COLS)
    assert len(out) == len(objects) and all(e is None for e in out.errors)
