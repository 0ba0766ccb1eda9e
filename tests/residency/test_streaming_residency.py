"""The streaming pipeline runs the batch pipeline's preflight and records the same destinations.

A ``TestStream`` (bundle-based DirectRunner) feeds on-time records, late records and two
broken lines into ``run_streaming`` with a residency map: afterwards each region's outputs,
dead letters and late records are under its own sinks (nothing under another region's, the
non-envelope in the unrouted sink), and every ``generate`` entry of the run in the broker's
ledger carries its region's sink and the location preflight found — once with ``file://``
sinks, once with eu on ``gcp-storage-emulator`` and us on Azurite (locations read through the
real SDKs from the metadata server). A sink outside the map refuses ``sealbeam run
streaming`` with the same one line and exit code as ``sealbeam run batch``, before any data
moves: no file, no object, no ledger entry; a streaming Dataflow dry run is refused the same
way, before its job is written.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from apache_beam.coders import BytesCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_stream
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from envelope import read_header
from pipelines import cli
from pipelines.preflight import PreflightRefused
from pipelines.streaming import run_streaming
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files, spec_without_k_anonymity
from tests.residency.object_store_maps import (
    AZURE_LOCATION,
    GCS_LOCATION,
    placed_stores,
    preflight_clients,
    sinks,
    stored_objects,
    write_map,
)
from tests.support.metadata_servers import MetadataServer, gcs_bucket
from tests.support.object_stores import AzuriteServer
from tests.support.residency import file_residency_map, granted_destinations, ledger_head
from transforms.write import STATEMENT_SUFFIX

REGIONS = ("eu", "us")
ON_TIME, LATE = 32, 8
WINDOW_SECONDS = 60
LATE_ARRIVAL = 500        # past the window [0, 60) plus the default lateness (60 s)


def _lines(paths: list[Path]) -> list[bytes]:
    return [line for path in paths for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def feed(broker: BrokerEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Base64 lines: on time (event time 10 s), late (event time 10 s, arriving at 500 s),
    one eu line with a flipped ciphertext byte and one line that is no envelope."""
    work = tmp_path_factory.mktemp("feed")
    _, on_time = sealed_partner_files(broker, work, ON_TIME, event_time=10.0)
    _, late = sealed_partner_files(broker, work, LATE, event_time=10.0, sealed_dir="late",
                                   seed=12)
    on_time_lines, late_lines = _lines(on_time), _lines(late)
    eu = next(i for i, line in enumerate(on_time_lines)
              if read_header(base64.b64decode(line))[0].region == "eu")
    flipped = bytearray(base64.b64decode(on_time_lines[eu]))
    flipped[-3] ^= 0x40
    on_time_lines[eu] = base64.b64encode(bytes(flipped))
    on_time_lines.append(base64.b64encode(b"random bytes, not an envelope"))
    late_regions = sorted(read_header(base64.b64decode(line))[0].region for line in late_lines)
    return {"work": work, "on_time": on_time_lines, "late": late_lines,
            "late_regions": late_regions, "sealed": on_time}


def _stream(feed: dict[str, Any]) -> test_stream.TestStream:
    return (test_stream.TestStream(coder=BytesCoder())
            .advance_watermark_to(Timestamp(0))
            .add_elements([TimestampedValue(line, 1 + i % 50)
                           for i, line in enumerate(feed["on_time"])])
            .advance_watermark_to(Timestamp(400))
            .add_elements([TimestampedValue(line, LATE_ARRIVAL) for line in feed["late"]])
            .advance_watermark_to_infinity())


def _options(broker: BrokerEnv, feed: dict[str, Any], residency: Path,
             **extra: str) -> PipelineOptions:
    flags = {"residency_map": str(residency), "broker_url": broker.url,
             "tee": "simulated-sev-snp", "dev_tee_dir": str(broker.dev_tee_dir),
             "regions": ",".join(REGIONS), "message_format": "base64",
             "window_seconds": str(WINDOW_SECONDS), "min_batch_size": "500",
             "feature_spec": str(spec_without_k_anonymity(feed["work"])), **extra}
    return PipelineOptions(flags=[f"--{k}={v}" for k, v in flags.items()])


def _dead_letters(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("dead-letter/dl-*.jsonl"))
            for line in path.read_bytes().splitlines()]


def _late(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("late/late-*.jsonl"))
            for line in path.read_bytes().splitlines()]


def _region_of(record: dict[str, Any]) -> str:
    return read_header(base64.b64decode(record["sealed_b64"]))[0].region


