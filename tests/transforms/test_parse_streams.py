"""``ParseSealed`` / ``read_sealed`` on record streams (record profile 2): structure read
without a key, records counted, and each kind of refusal a dead letter counting the right
number of records."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from enclave_workers.batch_processor import DeadLetter
from envelope import (
    DataKey,
    KeyReference,
    WrappedKey,
    read_header,
    seal_record,
    seal_record_stream,
)
from transforms import ParseSealed
from transforms.batching import cut_batches
from transforms.metrics import NAMESPACE, RECORDS_IN
from transforms.parse import read_sealed
from transforms.sealed import SealedEnvelope

KEY = DataKey.generate()
SEAL = {"data_key": KEY, "region": "eu", "producer_id": "acme",
        "wrapped_key": WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"), b"w" * 40),
        "schema_fingerprint": bytes(32), "context": {"sealbeam.kind": "partner-records"}}


def _stream(count: int) -> bytes:
    return seal_record_stream([b'{"n":%d}' % i for i in range(count)], **SEAL)


def test_a_stream_is_one_element_standing_for_its_records() -> None:
    stream = _stream(7)
    read = read_sealed(stream)
    assert isinstance(read, SealedEnvelope) and read.records == 7
    assert read.region == "eu" and read.data == stream
    record = read_sealed(seal_record(b"{}", **SEAL))
    assert isinstance(record, SealedEnvelope) and record.records == 1


def test_a_truncated_stream_is_one_dead_letter_for_every_record_its_header_commits_to() -> None:
    stream = _stream(5)
    _, header_length = read_header(stream)
    for cut in (1, 20, len(stream) - header_length):    # the last leaves the header alone
        dead = read_sealed(stream[:-cut])
        assert isinstance(dead, DeadLetter) and dead.stage == "parse"
        assert dead.records == 5 and "record stream" in dead.reason
        assert dead.sealed == stream[:-cut]
    # Bytes whose header does not parse are one line, one record, without their bytes.
    garbage = read_sealed(stream[:header_length - 1])
    assert isinstance(garbage, DeadLetter) and garbage.records == 1 and garbage.sealed == b""


def test_a_pipeline_that_takes_no_streams_dead_letters_all_of_their_records() -> None:
    dead = read_sealed(_stream(4), record_streams=False)
    assert isinstance(dead, DeadLetter) and dead.records == 4
    assert "record-stream" in dead.reason and "not accepted" in dead.reason


def test_batches_count_records_and_never_split_a_stream() -> None:
    envelopes = [read_sealed(_stream(n)) for n in (6, 6, 6, 1, 1)]
    batches = cut_batches(envelopes, max_count=8, max_bytes=1 << 20)
    sizes = [sum(e.records for e in b.envelopes) for b in batches]
    assert all(size <= 8 for size in sizes) and sum(sizes) == 20
    # Cut in the batcher's (id) order toward ceil(20 / ceil(20 / 8)) = 7 records a batch: a
    # batch closes only at 7 records or when the next envelope would not fit under 8, so 3 or
    # 4 batches depending on where the ids put the 1-record envelopes.
    assert len(sizes) in (3, 4)
    for size, following in zip(sizes[:-1], batches[1:], strict=True):
        assert size >= 7 or size + following.envelopes[0].records > 8
    assert sorted(e.records for b in batches for e in b.envelopes) == [1, 1, 6, 6, 6]
    # A stream larger than the bound is a batch of its own.
    [alone] = cut_batches([read_sealed(_stream(12))], max_count=8, max_bytes=1 << 20)
    assert [e.records for e in alone.envelopes] == [12]


def test_parse_sealed_counts_a_streams_other_records_in_records_in() -> None:
    inputs = [_stream(5), _stream(3)[:-2], seal_record(b"{}", **SEAL)]
    pipeline = beam.Pipeline(runner=FnApiRunner())
    parsed = pipeline | beam.Create(inputs) | ParseSealed()
    assert_that(parsed[ParseSealed.SEALED] | "Records" >> beam.Map(lambda e: e.records),
                equal_to([5, 1]), label="Sealed")
    assert_that(parsed[ParseSealed.DEAD_LETTER] | "Dead" >> beam.Map(lambda d: d.records),
                equal_to([3]), label="Dead")
    result = pipeline.run()
    result.wait_until_finish()
    [counter] = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(
        RECORDS_IN))["counters"]
    # The reader counted each line once; ParseSealed adds a stream's other records.
    assert counter.committed == (5 - 1) + (3 - 1)
