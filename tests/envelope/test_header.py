"""Strict header and body parsing: magic and version first, every bound checked before any
slice or allocation, sorted unique context, strict text, typed errors naming the field."""

from __future__ import annotations

import struct
import time
import tracemalloc

import pytest

from envelope import (
    EnvelopeFormatError,
    EnvelopeLimitError,
    envelope_length,
    open_batch,
    open_record,
    read_header,
    seal_batch,
    seal_record,
)
from envelope.limits import MAX_RECORD_PLAINTEXT
from tests.envelope.support import DEK, SCHEMA, WRAPPED, raw_header, seal_arguments


def test_raw_header_matches_the_sealer() -> None:
    """The tests' independent header builder agrees with envelope (so its variants are valid
    except for the one thing each test breaks)."""
    sealed = seal_record(b"x", **seal_arguments(context={"k": "v"}))
    header, length = read_header(sealed)
    rebuilt = raw_header(
        envelope_id=header.envelope_id,
        salt=header.salt,
        commitment=header.commitment,
        wrapped_key=WRAPPED.ciphertext,
        context=[(b"k", b"v")],
        header_tag=sealed[length - 32 : length],
    )
    assert rebuilt == sealed[:length]


def test_header_fields_parse() -> None:
    header, length = read_header(raw_header(context=[(b"a", b""), (b"b", b"2")]) + b"body")
    assert length == len(raw_header(context=[(b"a", b""), (b"b", b"2")]))
    assert header.kind == "record"
    assert header.algorithm == 1
    assert header.envelope_id == b"\x11" * 16
    assert header.schema_fingerprint == SCHEMA
    assert header.salt == b"\x22" * 32
    assert header.commitment == b"\x33" * 32
    assert header.wrapped_key == WRAPPED
    assert (header.region, header.producer_id) == ("eu", "acme")
    assert dict(header.context) == {"a": "", "b": "2"}
    with pytest.raises(TypeError):
        header.context["c"] = "3"  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "magic truncated"),
        (b"SB", "magic truncated"),
        (b"XBEV", "bad magic 58424556, expected 53424556"),
        (b"SX", "bad magic"),
        (raw_header(version=2), "unsupported version 2, expected 1"),
        (raw_header(version=0), "unsupported version 0"),
        (raw_header(kind=4), "kind 4 is not 1 .record., 2 .batch. or 3 .record-stream."),
        (raw_header(kind=3), "record count 0 is below 1"),
        (raw_header(kind=3, segment_size=65537), "record count 65537 exceeds 65536"),
        (raw_header(algorithm=2), "unknown algorithm id 2"),
        (raw_header(segment_size=16), "segment size 16 must be 0 for a record"),
        (raw_header(kind=2, segment_size=15), "segment size 15 is below 16"),
        (raw_header(region=b""), "region is empty"),
        (raw_header(producer_id=b""), "producer id is empty"),
        (raw_header(wrapped_key=b""), "wrapped key is empty"),
        (raw_header(region=b"e\xffu"), "region is not valid UTF-8"),
        (raw_header(region=b"\xc0\xae"), "region is not valid UTF-8"),  # overlong
        (raw_header(region=b"\xed\xa0\x80"), "region is not valid UTF-8"),  # surrogate
        (raw_header(producer_id=b"ac\x1bme"), "producer id contains a control character"),
        (raw_header(context=[(b"b", b"1"), (b"a", b"2")]), "context key b'a' is out of order"),
        (raw_header(context=[(b"a", b"1"), (b"a", b"2")]), "context key b'a' is duplicated"),
        (raw_header(context=[(b"ab", b"1"), (b"a", b"2")]), "out of order"),
        (raw_header(context=[(b"\xc3\xa9", b"1"), (b"z", b"2")]), "out of order"),
        (raw_header(context=[(b"", b"1")]), "context key is empty"),
        (raw_header(context=[(b"k", b"\x80")]), "context value for 'k' is not valid UTF-8"),
        (raw_header(context_count=2, context=[(b"a", b"1")])[:142],
         "context key length truncated"),
        (raw_header()[:60], "salt truncated: needs 32 bytes, 4 remain"),
        (raw_header()[:125], "region length truncated"),
        (raw_header()[:135], "context entry count truncated"),
        (raw_header()[:137], "kek uri length truncated"),
        (raw_header()[:-33], "wrapped key truncated: needs 40 bytes, 39 remain"),
        (raw_header()[:-1], "header tag truncated: needs 32 bytes, 31 remain"),
        (raw_header(kek_version=b"\x07"), "kek version contains a control character"),
    ],
)
def test_structural_errors_name_the_field(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeFormatError, match=message):
        read_header(data)


def test_context_sorted_by_utf8_bytes_is_accepted() -> None:
    # "Z" (5a) < "a" (61) < "é" (c3 a9): bytewise order, which is also code point order
    header, _ = read_header(
        raw_header(context=[(b"Z", b""), (b"a", b""), (b"ab", b""), (b"\xc3\xa9", b"")])
    )
    assert list(header.context) == ["Z", "a", "ab", "é"]