def test_a_mapped_streaming_run_writes_by_the_map_and_records_destinations(
        broker: BrokerEnv, feed: dict[str, Any], tmp_path: Path) -> None:
    residency = file_residency_map(tmp_path / "map.json", broker.settings, tmp_path)
    before = ledger_head(broker.settings)
    summary = run_streaming(_options(broker, feed, residency), source=_stream(feed))
    assert granted_destinations(broker.settings, before) == {
        region: {json.dumps({"sink": f"file://{tmp_path}/{region}-out", "location": "local",
                             "verified": True}, sort_keys=True)} for region in REGIONS}
    preflight = summary.residency["preflight"]
    assert preflight["verified"] is True                                     # type: ignore[index]
    assert {(c["region"], c["role"]): c["location"] for c in preflight["sinks"]} == {  # type: ignore[index]
        **{(r, role): "local" for r in REGIONS for role in ("sink", "dead_letter_sink")},
        ("(unrouted)", "unrouted_dead_letter_sink"): "local"}
    for region in REGIONS:
        outputs = [p for p in (tmp_path / f"{region}-out").glob("part-*")
                   if not p.name.endswith(STATEMENT_SUFFIX)]
        assert outputs and all(read_header(p.read_bytes())[0].region == region for p in outputs)
        # dead letters and late records of a region stand under its own dead-letter sink
        assert [d["stage"] for d in _dead_letters(tmp_path / f"{region}-dl")] == (
            ["open"] if region == "eu" else [])
        late = _late(tmp_path / f"{region}-dl")
        assert sorted(_region_of(r) for r in late) == [r for r in feed["late_regions"]
                                                       if r == region]
    [unrouted] = _dead_letters(tmp_path / "quarantine")
    assert unrouted["stage"] == "parse" and unrouted["sealed_b64"] == ""
    assert not (tmp_path / "quarantine" / "late").exists()


def _cli_flags(broker: BrokerEnv, residency: Path, sealed: list[Path], *streaming: str
               ) -> list[str]:
    pattern = str(sealed[0].parent / "*.sealed")
    return [f"--residency_map={residency}", f"--broker_url={broker.url}",
            "--tee=simulated-sev-snp", f"--dev_tee_dir={broker.dev_tee_dir}",
            f"--regions={','.join(REGIONS)}", f"--input={pattern}", *streaming]


