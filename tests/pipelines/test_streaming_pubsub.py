"""The streaming pipeline on the real Pub/Sub emulator (``gcloud beta emulators pubsub``).

Topics and subscriptions are made with Google's client against the emulator; sealed data
sets go out through ``sealbeam feed``; the pipeline reads them with ``--source pubsub`` on
``FnApiRunner`` and stops by itself once the subscription stays idle (``--until-idle-s``).
Checked: sealed records and a sealed batch, one per message; every row once although
envelopes were republished (new message id) and
redelivered (an acknowledgement lost on purpose: the real emulator redelivers the same
message id), late records in ``late/``, a partner attribute that disagrees with the header as
a dead letter, and ``records_in = records_out + dead_letters + duplicates + late`` from the
run's metrics (``FnApiRunner`` keeps them all).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from envelope import read_header
from pipelines import cli
from pipelines.batch import BatchPipelineOutputs
from pipelines.pubsub_feed import publish_sealed, read_feed_messages
from pipelines.reading import open_output
from pipelines.sealing import seal_file
from pipelines.streaming import run_streaming
from pipelines.synthetic import REGIONS, write_partner_files
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import (
    assert_no_plaintext,
    plaintext_probes,
    sealed_partner_files,
    spec_without_k_anonymity,
)
from tests.support.pubsub_emulator import (  # noqa: F401  (a fixture)
    PubsubEmulator,
    client_env,
    pubsub_emulator,
)
from transforms.windows import window_label
from transforms.write import STATEMENT_SUFFIX

google_pubsub = pytest.importorskip("google.cloud.pubsub_v1",
                                    reason="the pubsub extra (pip install -e '.[pubsub]')")

WINDOW_SECONDS = 60
LATENESS_SECONDS = 30


@pytest.fixture(scope="module")
def emulator_env(pubsub_emulator: PubsubEmulator) -> Iterator[PubsubEmulator]:  # noqa: F811
    with client_env(pubsub_emulator):
        yield pubsub_emulator


def _topic_and_subscription(emulator: PubsubEmulator, name: str) -> tuple[str, str]:
    topic, subscription = emulator.topic(f"{name}-in"), emulator.subscription(f"{name}-sub")
    google_pubsub.PublisherClient().create_topic(name=topic)
    google_pubsub.SubscriberClient().create_subscription(
        name=subscription, topic=topic, ack_deadline_seconds=10)
    return topic, subscription


def _flags(broker: BrokerEnv, out: Path, subscription: str, work: Path) -> list[str]:
    flags = {"output_root": out, "broker_url": broker.url, "tee": "simulated-sev-snp",
             "dev_tee_dir": broker.dev_tee_dir, "regions": ",".join(REGIONS),
             "source": "pubsub", "subscription": subscription,
             "window_seconds": WINDOW_SECONDS, "allowed_lateness_seconds": LATENESS_SECONDS,
             "max_batch_duration_seconds": 1, "min_batch_size": 1,
             "feature_spec": spec_without_k_anonymity(work)}
    return [f"--{k}={v}" for k, v in flags.items()]


def _rows(out: Path, broker: BrokerEnv) -> list[str]:
    pseudonyms: list[str] = []
    for region in REGIONS:
        for path in sorted((out / region).glob("part-*")) if (out / region).is_dir() else []:
            if path.name.endswith(STATEMENT_SUFFIX):      # the output's custody statement
                continue
            table = open_output(path, keyring=broker.keyring, region=region)
            pseudonyms.extend(table.column("customer_pseudonym").to_pylist())
    return pseudonyms


def _late_lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((out / "late").glob("late-*.jsonl"))
            for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def feed_run(broker: BrokerEnv, emulator_env: PubsubEmulator,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run through the CLI: on-time and late records, republished copies, a bad
    attribute; ``sealbeam feed`` publishes, ``sealbeam run streaming`` reads until idle."""
    work = tmp_path_factory.mktemp("pubsub-feed")
    now = time.time()
    files, on_time = sealed_partner_files(broker, work / "on-time", 40, event_time=now)
    _, late = sealed_partner_files(broker, work / "late", 6, event_time=now - 600)
    batch_source = write_partner_files(work / "batch-partner", 8, files_per_group=1, seed=5)[0]
    batch = work / "batch.sealed"                          # one sealed batch: one message
    seal_file(batch_source.path, batch, keyring=broker.keyring, region=batch_source.region,
              producer_id=batch_source.producer_id, output_kind="batch", event_time=now)
    topic, subscription = _topic_and_subscription(emulator_env, "feed")
    published = []
    for paths in (on_time, late, [batch]):
        code = cli.main(["feed", *map(str, paths), "--topic", topic, "--rate", "500"])
        assert code == 0
    on_time_messages = read_feed_messages(on_time, "raw")
    late_messages = read_feed_messages(late, "raw")
    publisher = google_pubsub.PublisherClient()
    republished = on_time_messages[:5]
    for message in republished:                               # a partner sends again
        published.append(publisher.publish(topic, message.data, **message.attributes()))
    forged = on_time_messages[7]
    published.append(publisher.publish(topic, forged.data, partner_id="mallory",
                                       envelope_id=forged.envelope_id))
    for future in published:
        future.result(timeout=30)
    out = work / "out"
    started = time.monotonic()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["run", "streaming", *_flags(broker, out, subscription, work),
                         "--until-idle-s=3"])
    return {"code": code, "summary": json.loads(printed.getvalue().strip().splitlines()[-1]),
            "out": out, "files": [*files, batch_source], "batch_rows": batch_source.records,
            "seconds": time.monotonic() - started,
            "on_time": on_time_messages, "late": late_messages, "republished": republished,
            "forged": forged}


