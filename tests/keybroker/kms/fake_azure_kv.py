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
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import ssl
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
    aes_key_wrap_with_padding,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ACCESS_TOKEN = "fake-kv-access-token"
TENANT = "72f988bf-0000-0000-0000-000000000000"
MAA_AUTHORITY = "https://sharedweu.weu.attest.azure.net"
_OAEP_HASHES = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
_PATH_RE = re.compile(
    r"^/keys/(?P<name>[A-Za-z0-9-]+)(?:/(?P<version>[A-Za-z0-9]*))?"
    r"(?:/(?P<op>wrapkey|unwrapkey|release))?/?$"
)
_ROTATE_RE = re.compile(r"^/keys/(?P<name>[A-Za-z0-9-]+)/rotate/?$")
_DELETED_RE = re.compile(r"^/deletedkeys/(?P<name>[A-Za-z0-9-]+)/?$")
RECOVERABLE_DAYS = 7


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StaticTokenCredential:
    """A TokenCredential that hands out one token and records the scopes asked for."""

    def __init__(self, token: str = ACCESS_TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class FakePki:
    """A test CA with a TLS server certificate and a vault JWS-signing certificate for 127.0.0.1."""

    ca_key: rsa.RSAPrivateKey
    ca_cert: x509.Certificate
    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    signer_key: rsa.RSAPrivateKey
    signer_cert: x509.Certificate

    @classmethod
    def create(cls, directory: Path, host: str = "127.0.0.1") -> FakePki:
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_cert = _certificate(
            "sealbeam test CA", ca_key.public_key(), ca_key, None, host, is_ca=True
        )
        server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        server_cert = _certificate("fake key vault", server_key.public_key(), ca_key, ca_cert, host)
        signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signer_cert = _certificate(
            "fake key vault signer", signer_key.public_key(), ca_key, ca_cert, host
        )
        directory.mkdir(parents=True, exist_ok=True)
        ca_path = directory / "ca.pem"
        ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        server_cert_path = directory / "server.pem"
        server_cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
        server_key_path = directory / "server-key.pem"
        server_key_path.write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.chmod(server_key_path, 0o600)
        return cls(
            ca_key, ca_cert, ca_path, server_cert_path, server_key_path, signer_key, signer_cert
        )


def _certificate(
    common_name: str,
    public_key: Any,
    issuer_key: rsa.RSAPrivateKey,
    issuer_cert: x509.Certificate | None,
    host: str,
    is_ca: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        names: list[x509.GeneralName] = [x509.DNSName("localhost")]
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
        builder = (
            builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
    return builder.sign(issuer_key, hashes.SHA256())


def mint_maa_token(
    maa_key: rsa.RSAPrivateKey,
    runtime_jwk: dict[str, Any],
    *,
    authority: str = MAA_AUTHORITY,
    isolation_claims: dict[str, Any] | None = None,
    lifetime_seconds: int = 600,
) -> str:
    """An MAA-shaped JWT for an SEV-SNP CVM, with the runtime key in x-ms-runtime.keys."""
    now = int(time.time())
    tee = {
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-cvm",
        "x-ms-sevsnpvm-is-debuggable": False,
        "x-ms-sevsnpvm-launchmeasurement": "ab" * 48,
        "x-ms-sevsnpvm-bootloader-svn": 4,
        "x-ms-sevsnpvm-tee-svn": 0,
        "x-ms-sevsnpvm-snpfw-svn": 22,
        "x-ms-sevsnpvm-microcode-svn": 213,
    }
    tee.update(isolation_claims or {})
    claims = {
        "iss": authority,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_seconds,
        "x-ms-attestation-type": "azurevm",
        "x-ms-isolation-tee": tee,
        "x-ms-runtime": {"keys": [runtime_jwk]},
    }
    return jwt.encode(claims, maa_key, algorithm="RS256", headers={"kid": "maa-test-key"})


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


class VaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner


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
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
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
                _error_body("Unauthorized", "AKV10000: auth"),
            )
        if not query.get("api-version"):
            return 400, {}, _error_body("BadParameter", "api-version is required")
        route = _route(method, parts.path)
        if route is None:
            return 404, {}, _error_body("NotFound", f"no route for {method} {parts.path}")
        operation, name, version = route
        with self._lock:
            injected = self._failures[operation].popleft() if self._failures[operation] else None
        try:
            if injected is not None:
                raise injected
            answer = self._operate(operation, name, version, body)
            status = 204 if answer is None else 200
        except VaultError as error:
            status, answer = error.status, _error_body(error.code, error.message, error.inner)
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
            bundle["release_policy"] = _encoded_policy(key.release_policy)
        return bundle

    def _release(self, kid: str, key: FakeKeyVersion, request: dict[str, Any]) -> str:
        if not key.exportable or key.release_policy is None:
            raise VaultError(400, "BadParameter", "Key is not exportable or has no release policy.")
        claims = self._verified_target(request.get("target"))
        if not _policy_allows(key.release_policy, claims):
            raise VaultError(
                403,
                "Forbidden",
                "Target environment attestation statement does not satisfy the key release policy.",
                "AccessDenied",
            )
        runtime_key = _runtime_key(claims)
        enc = request.get("enc") or "CKM_RSA_AES_KEY_WRAP"
        if enc not in _OAEP_HASHES:
            raise VaultError(400, "BadParameter", f"enc {enc} is not supported")
        if key.secret is not None:
            material = key.secret
        else:
            assert key.rsa_key is not None
            material = key.rsa_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        aes_key = os.urandom(32)
        oaep_hash = _OAEP_HASHES[enc]()
        ciphertext = runtime_key.encrypt(
            aes_key, padding.OAEP(mgf=padding.MGF1(oaep_hash), algorithm=oaep_hash, label=None)
        ) + aes_key_wrap_with_padding(aes_key, material)
        key_hsm = {
            "schema_version": "1.0",
            "header": {"kid": "TpmEphemeralEncryptionKey", "alg": "dir", "enc": enc},
            "ciphertext": b64url(ciphertext),
            "generator": "fake key vault",
        }
        payload = {
            "request": {"api-version": "7.4", "enc": enc, "kid": kid},
            "response": {
                "key": {
                    "key": {
                        "kid": kid,
                        "kty": key.key_type,
                        "key_ops": key.key_ops,
                        "key_hsm": b64url(json.dumps(key_hsm).encode()),
                    },
                    "attributes": {"enabled": True, "exportable": True},
                    "release_policy": _encoded_policy(key.release_policy),
                }
            },
        }
        return self.sign_jws(payload)

    def sign_jws(
        self, payload: dict[str, Any], *, signer_key: rsa.RSAPrivateKey | None = None
    ) -> str:
        chain = [self.pki.signer_cert, self.pki.ca_cert]
        ders = [cert.public_bytes(serialization.Encoding.DER) for cert in chain]
        header = {
            "alg": "RS256",
            "x5c": [base64.b64encode(der).decode() for der in ders],
            "x5t#S256": b64url(hashlib.sha256(ders[0]).digest()),
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
        )
        signature = (signer_key or self.pki.signer_key).sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{b64url(signature)}"

    def _verified_target(self, token: Any) -> dict[str, Any]:
        if not isinstance(token, str) or token.count(".") != 2:
            raise VaultError(400, "BadParameter", "target must be an attestation token")
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            public_key = self.maa_public_keys[issuer]
            return jwt.decode(token, public_key, algorithms=["RS256"], issuer=issuer)
        except (KeyError, jwt.PyJWTError) as exc:
            raise VaultError(
                403,
                "Forbidden",
                "Target environment attestation statement cannot be verified.",
                "AccessDenied",
            ) from exc


def _route(method: str, path: str) -> tuple[str, str, str] | None:
    """(operation, key name, version) of a request the fake serves, or None."""
    deleted = _DELETED_RE.match(path)
    if deleted is not None:
        operation = {"GET": "getdeleted", "DELETE": "purge"}.get(method)
        return (operation, deleted.group("name"), "") if operation else None
    rotate = _ROTATE_RE.match(path)
    if rotate is not None:
        return ("rotate", rotate.group("name"), "") if method == "POST" else None
    match = _PATH_RE.match(path)
    if match is None:
        return None
    name, version, op = match.group("name"), match.group("version") or "", match.group("op")
    if op is not None:
        return (op, name, version) if method == "POST" else None
    operation = {"GET": "get", "PATCH": "update"}.get(method)
    if method == "DELETE" and not version:
        operation = "delete"
    return (operation, name, version) if operation else None


def _error_body(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


def _encoded_policy(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "contentType": "application/json; charset=utf-8",
        "immutable": False,
        "data": b64url(json.dumps(policy).encode()),
    }


def _claim(claims: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    value: Any = claims
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            # MAA claim names contain dots only as separators of nested objects
            return False, None
        value = value[part]
    return True, value


def _condition_holds(condition: dict[str, Any], claims: dict[str, Any]) -> bool:
    lowered = {key.lower(): value for key, value in condition.items()}
    if "anyof" in lowered:
        return any(_condition_holds(item, claims) for item in lowered["anyof"])
    if "allof" in lowered:
        return all(_condition_holds(item, claims) for item in lowered["allof"])
    present, value = _claim(claims, lowered["claim"])
    if "exists" in lowered:
        return present == bool(lowered["exists"])
    if not present:
        return False
    for operator, expected in lowered.items():
        if operator == "claim":
            continue
        if type(value) is not type(expected) and not (
            isinstance(value, (int, float))
            and isinstance(expected, (int, float))
            and not isinstance(value, bool)
            and not isinstance(expected, bool)
        ):
            return False
        checks = {"equals": value == expected, "notequals": value != expected}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            checks.update(
                {
                    "less": value < expected,
                    "lessorequals": value <= expected,
                    "greater": value > expected,
                    "greaterorequals": value >= expected,
                }
            )
        if operator not in checks:
            raise VaultError(400, "BadParameter", f"release policy operator {operator} is invalid")
        return checks[operator]
    raise VaultError(400, "BadParameter", "release policy condition has no operator")


def _policy_allows(policy: dict[str, Any], claims: dict[str, Any]) -> bool:
    if policy.get("version") != "1.0.0":
        raise VaultError(400, "BadParameter", "release policy version must be 1.0.0")
    issuer = str(claims.get("iss", "")).rstrip("/")
    for entry in policy.get("anyOf", []):
        if str(entry.get("authority", "")).rstrip("/") != issuer:
            continue
        rest = {key: value for key, value in entry.items() if key != "authority"}
        if _condition_holds(rest, claims):
            return True
    return False


def _runtime_key(claims: dict[str, Any]) -> rsa.RSAPublicKey:
    for path in ("x-ms-runtime.keys", "x-ms-isolation-tee.x-ms-runtime.keys"):
        present, keys = _claim(claims, path)
        for jwk in keys if present and isinstance(keys, list) else []:
            if jwk.get("kty") == "RSA":
                numbers = rsa.RSAPublicNumbers(
                    int.from_bytes(b64url_decode(jwk["e"]), "big"),
                    int.from_bytes(b64url_decode(jwk["n"]), "big"),
                )
                return numbers.public_key()
    raise VaultError(400, "BadParameter", "target token carries no runtime RSA key")


def _handler_for(vault: FakeKeyVault) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1 << 20:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else b""
            try:
                status, headers, answer = vault.handle(self.command, self.path, self.headers, body)
            except Exception as exc:  # a bug in the fake: answer, and fail the test on close()
                vault.unexpected.append(f"{self.command} {self.path}: {exc!r}")
                status, headers, answer = 500, {}, _error_body("FakeCrashed", repr(exc))
            vault.requests.append((self.command, self.path, status))
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {
                "Content-Type": "application/json; charset=utf-8",
                **headers,
            }.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