@pytest.mark.parametrize(
    ("field", "overrides", "message"),
    [
        ("region", {"region": b"r" * 65}, "region length 65 exceeds 64"),
        ("producer", {"producer_id": b"p" * 257}, "producer id length 257 exceeds 256"),
        ("kek uri", {"kek_uri": b"u" * 1025}, "kek uri length 1025 exceeds 1024"),
        ("kek version", {"kek_version": b"v" * 129}, "kek version length 129 exceeds 128"),
        ("wrapped key", {"wrapped_key": b"w" * 4097}, "wrapped key length 4097 exceeds 4096"),
        ("context count", {"context_count": 33}, "context entry count 33 exceeds 32"),
        ("context key", {"context": [(b"k" * 129, b"")]}, "context key length 129 exceeds 128"),
        ("context value", {"context": [(b"k", b"v" * 1025)]},
         "context value length 1025 exceeds 1024"),
        ("context total", {"context": [(b"k%02d" % i, b"v" * 1000) for i in range(9)]},
         "context length 9063 exceeds 8192"),
        ("batch segment size", {"kind": 2, "segment_size": (1 << 24) + 1},
         "segment size 16777217 exceeds 16777216"),
        ("huge segment size", {"kind": 2, "segment_size": 0xFFFFFFFF},
         "segment size 4294967295 exceeds"),
    ],
)
def test_bounds_are_limit_errors(field: str, overrides: dict, message: str) -> None:
    with pytest.raises(EnvelopeLimitError, match=message):
        read_header(raw_header(**overrides))


def test_region_length_claim_is_checked_before_the_bytes_are_needed() -> None:
    header = raw_header()
    claims_300 = header[:124] + struct.pack(">H", 300) + b"eu"  # only 2 bytes follow
    with pytest.raises(EnvelopeLimitError, match=r"^region length 300 exceeds 64$"):
        read_header(claims_300)


@pytest.mark.parametrize("offset_field", ["region", "producer", "kek uri", "kek version",
                                          "wrapped key", "context key", "context value"])
def test_every_u16_length_at_its_maximum_claim_is_refused(offset_field: str) -> None:
    base = raw_header(context=[(b"k", b"v")])
    # FORMAT.md section 2: core (fixed 124, region, producer, context), then the key block.
    offsets = {"region": 124, "producer": 128, "context key": 136, "context value": 139,
               "kek uri": 142, "kek version": 168, "wrapped key": 171}
    offset = offsets[offset_field]
    claimed = base[:offset] + b"\xff\xff" + base[offset + 2 :]
    with pytest.raises(EnvelopeLimitError, match="length 65535 exceeds"):
        read_header(claimed)


def _record_claiming(length: int) -> bytes:
    return raw_header() + struct.pack(">I", length) + b"\x00" * 32


def _batch_claiming(flag: int, length: int, segment_size: int = 64) -> bytes:
    return raw_header(kind=2, segment_size=segment_size) + struct.pack(">BI", flag, length)


def test_a_4_gib_length_claim_raises_promptly_without_allocating() -> None:
    cases = [
        (lambda: open_record(_record_claiming(0xFFFFFFFF), DEK),
         "record length 4294967295 exceeds"),
        (lambda: open_batch(_batch_claiming(1, 0xFFFFFFFF), DEK),
         "segment 0 length 4294967295 exceeds 80"),
        (lambda: envelope_length(_record_claiming(0xFFFFFFFF)), "record length 4294967295"),
        (lambda: envelope_length(_batch_claiming(0, 0xFFFFFFFF)), "segment 0 length 4294967295"),
    ]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        for attempt, message in cases:
            with pytest.raises(EnvelopeLimitError, match=message):
                attempt()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 1 << 20


def test_record_length_bounds() -> None:
    over = MAX_RECORD_PLAINTEXT + 16 + 1
    with pytest.raises(EnvelopeLimitError, match=f"record length {over} exceeds"):
        open_record(_record_claiming(over), DEK)
    with pytest.raises(EnvelopeFormatError, match="record length 15 is below 16"):
        open_record(_record_claiming(15), DEK)
    with pytest.raises(EnvelopeFormatError, match="record ciphertext truncated: needs 40 bytes"):
        open_record(_record_claiming(40), DEK)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (struct.pack(">BI", 2, 80), "segment 0 flag 2 is not 0 or 1"),
        (struct.pack(">BI", 0, 79), "segment 0 is not final but its length 79 is not 80"),
        (struct.pack(">BI", 1, 15), "segment 0 length 15 is below 16"),
        (struct.pack(">BI", 1, 81), "segment 0 length 81 exceeds 80"),
        (struct.pack(">B", 1), "segment 0 length truncated"),
        (struct.pack(">BI", 1, 40) + bytes(39), "segment 0 ciphertext truncated"),
        (struct.pack(">BI", 0, 80) + bytes(80) + struct.pack(">BI", 1, 16),
         "final segment 1 is empty"),
    ],
)
def test_segment_frame_errors(frame: bytes, message: str) -> None:
    data = raw_header(kind=2, segment_size=64) + frame
    with pytest.raises(EnvelopeFormatError, match=message):
        envelope_length(data)
    with pytest.raises(EnvelopeFormatError, match=message):
        open_batch(data, DEK)


def test_read_header_and_envelope_length_need_no_key_and_ignore_what_follows() -> None:
    record = seal_record(b"abc", **seal_arguments())
    batch = seal_batch(b"x" * 200, **seal_arguments(segment_size=64))
    stream = record + batch + record
    first = envelope_length(stream)
    second = envelope_length(memoryview(stream)[first:])
    assert (first, second) == (len(record), len(batch))
    assert read_header(stream[first:])[0].kind == "batch"


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        read_header("SBEV")  # type: ignore[arg-type]