def test_a_sink_outside_the_map_refuses_streaming_as_batch_before_any_data_moves(
        broker: BrokerEnv, feed: dict[str, Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    residency = file_residency_map(tmp_path / "map.json", broker.settings, tmp_path,
                                   eu_locations=["EUROPE-WEST4"])
    before = ledger_head(broker.settings)
    answers = []
    for command, extra in (("streaming", ("--max_files=4", "--poll_interval_seconds=0.2",
                                          "--stop_after_seconds=30")), ("batch", ())):
        code = cli.main(["run", command, *_cli_flags(broker, residency, feed["sealed"], *extra)])
        answers.append((code, capsys.readouterr().err.strip()))
    streaming, batch = answers
    assert streaming == batch
    assert streaming[0] == cli.USAGE_EXIT
    assert streaming[1] == (f"sealbeam: error: preflight refused: sink file://{tmp_path}/eu-out "
                            "of region eu is on this machine (local); allowed: EUROPE-WEST4 "
                            "(and 1 more refusal(s))")
    assert [p.name for p in tmp_path.iterdir()] == ["map.json"]     # nothing was written
    assert ledger_head(broker.settings) == before                   # no key was asked for


PLACEMENT = {"eu": "gcs", "us": "azure"}


def _stream_to_stores(broker: BrokerEnv, feed: dict[str, Any], residency: Path,
                      azurite: AzuriteServer, server: MetadataServer) -> object:
    """The feed through ``run_streaming`` to the emulators, preflight asking ``server``."""
    return run_streaming(_options(broker, feed, residency,
                                  azure_connection_string=azurite.connection_string),
                         source=_stream(feed), preflight_clients=preflight_clients(server))


def test_streaming_to_gcs_and_azure_records_the_store_locations(
        broker: BrokerEnv, feed: dict[str, Any], azurite: AzuriteServer,
        stores: tuple[Any, Any], tmp_path: Path) -> None:
    residency = write_map(tmp_path / "map.json", broker, azurite.account, PLACEMENT)
    before = ledger_head(broker.settings)
    with placed_stores(stores, azurite, PLACEMENT) as server:
        _stream_to_stores(broker, feed, residency, azurite, server)
    assert granted_destinations(broker.settings, before) == {
        "eu": {json.dumps({"sink": "gs://sb-eu-out/features", "location": GCS_LOCATION["eu"],
                           "verified": True}, sort_keys=True)},
        "us": {json.dumps({"sink": sinks("us", "azure", azurite.account)["sink"],
                           "location": AZURE_LOCATION["us"], "verified": True},
                          sort_keys=True)}}
    objects = stored_objects(stores)
    everything = [name for listed in objects.values() for name, _ in listed]
    assert not [name for name in everything if name.endswith(".tmp") or "/." in name]
    for region, out, dead in (("eu", "gs://sb-eu-out", "gs://sb-eu-dl"),
                              ("us", "azure:us-out", "azure:us-dl")):
        outputs = [(n, p) for n, p in objects[out] if not n.endswith(STATEMENT_SUFFIX)]
        assert outputs and all(n.startswith("features/part-") for n, _ in outputs)
        assert all(read_header(p)[0].region == region for _, p in outputs)
        late = [json.loads(line) for name, payload in objects[dead]
                if name.startswith("dl/late/") for line in payload.splitlines()]
        assert sorted(_region_of(r) for r in late) == [r for r in feed["late_regions"]
                                                       if r == region]
        letters = [json.loads(line) for name, payload in objects[dead]
                   if name.startswith("dl/dead-letter/") for line in payload.splitlines()]
        assert [d["stage"] for d in letters] == (["open"] if region == "eu" else [])
    # the other store of each region holds nothing
    assert all(objects[name] == [] for name in ("azure:eu-out", "azure:eu-dl", "gs://sb-us-out",
                                                "gs://sb-us-dl"))
    [(name, payload)] = objects["gs://sb-quarantine"]
    assert name.startswith("unrouted/dead-letter/")
    assert json.loads(payload)["stage"] == "parse"


def test_a_bucket_in_the_wrong_place_refuses_the_stream(
        broker: BrokerEnv, feed: dict[str, Any], azurite: AzuriteServer,
        stores: tuple[Any, Any], tmp_path: Path) -> None:
    residency = write_map(tmp_path / "map.json", broker, azurite.account, PLACEMENT)
    before = ledger_head(broker.settings)
    with placed_stores(stores, azurite, PLACEMENT) as server:
        server.put_gcs_bucket("sb-eu-dl", gcs_bucket("sb-eu-dl", "US", "multi-region"))
        with pytest.raises(PreflightRefused) as refused:
            _stream_to_stores(broker, feed, residency, azurite, server)
    assert str(refused.value).startswith("preflight refused: dead_letter_sink gs://sb-eu-dl/dl "
                                         "of region eu is in US (multi-region: ")
    assert all(listed == [] for listed in stored_objects(stores).values())
    assert ledger_head(broker.settings) == before


def test_a_streaming_dataflow_dry_run_runs_preflight(
        broker: BrokerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    residency = tmp_path / "map.json"
    regions = {"eu": {"locations": ["EUROPE-WEST4"], "kek": broker.settings.region_keks["eu"],
                      "local_kek": True,
                      "sink": f"file://{tmp_path}/eu-out",
                      "dead_letter_sink": f"file://{tmp_path}/eu-dl",
                      "worker_locations": ["europe-west4"]}}
    residency.write_text(json.dumps({"version": 1, "regions": regions,
                                     "unrouted_dead_letter_sink": f"file://{tmp_path}/q"}))
    argv = ["run", "streaming", "--source", "pubsub",
            "--subscription", "projects/sealbeam-test/subscriptions/feed",
            "--residency_map", str(residency), "--regions", "eu",
            "--pool_endpoints", "http://10.0.0.5:8700",
            "--pool_policy", str(broker.settings.policy_path), "--runner", "DataflowRunner",
            "--project", "sealbeam-test", "--region", "europe-west4",
            "--temp_location", "gs://sealbeam-tmp/tmp", "--waive_dataflow_kms_key",
            "--setup_file", "./setup.py", "--dry_run", "--job-json", str(tmp_path / "job.json")]
    assert cli.main(argv) == cli.USAGE_EXIT
    assert capsys.readouterr().err.strip() == (
        f"sealbeam: error: preflight refused: sink file://{tmp_path}/eu-out of region eu is on "
        "this machine (local); allowed: EUROPE-WEST4 (and 3 more refusal(s))")
    assert not (tmp_path / "job.json").exists()
