"""Claims: validation at construction, immutability, JSON form."""

from __future__ import annotations

import json

import pytest

from keybroker.attestation import Claims


def _claims(**overrides: object) -> Claims:
    values: dict[str, object] = {
        "tee": "sev-snp", "report_version": 2, "debug": False, "measurement": "ab" * 48,
        "report_data": bytes(64), "product": "Milan", "signing_key": "vcek",
        "tcb": {"bootloader": 1, "tee": 0, "snp": 8, "microcode": 115}, "simulated": True,
        "platform": {"smt": True, "chip_id": "00" * 64, "nested": {"a": [1, 2]}},
        "raw": {"version": 2, "blob": b"\x01\x02"},
    }
    values.update(overrides)
    return Claims(**values)  # type: ignore[arg-type]


def test_to_json_is_plain_json() -> None:
    document = _claims().to_json()
    assert json.loads(json.dumps(document)) == document
    assert document["report_data"] == "00" * 64
    assert document["raw"]["blob"] == "0102"
    assert document["platform"]["nested"] == {"a": [1, 2]}


def test_claims_are_read_only() -> None:
    claims = _claims()
    with pytest.raises(TypeError):
        claims.tcb["snp"] = 99  # type: ignore[index]
    with pytest.raises(TypeError):
        claims.platform["smt"] = False  # type: ignore[index]
    with pytest.raises(AttributeError):
        claims.debug = True  # type: ignore[misc]


@pytest.mark.parametrize(("field", "value"), [
    ("tee", "sgx"), ("report_version", -1), ("debug", 1), ("measurement", "ABCD"),
    ("measurement", "abc"), ("report_data", bytes(63)), ("tcb", {"snp": -1}),
    ("raw", {"bad": object()}),
])
def test_invalid_claims_are_refused(field: str, value: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        _claims(**{field: value})
