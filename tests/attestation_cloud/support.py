"""Builders for the cloud attestation tests: Azure CVM evidence, a fake vTPM, tokens, JWKS.

What it does: builds HCL reports around simulated SEV-SNP reports (signed by a generated dev
chain) or TDX TDREPORTs matching a test-PKI TD quote, vTPM quotes signed by a generated AK,
RS256/HS256/none JWTs signed by generated keys, and serves JWKS documents from a local
HTTP server on 127.0.0.1 that counts requests. What it does not: touch real keys or the
network beyond loopback.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import secrets
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from keybroker.attestation.azure_cvm.evidence import AzureCvmEvidence
from keybroker.attestation.azure_cvm.hcl import (
    REPORT_TYPE_TDX,
    encode_hcl_report,
)
from keybroker.attestation.azure_cvm.tpm import (
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    encode_quote_attest,
    encode_signature,
)
from tests.support.attestation import BackgroundServer

PCR_INDICES = tuple(range(24))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rsa_jwk(key: rsa.RSAPublicKey, kid: str, **extra: Any) -> dict[str, Any]:
    numbers = key.public_numbers()
    return {"kid": kid, "kty": "RSA",
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes(3, "big")), **extra}


def runtime_data(ak: rsa.RSAPublicKey, user_data: bytes | None, **extra: Any) -> bytes:
    """Runtime-data JSON shaped like Azure's (HCLAkPub, HCLEkPub, vm-configuration)."""
    document: dict[str, Any] = {
        "keys": [rsa_jwk(ak, "HCLAkPub", key_ops=["sign"]),
                 rsa_jwk(ak, "HCLEkPub", key_ops=["encrypt"])],
        "vm-configuration": {"console-enabled": False, "secure-boot": True,
                             "tpm-enabled": True, "vmUniqueId": "SEALBEAM-TEST"},
    }
    if user_data is not None:
        document["user-data"] = user_data.hex().upper()
    document.update(extra)
    return json.dumps(document, separators=(",", ":")).encode()


def pcr_values(seed: bytes = b"pcr") -> dict[int, bytes]:
    return {index: hashlib.sha256(seed + bytes([index])).digest() for index in PCR_INDICES}


def sign_quote(ak: rsa.RSAPrivateKey, attest: bytes, scheme: int = TPM_ALG_RSASSA) -> bytes:
    if scheme == TPM_ALG_RSAPSS:
        pad: padding.AsymmetricPadding = padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                     salt_length=32)
    else:
        pad = padding.PKCS1v15()
    return encode_signature(ak.sign(attest, pad, hashes.SHA256()), scheme=scheme)


def quote_for(ak: rsa.RSAPrivateKey, report_data: bytes, pcrs: Mapping[int, bytes], *,
              scheme: int = TPM_ALG_RSASSA, extra_data: bytes | None = None
              ) -> tuple[bytes, bytes]:
    attest = encode_quote_attest(
        extra_data=hashlib.sha256(report_data).digest() if extra_data is None else extra_data,
        pcr_values=[pcrs[index] for index in PCR_INDICES], pcr_indices=PCR_INDICES)
    return attest, sign_quote(ak, attest, scheme)


@dataclass
class SnpAzureBuilder:
    """Builds Azure SEV-SNP CVM evidence on a simulated SNP report and a generated AK."""

    snp: SimulatedSnpProvider
    ak: rsa.RSAPrivateKey
    pcrs: dict[int, bytes] = field(default_factory=pcr_values)

    def hcl_report(self, user_data: bytes | None, *, runtime: bytes | None = None,
                   report_data_override: bytes | None = None) -> bytes:
        runtime = runtime if runtime is not None else runtime_data(self.ak.public_key(),
                                                                   user_data)
        bound = report_data_override or (hashlib.sha256(runtime).digest() + bytes(32))
        return encode_hcl_report(self.snp.report(bound), runtime)

    def evidence(self, report_data: bytes, *, scheme: int = TPM_ALG_RSASSA,
                 hcl: bytes | None = None, quote: tuple[bytes, bytes] | None = None,
                 pcrs: Mapping[int, bytes] | None = None) -> bytes:
        hcl = hcl if hcl is not None else self.hcl_report(report_data)
        attest, signature = quote or quote_for(self.ak, report_data, self.pcrs, scheme=scheme)
        return AzureCvmEvidence(hcl_report=hcl, tpm_attest=attest, tpm_signature=signature,
                                pcrs=self.pcrs if pcrs is None else pcrs).to_bytes()


