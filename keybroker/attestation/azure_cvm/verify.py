"""`AzureCvmVerifier`: Azure confidential VMs attested through their vTPM and HCL report.

What it does: reads top to bottom, as trustee's ``az_snp_vtpm`` / ``az_tdx_vtpm`` verifiers
do — decode the evidence (see `evidence`), parse the HCL report, verify the hardware report
(SEV-SNP: with `SnpVerifier`, endorsements being the VCEK chain; TDX: the TD quote with
`TdxVerifier`, and the quote must repeat the HCL's TDREPORT), check that the hardware
report_data starts with the hash of the HCL runtime data (which holds the vTPM attestation
key), that SEV-SNP reports come from VMPL 0 (the HCL), verify the vTPM quote's signature
under that attestation key and its PCR digest against the PCR values given, and finally the
relying party's binding. Every check runs before the binding, so a
`ReportDataMismatchError` means the evidence itself was authentic.

The binding (how ``expected_report_data``, 64 bytes, appears in the evidence): both

* the runtime data's ``user-data`` equals ``expected_report_data`` (the worker writes it to
  vTPM NV index 0x01400002 before reading the HCL report, so the hardware report is fresh), and
* the vTPM quote's qualifying data (``extraData``) equals ``SHA-256(expected_report_data)``
  (`tpm_qualifying_data`; 32 bytes, because a TPM2B_DATA holds at most one digest).

What it does not: judge measurements, PCR values, debug or TCB (policy reads the claims), or
report a location: nothing in this evidence names the VM's region (the HCL runtime data holds
keys, ``vm-configuration`` and ``user-data``; the vTPM quote covers PCRs), so
``worker_locations`` rules deny ``azure-cvm`` workers (docs/PROTOCOL.md, section 7.2).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from cryptography.hazmat.primitives import serialization

from keybroker.attestation.azure_cvm.evidence import (
    AzureCvmEvidence,
    decode_pcr_values,
    parse_azure_cvm_evidence,
)
from keybroker.attestation.azure_cvm.hcl import HclReport, parse_hcl_report
from keybroker.attestation.azure_cvm.tdreport import parse_td_report
from keybroker.attestation.azure_cvm.tpm import (
    TpmQuote,
    TpmSignature,
    check_pcr_digest,
    parse_quote_attest,
    parse_signature,
    verify_quote_signature,
)
from keybroker.attestation.claims import Claims
from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
    UnsupportedHardwareError,
)
from keybroker.attestation.json_bounded import load_bounded_object
from keybroker.attestation.snp.certificates import common_name, load_pem_certificates
from keybroker.attestation.snp.chain import intermediate_role
from keybroker.attestation.snp.report import parse_report
from keybroker.attestation.snp.verifier import SnpVerifier
from keybroker.attestation.tdx.quote import parse_quote
from keybroker.attestation.tdx.verify import TdxVerifier

__all__ = ["ENDORSEMENT_NAMES", "HCL_VMPL", "AzureCvmVerifier", "tpm_qualifying_data"]

ENDORSEMENT_NAMES = frozenset({"vcek-chain", "vcek", "ask", "ark", "pcrs", "collateral"})
HCL_VMPL = 0  # the HCL (paravisor) runs at VMPL 0 and requests the report there
MAX_PCRS_ENDORSEMENT = 4096
REPORT_DATA_SIZE = 64
_SNP_DER_NAMES = ("vcek", "ask", "ark")


def tpm_qualifying_data(report_data: bytes) -> bytes:
    """The vTPM quote's extraData for a 64-byte report_data: its SHA-256."""
    return hashlib.sha256(report_data).digest()


