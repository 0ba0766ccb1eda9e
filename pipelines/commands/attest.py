"""``sealbeam attest verify`` and ``sealbeam attest collect``: attestation from the shell.

What it does: ``verify`` checks one evidence file with the same verifier the broker uses
(trust roots from ``--roots``, the dev root only with ``--allow-simulated``, optionally a
release policy) and prints one JSON object ``{verified, reason, claims}``; it exits 0 only
when verified. ``collect`` asks an evidence provider for evidence and writes it (and its
endorsements, as DER files) to disk. What it does not: release keys or talk to a broker.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from enclave_workers.evidence.base import EvidenceError
from keybroker.attestation.errors import AttestationError
from keybroker.attestation.snp import AmdKdsClient, SnpTrustStore, SnpVerifier, parse_report

__all__ = ["register"]

TEE_TYPES = ("sev-snp",)
PROVIDERS = ("simulated-snp", "configfs-tsm", "sev-guest")
MAX_INPUT_FILE = 1024 * 1024
NOT_VERIFIED_EXIT = 1
USAGE_EXIT = 2


class AttestCommandError(Exception):
    """A problem with the command's inputs (unreadable file, bad hex, bad time)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("attest", help="verify or collect attestation evidence",
                                   description="Verify or collect TEE attestation evidence.")
    commands = parser.add_subparsers(dest="attest_command", metavar="ACTION", required=True)

    verify = commands.add_parser(
        "verify", help="verify one evidence file; prints {verified, reason, claims}",
        description="Verify evidence as the broker would; exit 0 only when verified.")
    verify.add_argument("--type", required=True, choices=TEE_TYPES, dest="tee",
                        help="TEE kind of the evidence")
    verify.add_argument("--evidence", required=True, type=Path,
                        help="evidence file (SEV-SNP: the 1184-byte report, optionally "
                             "followed by its certificate table)")
    verify.add_argument("--vcek", type=Path, help="VCEK certificate (DER or PEM)")
    verify.add_argument("--vlek", type=Path, help="VLEK certificate (DER or PEM)")
    verify.add_argument("--ask", type=Path, help="ASK/ASVK certificate (DER or PEM)")
    verify.add_argument("--ark", type=Path, help="ARK certificate (DER or PEM)")
    verify.add_argument("--roots", type=Path,
                        help="trust directory of AMD cert_chain PEMs (checked against the pins)")
    verify.add_argument("--dev-chain", type=Path,
                        help="dev chain directory (the simulated root; needs --allow-simulated)")
    verify.add_argument("--allow-simulated", action="store_true",
                        help="trust the dev root given by --dev-chain (simulated evidence)")
    verify.add_argument("--report-data", help="expected report_data, 128 hex digits; without it "
                                              "the binding is not checked")
    verify.add_argument("--policy", type=Path, help="release policy YAML to apply to the claims")
    verify.add_argument("--at", help="verification time, RFC 3339 (default: now)")
    verify.add_argument("--kds-cache", type=Path,
                        help="fetch a missing VCEK/ASK from AMD KDS, caching answers here")
    verify.set_defaults(func=run_verify)

    collect = commands.add_parser(
        "collect", help="collect evidence from this machine's TEE (or the simulator)",
        description="Collect evidence for a report_data and write it to files.")
    collect.add_argument("--provider", required=True, choices=PROVIDERS,
                         help="evidence provider to use")
    collect.add_argument("--report-data", default="00" * 64,
                         help="report_data to bind, 128 hex digits (default zeros)")
    collect.add_argument("--chain-dir", type=Path, default=Path(".sealbeam/dev-tee"),
                         help="dev chain directory for simulated-snp (default .sealbeam/dev-tee)")
    collect.add_argument("--version", type=int, default=2, choices=(2, 3, 4, 5),
                         help="report version for simulated-snp (default 2)")
    collect.add_argument("--out", required=True, type=Path, help="evidence file to write")
    collect.add_argument("--endorsements-dir", type=Path,
                         help="directory for the endorsements (<name>.der)")
    collect.set_defaults(func=run_collect)


