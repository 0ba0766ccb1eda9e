"""``sealbeam attest verify`` for every TEE type on built evidence, and ``attest collect``.

Evidence here is made by the tests (dev SEV-SNP chain, Azure HCL + vTPM, MAA and Confidential
Space tokens with a JWKS file, TDX quotes under a generated root that is not pinned), so it
runs without the shared vectors. Truncated or corrupted files always give one line of
reason, never a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from keybroker.attestation.confidential_space import CONFIDENTIAL_SPACE_ISSUER, eat_nonce_for
from keybroker.attestation.tdx.trust import INTEL_ROOT_FILENAME
from pipelines.commands import attest
from tests.attestation_cloud.support import (
    SnpAzureBuilder,
    jwks_document,
    mint_token,
    new_rsa_key,
)
from tests.attestation_tdx.builder import QuoteSpec, build_quote, make_pki

MAA_ISSUER = "https://sealbeam-test.weu.attest.azure.net"
AUDIENCE = "https://broker.sealbeam.test"
TOKEN_KEY = new_rsa_key()
REPORT_DATA = bytes(range(64))


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    attest.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | None, str]:
    code = run_cli(["attest", "verify", *argv])
    output = capsys.readouterr()
    assert "Traceback" not in output.err
    if code == attest.USAGE_EXIT:
        assert output.out == "" and output.err.count("\n") == 1
        assert output.err.startswith("sealbeam: error: ")
        return code, None, output.err
    assert output.err == ""
    return code, json.loads(output.out), ""


@pytest.fixture(scope="module")
def token_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokens")
    (directory / "jwks.json").write_bytes(jwks_document({"k1": TOKEN_KEY}))
    now = time.time()
    maa = {"iss": MAA_ISSUER, "iat": now, "exp": now + 600,
           "x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-cvm",
           "x-ms-runtime": {"user-data": REPORT_DATA.hex().upper()},
           "x-ms-sevsnpvm-launchmeasurement": "ab" * 48, "x-ms-sevsnpvm-is-debuggable": False,
           "x-ms-sevsnpvm-vmpl": 0}
    (directory / "maa.jwt").write_bytes(mint_token(TOKEN_KEY, maa, kid="k1"))
    space = {"iss": CONFIDENTIAL_SPACE_ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
             "eat_nonce": eat_nonce_for(REPORT_DATA), "swname": "CONFIDENTIAL_SPACE",
             "hwmodel": "GCP_INTEL_TDX", "dbgstat": "disabled-since-boot",
             "submods": {"container": {"image_digest": "sha256:" + "5e" * 32},
                         "confidential_space": {"support_attributes": ["STABLE"]}}}
    (directory / "space.jwt").write_bytes(mint_token(TOKEN_KEY, space, kid="k1"))
    return directory


def test_maa_token_with_a_jwks_file(capsys, token_files: Path) -> None:
    argv = ["--type", "maa", "--evidence", str(token_files / "maa.jwt"),
            "--jwks", str(token_files / "jwks.json"), "--issuer", MAA_ISSUER]
    code, result, _ = verify(capsys, *argv)
    assert code == 0 and result["reason"] == "evidence verified (report_data not checked)"
    claims = result["claims"]
    assert claims["tee"] == "maa" and claims["report_data"] == REPORT_DATA.hex()
    assert claims["platform"]["compliance_status"] == "azure-compliant-cvm"
    code, result, _ = verify(capsys, *argv, "--report-data", "00" * 64)
    assert code == 1 and "user-data does not match" in result["reason"]
    code, result, _ = verify(capsys, *argv[:-1], "https://other.attest.azure.net")
    assert code == 1 and "issuer" in result["reason"]
    code, result, _ = verify(capsys, *argv, "--at", "2001-01-01T00:00:00Z")
    assert code == 1 and "in the future" in result["reason"]
    code, _, error = verify(capsys, *argv[:-2])
    assert code == 2 and "--issuer" in error


def test_confidential_space_token_needs_the_report_data(capsys, token_files: Path,
                                                        tmp_path: Path) -> None:
    argv = ["--type", "confidential-space", "--evidence", str(token_files / "space.jwt"),
            "--jwks", str(token_files / "jwks.json"), "--audience", AUDIENCE]
    code, _, error = verify(capsys, *argv)
    assert code == 2 and "--report-data" in error
    code, result, _ = verify(capsys, *argv, "--report-data", REPORT_DATA.hex())
    assert code == 0 and result["claims"]["measurement"] == "5e" * 32
    assert result["claims"]["platform"]["hw"] == "tdx"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
version: 1
rules:
  - name: space
    tee: [confidential-space]
    measurements: ["sha256:{'5e' * 32}"]
    hardware: [sev-snp]
""")
    code, result, _ = verify(capsys, *argv, "--report-data", REPORT_DATA.hex(),
                             "--policy", str(policy))
    assert code == 1 and result["reason"] == "policy: hardware 'tdx' not allowed by rule space"


