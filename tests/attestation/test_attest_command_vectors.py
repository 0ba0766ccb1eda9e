"""Every real vector in ../shared/vectors through ``sealbeam attest verify``.

Each is accepted or rejected for the right reason: the go-sev-guest report verifies but a
production policy refuses it (DEBUG allowed), the trustee report passes one; malformed VCEKs
are refused; every TDX quote verifies (under the pinned Intel root, from ``--roots`` or from
the quote itself), the debug quote is refused by policy, a quote without collateral has an
unknown TCB status that a production policy refuses, and the phala quote with its collateral
is ``UpToDate``; the Azure SEV-SNP evidence verifies up to its vTPM quote, whose nonce is
not ours, and the Azure TD quote binds its HCL runtime data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from keybroker.attestation.azure_cvm import parse_hcl_report
from tests.attestation.test_attest_command_types import run_cli

SNP_AT = "2025-06-01T00:00:00Z"
TDX_AT = {"quote_v4_spr.dat": "2024-01-01T00:00:00Z", "quote_v4_debug.dat": "2024-01-01T00:00:00Z",
          "quote_v5_sample.dat": "2026-06-01T00:00:00Z", "phala/quote.dat": "2025-06-25T00:00:00Z"}

Cli = Callable[..., tuple[int, dict]]


@pytest.fixture(scope="module")
def tdx_vectors(shared_vectors: Path) -> Path:
    return _folder(shared_vectors / "tdx")


@pytest.fixture(scope="module")
def azure_vectors(shared_vectors: Path) -> Path:
    return _folder(shared_vectors / "azure-cvm")


def _folder(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"no vectors in {path}")
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    def run(*argv: str) -> tuple[int, dict]:
        code = run_cli(["attest", "verify", *argv])
        output = capsys.readouterr()
        assert output.err == "", output.err
        return code, json.loads(output.out)

    return run


def production_policy(directory: Path, tee: str, measurement: str, **checks: object) -> Path:
    """A policy that denies debug and simulated evidence and lists one measurement."""
    path = directory / f"policy-{tee}.yaml"
    rule = {"name": "production", "tee": [tee], "measurements": [measurement],
            "regions": ["eu"], **checks}
    path.write_text(yaml.safe_dump({"version": 1, "allow_simulated": False, "rules": [rule]}))
    return path


# --- SEV-SNP ------------------------------------------------------------------------------
def test_goguest_report_verifies_but_production_policy_refuses_debug(
        cli: Cli, snp_vectors: Path, amd_roots_dir: Path, tmp_path: Path) -> None:
    folder = snp_vectors / "milan-goguest"
    argv = ["--type", "sev-snp", "--evidence", str(folder / "report.bin"),
            "--vcek", str(folder / "vcek.der"), "--roots", str(amd_roots_dir), "--at", SNP_AT]
    code, result = cli(*argv)
    assert code == 0 and result["verified"] is True
    claims = result["claims"]
    assert (claims["tee"], claims["product"], claims["signing_key"]) == ("sev-snp", "Milan",
                                                                         "vcek")
    assert claims["debug"] is True and claims["report_version"] == 2
    assert claims["report_data"].startswith("0102030405") and claims["simulated"] is False
    assert set(claims["tcb"]) >= {"bootloader", "tee", "snp", "microcode"}
    policy = production_policy(tmp_path, "sev-snp", claims["measurement"])
    code, result = cli(*argv, "--policy", str(policy))
    assert code == 1 and result["verified"] is False
    assert result["reason"] == "policy: debug enabled, not allowed by rule production"


def test_trustee_report_passes_a_production_policy(cli: Cli, snp_vectors: Path,
                                                   amd_roots_dir: Path, tmp_path: Path) -> None:
    folder = snp_vectors / "milan-trustee"
    argv = ["--type", "sev-snp", "--evidence", str(folder / "report.bin"),
            "--vcek", str(folder / "vcek.der"), "--roots", str(amd_roots_dir), "--at", SNP_AT]
    code, result = cli(*argv)
    assert code == 0 and result["claims"]["debug"] is False
    report_data = result["claims"]["report_data"]
    policy = production_policy(tmp_path, "sev-snp", result["claims"]["measurement"],
                               exclude_products=["Genoa"], max_vmpl=3)
    code, result = cli(*argv, "--policy", str(policy), "--report-data", report_data)
    assert code == 0 and result["reason"] == "policy: evidence accepted by rule production"


@pytest.mark.parametrize("bad_vcek", ["vcek-invalid-legacy.der", "vcek-invalid-new.der"])
def test_malformed_vceks_are_refused(cli: Cli, snp_vectors: Path, amd_roots_dir: Path,
                                     bad_vcek: str) -> None:
    folder = snp_vectors / "milan-trustee"
    code, result = cli("--type", "sev-snp", "--evidence", str(folder / "report.bin"),
                       "--vcek", str(folder / bad_vcek), "--roots", str(amd_roots_dir),
                       "--at", SNP_AT)
    assert code == 1 and result["claims"] is None
    assert "vcek certificate signature does not" in result["reason"]


def test_without_roots_the_ask_is_missing(cli: Cli, snp_vectors: Path) -> None:
    folder = snp_vectors / "milan-trustee"
    code, result = cli("--type", "sev-snp", "--evidence", str(folder / "report.bin"),
                       "--vcek", str(folder / "vcek.der"), "--at", SNP_AT)
    assert code == 1 and result["verified"] is False and "ASK" in result["reason"].upper()


# --- TDX ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TDX_AT))
@pytest.mark.parametrize("with_roots", [True, False], ids=["roots", "embedded-root"])
def test_every_tdx_quote_verifies(cli: Cli, tdx_vectors: Path, name: str,
                                  with_roots: bool) -> None:
    argv = ["--type", "tdx", "--evidence", str(tdx_vectors / name), "--at", TDX_AT[name]]
    code, result = cli(*argv, *(["--roots", str(tdx_vectors)] if with_roots else []))
    assert code == 0 and result["verified"] is True
    claims = result["claims"]
    assert claims["tee"] == "tdx" and claims["signing_key"] == "pck"
    assert claims["simulated"] is False and claims["tcb_status"] is None
    assert claims["report_version"] in (4, 5) and len(claims["measurement"]) == 96
    assert claims["debug"] is (name == "quote_v4_debug.dat")


def test_tdx_quote_outside_its_pck_validity_is_refused(cli: Cli, tdx_vectors: Path) -> None:
    code, result = cli("--type", "tdx", "--evidence", str(tdx_vectors / "quote_v5_sample.dat"),
                       "--at", "2025-01-01T00:00:00Z")
    assert code == 1 and "not valid at" in result["reason"]


def test_production_policy_refuses_tdx_debug_and_unknown_tcb(cli: Cli, tdx_vectors: Path,
                                                             tmp_path: Path) -> None:
    for name, reason in (("quote_v4_debug.dat", "debug enabled, not allowed by rule production"),
                         ("quote_v4_spr.dat", "tcb_status unknown (no TDX collateral)")):
        argv = ["--type", "tdx", "--evidence", str(tdx_vectors / name), "--at", TDX_AT[name]]
        _, verified = cli(*argv)
        policy = production_policy(tmp_path, "tdx", verified["claims"]["measurement"])
        code, result = cli(*argv, "--policy", str(policy))
        assert code == 1 and reason in result["reason"], result["reason"]
        assert result["claims"]["measurement"] == verified["claims"]["measurement"]


def test_phala_quote_with_collateral_is_up_to_date(cli: Cli, tdx_vectors: Path,
                                                   tmp_path: Path) -> None:
    argv = ["--type", "tdx", "--evidence", str(tdx_vectors / "phala" / "quote.dat"),
            "--collateral", str(tdx_vectors / "phala" / "collateral.json"),
            "--roots", str(tdx_vectors), "--at", TDX_AT["phala/quote.dat"]]
    code, result = cli(*argv)
    assert code == 0 and result["claims"]["tcb_status"] == "UpToDate"
    assert result["claims"]["platform"]["tcb_status"] == "UpToDate"
    policy = production_policy(tmp_path, "tdx", result["claims"]["measurement"],
                               tcb_status=["UpToDate"])
    code, result = cli(*argv, "--policy", str(policy))
    assert code == 0 and result["reason"] == "policy: evidence accepted by rule production"


# --- Azure CVM ----------------------------------------------------------------------------
def test_azure_snp_evidence_verifies_up_to_the_foreign_quote_nonce(cli: Cli,
                                                                   azure_vectors: Path) -> None:
    folder = azure_vectors / "snp"
    argv = ["--type", "azure-cvm", "--evidence", str(folder / "hcl-report.bin"),
            "--tpm-quote", str(folder / "tpm-quote.bin"), "--vcek", str(folder / "vcek-chain.pem"),
            "--at", SNP_AT]
    code, result = cli(*argv)  # user-data (zeros) is bound; the quote's nonce is "challenge"
    assert code == 1 and "ReportDataMismatchError" in result["reason"]
    assert "extraData" in result["reason"]
    code, result = cli(*argv, "--report-data", "01" * 64)
    assert code == 1 and "user-data" in result["reason"]
    code, result = cli(*argv[:-2], "--at", "2040-01-01T00:00:00Z")
    assert code == 1 and "EvidenceVerificationError" in result["reason"]


def test_azure_td_quote_binds_its_hcl_runtime_data(cli: Cli, azure_vectors: Path) -> None:
    folder = azure_vectors / "tdx"
    hcl = parse_hcl_report((folder / "hcl-report.bin").read_bytes())
    code, result = cli("--type", "tdx", "--evidence", str(folder / "td-quote.bin"),
                       "--at", "2024-06-01T00:00:00Z")
    assert code == 0, result["reason"]
    digest = hashlib.new(hcl.hash_name.lower().replace("-", ""), hcl.runtime_data_bytes)
    assert result["claims"]["report_data"].startswith(digest.hexdigest())
