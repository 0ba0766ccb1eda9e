"""Hardware evidence providers against fakes: configfs-tsm (a fake tree), /dev/sev-guest."""

from __future__ import annotations

import ctypes
import errno
import struct
from pathlib import Path

import pytest

from enclave_workers.evidence import (
    EvidenceProvider,
    EvidenceUnavailableError,
    SimulatedSnpProvider,
)
from enclave_workers.evidence.configfs_tsm import ConfigfsTsmProvider
from enclave_workers.evidence.sev_guest import (
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    SevGuestProvider,
)
from keybroker.attestation.snp import SnpTrustStore, SnpVerifier, encode_cert_table

REPORT_DATA = b"\x5a" * 64


def _cert_table(simulator: SimulatedSnpProvider) -> bytes:
    return encode_cert_table(simulator.endorsements())


def _fake_entry(tmp_path: Path, *, provider: str = "sev_guest", outblob: bytes,
                auxblob: bytes | None = None):
    entry = tmp_path / "entry"

    def factory(root: Path) -> Path:
        entry.mkdir()
        (entry / "provider").write_text(provider + "\n")
        (entry / "generation").write_text("1\n")
        (entry / "outblob").write_bytes(outblob)
        if auxblob is not None:
            (entry / "auxblob").write_bytes(auxblob)
        return entry

    return entry, factory


def test_configfs_tsm_collects_report_and_certificates(tmp_path: Path, milan_chain: Path) -> None:
    simulator = SimulatedSnpProvider(milan_chain, version=3)
    entry, factory = _fake_entry(tmp_path, outblob=simulator.report(REPORT_DATA),
                                 auxblob=_cert_table(simulator))
    provider = ConfigfsTsmProvider(tmp_path, entry_factory=factory)
    assert isinstance(provider, EvidenceProvider) and provider.simulated is False
    evidence = provider.collect(REPORT_DATA)
    assert (entry / "inblob").read_bytes() == REPORT_DATA
    assert set(evidence.endorsements) == {"vcek", "ask", "ark"}
    verifier = SnpVerifier(SnpTrustStore(allow_simulated=True, dev_chain_dir=milan_chain))
    claims = verifier.evaluate(evidence.evidence, REPORT_DATA, endorsements=evidence.endorsements)
    assert claims.report_version == 3


def test_configfs_tsm_without_auxblob(tmp_path: Path, milan_chain: Path) -> None:
    simulator = SimulatedSnpProvider(milan_chain)
    _, factory = _fake_entry(tmp_path, outblob=simulator.report(REPORT_DATA))
    provider = ConfigfsTsmProvider(tmp_path, privlevel=0, entry_factory=factory)
    evidence = provider.collect(REPORT_DATA)
    assert evidence.endorsements == {}
    assert (tmp_path / "entry" / "privlevel").read_text() == "0"


def test_configfs_tsm_refusals(tmp_path: Path, milan_chain: Path) -> None:
    simulator = SimulatedSnpProvider(milan_chain)
    with pytest.raises(EvidenceUnavailableError, match="not available"):
        ConfigfsTsmProvider(tmp_path / "missing").collect(REPORT_DATA)
    _, factory = _fake_entry(tmp_path / "a", provider="tdx_guest",
                             outblob=simulator.report(REPORT_DATA))
    (tmp_path / "a").mkdir()
    with pytest.raises(EvidenceUnavailableError, match="tdx_guest"):
        ConfigfsTsmProvider(tmp_path / "a", entry_factory=factory).collect(REPORT_DATA)
    _, factory = _fake_entry(tmp_path / "b", outblob=simulator.report(bytes(64)))
    (tmp_path / "b").mkdir()
    with pytest.raises(EvidenceUnavailableError, match="other report_data"):
        ConfigfsTsmProvider(tmp_path / "b", entry_factory=factory).collect(REPORT_DATA)
    _, factory = _fake_entry(tmp_path / "c", outblob=b"\x02" * 100)
    (tmp_path / "c").mkdir()
    with pytest.raises(EvidenceUnavailableError, match="malformed"):
        ConfigfsTsmProvider(tmp_path / "c", entry_factory=factory).collect(REPORT_DATA)


