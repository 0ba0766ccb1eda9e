"""Partner files for pipeline tests: synthetic JSONL, sealed with the test broker's keyring."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from enclave_workers.batch_processor import default_feature_spec
from pipelines.sealing import seal_file
from pipelines.synthetic import PartnerFile, write_partner_files
from tests.enclave_workers.broker_env import BrokerEnv


def sealed_partner_files(broker: BrokerEnv, directory: Path, records: int, *,
                         event_time: float | None = None, sealed_dir: str = "sealed",
                         seed: int = 11, profile: int = 1, records_per_stream: int = 1000
                         ) -> tuple[list[PartnerFile], list[Path]]:
    """Synthetic partner files and their sealed records, every envelope stating
    ``event_time`` (default: now) in its header; the same ``records`` and ``seed`` give the
    same rows. ``profile=2`` seals record streams of ``records_per_stream`` records."""
    files = write_partner_files(directory / f"partner-{seed}", records, files_per_group=1,
                                seed=seed)
    sealed = []
    for partner_file in files:
        target = directory / sealed_dir / f"{partner_file.path.stem}.sealed"
        seal_file(partner_file.path, target, keyring=broker.keyring, region=partner_file.region,
                  producer_id=partner_file.producer_id, records_per_key=40,
                  event_time=event_time, profile=profile, records_per_stream=records_per_stream)
        sealed.append(target)
    return files, sealed


def plaintext_probes(files: list[PartnerFile]) -> set[bytes]:
    """Every identifier string of the input (customer ids, names, e-mails)."""
    probes: set[bytes] = set()
    for partner_file in files:
        for line in partner_file.path.read_bytes().splitlines():
            row = json.loads(line)
            probes.update(str(row[k]).encode() for k in ("customer_id", "name", "email"))
    return probes


def assert_no_plaintext(root: Path, probes: set[bytes]) -> int:
    scanned = 0
    for path in root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            scanned += 1
            leaked = [p for p in probes if p in content]
            assert not leaked, f"{len(leaked)} input identifiers appear in {path}"
    return scanned


def spec_without_k_anonymity(directory: Path) -> Path:
    """The default spec minus k-anonymity, so every good record is exactly one output row."""
    document = yaml.safe_load(Path(default_feature_spec().source).read_text("utf-8"))
    assert document.pop("k_anonymity")
    path = directory / "no-k.yaml"
    path.write_text(yaml.safe_dump(document), "utf-8")
    return path
