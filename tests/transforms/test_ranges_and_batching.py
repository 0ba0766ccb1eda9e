"""Reading in byte ranges (every line exactly once, whatever the range size) and keyed,
deterministic batches bounded by count and bytes."""

from __future__ import annotations

import base64
import hashlib
import io
import random
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import ReadSealedRecords
from transforms.batching import BatchByDataKey, batch_id_of, cut_batches, group_key
from transforms.metrics import DUPLICATES, NAMESPACE
from transforms.read import file_ranges, iter_range_lines
from transforms.sealed import SealedEnvelope


def _lines_by_ranges(content: bytes, range_bytes: int, max_line: int = 1000
                     ) -> list[tuple[int, bytes | None]]:
    got = []
    for file_range in file_ranges("f.sealed", len(content), range_bytes):
        stream = io.BytesIO(content)
        got.extend((offset, line) for offset, line, _ in
                   iter_range_lines(stream, file_range, max_line))
    return got


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=25).map(lambda b: b.replace(b"\n", b"")), max_size=25),
       st.booleans(), st.integers(min_value=1, max_value=40))
def test_ranges_read_every_line_once_with_its_offset(lines: list[bytes], trailing: bool,
                                                     range_bytes: int) -> None:
    content = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    expected, offset = [], 0
    for line in content.split(b"\n"):
        expected.append((offset, line))
        offset += len(line) + 1
    if expected and expected[-1][1] == b"":
        expected.pop()
    assert _lines_by_ranges(content, range_bytes) == expected


def test_an_overlong_line_crossing_ranges_is_one_bounded_dead_line() -> None:
    content = b"ab\n" + b"x" * 50 + b"\ncd\n"
    assert _lines_by_ranges(content, 7, max_line=10) == [(0, b"ab"), (3, None), (54, b"cd")]


def test_compressed_files_are_one_range() -> None:
    assert len(file_ranges("f.sealed.gz", 10_000, 100)) == 1
    assert len(file_ranges("f.sealed", 10_000, 100)) == 100


def test_a_file_read_in_small_ranges_yields_every_envelope_once(tmp_path: Path) -> None:
    envelopes = [bytes([i]) * (i % 7 + 1) for i in range(60)]
    (tmp_path / "a.sealed").write_bytes(b"\n".join(base64.b64encode(e) for e in envelopes))
    with beam.Pipeline(runner=FnApiRunner()) as p:
        read = p | ReadSealedRecords(str(tmp_path / "*.sealed"), range_bytes=16)
        assert_that(read[ReadSealedRecords.SEALED], equal_to(envelopes))


def _envelope(index: int, key: str, size: int = 10) -> SealedEnvelope:
    data = index.to_bytes(4, "big") * (size // 4 + 1)
    return SealedEnvelope(hashlib.sha256(b"%d" % index).digest()[:16], key, "eu", "acme",
                          hashlib.sha256(data).digest(), data[:size])


def test_batches_are_bounded_by_count_and_bytes_and_do_not_depend_on_order() -> None:
    envelopes = [_envelope(i, f"key-{i % 3}", size=100 if i % 10 else 5000) for i in range(95)]
    shuffled = envelopes[:]
    random.Random(3).shuffle(shuffled)
    batches = cut_batches(envelopes, max_count=20, max_bytes=6000)
    assert [b.batch_id for b in batches] == [b.batch_id for b in cut_batches(shuffled, 20, 6000)]
    assert sorted(e.envelope_id for b in batches for e in b.envelopes) == sorted(
        e.envelope_id for e in envelopes)
    for batch in batches:
        assert 1 <= len(batch.envelopes) <= 20
        assert batch.payload_bytes <= 6000 or len(batch.envelopes) == 1
        assert batch.batch_id == batch_id_of(list(reversed(batch.envelopes)))
    counts = [len(b.envelopes) for b in cut_batches(envelopes, max_count=20, max_bytes=1 << 30)]
    assert counts == [19] * 5                                       # even, no small remainder
    huge = _envelope(1000, "key-0", size=9000)
    assert [len(b.envelopes) for b in cut_batches([huge], 20, 6000)] == [1]


def test_one_data_key_lands_in_one_group_unless_spread() -> None:
    same_key = [_envelope(i, "one-key") for i in range(50)]
    assert len({group_key(e, shards=8, spread=1) for e in same_key}) == 1
    assert len({group_key(e, shards=64, spread=4) for e in same_key}) > 1
    keys = [_envelope(i, f"key-{i}") for i in range(50)]
    assert len({group_key(e, shards=8, spread=1) for e in keys}) > 1


def test_batch_by_data_key_keeps_each_key_in_its_groups_batches() -> None:
    envelopes = [_envelope(i, f"key-{i % 5}") for i in range(100)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        batches = (p | beam.Create(envelopes)
                   | BatchByDataKey(max_count=7, max_bytes=1 << 20, shards=3))
        keys_per_group = batches | beam.Map(
            lambda b: (len(b.envelopes) <= 7, {group_key(e, 3, 1) for e in b.envelopes}))
        assert_that(keys_per_group | beam.Map(lambda t: t[0] and len(t[1]) == 1),
                    equal_to([True] * 15))


def test_exact_copies_are_dropped_inside_the_groups_and_counted() -> None:
    envelopes = [_envelope(i, f"key-{i % 4}") for i in range(30)]
    forged = SealedEnvelope(envelopes[2].envelope_id, "key-2", "eu", "acme", bytes(32), b"x")
    pipeline = beam.Pipeline(runner=FnApiRunner())
    batched = (pipeline | beam.Create(envelopes + envelopes[:3] + [envelopes[7], forged])
               | BatchByDataKey(max_count=8, shards=2, drop_duplicates=True))
    assert_that(batched[BatchByDataKey.BATCHES]
                | beam.FlatMap(lambda b: [e.data for e in b.envelopes]),
                equal_to([e.data for e in envelopes] + [b"x"]), label="each once")
    assert_that(batched[BatchByDataKey.DUPLICATES] | "D" >> beam.Map(lambda e: e.data),
                equal_to([e.data for e in [*envelopes[:3], envelopes[7]]]), label="copies")
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name(DUPLICATES))["counters"]
    assert sum(c.committed for c in counters) == 4
