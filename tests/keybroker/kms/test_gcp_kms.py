"""The Cloud KMS backend against a local gRPC Cloud KMS (tests/keybroker/kms/fake_gcp_kms.py).

The real google-cloud-kms client talks to the fake over an insecure loopback channel, so the
requests, responses, CRC32C fields and status codes cross a real gRPC boundary. Backoff
sleeps are recorded instead of slept.
"""

from __future__ import annotations

import logging
import os
import random

import grpc
import pytest
from google.auth import exceptions as auth_exceptions
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service import transports
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope.keys import KeyReference, WrappedKey
from keybroker.kms import gcp
from keybroker.kms.base import (
    KeyDestroyedError,
    KeyManagementService,
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
    KmsUnwrapError,
)
from keybroker.kms.gcp import (
    GcpKms,
    KeyDisabledError,
    KeyLocationError,
    KmsIntegrityError,
    check_location,
    crc32c,
    parse_gcp_kek_uri,
)
from keybroker.kms.retry import Backoff
from tests.keybroker.kms.fake_gcp_kms import FakeKeyManagementService, State

KEY = "projects/sealbeam-test/locations/europe-west3/keyRings/eu-ring/cryptoKeys/kek"
OTHER_KEY = "projects/sealbeam-test/locations/europe-west3/keyRings/eu-ring/cryptoKeys/other"
URI = f"gcp-kms://{KEY}"
OTHER_URI = f"gcp-kms://{OTHER_KEY}"
AAD = b"region=eu;producer=acme"
ATTEMPTS = 4
BACKOFF = Backoff(attempts=ATTEMPTS, initial_delay=0.01, max_delay=0.04, multiplier=2.0)
EU_LOCATIONS = {"eu": {"europe-west1", "europe-west3", "eu"}, "us": {"us", "us-central1"}}


@pytest.fixture
def fake():
    service = FakeKeyManagementService()
    service.start()
    service.create_key(KEY)
    yield service
    service.stop()
    service.assert_all_used()  # a prepared response nobody consumed fails the test


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def kms(fake, sleeps):
    channel = grpc.insecure_channel(fake.address)
    client = kms_v1.KeyManagementServiceClient(
        transport=transports.KeyManagementServiceGrpcTransport(channel=channel)
    )
    yield GcpKms(client, backoff=BACKOFF, sleep=sleeps.append, rng=random.Random(7), timeout=5)
    channel.close()


# --- round trips ------------------------------------------------------------------------


def test_gcp_kms_satisfies_the_kms_protocol(kms):
    assert isinstance(kms, KeyManagementService)
    assert kms.scheme == "gcp-kms"


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(dek=st.binary(min_size=1, max_size=gcp.MAX_DEK_BYTES), aad=st.binary(max_size=256))
def test_wrap_then_unwrap_returns_the_dek(kms, dek, aad):
    wrapped = kms.wrap(URI, dek, aad)
    assert wrapped.kek == KeyReference(URI, "1")
    if len(dek) >= 16:
        assert dek not in wrapped.ciphertext
    assert kms.unwrap(wrapped, aad) == dek


def test_wrap_records_the_version_kms_used_and_old_versions_still_unwrap(kms, fake):
    dek_one, dek_two = os.urandom(32), os.urandom(32)
    first = kms.wrap(URI, dek_one, AAD)
    assert fake.rotate(KEY) == "2"
    second = kms.wrap(URI, dek_two, AAD)
    assert (first.kek.version, second.kek.version) == ("1", "2")
    assert first.key_id != second.key_id
    assert kms.unwrap(first, AAD) == dek_one
    assert kms.unwrap(second, AAD) == dek_two


def test_requests_carry_crc32c_fields_the_kms_verified(kms, fake):
    # The fake only sets verified_* when the request carried the checksum; wrap demands both.
    kms.wrap(URI, os.urandom(32), AAD)
    assert fake.calls == ["Encrypt"]


# --- authentication failures ------------------------------------------------------------


