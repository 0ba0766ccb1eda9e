"""SEV-SNP and TDX evidence through the Linux configfs-tsm report interface.

What it does: creates a report entry under ``/sys/kernel/config/tsm/report`` (root path
injectable for tests), checks ``provider`` names the expected TEE (``sev_guest`` or
``tdx_guest``), writes the 64-byte report_data to ``inblob``, reads ``outblob`` bounded (the
1184-byte SEV-SNP report, or a TD quote of at most the TDX parser's ``MAX_QUOTE_SIZE``) and,
for SEV-SNP, ``auxblob`` (the GHCB certificate table, when the host supplies one), checks that
``generation`` did not move while reading (another writer raced us), parses the result and
removes the entry. `ConfigfsTsmProvider` is SEV-SNP, `ConfigfsTsmTdxProvider` is TDX; both
share the entry and attribute code of `_ConfigfsTsmReport`. What it does not: verify the
evidence; it checks only that it is well formed and carries the report_data it asked for.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from enclave_workers.evidence.base import Evidence, EvidenceUnavailableError, check_report_data
from keybroker.attestation.errors import AttestationError
from keybroker.attestation.snp import layout
from keybroker.attestation.snp.cert_table import MAX_CERT_TABLE_SIZE, parse_cert_table
from keybroker.attestation.snp.report import parse_report
from keybroker.attestation.tdx.quote import MAX_QUOTE_SIZE, parse_quote

__all__ = ["DEFAULT_TSM_ROOT", "ConfigfsTsmProvider", "ConfigfsTsmTdxProvider"]

DEFAULT_TSM_ROOT = Path("/sys/kernel/config/tsm/report")
SEV_PROVIDER = "sev_guest"
TDX_PROVIDER = "tdx_guest"
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


class _ConfigfsTsmReport(ABC):
    """One report request through a configfs-tsm entry; subclasses say which TEE and parse."""

    tee: str
    simulated = False
    _provider_name: str
    _tee_label: str
    _outblob_limit: int
    _auxblob_limit: int | None = None  # None: this TEE has no auxblob

    def __init__(self, root: Path | str, entry_factory: Callable[[Path], Path]) -> None:
        self._root = Path(root)
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
            outblob, auxblob = self._request(entry, report_data)
        finally:
            with contextlib.suppress(OSError):
                entry.rmdir()
        try:
            return self._evidence(outblob, auxblob, report_data)
        except AttestationError as exc:
            raise EvidenceUnavailableError(f"configfs-tsm returned malformed evidence: {exc}") \
                from None

    def _options(self) -> dict[str, str]:
        """Attributes to write before inblob (SEV-SNP: privlevel); none by default."""
        return {}

    def _request(self, entry: Path, report_data: bytes) -> tuple[bytes, bytes]:
        provider = _read_attribute(entry, "provider", _MAX_SMALL_ATTRIBUTE).strip().decode(
            "ascii", "replace")
        if provider != self._provider_name:
            raise EvidenceUnavailableError(
                f"configfs-tsm provider is {provider!r}, not {self._provider_name!r} "
                f"(not {self._tee_label})")
        try:
            for name, value in self._options().items():
                (entry / name).write_text(value)
            (entry / "inblob").write_bytes(report_data)
        except OSError as exc:
            raise EvidenceUnavailableError(f"configfs-tsm rejected the request: "
                                           f"{exc.strerror}") from None
        generation = _read_attribute(entry, "generation", _MAX_SMALL_ATTRIBUTE)
        outblob = _read_attribute(entry, "outblob", self._outblob_limit)
        auxblob = b""
        if self._auxblob_limit is not None:
            auxblob = _read_attribute(entry, "auxblob", self._auxblob_limit, required=False)
        if _read_attribute(entry, "generation", _MAX_SMALL_ATTRIBUTE) != generation:
            raise EvidenceUnavailableError("configfs-tsm entry changed while reading (a "
                                           "concurrent writer); retry")
        return outblob, auxblob

    @abstractmethod
    def _evidence(self, outblob: bytes, auxblob: bytes, report_data: bytes) -> Evidence:
        """Parse what the kernel returned and check it carries ``report_data``."""


def _check_binding(carried: bytes, report_data: bytes, what: str) -> None:
    if not hmac.compare_digest(carried, report_data):
        raise EvidenceUnavailableError(f"configfs-tsm returned a {what} for other report_data")


class ConfigfsTsmProvider(_ConfigfsTsmReport):
    """SEV-SNP evidence from the kernel's TSM report interface (Linux 6.7+)."""

    tee = "sev-snp"
    _provider_name = SEV_PROVIDER
    _tee_label = "SEV-SNP"
    _outblob_limit = layout.REPORT_SIZE
    _auxblob_limit = MAX_CERT_TABLE_SIZE

    def __init__(self, root: Path | str = DEFAULT_TSM_ROOT, *, privlevel: int | None = None,
                 entry_factory: Callable[[Path], Path] = _new_entry) -> None:
        if privlevel is not None and not 0 <= privlevel <= 3:
            raise ValueError("privlevel (the VMPL to request) must be 0..3")
        super().__init__(root, entry_factory)
        self._privlevel = privlevel

    def _options(self) -> dict[str, str]:
        return {} if self._privlevel is None else {"privlevel": str(self._privlevel)}

    def _evidence(self, outblob: bytes, auxblob: bytes, report_data: bytes) -> Evidence:
        report = parse_report(outblob)
        table = parse_cert_table(auxblob)
        _check_binding(report.report_data, report_data, "report")
        endorsements = {name: blob for name, blob in table.items() if name in _ENDORSEMENTS}
        return Evidence(tee=self.tee, evidence=outblob, endorsements=endorsements)


class ConfigfsTsmTdxProvider(_ConfigfsTsmReport):
    """TDX evidence (a DCAP TD quote) from the kernel's TSM report interface (Linux 6.7+).

    The kernel asks the host's quote generation service for the quote, so an EIO on
    ``outblob`` usually means no QGS is reachable. The quote carries its PCK chain; the
    broker brings the collateral, so the evidence has no endorsements.
    """

    tee = "tdx"
    _provider_name = TDX_PROVIDER
    _tee_label = "TDX"
    _outblob_limit = MAX_QUOTE_SIZE

    def __init__(self, root: Path | str = DEFAULT_TSM_ROOT, *,
                 entry_factory: Callable[[Path], Path] = _new_entry) -> None:
        super().__init__(root, entry_factory)

    def _evidence(self, outblob: bytes, auxblob: bytes, report_data: bytes) -> Evidence:
        quote = parse_quote(outblob)
        _check_binding(quote.body.report_data, report_data, "quote")
        return Evidence(tee=self.tee, evidence=outblob)
