"""`ConfigfsTsmTdxProvider` against a fake configfs-tsm tree serving simulated TD quotes, its
wiring into `sealbeam attest collect --provider configfs-tsm-tdx`, and the pipeline's
hardware ``--tee`` choices."""

from __future__ import annotations

import argparse
import json
from pathlib import Path, PosixPath

import pytest
from cryptography import x509

from enclave_workers.evidence import EvidenceProvider, EvidenceUnavailableError, configfs_tsm
from enclave_workers.evidence.configfs_tsm import ConfigfsTsmProvider, ConfigfsTsmTdxProvider
from enclave_workers.evidence.sev_guest import SevGuestProvider
from enclave_workers.evidence.simulated_tdx import (
    DEV_MRTD,
    DEV_TDX_ROOT_FILE,
    SimulatedTdxProvider,
    create_dev_tdx_chain,
)
from keybroker.attestation.tdx import TdxTrustStore, TdxVerifier
from keybroker.attestation.tdx.quote import MAX_QUOTE_SIZE
from pipelines.commands import attest
from transforms.errors import TransformConfigError
from transforms.tee import SUPPORTED_TEES, TeeSettings, make_evidence_provider

REPORT_DATA = b"\x6b" * 64


@pytest.fixture(scope="module")
def tdx_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dev-tdx")
    create_dev_tdx_chain(directory)
    return directory


@pytest.fixture(scope="module")
def simulator(tdx_chain: Path) -> SimulatedTdxProvider:
    return SimulatedTdxProvider(tdx_chain, version=4)


class ConfigfsDir(PosixPath):
    """A report entry directory that, like configfs, takes its attributes with it on rmdir
    (remembering what was written to inblob, for the test to check)."""

    removed_inblob: bytes | None = None

    def rmdir(self) -> None:
        inblob = self / "inblob"
        type(self).removed_inblob = inblob.read_bytes() if inblob.exists() else None
        for child in self.iterdir():
            child.unlink()
        super().rmdir()


class FakeTsmEntry:
    """Makes one report entry like the kernel would, answering with a fixed outblob."""

    def __init__(self, root: Path, *, provider: str = "tdx_guest", outblob: bytes) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.entry = ConfigfsDir(root / "entry")
        self.provider = provider
        self.outblob = outblob

    def __call__(self, root: Path) -> Path:
        assert root == self.root
        ConfigfsDir.removed_inblob = None
        self.entry.mkdir()
        (self.entry / "provider").write_text(self.provider + "\n")
        (self.entry / "generation").write_text("1\n")
        (self.entry / "outblob").write_bytes(self.outblob)
        return self.entry


def dev_verifier(tdx_chain: Path) -> TdxVerifier:
    root = x509.load_pem_x509_certificate((tdx_chain / DEV_TDX_ROOT_FILE).read_bytes())
    return TdxVerifier(TdxTrustStore(dev_roots=[root]))


def test_collects_a_td_quote_that_verifies(tmp_path: Path, tdx_chain: Path,
                                           simulator: SimulatedTdxProvider) -> None:
    quote = simulator.quote(REPORT_DATA)
    fake = FakeTsmEntry(tmp_path / "tsm", outblob=quote)
    provider = ConfigfsTsmTdxProvider(fake.root, entry_factory=fake)
    assert isinstance(provider, EvidenceProvider)
    assert provider.tee == "tdx" and provider.simulated is False
    evidence = provider.collect(REPORT_DATA)
    assert evidence.tee == "tdx" and evidence.evidence == quote and evidence.endorsements == {}
    assert ConfigfsDir.removed_inblob == REPORT_DATA  # asked for it, then removed the entry
    assert not fake.entry.exists()
    claims = dev_verifier(tdx_chain).evaluate(evidence.evidence, REPORT_DATA)
    assert claims.measurement == DEV_MRTD and claims.report_data == REPORT_DATA


def test_refuses_another_tee_and_another_binding(tmp_path: Path,
                                                 simulator: SimulatedTdxProvider) -> None:
    quote = simulator.quote(REPORT_DATA)
    sev = FakeTsmEntry(tmp_path / "sev", provider="sev_guest", outblob=quote)
    with pytest.raises(EvidenceUnavailableError, match=r"'sev_guest', not 'tdx_guest' \(not TDX\)"):
        ConfigfsTsmTdxProvider(sev.root, entry_factory=sev).collect(REPORT_DATA)
    other = FakeTsmEntry(tmp_path / "other", outblob=simulator.quote(bytes(64)))
    with pytest.raises(EvidenceUnavailableError, match="quote for other report_data"):
        ConfigfsTsmTdxProvider(other.root, entry_factory=other).collect(REPORT_DATA)
    # and the SEV-SNP provider refuses the TDX kernel provider
    tdx = FakeTsmEntry(tmp_path / "tdx", outblob=quote)
    with pytest.raises(EvidenceUnavailableError, match="'tdx_guest', not 'sev_guest'"):
        ConfigfsTsmProvider(tdx.root, entry_factory=tdx).collect(REPORT_DATA)