def test_unwrap_with_other_aad_fails_typed_and_is_not_retried(kms, fake, sleeps):
    wrapped = kms.wrap(URI, os.urandom(32), AAD)
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(wrapped, b"region=us;producer=acme")
    assert fake.calls == ["Encrypt", "Decrypt"]
    assert sleeps == []


def test_unwrap_under_another_key_fails(kms, fake):
    fake.create_key(OTHER_KEY)
    wrapped = kms.wrap(URI, os.urandom(32), AAD)
    moved = WrappedKey(KeyReference(OTHER_URI, wrapped.kek.version), wrapped.ciphertext)
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(moved, AAD)


def test_unwrap_of_tampered_ciphertext_fails(kms):
    wrapped = kms.wrap(URI, os.urandom(32), AAD)
    tampered = bytearray(wrapped.ciphertext)
    tampered[-1] ^= 0x80
    with pytest.raises(KmsUnwrapError):
        kms.unwrap(WrappedKey(wrapped.kek, bytes(tampered)), AAD)


# --- retries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_transient_codes_are_retried_with_jittered_backoff(kms, fake, sleeps, code):
    fake.fail_next(code, method="Encrypt")
    fake.fail_next(code, method="Encrypt")
    dek = os.urandom(32)
    wrapped = kms.wrap(URI, dek, AAD)
    assert fake.calls == ["Encrypt"] * 3
    assert len(sleeps) == 2
    assert all(0 <= delay <= BACKOFF.delay_cap(n) for n, delay in enumerate(sleeps))
    fake.fail_next(code, method="Decrypt")
    assert kms.unwrap(wrapped, AAD) == dek


def test_exhausted_retries_raise_kms_transient_error(kms, fake, sleeps):
    for _ in range(ATTEMPTS):
        fake.fail_next(grpc.StatusCode.UNAVAILABLE, "backend unavailable", method="Encrypt")
    with pytest.raises(KmsTransientError, match="UNAVAILABLE: backend unavailable"):
        kms.wrap(URI, os.urandom(32), AAD)
    assert fake.calls == ["Encrypt"] * ATTEMPTS
    assert len(sleeps) == ATTEMPTS - 1


@pytest.mark.parametrize(
    ("code", "message", "error_type"),
    [
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied",
            KmsPermissionError,
        ),
        (grpc.StatusCode.UNAUTHENTICATED, "Request had invalid credentials", KmsPermissionError),
        (grpc.StatusCode.NOT_FOUND, "CryptoKey not found.", KeyNotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, "Plaintext is too large", KmsError),
        (grpc.StatusCode.FAILED_PRECONDITION, "Cloud KMS API has not been used", KmsError),
    ],
)
def test_permanent_codes_are_typed_and_not_retried(kms, fake, sleeps, code, message, error_type):
    fake.fail_next(code, message, method="Encrypt")
    with pytest.raises(error_type, match=code.name) as raised:
        kms.wrap(URI, os.urandom(32), AAD)
    assert not isinstance(raised.value, KmsTransientError)
    assert fake.calls == ["Encrypt"]
    assert sleeps == []


def test_unknown_key_is_key_not_found(kms):
    missing = URI.replace("cryptoKeys/kek", "cryptoKeys/missing")
    with pytest.raises(KeyNotFoundError, match="not found"):
        kms.wrap(missing, os.urandom(32), AAD)


# --- key version states -----------------------------------------------------------------


def test_wrap_under_a_disabled_primary_raises_key_disabled(kms, fake):
    fake.set_state(KEY, "1", State.DISABLED)
    with pytest.raises(KeyDisabledError, match="DISABLED") as raised:
        kms.wrap(URI, os.urandom(32), AAD)
    assert isinstance(raised.value, KmsPermissionError)


@pytest.mark.parametrize(
    ("state", "error_type"),
    [
        (State.DISABLED, KeyDisabledError),
        (State.DESTROY_SCHEDULED, KeyDestroyedError),
        (State.DESTROYED, KeyDestroyedError),
    ],
)
def test_unwrap_under_a_retired_version_is_typed(kms, fake, sleeps, state, error_type):
    wrapped = kms.wrap(URI, os.urandom(32), AAD)
    fake.rotate(KEY)
    fake.set_state(KEY, "1", state)
    with pytest.raises(error_type, match=State(state).name):
        kms.unwrap(wrapped, AAD)
    assert sleeps == []


