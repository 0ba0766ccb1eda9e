"""`MaaVerifier` and `ConfidentialSpaceVerifier` against tokens minted here, keys served on
127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from keybroker.attestation.confidential_space import (
    CONFIDENTIAL_SPACE_ISSUER,
    ConfidentialSpaceVerifier,
    eat_nonce_for,
)
from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
)
from keybroker.attestation.jwks import JwksCache, http_getter
from keybroker.attestation.maa import MaaVerifier
from keybroker.attestation.verifier import Verifier
from tests.attestation_cloud.support import (
    DocumentServer,
    ManualClock,
    jwks_document,
    mint_token,
    new_rsa_key,
    random_report_data,
)

MAA_ISSUER = "https://sealbeamtest.weu.attest.azure.net"
MEASUREMENT = "ab" * 48
SIGNING_KEY = new_rsa_key()
ROTATED_KEY = new_rsa_key()


@pytest.fixture
def server() -> Iterator[DocumentServer]:
    with DocumentServer() as running:
        running.documents["/certs"] = jwks_document({"maa-1": SIGNING_KEY})
        yield running


# --- MAA ------------------------------------------------------------------------------
def maa_payload(clock: ManualClock, report_data: bytes, *, guest: bool = True,
                attestation_type: str = "sevsnpvm", debuggable: bool = False) -> dict:
    tee = {
        "x-ms-attestation-type": attestation_type,
        "x-ms-compliance-status": "azure-compliant-cvm",
        "x-ms-runtime": {"keys": [], "vm-configuration": {"secure-boot": True},
                         "user-data": report_data.hex().upper()},
        "x-ms-sevsnpvm-is-debuggable": debuggable,
        "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT,
        "x-ms-sevsnpvm-bootloader-svn": 3, "x-ms-sevsnpvm-tee-svn": 0,
        "x-ms-sevsnpvm-snpfw-svn": 8, "x-ms-sevsnpvm-microcode-svn": 115,
        "x-ms-sevsnpvm-vmpl": 0, "x-ms-sevsnpvm-guestsvn": 2,
        "x-ms-sevsnpvm-smt-allowed": True, "x-ms-sevsnpvm-migration-allowed": False,
        "x-ms-sevsnpvm-hostdata": "00" * 32,
        "x-ms-sevsnpvm-reportdata": hashlib.sha256(b"runtime").hexdigest() + "00" * 32,
    }
    base = {"iss": MAA_ISSUER, "iat": clock.now - 5, "nbf": clock.now - 5,
            "exp": clock.now + 28800, "x-ms-ver": "1.0"}
    if guest:
        return {**base, "x-ms-attestation-type": "azurevm", "secureboot": True,
                "x-ms-azurevm-vmid": "vm-1", "x-ms-isolation-tee": tee}
    return {**base, **tee}


@pytest.fixture
def maa(server: DocumentServer) -> tuple[MaaVerifier, ManualClock]:
    clock = ManualClock()
    keys = JwksCache(jwks_uri=f"{server.url}/certs", getter=http_getter(allow_loopback_http=True),
                     clock=clock, min_refresh_seconds=60)
    return MaaVerifier(MAA_ISSUER, keys=keys, clock=clock), clock


def test_maa_guest_attestation_token_maps_to_claims(maa) -> None:
    verifier, clock = maa
    assert isinstance(verifier, Verifier)
    report_data = random_report_data()
    token = mint_token(SIGNING_KEY, maa_payload(clock, report_data), kid="maa-1")
    claims = verifier.evaluate(token, report_data, endorsements={})
    assert (claims.tee, claims.measurement, claims.debug) == ("maa", MEASUREMENT, False)
    assert claims.tcb == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert claims.platform["compliance_status"] == "azure-compliant-cvm"
    assert claims.platform["hw"] == "sev-snp" and claims.platform["vmpl"] == 0
    assert claims.platform["guest_attestation"] is True and not claims.simulated
    json.dumps(claims.to_json())


def test_maa_direct_snp_and_tdx_tokens(maa) -> None:
    verifier, clock = maa
    report_data = random_report_data()
    direct = mint_token(SIGNING_KEY, maa_payload(clock, report_data, guest=False,
                                                 debuggable=True), kid="maa-1")
    claims = verifier.evaluate(direct, report_data, endorsements={})
    assert claims.debug is True and claims.platform["guest_attestation"] is False
    tdx = {"iss": MAA_ISSUER, "exp": clock.now + 60, "x-ms-attestation-type": "tdxvm",
           "x-ms-compliance-status": "azure-compliant-cvm", "tdx_mrtd": "cd" * 48,
           "tdx_td_attributes_debug": False, "tdx_rtmr0": "01" * 48,
           "tdx_tee_tcb_svn": "0301" + "00" * 14,
           "x-ms-runtime": {"user-data": report_data.hex()}}
    claims = verifier.evaluate(mint_token(SIGNING_KEY, tdx, kid="maa-1"), report_data,
                               endorsements={})
    assert claims.platform["hw"] == "tdx" and claims.measurement == "cd" * 48
    assert claims.tcb["tee_tcb_svn_00"] == 3 and claims.platform["rtmr0"] == "01" * 48


def test_maa_refusals(maa) -> None:
    verifier, clock = maa
    report_data = random_report_data()

    def evaluate(payload: dict, key=SIGNING_KEY, **options) -> None:
        verifier.evaluate(mint_token(key, payload, kid="maa-1", **options), report_data,
                          endorsements={})

    good = maa_payload(clock, report_data)
    with pytest.raises(ReportDataMismatchError, match="user-data"):
        evaluate(maa_payload(clock, random_report_data()))
    with pytest.raises(EvidenceVerificationError, match="expired"):
        evaluate({**good, "exp": clock.now - 3600})
    with pytest.raises(EvidenceVerificationError, match="issuer"):
        evaluate({**good, "iss": "https://other.attest.azure.net"})
    with pytest.raises(EvidenceVerificationError, match="alg 'none'"):
        evaluate(good, key=None, alg="none")
    with pytest.raises(EvidenceVerificationError, match="alg 'HS256'"):
        evaluate(good, key=b"k" * 32, alg="HS256")
    with pytest.raises(EvidenceVerificationError, match="signature"):
        evaluate(good, key=ROTATED_KEY)
    bad_type = {**good, "x-ms-isolation-tee": {**good["x-ms-isolation-tee"],
                                               "x-ms-attestation-type": "sgx"}}
    with pytest.raises(EvidenceVerificationError, match="attestation type 'sgx'"):
        evaluate(bad_type)
    no_debug = {**good, "x-ms-isolation-tee": {
        k: v for k, v in good["x-ms-isolation-tee"].items() if k != "x-ms-sevsnpvm-is-debuggable"}}
    with pytest.raises(EvidenceFormatError, match="is-debuggable"):
        evaluate(no_debug)
    with pytest.raises(EvidenceFormatError, match="no endorsements"):
        verifier.evaluate(mint_token(SIGNING_KEY, good, kid="maa-1"), report_data,
                          endorsements={"vcek": b""})
    with pytest.raises(TrustStoreError):
        MaaVerifier("http://maa.example")


def test_maa_key_rotation_through_the_server(maa, server: DocumentServer) -> None:
    verifier, clock = maa
    report_data = random_report_data()
    verifier.evaluate(mint_token(SIGNING_KEY, maa_payload(clock, report_data), kid="maa-1"),
                      report_data, endorsements={})
    assert server.hits["/certs"] == 1
    server.documents["/certs"] = jwks_document({"maa-1": SIGNING_KEY, "maa-2": ROTATED_KEY})
    rotated = mint_token(ROTATED_KEY, maa_payload(clock, report_data), kid="maa-2")
    with pytest.raises(EvidenceVerificationError, match="'maa-2' is not among"):
        verifier.evaluate(rotated, report_data, endorsements={})  # refetch rate-limited
    clock.now += 61
    assert verifier.evaluate(rotated, report_data, endorsements={}).tee == "maa"
    assert server.hits["/certs"] == 2


def test_maa_default_keys_come_from_issuer_certs() -> None:
    urls: list[str] = []

    def getter(url: str) -> bytes:
        urls.append(url)
        return jwks_document({"maa-1": SIGNING_KEY})

    clock = ManualClock()
    verifier = MaaVerifier(MAA_ISSUER, getter=getter, clock=clock)
    report_data = random_report_data()
    verifier.evaluate(mint_token(SIGNING_KEY, maa_payload(clock, report_data), kid="maa-1"),
                      report_data, endorsements={})
    assert urls == [f"{MAA_ISSUER}/certs"]


# --- Confidential Space ----------------------------------------------------------------
AUDIENCE = "https://broker.sealbeam.example"
DIGEST = "5e" * 32


def cs_payload(clock: ManualClock, report_data: bytes, **extra: object) -> dict:
    return {
        "iss": CONFIDENTIAL_SPACE_ISSUER, "aud": AUDIENCE, "sub": "https://www.googleapis.com/"
        "compute/v1/projects/p/zones/europe-west4-a/instances/worker-1",
        "iat": clock.now - 5, "nbf": clock.now - 5, "exp": clock.now + 3600,
        "eat_nonce": ["other-nonce-value", eat_nonce_for(report_data)],
        "hwmodel": "GCP_AMD_SEV_SNP", "swname": "CONFIDENTIAL_SPACE", "swversion": ["240500"],
        "dbgstat": "disabled-since-boot", "secboot": True, "oemid": 11129,
        "google_service_accounts": ["worker@p.iam.gserviceaccount.com"],
        "submods": {
            "confidential_space": {"support_attributes": ["LATEST", "STABLE", "USABLE"]},
            "container": {"image_reference": "europe-docker.pkg.dev/p/r/worker:1",
                          "image_digest": f"sha256:{DIGEST}", "restart_policy": "Never",
                          "image_id": "sha256:" + "77" * 32},
            "gce": {"zone": "europe-west4-a", "project_id": "p", "project_number": "42",
                    "instance_name": "worker-1", "instance_id": "1"},
        },
        **extra,
    }


@pytest.fixture
def cs(server: DocumentServer) -> tuple[ConfidentialSpaceVerifier, ManualClock]:
    server.documents["/.well-known/openid-configuration"] = json.dumps(
        {"issuer": CONFIDENTIAL_SPACE_ISSUER, "jwks_uri": f"{server.url}/certs"}).encode()
    clock = ManualClock()
    keys = JwksCache(discovery_url=f"{server.url}/.well-known/openid-configuration",
                     expected_issuer=CONFIDENTIAL_SPACE_ISSUER,
                     getter=http_getter(allow_loopback_http=True), clock=clock)
    return ConfidentialSpaceVerifier(AUDIENCE, keys=keys, clock=clock), clock


def test_eat_nonce_is_hex_sha256_within_the_74_byte_limit() -> None:
    report_data = bytes(range(64))
    nonce = eat_nonce_for(report_data)
    assert nonce == hashlib.sha256(report_data).hexdigest() and 10 <= len(nonce) <= 74
    with pytest.raises(ValueError):
        eat_nonce_for(b"short")


def test_confidential_space_token_maps_to_claims(cs) -> None:
    verifier, clock = cs
    report_data = random_report_data()
    claims = verifier.evaluate(mint_token(SIGNING_KEY, cs_payload(clock, report_data),
                                          kid="maa-1"), report_data, endorsements={})
    assert (claims.tee, claims.measurement, claims.debug) == ("confidential-space", DIGEST,
                                                              False)
    assert claims.platform["hw"] == "sev-snp" and claims.platform["zone"] == "europe-west4-a"
    assert "STABLE" in claims.platform["support_attributes"]
    assert claims.platform["secboot"] is True and claims.tcb == {"swversion": 240500}
    single = cs_payload(clock, report_data, eat_nonce=eat_nonce_for(report_data),
                        dbgstat="enabled", hwmodel="GCP_INTEL_TDX")
    claims = verifier.evaluate(mint_token(SIGNING_KEY, single, kid="maa-1"), report_data,
                               endorsements={})
    assert claims.debug is True and claims.platform["hw"] == "tdx"


def test_confidential_space_refusals(cs) -> None:
    verifier, clock = cs
    report_data = random_report_data()

    def evaluate(payload: dict, key=SIGNING_KEY, kid: str = "maa-1", **options) -> None:
        verifier.evaluate(mint_token(key, payload, kid=kid, **options), report_data,
                          endorsements={})

    with pytest.raises(ReportDataMismatchError, match="eat_nonce"):
        evaluate(cs_payload(clock, random_report_data()))
    with pytest.raises(ReportDataMismatchError, match="no eat_nonce"):
        evaluate(cs_payload(clock, report_data, eat_nonce=[]))
    with pytest.raises(EvidenceVerificationError, match="audience"):
        evaluate(cs_payload(clock, report_data, aud="https://someone-else"))
    with pytest.raises(EvidenceVerificationError, match="issuer"):
        evaluate(cs_payload(clock, report_data, iss="https://accounts.google.com"))
    with pytest.raises(EvidenceVerificationError, match="expired"):
        evaluate(cs_payload(clock, report_data, exp=clock.now - 3600))
    with pytest.raises(EvidenceVerificationError, match="swname"):
        evaluate(cs_payload(clock, report_data, swname="GCE"))
    with pytest.raises(EvidenceVerificationError, match="hwmodel"):
        evaluate(cs_payload(clock, report_data, hwmodel="GCP_SHIELDED_VM"))
    with pytest.raises(EvidenceVerificationError, match="image_digest"):
        evaluate(cs_payload(clock, report_data, submods={"container": {}}))
    with pytest.raises(EvidenceVerificationError, match="alg 'HS256'"):
        evaluate(cs_payload(clock, report_data), key=b"k" * 32, alg="HS256")
    with pytest.raises(EvidenceVerificationError, match="alg 'none'"):
        evaluate(cs_payload(clock, report_data), key=None, alg="none")
    with pytest.raises(EvidenceVerificationError, match="'unknown' is not among"):
        evaluate(cs_payload(clock, report_data), kid="unknown")
