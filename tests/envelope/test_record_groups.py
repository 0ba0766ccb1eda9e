"""``RecordSorter`` / ``RecordOpener.open_group`` / ``peek_record``: one parse per record.

For any mix of good and bad inputs (flipped or cut bytes, another DEK, other header
fields, batches, garbage), sorting and opening a group gives, per input, exactly what
``open_record`` gives: the plaintext, or an ``EnvelopeError`` of the same type with the same
message. The sorter takes only records whose header a full parse accepts, with the same
fields and offsets; what it does not take, a full parse refuses or finds not to be a record.
``peek_record`` agrees with ``read_header`` on every input.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    EnvelopeError,
    RecordOpener,
    RecordSorter,
    open_record,
    parse_envelope,
    peek_record,
    read_header,
    record_envelope_id,
    seal_batch,
    seal_record,
    seal_records,
)
from envelope.header import parse_header
from tests.envelope.support import DEK, OTHER_DEK, seal_arguments

ARGUMENTS = seal_arguments(context={"a": "1", "b": "2"})
GOOD = seal_records([os.urandom(n) for n in (0, 1, 40, 200)], **ARGUMENTS)
OTHERS = [
    seal_record(b"other context", **seal_arguments(context={"c": "3"})),
    seal_record(b"other region", **seal_arguments(region="us")),
    seal_record(b"other producer", **seal_arguments(producer_id="globex")),
    seal_record(b"other key", **seal_arguments(data_key=OTHER_DEK)),
    seal_batch(b"a batch", **ARGUMENTS, segment_size=16),
    b"not an envelope",
    b"",
]


def one_by_one(envelope: bytes) -> bytes | tuple[type, str]:
    try:
        return open_record(envelope, DEK)
    except EnvelopeError as error:
        return type(error), str(error)


def as_outcome(result: bytes | EnvelopeError) -> bytes | tuple[type, str]:
    assert isinstance(result, (bytes, EnvelopeError))
    return result if isinstance(result, bytes) else (type(result), str(result))


def mutated(data: st.DataObject, envelope: bytes) -> bytes:
    """``envelope`` unchanged, with a byte flipped, cut short, or extended."""
    action = data.draw(st.sampled_from(["keep", "flip", "cut", "extend"]))
    if action == "keep" or not envelope:
        return envelope
    if action == "flip":
        position = data.draw(st.integers(0, len(envelope) - 1))
        bit = data.draw(st.integers(0, 7))
        changed = bytearray(envelope)
        changed[position] ^= 1 << bit
        return bytes(changed)
    if action == "cut":
        return envelope[: data.draw(st.integers(0, len(envelope) - 1))]
    return envelope + data.draw(st.binary(min_size=1, max_size=8))


def sort_and_open(inputs: list[bytes], data_key=DEK) -> dict[int, bytes | tuple[type, str]]:
    """Per input index taken by the sorter, what its group's open gave."""
    sorter = RecordSorter()
    taken = [index for index, envelope in enumerate(inputs) if sorter.add(envelope, index)]
    outcomes: dict[int, bytes | tuple[type, str]] = {}
    opener = RecordOpener(data_key)
    for group in sorter.groups():
        results = opener.open_group(group)
        assert len(results) == len(group.envelopes) == len(group.tags)
        for index, envelope, result in zip(group.tags, group.envelopes, results, strict=True):
            assert envelope is inputs[index]
            outcomes[index] = as_outcome(result)
    assert sorted(outcomes) == taken
    return outcomes


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_sorted_groups_open_as_open_record_does(data: st.DataObject) -> None:
    pool = GOOD + OTHERS
    inputs = [mutated(data, data.draw(st.sampled_from(pool)))
              for _ in range(data.draw(st.integers(1, 10)))]
    outcomes = sort_and_open(inputs)
    for index, envelope in enumerate(inputs):
        if index in outcomes:
            assert outcomes[index] == one_by_one(envelope)
            continue
        # Not taken: a full parse refuses it, or it is no record.
        try:
            header, _ = read_header(envelope)
        except EnvelopeError:
            continue
        assert header.kind != "record"


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_taken_record_has_the_header_a_full_parse_gives(data: st.DataObject) -> None:
    envelope = mutated(data, data.draw(st.sampled_from(GOOD + OTHERS)))
    sorter = RecordSorter()
    if not sorter.add(envelope):
        return
    [group] = sorter.groups()
    header, layout = parse_header(envelope)
    record = group.header
    assert header.kind == "record"
    assert (record.region, record.producer_id, record.wrapped_key, dict(record.context)) == (
        header.region, header.producer_id, header.wrapped_key, dict(header.context))
    assert (record.core_end, record.tag_start, record.header_end) == (
        layout.core_end, layout.tag_start, layout.end)
    assert record_envelope_id(envelope) == header.envelope_id


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_peek_agrees_with_read_header(data: st.DataObject) -> None:
    envelope = mutated(data, data.draw(st.sampled_from(GOOD + OTHERS)))
    peeked = peek_record(envelope)
    try:
        header, _ = read_header(envelope)
    except EnvelopeError:
        assert peeked is None
        return
    if header.kind != "record":
        assert peeked is None
        return
    assert peeked is not None
    assert (peeked.region, peeked.producer_id, peeked.wrapped_key) == (
        header.region, header.producer_id, header.wrapped_key)
    assert record_envelope_id(envelope) == header.envelope_id


def test_a_group_under_another_key_fails_authentication_record_by_record() -> None:
    outcomes = sort_and_open(list(GOOD), data_key=OTHER_DEK)
    assert set(outcomes.values()) == {one_by_one_with(OTHER_DEK, GOOD[0])}


def one_by_one_with(data_key, envelope: bytes) -> tuple[type, str]:
    with pytest.raises(EnvelopeError) as raised:
        open_record(envelope, data_key)
    return type(raised.value), str(raised.value)


def test_the_sorter_keeps_a_bounded_number_of_headers() -> None:
    sorter = RecordSorter(max_suffixes=1)
    assert sorter.add(GOOD[0]) and sorter.add(GOOD[1])
    assert not sorter.add(OTHERS[0])            # a second distinct header: left to the caller
    [group] = sorter.groups()
    assert group.envelopes == (GOOD[0], GOOD[1])


def test_only_immutable_bytes_are_taken() -> None:
    sorter = RecordSorter()
    assert not sorter.add(bytearray(GOOD[0]))
    assert not sorter.add(memoryview(GOOD[0]))
    assert not sorter.add(parse_envelope(GOOD[0]))
    assert sorter.groups() == []
