"""AMD's VCEKs have serial number 0 (RFC 5280 forbids it); ``cryptography`` loads them with a
deprecation warning that says a future release will refuse them. These tests fail the day the
installed ``cryptography`` stops loading them, and check that sealbeam silences that one
warning only, so an upgrade past setup.py's bound is caught here and not in production."""

from __future__ import annotations

import datetime
import re
import warnings
from pathlib import Path

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from keybroker.attestation.snp.certificates import load_der_certificate

REPO = Path(__file__).resolve().parents[2]


def serial_zero_der() -> bytes:
    """A self-signed P-384 certificate whose serial INTEGER is 0, as on AMD's VCEKs."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    der = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(key.public_key()).serial_number(1).not_valid_before(start)
           .not_valid_after(start + datetime.timedelta(days=1))
           .sign(key, hashes.SHA384()).public_bytes(Encoding.DER))
    version_and_serial = b"\xa0\x03\x02\x01\x02\x02\x01\x01"  # [0] v3, INTEGER 1
    at = der.index(version_and_serial) + len(version_and_serial) - 1
    return der[:at] + b"\x00" + der[at + 1:]


def test_cryptography_still_loads_serial_zero_certificates_and_says_so() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        certificate = x509.load_der_x509_certificate(serial_zero_der())
        assert certificate.serial_number == 0
    notices = [w for w in caught if issubclass(w.category, CryptographyDeprecationWarning)]
    assert notices, "cryptography no longer warns: check whether serial-0 VCEKs still load"
    assert all("serial number" in str(w.message) for w in notices)


def test_sealbeam_loads_them_and_silences_only_that_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        certificate = load_der_certificate(serial_zero_der(), "vcek")
        warnings.warn("another deprecation", CryptographyDeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another deprecation"]
    with warnings.catch_warnings(record=True) as later:  # not hidden outside the loader
        warnings.simplefilter("always")
        assert certificate.serial_number == 0
    assert any("serial number" in str(w.message) for w in later)


def test_cryptography_is_bounded_below_its_next_major() -> None:
    setup = (REPO / "setup.py").read_text(encoding="utf-8")
    match = re.search(r'"cryptography>=(\d+)[^,"]*,<(\d+)"', setup)
    assert match, "setup.py must bound cryptography from above"
    installed_major = int(cryptography.__version__.split(".")[0])
    assert int(match.group(1)) <= installed_major < int(match.group(2))
