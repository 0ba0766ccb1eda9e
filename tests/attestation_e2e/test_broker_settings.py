"""The broker's ``attestation:`` settings and the verifiers `build_verifiers` makes from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_workers.evidence.simulated_tdx import DEV_TDX_ROOT_FILE, create_dev_tdx_chain
from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    TrustStoreError,
)
from keybroker.attestation.settings import AttestationSettings
from keybroker.attestation.tdx.trust import INTEL_ROOT_FILENAME, certificate_fingerprint
from keybroker.config import BROKER_SETTINGS_FILE, BrokerSettings, ConfigError, init_state
from keybroker.policy import ReleasePolicy
from keybroker.service.verifiers import (
    MaaIssuers,
    TrustMaterial,
    build_verifiers,
    unverified_token_payload,
    verifiers_from_material,
)
from tests.attestation_cloud.support import mint_token, new_rsa_key
from tests.attestation_tdx.builder import make_pki

ISSUER = "https://sealbeam-test.weu.attest.azure.net"


def _state_with(tmp_path: Path, attestation: dict, *, allow_simulated: bool,
                tees: tuple[str, ...] = ("sev-snp",)) -> BrokerSettings:
    settings = init_state(tmp_path / "state")
    document = yaml.safe_load(settings.policy_path.read_text())
    document["allow_simulated"] = allow_simulated
    document["rules"][0]["tee"] = list(tees)
    settings.policy_path.write_text(yaml.safe_dump(document))
    path = settings.state_dir / BROKER_SETTINGS_FILE
    broker_yaml = yaml.safe_load(path.read_text())
    broker_yaml["attestation"] = attestation
    path.write_text(yaml.safe_dump(broker_yaml))
    return BrokerSettings.load(path)


def test_demo_state_builds_sev_snp_only(tmp_path: Path) -> None:
    settings = init_state(tmp_path / "state")
    verifiers = build_verifiers(settings, ReleasePolicy.load(settings.policy_path))
    assert sorted(verifiers) == ["sev-snp"]
    assert settings.attestation.maa_issuers == ()


def test_every_tee_from_broker_yaml(tmp_path: Path) -> None:
    pki = make_pki()
    intel = tmp_path / "intel"
    intel.mkdir()
    (intel / INTEL_ROOT_FILENAME).write_bytes(pki.root.public_bytes(Encoding.PEM))
    create_dev_tdx_chain(tmp_path / "dev-tdx")
    attestation = {
        "amd_kds_cache_dir": "../kds", "amd_kds_offline": True,
        "intel_root_dir": "../intel",
        "extra_intel_root_pins": [certificate_fingerprint(pki.root)],
        "tdx_collateral": "../dev-tdx/collateral.json",
        "tdx_dev_root": f"../dev-tdx/{DEV_TDX_ROOT_FILE}",
        "maa_issuers": [ISSUER, "https://other.eus.attest.azure.net"],
        "confidential_space_audience": "https://broker.sealbeam.test",
        "jwks_cache_dir": "../jwks",
    }
    every_tee = ("sev-snp", "tdx", "azure-cvm", "maa", "confidential-space")
    settings = _state_with(tmp_path, attestation, allow_simulated=True, tees=every_tee)
    assert settings.attestation.intel_root_dir == (tmp_path / "intel").resolve()
    again = BrokerSettings.from_mapping(settings.to_mapping(), base_dir=settings.state_dir)
    assert again.attestation == settings.attestation
    policy = ReleasePolicy.load(settings.policy_path)
    verifiers = build_verifiers(settings, policy)
    assert sorted(verifiers) == sorted(every_tee)
    assert isinstance(verifiers["maa"], MaaIssuers)
    only_snp = _state_with(tmp_path / "again", attestation, allow_simulated=True)
    assert sorted(build_verifiers(only_snp, ReleasePolicy.load(only_snp.policy_path))) == [
        "sev-snp"]  # configured, but no rule accepts them: no verifier


def test_an_unpinned_intel_root_is_refused_at_startup(tmp_path: Path) -> None:
    pki = make_pki()
    (tmp_path / INTEL_ROOT_FILENAME).write_bytes(pki.root.public_bytes(Encoding.PEM))
    with pytest.raises(Exception, match="not a pinned Intel root"):
        verifiers_from_material(TrustMaterial(tdx_root_dir=tmp_path))


@pytest.mark.parametrize(("attestation", "field"), [
    ({"intel_root": "x"}, "unknown field"),
    ({"amd_kds_offline": "yes"}, "amd_kds_offline"),
    ({"extra_amd_ark_pins": {"ab": "Milan"}}, "extra_amd_ark_pins"),
    ({"extra_amd_ark_pins": {"ab" * 32: "Naples"}}, "extra_amd_ark_pins"),
    ({"extra_amd_ark_pins": ["ab" * 32]}, "extra_amd_ark_pins"),
    ({"extra_intel_root_pins": ["AB" * 32]}, "extra_intel_root_pins"),
    ({"maa_issuers": ["http://maa.example"]}, "maa_issuers"),
    ({"maa_issuers": "https://maa.example"}, "maa_issuers"),
    ({"confidential_space_audience": 7}, "confidential_space_audience"),
    ({"tdx_collateral": ""}, "tdx_collateral"),
    ([], "attestation: expected a mapping"),
])
def test_bad_attestation_settings_name_the_field(tmp_path: Path, attestation: object,
                                                 field: str) -> None:
    with pytest.raises(TrustStoreError, match=field):
        AttestationSettings.from_mapping(attestation, base_dir=tmp_path)


def test_broker_yaml_reports_bad_attestation_settings_as_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"attestation\.maa_issuers"):
        _state_with(tmp_path, {"maa_issuers": ["http://maa.example"]}, allow_simulated=False)


def test_maa_issuers_pick_the_verifier_by_the_tokens_issuer() -> None:
    token = mint_token(new_rsa_key(), {"iss": "https://rogue.attest.azure.net"})
    assert unverified_token_payload(token)["iss"] == "https://rogue.attest.azure.net"
    maa = verifiers_from_material(TrustMaterial(maa_issuers=(ISSUER,)), tees=("maa",))["maa"]
    with pytest.raises(EvidenceVerificationError, match="not a configured MAA instance"):
        maa.evaluate(token, bytes(64), endorsements={})
    for bad in (b"a.b", b"a.!!.c", b"x" * 70_000):
        with pytest.raises(EvidenceFormatError):
            unverified_token_payload(bad)