def test_a_pubsub_run_stops_when_idle_and_reconciles(feed_run) -> None:
    summary = feed_run["summary"]
    assert feed_run["code"] == 0, summary
    on_time, late = len(feed_run["on_time"]), len(feed_run["late"])
    assert summary["records_in"] == on_time + 1 + late + len(feed_run["republished"]) + 1
    assert summary["duplicates"] == len(feed_run["republished"])
    assert summary["late"] == late
    assert summary["dead_letters"] == 1
    assert summary["records_out"] == on_time + 1                     # records and the batch
    assert summary["rows_out"] == on_time + feed_run["batch_rows"]
    assert summary["reconciled"]
    assert feed_run["seconds"] < 60


def test_each_published_row_is_written_once(feed_run, broker: BrokerEnv) -> None:
    rows = _rows(feed_run["out"], broker)
    assert len(rows) == len(set(rows)) == len(feed_run["on_time"]) + feed_run["batch_rows"]


def test_late_records_land_sealed_in_the_late_output(feed_run) -> None:
    lines = _late_lines(feed_run["out"])
    assert sorted(line["record_id"] for line in lines) == sorted(
        m.envelope_id for m in feed_run["late"])
    by_id = {m.envelope_id: m.data for m in feed_run["late"]}
    for line in lines:
        sealed = base64.b64decode(line["sealed_b64"])
        assert sealed == by_id[line["record_id"]]
        assert read_header(sealed)[0].context["sealbeam.event_time"] == line["event_time"]


def test_late_records_replayed_by_feed_are_processed_by_a_run_that_allows_them(
        feed_run, broker: BrokerEnv, emulator_env: PubsubEmulator, tmp_path: Path) -> None:
    """``sealbeam feed`` of the first run's ``late/`` files publishes each late record again,
    still sealed; a run that allows an hour of lateness processes them: one row each, none
    late, the counts reconciled."""
    late_files = sorted((feed_run["out"] / "late").glob("late-*.jsonl"))
    late = len(feed_run["late"])
    assert late_files and late
    topic, subscription = _topic_and_subscription(emulator_env, "replay")
    assert cli.main(["feed", *map(str, late_files), "--topic", topic]) == 0
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["run", "streaming", *_flags(broker, out, subscription, tmp_path),
                         "--allowed_lateness_seconds=3600", "--until-idle-s=3"])
    summary = json.loads(printed.getvalue().strip().splitlines()[-1])
    assert code == 0, summary
    assert (summary["records_in"], summary["records_out"], summary["late"],
            summary["dead_letters"], summary["duplicates"]) == (late, late, 0, 0, 0)
    assert summary["reconciled"]
    rows = _rows(out, broker)
    assert len(rows) == len(set(rows)) == late


