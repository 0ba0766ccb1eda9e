"""Plaintext records <-> Arrow: one read_json for a group, isolation of bad records, limits."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers import records
from enclave_workers.records import (
    INPUT_SCHEMA,
    RecordFormatError,
    RecordLimitError,
    conform_to_input_schema,
    json_read_schema,
    parse_records,
    row_limit_problems,
    select_columns,
    table_from_ipc,
    table_to_ipc,
    table_to_json_records,
)
from tests.enclave_workers.broker_env import person


def _encoded(index: int, region: str = "eu") -> bytes:
    return json.dumps(person(index, region)).encode()


def test_good_records_parse_into_one_table_in_order() -> None:
    parsed = parse_records([_encoded(i) for i in range(50)])
    assert parsed.failures == {}
    assert parsed.row_sources == tuple(range(50))
    assert parsed.table.schema == INPUT_SCHEMA
    assert parsed.table.column("customer_id").to_pylist() == [
        f"cust-secret-{i:05d}" for i in range(50)]


def test_a_bad_record_is_isolated_and_the_rest_keep_their_order() -> None:
    plaintexts = [_encoded(0), b"{not json", _encoded(2), b'{"amount": "x"}', _encoded(4)]
    parsed = parse_records(plaintexts)
    assert sorted(parsed.failures) == [1, 3]
    assert parsed.failures[3][0] == "decode"
    assert "amount" in parsed.failures[3][1]
    assert parsed.row_sources == (0, 2, 4)
    assert parsed.table.column("customer_id").to_pylist() == [
        "cust-secret-00000", "cust-secret-00002", "cust-secret-00004"]


def test_a_record_with_line_breaks_is_one_row_not_two() -> None:
    two_objects = _encoded(1) + b"\n" + _encoded(2)
    multi_line_object = json.dumps(person(3, "eu"), indent=2).encode()
    parsed = parse_records([_encoded(0), two_objects, multi_line_object])
    assert list(parsed.failures) == [1]
    assert parsed.row_sources == (0, 2)
    assert parsed.table.num_rows == 2


def test_reasons_never_quote_the_offending_value() -> None:
    secret = "zz-secret-timestamp-value"
    bad = json.dumps({**person(0, "eu"), "event_time": secret}).encode()
    parsed = parse_records([bad])
    stage, reason = parsed.failures[0]
    assert stage == "decode"
    assert secret not in reason
    assert "timestamp" in reason


def test_non_utf8_and_oversized_records_fail_before_parsing() -> None:
    parsed = parse_records([b'{"name": "\xff"}', b"{" + b" " * records.MAX_RECORD_BYTES + b"}"])
    assert parsed.failures[0] == ("decode", "record is not valid UTF-8")
    assert "over the" in parsed.failures[1][1]
    assert parsed.table.num_rows == 0


def test_row_limit_problems_name_the_column_of_long_fields_and_foreign_regions() -> None:
    rows = [person(0, "eu"), {**person(1, "eu"), "name": "x" * (records.MAX_FIELD_CHARS + 1)},
            person(2, "us"), {**person(3, "eu"), "customer_id": None}]
    parsed = parse_records([json.dumps(r).encode() for r in rows])
    problems = row_limit_problems(parsed.table, "eu")
    assert problems[0] is None
    assert problems[1] == ("name", f"over {records.MAX_FIELD_CHARS} characters")
    assert problems[2] == ("region", "differs from the envelope's region")
    assert problems[3] is None          # nulls are the spec's business (nullable: false)


def test_records_are_read_with_the_declared_columns_dates_as_text() -> None:
    schema = json_read_schema([("n", pa.int8()), ("x", pa.float32()), ("ok", pa.bool_()),
                               ("t", pa.timestamp("us", tz="UTC")), ("d", pa.date32()),
                               ("s", pa.string())])
    assert schema.types == [pa.int64(), pa.float64(), pa.bool_(), pa.string(), pa.string(),
                            pa.string()]
    parsed = parse_records([b'{"n": 3, "t": "not a time", "extra": [1, 2]}',
                            b'{"x": 1.5, "d": "2025-02-30", "s": "a"}'], schema)
    assert parsed.failures == {}
    assert parsed.table.schema == schema
    assert parsed.table.column("t").to_pylist() == ["not a time", None]
    assert parsed.table.column("n").to_pylist() == [3, None]


def test_a_declared_number_given_as_text_fails_naming_the_column() -> None:
    schema = json_read_schema([("amount", pa.float64())])
    parsed = parse_records([b'{"amount": 1.0}', b'{"amount": "a secret 12"}'], schema)
    assert list(parsed.failures) == [1]
    _stage, reason = parsed.failures[1]
    assert "amount" in reason and "secret" not in reason


def test_select_columns_requires_every_declared_column() -> None:
    table = pa.table({"a": [1], "b": [2], "c": [3]})
    assert select_columns(table, ["c", "a"]).column_names == ["c", "a"]
    with pytest.raises(RecordFormatError, match="declared column"):
        select_columns(table, ["a", "d"])


def test_ipc_round_trip_and_bounds() -> None:
    table = parse_records([_encoded(i) for i in range(10)]).table
    assert table_from_ipc(table_to_ipc(table)).equals(table)
    with pytest.raises(RecordLimitError, match="rows"):
        table_from_ipc(table_to_ipc(table), max_rows=5)
    with pytest.raises(RecordFormatError, match="Arrow IPC"):
        table_from_ipc(b"definitely not arrow")


def test_conform_requires_every_partner_column() -> None:
    with pytest.raises(RecordFormatError, match="email"):
        conform_to_input_schema(pa.table({"customer_id": ["a"], "name": ["n"], "amount": [1.0],
                                          "event_time": ["2025-01-01"], "region": ["eu"]}))


def test_json_records_round_trip_through_the_parser() -> None:
    table = parse_records([_encoded(i) for i in range(5)]).table
    assert parse_records(table_to_json_records(table)).table.equals(table)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.integers(0, 999).map(_encoded)), max_size=12))
def test_every_input_is_either_a_row_or_a_failure(plaintexts: list[bytes]) -> None:
    parsed = parse_records(plaintexts)
    assert len(parsed.row_sources) == parsed.table.num_rows
    assert sorted([*parsed.row_sources, *parsed.failures]) == list(range(len(plaintexts)))
