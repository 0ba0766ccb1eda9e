"""BatchProcessor with pieces of record streams (docs/FORMAT.md 13.4a), as the streaming
pipeline hands them over: only a piece's records are opened and counted, a failing record of a
piece is its own dead letter (its one-record excerpt), a piece that fails whole is one dead
letter named by its records, and the pieces of a stream give the rows the whole stream gives."""

from __future__ import annotations

import json

import pytest

from enclave_workers.batch_processor import BatchProcessor, default_feature_spec
from enclave_workers.features import compile_spec
from enclave_workers.key_session import KeySession
from enclave_workers.records import INPUT_SCHEMA_FINGERPRINT
from envelope import (
    extract_stream_piece,
    index_ranges,
    read_record_stream,
    read_stream_piece,
    read_stream_record,
    seal_record_stream,
)
from tests.enclave_workers.broker_env import BrokerEnv, person

ROWS = 12


@pytest.fixture
def processor(broker: BrokerEnv) -> BatchProcessor:
    return BatchProcessor(KeySession(broker.client(), broker.provider()),
                          compile_spec(default_feature_spec()))


def _stream(broker: BrokerEnv, records: list[bytes] | None = None) -> bytes:
    data_key, wrapped = broker.wrap_new_key("eu", "acme")
    records = records or [json.dumps({**person(i, "eu"), "amount": 20.0}).encode()
                          for i in range(ROWS)]
    return seal_record_stream(records, data_key=data_key, wrapped_key=wrapped, region="eu",
                              producer_id="acme", schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                              context={"sealbeam.kind": "partner-records"})


def _rows(result) -> int:
    return sum(output.row_count for output in result.outputs) + result.rows_suppressed


def test_the_pieces_of_a_stream_give_what_the_stream_gives(broker: BrokerEnv,
                                                            processor: BatchProcessor) -> None:
    stream = _stream(broker)
    first, second = [0, 1, 2, 7, 11], [3, 4, 5, 6, 8, 9, 10]
    whole = processor.process([stream])
    pieces = [processor.process([extract_stream_piece(stream, part)])
              for part in (first, second)]
    assert not whole.dead_letters and not any(p.dead_letters for p in pieces)
    assert [p.outputs[0].source_count for p in pieces] == [len(first), len(second)]
    assert sum(_rows(p) for p in pieces) == _rows(whole) == ROWS


def test_a_failing_record_of_a_piece_is_its_own_excerpt(broker: BrokerEnv,
                                                         processor: BatchProcessor) -> None:
    records = [json.dumps({**person(i, "eu"), "amount": 20.0}).encode() for i in range(ROWS)]
    records[5] = b"not json"
    stream = _stream(broker, records)
    piece = bytearray(extract_stream_piece(stream, [2, 5, 9]))
    shape = read_stream_piece(bytes(piece))
    piece[shape.frame_offsets[0] + 30] ^= 0x01           # record 2's ciphertext
    result = processor.process([bytes(piece)])
    envelope_id = read_record_stream(stream).header.envelope_id.hex()
    letters = {d.record_id: d for d in result.dead_letters}
    assert set(letters) == {f"{envelope_id}#2", f"{envelope_id}#5"}
    assert letters[f"{envelope_id}#2"].stage == "open"
    assert letters[f"{envelope_id}#5"].stage == "decode"
    for name, letter in letters.items():
        assert letter.records == 1
        assert read_stream_record(letter.sealed).index == int(name.split("#")[1])
    assert result.outputs[0].source_count == 1 and _rows(result) == 1


def test_a_piece_that_fails_whole_is_one_dead_letter_named_by_its_records(
        broker: BrokerEnv, processor: BatchProcessor) -> None:
    stream = _stream(broker)
    piece = bytearray(extract_stream_piece(stream, [0, 1, 2, 6, 8, 9]))
    shape = read_stream_piece(bytes(piece))
    piece[shape.header_end - 1] ^= 0x01                  # the header tag
    result = processor.process([bytes(piece)])
    [letter] = result.dead_letters
    envelope_id = shape.header.envelope_id.hex()
    assert letter.record_id == f"{envelope_id}#0-2,6,8-9"
    assert letter.records == 6 and letter.sealed == bytes(piece) and not result.outputs


def test_index_ranges() -> None:
    assert index_ranges([3]) == "3"
    assert index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