def test_a_partner_attribute_unlike_the_header_is_a_dead_letter(feed_run) -> None:
    dead = [json.loads(line) for path in (feed_run["out"] / "dead-letter").glob("dl-*.jsonl")
            for line in path.read_bytes().splitlines()]
    assert [(d["stage"], d["record_id"]) for d in dead] == [
        ("attribute", feed_run["forged"].envelope_id)]
    assert base64.b64decode(dead[0]["sealed_b64"]) == feed_run["forged"].data


def test_no_plaintext_in_any_pubsub_output(feed_run) -> None:
    assert assert_no_plaintext(feed_run["out"], plaintext_probes(feed_run["files"])) >= 3


class LosesFirstAck:
    """A real ``SubscriberClient`` whose first acknowledgement is lost: it sets the ack
    deadline of those messages to 0 instead, so the emulator delivers them again with the same
    message ids (what happens when a worker's ack does not reach Pub/Sub in time)."""

    def __init__(self) -> None:
        self._client = google_pubsub.SubscriberClient()
        self.lost: list[str] = []

    def pull(self, **kwargs: Any) -> Any:
        return self._client.pull(**kwargs)

    def acknowledge(self, request: dict[str, Any]) -> None:
        if not self.lost:
            self.lost = list(request["ack_ids"])
            self._client.modify_ack_deadline(request={
                "subscription": request["subscription"], "ack_ids": self.lost,
                "ack_deadline_seconds": 0})
            return
        self._client.acknowledge(request=request)


class _IndexByWindow(beam.DoFn):
    def __init__(self, index_dir: str) -> None:
        self._index_dir = index_dir

    def process(self, path: str, window=beam.DoFn.WindowParam) -> None:
        name = Path(path).name + ".json"
        (Path(self._index_dir) / name).write_text(json.dumps(
            {"path": path, "start": float(window.start), "end": float(window.end)}))


def test_redelivered_messages_produce_each_row_once(broker: BrokerEnv,
                                                    emulator_env: PubsubEmulator,
                                                    tmp_path: Path) -> None:
    _, sealed = sealed_partner_files(broker, tmp_path, 24, event_time=time.time())
    topic, subscription = _topic_and_subscription(emulator_env, "redeliver")
    report = publish_sealed(sealed, topic)
    index_dir = tmp_path / "index"
    index_dir.mkdir()

    def index_outputs(built: BatchPipelineOutputs) -> None:
        built.written_paths | "IndexByWindow" >> beam.ParDo(_IndexByWindow(str(index_dir)))

    out = tmp_path / "out"
    summary = run_streaming(
        PipelineOptions(flags=[*_flags(broker, out, subscription, tmp_path), "--until_idle_s=3"]),
        subscriber_factory=LosesFirstAck, extra_steps=index_outputs)
    assert summary.duplicates >= 1
    assert summary.records_in == report.messages + summary.duplicates
    assert summary.records_out == report.messages and summary.reconciled
    rows = _rows(out, broker)
    assert len(rows) == len(set(rows)) == report.messages
    index = [json.loads(p.read_text()) for p in index_dir.iterdir()]
    assert index and all(e["end"] - e["start"] == WINDOW_SECONDS for e in index)
    assert all(e["start"] <= time.time() for e in index)
    for entry in index:                                   # per-window files, named by window
        label = window_label(IntervalWindow(Timestamp(entry["start"]), Timestamp(entry["end"])))
        assert Path(entry["path"]).name.endswith(f"-{label}.sbatch")


def test_an_idle_subscription_ends_the_run_after_until_idle_s(broker: BrokerEnv,
                                                              emulator_env: PubsubEmulator,
                                                              tmp_path: Path) -> None:
    _, subscription = _topic_and_subscription(emulator_env, "idle")
    started = time.monotonic()
    summary = run_streaming(PipelineOptions(flags=[
        *_flags(broker, tmp_path / "out", subscription, tmp_path), "--until_idle_s=2"]))
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 30
    assert summary.records_in == summary.records_out == summary.duplicates == 0
    assert summary.reconciled


def test_a_missing_subscription_is_a_user_error(broker: BrokerEnv, emulator_env: PubsubEmulator,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    missing = emulator_env.subscription("never-created")
    code = cli.main(["run", "streaming", *_flags(broker, tmp_path / "out", missing, tmp_path),
                     "--until-idle-s=2"])
    assert code == cli.USAGE_EXIT
    assert capsys.readouterr().err.strip() == (
        f"sealbeam: error: Pub/Sub subscription {missing} does not exist")
