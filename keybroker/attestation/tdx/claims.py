"""Turn a verified TDX quote into normalized `Claims`.

What it does: maps TDX fields onto the common claims (measurement = MRTD, debug =
TDATTRIBUTES bit 0, report_data, TCB SVNs) and puts TDX-specific facts in ``platform``
(RTMRs, MRCONFIGID, MROWNER, MROWNERCONFIG, MRSEAM, attributes, XFAM, FMSPC, tcb_status,
advisory IDs) and every parsed field in ``raw``. What it does not: verify anything; it
only accepts a `VerifiedQuote`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keybroker.attestation.claims import Claims

if TYPE_CHECKING:
    from keybroker.attestation.tdx.pck import PckExtensions
    from keybroker.attestation.tdx.quote import TdxQuote
    from keybroker.attestation.tdx.tcb import TcbEvaluation
    from keybroker.attestation.tdx.verify import VerifiedQuote

__all__ = ["build_claims"]

_SGX_TYPES = {0: "standard", 1: "scalable", 2: "scalable-with-integrity"}


def _tcb(quote: TdxQuote, pck: PckExtensions) -> dict[str, int]:
    """Integer SVNs a policy can put minimums on."""
    svn = quote.body.tee_tcb_svn
    tcb = {
        "tdx_module_svn": svn[0],
        "tdx_module_major_version": svn[1],
        "pce_svn": pck.pce_svn,
        "qe_svn": quote.certification.qe_report_body.isv_svn,
    }
    tcb.update({f"tee_tcb_svn_{index:02d}": value for index, value in enumerate(svn)})
    tcb.update(
        {f"sgx_tcb_comp_{index:02d}": value for index, value in enumerate(pck.tcb_components, 1)}
    )
    return tcb


def _platform(quote: TdxQuote, pck: PckExtensions, tcb: TcbEvaluation | None) -> dict:
    body = quote.body
    platform: dict[str, object] = {
        "rtmr0": body.rtmrs[0].hex(),
        "rtmr1": body.rtmrs[1].hex(),
        "rtmr2": body.rtmrs[2].hex(),
        "rtmr3": body.rtmrs[3].hex(),
        "mrconfigid": body.mr_config_id.hex(),
        "mrowner": body.mr_owner.hex(),
        "mrownerconfig": body.mr_owner_config.hex(),
        "mrseam": body.mr_seam.hex(),
        "mrsignerseam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "td_attributes": body.td_attributes.hex(),
        "xfam": body.xfam.hex(),
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "fmspc": pck.fmspc.hex(),
        "pce_id": pck.pce_id.hex(),
        "cpu_svn": pck.cpu_svn.hex(),
        "sgx_type": _SGX_TYPES.get(pck.sgx_type, str(pck.sgx_type)),
        "smt_enabled": pck.smt_enabled,
        "td_report_version": "1.5" if body.mr_service_td is not None else "1.0",
        "tcb_status": tcb.status.value if tcb else None,
        "advisory_ids": list(tcb.advisory_ids) if tcb else [],
        "tcb_date": tcb.tcb_date if tcb else None,
        "tdx_module_tcb_status": (
            tcb.tdx_module_status.value if tcb and tcb.tdx_module_status else None
        ),
        "qe_tcb_status": tcb.qe_status if tcb else None,
        "tcb_evaluation_data_number": tcb.tcb_evaluation_data_number if tcb else None,
    }
    if body.mr_service_td is not None and body.tee_tcb_svn_2 is not None:
        platform["mrservicetd"] = body.mr_service_td.hex()
        platform["tee_tcb_svn_2"] = body.tee_tcb_svn_2.hex()
    return platform


def _raw(quote: TdxQuote, pck: PckExtensions) -> dict:
    header, body, qe = quote.header, quote.body, quote.certification.qe_report_body
    raw: dict[str, object] = {
        "header": {
            "version": header.version,
            "attestation_key_type": header.attestation_key_type,
            "tee_type": header.tee_type,
            "qe_svn": header.qe_svn,
            "pce_svn": header.pce_svn,
            "qe_vendor_id": header.qe_vendor_id.hex(),
            "user_data": header.user_data.hex(),
        },
        "body_type": quote.body_type,
        "td_report": {
            "tee_tcb_svn": body.tee_tcb_svn.hex(),
            "mr_seam": body.mr_seam.hex(),
            "mr_signer_seam": body.mr_signer_seam.hex(),
            "seam_attributes": body.seam_attributes.hex(),
            "td_attributes": body.td_attributes.hex(),
            "xfam": body.xfam.hex(),
            "mr_td": body.mr_td.hex(),
            "mr_config_id": body.mr_config_id.hex(),
            "mr_owner": body.mr_owner.hex(),
            "mr_owner_config": body.mr_owner_config.hex(),
            "rtmrs": [rtmr.hex() for rtmr in body.rtmrs],
            "report_data": body.report_data.hex(),
            "tee_tcb_svn_2": body.tee_tcb_svn_2.hex() if body.tee_tcb_svn_2 else None,
            "mr_service_td": body.mr_service_td.hex() if body.mr_service_td else None,
        },
        "qe_report": {
            "cpu_svn": qe.cpu_svn.hex(),
            "misc_select": qe.misc_select,
            "attributes": qe.attributes.hex(),
            "mr_enclave": qe.mr_enclave.hex(),
            "mr_signer": qe.mr_signer.hex(),
            "isv_prod_id": qe.isv_prod_id,
            "isv_svn": qe.isv_svn,
        },
        "attestation_key": quote.attestation_key.hex(),
        "pck": {
            "ppid": pck.ppid.hex(),
            "tcb_components": list(pck.tcb_components),
            "pce_svn": pck.pce_svn,
            "cpu_svn": pck.cpu_svn.hex(),
            "pce_id": pck.pce_id.hex(),
            "fmspc": pck.fmspc.hex(),
            "sgx_type": pck.sgx_type,
        },
        "trailing_length": quote.trailing_length,
    }
    return raw


def build_claims(verified: VerifiedQuote) -> Claims:
    """Claims for a quote that passed `verify_quote`."""
    quote, pck = verified.quote, verified.pck
    return Claims(
        tee="tdx",
        report_version=quote.header.version,
        debug=quote.body.debug,
        measurement=quote.body.mr_td.hex(),
        report_data=quote.body.report_data,
        product=None,
        signing_key="pck",
        tcb=_tcb(quote, pck),
        simulated=verified.root.simulated,
        platform=_platform(quote, pck, verified.tcb),
        raw=_raw(quote, pck),
    )
