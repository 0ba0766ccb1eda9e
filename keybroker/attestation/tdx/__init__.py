"""Intel TDX quote verification: parse (`quote`), PCK chain and CRLs (`pck`), collateral
(`collateral`), TCB status (`tcb`), claims (`claims`) and the `TdxVerifier` (`verify`).

What it does: verifies DCAP quotes v4/v5 against pinned Intel roots and yields `Claims`.
What it does not: fetch collateral from Intel PCS or decide release (policy does).
"""

from __future__ import annotations

from keybroker.attestation.tdx.collateral import Collateral, parse_collateral, verify_collateral
from keybroker.attestation.tdx.quote import TdxQuote, parse_quote
from keybroker.attestation.tdx.tcb import TcbEvaluation, TcbStatus, evaluate_tcb
from keybroker.attestation.tdx.trust import INTEL_SGX_ROOT_CA_SHA256, TdxTrustStore
from keybroker.attestation.tdx.verify import TdxVerifier, VerifiedQuote, verify_quote

__all__ = [
    "INTEL_SGX_ROOT_CA_SHA256",
    "Collateral",
    "TcbEvaluation",
    "TcbStatus",
    "TdxQuote",
    "TdxTrustStore",
    "TdxVerifier",
    "VerifiedQuote",
    "evaluate_tcb",
    "parse_collateral",
    "parse_quote",
    "verify_collateral",
    "verify_quote",
]
