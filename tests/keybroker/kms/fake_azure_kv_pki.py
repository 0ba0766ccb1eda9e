"""Credentials, certificates and tokens for the Azure Key Vault fake (tests only).

`FakePki` is a test CA with the fake vault's TLS server certificate and its JWS-signing
certificate; `StaticTokenCredential` is the ``TokenCredential`` the SDK gets (one bearer token,
``ACCESS_TOKEN``, the one the fake accepts); `mint_maa_token` makes an MAA-shaped JWT for an
SEV-SNP CVM carrying a runtime key, signed by a test MAA key. `b64url` / `b64url_decode` are the
unpadded base64url codec of JOSE. Nothing here serves HTTP (``fake_azure_kv`` does) or evaluates
release policies (``fake_azure_kv_release`` does).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ACCESS_TOKEN = "fake-kv-access-token"
TENANT = "72f988bf-0000-0000-0000-000000000000"
MAA_AUTHORITY = "https://sharedweu.weu.attest.azure.net"


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
