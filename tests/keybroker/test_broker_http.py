"""The broker over real HTTP on loopback, with the simulated SEV-SNP worker producing evidence.

Three brokers: the demo state with its policy narrowed to region ``eu`` (and an adjustable
clock), one whose policy switches simulated evidence off globally (so the dev root is not
even loaded), and one that loads the dev root but whose only rule refuses simulated
evidence. Every denial is checked for its status and for its entry in the audit ledger.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from envelope.keys import DataKey, KeyReference, WrappedKey, dek_wrap_aad
from envelope.transport import TeeKeyPair, release_info, report_data_binding
from keybroker.client import (
    GENERATE_PURPOSE,
    NAMED_PURPOSE,
    RELEASE_PURPOSE,
    BrokerAuthError,
    BrokerClient,
    BrokerDeniedError,
    BrokerError,
    BrokerNotFoundError,
    BrokerSession,
)
from keybroker.kms.local import LocalKeyring
from keybroker.ledger import AuditLedger, LedgerEntry
from keybroker.service.server import RunningBroker
from tests.support.broker import start_broker

RULE = "demo-simulated-snp"


class AdjustableClock:
    """Real time plus an offset the tests can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _eu_only(document: dict[str, Any]) -> None:
    for rule in document["rules"]:
        rule["regions"] = ["eu"]
        rule["keks"] = ["local://keyring/eu/*"]


@pytest.fixture(scope="module")
def clock() -> AdjustableClock:
    return AdjustableClock()


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, clock: AdjustableClock
) -> Iterator[RunningBroker]:
    state = tmp_path_factory.mktemp("broker") / "state"
    with start_broker(state, policy_edit=_eu_only, clock=clock) as running:
        yield running


@pytest.fixture
def client(broker: RunningBroker) -> Iterator[BrokerClient]:
    with BrokerClient(broker.url) as broker_client:
        yield broker_client


@pytest.fixture(scope="module")
def keyring(broker: RunningBroker) -> LocalKeyring:
    return LocalKeyring.open(broker.settings.keyring_path)


def provider(broker: RunningBroker, **options: Any) -> SimulatedSnpProvider:
    assert broker.settings.dev_chain_dir is not None
    return SimulatedSnpProvider(broker.settings.dev_chain_dir, **options)


def attest(
    client: BrokerClient,
    evidence_provider: SimulatedSnpProvider,
    tee_keys: TeeKeyPair,
    *,
    bound_key: bytes | None = None,
    nonce: bytes | None = None,
) -> BrokerSession:
    """Challenge, collect evidence binding (nonce, bound_key or the TEE key), attest."""
    nonce = client.challenge() if nonce is None else nonce
    public_key = tee_keys.public_bytes()
    evidence = evidence_provider.collect(report_data_binding(nonce, bound_key or public_key))
    return client.attest(
        nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements), public_key
    )


def ledger_entries(broker: RunningBroker) -> list[LedgerEntry]:
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        return list(ledger.entries())


def last_entry(broker: RunningBroker, event: str) -> LedgerEntry:
    return [entry for entry in ledger_entries(broker) if entry.event == event][-1]


# -- the happy path -------------------------------------------------------------------------


