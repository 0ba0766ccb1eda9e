"""``sealbeam demo``: the main job end to end on the embedded default, with no cloud.

What it does, in order: generates synthetic partner records (two producers, regions ``eu``
and ``us``), creates the state (``init_state``: keyring, named keys, dev SEV-SNP chain,
policy), seals the partner files as partners would (several files, a fresh DEK per 500
records; record streams, record profile 2, by default, or v1 records with ``profile=1``),
starts the key broker on loopback, runs the batch pipeline on FnApiRunner with the simulated
SEV-SNP worker and the shipped default feature spec (sealed batches or PME Parquet), opens
the outputs as each region's authorized reader and checks them (the spec's columns,
identifiers gone, pseudonyms hex, the spec's fingerprint, row counts, no plaintext
identifier in any output or dead-letter byte), verifies the audit ledger's hash chain and
the run's chain of custody offline (``custody_verified``), and returns one summary (with the
rows suppressed for k-anonymity).

What it does not: no network beyond loopback, and nothing outside ``workdir``. The TEE is
simulated and says so (``simulated_tee``); its keys are marked simulated in the ledger.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions

from enclave_workers.batch_processor import SEALED_ARROW, default_feature_spec
from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from enclave_workers.features import CompiledSpec, compile_spec
from enclave_workers.features.pme import pseudonymized_columns
from keybroker.checkpoints import load_anchors
from keybroker.config import BrokerSettings, init_state
from keybroker.identity import BrokerPublicKey, public_key_file_name
from keybroker.kms.local import LocalKeyring
from keybroker.ledger import AuditLedger
from keybroker.service.server import serve_in_thread
from transforms.dead_letters import DEAD_LETTER_DIR

from . import synthetic
from .batch import RunSummary, check_reconciled, run_batch
from .custody import CustodyPolicy
from .custody_run import verify_run
from .errors import DemoCheckError
from .reading import open_outputs, spec_fingerprint_of
from .sealing import seal_file

DEFAULT_RECORDS = 10_000
RECORDS_PER_KEY = 500
DEMO_PROFILE = 2                 # partners seal record streams (docs/FORMAT.md section 13)
PLAINTEXT_PROBES = 200
_PSEUDONYM = re.compile(r"[0-9a-f]{64}")
_WORK_SUBDIRS = ("partner", "sealed", "out", "state")
IDENTIFIER_FIELDS = ("customer_id", "name", "email")


def _fresh_workdir(workdir: Path) -> dict[str, Path]:
    """The demo's subdirectories, emptied (only those it owns inside ``workdir``)."""
    paths = {name: workdir / name for name in _WORK_SUBDIRS}
    for path in paths.values():
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
    return paths


def _seal_partner_files(files: Iterable[synthetic.PartnerFile], sealed_dir: Path,
                        keyring: LocalKeyring, profile: int) -> int:
    """Seal every partner file; returns the records sealed."""
    sealed = 0
    for partner_file in files:
        report = seal_file(partner_file.path, sealed_dir / f"{partner_file.path.stem}.sealed",
                           keyring=keyring, region=partner_file.region,
                           producer_id=partner_file.producer_id,
                           records_per_key=RECORDS_PER_KEY, profile=profile)
        sealed += report.input_records
    return sealed


def _plaintext_probes(files: Iterable[synthetic.PartnerFile]) -> list[bytes]:
    """Identifier strings of the input that must never appear in any output byte."""
    probes: list[bytes] = []
    for partner_file in files:
        with partner_file.path.open("rb") as lines:
            for line in lines:
                row = json.loads(line)
                probes.extend(str(row[k]).encode() for k in ("customer_id", "email", "name"))
                if len(probes) >= PLAINTEXT_PROBES:
                    return probes
    return probes


def _check_no_plaintext(out_dir: Path, probes: list[bytes]) -> int:
    """Scan every output and dead-letter file for input identifiers; return files scanned."""
    scanned = 0
    for path in out_dir.rglob("*"):
        if not path.is_file():
            continue
        content = path.read_bytes()
        scanned += 1
        for probe in probes:
            if probe in content:
                raise DemoCheckError(f"an input identifier appears in {path.relative_to(out_dir)}")
    return scanned


def _check_region_outputs(out_dir: Path, keyring: LocalKeyring, regions: Iterable[str],
                          compiled: CompiledSpec) -> int:
    """Open every region's outputs as that region's reader and check the features."""
    rows = 0
    for region in regions:
        region_dir = out_dir / region
        if not region_dir.is_dir():
            raise DemoCheckError(f"no outputs for region {region!r}")
        table = open_outputs([region_dir], keyring=keyring, region=region)
        if table.schema.names != compiled.output_schema.names:
            raise DemoCheckError(f"region {region!r}: output columns are {table.schema.names}")
        if spec_fingerprint_of(table) != compiled.fingerprint:
            raise DemoCheckError(f"region {region!r}: outputs carry another spec fingerprint")
        leaked = [c for c in IDENTIFIER_FIELDS if c in table.column_names]
        if leaked:
            raise DemoCheckError(f"region {region!r}: identifier columns present: {leaked}")
        for column in pseudonymized_columns(compiled):
            pseudonyms = table.column(column).to_pylist()
            if not all(isinstance(p, str) and _PSEUDONYM.fullmatch(p) for p in pseudonyms):
                raise DemoCheckError(f"region {region!r}: a pseudonym in {column!r} is not 64 "
                                     "lowercase hex")
        if set(table.column("region").to_pylist()) != {region}:
            raise DemoCheckError(f"region {region!r}: rows of another region in its outputs")
        rows += table.num_rows
    return rows


