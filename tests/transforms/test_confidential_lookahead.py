"""ConfidentialProcess in a batch run looks one batch ahead and signs outputs in groups: every
output and dead letter still comes out in its own batch's window, and the outputs of many
batches share a ledger head instead of fetching one each."""

from __future__ import annotations

import base64
import json

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, GlobalWindows, TimestampedValue

from enclave_workers.batch_processor import default_feature_spec
from tests.enclave_workers.broker_env import BrokerEnv, person, seal_json
from transforms import ConfidentialProcess, TeeSettings
from transforms.windows import window_label

WINDOW_S = 60


def _timestamped(broker: BrokerEnv, window: int, count: int, per_key: int
                 ) -> list[TimestampedValue]:
    """``count`` records in window ``window``, a new DEK every ``per_key``; the first one
    tampered (a dead letter of that window)."""
    sealed = []
    for index in range(count):
        if index % per_key == 0:
            data_key, wrapped = broker.wrap_new_key("eu", "acme")
        envelope = seal_json({**person(1000 * window + index, "eu"), "amount": 20.0},
                             data_key, wrapped, "eu", "acme")
        if index == 0:
            tampered = bytearray(envelope)
            tampered[-3] ^= 0x01
            envelope = bytes(tampered)
        sealed.append(TimestampedValue(envelope, window * WINDOW_S + 1))
    return sealed


def _ledger_head(statement: bytes) -> str:
    payload = json.loads(base64.b64decode(json.loads(statement)["payload"]))
    return json.dumps(payload["predicate"]["ledger_head"], sort_keys=True)


class _InWindow(beam.DoFn):
    """(window number, element), and whether a statement names a file of this window."""

    def process(self, element, window=beam.DoFn.WindowParam):
        statement = getattr(element, "statement", b"")
        if statement:
            name = json.loads(base64.b64decode(json.loads(statement)["payload"]))[
                "subject"][0]["name"]
            if window_label(window) not in name:
                raise AssertionError(f"{name} is not named for its window {window}")
        yield int(window.start) // WINDOW_S, element


def test_outputs_and_dead_letters_keep_their_windows_and_share_ledger_heads(
        broker: BrokerEnv) -> None:
    inputs = _timestamped(broker, 0, 24, per_key=6) + _timestamped(broker, 1, 18, per_key=6)
    transform = ConfidentialProcess(broker.url, TeeSettings("simulated-sev-snp",
                                                            str(broker.dev_tee_dir)),
                                    default_feature_spec(), max_batch_size=6, key_shards=1)
    pipeline = beam.Pipeline(runner=FnApiRunner())
    processed = (pipeline | beam.Create(inputs) | beam.WindowInto(FixedWindows(WINDOW_S))
                 | transform)
    outputs = processed[ConfidentialProcess.SEALED] | "OutWindow" >> beam.ParDo(_InWindow())
    per_window = (outputs | beam.Map(lambda kv: (kv[0], kv[1].source_count))
                  | beam.CombinePerKey(sum))
    assert_that(per_window, equal_to([(0, 23), (1, 17)]), label="records per window")
    heads = (processed[ConfidentialProcess.SEALED]
             | beam.Map(lambda o: _ledger_head(o.statement))
             | "Global" >> beam.WindowInto(GlobalWindows())
             | beam.combiners.ToList()
             | beam.Map(lambda all_heads: (len(all_heads), len(set(all_heads)) <= 2)))
    # 7 batches (a DEK each, new grants each time), 7 outputs signed in one group per bundle:
    # a ledger head per bundle at most, not one per output.
    assert_that(heads, equal_to([(7, True)]), label="heads")
    dead = (processed[ConfidentialProcess.DEAD_LETTER] | "DeadWindow" >> beam.ParDo(_InWindow())
            | beam.Map(lambda kv: (kv[0], kv[1].stage)))
    assert_that(dead, equal_to([(0, "open"), (1, "open")]), label="dead letters")
    pipeline.run().wait_until_finish()
