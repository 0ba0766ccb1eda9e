"""Write tests/vectors/format_v1.json: the vectors of docs/FORMAT.md sections 7-10.

Run from the repository root: ``.venv/bin/python -m tests.vectors.make_format_vectors``.
Beside the envelope vectors (``make_envelope_vectors``) these cover what a second
implementation needs to open a real sealed file: the local keyring's wrap of a DEK (section 9,
with the keyring document itself), a sealed record line and a sealed batch line exactly as
``sealbeam seal`` writes them, a raw ``.sbatch`` features output (section 8), the schema and
spec fingerprints (section 10), and the error-order cases (section 3.5). Everything is
deterministic: salts, envelope ids and the wrap nonce are inputs here. The Arrow IPC payloads
are written by pyarrow; tests/envelope/test_format_vectors.py rebuilds the file byte for byte
and decodes it with the clean-room decoder.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_workers.batch_processor import FEATURES_KIND, SPEC_CONTEXT_KEY
from enclave_workers.features import FINGERPRINT_METADATA_KEY
from enclave_workers.features.fingerprint import canonical_bytes, spec_fingerprint
from enclave_workers.features.spec import FeatureSpec
from enclave_workers.records import INPUT_SCHEMA, INPUT_SCHEMA_FINGERPRINT, table_to_ipc
from envelope import DataKey, KeyReference, WrappedKey, dek_wrap_aad
from envelope.batch import _seal_batch_with
from envelope.record import _seal_record_with
from keybroker.kms.local import WRAP_FORMAT_VERSION, WRAP_MAGIC, wrap_associated_data
from keybroker.kms.local_file import KEYRING_FORMAT, KEYRING_FORMAT_VERSION
from pipelines.sealing import PARTNER_RECORDS_KIND

VECTOR_PATH = Path(__file__).resolve().parent / "format_v1.json"

KEK_URI = "local://keyring/eu/kek-1"
KEK_VERSION = "1"
KEK_MATERIAL = bytes(range(0x80, 0xA0))
WRAP_NONCE = bytes(range(0x10, 0x1C))
DEK = bytes(range(0x00, 0x20))
REGION, PRODUCER = "eu", "acme"
RECORD_PLAINTEXT = (b'{"customer_id":"c-0001","name":"Ada","email":"ada@example.org",'
                    b'"amount":42.5,"event_time":"2026-01-02T03:04:05Z","region":"eu"}')
BATCH_ROWS = [
    {"customer_id": "c-0001", "name": "Ada", "email": "ada@example.org", "amount": 42.5,
     "event_time": 1767323045000000, "region": "eu"},
    {"customer_id": "c-0002", "name": "Grace", "email": "grace@example.org", "amount": 7.0,
     "event_time": 1767409445000000, "region": "eu"},
]
SPEC_DOCUMENT = {
    "version": 1,
    "name": "tiny",
    "input": {"columns": [{"name": "amount", "type": "float64", "nullable": False},
                          {"name": "region", "type": "string"}]},
    "features": [{"name": "amount_z", "op": "standardize", "input": "amount", "mean": 250.0,
                  "std": 180.0},
                 {"name": "region", "op": "passthrough", "input": "region"}],
}


def keyring_document() -> dict[str, object]:
    """A keyring.json with one KEK version whose material is the vector's."""
    return {
        "format": KEYRING_FORMAT,
        "format_version": KEYRING_FORMAT_VERSION,
        "regions": {REGION: KEK_URI},
        "keks": {KEK_URI: {"region": REGION, "primary": KEK_VERSION, "versions": {
            KEK_VERSION: {"state": "enabled", "created_at": "2026-01-01T00:00:00Z",
                          "material": base64.b64encode(KEK_MATERIAL).decode("ascii")}}}},
    }


def local_wrap() -> dict[str, object]:
    caller_aad = dek_wrap_aad(REGION, PRODUCER)
    associated = wrap_associated_data(KEK_URI, KEK_VERSION, caller_aad)
    blob = (WRAP_MAGIC + bytes([WRAP_FORMAT_VERSION]) + WRAP_NONCE
            + AESGCM(KEK_MATERIAL).encrypt(WRAP_NONCE, DEK, associated))
    return {"kek_uri": KEK_URI, "kek_version": KEK_VERSION, "kek_material": KEK_MATERIAL.hex(),
            "nonce": WRAP_NONCE.hex(), "dek": DEK.hex(), "caller_aad": caller_aad.hex(),
            "wrap_aad": associated.hex(), "wrapped_key": blob.hex()}


def _arguments(wrapped: bytes, schema_fingerprint: bytes, context: dict[str, str]
               ) -> dict[str, object]:
    return {"data_key": DataKey(DEK),
            "wrapped_key": WrappedKey(KeyReference(KEK_URI, KEK_VERSION), wrapped),
            "region": REGION, "producer_id": PRODUCER,
            "schema_fingerprint": schema_fingerprint, "context": context}


def features_table(fingerprint: str) -> pa.Table:
    schema = pa.schema([pa.field("amount_z", pa.float64()), pa.field("region", pa.string())],
                       metadata={FINGERPRINT_METADATA_KEY: fingerprint.encode("ascii")})
    return pa.table({"amount_z": [-1.15, -1.35], "region": ["eu", "eu"]}, schema=schema)


