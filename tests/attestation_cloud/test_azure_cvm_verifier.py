"""`AzureCvmVerifier` end to end: real Azure vectors, built SEV-SNP and TDX evidence."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from keybroker.attestation.azure_cvm import (
    AzureCvmEvidence,
    AzureCvmVerifier,
    evidence_from_az_cvm_vtpm,
    parse_azure_cvm_evidence,
)
from keybroker.attestation.azure_cvm.tpm import TPM_ALG_RSAPSS
from keybroker.attestation.errors import (
    EvidenceFormatError,
    EvidenceVerificationError,
    ReportDataMismatchError,
    TrustStoreError,
)
from keybroker.attestation.snp import SnpTrustStore, SnpVerifier
from keybroker.attestation.tdx import TdxTrustStore, TdxVerifier
from keybroker.attestation.verifier import Verifier
from tests.attestation_cloud.conftest import AZURE_VECTOR_TIME
from tests.attestation_cloud.support import (
    SnpAzureBuilder,
    new_rsa_key,
    quote_for,
    random_report_data,
    runtime_data,
    td_report_for,
    tdx_hcl_report,
)
from tests.attestation_tdx.builder import QuoteSpec, build_quote, clock_at, make_pki


def test_is_a_verifier(azure_verifier: AzureCvmVerifier) -> None:
    assert isinstance(azure_verifier, Verifier) and azure_verifier.tee == "azure-cvm"
    with pytest.raises(TrustStoreError):
        AzureCvmVerifier()


# --- the real SEV-SNP vector: every check passes up to the binding ------------------------
def test_real_azure_snp_evidence_verifies_up_to_the_binding(azure_vectors: Path) -> None:
    evidence = evidence_from_az_cvm_vtpm(
        (azure_vectors / "snp" / "hcl-report.bin").read_bytes(),
        (azure_vectors / "snp" / "tpm-quote.bin").read_bytes())
    verifier = AzureCvmVerifier(snp=SnpVerifier(SnpTrustStore(),
                                                clock=lambda: AZURE_VECTOR_TIME))
    chain = {"vcek-chain": (azure_vectors / "snp" / "vcek-chain.pem").read_bytes()}
    # its user-data is 64 zero bytes, its quote nonce "challenge": the user-data binding
    # holds, the quote's cannot — and that check runs after every authenticity check.
    with pytest.raises(ReportDataMismatchError, match="extraData"):
        verifier.evaluate(evidence.to_bytes(), bytes(64), endorsements=chain)
    with pytest.raises(ReportDataMismatchError, match="user-data"):
        verifier.evaluate(evidence.to_bytes(), b"\x01" * 64, endorsements=chain)
    # a flipped measurement byte in the SNP report breaks its signature first
    hcl = bytearray(evidence.hcl_report)
    hcl[32 + 0x90] ^= 1
    with pytest.raises(EvidenceVerificationError, match="signature"):
        verifier.evaluate(replace(evidence, hcl_report=bytes(hcl)).to_bytes(), bytes(64),
                          endorsements=chain)


# --- built SEV-SNP evidence ------------------------------------------------------------
def test_built_snp_evidence_yields_claims(builder: SnpAzureBuilder,
                                          azure_verifier: AzureCvmVerifier) -> None:
    report_data = random_report_data()
    endorsements = builder.snp.endorsements()
    claims = azure_verifier.evaluate(builder.evidence(report_data), report_data,
                                     endorsements=endorsements)
    assert claims.tee == "azure-cvm" and claims.report_data == report_data
    assert claims.simulated and not claims.debug and claims.product == "Milan"
    assert claims.measurement == builder.snp._template.measurement.hex()
    assert claims.platform["hw"] == "sev-snp"
    assert claims.platform["pcrs"]["7"] == builder.pcrs[7].hex()
    assert claims.platform["vm_configuration"]["secure-boot"] is True
    assert claims.raw["tpm_quote"]["signature_scheme"] == "rsassa"
    json.dumps(claims.to_json())
    pss = azure_verifier.evaluate(builder.evidence(report_data, scheme=TPM_ALG_RSAPSS),
                                  report_data, endorsements=endorsements)
    assert pss.raw["tpm_quote"]["signature_scheme"] == "rsapss"


def test_pcrs_may_come_from_endorsements(builder: SnpAzureBuilder,
                                         azure_verifier: AzureCvmVerifier) -> None:
    report_data = random_report_data()
    evidence = builder.evidence(report_data, pcrs={})
    endorsements = dict(builder.snp.endorsements())
    with pytest.raises(EvidenceVerificationError, match="PCR values missing"):
        azure_verifier.evaluate(evidence, report_data, endorsements=endorsements)
    pcrs = json.dumps({str(i): v.hex() for i, v in builder.pcrs.items()}).encode()
    claims = azure_verifier.evaluate(evidence, report_data,
                                     endorsements={**endorsements, "pcrs": pcrs})
    assert claims.platform["pcrs"]["0"] == builder.pcrs[0].hex()
    wrong = json.dumps({"0": "11" * 32}).encode()
    with pytest.raises(EvidenceVerificationError, match="differs"):
        azure_verifier.evaluate(builder.evidence(report_data), report_data,
                                endorsements={**endorsements, "pcrs": wrong})


def test_wrong_binding_is_a_report_data_mismatch(builder: SnpAzureBuilder,
                                                 azure_verifier: AzureCvmVerifier) -> None:
    report_data = random_report_data()
    endorsements = builder.snp.endorsements()
    with pytest.raises(ReportDataMismatchError, match="user-data"):
        azure_verifier.evaluate(builder.evidence(report_data), random_report_data(),
                                endorsements=endorsements)
    stale_quote = quote_for(builder.ak, random_report_data(), builder.pcrs)
    with pytest.raises(ReportDataMismatchError, match="extraData"):
        azure_verifier.evaluate(builder.evidence(report_data, quote=stale_quote), report_data,
                                endorsements=endorsements)
    no_user_data = builder.hcl_report(None)
    with pytest.raises(ReportDataMismatchError, match="no user-data"):
        azure_verifier.evaluate(builder.evidence(report_data, hcl=no_user_data), report_data,
                                endorsements=endorsements)


def test_tampering_is_caught(builder: SnpAzureBuilder,
                             azure_verifier: AzureCvmVerifier) -> None:
    report_data = random_report_data()
    endorsements = builder.snp.endorsements()
    good = parse_azure_cvm_evidence(builder.evidence(report_data))

    def evaluate(evidence: AzureCvmEvidence) -> None:
        azure_verifier.evaluate(evidence.to_bytes(), report_data, endorsements=endorsements)

    # runtime data swapped for one with another AK: the SNP report no longer hashes it
    other_ak = runtime_data(new_rsa_key().public_key(), report_data)
    hcl = builder.hcl_report(report_data, runtime=other_ak,
                             report_data_override=hashlib.sha256(b"x").digest() + bytes(32))
    with pytest.raises(EvidenceVerificationError, match="runtime data"):
        evaluate(replace(good, hcl_report=hcl))
    # a consistent HCL report whose AK did not sign the quote
    with pytest.raises(EvidenceVerificationError, match="attestation key"):
        evaluate(replace(good, hcl_report=builder.hcl_report(report_data, runtime=other_ak)))
    # a flipped bit in the quote's signed bytes
    attest = bytearray(good.tpm_attest)
    attest[20] ^= 0x01
    with pytest.raises(EvidenceVerificationError):
        evaluate(replace(good, tpm_attest=bytes(attest)))
    # a wrong PCR value
    with pytest.raises(EvidenceVerificationError, match="pcrDigest"):
        evaluate(replace(good, pcrs={**good.pcrs, 3: bytes(32)}))
    # a TD quote on SEV-SNP evidence
    with pytest.raises(EvidenceFormatError, match="td_quote"):
        evaluate(replace(good, td_quote=b"q"))
    # unknown endorsement names
    with pytest.raises(EvidenceFormatError, match="unknown Azure CVM endorsements"):
        azure_verifier.evaluate(good.to_bytes(), report_data, endorsements={"vlek": b""})


def test_snp_report_from_another_vmpl_is_refused(dev_chain: Path, builder: SnpAzureBuilder,
                                                 azure_verifier: AzureCvmVerifier) -> None:
    from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider

    vmpl2 = SnpAzureBuilder(SimulatedSnpProvider(dev_chain, vmpl=2), builder.ak)
    report_data = random_report_data()
    with pytest.raises(EvidenceVerificationError, match="VMPL 2"):
        azure_verifier.evaluate(vmpl2.evidence(report_data), report_data,
                                endorsements=vmpl2.snp.endorsements())


def test_production_trust_refuses_the_dev_chain(builder: SnpAzureBuilder) -> None:
    verifier = AzureCvmVerifier(snp=SnpVerifier(SnpTrustStore()))
    report_data = random_report_data()
    with pytest.raises(EvidenceVerificationError):
        verifier.evaluate(builder.evidence(report_data), report_data,
                          endorsements=builder.snp.endorsements())


# --- built TDX evidence -------------------------------------------------------------
@pytest.fixture(scope="module")
def tdx_setup():
    pki = make_pki()
    return pki, TdxVerifier(TdxTrustStore(dev_roots=[pki.root]), clock=clock_at())


def _tdx_evidence(builder: SnpAzureBuilder, pki, report_data: bytes, *,
                  mismatch_mrtd: bool = False) -> bytes:
    runtime = runtime_data(builder.ak.public_key(), report_data)
    spec = QuoteSpec(report_data=hashlib.sha256(runtime).digest() + bytes(32))
    td_report = td_report_for(replace(spec, mr_td=b"\x99" * 48) if mismatch_mrtd else spec)
    quote = build_quote(pki, spec).data
    attest, signature = quote_for(builder.ak, report_data, builder.pcrs)
    return AzureCvmEvidence(hcl_report=tdx_hcl_report(td_report, runtime), tpm_attest=attest,
                            tpm_signature=signature, pcrs=builder.pcrs,
                            td_quote=quote).to_bytes()


def test_built_tdx_evidence_yields_claims(builder: SnpAzureBuilder, tdx_setup) -> None:
    pki, tdx = tdx_setup
    verifier = AzureCvmVerifier(tdx=tdx)
    report_data = random_report_data()
    claims = verifier.evaluate(_tdx_evidence(builder, pki, report_data), report_data,
                               endorsements={})
    assert claims.platform["hw"] == "tdx" and claims.measurement == ("11" * 48)
    assert claims.simulated and claims.report_data == report_data
    with pytest.raises(EvidenceVerificationError, match="mr_td"):
        verifier.evaluate(_tdx_evidence(builder, pki, report_data, mismatch_mrtd=True),
                          report_data, endorsements={})
    with pytest.raises(TrustStoreError, match="SEV-SNP"):
        verifier.evaluate(builder.evidence(report_data), report_data, endorsements={})
    without_quote = replace(parse_azure_cvm_evidence(_tdx_evidence(builder, pki, report_data)),
                            td_quote=None)
    with pytest.raises(EvidenceFormatError, match="needs a td_quote"):
        verifier.evaluate(without_quote.to_bytes(), report_data, endorsements={})
