"""Quote parsing: field layout, every structural error typed and named, fuzzed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keybroker.attestation.errors import EvidenceFormatError, EvidenceVerificationError
from keybroker.attestation.tdx.quote import MAX_QUOTE_SIZE, parse_quote
from keybroker.attestation.tdx.trust import TdxTrustStore
from keybroker.attestation.tdx.verify import TdxVerifier
from tests.attestation_tdx.builder import QuoteSpec, build_quote, clock_at, make_pki

PKI = make_pki()
V4 = build_quote(PKI, QuoteSpec(version=4))
V5 = build_quote(PKI, QuoteSpec(version=5, body_type=3, mr_service_td=b"\x77" * 48))


def test_fields_land_where_the_spec_puts_them() -> None:
    spec = QuoteSpec()
    quote = parse_quote(V4.data)
    body = quote.body
    assert body.tee_tcb_svn == spec.tee_tcb_svn
    assert body.mr_seam == spec.mr_seam
    assert body.td_attributes == spec.td_attributes
    assert body.xfam == spec.xfam
    assert body.mr_td == spec.mr_td
    assert body.mr_config_id == spec.mr_config_id
    assert body.mr_owner == spec.mr_owner
    assert body.mr_owner_config == spec.mr_owner_config
    assert body.rtmrs == spec.rtmrs
    assert body.report_data == spec.report_data
    assert quote.certification.qe_auth_data == spec.qe_auth_data
    assert quote.certification.qe_report_body.isv_svn == spec.qe_isv_svn
    assert quote.certification.qe_report_body.mr_signer == spec.qe_mr_signer
    assert quote.trailing_length == 0
    assert len(quote.signed_bytes) == 48 + 584


def test_v5_td15_fields() -> None:
    quote = parse_quote(V5.data)
    assert quote.body_type == 3
    assert quote.body.mr_service_td == b"\x77" * 48
    assert len(quote.signed_bytes) == 48 + 6 + 648


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, value)
    return bytes(patched)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (0, "<H", 3, "version 3"),
        (2, "<H", 3, "attestation key type 3"),
        (4, "<I", 0, "tee type 0x0"),
    ],
)
def test_header_errors_name_the_field(offset, fmt, value, message) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_quote(_patched(V4.data, offset, fmt, value))


def test_v5_body_type_and_size_are_checked() -> None:
    with pytest.raises(EvidenceFormatError, match="body type 1"):
        parse_quote(_patched(V5.data, 48, "<H", 1))
    with pytest.raises(EvidenceFormatError, match="body size 584 does not match"):
        parse_quote(_patched(V5.data, 50, "<I", 584))


def test_signature_data_length_is_bounded() -> None:
    with pytest.raises(EvidenceFormatError, match="signature data needs"):
        parse_quote(_patched(V4.data, 632, "<I", 0xFFFFFFFF))


def test_signature_data_must_be_consumed_exactly() -> None:
    length = struct.unpack_from("<I", V4.data, 632)[0]
    with pytest.raises(EvidenceFormatError, match="unexpected bytes"):
        parse_quote(_patched(V4.data + b"\0", 632, "<I", length + 1))


def test_certification_types_are_checked() -> None:
    cert_type_offset = 632 + 4 + 128
    with pytest.raises(EvidenceFormatError, match="certification data type 5"):
        parse_quote(_patched(V4.data, cert_type_offset, "<H", 5))
    auth_start = V4.regions["qe_auth_data"][0]
    inner_type_offset = V4.regions["qe_auth_data"][1]
    with pytest.raises(EvidenceFormatError, match="inner certification data type 3"):
        parse_quote(_patched(V4.data, inner_type_offset, "<H", 3))
    with pytest.raises(EvidenceFormatError, match="QE authentication data size"):
        parse_quote(_patched(V4.data, auth_start - 2, "<H", 4000))


def test_oversized_quote_is_refused_before_parsing() -> None:
    with pytest.raises(EvidenceFormatError, match="exceeds"):
        parse_quote(V4.data + bytes(MAX_QUOTE_SIZE))


def test_not_bytes_is_a_format_error() -> None:
    with pytest.raises(EvidenceFormatError):
        parse_quote("quote")  # type: ignore[arg-type]


@pytest.mark.parametrize("built", [V4, V5], ids=["v4", "v5"])
def test_every_truncation_is_a_format_error(built) -> None:
    signed_end = len(built.data)
    for cut in range(0, signed_end, 7):
        with pytest.raises(EvidenceFormatError):
            parse_quote(built.data[:cut])


VERIFIER = TdxVerifier(TdxTrustStore(dev_roots=[PKI.root]), clock_at())


def _only_typed_errors(data: bytes) -> None:
    """Either the (unchanged) quote verifies, or one of the two typed errors is raised."""
    try:
        VERIFIER.evaluate(data, bytes(range(64)), endorsements={})
    except (EvidenceFormatError, EvidenceVerificationError):
        return


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(min_value=0, max_value=len(V4.data)))
def test_random_truncation_raises_only_typed_errors(cut: int) -> None:
    _only_typed_errors(V4.data[:cut])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(min_value=0, max_value=len(V5.data) - 1),
    replacement=st.binary(min_size=1, max_size=8),
)
def test_random_overwrites_raise_only_typed_errors(position: int, replacement: bytes) -> None:
    data = bytearray(V5.data)
    data[position : position + len(replacement)] = replacement
    _only_typed_errors(bytes(data))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    with pytest.raises((EvidenceFormatError, EvidenceVerificationError)):
        VERIFIER.evaluate(data, bytes(64), endorsements={})
