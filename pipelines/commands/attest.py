"""``sealbeam attest verify`` and ``sealbeam attest collect``: attestation from the shell.

What it does: ``verify`` checks one evidence file of any TEE kind the broker accepts
(``sev-snp``, ``tdx``, ``azure-cvm``, ``maa``, ``confidential-space``) with the same verifiers
the broker uses, built from local trust material (``--roots``: AMD ASK/ARK PEMs or the Intel
SGX Root CA; without it the compiled-in pins; ``--collateral`` for a TDX TCB status;
``--jwks`` for token issuers' keys), optionally applies a release policy, and prints one JSON
object ``{verified, reason, claims}``; it exits 0 only when the evidence verifies and the
policy (if given) accepts it. Without ``--report-data`` the binding is read from the evidence
itself and the reason says it was not checked. ``collect`` asks an evidence provider for
evidence and writes it (and its endorsements) to disk.

What it does not: release keys or talk to a broker. Inputs the user got wrong (unreadable
file, bad hex, bad time) are one line on stderr and exit 2; evidence that does not verify
is ``verified: false`` with the reason, exit 1. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from cryptography import x509

from enclave_workers.evidence.base import EvidenceError
from enclave_workers.evidence.simulated_tdx import DEV_TDX_ROOT_FILE
from keybroker.attestation.azure_cvm import (
    evidence_from_az_cvm_vtpm,
)
from keybroker.attestation.errors import (
    AttestationError,
    TrustStoreError,
)
from keybroker.attestation.verifier import Verifier
from keybroker.service.verifiers import (
    TrustMaterial,
    azure_cvm_hardware,
    claimed_report_data,
    embedded_intel_root,
    verifiers_from_material,
)

__all__ = ["register"]

TEE_TYPES = ("sev-snp", "tdx", "azure-cvm", "maa", "confidential-space")
PROVIDERS = ("simulated-snp", "simulated-tdx", "configfs-tsm", "configfs-tsm-tdx", "sev-guest",
             "azure-vtpm", "confidential-space")
MAX_INPUT_FILE = 1024 * 1024
MAX_ENDORSEMENT_FILES = 16
NOT_VERIFIED_EXIT = 1
USAGE_EXIT = 2
_CERTIFICATE_NAMES = ("vcek", "vlek", "ask", "ark")
_JSON_ENDORSEMENTS = ("collateral", "pcrs")


class AttestCommandError(Exception):
    """A problem with the command's inputs (unreadable file, bad hex, bad time)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("attest", help="verify or collect attestation evidence",
                                   description="Verify or collect TEE attestation evidence.")
    commands = parser.add_subparsers(dest="attest_command", metavar="ACTION", required=True)
    _register_verify(commands)
    _register_collect(commands)


def _register_verify(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify", help="verify one evidence file; prints {verified, reason, claims}",
        description="Verify evidence as the broker would; exit 0 only when verified (and, "
                    "with --policy, accepted).")
    verify.add_argument("--type", required=True, choices=TEE_TYPES, dest="tee",
                        help="TEE kind of the evidence")
    verify.add_argument("--evidence", required=True, type=Path,
                        help="evidence file: SEV-SNP report (+ certificate table), TDX quote, "
                             "Azure CVM evidence JSON (or a raw HCL report with --tpm-quote), "
                             "or an MAA / Confidential Space token; '-' for standard input")
    for name in _CERTIFICATE_NAMES:
        verify.add_argument(f"--{name}", type=Path,
                            help=f"{name.upper()} certificate, DER or PEM (a PEM chain for "
                                 "Azure CVM)" if name == "vcek" else
                            f"{name.upper()} certificate, DER or PEM")
    verify.add_argument("--endorsements-dir", type=Path,
                        help="directory of endorsements as `attest collect` writes them")
    verify.add_argument("--roots", type=Path,
                        help="folder of PEM trust anchors: AMD ASK/ARK chains (checked against "
                             "the pinned ARKs) or intel_sgx_root_ca.pem (checked against the "
                             "pin); default: the compiled-in pins")
    verify.add_argument("--collateral", type=Path,
                        help="TDX collateral JSON (QuoteCollateralV3) for the TCB status")
    verify.add_argument("--tpm-quote", type=Path,
                        help="Azure CVM: az-cvm-vtpm quote; --evidence is then the HCL report")
    verify.add_argument("--td-quote", type=Path, help="Azure TDX CVM: the TD quote (raw form)")
    verify.add_argument("--jwks", type=Path,
                        help="MAA / Confidential Space: the issuer's JWKS (default: fetch)")
    verify.add_argument("--issuer", help="MAA: the pinned instance, https://<name>.attest...")
    verify.add_argument("--audience", help="Confidential Space: the token audience")
    verify.add_argument("--dev-chain", type=Path,
                        help="SEV-SNP dev chain directory (needs --allow-simulated)")
    verify.add_argument("--allow-simulated", action="store_true",
                        help="trust the dev root of --dev-chain (simulated evidence)")
    verify.add_argument("--report-data", help="expected report_data, 128 hex digits; without it "
                                              "the binding is read from the evidence, unchecked")
    verify.add_argument("--policy", type=Path, help="release policy YAML to apply to the claims")
    verify.add_argument("--at", help="verification time, RFC 3339 (default: now)")
    verify.add_argument("--kds-cache", type=Path,
                        help="fetch a missing VCEK/ASK from AMD KDS, caching answers here")
    verify.set_defaults(func=run_verify)


