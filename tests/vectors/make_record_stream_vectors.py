"""Write tests/vectors/record_stream_v1.json: the record-stream vectors of docs/FORMAT.md 13.

Run from the repository root: ``.venv/bin/python -m tests.vectors.make_record_stream_vectors``.
The inputs (DEK, schema fingerprint, key block, region, producer, context) are those of section
6.1 (``make_envelope_vectors.INPUTS``); the salt (``STREAM_SALT``, shared by both streams, which
a real sealer never does), the envelope ids and the record ids are inputs here, so everything is
deterministic. The file holds a three-record stream (one record empty), a two-record stream
with event times, each stream's digest and per-record nonce and AAD, an ``SBRX`` excerpt of
one record, a piece (``SBRX`` 02) of two records of the first stream, the first stream
rewrapped under KEK version 2, and damaged streams with what a decoder must report (section
13.5): ``structural``, ``authentication`` (the whole stream) or ``records`` (the stream
opens; the listed record indices fail).
tests/envelope/test_record_stream_vectors.py rebuilds the file byte for byte and checks the
clean-room decoder against it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from envelope import (
    ALGORITHM_AES256GCM_HKDF_SHA512,
    DataKey,
    KeyReference,
    WrappedKey,
    read_header,
    rewrap_envelope,
)
from envelope._keyschedule import hkdf_info, hkdf_sha512_96
from envelope.record_stream import (
    _seal_record_stream_with,
    extract_stream_piece,
    extract_stream_record,
    read_record_stream,
    stream_digest,
)
from tests.vectors.make_envelope_vectors import INPUTS, REWRAP

VECTOR_PATH = Path(__file__).resolve().parent / "record_stream_v1.json"

STREAMS = {
    "three_records": {
        "envelope_id": bytes(range(0x80, 0x90)).hex(),
        "record_ids": [bytes(range(0x90, 0xA0)).hex(), bytes(range(0xA0, 0xB0)).hex(),
                       bytes(range(0xB0, 0xC0)).hex()],
        "plaintexts": [b'{"customer_id":"c-0001","amount":42.5}'.hex(), "",
                       b'{"customer_id":"c-0003","amount":7.0}'.hex()],
        "event_times_ms": [0, 0, 0],
    },
    "with_event_times": {
        "envelope_id": bytes(range(0xC0, 0xD0)).hex(),
        "record_ids": [bytes(range(0xD0, 0xE0)).hex(), bytes(range(0xE0, 0xF0)).hex()],
        "plaintexts": [b"first".hex(), b"second record".hex()],
        # 2026-01-02T03:04:05.000Z and 2026-01-03T03:04:05.250Z
        "event_times_ms": [1_767_323_045_000, 1_767_409_445_250],
    },
}
EXCERPT_OF = ("with_event_times", 1)
PIECE_OF = ("three_records", (0, 2))
# Not section 6.1's salt: with it, record 0 would share section 6.2's key and nonce.
STREAM_SALT = bytes(range(0xE0, 0x100))


def _arguments() -> dict[str, object]:
    return {
        "data_key": DataKey(bytes.fromhex(INPUTS["dek"])),
        "wrapped_key": WrappedKey(KeyReference(INPUTS["kek_uri"], INPUTS["kek_version"]),
                                  bytes.fromhex(INPUTS["wrapped_key"])),
        "region": INPUTS["region"], "producer_id": INPUTS["producer_id"],
        "schema_fingerprint": bytes.fromhex(INPUTS["schema_fingerprint"]),
        "context": INPUTS["context"],
    }


def seal(name: str) -> bytes:
    stream = STREAMS[name]
    return _seal_record_stream_with(
        [bytes.fromhex(p) for p in stream["plaintexts"]],
        salt=STREAM_SALT,
        envelope_id=bytes.fromhex(stream["envelope_id"]),
        record_ids=[bytes.fromhex(i) for i in stream["record_ids"]],
        event_times_ms=stream["event_times_ms"], **_arguments())


def _described(name: str, sealed: bytes) -> dict[str, object]:
    layout = read_record_stream(sealed)
    digest = stream_digest(sealed[:layout.core_end])
    records = []
    for index, start in enumerate(layout.frame_offsets):
        counter = struct.pack(">I", index)
        records.append({
            "frame_offset": start,
            "nonce": (bytes(8) + counter).hex(),
            "aad": (digest + sealed[start + 4:start + 28] + counter).hex(),
        })
    return {**STREAMS[name], "header_length": layout.header_length,
            "core_length": layout.core_end, "stream_digest": digest.hex(),
            "records": records, "envelope": sealed.hex()}


def _derived() -> dict[str, str]:
    """HKDF output for the stream salt (section 3.1), for implementers debugging a decoder."""
    okm = hkdf_sha512_96(bytes.fromhex(INPUTS["dek"]), STREAM_SALT,
                         hkdf_info(ALGORITHM_AES256GCM_HKDF_SHA512))
    return {"aes_key": okm[:32].hex(), "commitment": okm[32:64].hex(),
            "header_key": okm[64:].hex()}


def _set(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def _flip(data: bytes, offset: int) -> bytes:
    return _set(data, offset, bytes([data[offset] ^ 0x01]))


def _errors(sealed: bytes) -> list[dict[str, object]]:
    """Damaged copies of the three-record stream and the one answer (section 13.5)."""
    layout = read_record_stream(sealed)
    f0, f1, f2 = layout.frame_offsets
    fewer_core = _set(sealed, 120, struct.pack(">I", 2))  # count 3 -> 2, last frame dropped
    cases = [
        ("stream, trailing byte, wrong DEK", sealed + b"\x00", "wrong", "structural", []),
        ("stream, last frame dropped, right DEK", sealed[:f2], "right", "structural", []),
        ("stream, record 2 repeats record 0's id, wrong DEK",
         _set(sealed, f2 + 4, layout.record_ids[0]), "wrong", "structural", []),
        ("stream, record 2 length over its bound, record 0 damaged, right DEK",
         _flip(_set(sealed, f2, struct.pack(">I", (1 << 20) + 17)), f0 + 30), "right",
         "structural", []),
        ("stream, wrong DEK", sealed, "wrong", "authentication", []),
        ("stream, count 2 and last frame dropped (still parses), right DEK",
         fewer_core[:f2], "right", "authentication", []),
        ("stream, record 1 ciphertext byte changed, right DEK", _flip(sealed, f1 + 28),
         "right", "records", [1]),
        ("stream, record 2 event time changed, right DEK", _flip(sealed, f2 + 27), "right",
         "records", [2]),
        ("stream, records 0 and 2 swapped, right DEK",
         sealed[:f0] + sealed[f2:] + sealed[f1:f2] + sealed[f0:f1], "right", "records",
         [0, 2]),
    ]
    return [{"name": name, "envelope": data.hex(), "dek": dek, "expect": expect,
             "failed_records": failed} for name, data, dek, expect, failed in cases]


def build_vectors() -> dict[str, object]:
    three, timed = seal("three_records"), seal("with_event_times")
    stream_name, index = EXCERPT_OF
    excerpt = extract_stream_record(timed, index)
    piece_stream, piece_indices = PIECE_OF
    piece = extract_stream_piece(seal(piece_stream), piece_indices)
    rewrapped = rewrap_envelope(three, DataKey(bytes.fromhex(INPUTS["dek"])), WrappedKey(
        KeyReference(INPUTS["kek_uri"], REWRAP["kek_version"]),
        bytes.fromhex(REWRAP["wrapped_key"])))
    return {
        "description": "sealbeam record streams (record profile 2, kind 03); see "
                       "docs/FORMAT.md section 13. Inputs: section 6.1 (envelope_v1.json)",
        "salt": STREAM_SALT.hex(),
        "derived": _derived(),
        "stream_digest_label": b"sealbeam/record-stream/v1\x00".hex(),
        "three_records": _described("three_records", three),
        "with_event_times": _described("with_event_times", timed),
        "excerpt": {"stream": stream_name, "index": index, "excerpt": excerpt.hex()},
        "piece": {"stream": piece_stream, "indices": list(piece_indices), "piece": piece.hex()},
        "three_records_rewrapped": {**REWRAP, "header_length": read_header(rewrapped)[1],
                                    "envelope": rewrapped.hex()},
        "errors": _errors(three),
    }


def main() -> None:
    VECTOR_PATH.write_text(json.dumps(build_vectors(), indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    print(f"wrote {VECTOR_PATH}")


if __name__ == "__main__":
    main()
