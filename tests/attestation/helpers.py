"""Helpers shared by the SEV-SNP tests: a fixed clock for the real vectors, report signing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from keybroker.attestation.snp import layout
from keybroker.attestation.snp.report import SnpReport, encode_report, encode_signature

# Inside the validity of both real VCEKs (2023-01-24..2030 and 2022-09-24..2029).
REAL_VECTOR_TIME = datetime(2025, 6, 1, tzinfo=timezone.utc)


def fixed_clock(at: datetime = REAL_VECTOR_TIME):
    return lambda: at


def sign_report(report: SnpReport, key_path: Path) -> bytes:
    """Encode and sign an arbitrary report with a dev VCEK/VLEK key (for negative tests)."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    body = encode_report(report)[: layout.SIGNED_SIZE]
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA384())))
    return encode_report(replace(report, signature=encode_signature(r, s)))