def _register_collect(commands: argparse._SubParsersAction) -> None:
    collect = commands.add_parser(
        "collect", help="collect evidence from this machine's TEE (or a simulator)",
        description="Collect evidence for a report_data and write it to files.")
    collect.add_argument("--provider", required=True, choices=PROVIDERS,
                         help="evidence provider to use (configfs-tsm: SEV-SNP and "
                              "configfs-tsm-tdx: TDX, through the kernel's TSM reports; "
                              "sev-guest: /dev/sev-guest)")
    collect.add_argument("--report-data", default="00" * 64,
                         help="report_data to bind, 128 hex digits (default zeros)")
    collect.add_argument("--chain-dir", type=Path, default=Path(".sealbeam/dev-tee"),
                         help="dev chain directory for the simulated providers "
                              "(default .sealbeam/dev-tee)")
    collect.add_argument("--version", type=int, default=None,
                         help="report version: simulated-snp 2..5 (default 2), "
                              "simulated-tdx 4 or 5 (default 4)")
    collect.add_argument("--audience", help="confidential-space: the token audience")
    collect.add_argument("--out", required=True, type=Path,
                         help="evidence file to write; '-' for standard output")
    collect.add_argument("--endorsements-dir", type=Path,
                         help="directory for the endorsements (<name>.der or <name>.json)")
    collect.set_defaults(func=run_collect)


