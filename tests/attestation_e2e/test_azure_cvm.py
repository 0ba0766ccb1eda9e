"""Azure confidential VMs end to end over HTTP: HCL report + vTPM quote from the real provider.

The worker side is `AzureVtpmProvider` over a fake vTPM (tests/attestation_cloud/support.py)
whose HCL report embeds a SEV-SNP report signed under pinned test roots, and a fake IMDS that
hands out the VCEK chain; the broker verifies the SNP report, the vTPM quote and both
bindings, then the policy checks hardware and VM configuration.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enclave_workers.evidence.azure_vtpm import AzureImdsClient, AzureVtpmProvider
from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from keybroker.service.server import RunningBroker
from tests.attestation_cloud.support import FakeVtpm, SnpAzureBuilder, new_rsa_key, runtime_data
from tests.attestation_e2e.cloud import FakeImds
from tests.attestation_e2e.conftest import PinnedChain
from tests.attestation_e2e.support import (
    attest_once,
    expect_denied,
    open_released_key,
    release_rule,
    serve_broker,
)


class ConsoleEnabledBuilder(SnpAzureBuilder):
    """A CVM whose HCL runtime data says the serial console is enabled."""

    def hcl_report(self, user_data, **options):  # type: ignore[override]
        runtime = runtime_data(self.ak.public_key(), user_data,
                               **{"vm-configuration": {"console-enabled": True,
                                                       "secure-boot": True}})
        return super().hcl_report(user_data, runtime=runtime)


def azure_provider(chain: PinnedChain, builder_type: type[SnpAzureBuilder] = SnpAzureBuilder,
                   **snp_options) -> AzureVtpmProvider:
    builder = builder_type(SimulatedSnpProvider(chain.chain_dir, **snp_options), new_rsa_key())
    imds = FakeImds(chain.chain_dir)
    return AzureVtpmProvider(FakeVtpm(builder), imds=AzureImdsClient(get=imds.get,
                                                                     post=imds.post))


@pytest.fixture(scope="module")
def azure_broker(tmp_path_factory: pytest.TempPathFactory,
                 pinned_milan: PinnedChain) -> Iterator[RunningBroker]:
    rules = [release_rule("azure-snp", ["azure-cvm"], [DEV_MEASUREMENT], hardware=["sev-snp"],
                          vm_configuration={"secure-boot": True, "console-enabled": False},
                          max_vmpl=0)]
    with serve_broker(tmp_path_factory.mktemp("azure") / "state", rules,
                      settings_changes={"snp_trust_dir": pinned_milan.trust_dir},
                      attestation={"extra_amd_ark_pins": pinned_milan.pins}) as broker:
        yield broker


def test_azure_cvm_gets_and_opens_a_key(azure_broker: RunningBroker,
                                        pinned_milan: PinnedChain) -> None:
    attested = open_released_key(azure_broker, azure_provider(pinned_milan))
    assert attested.details["claims"]["tee"] == "azure-cvm"
    assert attested.details["simulated"] is False and attested.details["rule"] == "azure-snp"
    session = attest_once(azure_broker, azure_provider(pinned_milan))
    assert session.claims["platform"]["hw"] == "sev-snp"
    assert session.claims["platform"]["vm_configuration"]["secure-boot"] is True


def test_azure_cvm_denials_are_recorded(azure_broker: RunningBroker,
                                        pinned_milan: PinnedChain) -> None:
    expect_denied(azure_broker, azure_provider(pinned_milan, ConsoleEnabledBuilder), 403,
                  "vm_configuration console-enabled is true, rule azure-snp requires false")
    expect_denied(azure_broker, azure_provider(pinned_milan, debug=True), 403,
                  "debug enabled, not allowed by rule azure-snp")
    expect_denied(azure_broker, azure_provider(pinned_milan, measurement="cd" * 48), 403,
                  "measurement not allowed by rule azure-snp")
