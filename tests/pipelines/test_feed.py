"""``sealbeam feed`` without a server: what it would publish, its pacing, and its refusals.
(The emulator tests in test_streaming_pubsub.py publish for real.)"""

from __future__ import annotations

import base64
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from envelope import extract_stream_records, read_header, read_record_stream
from pipelines import cli
from pipelines.errors import InputFileError, PipelineError
from pipelines.pubsub_feed import publish_sealed, read_feed_messages
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files
from transforms.event_time import LateRecord
from transforms.late_output import late_file_name, late_record_to_json

TOPIC = "projects/acme-feed/topics/in"


class RecordingPublisher:
    """Keeps what would be published and when; every publish succeeds."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str], float]] = []

    def publish(self, topic: str, data: bytes, **attributes: str) -> Future[str]:
        self.published.append((topic, data, attributes, time.monotonic()))
        future: Future[str] = Future()
        future.set_result(str(len(self.published)))
        return future


def test_every_envelope_is_one_message_with_its_partner_and_id(broker: BrokerEnv,
                                                               tmp_path: Path) -> None:
    _, sealed = sealed_partner_files(broker, tmp_path, 12)
    lines = [line for path in sealed for line in path.read_bytes().splitlines()]
    publisher = RecordingPublisher()
    report = publish_sealed(sealed, TOPIC, rate=200, publisher=publisher)
    assert report.messages == len(lines) == len(publisher.published)
    for line, (topic, data, attributes, _) in zip(lines, publisher.published, strict=True):
        header, _ = read_header(data)
        assert topic == TOPIC and data == base64.b64decode(line)
        assert attributes == {"partner_id": header.producer_id,
                              "envelope_id": header.envelope_id.hex()}
    moments = [moment for *_, moment in publisher.published]
    assert moments[-1] - moments[0] >= (len(lines) - 1) / 200 - 0.01        # paced
    base64_messages = read_feed_messages(sealed, "base64")
    assert [m.data for m in base64_messages] == lines


def test_a_line_that_is_no_envelope_stops_the_feed_before_publishing(broker: BrokerEnv,
                                                                     tmp_path: Path) -> None:
    _, sealed = sealed_partner_files(broker, tmp_path, 6)
    sealed[0].write_bytes(sealed[0].read_bytes() + b"bm90IGFuIGVudmVsb3Bl\n")
    publisher = RecordingPublisher()
    with pytest.raises(InputFileError, match="not a base64 sealed envelope"):
        publish_sealed(sealed, TOPIC, publisher=publisher)
    assert publisher.published == []


def test_bad_feed_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="--topic"):
        publish_sealed([tmp_path / "x.sealed"], "in", publisher=RecordingPublisher())
    with pytest.raises(PipelineError, match="--rate"):
        publish_sealed([tmp_path / "x.sealed"], TOPIC, rate=-1, publisher=RecordingPublisher())
    assert cli.main(["feed", str(tmp_path / "missing.sealed"), "--topic", TOPIC]) == \
        cli.USAGE_EXIT


def test_seal_states_the_event_time_in_every_header(broker: BrokerEnv, tmp_path: Path) -> None:
    partner = tmp_path / "p.jsonl"
    partner.write_text('{"customer_id": "c1", "name": "n", "email": "e@x", "amount": 1.0, '
                       '"event_time": "2026-01-01T00:00:00Z", "region": "eu"}\n' * 3)
    sealed = tmp_path / "p.sealed"
    flags = ["seal", "--input", str(partner), "--output", str(sealed), "--region", "eu",
             "--producer", "acme", "--state", str(broker.state_dir)]
    assert cli.main([*flags, "--event-time", "2026-12-01T13:30:00.250Z"]) == 0
    stated = {read_header(m.data)[0].context["sealbeam.event_time"]
              for m in read_feed_messages([sealed], "raw")}
    assert stated == {"2026-12-01T13:30:00.250Z"}
    assert cli.main([*flags, "--event-time", "yesterday"]) == cli.USAGE_EXIT


def test_late_record_files_are_replayed_as_their_envelopes_and_stream_excerpts(
        broker: BrokerEnv, tmp_path: Path) -> None:
    """A late/ file (``transforms.late_output``'s lines) publishes the sealed bytes of each
    line: a v1 record with its header's producer and id, a stream record's one-record
    excerpt with its stream's producer and ``<stream id>#<index>``, so no two excerpts of a
    stream share a Pub/Sub id."""
    _, records = sealed_partner_files(broker, tmp_path / "v1", 3)
    _, streams = sealed_partner_files(broker, tmp_path / "v2", 8, profile=2,
                                      records_per_stream=8)
    record = base64.b64decode(records[0].read_bytes().splitlines()[0])
    stream = base64.b64decode(streams[0].read_bytes().splitlines()[0])
    layout = read_record_stream(stream)
    last = layout.record_count - 1
    assert last >= 1
    excerpts = extract_stream_records(stream, [0, last], layout=layout)
    late = tmp_path / "late" / late_file_name(["a", "b", "c"])
    late.parent.mkdir()
    late.write_bytes(b"".join(
        late_record_to_json(LateRecord(record_id, "2026-12-01T00:00:00Z", 0, sealed))
        for record_id, sealed in (("r", record), ("s#0", excerpts[0]), ("s#1", excerpts[1]))))
    publisher = RecordingPublisher()
    report = publish_sealed([late], TOPIC, publisher=publisher)
    assert report.messages == 3
    stream_id = layout.header.envelope_id.hex()
    record_header, _ = read_header(record)
    assert [(data, attributes) for _, data, attributes, _ in publisher.published] == [
        (record, {"partner_id": record_header.producer_id,
                  "envelope_id": record_header.envelope_id.hex()}),
        (excerpts[0], {"partner_id": layout.header.producer_id,
                       "envelope_id": f"{stream_id}#0"}),
        (excerpts[1], {"partner_id": layout.header.producer_id,
                       "envelope_id": f"{stream_id}#{last}"}),
    ]
    as_base64 = read_feed_messages([late], "base64")
    assert [base64.b64decode(m.data) for m in as_base64] == [record, *excerpts]


@pytest.mark.parametrize("line", [
    b'{"record_id": "r"}',                          # no sealed_b64
    b'{"sealed_b64": 7}',                            # not a string
    b'["sealed_b64"]',                               # not an object
    b'{"sealed_b64": "bm90IGFuIGVudmVsb3Bl"}',       # not an envelope
    b'{"sealed_b64": "U0JSWAEAAAAB"}',               # an excerpt cut short
    b'{"sealed_b64": ',                              # not JSON
])
def test_a_late_line_without_an_envelope_stops_the_feed_before_publishing(
        tmp_path: Path, line: bytes) -> None:
    late = tmp_path / "late.jsonl"
    late.write_bytes(line + b"\n")
    publisher = RecordingPublisher()
    with pytest.raises(InputFileError, match=r"late\.jsonl:1: not a base64 sealed envelope"):
        publish_sealed([late], TOPIC, publisher=publisher)
    assert publisher.published == []
