"""Azure CVM evidence from hardware the broker has no verifier for is a request error, not a
broker fault: ``400 unsupported_tee`` naming the missing verifier (so the client does not
retry it as a transient 5xx), recorded as a denial with that status.

The broker accepts ``azure-cvm`` with only its SEV-SNP verifier (no TDX trust material); the
worker sends well-formed Azure TDX evidence: an HCL report holding a TDREPORT, a signed vTPM
quote bound to the report_data, and a TD quote from the test Intel-like PKI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from enclave_workers.evidence.base import Evidence, check_report_data
from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from keybroker.attestation.azure_cvm import AzureCvmEvidence
from keybroker.client import BrokerError, BrokerUnavailableError
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import (
    new_rsa_key,
    pcr_values,
    quote_for,
    runtime_data,
    td_report_for,
    tdx_hcl_report,
)
from tests.attestation_e2e.support import attest_once, ledger_entries, release_rule, serve_broker
from tests.attestation_tdx.builder import QuoteSpec, build_quote, make_pki


class AzureTdxEvidence:
    """Evidence provider for an Azure TDX CVM (well formed; signed under a test PKI)."""

    tee = "azure-cvm"
    simulated = False

    def __init__(self) -> None:
        self.ak = new_rsa_key()
        self.pcrs = pcr_values()
        self.pki = make_pki()

    def collect(self, report_data: bytes) -> Evidence:
        report_data = check_report_data(report_data)
        runtime = runtime_data(self.ak.public_key(), report_data)
        spec = QuoteSpec(report_data=hashlib.sha256(runtime).digest() + bytes(32))
        attest, signature = quote_for(self.ak, report_data, self.pcrs)
        evidence = AzureCvmEvidence(hcl_report=tdx_hcl_report(td_report_for(spec), runtime),
                                    tpm_attest=attest, tpm_signature=signature, pcrs=self.pcrs,
                                    td_quote=build_quote(self.pki, spec).data)
        return Evidence(tee=self.tee, evidence=evidence.to_bytes())


@pytest.fixture(scope="module")
def snp_only_azure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    rules = [release_rule("azure-any", ["azure-cvm"], [DEV_MEASUREMENT])]
    with serve_broker(tmp_path_factory.mktemp("azure-snp-only") / "state", rules) as broker:
        yield broker


def test_azure_tdx_evidence_without_a_tdx_verifier_is_400_unsupported_tee(
    snp_only_azure_broker: RunningBroker,
) -> None:
    with pytest.raises(BrokerError) as refused:
        attest_once(snp_only_azure_broker, AzureTdxEvidence())
    error = refused.value
    assert not isinstance(error, BrokerUnavailableError)  # not retried as transient
    assert (error.status, error.error) == (400, "unsupported_tee")
    assert "no TDX verifier configured" in str(error)
    denial = [entry for entry in ledger_entries(snp_only_azure_broker)
              if entry.event == "attest"][-1]
    assert denial.decision == "denied"
    assert (denial.details["status"], denial.details["error"]) == (400, "unsupported_tee")
    assert "no TDX verifier configured" in denial.details["reason"]