def test_primary_version_checks_state_and_purpose(kms, fake):
    assert kms.primary_version(URI) == "1"
    fake.rotate(KEY)
    assert kms.primary_version(URI) == "2"
    fake.set_state(KEY, "2", State.DISABLED)
    with pytest.raises(KeyDisabledError):
        kms.primary_version(URI)
    fake.set_state(KEY, "2", State.DESTROYED)
    with pytest.raises(KeyDestroyedError):
        kms.primary_version(URI)


def test_primary_version_refuses_a_key_that_is_not_for_encryption(kms, fake):
    fake.create_key(OTHER_KEY, purpose=kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN)
    with pytest.raises(KmsError, match="purpose is ASYMMETRIC_SIGN, expected ENCRYPT_DECRYPT"):
        kms.primary_version(OTHER_URI)


# --- CRC32C integrity -------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "response.ciphertext",
        "response.ciphertext_crc32c",
        "response.verified_plaintext_crc32c",
        "response.verified_additional_authenticated_data_crc32c",
        "request.plaintext",
        "request.additional_authenticated_data",
    ],
)
def test_encrypt_corruption_is_detected_and_retried(kms, fake, sleeps, target):
    fake.corrupt_next("Encrypt", target)
    dek = os.urandom(32)
    wrapped = kms.wrap(URI, dek, AAD)
    assert fake.calls == ["Encrypt", "Encrypt"]
    assert len(sleeps) == 1
    assert kms.unwrap(wrapped, AAD) == dek


@pytest.mark.parametrize(
    "target", ["response.plaintext", "response.plaintext_crc32c", "request.ciphertext"]
)
def test_decrypt_corruption_is_detected_and_retried(kms, fake, target):
    dek = os.urandom(32)
    wrapped = kms.wrap(URI, dek, AAD)
    fake.corrupt_next("Decrypt", target)
    assert kms.unwrap(wrapped, AAD) == dek
    assert fake.calls == ["Encrypt", "Decrypt", "Decrypt"]


def test_persistent_corruption_ends_in_an_integrity_error(kms, fake):
    for _ in range(ATTEMPTS):
        fake.corrupt_next("Encrypt", "response.ciphertext_crc32c")
    with pytest.raises(KmsIntegrityError, match="ciphertext_crc32c") as raised:
        kms.wrap(URI, os.urandom(32), AAD)
    assert isinstance(raised.value, KmsTransientError)
    wrapped = kms.wrap(URI, b"k" * 32, AAD)
    for _ in range(ATTEMPTS):
        fake.corrupt_next("Decrypt", "response.plaintext")
    with pytest.raises(KmsIntegrityError, match="plaintext_crc32c"):
        kms.unwrap(wrapped, AAD)


def test_response_naming_another_key_is_refused(kms, fake, sleeps):
    fake.corrupt_next("Encrypt", "response.name")
    with pytest.raises(KmsError, match="not a version of this key") as raised:
        kms.wrap(URI, os.urandom(32), AAD)
    assert not isinstance(raised.value, KmsTransientError)
    assert sleeps == []


def test_crc32c_matches_the_castagnoli_check_values():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, appendix B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43


# --- inputs, URIs, residency ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dek", "aad", "message"),
    [
        (b"", AAD, r"dek: expected 1\.\.1024 bytes, got 0"),
        (b"k" * (gcp.MAX_DEK_BYTES + 1), AAD, r"dek: expected 1\.\.1024 bytes, got 1025"),
        (b"k" * 32, b"a" * (gcp.MAX_AAD_BYTES + 1), r"aad: expected 0\.\.4096 bytes, got 4097"),
        ("not bytes", AAD, "dek: expected bytes, got str"),
    ],
)
def test_wrap_refuses_out_of_bounds_input_before_calling_kms(kms, fake, dek, aad, message):
    with pytest.raises(KmsError, match=message):
        kms.wrap(URI, dek, aad)
    assert fake.calls == []


