"""Every KMS backend behind the real broker over HTTP: local, gcp-kms, azure-kv and pkcs11.

For each backend the ``eu`` region's KEK lives on that backend; a partner seals a record with
a DEK wrapped through it; a simulated SEV-SNP worker attests, has the broker release the DEK
over HTTP and opens the record; ``generate`` mints an output DEK wrapped by the same backend,
which a second worker gets released and opens. Transient faults injected into the fakes (the
gRPC Cloud KMS, the HTTPS Key Vault, a re-initialised SoftHSM) are retried by the backend and
the request succeeds; permanent ones (permission denied, key disabled, key destroyed, wrong
location) come back with their HTTP status and a ledger entry naming the reason.

The backends are the real ones (google-cloud-kms, azure-keyvault-keys, python-pkcs11),
bound to the fakes and injected into the broker through ``kms_backends``; the local keyring
is the state's own file. Backoff sleeps are recorded, not slept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from envelope import WrappedKey, read_header, seal_record
from keybroker.client import BrokerError, BrokerUnavailableError
from keybroker.kms.base import KeyManagementService, KmsTransientError
from keybroker.kms.local import LocalKeyring
from tests.keybroker.kms.broker_deployments import (
    AAD,
    PRODUCER,
    REGION,
    SCHEMA_FINGERPRINT,
    SCHEMES,
    SPEC_FINGERPRINT,
    Deployment,
    partner_seals,
    worker_generates,
    worker_opens,
)
from tests.support.broker import ledger_entries, start_broker


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The broker of the scheme in ``request.param`` (parametrize with ``indirect=True``)."""
    fixture_of_scheme = {"local": "local_broker", "gcp-kms": "gcp_broker",
                         "azure-kv": "azure_broker", "pkcs11": "pkcs11_broker"}
    return request.getfixturevalue(fixture_of_scheme[request.param])


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("deployment", list(SCHEMES), indirect=True)
def test_partner_record_and_worker_output_round_trip(deployment: Deployment) -> None:
    plaintext = f'{{"customer": "c-1", "via": "{deployment.scheme}"}}'.encode()
    envelope = partner_seals(deployment, plaintext)
    assert worker_opens(deployment.broker, envelope) == plaintext
    release = ledger_entries(deployment.broker.settings, "release")[-1]
    assert release.decision == "granted"
    assert release.details["kek"] == deployment.kek_uri
    assert release.details["key_id"] == read_header(envelope)[0].wrapped_key.key_id
    assert release.details["dek_source"] == "kms"

    output_key, output_wrapped = worker_generates(
        deployment.broker, spec_fingerprint=SPEC_FINGERPRINT, purpose="features/v1"
    )
    assert output_wrapped.kek.uri == deployment.kek_uri
    assert deployment.kms.unwrap(output_wrapped, AAD) == output_key.secret_bytes()
    generate = ledger_entries(deployment.broker.settings, "generate")[-1]
    assert generate.decision == "granted"
    assert generate.details["kek"] == deployment.kek_uri
    assert generate.details["kek_version"] == output_wrapped.kek.version
    assert generate.details["spec_fingerprint"] == SPEC_FINGERPRINT.hex()
    assert generate.details["purpose"] == "features/v1"

    output = seal_record(b'{"feature": 1.5}', data_key=output_key, wrapped_key=output_wrapped,
                         region=REGION, producer_id=PRODUCER,
                         schema_fingerprint=SCHEMA_FINGERPRINT, context={})
    assert worker_opens(deployment.broker, output) == b'{"feature": 1.5}'
    for entry in ledger_entries(deployment.broker.settings):
        assert output_key.secret_bytes().hex() not in repr(entry.details)


# -- transient faults ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("deployment", ["gcp-kms", "azure-kv", "pkcs11"], indirect=True)
def test_transient_faults_are_retried_and_the_request_succeeds(deployment: Deployment) -> None:
    assert deployment.fail_unwrap_once is not None and deployment.fail_wrap_once is not None
    envelope = partner_seals(deployment, b"retried")
    slept = len(deployment.sleeps)
    deployment.fail_unwrap_once()
    assert worker_opens(deployment.broker, envelope) == b"retried"
    assert len(deployment.sleeps) == slept + 1
    assert ledger_entries(deployment.broker.settings, "release")[-1].decision == "granted"

    deployment.fail_wrap_once()
    output_key, output_wrapped = worker_generates(deployment.broker)
    assert len(deployment.sleeps) == slept + 2
    assert deployment.kms.unwrap(output_wrapped, AAD) == output_key.secret_bytes()
    assert ledger_entries(deployment.broker.settings, "generate")[-1].decision == "granted"


