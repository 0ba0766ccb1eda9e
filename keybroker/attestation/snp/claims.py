"""Turn a verified SEV-SNP report into normalized `Claims`.

What it does: maps report fields to the claims the policy reads (debug from guest policy
bit 19, measurement, decoded reported TCB, product, signing key, simulated) and lists
every parsed field in ``raw`` for the ledger. What it does not: verify; call it only with
a report whose signature and chain `SnpVerifier` has checked.
"""

from __future__ import annotations

from keybroker.attestation.claims import Claims
from keybroker.attestation.snp.report import SnpReport
from keybroker.attestation.snp.tcb import decode_tcb

__all__ = ["report_claims", "report_fields"]


def report_fields(report: SnpReport, product: str) -> dict[str, object]:
    """Every parsed field as JSON-able values (bytes as lowercase hex, TCBs decoded)."""
    return {
        "version": report.version,
        "guest_svn": report.guest_svn,
        "policy": report.policy,
        "policy_flags": report.policy_flags,
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "vmpl": report.vmpl,
        "signature_algo": report.signature_algo,
        "current_tcb": decode_tcb(report.current_tcb, product),
        "current_tcb_raw": report.current_tcb,
        "platform_info": report.platform_info,
        "platform_flags": report.platform_flags,
        "signer_info": report.signer_info,
        "signing_key": report.signing_key_name,
        "mask_chip_key": report.mask_chip_key,
        "author_key_en": report.author_key_en,
        "report_data": report.report_data.hex(),
        "measurement": report.measurement.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "reported_tcb": decode_tcb(report.reported_tcb, product),
        "reported_tcb_raw": report.reported_tcb,
        "cpuid_fam_id": report.cpuid_fam_id,
        "cpuid_mod_id": report.cpuid_mod_id,
        "cpuid_step": report.cpuid_step,
        "chip_id": report.chip_id.hex(),
        "committed_tcb": decode_tcb(report.committed_tcb, product),
        "committed_tcb_raw": report.committed_tcb,
        "current_version": f"{report.current_major}.{report.current_minor}.{report.current_build}",
        "committed_version":
            f"{report.committed_major}.{report.committed_minor}.{report.committed_build}",
        "launch_tcb": decode_tcb(report.launch_tcb, product),
        "launch_tcb_raw": report.launch_tcb,
        "launch_mit_vector": report.launch_mit_vector,
        "current_mit_vector": report.current_mit_vector,
    }


def report_claims(report: SnpReport, *, product: str, signing_key: str, simulated: bool,
                  reported_tcb: dict[str, int]) -> Claims:
    """Claims for a verified report; ``reported_tcb`` is the decoded REPORTED_TCB."""
    flags = report.platform_flags
    platform = {
        "smt": flags["smt_enabled"],
        "tsme": flags["tsme_enabled"],
        "migration_agent": report.migrate_ma_allowed,
        "vmpl": report.vmpl,
        "chip_id": report.chip_id.hex(),
        "host_data": report.host_data.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "guest_svn": report.guest_svn,
        "policy_smt_allowed": report.smt_allowed,
        "single_socket": report.single_socket_required,
        "abi": f"{(report.policy >> 8) & 0xFF}.{report.policy & 0xFF}",
        "report_id": report.report_id.hex(),
    }
    return Claims(
        tee="sev-snp",
        report_version=report.version,
        debug=report.debug,
        measurement=report.measurement.hex(),
        report_data=report.report_data,
        product=product,
        signing_key=signing_key,
        tcb=dict(reported_tcb),
        simulated=simulated,
        platform=platform,
        raw=report_fields(report, product),
    )
