"""Smaller holes from the attacker's report: unusable TEE keys, leaked paths and Rust debug text.

- attest refuses a TEE public key that HPKE cannot use (typed 400 ``bad_tee_key``) before
  verifying evidence, and the nonce stays unspent;
- a release for a KEK the keyring does not hold names the KEK, not the keyring's file;
- a malformed certificate in SEV-SNP evidence is described without cryptography's Rust
  debug structure.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from envelope.keys import KeyReference, WrappedKey, dek_wrap_aad
from envelope.transport import TeeKeyPair, report_data_binding
from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.library_errors import library_reason
from keybroker.attestation.snp.certificates import load_der_certificate
from keybroker.client import BrokerClient, BrokerNotFoundError
from keybroker.kms.local import LocalKeyring
from keybroker.service.server import RunningBroker
from tests.support.broker import (
    attest_simulated_worker,
    ledger_entries,
    running_broker,  # noqa: F401  (a fixture)
)

GOOD_KEY = TeeKeyPair.generate().public_bytes()
UNUSABLE_KEYS = {
    "all zero (X25519 low-order point)": bytes(len(GOOD_KEY)),
    "X25519 half zero": GOOD_KEY[:-32] + bytes(32),
    "ML-KEM half not a key": b"\xff" * (len(GOOD_KEY) - 32) + GOOD_KEY[-32:],
}


@pytest.mark.parametrize("name", sorted(UNUSABLE_KEYS))
def test_attest_refuses_a_tee_key_hpke_cannot_use(
    running_broker: RunningBroker, name: str  # noqa: F811
) -> None:
    bad_key = UNUSABLE_KEYS[name]
    settings = running_broker.settings
    assert settings.dev_chain_dir is not None
    with BrokerClient(running_broker.url) as client:
        nonce = client.challenge()
        evidence = SimulatedSnpProvider(settings.dev_chain_dir).collect(
            report_data_binding(nonce, bad_key)
        )
        body = {
            "nonce": base64.b64encode(nonce).decode(),
            "tee": evidence.tee,
            "evidence": base64.b64encode(evidence.evidence).decode(),
            "endorsements": {
                k: base64.b64encode(v).decode() for k, v in evidence.endorsements.items()
            },
            "tee_public_key": base64.b64encode(bad_key).decode(),
        }
        response = httpx.post(f"{running_broker.url}/v1/attest", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "bad_tee_key"
        # the nonce was not spent: the same challenge still opens a session with a good key
        good = TeeKeyPair.generate()
        evidence = SimulatedSnpProvider(settings.dev_chain_dir).collect(
            report_data_binding(nonce, good.public_bytes())
        )
        session = client.attest(
            nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements),
            good.public_bytes(),
        )
        assert session.id
    denial = [e for e in ledger_entries(settings, "attest") if e.decision == "denied"][-1]
    assert denial.details["error"] == "bad_tee_key"


def test_an_unknown_kek_does_not_name_the_keyring_file(
    running_broker: RunningBroker,  # noqa: F811
) -> None:
    settings = running_broker.settings
    with BrokerClient(running_broker.url) as client:
        _keys, session = attest_simulated_worker(client, settings)
        keyring = LocalKeyring.open(settings.keyring_path)
        real = keyring.wrap(keyring.kek_for_region("eu"), bytes(32), dek_wrap_aad("eu", "acme"))
        missing = KeyReference("local://keyring/eu/no-such-kek", real.kek.version)
        wrapped = WrappedKey(missing, real.ciphertext)
        with pytest.raises(BrokerNotFoundError) as caught:
            client.release(session, wrapped, "eu", "acme")
    reason = str(caught.value)
    assert "no-such-kek" in reason
    assert str(settings.keyring_path) not in reason and "keyring.json" not in reason
    for entry in ledger_entries(settings):
        assert str(settings.state_dir) not in str(entry.details)


def test_a_malformed_certificate_is_described_without_rust_debug_text() -> None:
    with pytest.raises(EvidenceFormatError) as caught:
        load_der_certificate(b"0\x03\x02\x01\x05", "VCEK")
    message = str(caught.value)
    assert "{" not in message and "ParseError" not in message and "kind:" not in message
    assert "error parsing asn1 value" in message and "(at " in message


def test_library_reason_keeps_plain_messages() -> None:
    assert library_reason(ValueError("plain words")) == "plain words"
    rust = ValueError('error parsing asn1 value: ParseError { kind: X, location: ["A::b"] }')
    assert library_reason(rust) == "error parsing asn1 value (at A::b)"
    assert library_reason(ValueError("Error { x }")) == "ValueError"