def test_attest_release_generate_and_named_key(
    broker: RunningBroker, client: BrokerClient, keyring: LocalKeyring
) -> None:
    tee_keys = TeeKeyPair.generate()
    session = attest(client, provider(broker), tee_keys)
    assert session.simulated is True
    assert session.claims["tee"] == "sev-snp" and session.claims["simulated"] is True
    assert session.expires_at > time.time()
    granted = last_entry(broker, "attest")
    assert granted.decision == "granted" and granted.details["rule"] == RULE
    assert granted.details["simulated"] is True

    data_key = DataKey.generate()
    aad = dek_wrap_aad("eu", "acme")
    wrapped = keyring.wrap(keyring.kek_for_region("eu"), data_key.secret_bytes(), aad)
    sealed = client.release(session, wrapped, "eu", "acme")
    opened = tee_keys.open(sealed, release_info(RELEASE_PURPOSE, wrapped.key_id))
    assert opened == data_key.secret_bytes()
    assert data_key.secret_bytes() not in sealed
    release = last_entry(broker, "release")
    assert release.decision == "granted"
    assert release.details["key_id"] == wrapped.key_id
    assert release.details["simulated"] is True
    assert release.details["region"] == "eu" and release.details["producer_id"] == "acme"

    sealed_output, output_wrapped = client.generate(session, "eu", "acme")
    output_key = tee_keys.open(sealed_output, release_info(GENERATE_PURPOSE, output_wrapped.key_id))
    assert output_wrapped.kek == KeyReference("local://keyring/eu/kek-1", "1")
    assert keyring.unwrap(output_wrapped, aad) == output_key
    assert last_entry(broker, "generate").details["key_id"] == output_wrapped.key_id

    sealed_name = client.release_named(session, "pseudonym/acme")
    secret = tee_keys.open(sealed_name, release_info(NAMED_PURPOSE, "pseudonym/acme"))
    assert len(secret) == 32
    assert last_entry(broker, "release-named").details["simulated"] is True

    for entry in ledger_entries(broker):
        text = repr(entry.details)
        for key in (data_key.secret_bytes(), output_key, secret):
            assert key.hex() not in text
            assert base64.b64encode(key).decode() not in text
    with AuditLedger(broker.settings.ledger_path, read_only=True) as ledger:
        assert ledger.verify().ok