def _mutations(record: bytes, batch: bytes) -> list[dict[str, object]]:
    """Damaged envelopes and the one failure a decoder must report (section 3.5)."""
    header_end = len(record) - 4 - len(RECORD_PLAINTEXT) - 16
    cases = [
        ("record, bad magic, wrong DEK", record[:0] + b"XBEV" + record[4:], "wrong",
         "structural"),
        ("record, trailing byte, wrong DEK", record + b"\x00", "wrong", "structural"),
        ("record, truncated ciphertext, right DEK", record[:-1], "right", "structural"),
        ("record, wrong DEK", record, "wrong", "authentication"),
        ("record, header byte changed (still parses), right DEK",
         record[:24] + bytes([record[24] ^ 1]) + record[25:], "right", "authentication"),
        ("record, ciphertext byte changed, right DEK",
         record[:header_end + 5] + bytes([record[header_end + 5] ^ 1])
         + record[header_end + 6:], "right", "authentication"),
    ]
    first_frame = _batch_header_length(batch)
    cases += [
        ("batch, unknown flag in the last frame, first segment damaged, right DEK",
         _flip(_set(batch, _last_frame(batch), 7), first_frame + 6), "right", "structural"),
        ("batch, final frame dropped (ends at a frame boundary), right DEK",
         batch[:_last_frame(batch)], "right", "authentication"),
        ("batch, trailing byte, wrong DEK", batch + b"\x00", "wrong", "structural"),
    ]
    return [{"name": name, "envelope": data.hex(), "dek": dek, "expect": expect}
            for name, data, dek, expect in cases]


def _set(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1:]


def _flip(data: bytes, offset: int) -> bytes:
    return _set(data, offset, data[offset] ^ 1)


def _batch_header_length(batch: bytes) -> int:
    from envelope import read_header

    return read_header(batch)[1]


def _last_frame(batch: bytes) -> int:
    offset = _batch_header_length(batch)
    while True:
        length = int.from_bytes(batch[offset + 1:offset + 5], "big")
        if batch[offset] == 1:
            return offset
        offset += 5 + length


def build_vectors() -> dict[str, object]:
    wrap = local_wrap()
    wrapped = bytes.fromhex(str(wrap["wrapped_key"]))
    record_context = {"sealbeam.kind": PARTNER_RECORDS_KIND}
    record = _seal_record_with(
        RECORD_PLAINTEXT, salt=bytes(range(0x20, 0x40)), envelope_id=bytes(range(0x40, 0x50)),
        **_arguments(wrapped, INPUT_SCHEMA_FINGERPRINT, record_context))
    rows = pa.Table.from_pylist(BATCH_ROWS, schema=INPUT_SCHEMA)
    ipc_payload = table_to_ipc(rows)
    batch_context = {"sealbeam.kind": PARTNER_RECORDS_KIND, "sealbeam.rows": str(rows.num_rows)}
    batch = _seal_batch_with(
        ipc_payload, salt=bytes(range(0x30, 0x50)), envelope_id=bytes(range(0x50, 0x60)),
        **_arguments(wrapped, INPUT_SCHEMA_FINGERPRINT, batch_context))
    spec = FeatureSpec.from_dict(SPEC_DOCUMENT)
    spec_json = spec.to_json_document()
    fingerprint = spec_fingerprint(spec_json)
    features = features_table(fingerprint)
    features_ipc = table_to_ipc(features)
    features_context = {"sealbeam.kind": FEATURES_KIND, "sealbeam.rows": str(features.num_rows),
                        "sealbeam.source_count": "2", SPEC_CONTEXT_KEY: fingerprint}
    sbatch = _seal_batch_with(
        features_ipc, salt=bytes(range(0x60, 0x80)), envelope_id=bytes(range(0x70, 0x80)),
        **_arguments(wrapped, bytes.fromhex(fingerprint), features_context))
    return {
        "description": "sealbeam sealed files, local keyring wrap and fingerprints; see "
                       "docs/FORMAT.md sections 3.5 and 7-10",
        "keyring": keyring_document(),
        "local_wrap": wrap,
        "sealed_record_file": {
            "region": REGION, "producer_id": PRODUCER, "context": record_context,
            "schema_fingerprint": INPUT_SCHEMA_FINGERPRINT.hex(),
            "plaintext": RECORD_PLAINTEXT.decode("utf-8"),
            "file": (base64.b64encode(record) + b"\n").decode("ascii"),
        },
        "sealed_batch_file": {
            "context": batch_context, "segment_size": 1 << 20,
            "arrow_ipc": ipc_payload.hex(),
            "rows_json": [{**row, "event_time": row["event_time"]} for row in BATCH_ROWS],
            "file": (base64.b64encode(batch) + b"\n").decode("ascii"),
        },
        "features_sbatch": {
            "context": features_context, "arrow_ipc": features_ipc.hex(),
            "file_hex": sbatch.hex(),
        },
        "schema_fingerprint": {
            "partner_schema_message": INPUT_SCHEMA.serialize().to_pybytes().hex(),
            "sha256": INPUT_SCHEMA_FINGERPRINT.hex(),
        },
        "spec_fingerprint": {
            "document": spec_json,
            "canonical": canonical_bytes(spec_json).decode("utf-8"),
            "fingerprint": fingerprint,
        },
        "errors": _mutations(record, batch),
    }


def main() -> None:
    VECTOR_PATH.write_text(json.dumps(build_vectors(), indent=2, ensure_ascii=False) + "\n",
                           encoding="utf-8")


if __name__ == "__main__":
    main()
