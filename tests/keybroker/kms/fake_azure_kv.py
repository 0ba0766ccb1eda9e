"""A local HTTPS fake of the Azure Key Vault REST calls that sealbeam makes, for tests.

It speaks what ``azure-keyvault-keys`` sends: the challenge-based auth dance (401 with
``WWW-Authenticate: Bearer authorization=..., resource=...`` until the request carries the
expected bearer token), ``GET /keys/{name}[/{version}]``, ``POST .../wrapkey`` / ``unwrapkey``
(``{"alg", "value"}`` base64url; RSA-OAEP-256 and A256KW), and ``POST .../release`` for Secure Key
Release: it verifies the MAA target token with a test MAA key, evaluates the key's release policy
(the Azure grammar: anyOf/allOf, equals/notEquals/less/lessOrEquals/greater/greaterOrEquals/exists)
and answers with a JWS signed by a test vault certificate, the key wrapped to the runtime key from
the token (CKM_RSA_AES_KEY_WRAP / RSA_AES_KEY_WRAP_256 / _384). Errors use Key Vault's body
``{"error": {"code", "message", "innererror"}}``. Every request must carry ``api-version``.

Key lifecycle, as the SDK drives it: ``POST /keys/{name}/rotate`` (a new version of the same type
and size becomes current; older versions keep working), ``PATCH /keys/{name}/{version}``
(``attributes.enabled``; allowed on a disabled version, so it can be enabled again), and soft
delete: ``DELETE /keys/{name}`` moves every version to the deleted collection, which
``GET /deletedkeys/{name}`` answers with 404 for the first `deletion_polls` polls (the deletion
is "in progress", as the SDK's ``begin_delete_key`` poller expects), then with the deleted key;
``DELETE /deletedkeys/{name}`` purges it (409 while the deletion is still in progress, 403 when
the vault has `purge_protection`). With ``soft_delete=False`` a delete is final at once and the
answer carries no ``recoveryId``.

Test controls: keys with versions held in memory, `disable_key`, `fail_next` (a queue of prepared
error statuses per operation), `purged` (names purged, in order), and `close`, which fails the
test if a prepared response went unused. TLS uses a certificate from a test CA (`FakePki`) that
the client trusts through ``connection_verify=<ca path>``.

It is not Key Vault: no access policies, no rotation policies (rotation is on demand only), no
recovery of deleted keys, no automatic purge after the retention period.

Layout: this module keeps the keys and answers the operations. Certificates, the credential and
MAA tokens are in ``fake_azure_kv_pki``, Secure Key Release (policy, wrapping, JWS) in
``fake_azure_kv_release``, routing, error bodies and the HTTP handler in ``fake_azure_kv_http``;
the names tests import from here are re-exported.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from tests.keybroker.kms.fake_azure_kv_http import VaultError, error_body, handler_for, route_of
from tests.keybroker.kms.fake_azure_kv_pki import (
    ACCESS_TOKEN,
    MAA_AUTHORITY,
    TENANT,
    FakePki,
    StaticTokenCredential,
    b64url,
    b64url_decode,
    mint_maa_token,
)
from tests.keybroker.kms.fake_azure_kv_release import encoded_policy, release_token, sign_jws

__all__ = [
    "ACCESS_TOKEN",
    "MAA_AUTHORITY",
    "RECOVERABLE_DAYS",
    "TENANT",
    "DeletedFakeKey",
    "FakeKeyVault",
    "FakeKeyVersion",
    "FakePki",
    "StaticTokenCredential",
    "VaultError",
    "b64url",
    "b64url_decode",
    "mint_maa_token",
]

RECOVERABLE_DAYS = 7


@dataclass
class FakeKeyVersion:
    version: str
    key_type: str  # "RSA-HSM" or "oct-HSM"
    rsa_key: rsa.RSAPrivateKey | None = None
    secret: bytes | None = None
    enabled: bool = True
    exportable: bool = False
    release_policy: dict[str, Any] | None = None
    key_ops: list[str] = field(default_factory=lambda: ["wrapKey", "unwrapKey"])


@dataclass
class DeletedFakeKey:
    """A key in the deleted collection; `polls_left` GETs still answer 404 (deletion running)."""

    versions: list[FakeKeyVersion]
    deleted_at: int
    polls_left: int


class FakeKeyVault:
    """The fake vault; use as a context manager or call `close()` (which checks leftovers)."""

    def __init__(
        self,
        pki: FakePki,
        *,
        maa_public_keys: dict[str, Any] | None = None,
        soft_delete: bool = True,
        purge_protection: bool = False,
        deletion_polls: int = 2,
    ) -> None:
        self.pki = pki
        self.maa_public_keys = dict(maa_public_keys or {})
        self.keys: dict[str, list[FakeKeyVersion]] = {}
        self.deleted: dict[str, DeletedFakeKey] = {}
        self.purged: list[str] = []
        self.soft_delete = soft_delete
        self.purge_protection = purge_protection
        self.deletion_polls = deletion_polls
        self.requests: list[tuple[str, str, int]] = []
        self.operations: list[tuple[str, str, str, int]] = []  # (op, name, version, status)
        self._failures: dict[str, deque[VaultError]] = defaultdict(deque)
        self.unexpected: list[str] = []  # fake's own crashes; close() fails the test on them
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert_path, pki.server_key_path)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(self))
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def __enter__(self) -> FakeKeyVault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(check_unused=exc[0] is None)

    def close(self, check_unused: bool = True) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        leftovers = {op: len(queue) for op, queue in self._failures.items() if queue}
        if check_unused and leftovers:
            raise AssertionError(f"fake Key Vault: prepared responses never used: {leftovers}")
        if self.unexpected:
            raise AssertionError(f"fake Key Vault crashed while serving: {self.unexpected}")

    # -- test controls -------------------------------------------------------------------------

    def create_rsa_key(
        self,
        name: str,
        *,
        size: int = 2048,
        exportable: bool = False,
        release_policy: dict[str, Any] | None = None,
    ) -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=size)
        return self._add(
            name,
            FakeKeyVersion(
                uuid.uuid4().hex,
                "RSA-HSM",
                rsa_key=key,
                exportable=exportable,
                release_policy=release_policy,
            ),
        )

    def create_oct_key(
        self, name: str, *, exportable: bool = False, release_policy: dict[str, Any] | None = None
    ) -> str:
        return self._add(
            name,
            FakeKeyVersion(
                uuid.uuid4().hex,
                "oct-HSM",
                secret=os.urandom(32),
                exportable=exportable,
                release_policy=release_policy,
            ),
        )

    def version_of(self, name: str, version: str) -> FakeKeyVersion:
        return next(item for item in self.keys[name] if item.version == version)

    def disable_key(self, name: str) -> None:
        for item in self.keys[name]:
            item.enabled = False

    def fail_next(
        self,
        operation: str,
        status: int,
        code: str = "ServiceUnavailable",
        message: str = "injected failure",
        times: int = 1,
        inner: str | None = None,
    ) -> None:
        """Queue ``times`` error answers for ``operation`` (get, wrapkey, unwrapkey, release,
        rotate, update, delete, getdeleted, purge)."""
        for _ in range(times):
            self._failures[operation].append(VaultError(status, code, message, inner))

    def _add(self, name: str, version: FakeKeyVersion) -> str:
        self.keys.setdefault(name, []).append(version)
        return version.version

    # -- request handling ----------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[int, dict, dict | None]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        if headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}":
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                f'resource="https://vault.azure.net"'
            )
            return (
                401,
                {"WWW-Authenticate": challenge},
                error_body("Unauthorized", "AKV10000: auth"),
            )
        if not query.get("api-version"):
            return 400, {}, error_body("BadParameter", "api-version is required")
        route = route_of(method, parts.path)
        if route is None:
            return 404, {}, error_body("NotFound", f"no route for {method} {parts.path}")
        operation, name, version = route
        with self._lock:
            injected = self._failures[operation].popleft() if self._failures[operation] else None
        try:
            if injected is not None:
                raise injected
            answer = self._operate(operation, name, version, body)
            status = 204 if answer is None else 200
        except VaultError as error:
            status, answer = error.status, error_body(error.code, error.message, error.inner)
        self.operations.append((operation, name, version, status))
        return status, {}, answer

    def _operate(
        self, operation: str, name: str, version: str, body: bytes
    ) -> dict[str, Any] | None:
        lifecycle = {
            "rotate": self._rotate,
            "update": self._update,
            "delete": self._delete,
            "getdeleted": self._get_deleted,
            "purge": self._purge,
        }.get(operation)
        if lifecycle is not None:
            with self._lock:
                return lifecycle(name, version, body)
        key = self._lookup(name, version)
        if not key.enabled:
            raise VaultError(
                403,
                "Forbidden",
                f"Operation {operation} is not allowed on a disabled key.",
                "KeyDisabled",
            )
        kid = f"{self.url}/keys/{name}/{key.version}"
        if operation == "get":
            return self._bundle(kid, key)
        request = json.loads(body or b"{}")
        if operation == "release":
            return {"value": self._release(kid, key, request)}
        value = b64url_decode(request.get("value", ""))
        alg = request.get("alg")
        try:
            if key.key_type == "RSA-HSM" and alg == "RSA-OAEP-256":
                oaep = padding.OAEP(
                    mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
                )
                assert key.rsa_key is not None
                out = (
                    key.rsa_key.public_key().encrypt(value, oaep)
                    if operation == "wrapkey"
                    else key.rsa_key.decrypt(value, oaep)
                )
            elif key.key_type == "oct-HSM" and alg == "A256KW":
                assert key.secret is not None
                out = (
                    aes_key_wrap(key.secret, value)
                    if operation == "wrapkey"
                    else aes_key_unwrap(key.secret, value)
                )
            else:
                raise VaultError(
                    400, "BadParameter", f"algorithm {alg} not valid for {key.key_type}"
                )
        except (ValueError, InvalidUnwrap) as exc:  # bad ciphertext, as Key Vault reports it
            raise VaultError(400, "BadParameter", "The parameter is incorrect.") from exc
        return {"kid": kid, "value": b64url(out)}

    # -- key lifecycle ---------------------------------------------------------------------------

    def _rotate(self, name: str, _version: str, _body: bytes) -> dict[str, Any]:
        current = self._lookup(name, "")
        material: dict[str, Any] = (
            {"rsa_key": rsa.generate_private_key(65537, current.rsa_key.key_size)}
            if current.rsa_key is not None
            else {"secret": os.urandom(len(current.secret or b"") or 32)}
        )
        created = FakeKeyVersion(
            uuid.uuid4().hex,
            current.key_type,
            exportable=current.exportable,
            release_policy=current.release_policy,
            key_ops=list(current.key_ops),
            **material,
        )
        self._add(name, created)
        return self._bundle(f"{self.url}/keys/{name}/{created.version}", created)

    def _update(self, name: str, version: str, body: bytes) -> dict[str, Any]:
        key = self._lookup(name, version)  # allowed on a disabled version (to enable it again)
        request = json.loads(body or b"{}")
        enabled = request.get("attributes", {}).get("enabled")
        if enabled is not None:
            if not isinstance(enabled, bool):
                raise VaultError(400, "BadParameter", "attributes.enabled must be a boolean")
            key.enabled = enabled
        return self._bundle(f"{self.url}/keys/{name}/{key.version}", key)

    def _delete(self, name: str, _version: str, _body: bytes) -> dict[str, Any]:
        versions = self.keys.get(name)
        if not versions:
            raise VaultError(404, "KeyNotFound", f"A key with (name/id) {name} was not found.")
        del self.keys[name]
        deleted = DeletedFakeKey(versions, int(time.time()), self.deletion_polls)
        if self.soft_delete:
            self.deleted[name] = deleted
        else:
            self.purged.append(name)
        return self._deleted_bundle(name, deleted)

    def _get_deleted(self, name: str, _version: str, _body: bytes) -> dict[str, Any]:
        deleted = self.deleted.get(name)
        if deleted is None or deleted.polls_left > 0:
            if deleted is not None:
                deleted.polls_left -= 1
            raise VaultError(404, "KeyNotFound", f"Deleted Key not found: {name}")
        return self._deleted_bundle(name, deleted)

    def _purge(self, name: str, _version: str, _body: bytes) -> None:
        deleted = self.deleted.get(name)
        if deleted is None:
            raise VaultError(404, "KeyNotFound", f"Deleted Key not found: {name}")
        if deleted.polls_left > 0:
            raise VaultError(409, "Conflict", f"Key {name} is currently being deleted.")
        if self.purge_protection:
            raise VaultError(
                403,
                "Forbidden",
                f"Operation 'purge' is not allowed on key {name}: the vault has purge protection.",
            )
        del self.deleted[name]
        self.purged.append(name)
        return None

    def _deleted_bundle(self, name: str, deleted: DeletedFakeKey) -> dict[str, Any]:
        latest = deleted.versions[-1]
        bundle = self._bundle(f"{self.url}/keys/{name}/{latest.version}", latest)
        bundle["deletedDate"] = deleted.deleted_at
        if self.soft_delete:
            bundle["recoveryId"] = f"{self.url}/deletedkeys/{name}"
            bundle["scheduledPurgeDate"] = deleted.deleted_at + RECOVERABLE_DAYS * 86400
        return bundle

    def _lookup(self, name: str, version: str) -> FakeKeyVersion:
        versions = self.keys.get(name)
        if not versions:
            raise VaultError(
                404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault."
            )
        if not version:
            return versions[-1]
        for item in versions:
            if item.version == version:
                return item
        raise VaultError(
            404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not found."
        )

    def _bundle(self, kid: str, key: FakeKeyVersion) -> dict[str, Any]:
        jwk: dict[str, Any] = {"kid": kid, "kty": key.key_type, "key_ops": key.key_ops}
        if key.rsa_key is not None:
            numbers = key.rsa_key.public_key().public_numbers()
            jwk["n"] = b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"))
            jwk["e"] = b64url(numbers.e.to_bytes(3, "big"))
        now = int(time.time())
        bundle: dict[str, Any] = {
            "key": jwk,
            "attributes": {
                "enabled": key.enabled,
                "created": now,
                "updated": now,
                "exportable": key.exportable,
                "recoveryLevel": (
                    "Recoverable" if self.purge_protection else "Recoverable+Purgeable"
                ),
                "recoverableDays": RECOVERABLE_DAYS,
            },
        }
        if key.release_policy is not None:
            bundle["release_policy"] = encoded_policy(key.release_policy)
        return bundle

    def _release(self, kid: str, key: FakeKeyVersion, request: dict[str, Any]) -> str:
        return release_token(kid, key, request, pki=self.pki, maa_public_keys=self.maa_public_keys)

    def sign_jws(
        self, payload: dict[str, Any], *, signer_key: rsa.RSAPrivateKey | None = None
    ) -> str:
        """A JWS signed like the vault's release answers (``signer_key`` forges one)."""
        return sign_jws(self.pki, payload, signer_key=signer_key)
