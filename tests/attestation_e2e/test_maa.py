"""MAA tokens end to end over HTTP: the real `AzureMaaProvider` against a fake MAA instance.

The worker posts its HCL-bound SEV-SNP report and runtime data (with report_data as
user-data) to `FakeMaa`, which signs an RS256 token; the broker fetches the instance's JWKS
(``{issuer}/certs``) over loopback HTTP from a local document server, verifies the token and
its binding, and the policy checks attestation type and compliance status.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enclave_workers.evidence.azure_vtpm import AzureImdsClient, AzureMaaProvider
from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import (
    DocumentServer,
    FakeVtpm,
    SnpAzureBuilder,
    jwks_document,
    new_rsa_key,
)
from tests.attestation_e2e.cloud import FakeImds, FakeMaa, issuer_getter
from tests.attestation_e2e.conftest import PinnedChain
from tests.attestation_e2e.support import (
    attest_once,
    expect_denied,
    open_released_key,
    release_rule,
    serve_broker,
)

ISSUER = "https://sealbeam-test.weu.attest.azure.net"
OTHER_ISSUER = "https://other.eus.attest.azure.net"
SIGNING_KEY = new_rsa_key()


@pytest.fixture(scope="module")
def maa_server() -> Iterator[DocumentServer]:
    with DocumentServer() as server:
        server.documents["/maa/certs"] = jwks_document({"maa-1": SIGNING_KEY})
        server.documents["/other/certs"] = jwks_document({"other-1": new_rsa_key()})
        yield server


def maa_provider(chain: PinnedChain, **options) -> AzureMaaProvider:
    debug = options.pop("debug", False)
    builder = SnpAzureBuilder(SimulatedSnpProvider(chain.chain_dir, debug=debug), new_rsa_key())
    imds = FakeImds(chain.chain_dir)
    maa = FakeMaa(options.pop("issuer", ISSUER), options.pop("key", SIGNING_KEY), **options)
    return AzureMaaProvider(ISSUER, post=maa.post, device=FakeVtpm(builder),
                            imds=AzureImdsClient(get=imds.get, post=imds.post))


@pytest.fixture(scope="module")
def maa_broker(tmp_path_factory: pytest.TempPathFactory,
               maa_server: DocumentServer) -> Iterator[RunningBroker]:
    rules = [release_rule("maa-snp", ["maa"], [DEV_MEASUREMENT], attestation_type=["sevsnpvm"],
                          vm_configuration={"secure-boot": True}, smt=True)]
    getter = issuer_getter(maa_server, {ISSUER: "/maa", OTHER_ISSUER: "/other"})
    with serve_broker(tmp_path_factory.mktemp("maa") / "state", rules,
                      attestation={"maa_issuers": (ISSUER, OTHER_ISSUER),
                                   "jwks_cache_dir": tmp_path_factory.mktemp("jwks")},
                      jwks_getter=getter) as broker:
        yield broker


def test_maa_token_gets_and_opens_a_key(maa_broker: RunningBroker, pinned_milan: PinnedChain,
                                        maa_server: DocumentServer) -> None:
    attested = open_released_key(maa_broker, maa_provider(pinned_milan))
    assert attested.details["claims"]["tee"] == "maa"
    assert attested.details["claims"]["measurement"] == DEV_MEASUREMENT
    session = attest_once(maa_broker, maa_provider(pinned_milan))
    assert session.claims["platform"]["compliance_status"] == "azure-compliant-cvm"
    assert maa_server.hits["/maa/certs"] == 1  # fetched once, then cached


def test_maa_denials_are_recorded(maa_broker: RunningBroker, pinned_milan: PinnedChain) -> None:
    expect_denied(maa_broker, maa_provider(pinned_milan, compliance="azure-non-compliant-cvm"),
                  403, "compliance_status 'azure-non-compliant-cvm' not allowed by rule maa-snp")
    expect_denied(maa_broker, maa_provider(pinned_milan, debug=True), 403,
                  "debug enabled, not allowed by rule maa-snp")
    expect_denied(maa_broker, maa_provider(pinned_milan, issuer="https://rogue.attest.azure.net"),
                  401, "is not a configured MAA instance")
    expect_denied(maa_broker, maa_provider(pinned_milan, key=new_rsa_key()), 401,
                  "signature does not verify")
