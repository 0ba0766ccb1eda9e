"""Worker-side providers: the Azure vTPM (fake device) and the Confidential Space launcher
(a real HTTP server on a Unix socket in a temporary directory)."""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_workers.evidence.azure_vtpm import (
    AzureImdsClient,
    AzureMaaProvider,
    AzureVtpmProvider,
    Tpm2ToolsDevice,
)
from enclave_workers.evidence.base import EvidenceProvider, EvidenceUnavailableError
from enclave_workers.evidence.confidential_space import ConfidentialSpaceProvider
from keybroker.attestation.azure_cvm import AzureCvmVerifier, parse_azure_cvm_evidence
from keybroker.attestation.azure_cvm.hcl import parse_hcl_report
from keybroker.attestation.confidential_space import (
    CONFIDENTIAL_SPACE_ISSUER,
    ConfidentialSpaceVerifier,
)
from keybroker.attestation.jwks import JwksCache
from tests.attestation_cloud.support import (
    FakeVtpm,
    ManualClock,
    SnpAzureBuilder,
    jwks_document,
    mint_token,
    new_rsa_key,
    random_report_data,
)

LAUNCHER_KEY = new_rsa_key()


# --- Azure vTPM -------------------------------------------------------------------------
def test_vtpm_provider_evidence_verifies_at_the_broker(
        builder: SnpAzureBuilder, azure_verifier: AzureCvmVerifier) -> None:
    device = FakeVtpm(builder)
    provider = AzureVtpmProvider(device)
    assert isinstance(provider, EvidenceProvider) and provider.tee == "azure-cvm"
    report_data = random_report_data()
    evidence = provider.collect(report_data)
    assert device.calls == ["nv_write 0x1400002", "nv_read 0x1400001", "quote", "pcr_values"]
    assert evidence.endorsements == {}
    claims = azure_verifier.evaluate(evidence.evidence, report_data,
                                     endorsements=builder.snp.endorsements())
    assert claims.report_data == report_data and claims.platform["hw"] == "sev-snp"


def test_vtpm_provider_puts_the_imds_vcek_chain_in_endorsements(
        builder: SnpAzureBuilder, azure_verifier: AzureCvmVerifier, dev_chain: Path) -> None:
    pem = [(dev_chain / name).read_text() for name in ("vcek.pem", "ask.pem", "ark.pem")]
    requests: list[str] = []

    def get(url: str, headers) -> bytes:
        requests.append(url)
        assert headers == {"Metadata": "true"}
        return json.dumps({"vcekCert": pem[0], "certificateChain": pem[1] + pem[2]}).encode()

    imds = AzureImdsClient(get=get, post=lambda *_: b"")
    provider = AzureVtpmProvider(FakeVtpm(builder), imds=imds)
    report_data = random_report_data()
    evidence = provider.collect(report_data)
    assert requests == ["http://169.254.169.254/metadata/THIM/amd/certification"]
    claims = azure_verifier.evaluate(evidence.evidence, report_data,
                                     endorsements=evidence.endorsements)
    assert claims.simulated


def test_vtpm_provider_refuses_a_report_without_our_user_data(builder: SnpAzureBuilder) -> None:
    class StaleVtpm(FakeVtpm):
        def nv_write(self, index: int, data: bytes) -> None:
            self.calls.append("ignored write")

    with pytest.raises(EvidenceUnavailableError, match="does not carry the report_data"):
        AzureVtpmProvider(StaleVtpm(builder)).collect(random_report_data())
    with pytest.raises(ValueError, match="64 bytes"):
        AzureVtpmProvider(FakeVtpm(builder)).collect(b"short")


def test_vtpm_without_device_or_tools_names_what_is_missing(tmp_path: Path) -> None:
    device = Tpm2ToolsDevice(tmp_path / "tpmrm0")
    with pytest.raises(EvidenceUnavailableError, match=r"no vTPM device at .*tpmrm0"):
        AzureVtpmProvider(device).collect(random_report_data())
    (tmp_path / "tpmrm0").touch()
    if shutil.which("tpm2_nvread") is None:
        with pytest.raises(EvidenceUnavailableError, match="tpm2-tools not installed"):
            device.nv_read(0x01400001)