def test_unwrap_refuses_a_version_that_is_not_a_number(kms, fake):
    with pytest.raises(KeyNotFoundError, match="not a Cloud KMS version number"):
        kms.unwrap(WrappedKey(KeyReference(URI, "v1"), b"x" * 40), AAD)
    assert fake.calls == []


@pytest.mark.parametrize(
    "uri",
    [
        "local://keyring/eu/kek-1",
        "gcp-kms://projects/p1234/locations/eu/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
        "gcp-kms://projects/p1234/locations/eu/keyRings/r",
        "gcp-kms://projects/p1234/locations/EU/keyRings/r/cryptoKeys/k",
        "gcp-kms://projects/p1234/locations/eu/keyRings/r/cryptoKeys/k?x=1",
        "gcp-kms://projects//locations/eu/keyRings/r/cryptoKeys/k",
        "gcp-kms://" + "projects/p/" * 60,
    ],
)
def test_malformed_kek_uris_are_refused(uri):
    with pytest.raises(KeyNotFoundError, match="KEK URI"):
        parse_gcp_kek_uri(uri)


def test_kek_uri_parts_are_parsed():
    name = parse_gcp_kek_uri(URI)
    assert (name.project, name.location, name.key_ring, name.crypto_key) == (
        "sealbeam-test",
        "europe-west3",
        "eu-ring",
        "kek",
    )
    assert name.uri == URI
    assert name.version_name("3") == f"{KEY}/cryptoKeyVersions/3"


def test_check_location_accepts_a_key_ring_in_the_region():
    check_location(URI, "eu", EU_LOCATIONS)
    check_location("gcp-kms://projects/p1/locations/eu/keyRings/r/cryptoKeys/k", "eu", EU_LOCATIONS)


def test_check_location_refuses_a_key_ring_outside_the_region():
    us_uri = URI.replace("europe-west3", "us-central1")
    with pytest.raises(KeyLocationError, match=r"'us-central1'.*region 'eu'"):
        check_location(us_uri, "eu", EU_LOCATIONS)
    global_uri = URI.replace("europe-west3", "global")
    with pytest.raises(KeyLocationError, match="'global'"):
        check_location(global_uri, "eu", EU_LOCATIONS)


def test_check_location_fails_closed_for_an_unconfigured_region():
    with pytest.raises(KeyLocationError, match="region 'apac'"):
        check_location(URI, "apac", EU_LOCATIONS)


# --- construction and hygiene -----------------------------------------------------------


def test_client_and_endpoint_together_are_refused(kms):
    with pytest.raises(ValueError, match="either a client or endpoint"):
        GcpKms(kms._client, endpoint="cloudkms.europe-west3.rep.googleapis.com")


def test_missing_ambient_credentials_are_a_permission_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(KmsPermissionError, match="no usable credentials"):
        GcpKms()


class _ClientRaising:
    """A client double whose Encrypt raises what google-auth raises before any RPC."""

    transport = None

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def encrypt(self, request, retry, timeout):
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "error_type", "calls"),
    [
        (auth_exceptions.RefreshError("invalid_grant: account disabled"), KmsPermissionError, 1),
        (auth_exceptions.RefreshError("token endpoint 503", retryable=True), KmsTransientError,
         ATTEMPTS),
        (auth_exceptions.TransportError("connection reset"), KmsTransientError, ATTEMPTS),
    ],
)
def test_credential_failures_are_typed(sleeps, error, error_type, calls):
    client = _ClientRaising(error)
    backend = GcpKms(client, backoff=BACKOFF, sleep=sleeps.append)
    with pytest.raises(error_type, match=str(error)):
        backend.wrap(URI, os.urandom(32), AAD)
    assert client.calls == calls


def test_no_key_bytes_in_logs_or_errors(kms, fake, caplog):
    dek = os.urandom(32)
    caplog.set_level(logging.DEBUG)
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, method="Encrypt")
    wrapped = kms.wrap(URI, dek, AAD)
    with pytest.raises(KmsUnwrapError) as raised:
        kms.unwrap(wrapped, b"other")
    text = caplog.text + str(raised.value) + repr(kms)
    assert "retrying" in caplog.text
    assert dek.hex() not in text
    assert repr(dek) not in text


