"""AMD KDS fetcher: URL forms, injected getter, cache, offline error, verifier fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_workers.evidence import SimulatedSnpProvider
from keybroker.attestation import EndorsementUnavailableError
from keybroker.attestation.snp import (
    AmdKdsClient,
    KdsUnavailableError,
    SnpTrustStore,
    SnpVerifier,
    parse_report,
)
from keybroker.attestation.snp.certificates import spki_sha256
from keybroker.attestation.snp.tcb import decode_tcb

REPORT_DATA = b"\x11" * 64


class FakeKds:
    """Prepared answers by URL; fails the test if one goes unused or an unknown URL is asked."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[str, float]] = []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls.append((url, timeout))
        if url not in self.answers:
            raise ConnectionError(f"unexpected KDS URL {url}")
        return self.answers[url]

    def assert_all_used(self) -> None:
        asked = {url for url, _ in self.calls}
        assert asked == set(self.answers), f"unused KDS answers: {set(self.answers) - asked}"


def _pem(chain: Path, name: str) -> bytes:
    return (chain / name).read_bytes()


def _der(chain: Path, name: str) -> bytes:
    return x509.load_pem_x509_certificate(_pem(chain, name)).public_bytes(Encoding.DER)


def test_urls() -> None:
    client = AmdKdsClient(FakeKds({}))
    assert client.cert_chain_url("Milan") == "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain"
    assert client.cert_chain_url("Turin", "vlek") == \
        "https://kdsintf.amd.com/vlek/v1/Turin/cert_chain"
    hwid = bytes(range(64))
    milan = client.vcek_url("Milan", hwid, {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115})
    assert milan == ("https://kdsintf.amd.com/vcek/v1/Milan/" + hwid.hex()
                     + "?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115")
    turin = client.vcek_url("Turin", hwid, {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4,
                                            "microcode": 5})
    assert turin == ("https://kdsintf.amd.com/vcek/v1/Turin/0001020304050607"
                     "?fmcSPL=1&blSPL=2&teeSPL=3&snpSPL=4&ucodeSPL=5")
    with pytest.raises(ValueError):
        client.cert_chain_url("Naples")
    with pytest.raises(ValueError):
        client.vcek_url("Milan", hwid, {"bootloader": 3})


def test_offline_is_a_clear_error_and_cache_serves_later(milan_chain: Path, tmp_path: Path) -> None:
    url = "https://kdsintf.amd.com/vcek/v1/Milan/cert_chain"
    offline = AmdKdsClient(FakeKds({}), cache_dir=tmp_path)
    with pytest.raises(KdsUnavailableError, match="fetch failed"):
        offline.cert_chain("Milan")
    assert isinstance(KdsUnavailableError("x"), EndorsementUnavailableError)
    online = FakeKds({url: _pem(milan_chain, "ask.pem") + _pem(milan_chain, "ark.pem")})
    ask, ark = AmdKdsClient(online, cache_dir=tmp_path, timeout=3.0).cert_chain("Milan")
    online.assert_all_used()
    assert online.calls == [(url, 3.0)]
    assert (ask, ark) == (_der(milan_chain, "ask.pem"), _der(milan_chain, "ark.pem"))
    assert AmdKdsClient(FakeKds({}), cache_dir=tmp_path).cert_chain("Milan") == (ask, ark)


def test_verifier_fetches_missing_vcek(milan_chain: Path) -> None:
    provider = SimulatedSnpProvider(milan_chain, version=3)
    evidence = provider.report(REPORT_DATA)
    report = parse_report(evidence)
    url = AmdKdsClient().vcek_url("Milan", report.chip_id,
                                  decode_tcb(report.reported_tcb, "Milan"))
    fake = FakeKds({url: _der(milan_chain, "vcek.pem")})
    verifier = SnpVerifier(SnpTrustStore(allow_simulated=True, dev_chain_dir=milan_chain),
                           kds=AmdKdsClient(fake))
    claims = verifier.evaluate(evidence, REPORT_DATA, endorsements={})
    fake.assert_all_used()
    assert claims.simulated is True


def test_verifier_fetches_chain_and_checks_it_against_pins(milan_chain: Path,
                                                           other_milan_chain: Path) -> None:
    """No trust dir: the KDS chain is accepted only because its ARK matches a pin."""
    provider = SimulatedSnpProvider(milan_chain, version=5)
    evidence = provider.report(REPORT_DATA)
    report = parse_report(evidence)
    client = AmdKdsClient()
    vcek_url = client.vcek_url("Milan", report.chip_id, decode_tcb(report.reported_tcb, "Milan"))
    chain_url = client.cert_chain_url("Milan")
    ark = x509.load_pem_x509_certificate(_pem(milan_chain, "ark.pem"))
    pinned = SnpTrustStore(ark_pins={spki_sha256(ark): "Milan"})
    fake = FakeKds({vcek_url: _der(milan_chain, "vcek.pem"),
                    chain_url: _pem(milan_chain, "ask.pem") + _pem(milan_chain, "ark.pem")})
    claims = SnpVerifier(pinned, kds=AmdKdsClient(fake)).evaluate(evidence, REPORT_DATA,
                                                                  endorsements={})
    fake.assert_all_used()
    assert claims.simulated is False
    forged = FakeKds({vcek_url: _der(milan_chain, "vcek.pem"),
                      chain_url: _pem(other_milan_chain, "ask.pem")
                      + _pem(other_milan_chain, "ark.pem")})
    with pytest.raises(Exception, match=r"does not verify|not a pinned"):
        SnpVerifier(pinned, kds=AmdKdsClient(forged)).evaluate(evidence, REPORT_DATA,
                                                               endorsements={})


def test_v2_report_without_vcek_cannot_pick_a_kds_product(milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain, version=2).report(REPORT_DATA)
    verifier = SnpVerifier(SnpTrustStore(allow_simulated=True, dev_chain_dir=milan_chain),
                           kds=AmdKdsClient(FakeKds({})))
    with pytest.raises(EndorsementUnavailableError, match="no CPUID"):
        verifier.evaluate(evidence, REPORT_DATA, endorsements={})


def test_kds_offline_during_verification(milan_chain: Path) -> None:
    evidence = SimulatedSnpProvider(milan_chain, version=3).report(REPORT_DATA)
    verifier = SnpVerifier(SnpTrustStore(allow_simulated=True, dev_chain_dir=milan_chain),
                           kds=AmdKdsClient(FakeKds({})))
    with pytest.raises(KdsUnavailableError, match="provide the endorsements"):
        verifier.evaluate(evidence, REPORT_DATA, endorsements={})
