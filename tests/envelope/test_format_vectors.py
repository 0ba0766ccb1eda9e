"""The vectors of docs/FORMAT.md sections 3.5 and 7-10 (tests/vectors/format_v1.json).

The implementation rebuilds the file byte for byte and opens it through its own code paths
(``LocalKeyring``, ``envelope``, ``enclave_workers.records``); the clean-room decoder of
tests/envelope/independent_decoder.py opens it from the document alone; both report the same
kind of failure for every damaged envelope; and the document shows the same bytes."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.records import INPUT_SCHEMA_FINGERPRINT, table_from_ipc
from envelope import (
    DataKey,
    EnvelopeAuthenticationError,
    EnvelopeError,
    dek_wrap_aad,
    open_batch,
    open_record,
    read_header,
)
from keybroker.kms.local import LocalKeyring
from tests.envelope import independent_decoder as clean
from tests.vectors import make_format_vectors

REPO = Path(__file__).resolve().parents[2]
VECTOR_FILE = REPO / "tests" / "vectors" / "format_v1.json"
FORMAT_DOC = REPO / "docs" / "FORMAT.md"


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(VECTOR_FILE.read_text(encoding="utf-8"))


def test_implementation_rebuilds_the_file_byte_for_byte(vectors: dict) -> None:
    assert make_format_vectors.build_vectors() == vectors


def test_the_keyring_implementation_unwraps_the_wrap_vector(vectors: dict, tmp_path: Path
                                                            ) -> None:
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps(vectors["keyring"]), encoding="utf-8")
    path.chmod(0o600)
    keyring = LocalKeyring.open(path)
    header, _ = read_header(base64.b64decode(vectors["sealed_record_file"]["file"]))
    assert header.wrapped_key.ciphertext.hex() == vectors["local_wrap"]["wrapped_key"]
    secret = keyring.unwrap(header.wrapped_key, dek_wrap_aad("eu", "acme"))
    assert secret.hex() == vectors["local_wrap"]["dek"]


def test_clean_room_unwrap_and_open_of_every_file_vector(vectors: dict) -> None:
    wrap = vectors["local_wrap"]
    assert clean.local_wrap_aad(wrap["kek_uri"], wrap["kek_version"],
                                bytes.fromhex(wrap["caller_aad"])).hex() == wrap["wrap_aad"]
    assert len(bytes.fromhex(wrap["wrapped_key"])) == 65
    keyring = vectors["keyring"]

    record_file = vectors["sealed_record_file"]
    [record] = clean.envelopes_in_file(record_file["file"].encode("ascii"))
    decoded = clean.open_with_keyring(record, keyring)
    assert decoded.context == record_file["context"]
    assert decoded.schema_fingerprint.hex() == record_file["schema_fingerprint"]
    assert clean.record_object(decoded) == json.loads(record_file["plaintext"])

    batch_file = vectors["sealed_batch_file"]
    [batch] = clean.envelopes_in_file(batch_file["file"].encode("ascii"))
    table = clean.batch_table(clean.open_with_keyring(batch, keyring))
    assert table.num_rows == int(batch_file["context"]["sealbeam.rows"]) == 2
    assert table.column("customer_id").to_pylist() == ["c-0001", "c-0002"]

    features = vectors["features_sbatch"]
    [sbatch] = clean.envelopes_in_file(bytes.fromhex(features["file_hex"]))
    opened = clean.open_with_keyring(sbatch, keyring)
    assert opened.context == features["context"]
    assert opened.schema_fingerprint.hex() == features["context"]["sealbeam.spec"]
    assert clean.batch_table(opened).schema.metadata[b"sealbeam.feature_spec.fingerprint"] \
        == features["context"]["sealbeam.spec"].encode()

    spec = vectors["spec_fingerprint"]
    assert clean.spec_fingerprint(spec["document"]) == spec["fingerprint"] \
        == features["context"]["sealbeam.spec"]


def test_the_implementation_opens_the_file_vectors(vectors: dict) -> None:
    dek = DataKey(bytes.fromhex(vectors["local_wrap"]["dek"]))
    record = base64.b64decode(vectors["sealed_record_file"]["file"])
    assert open_record(record, dek) == vectors["sealed_record_file"]["plaintext"].encode()
    batch = base64.b64decode(vectors["sealed_batch_file"]["file"])
    payload = open_batch(batch, dek)
    assert payload.hex() == vectors["sealed_batch_file"]["arrow_ipc"]
    assert table_from_ipc(payload).num_rows == 2
    assert INPUT_SCHEMA_FINGERPRINT.hex() == vectors["schema_fingerprint"]["sha256"]


def test_schema_fingerprint_is_the_hash_of_the_schema_message(vectors: dict) -> None:
    import hashlib

    data = vectors["schema_fingerprint"]
    message = bytes.fromhex(data["partner_schema_message"])
    assert hashlib.sha256(message).hexdigest() == data["sha256"]
    schema = pa.ipc.read_schema(pa.py_buffer(message))
    assert schema.names == ["customer_id", "name", "email", "amount", "event_time", "region"]


@pytest.mark.parametrize("index", range(9))
def test_error_order_both_implementations_agree(vectors: dict, index: int) -> None:
    case = vectors["errors"][index]
    envelope = bytes.fromhex(case["envelope"])
    right = bytes.fromhex(vectors["local_wrap"]["dek"])
    dek = right if case["dek"] == "right" else bytes(32)
    expected_clean = ValueError if case["expect"] == "structural" else clean.AuthFailed
    with pytest.raises(expected_clean):
        clean.decode(envelope, dek)
    opener = open_record if envelope[5] == 1 else open_batch
    with pytest.raises(EnvelopeError) as raised:
        opener(envelope, DataKey(dek))
    is_auth = isinstance(raised.value, EnvelopeAuthenticationError)
    assert is_auth == (case["expect"] == "authentication"), case["name"]


def test_the_document_shows_the_vectors(vectors: dict) -> None:
    text = FORMAT_DOC.read_text(encoding="utf-8")
    compact = "".join(text.split())
    for value in (vectors["local_wrap"]["wrapped_key"], vectors["local_wrap"]["wrap_aad"],
                  vectors["sealed_record_file"]["file"].strip(),
                  vectors["schema_fingerprint"]["sha256"],
                  vectors["spec_fingerprint"]["fingerprint"]):
        assert value in compact, value[:40]
    for case in vectors["errors"]:
        assert case["name"] in text


def test_the_clean_room_decoder_imports_nothing_of_sealbeam() -> None:
    tree = ast.parse(Path(clean.__file__).read_text(encoding="utf-8"))
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    rooms = ("envelope", "keybroker", "enclave_workers", "transforms", "pipelines", "tests")
    assert not [name for name in imported if name.split(".")[0] in rooms]
    assert {name.split(".")[0] for name in imported} <= {
        "__future__", "base64", "binascii", "hashlib", "hmac", "json", "struct",
        "dataclasses", "pyarrow", "cryptography"}


def _classify_clean(envelope: bytes, dek: bytes) -> str:
    try:
        clean.decode(envelope, dek)
    except clean.AuthFailed:
        return "authentication"
    except (ValueError, UnicodeDecodeError, IndexError):
        return "structural"
    return "ok"


def _classify_sealbeam(envelope: bytes, dek: bytes) -> str:
    opener = open_record if len(envelope) > 5 and envelope[5] == 1 else open_batch
    try:
        opener(envelope, DataKey(dek))
    except EnvelopeAuthenticationError:
        return "authentication"
    except EnvelopeError:
        return "structural"
    return "ok"


_FORMAT_VECTORS = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
_SAMPLES = [base64.b64decode(_FORMAT_VECTORS["sealed_record_file"]["file"]),
            base64.b64decode(_FORMAT_VECTORS["sealed_batch_file"]["file"])]


@settings(max_examples=300, deadline=None)
@given(which=st.sampled_from([0, 1]), edits=st.lists(
    st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), max_size=3),
    cut=st.one_of(st.none(), st.integers(min_value=0)), wrong_key=st.booleans())
def test_both_implementations_classify_damage_alike(which: int, edits: list, cut: int | None,
                                                    wrong_key: bool) -> None:
    """Section 3.5's order, as a property: after random byte changes and truncation, the
    clean-room decoder and sealbeam report the same kind of failure (or both open)."""
    envelope = bytearray(_SAMPLES[which])
    for position, flip in edits:
        envelope[position % len(envelope)] ^= flip
    if cut is not None:
        del envelope[cut % (len(envelope) + 1):]
    dek = bytes(32) if wrong_key else bytes.fromhex(_FORMAT_VECTORS["local_wrap"]["dek"])
    data = bytes(envelope)
    assert _classify_clean(data, dek) == _classify_sealbeam(data, dek)