def test_azure_cvm_built_on_the_dev_chain(capsys, tmp_path: Path, milan_chain: Path) -> None:
    builder = SnpAzureBuilder(SimulatedSnpProvider(milan_chain), new_rsa_key())
    (tmp_path / "evidence.json").write_bytes(builder.evidence(REPORT_DATA))
    chain = b"".join((milan_chain / name).read_bytes() for name in ("vcek.pem", "ask.pem",
                                                                    "ark.pem"))
    (tmp_path / "chain.pem").write_bytes(chain)
    argv = ["--type", "azure-cvm", "--evidence", str(tmp_path / "evidence.json"),
            "--vcek", str(tmp_path / "chain.pem"), "--report-data", REPORT_DATA.hex()]
    code, result, _ = verify(capsys, *argv, "--dev-chain", str(milan_chain), "--allow-simulated")
    assert code == 0 and result["reason"] == "evidence verified"
    claims = result["claims"]
    assert claims["tee"] == "azure-cvm" and claims["simulated"] is True
    assert claims["platform"]["hw"] == "sev-snp" and claims["product"] == "Milan"
    code, result, _ = verify(capsys, *argv)  # the dev root is not trusted by default
    assert code == 1 and "not a pinned AMD root" in result["reason"]
    code, _, error = verify(capsys, *argv, "--td-quote", str(tmp_path / "chain.pem"))
    assert code == 2 and "--td-quote needs --tpm-quote" in error


def test_tdx_quote_under_an_unpinned_root(capsys, tmp_path: Path) -> None:
    pki = make_pki()
    (tmp_path / "quote.dat").write_bytes(build_quote(pki, QuoteSpec()).data)
    (tmp_path / INTEL_ROOT_FILENAME).write_bytes(pki.root.public_bytes(Encoding.PEM))
    argv = ["--type", "tdx", "--evidence", str(tmp_path / "quote.dat"),
            "--at", "2025-01-15T00:00:00Z"]
    code, result, _ = verify(capsys, *argv)
    assert code == 1 and "pinned Intel SGX Root CA" in result["reason"]
    code, _, error = verify(capsys, *argv, "--roots", str(tmp_path))
    assert code == 2 and "not a pinned Intel root" in error


def test_collect_then_verify_simulated_snp_with_the_endorsements_dir(
        capsys, tmp_path: Path, genoa_chain: Path) -> None:
    evidence, endorsements = tmp_path / "evidence.bin", tmp_path / "endorsements"
    assert run_cli(["attest", "collect", "--provider", "simulated-snp", "--chain-dir",
                    str(genoa_chain), "--report-data", REPORT_DATA.hex(), "--version", "5",
                    "--out", str(evidence), "--endorsements-dir", str(endorsements)]) == 0
    collected = json.loads(capsys.readouterr().out)
    assert collected["tee"] == "sev-snp" and collected["simulated"] is True
    assert sorted(Path(path).name for path in collected["endorsements"]) == [
        "ark.der", "ask.der", "vcek.der"]
    code, result, _ = verify(capsys, "--type", "sev-snp", "--evidence", str(evidence),
                             "--endorsements-dir", str(endorsements), "--report-data",
                             REPORT_DATA.hex(), "--dev-chain", str(genoa_chain),
                             "--allow-simulated")
    assert code == 0 and result["claims"]["report_version"] == 5
    assert result["claims"]["product"] == "Genoa"


