"""Azure confidential VMs (SEV-SNP and TDX) attested through the vTPM and the HCL report.

What it does: exports the pieces, one job per module — `hcl` (parse the HCL report),
`tdreport` (the TDX TDREPORT inside it), `tpm` (TPM 2.0 quote and signature), `evidence` (the
wire format) and `verify` (`AzureCvmVerifier`). What it does not: verify MAA tokens (see
`keybroker.attestation.maa`) or decide release (policy).
"""

from __future__ import annotations

from keybroker.attestation.azure_cvm.evidence import (
    EVIDENCE_FORMAT,
    AzureCvmEvidence,
    evidence_from_az_cvm_vtpm,
    parse_azure_cvm_evidence,
)
from keybroker.attestation.azure_cvm.hcl import (
    HclReport,
    RuntimeData,
    encode_hcl_report,
    parse_hcl_report,
)
from keybroker.attestation.azure_cvm.tpm import (
    TpmQuote,
    TpmSignature,
    parse_quote_attest,
    parse_signature,
)
from keybroker.attestation.azure_cvm.verify import AzureCvmVerifier, tpm_qualifying_data

__all__ = [
    "EVIDENCE_FORMAT",
    "AzureCvmEvidence",
    "AzureCvmVerifier",
    "HclReport",
    "RuntimeData",
    "TpmQuote",
    "TpmSignature",
    "encode_hcl_report",
    "evidence_from_az_cvm_vtpm",
    "parse_azure_cvm_evidence",
    "parse_hcl_report",
    "parse_quote_attest",
    "parse_signature",
    "tpm_qualifying_data",
]