def _check_custody(out_dir: Path, settings: BrokerSettings, compiled: CompiledSpec) -> int:
    """Verify the run's custody offline as an auditor would (``sealbeam custody verify
    --run``): every output's signed statement with only the broker's public key, the dev
    measurement and the default spec as the policy, the ledger's checkpoints as anchors,
    and every input in an output or a dead letter. Returns the outputs verified."""
    policy = CustodyPolicy(measurements=(DEV_MEASUREMENT,),
                           spec_fingerprints=(compiled.fingerprint,), allow_simulated=True)
    broker_key = BrokerPublicKey.load(
        settings.identity_path.with_name(public_key_file_name(settings.identity_path)))
    with AuditLedger(settings.ledger_path, read_only=True) as ledger:
        verdict = verify_run(out_dir, broker_key=broker_key, policy=policy, ledger=ledger,
                             anchors=load_anchors(settings.checkpoint_file))
    if not verdict.ok:
        raise DemoCheckError(f"custody does not verify: {'; '.join(verdict.reasons[:3])}")
    return len(verdict.outputs)


KEY_RELEASE_EVENTS = ("release", "generate", "release-named")


def _broker_releases(ledger: AuditLedger) -> tuple[int, bool]:
    """Granted key releases in the ledger, and whether all were marked simulated."""
    granted = [e for e in ledger.entries()
               if e.decision == "granted" and e.event in KEY_RELEASE_EVENTS]
    return len(granted), all(bool(e.details.get("simulated")) for e in granted)


def run_demo(records: int = DEFAULT_RECORDS, workdir: Path = Path("demo-out"), *,
             output_format: str = SEALED_ARROW,
             profile: int = DEMO_PROFILE) -> dict[str, object]:
    """Run the demo; return the summary; raise ``PipelineError`` if any check fails."""
    started = time.monotonic()
    compiled = compile_spec(default_feature_spec())
    paths = _fresh_workdir(Path(workdir))
    files = synthetic.write_partner_files(paths["partner"], records)
    settings = init_state(paths["state"], regions=synthetic.REGIONS,
                          tenants=synthetic.PRODUCERS, force=True,
                          allowed_measurements=(DEV_MEASUREMENT,))
    keyring = LocalKeyring.open(settings.keyring_path)
    sealed = _seal_partner_files(files, paths["sealed"], keyring, profile)
    if sealed != records:
        raise DemoCheckError(f"sealed {sealed} records, expected {records}")

    broker = serve_in_thread(settings)
    try:
        options = PipelineOptions(flags=[
            f"--input={paths['sealed'] / '*.sealed'}",
            f"--output_root={paths['out']}",
            f"--broker_url={broker.url}",
            "--tee=simulated-sev-snp",
            f"--dev_tee_dir={settings.dev_chain_dir or paths['state'] / 'dev-tee'}",
            f"--regions={','.join(synthetic.REGIONS)}",
            f"--output_format={output_format}",
        ])
        summary: RunSummary = run_batch(options)
    finally:
        broker.stop()
    check_reconciled(summary)

    if summary.spec_fingerprint != compiled.fingerprint:
        raise DemoCheckError("the run used another feature spec than the default")
    rows = _check_region_outputs(paths["out"], keyring, synthetic.REGIONS, compiled)
    if summary.records_in != records:
        raise DemoCheckError(f"the run read {summary.records_in} records, {records} were sealed")
    if rows != summary.rows_out:
        raise DemoCheckError(f"outputs hold {rows} rows; the run reported {summary.rows_out}")
    if summary.rows_out + summary.rows_suppressed != summary.records_out:
        raise DemoCheckError(f"each record is one row, but rows_out={summary.rows_out} + "
                             f"rows_suppressed={summary.rows_suppressed} != records_out="
                             f"{summary.records_out}")
    _check_no_plaintext(paths["out"], _plaintext_probes(files))

    if not Path(settings.ledger_path).is_file():
        raise DemoCheckError(f"the broker wrote no ledger at {settings.ledger_path}")
    with AuditLedger(settings.ledger_path) as ledger:
        verification = ledger.verify()
        releases, all_simulated = _broker_releases(ledger)
    if not verification.ok:
        raise DemoCheckError(verification.summary())
    custody_outputs = _check_custody(paths["out"], settings, compiled)
    return {
        "records_in": summary.records_in,
        "records_out": summary.records_out,
        "dead_letters": summary.dead_letters,
        "rows_out": summary.rows_out,
        "rows_suppressed": summary.rows_suppressed,
        "output_format": summary.output_format,
        "record_profile": profile,
        "spec_fingerprint": summary.spec_fingerprint,
        "outputs_by_region": summary.outputs_by_region,
        "broker_calls": summary.broker_calls,
        "broker_releases": releases,
        "ledger_verified": verification.ok,
        "ledger_entries": verification.entries,
        "ledger_head": summary.ledger_head,
        "simulated_tee": all_simulated and releases > 0,
        "custody_verified": True,
        "custody_outputs": custody_outputs,
        "dead_letter_dir": str(paths["out"] / DEAD_LETTER_DIR),
        "seconds": round(time.monotonic() - started, 2),
    }