def test_fake_fails_a_test_whose_prepared_response_went_unused():
    service = FakeKeyManagementService()
    service.fail_next(grpc.StatusCode.UNAVAILABLE, method="Decrypt")
    service.corrupt_next("Encrypt", "response.ciphertext")
    with pytest.raises(AssertionError, match=r"never used.*Decrypt: status UNAVAILABLE"):
        service.assert_all_used()
    service.assert_all_used()  # reported once, then cleared


# --- key lifecycle: rotate, destroy, disable (keybroker.shred) -----------------------------


def test_rotate_creates_a_primary_version_and_old_ones_still_unwrap(kms, fake):
    dek = os.urandom(32)
    first = kms.wrap(URI, dek, AAD)
    assert kms.rotate(URI) == KeyReference(URI, "2")
    assert kms.primary_version(URI) == "2"
    assert kms.wrap(URI, dek, AAD).kek.version == "2"
    assert kms.unwrap(first, AAD) == dek
    assert fake.calls[:3] == ["Encrypt", "CreateCryptoKeyVersion", "UpdateCryptoKeyPrimaryVersion"]


def test_create_is_not_retried_but_the_primary_update_is(kms, fake, sleeps):
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, method="CreateCryptoKeyVersion")
    with pytest.raises(KmsTransientError, match="UNAVAILABLE"):
        kms.rotate(URI)
    assert fake.calls == ["CreateCryptoKeyVersion"] and sleeps == []
    assert kms.primary_version(URI) == "1"
    fake.fail_next(grpc.StatusCode.UNAVAILABLE, method="UpdateCryptoKeyPrimaryVersion")
    assert kms.rotate(URI).version == "2"
    assert fake.calls.count("UpdateCryptoKeyPrimaryVersion") == 2 and len(sleeps) == 1


def test_destroy_version_makes_its_wrapped_keys_fail_as_destroyed(kms, fake):
    old = kms.wrap(URI, os.urandom(32), AAD)
    kms.rotate(URI)
    kms.destroy_version(URI, "1")
    with pytest.raises(KeyDestroyedError, match="DESTROY_SCHEDULED"):
        kms.unwrap(old, AAD)
    with pytest.raises(KeyDestroyedError):  # a repeat: already scheduled
        kms.destroy_version(URI, "1")
    with pytest.raises(KeyNotFoundError, match="not a Cloud KMS version number"):
        kms.destroy_version(URI, "v1")
    with pytest.raises(KeyNotFoundError, match="NOT_FOUND"):
        kms.destroy_version(URI, "9")


def test_disable_version_is_reversible_refusal(kms, fake):
    old = kms.wrap(URI, os.urandom(32), AAD)
    kms.rotate(URI)
    kms.disable_version(URI, "1")
    with pytest.raises(KeyDisabledError, match="DISABLED"):
        kms.unwrap(old, AAD)
    fake.set_state(KEY, "1", State.ENABLED)
    assert len(kms.unwrap(old, AAD)) == 32


def test_shred_through_the_real_client(kms, fake, tmp_path):
    from keybroker.ledger import AuditLedger
    from keybroker.shred import KekLifecycle, ShredRefusedError, rotate_kek, shred_kek_version

    assert isinstance(kms, KekLifecycle)
    old = kms.wrap(URI, os.urandom(32), AAD)
    with AuditLedger(tmp_path / "ledger.sqlite") as ledger:
        with pytest.raises(ShredRefusedError, match="primary"):
            shred_kek_version(kms, URI, "1", ledger=ledger)
        assert rotate_kek(kms, URI, ledger=ledger).new_version == "2"
        shred_kek_version(kms, URI, "1", ledger=ledger)
        assert [(e.event, e.decision) for e in ledger.entries()] == [
            ("kek-shred", "denied"), ("kek-rotate", "granted"), ("kek-shred", "granted")
        ]
        assert ledger.entries().__next__().details["backend"] == "gcp-kms"
    with pytest.raises(KeyDestroyedError):
        kms.unwrap(old, AAD)
