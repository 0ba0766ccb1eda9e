"""The batch pipeline runs a feature spec: violations dead-lettered, fingerprints, PME output."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pqe
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.features import FINGERPRINT_METADATA_KEY, CompiledSpec, compile_spec
from enclave_workers.features.pme import pseudonymized_columns
from enclave_workers.features.pme_kms import ParquetKmsError, callback_kms_client_factory
from enclave_workers.pme_keys import ROLE_FEATURES, ROLES, keyring_unwrapper
from envelope import read_header
from pipelines.batch import check_reconciled, run_batch
from pipelines.errors import PipelineError
from pipelines.options import load_feature_spec
from pipelines.reading import open_outputs
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import assert_no_plaintext, plaintext_probes, sealed_partner_files

RECORDS = 240
AMOUNT_MAX = 100


def _run(broker: BrokerEnv, work: Path, out: str, **extra: str):
    flags = {"input": str(work / "sealed" / "*.sealed"), "output_root": str(work / out),
             "broker_url": broker.url, "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": ",".join(REGIONS), **extra}
    return run_batch(PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()]))


def _strict_spec(directory: Path) -> Path:
    """The default spec with amounts capped at AMOUNT_MAX: the larger synthetic ones break it."""
    document = default_feature_spec().to_json_document()
    amount = next(c for c in document["input"]["columns"] if c["name"] == "amount")
    amount["max"] = AMOUNT_MAX
    path = directory / "strict.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def partner(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("spec-pipeline")
    files, _ = sealed_partner_files(broker, work, RECORDS)
    return work, files


@pytest.fixture(scope="module")
def strict_run(broker: BrokerEnv, partner):
    work, files = partner
    spec_path = _strict_spec(work)
    summary = _run(broker, work, "strict", feature_spec=str(spec_path))
    return work / "strict", files, summary, compile_spec(load_feature_spec(str(spec_path)))


@pytest.fixture(scope="module")
def pme_run(broker: BrokerEnv, partner):
    work, files = partner
    return work / "pme", files, _run(broker, work, "pme", output_format="parquet-pme")


def _over_max(files) -> int:
    return sum(1 for f in files for line in f.path.read_bytes().splitlines()
               if json.loads(line)["amount"] > AMOUNT_MAX)


def test_violating_rows_are_dead_lettered_with_column_and_reason(strict_run) -> None:
    out, files, summary, _ = strict_run
    expected = _over_max(files)
    assert 0 < expected < RECORDS
    check_reconciled(summary)
    assert summary.records_in == RECORDS
    assert summary.dead_letters == expected
    assert summary.records_out == RECORDS - expected
    assert summary.rows_out + summary.rows_suppressed == summary.records_out
    dead = [json.loads(line) for f in (out / "dead-letter").glob("*.jsonl")
            for line in f.read_bytes().splitlines()]
    assert len(dead) == expected
    assert {d["reason"] for d in dead} == {f"column amount: above the declared maximum "
                                           f"{AMOUNT_MAX}"}
    assert {d["stage"] for d in dead} == {"schema"}
    for d in dead:           # the original sealed record, nothing else
        header, _ = read_header(base64.b64decode(d["sealed_b64"]))
        assert header.kind == "record" and header.envelope_id.hex() == d["record_id"]


def test_no_plaintext_in_outputs_or_dead_letters(strict_run, pme_run) -> None:
    for out, files, *_ in (strict_run, pme_run):
        assert assert_no_plaintext(out, plaintext_probes(files)) >= 3


def test_every_output_header_carries_the_compiled_specs_fingerprint(strict_run,
                                                                     broker: BrokerEnv) -> None:
    out, _, summary, compiled = strict_run
    assert summary.spec_fingerprint == compiled.fingerprint
    assert compiled.fingerprint != compile_spec(default_feature_spec()).fingerprint
    outputs = list(out.glob("*/*.sbatch"))
    assert len(outputs) == summary.output_files > 0
    for path in outputs:
        header, _ = read_header(path.read_bytes())
        assert header.schema_fingerprint == compiled.fingerprint_bytes
        assert header.context["sealbeam.spec"] == compiled.fingerprint
    for region in REGIONS:
        table = open_outputs([out / region], keyring=broker.keyring, region=region)
        assert table.schema.metadata[FINGERPRINT_METADATA_KEY] == compiled.fingerprint.encode()


def _pyarrow_reader_properties(broker: BrokerEnv, region: str, roles=ROLES):
    unwrap = keyring_unwrapper(broker.keyring.unwrap, region=region,
                               expected_kek_uri=broker.keyring.kek_for_region(region),
                               roles=roles)

    def refuse(key: bytes, key_id: str) -> bytes:
        raise AssertionError("readers never wrap")

    return pqe.CryptoFactory(callback_kms_client_factory(refuse, unwrap)).\
        file_decryption_properties(pqe.KmsConnectionConfig(), pqe.DecryptionConfiguration(
            cache_lifetime=datetime.timedelta(minutes=1)))


def test_pme_files_read_back_with_pyarrows_own_reader_and_our_kms(pme_run,
                                                                   broker: BrokerEnv) -> None:
    out, _, summary = pme_run
    compiled: CompiledSpec = compile_spec(default_feature_spec())
    check_reconciled(summary)
    assert summary.output_format == "parquet-pme"
    rows = 0
    for region in REGIONS:
        files = sorted((out / region).glob("part-*.parquet"))
        assert files and not list((out / region).glob("*.sbatch"))
        for path in files:
            table = pq.ParquetFile(
                path, decryption_properties=_pyarrow_reader_properties(broker, region)).read()
            assert table.schema.names == compiled.output_schema.names
            assert table.schema.metadata[FINGERPRINT_METADATA_KEY] == \
                compiled.fingerprint.encode()
            assert set(table.column("region").to_pylist()) <= {region}
            rows += table.num_rows
    assert rows == summary.rows_out
    assert summary.rows_out + summary.rows_suppressed == summary.records_out == RECORDS
    with pytest.raises(ParquetKmsError, match="PmeKeyScopeError"):   # another region's reader
        pq.ParquetFile(files[0], decryption_properties=_pyarrow_reader_properties(
            broker, "us" if region == "eu" else "eu")).read()


def test_a_features_only_reader_cannot_read_the_pseudonym_columns(pme_run,
                                                                  broker: BrokerEnv) -> None:
    out, _, _ = pme_run
    compiled = compile_spec(default_feature_spec())
    pseudonyms = list(pseudonymized_columns(compiled))
    features = [n for n in compiled.output_schema.names if n not in pseudonyms]
    table = open_outputs([out / "eu"], keyring=broker.keyring, region="eu", columns=features,
                         roles=[ROLE_FEATURES])
    assert table.column_names == features and table.num_rows > 0
    with pytest.raises(PipelineError, match="PmeKeyScopeError"):
        open_outputs([out / "eu"], keyring=broker.keyring, region="eu", columns=pseudonyms,
                     roles=[ROLE_FEATURES])
    everything = open_outputs([out / "eu"], keyring=broker.keyring, region="eu")
    assert all(len(p) == 64 for p in everything.column("customer_pseudonym").to_pylist())
