"""A Pub/Sub run's custody statement (the real emulator, FnApiRunner): it names no input
files, so ``verify_run`` (and ``sealbeam custody verify --run``) refuse it until the auditor
passes the partner's published files with ``--input``; with them it verifies, late records
and a republished envelope accounted for, and a published file left out is refused."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey
from pipelines import cli
from pipelines.custody_run import RUN_STATEMENT_NAME, verify_run
from pipelines.pubsub_feed import read_feed_messages
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files, spec_without_k_anonymity
from tests.support.pubsub_emulator import (  # noqa: F401  (a fixture)
    PubsubEmulator,
    client_env,
    pubsub_emulator,
)

google_pubsub = pytest.importorskip("google.cloud.pubsub_v1",
                                    reason="the pubsub extra (pip install -e '.[pubsub]')")


@pytest.fixture(scope="module")
def pubsub_run(broker: BrokerEnv, pubsub_emulator: PubsubEmulator,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("pubsub-custody")
    now = time.time()
    _, on_time = sealed_partner_files(broker, work / "on-time", 24, event_time=now)
    _, late = sealed_partner_files(broker, work / "late", 5, event_time=now - 600, seed=12)
    with client_env(pubsub_emulator):
        topic = pubsub_emulator.topic("custody-in")
        subscription = pubsub_emulator.subscription("custody-sub")
        google_pubsub.PublisherClient().create_topic(name=topic)
        google_pubsub.SubscriberClient().create_subscription(
            name=subscription, topic=topic, ack_deadline_seconds=30)
        assert cli.main(["feed", *map(str, [*on_time, *late]), "--topic", topic,
                         "--rate", "500"]) == 0
        again = read_feed_messages(on_time, "raw")[0]       # the partner publishes it twice
        google_pubsub.PublisherClient().publish(topic, again.data,
                                                **again.attributes()).result(timeout=30)
        republished = work / "republished.sealed"
        republished.write_bytes(base64.b64encode(again.data) + b"\n")
        out = work / "out"
        flags = {"output_root": out, "broker_url": broker.url, "tee": "simulated-sev-snp",
                 "dev_tee_dir": broker.dev_tee_dir, "regions": ",".join(REGIONS),
                 "source": "pubsub", "subscription": subscription, "window_seconds": 60,
                 "allowed_lateness_seconds": 30, "max_batch_duration_seconds": 1,
                 "min_batch_size": 1, "feature_spec": spec_without_k_anonymity(work),
                 "until_idle_s": 3}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli.main(["run", "streaming", *[f"--{k}={v}" for k, v in flags.items()]])
    yield {"code": code, "summary": json.loads(printed.getvalue().strip().splitlines()[-1]),
           "out": out, "subscription": subscription,
           "published": [*on_time, *late, republished],
           "key_path": broker.state_dir / IDENTITY_PUBLIC_KEY_FILE,
           "key": BrokerPublicKey.load(broker.state_dir / IDENTITY_PUBLIC_KEY_FILE)}


def test_the_statement_records_the_subscription_and_no_inputs(pubsub_run) -> None:
    assert pubsub_run["code"] == 0, pubsub_run["summary"]
    assert pubsub_run["summary"]["late"] > 0 and pubsub_run["summary"]["reconciled"]
    predicate = json.loads((pubsub_run["out"] / RUN_STATEMENT_NAME).read_text())["predicate"]
    assert predicate["source"] == "pubsub"
    assert predicate["subscription"] == pubsub_run["subscription"]
    assert predicate["inputs"] == []
    assert predicate["counts"]["late"] == pubsub_run["summary"]["late"]


def test_a_pubsub_run_verifies_only_with_the_published_files(
        pubsub_run, capsys: pytest.CaptureFixture[str]) -> None:
    bare = verify_run(pubsub_run["out"], broker_key=pubsub_run["key"])
    assert not bare.ok
    assert any(pubsub_run["subscription"] in r and "--input" in r for r in bare.reasons)
    verdict = verify_run(pubsub_run["out"], broker_key=pubsub_run["key"],
                         inputs=pubsub_run["published"])
    assert verdict.ok, verdict.reasons
    summary = pubsub_run["summary"]
    assert verdict.facts["late_records"] == summary["late"] > 0
    assert verdict.facts["duplicates"] + verdict.facts["redelivered"] == summary["duplicates"]
    assert verdict.facts["duplicates"] == 1
    command = ["custody", "verify", "--run", str(pubsub_run["out"]), "--broker-key",
               str(pubsub_run["key_path"])]
    assert cli.main(command) == 1
    assert "--input" in " ".join(json.loads(capsys.readouterr().out)["reasons"])
    inputs = [arg for path in pubsub_run["published"] for arg in ("--input", str(path))]
    assert cli.main([*command, *inputs]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_a_published_file_left_out_is_refused(pubsub_run) -> None:
    verdict = verify_run(pubsub_run["out"], broker_key=pubsub_run["key"],
                         inputs=pubsub_run["published"][1:])
    assert not verdict.ok
    assert any("are not among the inputs" in r for r in verdict.reasons)
