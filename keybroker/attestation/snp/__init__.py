"""AMD SEV-SNP attestation: parse -> verify (signature, chain) -> claims.

What it does: exports the pieces the broker needs — `SnpVerifier`, `SnpTrustStore`,
`parse_report` / `SnpReport`, `AmdKdsClient` — each living in a module with one job.
What it does not: policy; `keybroker.policy` decides on the returned claims.
"""

from __future__ import annotations

from keybroker.attestation.snp.cert_table import encode_cert_table, parse_cert_table
from keybroker.attestation.snp.kds import AmdKdsClient, KdsUnavailableError
from keybroker.attestation.snp.report import SnpReport, encode_report, parse_report
from keybroker.attestation.snp.trust import PRODUCTION_ARK_PINS, SnpTrustStore
from keybroker.attestation.snp.verifier import SnpVerifier

__all__ = [
    "PRODUCTION_ARK_PINS",
    "AmdKdsClient",
    "KdsUnavailableError",
    "SnpReport",
    "SnpTrustStore",
    "SnpVerifier",
    "encode_cert_table",
    "encode_report",
    "parse_cert_table",
    "parse_report",
]
