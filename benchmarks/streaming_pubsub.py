"""Benchmark: the streaming pipeline reading Pub/Sub (an emulator) until idle, on FnApiRunner.

What it does, in a temporary directory: creates a state (``init_state``), generates
``--records`` synthetic partner records and seals them stating the current event time,
starts the key broker in this process on 127.0.0.1, creates a topic and subscription on the
Pub/Sub emulator that ``PUBSUB_EMULATOR_HOST`` names, publishes every envelope
(``publish_sealed``, ``sealbeam feed``'s library call, at ``--rate`` messages/s, 0 = unpaced),
then runs ``run_streaming --source pubsub --until_idle_s`` and prints one table: publish
seconds and messages/s, the run's wall seconds, those seconds less the idle tail, records/s
over them, output files and mean rows per output file (batch size as k-anonymity sees it),
broker calls per 1,000 records, and whether the run reconciled
(``records_in = records_out + dead_letters + duplicates + late``; a failed check exits 1).
``--json PATH`` also writes the numbers.

Start the emulator first (docs/OPERATIONS.md, Pub/Sub)::

    gcloud beta emulators pubsub start --host-port=127.0.0.1:8085 &
    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 .venv/bin/python benchmarks/streaming_pubsub.py \\
        [--records 1000] [--rate 0] [--until-idle-s 3] [--json PATH]

What it does not: no cloud, no real TEE (the simulated worker), one run (no repeats), and the
broker shares this process with the runner. It measures the local runner, whose user state
is slow (docs/ARCHITECTURE.md), not Dataflow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# The repository root goes first so that ``import envelope`` finds the package, not
# benchmarks/envelope.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apache_beam.options.pipeline_options import PipelineOptions

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from keybroker.config import init_state
from keybroker.kms.local import LocalKeyring
from keybroker.service.server import serve_in_thread
from pipelines import synthetic
from pipelines.pubsub_feed import publish_sealed
from pipelines.sealing import seal_file
from pipelines.streaming import run_streaming

PROJECT = "sealbeam-bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="publish at most this many messages/s (0: unpaced)")
    parser.add_argument("--until-idle-s", type=float, default=3.0)
    parser.add_argument("--max-batch-duration-s", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        parser.error("set PUBSUB_EMULATOR_HOST to a running Pub/Sub emulator (see --help)")
    if args.records < 1:
        parser.error("--records must be at least 1")
    return args


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    from google.cloud import pubsub_v1  # the pubsub extra

    settings = init_state(workdir / "state", regions=synthetic.REGIONS,
                          tenants=synthetic.PRODUCERS, allowed_measurements=(DEV_MEASUREMENT,))
    keyring = LocalKeyring.open(settings.keyring_path)
    sealed = []
    for partner_file in synthetic.write_partner_files(workdir / "partner", args.records,
                                                      files_per_group=1):
        target = workdir / "sealed" / f"{partner_file.path.stem}.sealed"
        seal_file(partner_file.path, target, keyring=keyring, region=partner_file.region,
                  producer_id=partner_file.producer_id, records_per_key=500,
                  profile=1)                                          # v1 records
        sealed.append(target)
    suffix = f"{os.getpid()}-{int(time.time())}"
    topic = f"projects/{PROJECT}/topics/bench-{suffix}"
    subscription = f"projects/{PROJECT}/subscriptions/bench-{suffix}"
    pubsub_v1.PublisherClient().create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    feed = publish_sealed(sealed, topic, rate=args.rate)
    broker = serve_in_thread(settings)
    try:
        flags = {"output_root": workdir / "out", "broker_url": broker.url,
                 "tee": "simulated-sev-snp", "dev_tee_dir": settings.state_dir / "dev-tee",
                 "regions": ",".join(synthetic.REGIONS), "source": "pubsub",
                 "subscription": subscription, "window_seconds": 60,
                 "max_batch_duration_seconds": args.max_batch_duration_s,
                 "until_idle_s": args.until_idle_s}
        started = time.monotonic()
        summary = run_streaming(PipelineOptions(
            flags=[f"--{name}={value}" for name, value in flags.items()]))
        seconds = time.monotonic() - started
    finally:
        broker.stop()
    busy = max(seconds - args.until_idle_s, 1e-9)
    return {
        "records": args.records, "publish_seconds": feed.seconds,
        "publish_messages_per_second": feed.messages_per_second,
        "run_seconds": round(seconds, 2), "run_seconds_less_idle": round(busy, 2),
        "records_per_second": round(args.records / busy, 1),
        "output_files": summary.output_files,
        "rows_per_output_file": round((summary.rows_out + summary.rows_suppressed)
                                      / max(summary.output_files, 1), 1),
        "rows_suppressed": summary.rows_suppressed,
        "broker_calls_per_1000_records": round(summary.broker_calls * 1000 / args.records, 1),
        "reconciled": summary.reconciled and summary.records_in == args.records,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sealbeam-bench-") as tmp:
        result = benchmark(args, Path(tmp))
    width = max(len(name) for name in result)
    for name, value in result.items():
        print(f"{name:<{width}}  {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result["reconciled"] else 1


if __name__ == "__main__":
    sys.exit(main())
