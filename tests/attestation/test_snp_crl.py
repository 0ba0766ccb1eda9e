"""SEV-SNP revocation through AMD's CRLs, with CRLs this test builds and signs itself.

The dev chain's ARK key is not kept by ``create_dev_chain``, so the fixture records the RSA
keys it generates (ARK first, then ASK) and signs CRLs with the ARK key the way AMD does
(RSA-PSS, SHA-384). The getter is a fake that fails the test if a prepared answer is
never fetched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from keybroker.attestation import dev_chain
from keybroker.attestation.errors import EndorsementUnavailableError, EvidenceVerificationError
from keybroker.attestation.snp.cert_checks import amd_pss_padding
from keybroker.attestation.snp.crl import (
    FAIL_OPEN,
    AmdCrlChecker,
    CrlUnavailableError,
    crl_url,
)
from keybroker.attestation.snp.trust import SnpTrustStore
from keybroker.attestation.snp.verifier import SnpVerifier

REPORT_DATA = bytes(range(64))


@dataclass
class DevChain:
    directory: Path
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> DevChain:
    generated: list[rsa.RSAPrivateKey] = []
    original = dev_chain.rsa.generate_private_key

    def recording(*args: object, **kwargs: object) -> rsa.RSAPrivateKey:
        key = original(*args, **kwargs)  # type: ignore[arg-type]
        generated.append(key)
        return key

    directory = tmp_path_factory.mktemp("crl-chain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dev_chain.rsa, "generate_private_key", recording)
        dev_chain.create_dev_chain(directory, product="Milan")

    def load(name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((directory / name).read_bytes())

    ark, ask, vcek = load("ark.pem"), load("ask.pem"), load("vcek.pem")
    ark_key, ask_key = generated[0], generated[1]
    assert ark_key.public_key().public_numbers() == ark.public_key().public_numbers()
    return DevChain(directory, ark_key, ask_key, ark, ask, vcek)


def build_crl(chain: DevChain, *, revoked: tuple[int, ...] = (), signer: rsa.RSAPrivateKey
              | None = None, issuer: x509.Name | None = None, next_update_days: int = 30,
              pem: bool = False) -> bytes:
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer or chain.ark.subject)
        .last_update(now - timedelta(days=1))
        .next_update(now + timedelta(days=next_update_days))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - timedelta(hours=1)).build()
        )
    crl = builder.sign(signer or chain.ark_key, hashes.SHA384(), rsa_padding=amd_pss_padding())
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    return crl.public_bytes(encoding)


@dataclass
class FakeKds:
    """Answers prepared by URL; counts fetches; fails loudly on an unknown URL."""

    answers: dict[str, bytes | Exception]
    fetched: list[str] = field(default_factory=list)

    def __call__(self, url: str, _timeout: float) -> bytes:
        self.fetched.append(url)
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def assert_all_used(self) -> None:
        assert set(self.answers) <= set(self.fetched), "a prepared answer went unused"


def verifier_with(chain: DevChain, getter: Callable[[str, float], bytes], **options: str
                  ) -> SnpVerifier:
    trust = SnpTrustStore(allow_simulated=True, dev_chain_dir=chain.directory)
    return SnpVerifier(trust, revocation=AmdCrlChecker(getter, **options))


def evaluate(chain: DevChain, verifier: SnpVerifier) -> object:
    evidence = SimulatedSnpProvider(chain.directory).collect(REPORT_DATA)
    return verifier.evaluate(evidence.evidence, REPORT_DATA,
                             endorsements=dict(evidence.endorsements))


URL = crl_url("Milan")


def test_a_clean_crl_lets_evidence_through_and_is_cached(chain: DevChain) -> None:
    kds = FakeKds({URL: build_crl(chain, revoked=(12345,))})
    verifier = verifier_with(chain, kds)
    assert evaluate(chain, verifier).simulated
    assert evaluate(chain, verifier).simulated
    assert kds.fetched == [URL]  # fetched once, kept until its next update
    kds.assert_all_used()


@pytest.mark.parametrize("pem", [False, True], ids=["der", "pem"])
def test_a_revoked_ask_or_vcek_is_refused(chain: DevChain, pem: bool) -> None:
    for certificate, role in ((chain.ask, "ASK"), (chain.vcek, "VCEK")):
        kds = FakeKds({URL: build_crl(chain, revoked=(certificate.serial_number,), pem=pem)})
        with pytest.raises(EvidenceVerificationError, match=f"{role} serial .* revoked by AMD"):
            evaluate(chain, verifier_with(chain, kds))
        kds.assert_all_used()


def test_an_unusable_crl_is_its_own_error_fail_closed(chain: DevChain) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "fetch failed": OSError("network down"),
        "not a CRL": b"junk",
        "signed by another key": build_crl(chain, signer=stranger),
        "issued by another name": build_crl(chain, issuer=chain.ask.subject),
        "out of date": build_crl(chain, next_update_days=-1),
    }
    for name, answer in cases.items():
        kds = FakeKds({URL: answer})
        with pytest.raises(CrlUnavailableError) as caught:
            evaluate(chain, verifier_with(chain, kds))
        assert isinstance(caught.value, EndorsementUnavailableError), name  # 503, not 401
        assert "{" not in str(caught.value), name
        kds.assert_all_used()


def test_fail_open_goes_on_unchecked_but_still_refuses_a_revoked_chain(chain: DevChain) -> None:
    down = FakeKds({URL: OSError("network down")})
    assert evaluate(chain, verifier_with(chain, down, mode=FAIL_OPEN)).simulated
    revoked = FakeKds({URL: build_crl(chain, revoked=(chain.ask.serial_number,))})
    with pytest.raises(EvidenceVerificationError, match="ASK serial"):
        evaluate(chain, verifier_with(chain, revoked, mode=FAIL_OPEN))


def test_the_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="revocation mode"):
        AmdCrlChecker(FakeKds({}), mode="sometimes")


def test_broker_settings_turn_the_crl_check_on(chain: DevChain) -> None:
    from keybroker.attestation.errors import TrustStoreError
    from keybroker.attestation.settings import AttestationSettings
    from keybroker.service.verifiers import TrustMaterial, verifiers_from_material

    assert AttestationSettings.from_mapping({"amd_crl": "fail-closed"},
                                            base_dir=chain.directory).amd_crl == "fail-closed"
    with pytest.raises(TrustStoreError, match="amd_crl"):
        AttestationSettings.from_mapping({"amd_crl": "maybe"}, base_dir=chain.directory)
    kds = FakeKds({URL: build_crl(chain, revoked=(chain.vcek.serial_number,))})
    material = TrustMaterial(dev_chain_dir=chain.directory, amd_crl="fail-closed")
    verifier = verifiers_from_material(material, tees=("sev-snp",), kds_getter=kds)["sev-snp"]
    with pytest.raises(EvidenceVerificationError, match="VCEK serial"):
        evaluate(chain, verifier)  # type: ignore[arg-type]
    unchecked = verifiers_from_material(TrustMaterial(dev_chain_dir=chain.directory),
                                        tees=("sev-snp",), kds_getter=kds)["sev-snp"]
    assert evaluate(chain, unchecked)  # type: ignore[arg-type]  # "off" by default
