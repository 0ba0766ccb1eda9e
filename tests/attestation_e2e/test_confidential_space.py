"""Google Confidential Space end to end over HTTP: the real provider against a fake launcher.

The worker's `ConfidentialSpaceProvider` asks `FakeLauncher` (a Unix socket, like the real
launcher's) for a token whose ``eat_nonce`` is the hash of our report_data; the broker
fetches Google's OpenID configuration and JWKS over loopback HTTP from a local document
server, verifies the token, and the policy checks image digest, support attributes, dbgstat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enclave_workers.evidence.confidential_space import ConfidentialSpaceProvider
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import new_rsa_key
from tests.attestation_e2e.cloud import FakeLauncher
from tests.attestation_e2e.support import attest_once, expect_denied, open_released_key
from tests.support.tee_brokers import (
    AUDIENCE,
    DIGEST,
    google_fixture,
    space_broker_fixture,
    token_claims,
)

SIGNING_KEY = new_rsa_key()


google = google_fixture(SIGNING_KEY)
space_broker = space_broker_fixture("space-workers", "space")


def launcher(tmp_path: Path, **changes: Any) -> FakeLauncher:
    return FakeLauncher(tmp_path / "teeserver.sock", SIGNING_KEY, token_claims(**changes))


def test_workload_gets_and_opens_a_key(space_broker: RunningBroker, tmp_path: Path) -> None:
    with launcher(tmp_path) as running:
        provider = ConfidentialSpaceProvider(AUDIENCE, socket_path=running.socket_path)
        attested = open_released_key(space_broker, provider)
        assert attested.details["claims"]["tee"] == "confidential-space"
        assert attested.details["claims"]["measurement"] == DIGEST
        session = attest_once(space_broker, provider)
    assert "STABLE" in session.claims["platform"]["support_attributes"]


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"submods": {"confidential_space": {"support_attributes": ["LATEST"]},
                      "container": {"image_digest": f"sha256:{DIGEST}"}}}, 403,
         "support_attributes lack STABLE, required by rule space-workers"),
        ({"dbgstat": "enabled"}, 403, "dbgstat 'enabled' not allowed by rule space-workers"),
        ({"submods": {"confidential_space": {"support_attributes": ["STABLE"]},
                      "container": {"image_digest": "sha256:" + "77" * 32}}}, 403,
         "measurement not allowed by rule space-workers"),
        ({"hwmodel": "GCP_AMD_SEV"}, 403, "hardware 'sev' not allowed by rule space-workers"),
        ({"swname": "GCE"}, 401, "swname 'GCE' is not 'CONFIDENTIAL_SPACE'"),
    ],
)
def test_confidential_space_denials_are_recorded(space_broker: RunningBroker, tmp_path: Path,
                                                 changes: dict, status: int,
                                                 reason: str) -> None:
    with launcher(tmp_path, **changes) as running:
        provider = ConfidentialSpaceProvider(AUDIENCE, socket_path=running.socket_path)
        expect_denied(space_broker, provider, status, reason)
