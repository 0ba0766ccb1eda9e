"""The record-stream vectors of docs/FORMAT.md section 13 (tests/vectors/record_stream_v1.json):
the implementation rebuilds them byte for byte and opens them; the clean-room decoder of
tests/envelope/independent_decoder.py, written from the document, opens them and every stream
``seal_record_stream`` writes; both give the same answer for every damaged stream; the document
shows the same bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import (
    DataKey,
    EnvelopeAuthenticationError,
    EnvelopeError,
    KeyReference,
    WrappedKey,
    extract_stream_piece,
    open_record_stream,
    open_stream_piece,
    open_stream_record,
    read_record_stream,
    read_stream_record,
    seal_record_stream,
)
from envelope.limits import MAX_EVENT_TIME_MS
from tests.envelope import independent_decoder as clean
from tests.envelope.support import seal_arguments
from tests.vectors import make_record_stream_vectors
from tests.vectors.make_envelope_vectors import INPUTS

REPO = Path(__file__).resolve().parents[2]
VECTOR_FILE = REPO / "tests" / "vectors" / "record_stream_v1.json"
FORMAT_DOC = REPO / "docs" / "FORMAT.md"
VECTORS = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
DEK = bytes.fromhex(INPUTS["dek"])
STREAMS = ("three_records", "with_event_times")


def test_implementation_rebuilds_the_file_byte_for_byte() -> None:
    assert make_record_stream_vectors.build_vectors() == VECTORS


@pytest.mark.parametrize("name", STREAMS)
def test_both_implementations_open_the_streams(name: str) -> None:
    vector = VECTORS[name]
    envelope = bytes.fromhex(vector["envelope"])
    plaintexts = [bytes.fromhex(p) for p in vector["plaintexts"]]
    times = [t or None for t in vector["event_times_ms"]]
    ids = [bytes.fromhex(i) for i in vector["record_ids"]]
    opened = open_record_stream(envelope, DataKey(DEK))
    assert not opened.failures
    assert [(r.index, r.record_id, r.event_time_ms, r.plaintext) for r in opened.records] == \
        list(zip(range(len(ids)), ids, times, plaintexts, strict=True))
    assert opened.header.envelope_id.hex() == vector["envelope_id"]
    layout = read_record_stream(envelope)
    assert layout.header_length == vector["header_length"]
    assert layout.core_end == vector["core_length"]
    assert list(layout.frame_offsets) == [r["frame_offset"] for r in vector["records"]]

    decoded = clean.decode(envelope, DEK)
    assert decoded.kind == 3 and decoded.segment_size == len(plaintexts)
    assert decoded.salt.hex() == VECTORS["salt"]
    assert decoded.commitment.hex() == VECTORS["derived"]["commitment"]
    assert decoded.context == INPUTS["context"]
    assert decoded.records == [(i, ids[i], vector["event_times_ms"][i], plaintexts[i])
                               for i in range(len(ids))]


def test_the_debugging_values_follow_the_document() -> None:
    import hashlib
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(algorithm=hashes.SHA512(), length=96, salt=bytes.fromhex(VECTORS["salt"]),
               info=b"sealbeam/envelope/v1\x00\x00\x01").derive(DEK)
    assert [okm[:32].hex(), okm[32:64].hex(), okm[64:].hex()] == [
        VECTORS["derived"][k] for k in ("aes_key", "commitment", "header_key")]
    assert bytes.fromhex(VECTORS["stream_digest_label"]) == b"sealbeam/record-stream/v1\x00"
    for name in STREAMS:
        vector = VECTORS[name]
        envelope = bytes.fromhex(vector["envelope"])
        digest = hashlib.sha256(b"sealbeam/record-stream/v1\x00"
                                + envelope[:vector["core_length"]]).digest()
        assert digest.hex() == vector["stream_digest"]
        for index, record in enumerate(vector["records"]):
            assert record["nonce"] == (bytes(8) + struct.pack(">I", index)).hex()
            assert record["aad"] == (digest + bytes.fromhex(vector["record_ids"][index])
                                     + struct.pack(">QI", vector["event_times_ms"][index],
                                                   index)).hex()


def test_the_excerpt_opens_in_both_implementations() -> None:
    data = VECTORS["excerpt"]
    excerpt = bytes.fromhex(data["excerpt"])
    stream = VECTORS[data["stream"]]
    index = data["index"]
    expected = (index, bytes.fromhex(stream["record_ids"][index]),
                stream["event_times_ms"][index], bytes.fromhex(stream["plaintexts"][index]))
    assert clean.decode_excerpt(excerpt, DEK) == expected
    record = open_stream_record(excerpt, DataKey(DEK))
    assert (record.index, record.record_id, record.event_time_ms, record.plaintext) == expected
    assert read_stream_record(excerpt).record_id == expected[1]
    with pytest.raises(clean.AuthFailed):
        clean.decode_excerpt(excerpt[:-1] + bytes([excerpt[-1] ^ 1]), DEK)
    with pytest.raises(clean.AuthFailed):
        clean.decode_excerpt(excerpt[:8] + b"\x00" + excerpt[9:], DEK)
    with pytest.raises(ValueError):
        clean.decode_excerpt(excerpt + b"\x00", DEK)


def test_the_piece_opens_in_both_implementations() -> None:
    data = VECTORS["piece"]
    piece = bytes.fromhex(data["piece"])
    stream = VECTORS[data["stream"]]
    expected = [(i, bytes.fromhex(stream["record_ids"][i]), stream["event_times_ms"][i],
                 bytes.fromhex(stream["plaintexts"][i])) for i in data["indices"]]
    assert clean.decode_piece(piece, DEK) == expected
    opened = open_stream_piece(piece, DataKey(DEK))
    assert not opened.failures
    assert [(r.index, r.record_id, r.event_time_ms or 0, r.plaintext)
            for r in opened.records] == expected
    assert extract_stream_piece(bytes.fromhex(stream["envelope"]), data["indices"]) == piece
    relabelled = bytearray(piece)
    relabelled[12] ^= 0x01                   # index 0 -> 1: its frame's AAD says 0
    assert clean.decode_piece(bytes(relabelled), DEK)[0][3] is None
    assert [f.index for f in open_stream_piece(bytes(relabelled), DataKey(DEK)).failures] == [1]
    with pytest.raises(ValueError):
        clean.decode_piece(piece + b"\x00", DEK)
    text = FORMAT_DOC.read_text(encoding="utf-8")
    section = text[text.index("### 13.4a"):text.index("### 13.5")]
    assert f"({len(piece)}\nbytes)" in section or f"({len(piece)} bytes)" in section
    assert f"{stream['header_length']}-byte header" in section
    assert piece.hex().startswith("".join(
        section.split("(493\nbytes): `")[1].split("`")[0].split()))


def test_the_rewrapped_stream_keeps_every_frame() -> None:
    original = bytes.fromhex(VECTORS["three_records"]["envelope"])
    rewrapped = bytes.fromhex(VECTORS["three_records_rewrapped"]["envelope"])
    before, after = clean.decode(original, DEK), clean.decode(rewrapped, DEK)
    assert after.records == before.records
    assert original[:before.core_length] == rewrapped[:after.core_length]
    assert original[before.header_length:] == rewrapped[after.header_length:]
    assert (after.kek_version, after.wrapped_key.hex()) == (
        "2", VECTORS["three_records_rewrapped"]["wrapped_key"])
    header = open_record_stream(rewrapped, DataKey(DEK)).header
    assert header.wrapped_key == WrappedKey(
        KeyReference(INPUTS["kek_uri"], "2"),
        bytes.fromhex(VECTORS["three_records_rewrapped"]["wrapped_key"]))


def _answer_clean(envelope: bytes, dek: bytes) -> tuple[str, list[int]]:
    try:
        decoded = clean.decode(envelope, dek)
    except clean.AuthFailed:
        return "authentication", []
    except (ValueError, UnicodeDecodeError, IndexError):
        return "structural", []
    failed = [index for index, _, _, plaintext in decoded.records if plaintext is None]
    return ("records" if failed else "ok"), failed


def _answer_sealbeam(envelope: bytes, dek: bytes) -> tuple[str, list[int]]:
    try:
        opened = open_record_stream(envelope, DataKey(dek))
    except EnvelopeAuthenticationError:
        return "authentication", []
    except EnvelopeError:
        return "structural", []
    for failure in opened.failures:
        assert isinstance(failure.error, EnvelopeAuthenticationError)
    failed = [failure.index for failure in opened.failures]
    assert sorted(failed + [r.index for r in opened.records]) == list(
        range(opened.header.segment_size))
    return ("records" if failed else "ok"), failed


@pytest.mark.parametrize("index", range(len(VECTORS["errors"])))
def test_error_cases_both_implementations_agree(index: int) -> None:
    case = VECTORS["errors"][index]
    envelope = bytes.fromhex(case["envelope"])
    dek = DEK if case["dek"] == "right" else bytes(32)
    expected = (case["expect"], case["failed_records"])
    assert _answer_clean(envelope, dek) == expected, case["name"]
    assert _answer_sealbeam(envelope, dek) == expected, case["name"]


def test_the_document_shows_the_vectors() -> None:
    text = FORMAT_DOC.read_text(encoding="utf-8")
    section = text[text.index("## 13. "):text.index("## Appendix A.")]
    hex_runs = "".join(re.findall(r"^[0-9a-f]{2,64}$", section, flags=re.MULTILINE))
    assert hex_runs == VECTORS["three_records"]["envelope"] + VECTORS["with_event_times"][
        "envelope"]
    for value in (VECTORS["derived"]["aes_key"], VECTORS["derived"]["commitment"],
                  VECTORS["derived"]["header_key"], VECTORS["stream_digest_label"],
                  VECTORS["three_records"]["stream_digest"],
                  VECTORS["with_event_times"]["stream_digest"]):
        assert value in section
    for case in VECTORS["errors"]:
        assert case["name"] in section


_SAMPLE = bytes.fromhex(VECTORS["three_records"]["envelope"])


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1,
                                                                       max_value=255)),
                      max_size=3),
       cut=st.one_of(st.none(), st.integers(min_value=0)), wrong_key=st.booleans())
def test_both_implementations_answer_damage_alike(edits: list, cut: int | None,
                                                  wrong_key: bool) -> None:
    """Section 13.5's order as a property: after random byte changes and truncation, the
    clean-room decoder and sealbeam give the same answer, down to which records fail."""
    envelope = bytearray(_SAMPLE)
    for position, flip in edits:
        envelope[position % len(envelope)] ^= flip
    if cut is not None:
        del envelope[cut % (len(envelope) + 1):]
    dek = bytes(32) if wrong_key else DEK
    answer = _answer_clean(bytes(envelope), dek)
    assert answer == _answer_sealbeam(bytes(envelope), dek)
    if edits and cut is None and not wrong_key and answer[0] == "ok":
        # Only flips that cancel out can leave every record opening.
        assert bytes(envelope) == _SAMPLE


@settings(max_examples=60, deadline=None)
@given(plaintexts=st.lists(st.binary(max_size=200), min_size=1, max_size=12),
       data=st.data())
def test_the_clean_room_decoder_opens_what_sealbeam_seals(plaintexts: list[bytes],
                                                         data: st.DataObject) -> None:
    times = data.draw(st.lists(st.integers(min_value=0, max_value=MAX_EVENT_TIME_MS),
                               min_size=len(plaintexts), max_size=len(plaintexts)))
    arguments = seal_arguments()
    sealed = seal_record_stream(plaintexts, event_times_ms=times, **arguments)
    secret = arguments["data_key"].secret_bytes()  # type: ignore[union-attr]
    decoded = clean.decode(sealed, secret)
    ids = read_record_stream(sealed).record_ids
    assert decoded.records == [(i, ids[i], times[i], plaintexts[i])
                               for i in range(len(plaintexts))]
