"""Write tests/vectors/envelope_v1.json: the known-answer vectors of docs/FORMAT.md.

Run from the repository root: ``.venv/bin/python -m tests.vectors.make_envelope_vectors``.
Besides the record and batch envelopes it holds the record **rewrapped** under KEK version 2
(``rewrap_envelope``): same payload bytes, new key block and header tag.
Every value is deterministic except the HPKE ciphertext (HPKE encapsulation is randomized);
it is kept from the existing file when present, so regenerating is idempotent.
The inputs here are the vector's definition; tests/envelope/test_vectors.py recomputes the
outputs with ``envelope`` and decodes them independently from FORMAT.md alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from envelope import (
    DataKey,
    KeyReference,
    WrappedKey,
    dek_wrap_aad,
    release_info,
    report_data_binding,
    rewrap_envelope,
    seal_to_tee,
)
from envelope._keyschedule import derive_envelope_keys, hkdf_info
from envelope.batch import _seal_batch_with
from envelope.header import ALGORITHM_AES256GCM_HKDF_SHA512, read_header
from envelope.record import _seal_record_with
from envelope.transport import TeeKeyPair

VECTOR_PATH = Path(__file__).resolve().parent / "envelope_v1.json"

INPUTS = {
    "dek": bytes(range(0x00, 0x20)).hex(),
    "salt": bytes(range(0x20, 0x40)).hex(),
    "schema_fingerprint": bytes(range(0x60, 0x80)).hex(),
    "kek_uri": "local://keyring/eu/kek-1",
    "kek_version": "1",
    "wrapped_key": bytes(range(0xA0, 0xDC)).hex(),
    "region": "eu",
    "producer_id": "acme",
    "context": {"purpose": "featurize", "dataset": "payments", "zone": "Zürich"},
}
RECORD = {
    "envelope_id": bytes(range(0x40, 0x50)).hex(),
    "plaintext": b'{"customer_id":"c-0001","amount":42.5}'.hex(),
}
BATCH = {
    "envelope_id": bytes(range(0x50, 0x60)).hex(),
    "segment_size": 16,
    "plaintext": b"0123456789abcdefghijklmnopqrstuvwxyzABCD".hex(),
}
REWRAP = {
    "kek_version": "2",
    "wrapped_key": bytes(range(0xC0, 0xEC)).hex(),  # 44 bytes: the header gets shorter
}
HPKE = {
    "mlkem_seed": bytes(range(0x00, 0x40)).hex(),
    "x25519_private": bytes(range(0x40, 0x60)).hex(),
    "purpose": "dek-release",
}
REPORT_DATA = {
    "nonce": bytes(range(0xF0, 0x100)).hex() + bytes(range(0x00, 0x10)).hex(),
    # A synthetic 1216-byte public key: byte i is i mod 256 (only the length is checked).
    "tee_public_key_rule": "byte i = i mod 256, 1216 bytes",
}


def _common_arguments() -> dict[str, object]:
    return {
        "data_key": DataKey(bytes.fromhex(INPUTS["dek"])),
        "wrapped_key": WrappedKey(
            KeyReference(INPUTS["kek_uri"], INPUTS["kek_version"]),
            bytes.fromhex(INPUTS["wrapped_key"]),
        ),
        "region": INPUTS["region"],
        "producer_id": INPUTS["producer_id"],
        "schema_fingerprint": bytes.fromhex(INPUTS["schema_fingerprint"]),
        "context": INPUTS["context"],
    }


def build_vectors(previous_hpke_sealed: str | None = None) -> dict[str, object]:
    """Every output of the vector file, computed with ``envelope``."""
    arguments = _common_arguments()
    salt = bytes.fromhex(INPUTS["salt"])
    record = _seal_record_with(
        bytes.fromhex(RECORD["plaintext"]),
        salt=salt,
        envelope_id=bytes.fromhex(RECORD["envelope_id"]),
        **arguments,
    )
    batch = _seal_batch_with(
        bytes.fromhex(BATCH["plaintext"]),
        salt=salt,
        envelope_id=bytes.fromhex(BATCH["envelope_id"]),
        segment_size=BATCH["segment_size"],
        **arguments,
    )
    derived_keys = _derived(salt)
    wrapped_key = arguments["wrapped_key"]
    assert isinstance(wrapped_key, WrappedKey)
    data_key = arguments["data_key"]
    assert isinstance(data_key, DataKey)
    rewrapped = rewrap_envelope(
        record,
        data_key,
        WrappedKey(
            KeyReference(INPUTS["kek_uri"], REWRAP["kek_version"]),
            bytes.fromhex(REWRAP["wrapped_key"]),
        ),
    )
    tee = TeeKeyPair._from_seeds(
        bytes.fromhex(HPKE["mlkem_seed"]), bytes.fromhex(HPKE["x25519_private"])
    )
    info = release_info(HPKE["purpose"], wrapped_key.key_id)
    sealed = previous_hpke_sealed
    if sealed is None or _opens(tee, sealed, info) is None:
        sealed = seal_to_tee(tee.public_bytes(), bytes.fromhex(INPUTS["dek"]), info).hex()
    synthetic_key = bytes(i % 256 for i in range(1216))
    return {
        "description": "sealbeam envelope v1 known-answer vectors; see docs/FORMAT.md section 6",
        "inputs": INPUTS,
        "derived": {
            "hkdf_info": hkdf_info(ALGORITHM_AES256GCM_HKDF_SHA512).hex(),
            "aes_key": derived_keys[0],
            "commitment": derived_keys[1],
            "header_key": derived_keys[2],
            "dek_wrap_aad": dek_wrap_aad(INPUTS["region"], INPUTS["producer_id"]).hex(),
            "key_id": wrapped_key.key_id,
        },
        "record": {
            **RECORD,
            "header_length": read_header(record)[1],
            "envelope": record.hex(),
        },
        "record_rewrapped": {
            **REWRAP,
            "header_length": read_header(rewrapped)[1],
            "envelope": rewrapped.hex(),
        },
        "batch": {
            **BATCH,
            "header_length": read_header(batch)[1],
            "envelope": batch.hex(),
        },
        "hpke": {
            **HPKE,
            "tee_public_key_sha256": hashlib.sha256(tee.public_bytes()).hexdigest(),
            "info": info.hex(),
            "secret": INPUTS["dek"],
            "sealed": sealed,
        },
        "report_data": {
            **REPORT_DATA,
            "binding": report_data_binding(
                bytes.fromhex(REPORT_DATA["nonce"]), synthetic_key
            ).hex(),
        },
    }


def _derived(salt: bytes) -> tuple[str, str, str]:
    """AES key, commitment and header key, exposed for implementers debugging a decoder."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    okm = HKDF(
        algorithm=hashes.SHA512(),
        length=96,
        salt=salt,
        info=hkdf_info(ALGORITHM_AES256GCM_HKDF_SHA512),
    ).derive(bytes.fromhex(INPUTS["dek"]))
    keys = derive_envelope_keys(
        DataKey(bytes.fromhex(INPUTS["dek"])), salt, ALGORITHM_AES256GCM_HKDF_SHA512
    )
    assert (keys.commitment, keys.header_key) == (okm[32:64], okm[64:96])
    return okm[:32].hex(), keys.commitment.hex(), keys.header_key.hex()


def _opens(tee: TeeKeyPair, sealed_hex: str, info: bytes) -> bytes | None:
    from envelope import KeyTransportError

    try:
        return tee.open(bytes.fromhex(sealed_hex), info)
    except KeyTransportError:
        return None


def main() -> None:
    previous = None
    if VECTOR_PATH.exists():
        previous = json.loads(VECTOR_PATH.read_text(encoding="utf-8"))["hpke"]["sealed"]
    vectors = build_vectors(previous)
    VECTOR_PATH.write_text(
        json.dumps(vectors, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {VECTOR_PATH}")


if __name__ == "__main__":
    main()