# --- verify -----------------------------------------------------------------------------
def _read(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_FILE:
            raise AttestCommandError(f"{what} file {path} is {size} bytes, over the limit")
        return path.read_bytes()
    except OSError as exc:
        raise AttestCommandError(f"cannot read {what} file {path}: {exc.strerror}") from None


def _certificate_der(path: Path, what: str) -> bytes:
    data = _read(path, what)
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        try:
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        except ValueError:
            raise AttestCommandError(f"{what} file {path} is not a PEM certificate") from None
    return data


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


def _snp_verifier(args: argparse.Namespace) -> SnpVerifier:
    if args.allow_simulated and args.dev_chain is None:
        raise AttestCommandError("--allow-simulated needs --dev-chain")
    trust = SnpTrustStore(args.roots, allow_simulated=args.allow_simulated,
                          dev_chain_dir=args.dev_chain if args.allow_simulated else None)
    at = _time(args.at)
    kds = AmdKdsClient(cache_dir=args.kds_cache) if args.kds_cache else None
    if at is None:
        return SnpVerifier(trust, kds=kds)
    return SnpVerifier(trust, clock=lambda: at, kds=kds)


def _print(result: dict) -> None:
    print(json.dumps(result, sort_keys=True))


def run_verify(args: argparse.Namespace) -> int:
    try:
        evidence = _read(args.evidence, "evidence")
        endorsements = {name: _certificate_der(getattr(args, name), name)
                        for name in ("vcek", "vlek", "ask", "ark") if getattr(args, name)}
        expected = _hex64(args.report_data, "--report-data") if args.report_data else None
        policy = _load_policy(args.policy) if args.policy else None
        verifier = _snp_verifier(args)
    except (AttestCommandError, AttestationError) as exc:
        print(f"sealbeam: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    try:
        if expected is None:
            expected = parse_report(evidence[:1184]).report_data
        claims = verifier.evaluate(evidence, expected, endorsements=endorsements)
    except AttestationError as exc:
        _print({"verified": False, "reason": f"{type(exc).__name__}: {exc}", "claims": None})
        return NOT_VERIFIED_EXIT
    reason = "evidence verified" + ("" if args.report_data else " (report_data not checked)")
    verified = True
    if policy is not None:
        decision = policy.evaluate_attestation(claims)
        verified, reason = decision.allowed, f"policy: {decision.reason}"
    _print({"verified": verified, "reason": reason, "claims": claims.to_json()})
    return 0 if verified else NOT_VERIFIED_EXIT


def _load_policy(path: Path):
    from keybroker.policy import PolicyError, ReleasePolicy

    try:
        return ReleasePolicy.load(path)
    except (PolicyError, OSError) as exc:
        raise AttestCommandError(f"policy {path}: {exc}") from None


# --- collect ----------------------------------------------------------------------------
def _provider(args: argparse.Namespace):
    if args.provider == "simulated-snp":
        from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider

        return SimulatedSnpProvider(args.chain_dir, version=args.version)
    if args.provider == "configfs-tsm":
        from enclave_workers.evidence.configfs_tsm import ConfigfsTsmProvider

        return ConfigfsTsmProvider()
    from enclave_workers.evidence.sev_guest import SevGuestProvider

    return SevGuestProvider()


def run_collect(args: argparse.Namespace) -> int:
    try:
        report_data = _hex64(args.report_data, "--report-data")
        provider = _provider(args)
        evidence = provider.collect(report_data)
        args.out.write_bytes(evidence.evidence)
        written = []
        if args.endorsements_dir is not None:
            args.endorsements_dir.mkdir(parents=True, exist_ok=True)
            for name, blob in sorted(evidence.endorsements.items()):
                target = args.endorsements_dir / f"{name}.der"
                target.write_bytes(blob)
                written.append(str(target))
    except (AttestCommandError, EvidenceError, OSError, ValueError) as exc:
        print(f"sealbeam: error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    _print({"tee": evidence.tee, "simulated": provider.simulated,
            "evidence": str(args.out), "endorsements": written})
    return 0
