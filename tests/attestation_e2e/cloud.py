"""Fakes of the cloud services a worker talks to: Azure IMDS, MAA, the Confidential Space launcher.

What it does: `FakeImds` answers the VCEK chain of a dev/test SEV-SNP chain; `FakeMaa` reads
the SEV-SNP report and runtime data a real `AzureMaaProvider` posts and mints an RS256 token
the way MAA does (runtime data in ``x-ms-runtime``); `FakeLauncher` serves ``POST /v1/token``
on a Unix socket like the Confidential Space launcher, minting a token carrying the nonces it
was asked for; `issuer_getter` fetches an issuer's JWKS from a local `DocumentServer` over
loopback HTTP, so the broker's own JWKS fetching code runs. What it does not: touch the
network beyond loopback.
"""

from __future__ import annotations

import base64
import http.server
import json
import socketserver
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker.attestation.jwks import Getter, http_getter
from keybroker.attestation.snp.report import parse_report
from tests.attestation_cloud.support import DocumentServer, mint_token
from tests.support.attestation import BackgroundServer

__all__ = ["FakeImds", "FakeLauncher", "FakeMaa", "issuer_getter"]

TOKEN_LIFETIME = 3600


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issuer_getter(server: DocumentServer, issuers: Mapping[str, str]) -> Getter:
    """A getter that serves ``https://<issuer>/path`` from ``server`` (prefix -> path prefix)."""
    fetch = http_getter(allow_loopback_http=True)

    def get(url: str) -> bytes:
        for issuer, prefix in issuers.items():
            if url.startswith(issuer + "/"):
                return fetch(server.url + prefix + url[len(issuer):])
        raise AssertionError(f"unexpected fetch of {url}")

    return get


class FakeImds:
    """Azure IMDS's THIM endpoint for a chain directory (vcek.pem, ask.pem, ark.pem)."""

    def __init__(self, chain_dir: Path) -> None:
        self._chain_dir = chain_dir

    def get(self, url: str, headers: Mapping[str, str]) -> bytes:
        assert url.endswith("/metadata/THIM/amd/certification") and headers["Metadata"] == "true"
        chain = "".join((self._chain_dir / name).read_text() for name in ("ask.pem", "ark.pem"))
        return json.dumps({"vcekCert": (self._chain_dir / "vcek.pem").read_text(),
                           "certificateChain": chain}).encode()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        raise AssertionError(f"no IMDS POST expected on SEV-SNP ({url})")


class FakeMaa:
    """Attests a posted SEV-SNP report like MAA's SevSnpVm endpoint and signs a token.

    ``issuer`` is what the token claims; a test may make it differ from where it was posted.
    """

    def __init__(self, issuer: str, key: rsa.RSAPrivateKey, *, kid: str = "maa-1",
                 clock: Callable[[], float] = time.time,
                 compliance: str = "azure-compliant-cvm") -> None:
        self.issuer = issuer
        self._key = key
        self._kid = kid
        self._clock = clock
        self.compliance = compliance

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        assert "/attest/SevSnpVm?api-version=" in url
        request = json.loads(body)
        inner = json.loads(_unb64url(request["report"]))
        report = parse_report(_unb64url(inner["SnpReport"]))
        runtime = json.loads(_unb64url(request["runtimeData"]["data"]))
        now = self._clock()
        payload: dict[str, Any] = {
            "iss": self.issuer, "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME,
            "x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": self.compliance,
            "x-ms-runtime": runtime,
            "x-ms-sevsnpvm-launchmeasurement": report.measurement.hex(),
            "x-ms-sevsnpvm-is-debuggable": report.debug,
            "x-ms-sevsnpvm-vmpl": report.vmpl, "x-ms-sevsnpvm-guestsvn": report.guest_svn,
            "x-ms-sevsnpvm-smt-allowed": report.smt_allowed,
            "x-ms-sevsnpvm-migration-allowed": report.migrate_ma_allowed,
            "x-ms-sevsnpvm-hostdata": report.host_data.hex(),
            "x-ms-sevsnpvm-reportdata": report.report_data.hex(),
        }
        token = mint_token(self._key, payload, kid=self._kid).decode("ascii")
        return json.dumps({"token": token}).encode()


class _UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeLauncher(BackgroundServer):
    """The Confidential Space launcher's token endpoint on a Unix socket."""

    def __init__(self, socket_path: Path, key: rsa.RSAPrivateKey, claims: Mapping[str, Any],
                 *, kid: str = "cs-1", clock: Callable[[], float] = time.time) -> None:
        self.socket_path = socket_path
        self.claims = dict(claims)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = clock()
                payload = {**outer.claims, "aud": request["audience"],
                           "eat_nonce": request["nonces"], "iat": now, "nbf": now,
                           "exp": now + TOKEN_LIFETIME}
                body = mint_token(key, payload, kid=kid)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

            def address_string(self) -> str:
                return "launcher"

        self._serve_in_background(_UnixHttpServer(str(socket_path), Handler))
