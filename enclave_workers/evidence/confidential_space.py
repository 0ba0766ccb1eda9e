"""Evidence inside Google Confidential Space: an attestation token carrying our nonce.

What it does: `ConfidentialSpaceProvider.collect(report_data)` asks the Confidential Space
launcher for a custom token — ``POST /v1/token`` with ``{"audience", "nonces":
[eat_nonce_for(report_data)], "token_type": "OIDC"}`` over the launcher's Unix socket
``/run/container_launcher/teeserver.sock`` — and returns it as evidence (tee
"confidential-space"). `default_token()` reads the token the launcher refreshes in
``/run/container_launcher/attestation_verifier_claims_token`` (audience
``https://sts.googleapis.com``, no custom nonce: good for workload identity federation in
front of Cloud KMS, not for our broker's binding).

What it does not: verify the token (the broker does), or work outside Confidential Space:
without the socket or the file it raises `EvidenceUnavailableError` naming the path.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data
from keybroker.attestation.confidential_space import eat_nonce_for

__all__ = [
    "DEFAULT_TOKEN_FILE",
    "LAUNCHER_SOCKET",
    "MAX_TOKEN_SIZE",
    "ConfidentialSpaceProvider",
]

LAUNCHER_SOCKET = Path("/run/container_launcher/teeserver.sock")
DEFAULT_TOKEN_FILE = Path("/run/container_launcher/attestation_verifier_claims_token")
MAX_TOKEN_SIZE = 64 * 1024
_TOKEN_CHARACTERS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def _checked_token(token: bytes, source: str) -> bytes:
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_SIZE:
        raise EvidenceUnavailableError(f"{source} gave no token or one over {MAX_TOKEN_SIZE} B")
    if not set(token.decode("ascii", "replace")) <= _TOKEN_CHARACTERS or token.count(b".") != 2:
        raise EvidenceUnavailableError(f"{source} did not answer with a compact JWT")
    return token


class ConfidentialSpaceProvider:
    """Custom-audience, nonce-bound tokens from the Confidential Space launcher."""

    tee = "confidential-space"
    simulated = False

    def __init__(self, audience: str, *, socket_path: Path | str = LAUNCHER_SOCKET,
                 token_file: Path | str = DEFAULT_TOKEN_FILE,
                 timeout_seconds: float = 30.0) -> None:
        if not audience or len(audience) > 512:
            raise ValueError("audience must be a non-empty string of at most 512 characters")
        self.audience = audience
        self.socket_path = Path(socket_path)
        self.token_file = Path(token_file)
        self._timeout = timeout_seconds

    def collect(self, report_data: bytes) -> Evidence:
        nonce = eat_nonce_for(check_report_data(report_data))
        body = json.dumps({"audience": self.audience, "nonces": [nonce],
                           "token_type": "OIDC"}).encode("ascii")
        token = self._post_token(body)
        return Evidence(tee=self.tee, evidence=token, endorsements={})

    def default_token(self) -> bytes:
        """The launcher's default token (for workload identity federation)."""
        if not self.token_file.is_file():
            raise EvidenceUnavailableError(
                f"no Confidential Space token file at {self.token_file} "
                "(not running in Confidential Space?)")
        with self.token_file.open("rb") as handle:
            data = handle.read(MAX_TOKEN_SIZE + 1)
        return _checked_token(data, str(self.token_file))

    def _post_token(self, body: bytes) -> bytes:
        """POST /v1/token over the launcher's Unix socket (HTTP/1.1 via httpx)."""
        if not self.socket_path.exists():
            raise EvidenceUnavailableError(
                f"no Confidential Space launcher socket at {self.socket_path} "
                "(not running in Confidential Space?)")
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        try:
            with httpx.Client(transport=transport, timeout=self._timeout) as client, \
                    client.stream("POST", "http://localhost/v1/token", content=body,
                                  headers={"Content-Type": "application/json"}) as reply:
                payload = bytearray()
                for chunk in reply.iter_bytes():
                    payload += chunk
                    if len(payload) > MAX_TOKEN_SIZE:
                        raise EvidenceUnavailableError(
                            "Confidential Space launcher answer is too large")
                status = reply.status_code
        except httpx.HTTPError as exc:
            raise EvidenceUnavailableError(
                f"Confidential Space launcher at {self.socket_path}: {type(exc).__name__}") \
                from None
        if status != 200:
            detail = bytes(payload[:200]).decode("utf-8", "replace")
            raise EvidenceUnavailableError(
                f"Confidential Space launcher answered HTTP {status}: {detail}")
        return _checked_token(bytes(payload), "the Confidential Space launcher")
