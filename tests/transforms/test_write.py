"""Region-pinned writes: files land under their key's region; any other destination is refused.

Both output formats: sealed batch envelopes (region from the header) and PME Parquet (region
from the footer key's wrapped blob).
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from enclave_workers.batch_processor import PARQUET_PME, SealedOutput, default_feature_spec
from enclave_workers.features import compile_spec
from enclave_workers.pme_keys import (
    ROLE_FEATURES,
    ROLE_PSEUDONYMS,
    master_keys_for,
    write_pme_table,
)
from envelope import read_header, seal_batch
from tests.enclave_workers.broker_env import BrokerEnv
from transforms import (
    RouteByRegion,
    TransformConfigError,
    WriteDeadLetters,
    WriteRegionPinned,
)
from transforms.dead_letters import DEAD_LETTER_DIR


def _sealed_output(broker: BrokerEnv, region: str, sources: int = 3) -> SealedOutput:
    data_key, wrapped = broker.wrap_new_key(region, "acme")
    envelope = seal_batch(b"arrow bytes stand-in", data_key=data_key, wrapped_key=wrapped,
                          region=region, producer_id="acme", schema_fingerprint=bytes(32),
                          context={"sealbeam.kind": "features"})
    return SealedOutput(region, "acme", envelope, row_count=sources, source_count=sources,
                        output_id=read_header(envelope)[0].envelope_id)


def _pme_output(broker: BrokerEnv, key_region: str, claimed_region: str) -> SealedOutput:
    """A PME file whose master keys are output DEKs of ``key_region``."""
    compiled = compile_spec(default_feature_spec())
    keys = master_keys_for({ROLE_FEATURES: broker.wrap_new_key(key_region, "acme"),
                            ROLE_PSEUDONYMS: broker.wrap_new_key(key_region, "acme")},
                           key_region, "acme")
    payload = write_pme_table(compiled.output_schema.empty_table(), compiled, keys)
    return SealedOutput(claimed_region, "acme", payload, row_count=0, source_count=2,
                        output_id=bytes(range(16)), output_format=PARQUET_PME)


def test_writes_under_the_sealed_region_and_refuses_others(broker: BrokerEnv,
                                                           tmp_path: Path) -> None:
    eu, us, also_eu = (_sealed_output(broker, r) for r in ("eu", "us", "eu"))
    with beam.Pipeline(runner=FnApiRunner()) as p:
        routed = p | "Outputs" >> beam.Create([eu]) | RouteByRegion()
        mislabeled = p | "Mislabeled" >> beam.Create([("us", also_eu), ("us", us)])
        written = ((routed, mislabeled) | beam.Flatten()
                   | WriteRegionPinned(str(tmp_path), allowed_regions={"eu"}))
        reasons = written[WriteRegionPinned.DEAD_LETTER] | beam.Map(
            lambda d: (d.stage, d.records, "not an allowed region" in d.reason))
        assert_that(reasons, equal_to([("region", 3, True), ("region", 3, True)]))
        written[WriteRegionPinned.DEAD_LETTER] | WriteDeadLetters(str(tmp_path))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert not [f for f in files if f.rsplit("/", 1)[-1].startswith(".")]   # no temporary file
    eu_files = [f for f in files if f.startswith("eu/")]
    [eu_file] = eu_files
    assert (tmp_path / eu_file).read_bytes() == eu.payload
    assert eu_file.endswith(".sbatch") and not (tmp_path / "us").exists()
    dead_files = [f for f in files if f.startswith(f"{DEAD_LETTER_DIR}/")]
    lines = [line for f in dead_files for line in (tmp_path / f).read_bytes().splitlines()]
    assert len(lines) == 2
    assert {json.loads(line)["stage"] for line in lines} == {"region"}


def test_a_destination_other_than_the_sealed_region_is_refused(broker: BrokerEnv,
                                                               tmp_path: Path) -> None:
    """Even when both regions are allowed, a batch sealed for eu never lands in us."""
    eu = _sealed_output(broker, "eu")
    with beam.Pipeline(runner=FnApiRunner()) as p:
        written = (p | beam.Create([eu]) | RouteByRegion({"eu": "us"})
                   | WriteRegionPinned(str(tmp_path), allowed_regions={"eu", "us"}))
        refusals = written[WriteRegionPinned.DEAD_LETTER] | beam.Map(
            lambda d: (d.record_id, "differs from the sealed region" in d.reason))
        assert_that(refusals, equal_to([(read_header(eu.payload)[0].envelope_id.hex(), True)]))
        assert_that(written[WriteRegionPinned.WRITTEN], equal_to([]), label="nothing written")
    assert not any(tmp_path.rglob("*.sbatch"))


@pytest.mark.parametrize("regions", [set(), {"EU"}, {"../us"}])
def test_bad_region_configuration_is_refused(regions: set[str], tmp_path: Path) -> None:
    with pytest.raises(TransformConfigError):
        WriteRegionPinned(str(tmp_path), allowed_regions=regions)


def test_pme_files_land_under_their_footer_keys_region_only(broker: BrokerEnv,
                                                            tmp_path: Path) -> None:
    honest = _pme_output(broker, "us", "us")
    lying = _pme_output(broker, "eu", "us")      # claims us, but its keys are eu's
    with beam.Pipeline(runner=FnApiRunner()) as p:
        routed = p | "Honest" >> beam.Create([honest]) | "Route" >> RouteByRegion()
        forced = p | "Lying" >> beam.Create([("us", lying)])
        written = ((routed, forced) | beam.Flatten()
                   | WriteRegionPinned(str(tmp_path), allowed_regions={"eu", "us"}))
        refusals = written[WriteRegionPinned.DEAD_LETTER] | beam.Map(
            lambda d: (d.records, d.reason))
        assert_that(refusals, equal_to([(2, "destination region 'us' differs from the sealed "
                                            "region 'eu'")]))
    [written_file] = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written_file.relative_to(tmp_path).as_posix() == (
        "us/part-00010203-0405-0607-0809-0a0b0c0d0e0f.parquet")
    assert written_file.read_bytes() == honest.payload


def test_a_payload_that_is_not_what_its_format_says_is_refused(broker: BrokerEnv,
                                                               tmp_path: Path) -> None:
    sealed = _sealed_output(broker, "eu")
    mislabeled = SealedOutput("eu", "acme", sealed.payload, 1, 1, sealed.output_id,
                              output_format=PARQUET_PME)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        written = (p | beam.Create([("eu", mislabeled)])
                   | WriteRegionPinned(str(tmp_path), allowed_regions={"eu"}))
        reasons = written[WriteRegionPinned.DEAD_LETTER] | beam.Map(lambda d: d.reason)
        assert_that(reasons, equal_to(["not a Parquet file with an encrypted footer "
                                       "(magic PARE)"]))
    assert not any(p for p in tmp_path.rglob("*") if p.is_file())
