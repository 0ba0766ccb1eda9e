"""TCB status: each of Intel's statuses, level matching, TDX module identities, convergence."""

from __future__ import annotations

import pytest

from keybroker.attestation.errors import EvidenceVerificationError
from keybroker.attestation.tdx.collateral import parse_qe_identity, parse_tcb_info
from keybroker.attestation.tdx.tcb import (
    TcbStatus,
    converge_with_qe,
    converge_with_tdx_module,
)
from keybroker.attestation.tdx.verify import TdxVerifier
from tests.attestation_tdx.builder import (
    QuoteSpec,
    build_collateral,
    build_qe_identity,
    build_quote,
    build_tcb_info,
    clock_at,
    tcb_level,
)

REPORT_DATA = bytes(range(64))


def _status(dev_trust, pki, levels, *, spec=None, qe=None, identities=None) -> dict:
    collateral = build_collateral(
        pki,
        build_tcb_info(levels, module_identities=identities),
        qe or build_qe_identity(),
    )
    claims = TdxVerifier(dev_trust, clock_at()).evaluate(
        build_quote(pki, spec).data, REPORT_DATA, endorsements={"collateral": collateral}
    )
    return dict(claims.platform)


@pytest.mark.parametrize(
    "status",
    [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    ],
)
def test_each_platform_status_is_reported(dev_trust, pki, status: str) -> None:
    advisories = () if status == "UpToDate" else ("INTEL-SA-00001", "INTEL-SA-00002")
    platform = _status(dev_trust, pki, [tcb_level(status, advisories=advisories)])
    assert platform["tcb_status"] == status
    assert list(platform["advisory_ids"]) == list(advisories)


def test_revoked_platform_is_rejected(dev_trust, pki) -> None:
    with pytest.raises(EvidenceVerificationError, match="Revoked"):
        _status(dev_trust, pki, [tcb_level("Revoked")])


def test_first_matching_level_wins(dev_trust, pki) -> None:
    """The platform misses the newer level by one SGX component, so the older one applies."""
    newer = tcb_level("UpToDate", sgx=(5, 5, 2, 2, 4, 1, 0, 3) + (0,) * 8)
    older = tcb_level("OutOfDate", sgx=(5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8, advisories=("SA-1",))
    platform = _status(dev_trust, pki, [newer, older])
    assert platform["tcb_status"] == "OutOfDate"
    assert list(platform["advisory_ids"]) == ["SA-1"]


def test_components_compare_one_by_one_not_lexicographically(dev_trust, pki) -> None:
    """Platform 5,5,2,2,3,... is lexicographically above 4,9,... but below it in component 2."""
    level = tcb_level("UpToDate", sgx=(4, 9, 2, 2, 3, 1, 0, 3) + (0,) * 8)
    with pytest.raises(EvidenceVerificationError, match="TCB not supported"):
        _status(dev_trust, pki, [level])


def test_pce_svn_below_every_level_is_unsupported(dev_trust, pki) -> None:
    with pytest.raises(EvidenceVerificationError, match="TCB not supported"):
        _status(dev_trust, pki, [tcb_level("UpToDate", pce_svn=12)])


def test_tee_tcb_svn_selects_the_level(dev_trust, pki) -> None:
    newer = tcb_level("UpToDate", tdx=(3, 0, 6) + (0,) * 13)
    older = tcb_level("OutOfDate", tdx=(3, 0, 5) + (0,) * 13)
    assert _status(dev_trust, pki, [newer, older])["tcb_status"] == "OutOfDate"
    spec = QuoteSpec(tee_tcb_svn=bytes([3, 0, 6]) + bytes(13))
    assert _status(dev_trust, pki, [newer, older], spec=spec)["tcb_status"] == "UpToDate"


def _identity(levels, *, version: int = 1, mrsigner: str = "00" * 48) -> dict:
    return {
        "id": f"TDX_{version:02X}",
        "mrsigner": mrsigner,
        "attributes": "00" * 8,
        "attributesMask": "FF" * 8,
        "tcbLevels": [
            {"tcb": {"isvsvn": svn}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status}
            | ({"advisoryIDs": ["SA-MODULE"]} if status != "UpToDate" else {})
            for svn, status in levels
        ],
    }


# TDX module major version 1, SVN 6; TDX components from index 2 only (2 >= 2).
MODULE_SPEC = QuoteSpec(tee_tcb_svn=bytes([6, 1, 5]) + bytes(13))
MODULE_LEVEL_TDX = (9, 9, 5) + (0,) * 13  # bytes 0..1 would fail if they were compared


def test_module_identity_up_to_date(dev_trust, pki) -> None:
    platform = _status(
        dev_trust,
        pki,
        [tcb_level("UpToDate", tdx=MODULE_LEVEL_TDX)],
        spec=MODULE_SPEC,
        identities=[_identity([(4, "UpToDate"), (2, "OutOfDate")])],
    )
    assert platform["tcb_status"] == "UpToDate"
    assert platform["tdx_module_tcb_status"] == "UpToDate"


@pytest.mark.parametrize(
    ("platform_status", "expected"),
    [
        ("UpToDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDateConfigurationNeeded"),
    ],
)
def test_out_of_date_module_converges(dev_trust, pki, platform_status, expected) -> None:
    platform = _status(
        dev_trust,
        pki,
        [tcb_level(platform_status, tdx=MODULE_LEVEL_TDX)],
        spec=MODULE_SPEC,
        identities=[_identity([(7, "UpToDate"), (2, "OutOfDate")])],
    )
    assert platform["tcb_status"] == expected
    assert platform["tdx_module_tcb_status"] == "OutOfDate"
    assert "SA-MODULE" in platform["advisory_ids"]


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (_identity([(2, "Revoked")]), "Revoked"),                        # revoked module
        (_identity([(2, "UpToDate")], version=3), "TDX_01"),              # no identity for it
        (_identity([(7, "UpToDate")]), "matches no level"),               # SVN below every level
    ],
    ids=["revoked", "missing-identity", "svn-below-every-level"],
)
def test_bad_module_tcb_is_rejected(dev_trust, pki, identity, reason) -> None:
    with pytest.raises(EvidenceVerificationError, match=reason):
        _status(
            dev_trust,
            pki,
            [tcb_level("UpToDate", tdx=MODULE_LEVEL_TDX)],
            spec=MODULE_SPEC,
            identities=[identity],
        )