class FakeSevGuest:
    """Answers SNP_GET_REPORT / SNP_GET_EXT_REPORT like the driver, writing into user memory."""

    def __init__(self, simulator: SimulatedSnpProvider, *, table: bytes = b"",
                 needed_cert_len: int = 0, exitinfo2: int = 0) -> None:
        self.simulator = simulator
        self.table = table
        self.needed_cert_len = needed_cert_len
        self.exitinfo2 = exitinfo2
        self.calls: list[int] = []

    def __call__(self, descriptor: int, request_code: int, argument: bytearray) -> int:
        self.calls.append(request_code)
        version, request, response, _ = struct.unpack("<B7xQQQ", bytes(argument))
        assert version == 1
        if self.exitinfo2:
            argument[24:32] = struct.pack("<Q", self.exitinfo2)
            raise OSError(errno.EIO, "Input/output error")
        user_data, vmpl = struct.unpack("<64sI", ctypes.string_at(request, 68))
        assert vmpl == 0
        if request_code == SNP_GET_EXT_REPORT:
            certs_address, certs_len = struct.unpack("<QI", ctypes.string_at(request + 96, 12))
            if certs_len < self.needed_cert_len:
                ctypes.memmove(request + 104, struct.pack("<I", self.needed_cert_len), 4)
                argument[24:32] = struct.pack("<Q", 1 << 32)
                raise OSError(errno.EINVAL, "Invalid argument")
            ctypes.memmove(certs_address, self.table, len(self.table))
        report = self.simulator.report(user_data)
        answer = struct.pack("<II24x", 0, len(report)) + report
        ctypes.memmove(response, answer, len(answer))
        return 0


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return path


def test_sev_guest_extended_report(device: Path, milan_chain: Path) -> None:
    simulator = SimulatedSnpProvider(milan_chain, version=5)
    fake = FakeSevGuest(simulator, table=_cert_table(simulator), needed_cert_len=5 * 4096)
    evidence = SevGuestProvider(device, ioctl=fake).collect(REPORT_DATA)
    assert fake.calls == [SNP_GET_EXT_REPORT, SNP_GET_EXT_REPORT]  # grew the buffer once
    assert set(evidence.endorsements) == {"vcek", "ask", "ark"}
    verifier = SnpVerifier(SnpTrustStore(allow_simulated=True, dev_chain_dir=milan_chain))
    assert verifier.evaluate(evidence.evidence, REPORT_DATA,
                             endorsements=evidence.endorsements).report_version == 5


def test_sev_guest_plain_report(device: Path, milan_chain: Path) -> None:
    fake = FakeSevGuest(SimulatedSnpProvider(milan_chain))
    evidence = SevGuestProvider(device, extended=False, ioctl=fake).collect(REPORT_DATA)
    assert fake.calls == [SNP_GET_REPORT]
    assert evidence.endorsements == {}


def test_sev_guest_errors(tmp_path: Path, device: Path, milan_chain: Path) -> None:
    with pytest.raises(EvidenceUnavailableError, match="not an SEV-SNP guest"):
        SevGuestProvider(tmp_path / "absent").collect(REPORT_DATA)
    fake = FakeSevGuest(SimulatedSnpProvider(milan_chain), exitinfo2=0x16)
    with pytest.raises(EvidenceUnavailableError, match="firmware error 0x16"):
        SevGuestProvider(device, ioctl=fake).collect(REPORT_DATA)
    busy = FakeSevGuest(SimulatedSnpProvider(milan_chain), exitinfo2=2 << 32)
    with pytest.raises(EvidenceUnavailableError, match="busy"):
        SevGuestProvider(device, ioctl=busy).collect(REPORT_DATA)
    with pytest.raises(ValueError):
        SevGuestProvider(device).collect(b"short")
