"""``sealbeam feed`` without a server: what it would publish, its pacing, and its refusals.
(The emulator tests in test_streaming_pubsub.py publish for real.)"""

from __future__ import annotations

import base64
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from envelope import read_header
from pipelines import cli
from pipelines.errors import InputFileError, PipelineError
from pipelines.pubsub_feed import publish_sealed, read_feed_messages
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files

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
