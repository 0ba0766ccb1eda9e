"""TDX TCB status evaluation, as Intel's Quote Verification Library computes it.

What it does: matches the platform's TCB (the PCK certificate's 16 SGX TCB component SVNs
and PCESVN, and the TD's TEE_TCB_SVN against ``tdxtcbcomponents``) to the first TCB level of
TCB info v3 that it meets or exceeds; checks the TDX module (MRSIGNERSEAM, SEAMATTRIBUTES)
against ``tdxModule`` or, for module major version > 0, ``tdxModuleIdentities["TDX_xx"]``
and takes that identity's level; checks the QE report against the QE identity; and
converges the three into one of Intel's statuses (UpToDate, SWHardeningNeeded,
ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate,
OutOfDateConfigurationNeeded, Revoked), with the union of advisory IDs.
What it does not: verify signatures or decide whether a status is acceptable (policy does;
the verifier rejects only Revoked and unmatched TCBs).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from keybroker.attestation.errors import EvidenceVerificationError

if TYPE_CHECKING:
    from keybroker.attestation.tdx.collateral import (
        QeIdentity,
        QeTcbLevel,
        TcbInfo,
        TcbLevel,
        TdxModule,
    )
    from keybroker.attestation.tdx.pck import PckExtensions
    from keybroker.attestation.tdx.quote import EnclaveReportBody, TdReportBody

__all__ = [
    "TCB_STATUSES",
    "TcbEvaluation",
    "TcbStatus",
    "converge_with_qe",
    "converge_with_tdx_module",
    "evaluate_qe_identity",
    "evaluate_tcb",
    "evaluate_tdx_module",
    "match_tcb_level",
]


class TcbStatus(str, Enum):
    """Intel's TCB status names, exactly as PCS writes them."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


TCB_STATUSES = frozenset(status.value for status in TcbStatus)
_TDX_MODULE_VERSION_INDEX = 1
_TDX_MODULE_SVN_INDEX = 0


@dataclass(frozen=True)
class TcbEvaluation:
    """The converged status and the parts it came from."""

    status: TcbStatus
    platform_status: TcbStatus
    tdx_module_status: TcbStatus | None  # None: module version 0, no identity levels
    qe_status: str
    tcb_date: str
    advisory_ids: tuple[str, ...]
    tcb_evaluation_data_number: int


def match_tcb_level(tcb_info: TcbInfo, pck: PckExtensions, tee_tcb_svn: bytes) -> TcbLevel:
    """The first level whose every SVN the platform meets; EvidenceVerificationError if none.

    SGX components compare one by one (not lexicographically). For the TDX components, the
    first two bytes of TEE_TCB_SVN (TDX module SVN and major version) are skipped when the
    major version is non-zero: `evaluate_tdx_module` judges those.
    """
    tdx_start = 2 if tee_tcb_svn[_TDX_MODULE_VERSION_INDEX] > 0 else 0
    for level in tcb_info.tcb_levels:
        if pck.pce_svn < level.pce_svn:
            continue
        if any(
            have < need for have, need in zip(pck.tcb_components, level.sgx_components, strict=True)
        ):
            continue
        if any(
            tee_tcb_svn[index] < level.tdx_components[index]
            for index in range(tdx_start, len(level.tdx_components))
        ):
            continue
        return level
    raise EvidenceVerificationError(
        "TDX TCB: the platform's TCB matches no level of the TCB info (TCB not supported)"
    )


def _masked_equal(value: bytes, expected: bytes, mask: bytes) -> bool:
    """``value & mask == expected & mask``, byte by byte; lengths must agree."""
    if not len(value) == len(expected) == len(mask):
        return False
    return all((v & m) == (e & m) for v, e, m in zip(value, expected, mask, strict=True))


def _check_module_identity(module: TdxModule, body: TdReportBody, what: str) -> None:
    if body.mr_signer_seam != module.mr_signer:
        raise EvidenceVerificationError(f"TDX TCB: MRSIGNERSEAM does not match {what}")
    if not _masked_equal(body.seam_attributes, module.attributes, module.attributes_mask):
        raise EvidenceVerificationError(f"TDX TCB: SEAMATTRIBUTES do not match {what}")