def _der(certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def snp_endorsements_from_pem_chain(pem: bytes, leaf_role: str) -> dict[str, bytes]:
    """Split Azure's VCEK chain PEM (VCEK, then ASK, then ARK) into DER by role."""
    certificates = load_pem_certificates(bytes(pem), "vcek-chain")
    if not certificates:
        raise EvidenceFormatError("vcek-chain holds no certificate")
    result = {leaf_role: _der(certificates[0])}
    for certificate in certificates[1:]:
        if certificate.subject == certificate.issuer:
            role = "ark"
        else:
            role = intermediate_role(certificate) or ""
        if role not in ("ask", "asvk", "ark"):
            raise EvidenceFormatError(
                f"vcek-chain: {common_name(certificate.subject)!r} is not an ASK, ASVK or ARK")
        if role in result:
            raise EvidenceFormatError(f"vcek-chain holds more than one {role}")
        result[role] = _der(certificate)
    return result


class AzureCvmVerifier:
    """Verifies Azure CVM evidence (HCL report + vTPM quote) over SEV-SNP or TDX.

    ``snp`` verifies the embedded SEV-SNP report (its trust store pins AMD's ARKs); ``tdx``
    verifies the TD quote of an Azure TDX CVM. Either may be None when that hardware is
    not accepted; evidence for it then fails with `TrustStoreError`.
    """

    tee = "azure-cvm"

    def __init__(self, *, snp: SnpVerifier | None = None, tdx: TdxVerifier | None = None) -> None:
        if snp is None and tdx is None:
            raise TrustStoreError("AzureCvmVerifier needs an SEV-SNP or a TDX verifier")
        self._snp = snp
        self._tdx = tdx

    def evaluate(self, evidence: bytes, expected_report_data: bytes, *,
                 endorsements: Mapping[str, bytes]) -> Claims:
        """Claims for authentic evidence bound to ``expected_report_data``, else raise."""
        if not isinstance(expected_report_data, bytes) or \
                len(expected_report_data) != REPORT_DATA_SIZE:
            raise ReportDataMismatchError("expected report_data must be exactly 64 bytes")
        unknown = set(endorsements) - ENDORSEMENT_NAMES
        if unknown:
            raise EvidenceFormatError(f"unknown Azure CVM endorsements {sorted(unknown)}; "
                                      f"expected {sorted(ENDORSEMENT_NAMES)}")
        parsed = parse_azure_cvm_evidence(evidence)
        hcl = parse_hcl_report(parsed.hcl_report)
        quote = parse_quote_attest(parsed.tpm_attest)
        signature = parse_signature(parsed.tpm_signature)
        if hcl.hardware == "sev-snp":
            hardware = self._verify_snp(hcl, parsed, endorsements)
        else:
            hardware = self._verify_tdx(hcl, parsed, endorsements)
        verify_quote_signature(quote, signature, hcl.runtime_data.ak_public_key)
        pcrs = check_pcr_digest(quote, self._pcr_values(parsed, endorsements))
        self._check_binding(hcl, quote, expected_report_data)
        return self._claims(hcl, quote, signature, pcrs, hardware, expected_report_data)

    # --- hardware -------------------------------------------------------------------
    def _verify_snp(self, hcl: HclReport, parsed: AzureCvmEvidence,
                    endorsements: Mapping[str, bytes]) -> Claims:
        if self._snp is None:
            raise UnsupportedHardwareError(
                "this verifier accepts no Azure SEV-SNP CVMs (no SEV-SNP verifier configured)")
        if parsed.td_quote is not None:
            raise EvidenceFormatError("Azure SEV-SNP evidence must not carry a td_quote")
        report = parse_report(hcl.hardware_report)
        digest = hcl.runtime_data_digest()
        if not hmac.compare_digest(report.report_data[:len(digest)], digest):
            raise EvidenceVerificationError(
                f"SEV-SNP report_data does not start with the {hcl.hash_name} of the HCL "
                "runtime data")
        if report.vmpl != HCL_VMPL:
            raise EvidenceVerificationError(
                f"SEV-SNP report was requested at VMPL {report.vmpl}, not the HCL's VMPL 0")
        snp_endorsements = self._snp_endorsements(endorsements, report.signing_key_name)
        return self._snp.evaluate(hcl.hardware_report, report.report_data,
                                  endorsements=snp_endorsements)

    @staticmethod
    def _snp_endorsements(endorsements: Mapping[str, bytes], role: str) -> dict[str, bytes]:
        offered = {name: bytes(endorsements[name]) for name in _SNP_DER_NAMES
                   if name in endorsements}
        if "vcek-chain" in endorsements:
            for name, der in snp_endorsements_from_pem_chain(endorsements["vcek-chain"],
                                                             role).items():
                if name in offered and offered[name] != der:
                    raise EvidenceVerificationError(
                        f"endorsement {name!r} differs from the one in vcek-chain")
                offered[name] = der
        return offered

    def _verify_tdx(self, hcl: HclReport, parsed: AzureCvmEvidence,
                    endorsements: Mapping[str, bytes]) -> Claims:
        if self._tdx is None:
            raise UnsupportedHardwareError(
                "this verifier accepts no Azure TDX CVMs (no TDX verifier configured)")
        if parsed.td_quote is None:
            raise EvidenceFormatError("Azure TDX evidence needs a td_quote")
        td_report = parse_td_report(hcl.hardware_report)
        body = parse_quote(parsed.td_quote).body
        digest = hcl.runtime_data_digest()
        if not hmac.compare_digest(body.report_data[:len(digest)], digest):
            raise EvidenceVerificationError(
                f"TD quote report_data does not start with the {hcl.hash_name} of the HCL "
                "runtime data")
        mismatched = [name for name in ("report_data", "td_attributes", "xfam", "mr_td",
                                        "mr_config_id", "mr_owner", "mr_owner_config", "rtmrs")
                      if getattr(td_report, name) != getattr(body, name)]
        if mismatched:
            raise EvidenceVerificationError(
                f"TD quote does not repeat the HCL's TDREPORT: {', '.join(mismatched)} differ")
        tdx_endorsements = ({"collateral": bytes(endorsements["collateral"])}
                            if "collateral" in endorsements else {})
        return self._tdx.evaluate(parsed.td_quote, body.report_data,
                                  endorsements=tdx_endorsements)

    # --- vTPM and binding -------------------------------------------------------------
    @staticmethod
    def _pcr_values(parsed: AzureCvmEvidence, endorsements: Mapping[str, bytes]
                    ) -> dict[int, bytes]:
        values = dict(parsed.pcrs)
        if "pcrs" in endorsements:
            blob = endorsements["pcrs"]
            document = load_bounded_object(
                blob, what="endorsement 'pcrs'", max_bytes=MAX_PCRS_ENDORSEMENT, max_depth=4,
                error=EvidenceFormatError)
            for index, value in decode_pcr_values(document, "endorsement 'pcrs'").items():
                if index in values and not hmac.compare_digest(values[index], value):
                    raise EvidenceVerificationError(
                        f"PCR {index} in the evidence differs from endorsement 'pcrs'")
                values[index] = value
        return values

    @staticmethod
    def _check_binding(hcl: HclReport, quote: TpmQuote, expected_report_data: bytes) -> None:
        user_data = hcl.runtime_data.user_data
        if user_data is None:
            raise ReportDataMismatchError("HCL runtime data carries no user-data")
        if not hmac.compare_digest(user_data, expected_report_data):
            raise ReportDataMismatchError(
                "HCL runtime user-data does not match the expected report_data")
        if not hmac.compare_digest(quote.extra_data, tpm_qualifying_data(expected_report_data)):
            raise ReportDataMismatchError(
                "vTPM quote extraData is not SHA-256 of the expected report_data")

    # --- claims -------------------------------------------------------------------------
    @staticmethod
    def _claims(hcl: HclReport, quote: TpmQuote, signature: TpmSignature,
                pcrs: Mapping[int, bytes], hardware: Claims, report_data: bytes) -> Claims:
        ak_spki = hcl.runtime_data.ak_public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        platform = dict(hardware.platform)
        platform.update({
            "hw": hcl.hardware,
            "pcrs": {str(index): value.hex() for index, value in pcrs.items()},
            "pcr_digest": quote.pcr_digest.hex(),
            "vm_configuration": dict(hcl.runtime_data.vm_configuration),
            "ak_sha256": hashlib.sha256(ak_spki).hexdigest(),
        })
        raw = {
            "hcl": {
                "header_version": hcl.header_version,
                "request_type": hcl.request_type,
                "report_type": hcl.report_type,
                "hash": hcl.hash_name,
                "runtime_data_keys": list(hcl.runtime_data.key_ids),
            },
            "hardware": {"tee": hardware.tee, "report_data": hardware.report_data.hex(),
                         **dict(hardware.raw)},
            "tpm_quote": {
                "signature_scheme": signature.scheme_name,
                "qualified_signer": quote.qualified_signer.hex(),
                "extra_data": quote.extra_data.hex(),
                "clock": quote.clock,
                "reset_count": quote.reset_count,
                "restart_count": quote.restart_count,
                "safe": quote.safe,
                "firmware_version": quote.firmware_version,
            },
        }
        return Claims(
            tee="azure-cvm",
            report_version=hardware.report_version,
            debug=hardware.debug,
            measurement=hardware.measurement,
            report_data=report_data,
            product=hardware.product,
            signing_key=hardware.signing_key,
            tcb=dict(hardware.tcb),
            simulated=hardware.simulated,
            platform=platform,
            raw=raw,
        )
