"""Brokers that trust one simulated or cloud-faked TEE, shared by the attestation e2e tests and
the pool tests (both test the same TEE through the broker; only their rule names differ).

What it does: ``google_documents`` serves Google's OpenID configuration and a JWKS holding the
launcher's signing key on loopback HTTP; ``serve_space_broker`` runs a broker whose one rule
admits the Confidential Space workload (``token_claims``: image ``DIGEST``, audience
``AUDIENCE``) and fetches those documents through ``google_getter``; ``serve_simulated_tdx_broker``
runs a broker that loads a dev TDX root (made by ``create_dev_tdx_chain``) and admits the
simulated TD. What it does not: pick fixture scopes or names (each test module binds its own).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_workers.evidence.simulated_tdx import DEV_MRTD, DEV_TDX_ROOT_FILE
from keybroker.attestation.confidential_space import CONFIDENTIAL_SPACE_ISSUER
from keybroker.attestation.jwks import Getter
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import DocumentServer, jwks_document
from tests.attestation_e2e.cloud import issuer_getter
from tests.attestation_e2e.support import release_rule, serve_broker

__all__ = ["AUDIENCE", "DIGEST", "google_documents", "google_getter", "serve_simulated_tdx_broker",
           "serve_space_broker", "token_claims"]

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


@contextmanager
def google_documents(signing_key: rsa.RSAPrivateKey) -> Iterator[DocumentServer]:
    """Google's OpenID configuration and JWKS (``signing_key`` as ``cs-1``) on loopback."""
    with DocumentServer() as server:
        server.documents["/google/.well-known/openid-configuration"] = json.dumps(
            {"issuer": CONFIDENTIAL_SPACE_ISSUER,
             "jwks_uri": f"{CONFIDENTIAL_SPACE_ISSUER}/jwks"}).encode()
        server.documents["/google/jwks"] = jwks_document({"cs-1": signing_key})
        yield server


def google_getter(google: DocumentServer) -> Getter:
    """Fetches Google's issuer documents from ``google`` (the broker's own fetching code runs)."""
    return issuer_getter(google, {CONFIDENTIAL_SPACE_ISSUER: "/google"})


@contextmanager
def serve_space_broker(state_dir: Path, rule: str, google: DocumentServer
                       ) -> Iterator[RunningBroker]:
    """A broker whose rule ``rule`` admits the Confidential Space workload of ``token_claims``."""
    rules = [release_rule(rule, ["confidential-space"], [f"sha256:{DIGEST}"],
                          hardware=["sev-snp", "tdx"], dbgstat=["disabled-since-boot"])]
    with serve_broker(state_dir, rules, attestation={"confidential_space_audience": AUDIENCE},
                      jwks_getter=google_getter(google)) as broker:
        yield broker


@contextmanager
def serve_simulated_tdx_broker(state_dir: Path, rule: str, dev_tdx: Path
                               ) -> Iterator[RunningBroker]:
    """A broker that loads the dev TDX root in ``dev_tdx`` and whose rule ``rule`` admits the
    simulated TD (simulated evidence allowed)."""
    rules = [release_rule(rule, ["tdx"], [DEV_MRTD], allow_simulated=True)]
    with serve_broker(state_dir, rules, allow_simulated=True,
                      attestation={"tdx_dev_root": dev_tdx / DEV_TDX_ROOT_FILE}) as broker:
        yield broker
