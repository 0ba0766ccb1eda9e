"""``sealbeam feed``: publish a sealed data set to a Pub/Sub topic at a given rate."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from pipelines.pubsub_feed import publish_sealed
from transforms.pubsub import MESSAGE_FORMATS, RAW


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "feed", help="publish sealed envelopes to a Pub/Sub topic (demos, tests, benchmarks)",
        description="Publish every envelope of sealed files (as 'sealbeam seal' writes them) "
                    "to a Pub/Sub topic, one message each, with the attributes partner_id "
                    "(the header's producer) and envelope_id, at most --rate messages per "
                    "second. Also replays late records: a streaming run's late/late-*.jsonl "
                    "files publish the envelope (or stream excerpt) each line holds. Set "
                    "PUBSUB_EMULATOR_HOST to publish to an emulator. Prints one JSON line of "
                    "counts.")
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="sealed files (base64 lines) or late-record files (JSON lines "
                             "with sealed_b64)")
    parser.add_argument("--topic", required=True, help="projects/PROJECT/topics/TOPIC")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages per second at most (default 0: as fast as possible)")
    parser.add_argument("--message-format", choices=MESSAGE_FORMATS, default=RAW,
                        help="publish raw envelope bytes (default) or the base64 line")
    parser.set_defaults(func=run_feed)


def run_feed(args: argparse.Namespace) -> int:
    report = publish_sealed(args.inputs, args.topic, rate=args.rate,
                            message_format=args.message_format)
    print(json.dumps(asdict(report), sort_keys=True))
    return 0
