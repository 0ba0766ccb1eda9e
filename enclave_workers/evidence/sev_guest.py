"""SEV-SNP evidence through the /dev/sev-guest driver (SNP_GET_REPORT / SNP_GET_EXT_REPORT).

What it does: builds the kernel's ``snp_guest_request_ioctl`` with a ``snp_report_req``
(report_data, VMPL) and, for the extended report, a page-aligned certificate buffer
(grown once if the host says it is too small); reads the ``MSG_REPORT_RSP`` (status,
report_size, report) and the GHCB certificate table. The device path and the ioctl call
are injectable, so tests run against a fake device. What it does not: verify the report,
or work on kernels without the sev-guest driver (it says so clearly instead).
"""

from __future__ import annotations

import ctypes
import fcntl
import hmac
import os
import struct
from collections.abc import Callable
from pathlib import Path

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data
from keybroker.attestation.errors import AttestationError
from keybroker.attestation.snp import layout
from keybroker.attestation.snp.cert_table import MAX_CERT_TABLE_SIZE, parse_cert_table
from keybroker.attestation.snp.report import parse_report

__all__ = ["DEFAULT_DEVICE", "SNP_GET_EXT_REPORT", "SNP_GET_REPORT", "SevGuestProvider"]

DEFAULT_DEVICE = Path("/dev/sev-guest")
_IOCTL_STRUCT = struct.Struct("<B7xQQQ")  # msg_version, req_data, resp_data, exitinfo2
_REPORT_REQ = struct.Struct("<64sI28x")  # user_data, vmpl, reserved
_EXT_REPORT_REQ = struct.Struct("<96sQI4x")  # snp_report_req, certs_address, certs_len
_RESP_HEADER = struct.Struct("<II24x")  # status, report_size, reserved
RESPONSE_SIZE = 4000
PAGE = 4096
_INITIAL_CERT_PAGES = 4
VMM_ERR_INVALID_LEN = 1
VMM_ERR_BUSY = 2


def _iowr(number: int) -> int:
    return (3 << 30) | (_IOCTL_STRUCT.size << 16) | (ord("S") << 8) | number


SNP_GET_REPORT = _iowr(0x0)
SNP_GET_EXT_REPORT = _iowr(0x2)
Ioctl = Callable[[int, int, bytearray], int]


def _system_ioctl(descriptor: int, request: int, argument: bytearray) -> int:
    return fcntl.ioctl(descriptor, request, argument, True)


class SevGuestProvider:
    """SEV-SNP evidence from the guest driver; ``extended`` also fetches the host's certs."""

    tee = "sev-snp"
    simulated = False

    def __init__(self, device: Path | str = DEFAULT_DEVICE, *, vmpl: int = 0,
                 extended: bool = True, ioctl: Ioctl = _system_ioctl) -> None:
        if not 0 <= vmpl <= 3:
            raise ValueError("vmpl must be 0..3")
        self._device = Path(device)
        self._vmpl = vmpl
        self._extended = extended
        self._ioctl = ioctl

    def collect(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        try:
            descriptor = os.open(self._device, os.O_RDWR)
        except OSError as exc:
            raise EvidenceUnavailableError(
                f"{self._device} is not available ({exc.strerror}); this is not an SEV-SNP "
                "guest or the sev-guest driver is not loaded") from None
        try:
            report, table = self._request(descriptor, report_data)
        finally:
            os.close(descriptor)
        try:
            parsed = parse_report(report)
            certificates = parse_cert_table(table)
        except AttestationError as exc:
            raise EvidenceUnavailableError(f"sev-guest returned malformed evidence: {exc}") \
                from None
        if not hmac.compare_digest(parsed.report_data, report_data):
            raise EvidenceUnavailableError("sev-guest returned a report for other report_data")
        endorsements = {name: blob for name, blob in certificates.items()
                        if name in ("vcek", "vlek", "ask", "ark")}
        return Evidence(tee=self.tee, evidence=report, endorsements=endorsements)

    def _request(self, descriptor: int, report_data: bytes) -> tuple[bytes, bytes]:
        request = _REPORT_REQ.pack(report_data, self._vmpl)
        response = ctypes.create_string_buffer(RESPONSE_SIZE)
        if not self._extended:
            request_buffer = ctypes.create_string_buffer(request, len(request))
            self._call(descriptor, SNP_GET_REPORT, request_buffer, response)
            return self._report_from(response.raw), b""
        pages = _INITIAL_CERT_PAGES
        for _attempt in range(2):
            certificates = ctypes.create_string_buffer(pages * PAGE)
            extended = _EXT_REPORT_REQ.pack(request, ctypes.addressof(certificates), pages * PAGE)
            request_buffer = ctypes.create_string_buffer(extended, len(extended))
            vmm_error = self._call(descriptor, SNP_GET_EXT_REPORT, request_buffer, response,
                                   tolerate_invalid_length=True)
            if vmm_error != VMM_ERR_INVALID_LEN:
                # The table starts the buffer; an all-zero buffer is an empty table.
                return self._report_from(response.raw), certificates.raw
            needed = _EXT_REPORT_REQ.unpack(request_buffer.raw)[2]
            pages = max(pages + 1, -(-needed // PAGE))
            if pages * PAGE > MAX_CERT_TABLE_SIZE:
                raise EvidenceUnavailableError(
                    f"the host's certificate table needs {needed} bytes, over the limit")
        raise EvidenceUnavailableError("the host kept rejecting the certificate buffer size")

    def _call(self, descriptor: int, request_code: int, request: ctypes.Array,
              response: ctypes.Array, *, tolerate_invalid_length: bool = False) -> int:
        argument = bytearray(_IOCTL_STRUCT.pack(1, ctypes.addressof(request),
                                                ctypes.addressof(response), 0))
        try:
            self._ioctl(descriptor, request_code, argument)
            failure = None
        except OSError as exc:
            failure = exc
        exitinfo2 = _IOCTL_STRUCT.unpack(bytes(argument))[3]
        firmware_error, vmm_error = exitinfo2 & 0xFFFFFFFF, exitinfo2 >> 32
        if failure is None and exitinfo2 == 0:
            return 0
        if tolerate_invalid_length and vmm_error == VMM_ERR_INVALID_LEN:
            return vmm_error
        if vmm_error == VMM_ERR_BUSY:
            raise EvidenceUnavailableError("the host is busy (SNP guest request throttled); retry")
        detail = f"{failure.strerror}, " if failure is not None and failure.strerror else ""
        raise EvidenceUnavailableError(
            f"sev-guest request failed ({detail}firmware error 0x{firmware_error:X}, "
            f"VMM error 0x{vmm_error:X})")

    @staticmethod
    def _report_from(response: bytes) -> bytes:
        status, size = _RESP_HEADER.unpack_from(response)
        if status != 0:
            raise EvidenceUnavailableError(f"SEV firmware answered status 0x{status:X}")
        if size != layout.REPORT_SIZE:
            raise EvidenceUnavailableError(f"SEV firmware report_size is {size}, expected "
                                           f"{layout.REPORT_SIZE}")
        start = _RESP_HEADER.size
        return response[start : start + size]