# --- inputs -----------------------------------------------------------------------------
def _read(path: Path, what: str) -> bytes:
    """A bounded input file; ``-`` reads standard input."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_FILE + 1)
        else:
            with path.open("rb") as handle:
                data = handle.read(MAX_INPUT_FILE + 1)
    except OSError as exc:
        raise AttestCommandError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if len(data) > MAX_INPUT_FILE:
        raise AttestCommandError(f"{what} file {path} is over the {MAX_INPUT_FILE}-byte limit")
    return data


def _certificate_der(data: bytes, what: str) -> bytes:
    """DER of a certificate given as DER or PEM (Azure's VCEK chain stays PEM)."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError:
        raise AttestCommandError(f"{what} is not a PEM certificate") from None


def _endorsements(args: argparse.Namespace) -> dict[str, bytes]:
    endorsements: dict[str, bytes] = {}
    if args.endorsements_dir is not None:
        endorsements.update(_endorsements_from_dir(args.endorsements_dir))
    for name in _CERTIFICATE_NAMES:
        path = getattr(args, name)
        if path is None:
            continue
        data = _read(path, name)
        if args.tee == "azure-cvm" and name == "vcek" and data.count(b"-----BEGIN") > 1:
            endorsements["vcek-chain"] = data
        else:
            endorsements[name] = _certificate_der(data, f"{name} file {path}")
    if args.collateral is not None and args.tee in ("tdx", "azure-cvm"):
        endorsements["collateral"] = _read(args.collateral, "collateral")
    return endorsements


def _endorsements_from_dir(directory: Path) -> dict[str, bytes]:
    try:
        files = sorted(path for path in directory.iterdir() if path.is_file())
    except OSError as exc:
        raise AttestCommandError(f"cannot list {directory}: {exc.strerror}") from None
    if len(files) > MAX_ENDORSEMENT_FILES:
        raise AttestCommandError(f"{directory} holds more than {MAX_ENDORSEMENT_FILES} files")
    return {path.stem: _read(path, f"endorsement {path.stem}") for path in files
            if path.suffix in (".der", ".json", ".pem")}


def _hex64(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise AttestCommandError(f"{what} is not hex") from None
    if len(value) != 64:
        raise AttestCommandError(f"{what} must be 64 bytes (128 hex digits)")
    return value


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AttestCommandError(f"--at {text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise AttestCommandError("--at needs a time zone (e.g. 2025-06-01T00:00:00Z)")
    return moment


def _check_type_options(args: argparse.Namespace) -> None:
    if args.allow_simulated and args.dev_chain is None:
        raise AttestCommandError("--allow-simulated needs --dev-chain")
    if args.tee == "maa" and not args.issuer:
        raise AttestCommandError("--type maa needs --issuer (the pinned MAA instance)")
    if args.tee == "confidential-space" and not (args.audience and args.report_data):
        raise AttestCommandError("--type confidential-space needs --audience and --report-data "
                                 "(the token binds only a hash of the report_data)")
    if args.tee != "azure-cvm" and (args.tpm_quote is not None or args.td_quote is not None):
        raise AttestCommandError("--tpm-quote and --td-quote are for --type azure-cvm")
    if args.td_quote is not None and args.tpm_quote is None:
        raise AttestCommandError("--td-quote needs --tpm-quote (with the raw HCL report)")


def _load_policy(path: Path):
    from keybroker.policy import PolicyError, ReleasePolicy

    try:
        return ReleasePolicy.load(path)
    except PolicyError as exc:
        raise AttestCommandError(f"policy {path}: {exc}") from None


def _verifier(args: argparse.Namespace, evidence: bytes, at: datetime | None) -> Verifier:
    dev_chain = args.dev_chain if args.allow_simulated else None
    tdx_dev_root = dev_chain / DEV_TDX_ROOT_FILE if dev_chain is not None else None
    if tdx_dev_root is not None and not tdx_dev_root.is_file():
        tdx_dev_root = None  # a SEV-SNP dev chain
    intel_roots: tuple[x509.Certificate, ...] = ()
    if args.roots is None and args.tee in ("tdx", "azure-cvm"):
        intel_roots = embedded_intel_root(args.tee, evidence, required=tdx_dev_root is None)
    material = TrustMaterial(
        snp_trust_dir=args.roots if args.tee in ("sev-snp", "azure-cvm") else None,
        dev_chain_dir=dev_chain if tdx_dev_root is None else None,
        tdx_dev_root_file=tdx_dev_root,
        kds_cache_dir=args.kds_cache,
        tdx_root_dir=args.roots if args.tee in ("tdx", "azure-cvm") else None,
        tdx_roots=intel_roots,
        maa_issuers=(args.issuer,) if args.issuer else (),
        confidential_space_audience=args.audience,
        fixed_jwks=args.jwks_document,
    )
    verifiers = verifiers_from_material(
        material,
        clock=(lambda: at.timestamp()) if at is not None else time.time,
        tees=(args.tee,),
        hardware=azure_cvm_hardware(evidence) if args.tee == "azure-cvm" else None,
    )
    if args.tee not in verifiers:
        raise AttestCommandError(f"no trust material for --type {args.tee}")
    return verifiers[args.tee]


# --- verify -----------------------------------------------------------------------------
def _print(result: dict) -> None:
    print(json.dumps(result, sort_keys=True))


def _usage_error(error: Exception) -> int:
    print(f"sealbeam: error: {error}", file=sys.stderr)
    return USAGE_EXIT


def _not_verified(reason: str) -> int:
    _print({"verified": False, "reason": reason, "claims": None})
    return NOT_VERIFIED_EXIT


def run_verify(args: argparse.Namespace) -> int:
    try:
        _check_type_options(args)
        evidence = _read(args.evidence, "evidence")
        tpm_quote = _read(args.tpm_quote, "TPM quote") if args.tpm_quote else None
        td_quote = _read(args.td_quote, "TD quote") if args.td_quote else None
        endorsements = _endorsements(args)
        expected = _hex64(args.report_data, "--report-data") if args.report_data else None
        policy = _load_policy(args.policy) if args.policy else None
        at = _time(args.at)
        args.jwks_document = _read(args.jwks, "JWKS") if args.jwks else None
    except AttestCommandError as exc:
        return _usage_error(exc)
    try:
        if tpm_quote is not None:
            evidence = evidence_from_az_cvm_vtpm(evidence, tpm_quote, td_quote).to_bytes()
        if expected is None:
            expected = claimed_report_data(args.tee, evidence)
        claims = _verifier(args, evidence, at).evaluate(evidence, expected,
                                                         endorsements=endorsements)
    except (AttestCommandError, TrustStoreError) as exc:
        return _usage_error(exc)
    except AttestationError as exc:
        return _not_verified(f"{type(exc).__name__}: {exc}")
    except ValueError as exc:  # a parser deeper down that refused the bytes
        return _not_verified(f"malformed evidence: {exc}")
    reason = "evidence verified" + ("" if args.report_data else " (report_data not checked)")
    verified = True
    if policy is not None:
        decision = policy.evaluate_attestation(claims)
        verified, reason = decision.allowed, f"policy: {decision.reason}"
    _print({"verified": verified, "reason": reason, "claims": claims.to_json()})
    return 0 if verified else NOT_VERIFIED_EXIT


# --- collect ----------------------------------------------------------------------------
def _provider(args: argparse.Namespace):
    if args.provider == "simulated-snp":
        from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider

        return SimulatedSnpProvider(args.chain_dir, version=args.version or 2)
    if args.provider == "simulated-tdx":
        from enclave_workers.evidence.simulated_tdx import SimulatedTdxProvider

        return SimulatedTdxProvider(args.chain_dir, version=args.version or 4)
    if args.provider == "configfs-tsm":
        from enclave_workers.evidence.configfs_tsm import ConfigfsTsmProvider

        return ConfigfsTsmProvider()
    if args.provider == "configfs-tsm-tdx":
        from enclave_workers.evidence.configfs_tsm import ConfigfsTsmTdxProvider

        return ConfigfsTsmTdxProvider()
    if args.provider == "azure-vtpm":
        from enclave_workers.evidence.azure_vtpm import AzureVtpmProvider

        return AzureVtpmProvider()
    if args.provider == "confidential-space":
        from enclave_workers.evidence.confidential_space import ConfidentialSpaceProvider

        if not args.audience:
            raise AttestCommandError("--provider confidential-space needs --audience")
        return ConfidentialSpaceProvider(args.audience)
    if args.provider == "sev-guest":
        from enclave_workers.evidence.sev_guest import SevGuestProvider

        return SevGuestProvider()
    raise AttestCommandError(f"unknown evidence provider {args.provider!r}")


def _endorsement_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.{'json' if name in _JSON_ENDORSEMENTS else 'der'}"


def run_collect(args: argparse.Namespace) -> int:
    try:
        report_data = _hex64(args.report_data, "--report-data")
        provider = _provider(args)
        evidence = provider.collect(report_data)
        to_stdout = str(args.out) == "-"
        if to_stdout:
            sys.stdout.buffer.write(evidence.evidence)
            sys.stdout.buffer.flush()
        else:
            args.out.write_bytes(evidence.evidence)
        written = []
        if args.endorsements_dir is not None:
            args.endorsements_dir.mkdir(parents=True, exist_ok=True)
            for name, blob in sorted(evidence.endorsements.items()):
                target = _endorsement_file(args.endorsements_dir, name)
                target.write_bytes(blob)
                written.append(str(target))
    except (AttestCommandError, EvidenceError, OSError, ValueError) as exc:
        print(f"sealbeam: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    report = {"tee": evidence.tee, "simulated": provider.simulated,
              "evidence": str(args.out), "endorsements": written}
    if to_stdout:  # the evidence went to stdout: the report goes to stderr
        print(json.dumps(report, sort_keys=True), file=sys.stderr)
    else:
        _print(report)
    return 0