class FlakyKeyring:
    """The local keyring, failing the next unwrap with a transient error when told to."""

    scheme = "local"

    def __init__(self, keyring: LocalKeyring) -> None:
        self.keyring = keyring
        self.fail_next = False

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        return self.keyring.wrap(kek_uri, dek, aad)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        if self.fail_next:
            self.fail_next = False
            raise KmsTransientError("keyring file locked by a backup")
        return self.keyring.unwrap(wrapped, aad)


def test_a_transient_fault_the_backend_does_not_retry_is_503_and_not_cached(
    tmp_path: Path,
) -> None:
    flaky: list[FlakyKeyring] = []

    def backends(settings: Any) -> dict[str, KeyManagementService]:
        flaky.append(FlakyKeyring(LocalKeyring.open(settings.keyring_path)))
        return {"local": flaky[0]}

    with start_broker(tmp_path / "state", kms_backends=backends) as broker:
        deployed = Deployment("local", broker, flaky[0], "local://keyring/eu/kek-1", [])
        envelope = partner_seals(deployed, b"later")
        flaky[0].fail_next = True
        with pytest.raises(BrokerUnavailableError) as raised:
            worker_opens(broker, envelope)
        assert (raised.value.status, raised.value.error) == (503, "kms_unavailable")
        denied = ledger_entries(broker.settings, "release")[-1]
        assert denied.decision == "denied" and denied.details["error"] == "kms_unavailable"
        assert denied.details["reason"] == "keyring file locked by a backup"
        assert worker_opens(broker, envelope) == b"later"  # the failure was not cached


# -- permanent failures ----------------------------------------------------------------------

PERMANENT_FAILURES = [
    ("local", "disabled", 403, "kms_permission_denied", "is disabled"),
    ("local", "destroyed", 404, "key_destroyed", "was destroyed"),
    ("gcp-kms", "permission", 403, "kms_permission_denied", "PERMISSION_DENIED"),
    ("gcp-kms", "disabled", 403, "kms_permission_denied", "is DISABLED"),
    ("gcp-kms", "destroyed", 404, "key_destroyed", "is DESTROYED"),
    ("gcp-kms", "location", 403, "kek_location_denied", "location 'us-central1'"),
    ("azure-kv", "permission", 403, "kms_permission_denied", "unwrapKey permission"),
    ("azure-kv", "disabled", 403, "kms_permission_denied", "disabled"),
    ("azure-kv", "destroyed", 404, "key_not_found", "HTTP 404 KeyNotFound"),
    ("pkcs11", "disabled", 403, "kms_permission_denied", "may not decrypt"),
    ("pkcs11", "destroyed", 404, "key_not_found", "has no version"),
]


@pytest.mark.parametrize(
    ("deployment", "failure", "status", "error", "reason"),
    PERMANENT_FAILURES,
    indirect=["deployment"],
    ids=[f"{scheme}-{failure}" for scheme, failure, *_ in PERMANENT_FAILURES],
)
def test_permanent_failures_are_typed_and_audited(
    deployment: Deployment, failure: str, status: int, error: str, reason: str
) -> None:
    make_kek, break_kek = deployment.breakers[failure]
    envelope = partner_seals(deployment, b"never opened", kek_uri=make_kek())
    wrapped = read_header(envelope)[0].wrapped_key
    break_kek(wrapped)
    kms_calls = len(deployment.fake.calls) if deployment.scheme == "gcp-kms" else None
    slept = len(deployment.sleeps)

    with pytest.raises(BrokerError) as raised:
        worker_opens(deployment.broker, envelope)
    assert (raised.value.status, raised.value.error) == (status, error)
    assert reason in raised.value.reason
    assert len(deployment.sleeps) == slept  # permanent: never retried

    entry = ledger_entries(deployment.broker.settings, "release")[-1]
    assert entry.decision == "denied"
    assert (entry.details["status"], entry.details["error"]) == (status, error)
    assert reason in str(entry.details["reason"])
    assert entry.details["kek"] == wrapped.kek.uri
    assert entry.details["key_id"] == wrapped.key_id
    if failure == "location":  # refused before the KMS is asked
        assert len(deployment.fake.calls) == kms_calls


@pytest.mark.parametrize("deployment", ["gcp-kms", "azure-kv"], indirect=True)
def test_a_refused_wrap_fails_generate_with_a_typed_error_and_ledger_entry(
    deployment: Deployment,
) -> None:
    assert deployment.fail_wrap_permanently is not None
    deployment.fail_wrap_permanently()
    with pytest.raises(BrokerError) as raised:
        worker_generates(deployment.broker, purpose="features/v1")
    assert (raised.value.status, raised.value.error) == (403, "kms_permission_denied")
    entry = ledger_entries(deployment.broker.settings, "generate")[-1]
    assert entry.decision == "denied" and entry.details["error"] == "kms_permission_denied"
    assert "wrapKey permission" in str(entry.details["reason"]) or "useToEncrypt" in str(
        entry.details["reason"]
    )
    assert entry.details["kek"] == deployment.kek_uri
    assert entry.details["purpose"] == "features/v1"

