"""Brokers that trust one simulated or cloud-faked TEE, shared by the attestation e2e tests and
the pool tests (both test the same TEE through the broker; only their rule names differ).

What it does: fixture factories (a test module binds each by assignment, e.g.
``space_broker = space_broker_fixture("space-workers", "space")``): ``google_fixture`` serves
Google's OpenID configuration and a JWKS holding the launcher's signing key on loopback HTTP;
``space_broker_fixture`` runs a broker whose one rule admits the Confidential Space workload
(``token_claims``: image ``DIGEST``, audience ``AUDIENCE``) and fetches those documents through
``google_getter``; ``dev_tdx_fixture`` makes a dev TDX chain and ``simulated_tdx_broker_fixture``
runs a broker that loads its root and admits the simulated TD. What it does not: start the
workers (each test starts its own provider or pool worker).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_workers.evidence.simulated_tdx import (
    DEV_MRTD,
    DEV_TDX_ROOT_FILE,
    create_dev_tdx_chain,
)
from keybroker.attestation.confidential_space import CONFIDENTIAL_SPACE_ISSUER
from keybroker.attestation.jwks import Getter
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import DocumentServer, jwks_document
from tests.attestation_e2e.cloud import issuer_getter
from tests.attestation_e2e.support import release_rule, serve_broker

__all__ = ["AUDIENCE", "DIGEST", "dev_tdx_fixture", "google_fixture", "google_getter",
           "simulated_tdx_broker_fixture", "space_broker_fixture", "token_claims"]

AUDIENCE = "https://broker.sealbeam.test"
DIGEST = "5e" * 32


def token_claims(**changes: Any) -> dict[str, Any]:
    """The claims of a launcher token for the admitted workload, with ``changes`` applied."""
    claims: dict[str, Any] = {
        "iss": CONFIDENTIAL_SPACE_ISSUER, "sub": "projects/p/zones/z/instances/worker-1",
        "hwmodel": "GCP_AMD_SEV_SNP", "swname": "CONFIDENTIAL_SPACE", "swversion": ["240500"],
        "dbgstat": "disabled-since-boot", "secboot": True,
        "submods": {"confidential_space": {"support_attributes": ["LATEST", "STABLE", "USABLE"]},
                    "container": {"image_digest": f"sha256:{DIGEST}",
                                  "image_reference": "europe-docker.pkg.dev/p/r/worker:1"},
                    "gce": {"zone": "europe-west4-a", "project_id": "p"}},
    }
    claims.update(changes)
    return claims


def google_fixture(signing_key: rsa.RSAPrivateKey) -> Any:
    """A module fixture: Google's OpenID configuration and JWKS (``signing_key`` as ``cs-1``)
    on loopback."""

    @pytest.fixture(scope="module")
    def google() -> Iterator[DocumentServer]:
        with DocumentServer() as server:
            server.documents["/google/.well-known/openid-configuration"] = json.dumps(
                {"issuer": CONFIDENTIAL_SPACE_ISSUER,
                 "jwks_uri": f"{CONFIDENTIAL_SPACE_ISSUER}/jwks"}).encode()
            server.documents["/google/jwks"] = jwks_document({"cs-1": signing_key})
            yield server

    return google


def google_getter(google: DocumentServer) -> Getter:
    """Fetches Google's issuer documents from ``google`` (the broker's own fetching code runs)."""
    return issuer_getter(google, {CONFIDENTIAL_SPACE_ISSUER: "/google"})


def space_broker_fixture(rule: str, state: str) -> Any:
    """A module fixture: a broker (state in a temp dir named ``state``) whose rule ``rule``
    admits the Confidential Space workload of ``token_claims``; needs the ``google`` fixture."""

    @pytest.fixture(scope="module")
    def space_broker(tmp_path_factory: pytest.TempPathFactory,
                     google: DocumentServer) -> Iterator[RunningBroker]:
        rules = [release_rule(rule, ["confidential-space"], [f"sha256:{DIGEST}"],
                              hardware=["sev-snp", "tdx"], dbgstat=["disabled-since-boot"])]
        with serve_broker(tmp_path_factory.mktemp(state) / "state", rules,
                          attestation={"confidential_space_audience": AUDIENCE},
                          jwks_getter=google_getter(google)) as broker:
            yield broker

    return space_broker


def dev_tdx_fixture() -> Any:
    """A module fixture: a fresh dev TDX chain (``create_dev_tdx_chain``) in a temp dir."""

    @pytest.fixture(scope="module")
    def dev_tdx(tmp_path_factory: pytest.TempPathFactory) -> Path:
        directory = tmp_path_factory.mktemp("dev-tdx")
        create_dev_tdx_chain(directory)
        return directory

    return dev_tdx


def simulated_tdx_broker_fixture(rule: str, state: str) -> Any:
    """A module fixture: a broker (state in a temp dir named ``state``) that loads the dev TDX
    root of the ``dev_tdx`` fixture and whose rule ``rule`` admits the simulated TD."""

    @pytest.fixture(scope="module")
    def simulated_tdx_broker(tmp_path_factory: pytest.TempPathFactory,
                             dev_tdx: Path) -> Iterator[RunningBroker]:
        rules = [release_rule(rule, ["tdx"], [DEV_MRTD], allow_simulated=True)]
        with serve_broker(tmp_path_factory.mktemp(state) / "state", rules, allow_simulated=True,
                          attestation={"tdx_dev_root": dev_tdx / DEV_TDX_ROOT_FILE}) as broker:
            yield broker

    return simulated_tdx_broker