@pytest.mark.parametrize(("provider", "missing"), [
    ("configfs-tsm", "configfs"), ("sev-guest", "sev-guest"),
    ("confidential-space", "--audience"), ("azure-vtpm", "tpm")])
def test_collect_without_hardware_is_one_line(capsys, tmp_path: Path, provider: str,
                                              missing: str) -> None:
    code = run_cli(["attest", "collect", "--provider", provider, "--out",
                    str(tmp_path / "e.bin")])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("sealbeam: error: ") and error.count("\n") == 1
    assert missing in error.lower() or missing in error


# --- truncated and corrupted files ----------------------------------------------------------
@pytest.fixture(scope="module")
def built_evidence(tmp_path_factory: pytest.TempPathFactory, token_files: Path
                   ) -> dict[str, bytes]:
    from keybroker.attestation.dev_chain import create_dev_chain

    chain = tmp_path_factory.mktemp("fuzz-chain")
    create_dev_chain(chain, product="Milan")
    snp = SimulatedSnpProvider(chain)
    return {
        "sev-snp": snp.report(REPORT_DATA),
        "tdx": build_quote(make_pki(), QuoteSpec()).data,
        "azure-cvm": SnpAzureBuilder(snp, new_rsa_key()).evidence(REPORT_DATA),
        "maa": (token_files / "maa.jwt").read_bytes(),
        "confidential-space": (token_files / "space.jwt").read_bytes(),
    }


TYPE_OPTIONS = {"maa": ["--issuer", MAA_ISSUER], "confidential-space": ["--audience", AUDIENCE]}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tee=st.sampled_from(sorted(attest.TEE_TYPES)), cut=st.integers(0, 6000),
       flip=st.one_of(st.none(), st.integers(0, 6000)))
def test_truncated_or_flipped_evidence_is_one_line(capsys, tmp_path: Path, token_files: Path,
                                                   built_evidence: dict[str, bytes], tee: str,
                                                   cut: int, flip: int | None) -> None:
    data = bytearray(built_evidence[tee][:cut])
    if flip is not None and data:
        data[flip % len(data)] ^= 0x5A
    path = tmp_path / f"{tee}-{hashlib.sha256(data).hexdigest()[:8]}"
    path.write_bytes(bytes(data))
    code, result, _ = verify(capsys, "--type", tee, "--evidence", str(path), "--jwks",
                             str(token_files / "jwks.json"), "--report-data", REPORT_DATA.hex(),
                             *TYPE_OPTIONS.get(tee, []))
    if code != 2:
        assert result is not None and "\n" not in result["reason"]
        if code == 1:
            assert result["verified"] is False and result["claims"] is None


def test_collect_then_verify_simulated_tdx(capsys, tmp_path: Path) -> None:
    from enclave_workers.evidence.simulated_tdx import DEV_MRTD, create_dev_tdx_chain

    chain = tmp_path / "dev-tdx"
    create_dev_tdx_chain(chain)
    evidence, endorsements = tmp_path / "quote.dat", tmp_path / "endorsements"
    assert run_cli(["attest", "collect", "--provider", "simulated-tdx", "--chain-dir",
                    str(chain), "--report-data", REPORT_DATA.hex(), "--out", str(evidence),
                    "--endorsements-dir", str(endorsements)]) == 0
    collected = json.loads(capsys.readouterr().out)
    assert collected["tee"] == "tdx" and collected["endorsements"][0].endswith("collateral.json")
    argv = ["--type", "tdx", "--evidence", str(evidence), "--endorsements-dir", str(endorsements)]
    code, result, _ = verify(capsys, *argv, "--dev-chain", str(chain), "--allow-simulated")
    assert code == 0 and result["claims"]["simulated"] is True
    assert result["claims"]["tcb_status"] == "UpToDate"
    assert result["claims"]["measurement"] == DEV_MRTD
    code, result, _ = verify(capsys, *argv)
    assert code == 1 and "pinned Intel SGX Root CA" in result["reason"]