def td_report_for(spec: Any) -> bytes:
    """A 1024-byte TDREPORT whose fields equal a `QuoteSpec`'s TD body."""
    mac = (bytes([0x81, 0, 0, 0]) + bytes(12) + bytes(16) + bytes(48) + bytes(48)
           + spec.report_data + bytes(32) + bytes(32))
    tee_tcb_info = bytes(239)
    td_info = (spec.td_attributes + spec.xfam + spec.mr_td + spec.mr_config_id + spec.mr_owner
               + spec.mr_owner_config + b"".join(spec.rtmrs) + bytes(48) + bytes(64))
    report = mac + tee_tcb_info + bytes(17) + td_info
    assert len(report) == 1024
    return report


def tdx_hcl_report(td_report: bytes, runtime: bytes) -> bytes:
    return encode_hcl_report(td_report, runtime, report_type=REPORT_TYPE_TDX, header_version=2)


# --- a fake vTPM (the worker side) ------------------------------------------------------
class FakeVtpm:
    """Behaves like Azure's vTPM: NV 0x01400002 user-data regenerates the HCL report."""

    def __init__(self, builder: SnpAzureBuilder) -> None:
        self.builder = builder
        self.user_data: bytes | None = None
        self.calls: list[str] = []

    def nv_write(self, index: int, data: bytes) -> None:
        self.calls.append(f"nv_write {index:#x}")
        assert index == 0x01400002
        self.user_data = data

    def nv_read(self, index: int) -> bytes:
        self.calls.append(f"nv_read {index:#x}")
        assert index == 0x01400001
        return self.builder.hcl_report(self.user_data)

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        self.calls.append("quote")
        attest = encode_quote_attest(extra_data=qualifying_data,
                                     pcr_values=[self.builder.pcrs[i] for i in pcrs],
                                     pcr_indices=tuple(pcrs))
        return attest, sign_quote(self.builder.ak, attest)

    def pcr_values(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        self.calls.append("pcr_values")
        return {index: self.builder.pcrs[index] for index in pcrs}


# --- tokens ---------------------------------------------------------------------------
def mint_token(key: rsa.RSAPrivateKey | bytes | None, payload: Mapping[str, Any], *,
               kid: str | None = "key-1", alg: str = "RS256",
               header_extra: Mapping[str, Any] | None = None) -> bytes:
    """A compact JWS; ``key`` bytes means an HMAC secret (HS256), None means alg none."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", **(header_extra or {})}
    if kid is not None:
        header["kid"] = kid
    signing_input = (b64url(json.dumps(header).encode()) + "."
                     + b64url(json.dumps(payload).encode()))
    if key is None:
        signature = b""
    elif isinstance(key, bytes):
        signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    else:
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return (signing_input + "." + b64url(signature)).encode("ascii")


def jwks_document(keys: Mapping[str, rsa.RSAPrivateKey]) -> bytes:
    return json.dumps({"keys": [rsa_jwk(key.public_key(), kid, use="sig", alg="RS256")
                                for kid, key in keys.items()]}).encode()


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


class DocumentServer(BackgroundServer):
    """Serves JSON documents at paths on 127.0.0.1 and counts requests per path."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.documents.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._serve_in_background(server)


@contextmanager
def document_server() -> Iterator[DocumentServer]:
    with DocumentServer() as server:
        yield server


class ManualClock:
    """A float clock the test moves by hand."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def random_report_data() -> bytes:
    return secrets.token_bytes(64)


def bincode_quote(signature: bytes, message: bytes, pcrs: Sequence[bytes]) -> bytes:
    """az-cvm-vtpm's bincode Quote (older Vec<[u8; 32]> PCR encoding)."""
    return (struct.pack("<Q", len(signature)) + signature + struct.pack("<Q", len(message))
            + message + struct.pack("<Q", len(pcrs)) + b"".join(pcrs))
