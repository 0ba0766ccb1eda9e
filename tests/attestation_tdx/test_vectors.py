"""Real TDX evidence from ../shared/vectors/tdx (see its README): parse, verify, TCB status."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from keybroker.attestation.errors import (
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
)
from keybroker.attestation.tdx.collateral import (
    parse_collateral,
    parse_qe_identity,
    parse_tcb_info,
    split_signed_response,
    verify_collateral,
)
from keybroker.attestation.tdx.pck import load_crl, load_pem_chain, parse_pck_extensions
from keybroker.attestation.tdx.quote import parse_quote
from keybroker.attestation.tdx.tcb import TcbStatus, evaluate_tcb
from keybroker.attestation.tdx.trust import (
    INTEL_SGX_ROOT_CA_SHA256,
    TdxTrustStore,
    certificate_fingerprint,
)
from keybroker.attestation.tdx.verify import TdxVerifier
from keybroker.attestation.verifier import Verifier


def _at(text: str):
    moment = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return lambda: moment


# A time inside every certificate of each embedded PCK chain.
VERIFY_AT = {
    "quote_v4_spr.dat": "2024-01-01T00:00:00",
    "quote_v5_sample.dat": "2026-06-01T00:00:00",  # its PCK certificate starts 2026-01-27
    "quote_v4_debug.dat": "2024-01-01T00:00:00",
    "phala/quote.dat": "2025-06-25T00:00:00",  # inside the phala collateral's windows
}


def test_pinned_root_matches_the_vector(intel_trust: TdxTrustStore) -> None:
    (root,) = intel_trust.roots
    assert certificate_fingerprint(root.certificate) == INTEL_SGX_ROOT_CA_SHA256
    assert not root.simulated


def test_verifier_satisfies_the_protocol(intel_trust: TdxTrustStore) -> None:
    assert isinstance(TdxVerifier(intel_trust), Verifier)


@pytest.mark.parametrize("name", sorted(VERIFY_AT))
def test_real_quotes_verify_without_collateral(
    name: str, tdx_vectors: Path, intel_trust: TdxTrustStore
) -> None:
    evidence = (tdx_vectors / name).read_bytes()
    quote = parse_quote(evidence)
    claims = TdxVerifier(intel_trust, _at(VERIFY_AT[name])).evaluate(
        evidence, quote.body.report_data, endorsements={}
    )
    assert claims.tee == "tdx"
    assert claims.report_version == quote.header.version
    assert claims.measurement == quote.body.mr_td.hex()
    assert claims.simulated is False
    assert claims.signing_key == "pck"
    assert claims.platform["tcb_status"] is None
    assert claims.platform["rtmr0"] == quote.body.rtmrs[0].hex()
    assert claims.to_json()["tee"] == "tdx"


def test_v4_spr_fields(tdx_vectors: Path) -> None:
    quote = parse_quote((tdx_vectors / "quote_v4_spr.dat").read_bytes())
    assert quote.header.version == 4
    assert quote.body_type == 2
    assert quote.body.tee_tcb_svn.hex() == "03000400000000000000000000000000"
    assert not quote.body.debug
    assert quote.body.mr_service_td is None
    # go-tdx-guest appended "extra bytes(only for testing purpose)" after the signature data
    assert quote.trailing_length == 39


def test_v5_sample_is_td15(tdx_vectors: Path, intel_trust: TdxTrustStore) -> None:
    evidence = (tdx_vectors / "quote_v5_sample.dat").read_bytes()
    quote = parse_quote(evidence)
    assert (quote.header.version, quote.body_type) == (5, 3)
    assert quote.body.tee_tcb_svn_2 is not None and quote.body.mr_service_td is not None
    claims = TdxVerifier(intel_trust, _at(VERIFY_AT["quote_v5_sample.dat"])).evaluate(
        evidence, quote.body.report_data, endorsements={}
    )
    assert claims.platform["td_report_version"] == "1.5"
    assert claims.tcb["tdx_module_major_version"] == 1
    assert claims.tcb["tdx_module_svn"] == 11


def test_debug_vector_yields_debug_true(tdx_vectors: Path, intel_trust: TdxTrustStore) -> None:
    evidence = (tdx_vectors / "quote_v4_debug.dat").read_bytes()
    quote = parse_quote(evidence)
    claims = TdxVerifier(intel_trust, _at(VERIFY_AT["quote_v4_debug.dat"])).evaluate(
        evidence, quote.body.report_data, endorsements={}
    )
    assert claims.debug is True
    assert claims.platform["td_attributes"].startswith("01")


def test_real_quote_report_data_mismatch(tdx_vectors: Path, intel_trust: TdxTrustStore) -> None:
    evidence = (tdx_vectors / "quote_v4_spr.dat").read_bytes()
    with pytest.raises(ReportDataMismatchError):
        TdxVerifier(intel_trust, _at(VERIFY_AT["quote_v4_spr.dat"])).evaluate(
            evidence, bytes(64), endorsements={}
        )


def test_real_quote_rejected_outside_pck_validity(
    tdx_vectors: Path, intel_trust: TdxTrustStore
) -> None:
    evidence = (tdx_vectors / "quote_v5_sample.dat").read_bytes()
    quote = parse_quote(evidence)
    with pytest.raises(EvidenceVerificationError, match="not valid at"):
        TdxVerifier(intel_trust, _at("2025-01-01T00:00:00")).evaluate(
            evidence, quote.body.report_data, endorsements={}
        )


def test_real_quote_rejected_under_another_root(tdx_vectors: Path, pki) -> None:
    evidence = (tdx_vectors / "quote_v4_spr.dat").read_bytes()
    quote = parse_quote(evidence)
    with pytest.raises(EvidenceVerificationError, match="not a trusted root"):
        TdxVerifier(TdxTrustStore(dev_roots=[pki.root]), _at("2024-01-01T00:00:00")).evaluate(
            evidence, quote.body.report_data, endorsements={}
        )


def test_trust_store_refuses_an_unpinned_root(pki) -> None:
    with pytest.raises(TrustStoreError, match="not a pinned Intel root"):
        TdxTrustStore([pki.root])


def test_phala_quote_with_collateral_is_up_to_date(
    tdx_vectors: Path, intel_trust: TdxTrustStore
) -> None:
    """The phala platform (FMSPC b0c06f000000) is UpToDate under TCB evaluation data 17.

    PCK SGX components 3,3,2,2,4,1,0,5 and PCESVN 11 meet the first level (2,2,2,2,3,1,0,5;
    PCESVN 11); TEE_TCB_SVN 06 01 03: module major version 1, so the TDX components are
    compared from index 2 (3 >= 2) and the module SVN 6 meets TDX_01's UpToDate level
    (isvsvn 4); the QE's ISVSVN 6 meets the QE identity's UpToDate level (4).
    """
    evidence = (tdx_vectors / "phala/quote.dat").read_bytes()
    collateral = (tdx_vectors / "phala/collateral.json").read_bytes()
    quote = parse_quote(evidence)
    verifier = TdxVerifier(intel_trust, _at(VERIFY_AT["phala/quote.dat"]))
    claims = verifier.evaluate(
        evidence, quote.body.report_data, endorsements={"collateral": collateral}
    )
    assert claims.platform["tcb_status"] == "UpToDate"
    assert claims.platform["tdx_module_tcb_status"] == "UpToDate"
    assert claims.platform["qe_tcb_status"] == "UpToDate"
    assert claims.platform["advisory_ids"] == ()
    assert claims.platform["fmspc"] == "b0c06f000000"
    assert claims.platform["tcb_evaluation_data_number"] == 17
    assert claims.platform["tcb_date"] == "2024-03-13T00:00:00Z"


def test_phala_collateral_rejected_after_next_update(
    tdx_vectors: Path, intel_trust: TdxTrustStore
) -> None:
    collateral = parse_collateral((tdx_vectors / "phala/collateral.json").read_bytes())
    at = datetime(2025, 7, 20, tzinfo=timezone.utc)  # after the CRLs and TCB info expire
    with pytest.raises(EvidenceVerificationError):
        verify_collateral(collateral, intel_trust, at)


def test_phala_collateral_does_not_fit_another_platform(
    tdx_vectors: Path, intel_trust: TdxTrustStore
) -> None:
    """The SPR quote's FMSPC differs from the phala collateral's, so it is refused."""
    evidence = (tdx_vectors / "quote_v4_spr.dat").read_bytes()
    collateral = (tdx_vectors / "phala/collateral.json").read_bytes()
    quote = parse_quote(evidence)
    with pytest.raises(EvidenceVerificationError):
        TdxVerifier(intel_trust, _at(VERIFY_AT["phala/quote.dat"])).evaluate(
            evidence, quote.body.report_data, endorsements={"collateral": collateral}
        )


def _pcs_sample(tdx_vectors: Path):
    sample = tdx_vectors / "collateral-pcs-sample"
    tcb = split_signed_response((sample / "tcb_info.json").read_bytes(), "tcbInfo")
    qe = split_signed_response((sample / "qe_identity.json").read_bytes(), "enclaveIdentity")
    return sample, tcb, qe


def test_pcs_sample_collateral_parses(tdx_vectors: Path) -> None:
    sample, tcb, qe = _pcs_sample(tdx_vectors)
    info = parse_tcb_info(tcb.body)
    identity = parse_qe_identity(qe.body)
    assert info.fmspc.hex() == "50806f000000"
    assert info.tcb_evaluation_data_number == 15
    assert [level.status for level in info.tcb_levels] == ["UpToDate", "OutOfDate"]
    assert "INTEL-SA-00477" in info.tcb_levels[1].advisory_ids
    assert identity.isv_prod_id == 2 and identity.tcb_levels[0].isv_svn == 4
    pck_crl = load_crl((sample / "pck_crl").read_bytes(), "pck_crl")
    root_crl = load_crl((sample / "root_crl.der").read_bytes(), "root_crl")
    assert "PCK Platform CA" in pck_crl.issuer.rfc4514_string()
    assert "Root CA" in root_crl.issuer.rfc4514_string()


def test_pcs_sample_signatures_verify_under_intel_tcb_signing_key(tdx_vectors: Path) -> None:
    """Intel re-certified the same TCB signing key in 2025; the 2023 sample verifies under it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    _, tcb, qe = _pcs_sample(tdx_vectors)
    bundle = json.loads((tdx_vectors / "phala/collateral.json").read_text())
    key = load_pem_chain(bundle["tcb_info_issuer_chain"].encode(), "chain")[0].public_key()
    for signed in (tcb, qe):
        signature = utils.encode_dss_signature(
            int.from_bytes(signed.signature[:32], "big"),
            int.from_bytes(signed.signature[32:], "big"),
        )
        key.verify(signature, signed.body, ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            key.verify(signature, signed.body + b" ", ec.ECDSA(hashes.SHA256()))


def test_pcs_sample_tcb_status_of_the_debug_platform(tdx_vectors: Path) -> None:
    """The debug quote's platform (FMSPC 50806f000000) meets the first level: UpToDate.

    PCK SGX components 5,5,13,2,3,1,0,3 >= 5,5,2,2,3,1,0,3 and PCESVN 11 >= 11;
    TEE_TCB_SVN 03 00 05 >= 3,0,5 (module major 0: all 16 compared); QE ISVSVN 4 >= 4.
    """
    _, tcb, qe = _pcs_sample(tdx_vectors)
    quote = parse_quote((tdx_vectors / "quote_v4_debug.dat").read_bytes())
    pck = parse_pck_extensions(load_pem_chain(quote.certification.pck_chain_pem, "chain")[0])
    evaluation = evaluate_tcb(
        parse_tcb_info(tcb.body),
        parse_qe_identity(qe.body),
        pck,
        quote.body,
        quote.certification.qe_report_body,
    )
    assert evaluation.status is TcbStatus.UP_TO_DATE
    assert evaluation.tdx_module_status is None
    assert evaluation.advisory_ids == ()


def test_pcs_sample_does_not_support_the_spr_e4_platform(tdx_vectors: Path) -> None:
    """The SPR E4 quote's TEE_TCB_SVN[2] is 4, below every level's 5: TCB not supported."""
    _, tcb, qe = _pcs_sample(tdx_vectors)
    quote = parse_quote((tdx_vectors / "quote_v4_spr.dat").read_bytes())
    pck = parse_pck_extensions(load_pem_chain(quote.certification.pck_chain_pem, "chain")[0])
    with pytest.raises(EvidenceVerificationError, match="TCB not supported"):
        evaluate_tcb(
            parse_tcb_info(tcb.body),
            parse_qe_identity(qe.body),
            pck,
            quote.body,
            quote.certification.qe_report_body,
        )