def evaluate_tdx_module(
    tcb_info: TcbInfo, body: TdReportBody
) -> tuple[TcbStatus | None, tuple[str, ...]]:
    """Check the TDX module's identity; its status from ``tdxModuleIdentities`` if versioned."""
    version = body.tee_tcb_svn[_TDX_MODULE_VERSION_INDEX]
    svn = body.tee_tcb_svn[_TDX_MODULE_SVN_INDEX]
    if version == 0:
        if tcb_info.tdx_module is None:
            raise EvidenceVerificationError("TDX TCB: the TCB info has no tdxModule")
        _check_module_identity(tcb_info.tdx_module, body, "tdxModule")
        return None, ()
    wanted = f"TDX_{version:02X}"
    identities = [i for i in tcb_info.tdx_module_identities if i.id.upper() == wanted]
    if len(identities) != 1:
        raise EvidenceVerificationError(
            f"TDX TCB: the TCB info has no single identity for TDX module {wanted}"
        )
    identity = identities[0]
    _check_module_identity(identity.module, body, identity.id)
    for level in identity.tcb_levels:
        if svn >= level.isv_svn:
            return TcbStatus(level.status), level.advisory_ids
    raise EvidenceVerificationError(
        f"TDX TCB: TDX module {wanted} SVN {svn} matches no level (TCB not supported)"
    )


def evaluate_qe_identity(identity: QeIdentity, qe_report: EnclaveReportBody) -> QeTcbLevel:
    """Check the QE report against the QE identity and find its level."""
    if qe_report.mr_signer != identity.mr_signer:
        raise EvidenceVerificationError("TDX QE identity: MRSIGNER does not match")
    if qe_report.isv_prod_id != identity.isv_prod_id:
        raise EvidenceVerificationError("TDX QE identity: ISVPRODID does not match")
    if qe_report.misc_select & identity.misc_select_mask != (
        identity.misc_select & identity.misc_select_mask
    ):
        raise EvidenceVerificationError("TDX QE identity: MISCSELECT does not match")
    if not _masked_equal(qe_report.attributes, identity.attributes, identity.attributes_mask):
        raise EvidenceVerificationError("TDX QE identity: ATTRIBUTES do not match")
    for level in identity.tcb_levels:
        if qe_report.isv_svn >= level.isv_svn:
            return level
    raise EvidenceVerificationError(
        f"TDX QE identity: QE ISVSVN {qe_report.isv_svn} matches no level (not supported)"
    )


_CONFIGURATION_STATUSES = (
    TcbStatus.CONFIGURATION_NEEDED,
    TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
)
_CURRENT_STATUSES = (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED)


def _downgrade(status: TcbStatus, component_status: str) -> TcbStatus:
    """Apply a component's OutOfDate / Revoked to the platform status (Intel's convergence)."""
    if component_status == TcbStatus.REVOKED.value:
        return TcbStatus.REVOKED
    if component_status == TcbStatus.OUT_OF_DATE.value:
        if status in _CURRENT_STATUSES:
            return TcbStatus.OUT_OF_DATE
        if status in _CONFIGURATION_STATUSES:
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    return status


def converge_with_tdx_module(status: TcbStatus, module_status: TcbStatus | None) -> TcbStatus:
    return status if module_status is None else _downgrade(status, module_status.value)


def converge_with_qe(status: TcbStatus, qe_status: str) -> TcbStatus:
    return _downgrade(status, qe_status)


def _unique(ids: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


def evaluate_tcb(
    tcb_info: TcbInfo,
    qe_identity: QeIdentity,
    pck: PckExtensions,
    body: TdReportBody,
    qe_report: EnclaveReportBody,
) -> TcbEvaluation:
    """The platform's converged TCB status (may be Revoked; the caller decides)."""
    if pck.fmspc != tcb_info.fmspc:
        raise EvidenceVerificationError(
            f"TDX TCB: PCK FMSPC {pck.fmspc.hex()} does not match TCB info {tcb_info.fmspc.hex()}"
        )
    if pck.pce_id != tcb_info.pce_id:
        raise EvidenceVerificationError("TDX TCB: PCK PCE-ID does not match the TCB info")
    level = match_tcb_level(tcb_info, pck, body.tee_tcb_svn)
    platform_status = TcbStatus(level.status)
    module_status, module_advisories = evaluate_tdx_module(tcb_info, body)
    qe_level = evaluate_qe_identity(qe_identity, qe_report)
    status = converge_with_qe(
        converge_with_tdx_module(platform_status, module_status), qe_level.status
    )
    return TcbEvaluation(
        status=status,
        platform_status=platform_status,
        tdx_module_status=module_status,
        qe_status=qe_level.status,
        tcb_date=level.tcb_date,
        advisory_ids=_unique(level.advisory_ids + module_advisories + qe_level.advisory_ids),
        tcb_evaluation_data_number=tcb_info.tcb_evaluation_data_number,
    )