def test_mrsignerseam_mismatch_is_rejected(dev_trust, pki) -> None:
    with pytest.raises(EvidenceVerificationError, match="MRSIGNERSEAM"):
        _status(
            dev_trust, pki, [tcb_level("UpToDate")], spec=QuoteSpec(mr_signer_seam=b"\x01" * 48)
        )


def test_seam_attributes_under_mask(dev_trust, pki) -> None:
    spec = QuoteSpec(seam_attributes=b"\x00" * 7 + b"\x01")
    with pytest.raises(EvidenceVerificationError, match="SEAMATTRIBUTES"):
        _status(dev_trust, pki, [tcb_level("UpToDate")], spec=spec)


@pytest.mark.parametrize(
    ("platform_status", "expected"),
    [
        ("UpToDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDateConfigurationNeeded"),
        ("OutOfDate", "OutOfDate"),
    ],
)
def test_out_of_date_qe_converges(dev_trust, pki, platform_status, expected) -> None:
    qe = build_qe_identity([(5, "UpToDate"), (3, "OutOfDate")], advisories=("SA-QE",))
    platform = _status(dev_trust, pki, [tcb_level(platform_status)], qe=qe)
    assert platform["tcb_status"] == expected
    assert platform["qe_tcb_status"] == "OutOfDate"
    assert "SA-QE" in platform["advisory_ids"]


def test_revoked_qe_is_rejected(dev_trust, pki) -> None:
    qe = build_qe_identity([(5, "UpToDate"), (4, "Revoked")])
    with pytest.raises(EvidenceVerificationError, match="Revoked"):
        _status(dev_trust, pki, [tcb_level("UpToDate")], qe=qe)


def test_qe_svn_below_every_level_is_rejected(dev_trust, pki) -> None:
    qe = build_qe_identity([(8, "UpToDate")])
    with pytest.raises(EvidenceVerificationError, match="QE ISVSVN"):
        _status(dev_trust, pki, [tcb_level("UpToDate")], qe=qe)


def test_fmspc_mismatch_is_rejected(dev_trust, pki) -> None:
    """Collateral for another platform (FMSPC) must not grade this one."""
    collateral = build_collateral(
        pki, build_tcb_info([tcb_level("UpToDate")], fmspc=b"\x11" * 6), build_qe_identity()
    )
    with pytest.raises(EvidenceVerificationError, match="FMSPC"):
        TdxVerifier(dev_trust, clock_at()).evaluate(
            build_quote(pki).data, REPORT_DATA, endorsements={"collateral": collateral}
        )


def test_convergence_table() -> None:
    every = list(TcbStatus)
    for status in every:
        assert converge_with_tdx_module(status, None) is status
        assert converge_with_qe(status, "UpToDate") is status
        assert converge_with_qe(status, "Revoked") is TcbStatus.REVOKED
    assert converge_with_qe(TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED, "OutOfDate") is (
        TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    )
    assert converge_with_tdx_module(TcbStatus.REVOKED, TcbStatus.OUT_OF_DATE) is TcbStatus.REVOKED


def test_parsed_levels_keep_their_order() -> None:
    import json

    info = build_tcb_info([tcb_level("UpToDate"), tcb_level("OutOfDate", pce_svn=5)])
    parsed = parse_tcb_info(json.dumps(info).encode())
    assert [level.status for level in parsed.tcb_levels] == ["UpToDate", "OutOfDate"]
    assert parsed.tcb_levels[1].pce_svn == 5
    identity = parse_qe_identity(json.dumps(build_qe_identity()).encode())
    assert identity.mr_signer.hex().startswith("dc9e2a7c")