def test_refuses_malformed_and_oversized_outblobs(tmp_path: Path,
                                                  simulator: SimulatedTdxProvider) -> None:
    quote = simulator.quote(REPORT_DATA)
    truncated = FakeTsmEntry(tmp_path / "short", outblob=quote[:200])
    with pytest.raises(EvidenceUnavailableError, match=r"malformed evidence: TDX quote"):
        ConfigfsTsmTdxProvider(truncated.root, entry_factory=truncated).collect(REPORT_DATA)
    huge = FakeTsmEntry(tmp_path / "huge", outblob=quote + bytes(MAX_QUOTE_SIZE))
    with pytest.raises(EvidenceUnavailableError, match=f"outblob is over {MAX_QUOTE_SIZE}"):
        ConfigfsTsmTdxProvider(huge.root, entry_factory=huge).collect(REPORT_DATA)
    empty = FakeTsmEntry(tmp_path / "empty", outblob=b"")
    with pytest.raises(EvidenceUnavailableError, match="malformed"):
        ConfigfsTsmTdxProvider(empty.root, entry_factory=empty).collect(REPORT_DATA)


def test_refuses_a_racing_writer_and_a_missing_interface(tmp_path: Path,
                                                         simulator: SimulatedTdxProvider
                                                         ) -> None:
    fake = FakeTsmEntry(tmp_path / "tsm", outblob=simulator.quote(REPORT_DATA))

    def racing_read(entry: Path, name: str, limit: int, *, required: bool = True) -> bytes:
        data = original(entry, name, limit, required=required)
        if name == "generation":
            (entry / "generation").write_text(f"{int(data) + 1}\n")
        return data

    original = configfs_tsm._read_attribute
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(configfs_tsm, "_read_attribute", racing_read)
        with pytest.raises(EvidenceUnavailableError, match="changed while reading"):
            ConfigfsTsmTdxProvider(fake.root, entry_factory=fake).collect(REPORT_DATA)
    assert not fake.entry.exists()
    with pytest.raises(EvidenceUnavailableError, match="not available"):
        ConfigfsTsmTdxProvider(tmp_path / "absent").collect(REPORT_DATA)
    with pytest.raises(ValueError, match="64 bytes"):
        ConfigfsTsmTdxProvider(fake.root, entry_factory=fake).collect(b"short")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    attest.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_attest_collect_configfs_tsm_tdx_then_verify(
    tmp_path: Path, tdx_chain: Path, simulator: SimulatedTdxProvider,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    fake = FakeTsmEntry(tmp_path / "tsm", outblob=simulator.quote(REPORT_DATA))
    monkeypatch.setattr(configfs_tsm, "ConfigfsTsmTdxProvider",
                        lambda: ConfigfsTsmTdxProvider(fake.root, entry_factory=fake))
    out = tmp_path / "quote.dat"
    assert run_cli(["attest", "collect", "--provider", "configfs-tsm-tdx", "--report-data",
                    REPORT_DATA.hex(), "--out", str(out)]) == 0
    collected = json.loads(capsys.readouterr().out)
    assert collected == {"tee": "tdx", "simulated": False, "evidence": str(out),
                         "endorsements": []}
    assert run_cli(["attest", "verify", "--type", "tdx", "--evidence", str(out),
                    "--report-data", REPORT_DATA.hex(), "--dev-chain", str(tdx_chain),
                    "--allow-simulated"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["verified"] is True and verified["claims"]["measurement"] == DEV_MRTD


def test_attest_collect_configfs_tsm_tdx_without_the_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(configfs_tsm, "ConfigfsTsmTdxProvider",
                        lambda: ConfigfsTsmTdxProvider(tmp_path / "no-tsm"))
    assert run_cli(["attest", "collect", "--provider", "configfs-tsm-tdx",
                    "--out", str(tmp_path / "q")]) == 2
    assert "configfs-tsm is not available" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize(("tee", "provider_type"), [
    ("configfs-tsm", ConfigfsTsmProvider),
    ("configfs-tsm-tdx", ConfigfsTsmTdxProvider),
    ("sev-guest", SevGuestProvider),
])
def test_pipeline_tee_choices_build_the_hardware_providers(tee: str,
                                                           provider_type: type) -> None:
    assert tee in SUPPORTED_TEES and SUPPORTED_TEES[0] == "simulated-sev-snp"
    provider = make_evidence_provider(TeeSettings(tee))
    assert type(provider) is provider_type and provider.simulated is False
    with pytest.raises(TransformConfigError, match="dev_tee_dir is for the simulated TEE"):
        TeeSettings(tee, dev_tee_dir="/tmp/dev-tee")