def test_maa_provider_posts_the_hardware_report_and_runtime_data(
        builder: SnpAzureBuilder) -> None:
    posted: list[tuple[str, dict]] = []

    def post(url: str, body: bytes, headers) -> bytes:
        posted.append((url, json.loads(body)))
        return json.dumps({"token": "aaa.bbb.ccc"}).encode()

    imds = AzureImdsClient(get=lambda url, headers: json.dumps(
        {"vcekCert": "VCEK", "certificateChain": "CHAIN"}).encode(), post=post)
    provider = AzureMaaProvider("https://maa.example.attest.azure.net", post=post, imds=imds,
                                device=FakeVtpm(builder))
    report_data = random_report_data()
    evidence = provider.collect(report_data)
    assert (evidence.tee, evidence.evidence) == ("maa", b"aaa.bbb.ccc")
    url, body = posted[0]
    assert url == "https://maa.example.attest.azure.net/attest/SevSnpVm?api-version=2022-08-01"

    def unb64(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    runtime = json.loads(unb64(body["runtimeData"]["data"]))
    assert bytes.fromhex(runtime["user-data"]) == report_data
    assert body["runtimeData"]["dataType"] == "JSON"
    inner = json.loads(unb64(body["report"]))
    assert len(unb64(inner["SnpReport"])) == 1184
    assert unb64(inner["VcekCertChain"]) == b"VCEK\nCHAIN\n"


def test_tdx_cvm_needs_imds_for_its_td_quote(builder: SnpAzureBuilder) -> None:
    from tests.attestation_cloud.support import runtime_data, td_report_for, tdx_hcl_report
    from tests.attestation_tdx.builder import QuoteSpec

    class TdxVtpm(FakeVtpm):
        def nv_read(self, index: int) -> bytes:
            self.calls.append("nv_read")
            return tdx_hcl_report(td_report_for(QuoteSpec()),
                                  runtime_data(self.builder.ak.public_key(), self.user_data))

    with pytest.raises(EvidenceUnavailableError, match="IMDS"):
        AzureVtpmProvider(TdxVtpm(builder)).collect(random_report_data())
    seen: list[bytes] = []

    def post(url: str, body: bytes, headers) -> bytes:
        assert url == "http://169.254.169.254/acc/tdquote"
        seen.append(base64.urlsafe_b64decode(json.loads(body)["report"] + "=="))
        return json.dumps({"quote": base64.urlsafe_b64encode(b"TDQUOTE").decode()}).encode()

    provider = AzureVtpmProvider(TdxVtpm(builder), imds=AzureImdsClient(get=None, post=post))
    evidence = parse_azure_cvm_evidence(provider.collect(random_report_data()).evidence)
    assert evidence.td_quote == b"TDQUOTE"
    assert seen == [parse_hcl_report(evidence.hcl_report).hardware_report]


# --- Confidential Space launcher ----------------------------------------------------------
class _UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def launcher() -> Iterator[tuple[Path, list[dict]]]:
    """A launcher stand-in: POST /v1/token mints a CS token for the nonces asked."""
    directory = Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))  # short path for AF_UNIX
    requests: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            request = json.loads(self.rfile.read(length))
            requests.append({"path": self.path, **request})
            if request.get("audience") == "refuse":
                self.send_response(400)
                self.end_headers()
                self.wfile.write(b"bad audience")
                return
            clock = ManualClock()
            token = mint_token(LAUNCHER_KEY, {
                "iss": CONFIDENTIAL_SPACE_ISSUER, "aud": request["audience"],
                "exp": clock.now + 3600, "eat_nonce": request["nonces"],
                "hwmodel": "GCP_INTEL_TDX", "swname": "CONFIDENTIAL_SPACE",
                "dbgstat": "disabled-since-boot",
                "submods": {"container": {"image_digest": "sha256:" + "ab" * 32}}},
                kid="cs-1")
            self.send_response(200)
            self.send_header("Content-Length", str(len(token)))
            self.end_headers()
            self.wfile.write(token)

        def log_message(self, *args: object) -> None:
            return

    path = directory / "teeserver.sock"
    server = _UnixHttpServer(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        shutil.rmtree(directory, ignore_errors=True)


def test_confidential_space_provider_token_verifies(launcher) -> None:
    path, requests = launcher
    provider = ConfidentialSpaceProvider("https://broker.example", socket_path=path)
    assert isinstance(provider, EvidenceProvider)
    report_data = random_report_data()
    evidence = provider.collect(report_data)
    assert requests[0]["path"] == "/v1/token" and requests[0]["token_type"] == "OIDC"
    keys = JwksCache(jwks_uri="https://keys.example/jwks",
                     getter=lambda url: jwks_document({"cs-1": LAUNCHER_KEY}),
                     clock=ManualClock())
    verifier = ConfidentialSpaceVerifier("https://broker.example", keys=keys,
                                         clock=ManualClock())
    claims = verifier.evaluate(evidence.evidence, report_data, endorsements={})
    assert claims.tee == "confidential-space" and claims.measurement == "ab" * 32


def test_confidential_space_provider_failures(launcher, tmp_path: Path) -> None:
    path, _ = launcher
    with pytest.raises(EvidenceUnavailableError, match="HTTP 400: bad audience"):
        ConfidentialSpaceProvider("refuse", socket_path=path).collect(random_report_data())
    missing = ConfidentialSpaceProvider("a", socket_path=tmp_path / "none.sock",
                                        token_file=tmp_path / "token")
    with pytest.raises(EvidenceUnavailableError, match="no Confidential Space launcher socket"):
        missing.collect(random_report_data())
    with pytest.raises(EvidenceUnavailableError, match="no Confidential Space token file"):
        missing.default_token()
    (tmp_path / "token").write_bytes(b"aaa.bbb.ccc\n")
    assert missing.default_token() == b"aaa.bbb.ccc"
    (tmp_path / "token").write_bytes(b"<html>")
    with pytest.raises(EvidenceUnavailableError, match="compact JWT"):
        missing.default_token()
