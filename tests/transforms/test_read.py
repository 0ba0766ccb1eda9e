"""Framing of sealed-record files: bounded line splitting, base64 decoding, header parsing."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import DecodeSealedLines, ParseSealed, ReadSealedRecords
from transforms.read import iter_bounded_lines


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
       st.booleans())
def test_bounded_lines_match_a_plain_split(lines: list[bytes], trailing_newline: bool) -> None:
    content = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    got = [line for _, line, _ in iter_bounded_lines(io.BytesIO(content), 1000)]
    expected = content.split(b"\n")
    if expected and expected[-1] == b"":
        expected.pop()
    assert got == expected


def test_an_overlong_line_is_reported_without_being_kept() -> None:
    content = b"short\n" + b"x" * 5000 + b"\nafter\n" + b"y" * 3000
    got = list(iter_bounded_lines(io.BytesIO(content), 100))
    assert got == [(1, b"short", 5), (2, None, 5000), (3, b"after", 5), (4, None, 3000)]


def test_read_splits_files_and_dead_letters_bad_lines(tmp_path: Path) -> None:
    good = [b"\x01envelope-one", b"\x02envelope-two"]
    (tmp_path / "a.sealed").write_bytes(
        base64.b64encode(good[0]) + b"\n\n" + b"@@ not base64 @@\n" + base64.b64encode(good[1]))
    with beam.Pipeline(runner=FnApiRunner()) as p:
        read = p | ReadSealedRecords(str(tmp_path / "*.sealed"))
        assert_that(read[ReadSealedRecords.SEALED], equal_to(good), label="sealed")
        dead = read[ReadSealedRecords.DEAD_LETTER] | beam.Map(
            lambda d: (d.stage, d.record_id.rsplit("@", 1)[1], d.sealed, "base64" in d.reason))
        offset = len(base64.b64encode(good[0])) + 2                # the line after a blank one
        assert_that(dead, equal_to([("framing", str(offset), b"", True)]), label="dead")


def test_decode_lines_and_parse_headers_for_message_elements() -> None:
    with beam.Pipeline(runner=FnApiRunner()) as p:
        decoded = p | beam.Create([base64.b64encode(b"garbage bytes"), b"!!", b"  "]) \
            | DecodeSealedLines()
        parsed = decoded[DecodeSealedLines.SEALED] | ParseSealed()
        assert_that(parsed[ParseSealed.SEALED], equal_to([]), label="nothing parses")
        stages = ((decoded[DecodeSealedLines.DEAD_LETTER], parsed[ParseSealed.DEAD_LETTER])
                  | beam.Flatten() | beam.Map(lambda d: (d.stage, d.sealed)))
        assert_that(stages, equal_to([("framing", b""), ("parse", b"")]), label="dead")
