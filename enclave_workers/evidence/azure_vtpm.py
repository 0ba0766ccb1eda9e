"""Evidence from an Azure confidential VM's vTPM: HCL report + vTPM quote, or an MAA token.

What it does: `AzureVtpmProvider` (tee "azure-cvm") writes the 64-byte report_data to vTPM
NV index 0x01400002 (Azure's HCL then regenerates the hardware report with it as
``user-data`` in the runtime data), reads the HCL report from NV index 0x01400001, asks the
vTPM for a quote over PCRs 0..23 (SHA-256) with qualifying data SHA-256(report_data) signed
by the attestation key at 0x81000003, reads those PCRs, and on TDX asks the Azure IMDS for
the TD quote of the embedded TDREPORT. The result is the document of
`keybroker.attestation.azure_cvm.evidence`; the VCEK chain from IMDS (THIM) goes into the
endorsements when an IMDS client is given. `AzureMaaProvider` (tee "maa") sends the same
hardware report and runtime data to a Microsoft Azure Attestation instance and hands the
broker the token. The TPM (`VtpmDevice`; default: tpm2-tools over /dev/tpmrm0) and HTTP are
injected, so tests use fakes.

What it does not: verify anything, or work off Azure: without the device or the tools,
`collect` raises `EvidenceUnavailableError` naming what is missing.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data
from keybroker.attestation.azure_cvm.evidence import AzureCvmEvidence
from keybroker.attestation.azure_cvm.hcl import HW_REPORT_OFFSET, HclReport, parse_hcl_report
from keybroker.attestation.azure_cvm.verify import tpm_qualifying_data
from keybroker.attestation.errors import AttestationError
from keybroker.attestation.json_bounded import load_bounded_object

__all__ = [
    "AK_HANDLE",
    "HCL_REPORT_NV_INDEX",
    "IMDS_URL",
    "QUOTED_PCRS",
    "USER_DATA_NV_INDEX",
    "AzureImdsClient",
    "AzureMaaProvider",
    "AzureVtpmProvider",
    "HttpPost",
    "Tpm2ToolsDevice",
    "VtpmDevice",
    "httpx_functions",
    "read_fresh_hcl_report",
]

HCL_REPORT_NV_INDEX = 0x01400001
USER_DATA_NV_INDEX = 0x01400002
AK_HANDLE = 0x81000003
QUOTED_PCRS = tuple(range(24))
IMDS_URL = "http://169.254.169.254"
MAX_NV_SIZE = 16 * 1024
MAX_HTTP_ANSWER = 256 * 1024
SNP_REPORT_SIZE = 1184

HttpPost = Callable[[str, bytes, Mapping[str, str]], bytes]
"""(url, body, headers) -> answer body; raises on a transport error or non-2xx status."""
HttpGet = Callable[[str, Mapping[str, str]], bytes]


def httpx_functions(timeout_seconds: float = 10.0) -> tuple[HttpGet, HttpPost]:
    """Plain (get, post) over httpx for IMDS and MAA; non-2xx and transport errors raise
    `EvidenceUnavailableError`."""
    import httpx

    def answer(method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> bytes:
        try:
            reply = httpx.request(method, url, content=body, headers=dict(headers),
                                  timeout=timeout_seconds, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise EvidenceUnavailableError(f"{method} {url} failed: {type(exc).__name__}") \
                from None
        if not 200 <= reply.status_code < 300:
            raise EvidenceUnavailableError(f"{method} {url} answered HTTP {reply.status_code}")
        return reply.content

    return (lambda url, headers: answer("GET", url, None, headers),
            lambda url, body, headers: answer("POST", url, body, headers))


@runtime_checkable
class VtpmDevice(Protocol):
    """The vTPM operations the providers need."""

    def nv_write(self, index: int, data: bytes) -> None: ...

    def nv_read(self, index: int) -> bytes: ...

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        """(marshalled TPMS_ATTEST, marshalled TPMT_SIGNATURE) from the attestation key."""
        ...

    def pcr_values(self, pcrs: Sequence[int]) -> dict[int, bytes]: ...


class Tpm2ToolsDevice:
    """The vTPM through tpm2-tools (``tpm2_nvread`` ...) on the kernel's resource manager."""

    TOOLS = ("tpm2_nvreadpublic", "tpm2_nvdefine", "tpm2_nvwrite", "tpm2_nvread",
             "tpm2_quote", "tpm2_pcrread")

    def __init__(self, device: Path | str = "/dev/tpmrm0", *, ak_handle: int = AK_HANDLE,
                 timeout_seconds: float = 30.0) -> None:
        self.device = Path(device)
        self.ak_handle = ak_handle
        self._timeout = timeout_seconds

    def check_available(self) -> None:
        """EvidenceUnavailableError naming the missing device or tool."""
        if not self.device.exists():
            raise EvidenceUnavailableError(f"no vTPM device at {self.device} (not an Azure CVM?)")
        missing = [tool for tool in self.TOOLS if shutil.which(tool) is None]
        if missing:
            raise EvidenceUnavailableError(f"tpm2-tools not installed: {', '.join(missing)} "
                                           "not on PATH")

    def _run(self, *arguments: str) -> subprocess.CompletedProcess[bytes]:
        self.check_available()
        environment = dict(os.environ, TPM2TOOLS_TCTI=f"device:{self.device}")
        try:
            result = subprocess.run(arguments, capture_output=True, timeout=self._timeout,
                                    env=environment, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EvidenceUnavailableError(f"{arguments[0]} failed: {exc}") from None
        return result

    def _checked(self, *arguments: str) -> None:
        result = self._run(*arguments)
        if result.returncode != 0:
            detail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise EvidenceUnavailableError(
                f"{arguments[0]} exited {result.returncode}: {detail[0][:200]}")

    @staticmethod
    def _read_output(path: Path, what: str) -> bytes:
        if not path.is_file() or path.stat().st_size > MAX_NV_SIZE:
            raise EvidenceUnavailableError(f"{what} output is missing or too large")
        return path.read_bytes()

    def nv_write(self, index: int, data: bytes) -> None:
        if self._run("tpm2_nvreadpublic", f"{index:#x}").returncode != 0:
            self._checked("tpm2_nvdefine", "-C", "o", "-s", str(len(data)), f"{index:#x}")
        with tempfile.TemporaryDirectory() as directory:
            source = Path(directory) / "user-data.bin"
            source.write_bytes(data)
            self._checked("tpm2_nvwrite", "-C", "o", "-i", str(source), f"{index:#x}")

    def nv_read(self, index: int) -> bytes:
        with tempfile.TemporaryDirectory() as directory:
            target = Path(directory) / "nv.bin"
            self._checked("tpm2_nvread", "-C", "o", "-o", str(target), f"{index:#x}")
            return self._read_output(target, "tpm2_nvread")

    def quote(self, qualifying_data: bytes, pcrs: Sequence[int]) -> tuple[bytes, bytes]:
        with tempfile.TemporaryDirectory() as directory:
            message, signature = Path(directory) / "quote.msg", Path(directory) / "quote.sig"
            self._checked("tpm2_quote", "-c", f"{self.ak_handle:#x}",
                          "-l", "sha256:" + ",".join(str(index) for index in pcrs),
                          "-q", qualifying_data.hex(), "-g", "sha256",
                          "-m", str(message), "-s", str(signature))
            return (self._read_output(message, "tpm2_quote message"),
                    self._read_output(signature, "tpm2_quote signature"))

    def pcr_values(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        with tempfile.TemporaryDirectory() as directory:
            target = Path(directory) / "pcrs.bin"
            self._checked("tpm2_pcrread", "sha256:" + ",".join(str(index) for index in pcrs),
                          "-o", str(target))
            values = self._read_output(target, "tpm2_pcrread")
        if len(values) != 32 * len(pcrs):
            raise EvidenceUnavailableError(
                f"tpm2_pcrread wrote {len(values)} bytes for {len(pcrs)} SHA-256 PCRs")
        return {index: values[32 * n:32 * (n + 1)] for n, index in enumerate(pcrs)}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_answer(answer: bytes, what: str) -> dict:
    return load_bounded_object(
        answer, what=f"{what} answer", max_bytes=MAX_HTTP_ANSWER, max_depth=16,
        error=EvidenceUnavailableError,
    )


class AzureImdsClient:
    """Azure Instance Metadata Service: the VCEK chain (THIM) and TD quotes (TDX CVMs)."""

    def __init__(self, *, get: HttpGet, post: HttpPost, base_url: str = IMDS_URL) -> None:
        self._get = get
        self._post = post
        self._base = base_url.rstrip("/")

    def vcek_chain_pem(self) -> bytes:
        """VCEK, then ASK and ARK, as PEM (``/metadata/THIM/amd/certification``)."""
        answer = _json_answer(self._get(f"{self._base}/metadata/THIM/amd/certification",
                                        {"Metadata": "true"}), "IMDS THIM")
        vcek, chain = answer.get("vcekCert"), answer.get("certificateChain")
        if not isinstance(vcek, str) or not isinstance(chain, str):
            raise EvidenceUnavailableError("IMDS THIM answer lacks vcekCert or certificateChain")
        return (vcek.strip() + "\n" + chain.strip() + "\n").encode("ascii")

    def td_quote(self, td_report: bytes) -> bytes:
        """The TD quote for a TDREPORT (``POST /acc/tdquote``)."""
        body = json.dumps({"report": _b64url(td_report)}).encode("ascii")
        answer = _json_answer(self._post(f"{self._base}/acc/tdquote", body,
                                         {"Content-Type": "application/json"}), "IMDS tdquote")
        quote = answer.get("quote")
        if not isinstance(quote, str):
            raise EvidenceUnavailableError("IMDS tdquote answer has no quote")
        try:
            return base64.urlsafe_b64decode(quote + "=" * (-len(quote) % 4))
        except ValueError:
            raise EvidenceUnavailableError("IMDS tdquote answer is not base64url") from None


def read_fresh_hcl_report(device: VtpmDevice, report_data: bytes) -> tuple[bytes, HclReport]:
    """Write report_data as the HCL user-data, read the regenerated report, check it took."""
    device.nv_write(USER_DATA_NV_INDEX, report_data)
    raw = device.nv_read(HCL_REPORT_NV_INDEX)
    try:
        report = parse_hcl_report(raw)
    except AttestationError as exc:
        raise EvidenceUnavailableError(f"the vTPM's HCL report is unusable: {exc}") from None
    if report.runtime_data.user_data != report_data:
        raise EvidenceUnavailableError(
            "the HCL report does not carry the report_data just written to NV 0x01400002")
    return raw, report


def _default_device(device: VtpmDevice | None) -> VtpmDevice:
    if device is not None:
        return device
    default = Tpm2ToolsDevice()
    default.check_available()
    return default


class AzureVtpmProvider:
    """HCL report + vTPM quote (+ TD quote) as Azure CVM evidence (tee "azure-cvm")."""

    tee = "azure-cvm"
    simulated = False

    def __init__(self, device: VtpmDevice | None = None, *, imds: AzureImdsClient | None = None,
                 pcrs: Sequence[int] = QUOTED_PCRS) -> None:
        self._device = device
        self._imds = imds
        self._pcrs = tuple(pcrs)

    def collect(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        device = _default_device(self._device)
        raw, report = read_fresh_hcl_report(device, report_data)
        attest, signature = device.quote(tpm_qualifying_data(report_data), self._pcrs)
        pcrs = device.pcr_values(self._pcrs)
        td_quote = None
        endorsements: dict[str, bytes] = {}
        if report.hardware == "tdx":
            if self._imds is None:
                raise EvidenceUnavailableError("an Azure TDX CVM needs an IMDS client for the "
                                               "TD quote")
            td_quote = self._imds.td_quote(report.hardware_report)
        elif self._imds is not None:
            endorsements["vcek-chain"] = self._imds.vcek_chain_pem()
        evidence = AzureCvmEvidence(hcl_report=raw, tpm_attest=attest, tpm_signature=signature,
                                    pcrs=pcrs, td_quote=td_quote)
        return Evidence(tee=self.tee, evidence=evidence.to_bytes(), endorsements=endorsements)


class AzureMaaProvider:
    """An MAA token for this CVM's hardware report and runtime data (tee "maa").

    SEV-SNP: ``POST {maa}/attest/SevSnpVm?api-version=2022-08-01``; TDX: ``POST
    {maa}/attest/TdxVm?api-version=2023-04-01-preview``. The runtime data (with our
    report_data as ``user-data``) is sent as JSON, so MAA copies it into ``x-ms-runtime``.
    """

    tee = "maa"
    simulated = False

    def __init__(self, maa_url: str, *, post: HttpPost, imds: AzureImdsClient,
                 device: VtpmDevice | None = None) -> None:
        if not maa_url.startswith("https://"):
            raise ValueError("maa_url must be an https URL")
        self._maa = maa_url.rstrip("/")
        self._post = post
        self._imds = imds
        self._device = device

    def collect(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        raw, report = read_fresh_hcl_report(_default_device(self._device), report_data)
        runtime = {"data": _b64url(report.runtime_data_bytes), "dataType": "JSON"}
        if report.hardware == "sev-snp":
            hardware = raw[HW_REPORT_OFFSET:HW_REPORT_OFFSET + SNP_REPORT_SIZE]
            inner = json.dumps({"SnpReport": _b64url(hardware),
                                "VcekCertChain": _b64url(self._imds.vcek_chain_pem())})
            url = f"{self._maa}/attest/SevSnpVm?api-version=2022-08-01"
            body = {"report": _b64url(inner.encode("ascii")), "runtimeData": runtime}
        else:
            url = f"{self._maa}/attest/TdxVm?api-version=2023-04-01-preview"
            body = {"quote": _b64url(self._imds.td_quote(report.hardware_report)),
                    "runtimeData": runtime}
        answer = _json_answer(self._post(url, json.dumps(body).encode("ascii"),
                                         {"Content-Type": "application/json"}), "MAA attest")
        token = answer.get("token")
        if not isinstance(token, str) or not token or len(token) > 64 * 1024:
            raise EvidenceUnavailableError("MAA answer has no token")
        return Evidence(tee=self.tee, evidence=token.encode("ascii"), endorsements={})