def test_health_and_openapi(broker: RunningBroker) -> None:
    health = httpx.get(f"{broker.url}/v1/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    spec = httpx.get(f"{broker.url}/openapi.json").json()
    for path in (
        "/v1/challenge",
        "/v1/attest",
        "/v1/keys/release",
        "/v1/keys/generate",
        "/v1/keys/release-named",
        "/v1/health",
    ):
        assert path in spec["paths"]
    assert "AttestRequest" in spec["components"]["schemas"]


# -- denials --------------------------------------------------------------------------------


def test_nonce_reuse_is_refused(broker: RunningBroker, client: BrokerClient) -> None:
    tee_keys = TeeKeyPair.generate()
    nonce = client.challenge()
    attest(client, provider(broker), tee_keys, nonce=nonce)
    with pytest.raises(BrokerAuthError) as caught:
        attest(client, provider(broker), tee_keys, nonce=nonce)
    assert caught.value.status == 401 and caught.value.error == "bad_nonce"
    entry = last_entry(broker, "attest")
    assert entry.decision == "denied" and entry.details["reason"] == "nonce already used"


def test_expired_nonce_is_refused(
    broker: RunningBroker, client: BrokerClient, clock: AdjustableClock
) -> None:
    nonce = client.challenge()
    clock.offset += broker.settings.nonce_ttl_seconds + 1
    try:
        with pytest.raises(BrokerAuthError, match="expired"):
            attest(client, provider(broker), TeeKeyPair.generate(), nonce=nonce)
    finally:
        clock.offset = 0.0
    entry = last_entry(broker, "attest")
    assert entry.decision == "denied" and "expired" in entry.details["reason"]


def test_expired_session_is_refused(
    broker: RunningBroker, client: BrokerClient, clock: AdjustableClock
) -> None:
    session = attest(client, provider(broker), TeeKeyPair.generate())
    assert client.release_named(session, "pseudonym/acme")  # live: served (and cached)
    clock.offset += broker.settings.session_ttl_seconds + 1
    try:
        with pytest.raises(BrokerAuthError, match="expired") as caught:
            client.release_named(session, "pseudonym/acme")
    finally:
        clock.offset = 0.0
    assert caught.value.error == "bad_session"


def test_hot_routes_answer_as_the_framework_does(
    broker: RunningBroker, client: BrokerClient
) -> None:
    """The same request through the lean route layer (``application/json``) and through
    FastAPI's router (a ``+json`` type: JSON to the framework, left to it by the layer)."""
    other_json = {"content-type": "application/sealbeam-test+json"}
    session = attest(client, provider(broker), TeeKeyPair.generate())
    cases = [
        ("/v1/keys/release-named", {"session_id": session.id, "name": "pseudonym/nobody"}),
        ("/v1/keys/release-named", {"session_id": session.id[:-4] + "AAAA",
                                    "name": "pseudonym/acme"}),
        ("/v1/keys/generate", {"session_id": session.id, "region": "us",
                               "producer_id": "acme"}),
        ("/v1/keys/release", {"session_id": session.id, "kek_uri": "local://keyring/eu/kek",
                              "kek_version": "9", "wrapped_dek": "***", "region": "eu",
                              "producer_id": "acme"}),
        ("/v1/attest", {"nonce": "AAAA", "tee": "sev-snp", "evidence": "AAAA",
                        "tee_public_key": "AAAA"}),
    ]
    for path, body in cases:
        content = json.dumps(body).encode()
        hot = httpx.post(f"{broker.url}{path}", content=content,
                         headers={"content-type": "application/json"})
        framework = httpx.post(f"{broker.url}{path}", content=content, headers=other_json)
        assert hot.status_code == framework.status_code != 200, (path, hot.text)
        assert hot.json() == framework.json(), path
        assert set(hot.json()) == {"error", "reason"}
        assert hot.headers["content-type"] == "application/json"
    granted = [httpx.post(f"{broker.url}/v1/keys/release-named", headers=headers,
                          content=json.dumps({"session_id": session.id,
                                              "name": "pseudonym/acme"}).encode())
               for headers in ({"content-type": "application/json"}, other_json)]
    assert [reply.status_code for reply in granted] == [200, 200]
    assert set(granted[0].json()) == set(granted[1].json())
    assert granted[0].json()["name"] == granted[1].json()["name"] == "pseudonym/acme"


def test_unknown_nonce_is_refused(broker: RunningBroker, client: BrokerClient) -> None:
    with pytest.raises(BrokerAuthError, match="unknown"):
        attest(client, provider(broker), TeeKeyPair.generate(), nonce=bytes(32))
    assert last_entry(broker, "attest").details["error"] == "bad_nonce"


def test_evidence_bound_to_another_key_is_refused(
    broker: RunningBroker, client: BrokerClient
) -> None:
    tee_keys, other = TeeKeyPair.generate(), TeeKeyPair.generate()
    with pytest.raises(BrokerAuthError) as caught:
        attest(client, provider(broker), tee_keys, bound_key=other.public_bytes())
    assert caught.value.error == "report_data_mismatch"
    entry = last_entry(broker, "attest")
    assert entry.decision == "denied" and entry.details["status"] == 401
    assert entry.details["error"] == "report_data_mismatch"


def test_debug_report_is_denied_by_a_debug_false_policy(
    broker: RunningBroker, client: BrokerClient
) -> None:
    with pytest.raises(BrokerDeniedError, match="debug enabled") as caught:
        attest(client, provider(broker, debug=True), TeeKeyPair.generate())
    assert caught.value.status == 403
    entry = last_entry(broker, "attest")
    assert entry.decision == "denied" and entry.details["claims"]["debug"] is True
    assert f"debug enabled, not allowed by rule {RULE}" in entry.details["reason"]


def test_unlisted_measurement_is_denied(broker: RunningBroker, client: BrokerClient) -> None:
    with pytest.raises(BrokerDeniedError, match="measurement not allowed"):
        attest(client, provider(broker, measurement="cc" * 48), TeeKeyPair.generate())
    entry = last_entry(broker, "attest")
    assert entry.decision == "denied" and entry.details["claims"]["measurement"] == "cc" * 48
    assert entry.details["status"] == 403


def test_region_outside_the_policy_is_denied(
    broker: RunningBroker, client: BrokerClient, keyring: LocalKeyring
) -> None:
    session = attest(client, provider(broker), TeeKeyPair.generate())
    wrapped = keyring.wrap(keyring.kek_for_region("us"), bytes(32), dek_wrap_aad("us", "acme"))
    with pytest.raises(BrokerDeniedError, match="region 'us' not allowed by rule") as caught:
        client.release(session, wrapped, "us", "acme")
    assert caught.value.status == 403
    entry = last_entry(broker, "release")
    assert entry.decision == "denied" and entry.details["region"] == "us"
    assert entry.details["key_id"] == wrapped.key_id and entry.details["simulated"] is True
    with pytest.raises(BrokerDeniedError, match="region 'us'"):
        client.generate(session, "us", "acme")
    assert last_entry(broker, "generate").decision == "denied"


def test_key_bound_to_another_producer_does_not_unwrap(
    broker: RunningBroker, client: BrokerClient, keyring: LocalKeyring
) -> None:
    session = attest(client, provider(broker), TeeKeyPair.generate())
    wrapped = keyring.wrap(keyring.kek_for_region("eu"), bytes(32), dek_wrap_aad("eu", "acme"))
    with pytest.raises(BrokerError) as caught:
        client.release(session, wrapped, "eu", "globex")
    assert caught.value.status == 400 and caught.value.error == "wrapped_key_rejected"
    assert last_entry(broker, "release").details["error"] == "wrapped_key_rejected"


def test_unknown_kek_version_session_and_named_key(
    broker: RunningBroker, client: BrokerClient, keyring: LocalKeyring
) -> None:
    session = attest(client, provider(broker), TeeKeyPair.generate())
    wrapped = keyring.wrap(keyring.kek_for_region("eu"), bytes(32), dek_wrap_aad("eu", "acme"))
    with pytest.raises(BrokerNotFoundError, match="no version '9'"):
        client.release(
            session,
            WrappedKey(KeyReference(wrapped.kek.uri, "9"), wrapped.ciphertext),
            "eu",
            "acme",
        )
    assert last_entry(broker, "release").details["status"] == 404
    with pytest.raises(BrokerAuthError, match="session"):
        client.release("not-a-session", wrapped, "eu", "acme")
    with pytest.raises(BrokerDeniedError, match="named key 'pseudonym/globex' not allowed"):
        client.release_named(session, "pseudonym/globex")
    assert last_entry(broker, "release-named").decision == "denied"


def test_generate_records_the_spec_fingerprint_and_purpose(
    broker: RunningBroker, client: BrokerClient, keyring: LocalKeyring
) -> None:
    tee_keys = TeeKeyPair.generate()
    session = attest(client, provider(broker), tee_keys)
    fingerprint = bytes(range(100, 132))
    sealed, wrapped = client.generate(
        session, "eu", "acme", spec_fingerprint=fingerprint, purpose="features/v1"
    )
    output_key = tee_keys.open(sealed, release_info(GENERATE_PURPOSE, wrapped.key_id))
    assert keyring.unwrap(wrapped, dek_wrap_aad("eu", "acme")) == output_key
    entry = last_entry(broker, "generate")
    assert entry.decision == "granted" and entry.details["key_id"] == wrapped.key_id
    assert entry.details["spec_fingerprint"] == fingerprint.hex()
    assert entry.details["purpose"] == "features/v1"

    client.generate(session, "eu", "acme")  # the fields stay optional
    assert "spec_fingerprint" not in last_entry(broker, "generate").details

    body = {"session_id": session.id, "region": "eu", "producer_id": "acme"}
    upper = httpx.post(f"{broker.url}/v1/keys/generate",
                       json={**body, "spec_fingerprint": fingerprint.hex().upper()})
    assert upper.status_code == 200
    assert last_entry(broker, "generate").details["spec_fingerprint"] == fingerprint.hex()
    entries_before = len(ledger_entries(broker))
    for bad in ({"spec_fingerprint": "ab" * 31}, {"spec_fingerprint": "g" * 64},
                {"purpose": "new\nline"}):
        refused = httpx.post(f"{broker.url}/v1/keys/generate", json={**body, **bad})
        assert refused.status_code == 422, bad
        assert refused.json()["error"] == "invalid_request"
        assert next(iter(bad)) in refused.json()["reason"]
    over_long = (
        {"purpose": "p" * 65},
        {"destination": {"sink": "file:///" + "d" * 1024, "location": "local", "verified": True}},
        {"destination": {"sink": "file:///out", "location": "L" * 65, "verified": True}},
        {"region": "r" * 65},
        {"producer_id": "p" * 257},
        {"session_id": "s" * 9000},
    )
    for bad in over_long:  # a field over its bound: 400 in the broker's shape, not 422
        refused = httpx.post(f"{broker.url}/v1/keys/generate", json={**body, **bad})
        assert refused.status_code == 400, bad
        assert set(refused.json()) == {"error", "reason"}
        assert refused.json()["error"] == "bad_request"
        assert next(iter(bad)) in refused.json()["reason"]
        assert "ppp" not in refused.json()["reason"]  # the value is not echoed
    assert len(ledger_entries(broker)) == entries_before  # refused before the service


def test_malformed_requests(broker: RunningBroker, client: BrokerClient) -> None:
    nonce = base64.b64encode(client.challenge()).decode()
    good_key = base64.b64encode(TeeKeyPair.generate().public_bytes()).decode()
    body = {"nonce": nonce, "tee": "sev-snp", "evidence": "AAAA", "tee_public_key": good_key}

    bad_base64 = httpx.post(f"{broker.url}/v1/attest", json={**body, "evidence": "***"})
    assert bad_base64.status_code == 400
    assert bad_base64.json() == {"error": "bad_request", "reason": "evidence: not valid base64"}

    short_key = httpx.post(f"{broker.url}/v1/attest", json={**body, "tee_public_key": "AAAA"})
    assert short_key.status_code == 400 and "tee_public_key" in short_key.json()["reason"]

    missing = httpx.post(f"{broker.url}/v1/attest", json={"nonce": nonce})
    assert missing.status_code == 422 and missing.json()["error"] == "invalid_request"
    assert "evidence" in missing.json()["reason"]

    extra = httpx.post(
        f"{broker.url}/v1/keys/generate",
        json={"session_id": "x", "region": "eu", "producer_id": "p", "more": 1},
    )
    assert extra.status_code == 422

    huge = httpx.post(
        f"{broker.url}/v1/attest",
        content=b"{" + b" " * (2 << 20) + b"}",
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413 and huge.json()["error"] == "request_too_large"

    entry = last_entry(broker, "attest")
    assert entry.decision == "denied"


def test_unsupported_tee_is_a_bad_request(broker: RunningBroker, client: BrokerClient) -> None:
    nonce = client.challenge()
    response = httpx.post(
        f"{broker.url}/v1/attest",
        json={
            "nonce": base64.b64encode(nonce).decode(),
            "tee": "tdx",
            "evidence": "AAAA",
            "tee_public_key": base64.b64encode(TeeKeyPair.generate().public_bytes()).decode(),
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "unsupported_tee"
    assert last_entry(broker, "attest").details["error"] == "unsupported_tee"


# -- simulated evidence where the policy does not allow it -----------------------------------


def _simulation_off_globally(document: dict[str, Any]) -> None:
    document["allow_simulated"] = False
    for rule in document["rules"]:
        rule["allow_simulated"] = False


def _simulation_off_in_the_rule(document: dict[str, Any]) -> None:
    for rule in document["rules"]:
        rule["allow_simulated"] = False


def test_simulated_evidence_without_global_allow_fails_verification(tmp_path: Path) -> None:
    with start_broker(tmp_path / "state", policy_edit=_simulation_off_globally) as running:
        with BrokerClient(running.url) as client, pytest.raises(BrokerAuthError) as caught:
            attest(client, provider(running), TeeKeyPair.generate())
        assert caught.value.status == 401 and caught.value.error == "evidence_not_verified"
        entry = last_entry(running, "attest")
        assert entry.decision == "denied" and entry.details["status"] == 401
        start = [e for e in ledger_entries(running) if e.event == "broker-start"][-1]
        assert start.details["allow_simulated"] is False


def test_simulated_evidence_denied_by_a_rule_without_allow_simulated(tmp_path: Path) -> None:
    with start_broker(tmp_path / "state", policy_edit=_simulation_off_in_the_rule) as running:
        with BrokerClient(running.url) as client, pytest.raises(BrokerDeniedError) as caught:
            attest(client, provider(running), TeeKeyPair.generate())
        assert caught.value.status == 403
        assert f"simulated evidence not allowed by rule {RULE}" in caught.value.reason
        entry = last_entry(running, "attest")
        assert entry.decision == "denied" and entry.details["simulated"] is True
        assert entry.details["reason"] == f"simulated evidence not allowed by rule {RULE}"
