"""The known-answer vectors of docs/FORMAT.md: the implementation reproduces them byte for
byte, an independent decoder written from FORMAT.md alone opens them, and the document
shows the same bytes as the vector file."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from envelope import (
    DataKey,
    KeyReference,
    WrappedKey,
    dek_wrap_aad,
    open_batch,
    open_record,
    read_header,
    release_info,
    report_data_binding,
)
from envelope.transport import TeeKeyPair
from tests.envelope import independent_decoder
from tests.envelope.independent_decoder import AuthFailed, decode
from tests.vectors import make_envelope_vectors

REPO = Path(__file__).resolve().parents[2]
VECTOR_FILE = REPO / "tests" / "vectors" / "envelope_v1.json"
FORMAT_DOC = REPO / "docs" / "FORMAT.md"


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(VECTOR_FILE.read_text(encoding="utf-8"))


def test_implementation_reproduces_the_file_byte_for_byte(vectors: dict) -> None:
    rebuilt = make_envelope_vectors.build_vectors(vectors["hpke"]["sealed"])
    assert rebuilt["record"]["envelope"] == vectors["record"]["envelope"]
    assert rebuilt["batch"]["envelope"] == vectors["batch"]["envelope"]
    assert rebuilt["record_rewrapped"]["envelope"] == vectors["record_rewrapped"]["envelope"]
    assert rebuilt == vectors


def test_implementation_opens_the_vectors(vectors: dict) -> None:
    dek = DataKey(bytes.fromhex(vectors["inputs"]["dek"]))
    for kind, opener in (("record", open_record), ("batch", open_batch)):
        envelope = bytes.fromhex(vectors[kind]["envelope"])
        assert opener(envelope, dek) == bytes.fromhex(vectors[kind]["plaintext"])
        assert read_header(envelope)[1] == vectors[kind]["header_length"]
    rewrapped = bytes.fromhex(vectors["record_rewrapped"]["envelope"])
    assert open_record(rewrapped, dek) == bytes.fromhex(vectors["record"]["plaintext"])
    header, length = read_header(rewrapped)
    assert length == vectors["record_rewrapped"]["header_length"]
    assert header.wrapped_key == WrappedKey(
        KeyReference(vectors["inputs"]["kek_uri"], "2"),
        bytes.fromhex(vectors["record_rewrapped"]["wrapped_key"]),
    )


def test_rewrapped_vector_keeps_core_header_and_payload_bytes(vectors: dict) -> None:
    """FORMAT.md section 6.4, independently: same core and body, new key block and tag."""
    dek = bytes.fromhex(vectors["inputs"]["dek"])
    original = bytes.fromhex(vectors["record"]["envelope"])
    rewrapped = bytes.fromhex(vectors["record_rewrapped"]["envelope"])
    before, after = decode(original, dek), decode(rewrapped, dek)
    assert after.plaintext == before.plaintext
    assert before.core_length == after.core_length
    assert original[: before.core_length] == rewrapped[: after.core_length]
    assert original[before.header_length :] == rewrapped[after.header_length :]
    assert (after.kek_version, after.wrapped_key.hex()) == (
        "2", vectors["record_rewrapped"]["wrapped_key"]
    )
    assert after.header_tag != before.header_tag
    # The old tag on the new key block is refused: the key block is authenticated.
    grafted = rewrapped[: after.header_length - 32] + before.header_tag + original[
        before.header_length :
    ]
    with pytest.raises(AuthFailed):
        decode(grafted, dek)


@pytest.mark.parametrize("kind", ["record", "batch"])
def test_independent_decoder_opens_the_vectors(vectors: dict, kind: str) -> None:
    inputs = vectors["inputs"]
    decoded = decode(bytes.fromhex(vectors[kind]["envelope"]), bytes.fromhex(inputs["dek"]))
    assert decoded.plaintext == bytes.fromhex(vectors[kind]["plaintext"])
    assert decoded.kind == {"record": 1, "batch": 2}[kind]
    assert decoded.envelope_id.hex() == vectors[kind]["envelope_id"]
    assert decoded.salt.hex() == inputs["salt"]
    assert decoded.commitment.hex() == vectors["derived"]["commitment"]
    assert decoded.schema_fingerprint.hex() == inputs["schema_fingerprint"]
    assert (decoded.region, decoded.producer_id) == (inputs["region"], inputs["producer_id"])
    assert (decoded.kek_uri, decoded.kek_version) == (inputs["kek_uri"], inputs["kek_version"])
    assert decoded.wrapped_key.hex() == inputs["wrapped_key"]
    assert decoded.context == inputs["context"]
    assert list(decoded.context) == ["dataset", "purpose", "zone"]
    assert decoded.header_length == vectors[kind]["header_length"]
    if kind == "batch":
        assert decoded.segment_size == vectors["batch"]["segment_size"] == 16
        assert [len(segment) for segment in decoded.segments] == [16, 16, 8]


def test_independent_decoder_is_not_a_rubber_stamp(vectors: dict) -> None:
    dek = bytes.fromhex(vectors["inputs"]["dek"])
    record = bytes.fromhex(vectors["record"]["envelope"])
    batch = bytes.fromhex(vectors["batch"]["envelope"])
    with pytest.raises(AuthFailed):
        decode(record, bytes(32))
    with pytest.raises(AuthFailed):
        decode(record[:-1] + bytes([record[-1] ^ 1]), dek)
    with pytest.raises(AuthFailed):  # region "eu" -> "ev": caught by the header tag
        decode(record.replace(b"\x00\x02eu", b"\x00\x02ev", 1), dek)
    wrapped = bytes.fromhex(vectors["inputs"]["wrapped_key"])
    with pytest.raises(AuthFailed):  # a key-block byte: only the header tag covers it
        decode(record.replace(wrapped, wrapped[:-1] + b"\x00", 1), dek)
    header_length = vectors["record"]["header_length"]
    with pytest.raises(AuthFailed):  # the tag itself
        decode(record[: header_length - 1] + bytes([record[header_length - 1] ^ 1])
               + record[header_length:], dek)
    last_frame = len(batch) - 29
    assert batch[last_frame] == 1
    with pytest.raises(AuthFailed):
        decode(batch[:last_frame], dek)


def test_independent_decoder_does_not_use_envelope() -> None:
    tree = ast.parse(Path(independent_decoder.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    ours = [name for name in imported if name.split(".")[0] in ("envelope", "tests")]
    assert not ours


def test_derived_values_follow_the_document(vectors: dict) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    inputs, derived = vectors["inputs"], vectors["derived"]
    info = b"sealbeam/envelope/v1\x00\x00\x01"
    assert derived["hkdf_info"] == info.hex()
    okm = HKDF(
        algorithm=hashes.SHA512(), length=96, salt=bytes.fromhex(inputs["salt"]), info=info
    ).derive(bytes.fromhex(inputs["dek"]))
    assert (okm[:32].hex(), okm[32:64].hex(), okm[64:].hex()) == (
        derived["aes_key"], derived["commitment"], derived["header_key"]
    )

    def prefixed(raw: bytes) -> bytes:
        return struct.pack(">H", len(raw)) + raw

    wrap_aad = b"sealbeam/dek-wrap/v1\x00" + prefixed(b"eu") + prefixed(b"acme")
    assert derived["dek_wrap_aad"] == wrap_aad.hex() == dek_wrap_aad("eu", "acme").hex()
    key_id = hashlib.sha256(
        b"sealbeam/key-id/v1\x00"
        + prefixed(inputs["kek_uri"].encode())
        + prefixed(inputs["kek_version"].encode())
        + prefixed(bytes.fromhex(inputs["wrapped_key"]))
    ).hexdigest()
    wrapped = WrappedKey(
        KeyReference(inputs["kek_uri"], inputs["kek_version"]),
        bytes.fromhex(inputs["wrapped_key"]),
    )
    assert derived["key_id"] == key_id == wrapped.key_id


def test_report_data_vector_follows_the_document(vectors: dict) -> None:
    nonce = bytes.fromhex(vectors["report_data"]["nonce"])
    key = bytes(i % 256 for i in range(1216))
    expected = hashlib.sha512(
        b"sealbeam/report-data/v1\x00" + struct.pack(">I", 32) + nonce + struct.pack(">I", 1216)
        + key
    ).hexdigest()
    assert vectors["report_data"]["binding"] == expected
    assert report_data_binding(nonce, key).hex() == expected


def test_hpke_vector_opens_with_the_library_and_independently(vectors: dict) -> None:
    data = vectors["hpke"]
    seed, scalar = bytes.fromhex(data["mlkem_seed"]), bytes.fromhex(data["x25519_private"])
    sealed, info = bytes.fromhex(data["sealed"]), bytes.fromhex(data["info"])
    assert info == release_info(data["purpose"], vectors["derived"]["key_id"])
    tee = TeeKeyPair._from_seeds(seed, scalar)
    assert hashlib.sha256(tee.public_bytes()).hexdigest() == data["tee_public_key_sha256"]
    assert tee.open(sealed, info).hex() == data["secret"]
    # Independently, from FORMAT.md section 5.3:
    mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    x_key = x25519.X25519PrivateKey.from_private_bytes(scalar)
    public = mlkem_key.public_key().public_bytes_raw() + x_key.public_key().public_bytes_raw()
    assert public == tee.public_bytes()
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    opened = suite.decrypt(sealed, hpke.MLKEM768X25519PrivateKey(mlkem_key, x_key), info=info)
    assert opened.hex() == data["secret"]
    expected_info = (
        b"sealbeam/key-release/v1\x00"
        + struct.pack(">H", len(data["purpose"])) + data["purpose"].encode()
        + struct.pack(">H", 64) + vectors["derived"]["key_id"].encode()
    )
    assert info == expected_info


def test_format_document_shows_the_vector_bytes(vectors: dict) -> None:
    document = FORMAT_DOC.read_text(encoding="utf-8")
    section_6 = document[document.index("## 6. "):document.index("## 7. ")]
    hex_runs = "".join(re.findall(r"^[0-9a-f]{2,64}$", section_6, flags=re.MULTILINE))
    assert (
        vectors["record"]["envelope"]
        + vectors["batch"]["envelope"]
        + vectors["record_rewrapped"]["envelope"]
        == hex_runs
    )
    for value in (
        vectors["derived"]["aes_key"],
        vectors["derived"]["commitment"],
        vectors["derived"]["header_key"],
        vectors["derived"]["key_id"],
        vectors["derived"]["hkdf_info"],
        vectors["derived"]["dek_wrap_aad"],
        vectors["report_data"]["binding"],
        vectors["inputs"]["dek"],
        vectors["inputs"]["salt"],
        vectors["record"]["envelope_id"],
        vectors["batch"]["envelope_id"],
    ):
        assert value in document
