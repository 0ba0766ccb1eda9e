"""/v1/attest with bound keys: the evidence must bind them; the signed result lists them."""

from __future__ import annotations

import base64

import httpx
import pytest

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from envelope.transport import TeeKeyPair, report_data_binding
from keybroker.client import BrokerAuthError, BrokerClient
from keybroker.grants import verify_attestation_result
from keybroker.identity import BrokerPublicKey
from keybroker.service.server import RunningBroker
from tests.support.broker import running_broker  # noqa: F401  (a fixture)


def _pinned(broker: RunningBroker) -> BrokerClient:
    key = BrokerPublicKey.load(broker.settings.identity_path)
    return BrokerClient(broker.url, broker_identity=key)


def test_bound_keys_are_verified_and_listed(running_broker: RunningBroker) -> None:  # noqa: F811
    provenance = bytes(range(32))
    with _pinned(running_broker) as client:
        tee = TeeKeyPair.generate()
        nonce = client.challenge()
        evidence = SimulatedSnpProvider(running_broker.settings.dev_chain_dir).collect(
            report_data_binding(nonce, tee.public_bytes(), bound_keys={"provenance": provenance}))
        session = client.attest(nonce, evidence.tee, evidence.evidence,
                                dict(evidence.endorsements), tee.public_bytes(),
                                {"provenance": provenance})
        result = verify_attestation_result(client.broker_identity, session.attestation_result)
    assert result.tee_public_keys == {"hpke": tee.public_bytes(), "provenance": provenance}


def test_a_key_the_evidence_did_not_bind_is_refused(running_broker: RunningBroker  # noqa: F811
                                                    ) -> None:
    with _pinned(running_broker) as client:
        tee = TeeKeyPair.generate()
        nonce = client.challenge()
        evidence = SimulatedSnpProvider(running_broker.settings.dev_chain_dir).collect(
            report_data_binding(nonce, tee.public_bytes(), bound_keys={"provenance": b"a" * 32}))
        with pytest.raises(BrokerAuthError):
            client.attest(nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements),
                          tee.public_bytes(), {"provenance": b"b" * 32})


def test_the_hpke_label_is_reserved(running_broker: RunningBroker) -> None:  # noqa: F811
    body = {"nonce": base64.b64encode(bytes(32)).decode(), "tee": "sev-snp",
            "evidence": "AA==",
            "tee_public_key": base64.b64encode(TeeKeyPair.generate().public_bytes()).decode(),
            "bound_keys": {"hpke": base64.b64encode(b"k" * 32).decode()}}
    reply = httpx.post(f"{running_broker.url}/v1/attest", json=body, timeout=10)
    assert reply.status_code == 400
    assert "hpke" in reply.text
