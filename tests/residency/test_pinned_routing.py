"""Routing never falls back: no sink in the map, or another KEK, is a dead letter with why;
dead letters go to their own region's dead-letter sink, or to the unrouted sink."""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from enclave_workers.batch_processor import DeadLetter, SealedOutput
from envelope import read_header, seal_batch
from tests.enclave_workers.broker_env import BrokerEnv
from transforms import RouteByRegion, WriteRegionPinned
from transforms.dead_letter_sinks import WriteDeadLettersBySink
from transforms.output_region import sealed_bytes_region


def _output(broker: BrokerEnv, region: str) -> SealedOutput:
    data_key, wrapped = broker.wrap_new_key(region, "acme")
    envelope = seal_batch(b"arrow bytes stand-in", data_key=data_key, wrapped_key=wrapped,
                          region=region, producer_id="acme", schema_fingerprint=bytes(32),
                          context={"sealbeam.kind": "features"})
    return SealedOutput(region, "acme", envelope, row_count=2, source_count=2,
                        output_id=read_header(envelope)[0].envelope_id)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_unmapped_region_and_foreign_kek_are_dead_letters(broker: BrokerEnv,
                                                          tmp_path: Path) -> None:
    eu, us = _output(broker, "eu"), _output(broker, "us")
    sinks = {"eu": str(tmp_path / "eu-sink")}                 # us has no sink in the map
    keks = {"eu": broker.settings.region_keks["eu"]}
    roots = {"eu": str(tmp_path / "eu-dl"), "us": str(tmp_path / "us-dl")}
    with beam.Pipeline(runner=FnApiRunner()) as p:
        written = (p | beam.Create([eu, us]) | RouteByRegion()
                   | WriteRegionPinned(sinks, {"eu", "us"}, keks))
        written[WriteRegionPinned.DEAD_LETTER] | WriteDeadLettersBySink(
            {"eu": roots["eu"]}, str(tmp_path / "unrouted"))
    [eu_file] = _files(tmp_path / "eu-sink")
    assert eu_file.startswith("part-") and not eu_file.startswith(".")
    assert not (tmp_path / "us-dl").exists()
    [unrouted] = _files(tmp_path / "unrouted")
    [letter] = [json.loads(line) for line in
                (tmp_path / "unrouted" / unrouted).read_text().splitlines()]
    assert letter["reason"] == "region 'us' has no sink in the residency map"
    assert letter["stage"] == "region" and letter["records"] == 2

    with beam.Pipeline(runner=FnApiRunner()) as p:
        wrong_kek = {"eu": "local://keyring/eu/some-other-kek"}
        written = (p | beam.Create([eu]) | RouteByRegion()
                   | WriteRegionPinned(sinks, {"eu"}, wrong_kek))
        written[WriteRegionPinned.DEAD_LETTER] | WriteDeadLettersBySink(
            roots, str(tmp_path / "unrouted2"))
    [eu_dead] = _files(tmp_path / "eu-dl")
    [letter] = [json.loads(line) for line in
                (tmp_path / "eu-dl" / eu_dead).read_text().splitlines()]
    assert letter["reason"].startswith("output key of region 'eu' is wrapped under ")
    assert letter["reason"].endswith("not the region's KEK 'local://keyring/eu/some-other-kek'")


def test_dead_letters_follow_their_sealed_region(broker: BrokerEnv, tmp_path: Path) -> None:
    eu, us = _output(broker, "eu"), _output(broker, "us")
    letters = [DeadLetter("a", "bad", "open", eu.payload), DeadLetter("b", "bad", "open",
                                                                      us.payload),
               DeadLetter("c", "not an envelope", "parse", b""),
               DeadLetter("d", "garbage", "parse", b"SEALBEAM? no")]
    assert [sealed_bytes_region(d.sealed) for d in letters] == ["eu", "us", None, None]
    roots = {"eu": str(tmp_path / "eu"), "us": str(tmp_path / "us")}
    with beam.Pipeline(runner=FnApiRunner()) as p:
        p | beam.Create(letters) | WriteDeadLettersBySink(roots, str(tmp_path / "q"))
    found = {}
    for name in ("eu", "us", "q"):
        for path in (tmp_path / name).rglob("dl-*.jsonl"):
            found.setdefault(name, []).extend(
                json.loads(line)["record_id"] for line in path.read_text().splitlines())
    assert {k: sorted(v) for k, v in found.items()} == {"eu": ["a"], "us": ["b"],
                                                       "q": ["c", "d"]}
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]
