"""SEV-SNP evidence through the Linux configfs-tsm report interface.

What it does: creates a report entry under ``/sys/kernel/config/tsm/report`` (root path
injectable for tests), writes the 64-byte report_data to ``inblob``, reads ``outblob``
(the 1184-byte report) and ``auxblob`` (the GHCB certificate table, when the host
supplies one), checks ``provider`` is ``sev_guest`` and that ``generation`` did not move
while reading (another writer raced us), and removes the entry. What it does not: verify
the report; it checks only that the report carries the report_data it asked for.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data
from keybroker.attestation.errors import AttestationError
from keybroker.attestation.snp import layout
from keybroker.attestation.snp.cert_table import MAX_CERT_TABLE_SIZE, parse_cert_table
from keybroker.attestation.snp.report import parse_report

__all__ = ["DEFAULT_TSM_ROOT", "ConfigfsTsmProvider"]

DEFAULT_TSM_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_PROVIDER = "sev_guest"
_MAX_SMALL_ATTRIBUTE = 64
_ENDORSEMENTS = ("vcek", "vlek", "ask", "ark")


def _new_entry(root: Path) -> Path:
    entry = root / f"sealbeam-{os.getpid()}-{secrets.token_hex(4)}"
    entry.mkdir(mode=0o700)
    return entry


def _read_attribute(entry: Path, name: str, limit: int, *, required: bool = True) -> bytes:
    path = entry / name
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except FileNotFoundError:
        if required:
            raise EvidenceUnavailableError(f"configfs-tsm entry has no {name}") from None
        return b""
    except OSError as exc:
        raise EvidenceUnavailableError(f"configfs-tsm {name} could not be read: "
                                       f"{exc.strerror}") from None
    if len(data) > limit:
        raise EvidenceUnavailableError(f"configfs-tsm {name} is over {limit} bytes")
    return data


class ConfigfsTsmProvider:
    """SEV-SNP evidence from the kernel's TSM report interface (Linux 6.7+)."""

    tee = "sev-snp"
    simulated = False

    def __init__(self, root: Path | str = DEFAULT_TSM_ROOT, *, privlevel: int | None = None,
                 entry_factory: Callable[[Path], Path] = _new_entry) -> None:
        if privlevel is not None and not 0 <= privlevel <= 3:
            raise ValueError("privlevel (the VMPL to request) must be 0..3")
        self._root = Path(root)
        self._privlevel = privlevel
        self._entry_factory = entry_factory

    def collect(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        if not self._root.is_dir():
            raise EvidenceUnavailableError(
                f"configfs-tsm is not available at {self._root} (kernel without TSM reports, "
                "configfs not mounted, or not a confidential VM)")
        try:
            entry = self._entry_factory(self._root)
        except OSError as exc:
            raise EvidenceUnavailableError(f"cannot create a configfs-tsm report entry in "
                                           f"{self._root}: {exc.strerror}") from None
        try:
            return self._collect_from(entry, report_data)
        finally:
            with contextlib.suppress(OSError):
                entry.rmdir()

    def _collect_from(self, entry: Path, report_data: bytes) -> Evidence:
        provider = _read_attribute(entry, "provider", _MAX_SMALL_ATTRIBUTE).strip().decode(
            "ascii", "replace")
        if provider != SEV_PROVIDER:
            raise EvidenceUnavailableError(
                f"configfs-tsm provider is {provider!r}, not {SEV_PROVIDER!r} (not SEV-SNP)")
        try:
            if self._privlevel is not None:
                (entry / "privlevel").write_text(str(self._privlevel))
            (entry / "inblob").write_bytes(report_data)
        except OSError as exc:
            raise EvidenceUnavailableError(f"configfs-tsm rejected the request: "
                                           f"{exc.strerror}") from None
        generation = _read_attribute(entry, "generation", _MAX_SMALL_ATTRIBUTE)
        outblob = _read_attribute(entry, "outblob", layout.REPORT_SIZE)
        auxblob = _read_attribute(entry, "auxblob", MAX_CERT_TABLE_SIZE, required=False)
        if _read_attribute(entry, "generation", _MAX_SMALL_ATTRIBUTE) != generation:
            raise EvidenceUnavailableError("configfs-tsm entry changed while reading (a "
                                           "concurrent writer); retry")
        try:
            report = parse_report(outblob)
            table = parse_cert_table(auxblob)
        except AttestationError as exc:
            raise EvidenceUnavailableError(f"configfs-tsm returned malformed evidence: {exc}") \
                from None
        if report.report_data != report_data:
            raise EvidenceUnavailableError("configfs-tsm returned a report for other report_data")
        endorsements = {name: blob for name, blob in table.items() if name in _ENDORSEMENTS}
        return Evidence(tee=self.tee, evidence=outblob, endorsements=endorsements)
