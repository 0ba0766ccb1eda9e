"""Counting header parses in tests: a monkeypatched ``parse_header`` wherever it is bound.

Every parse of an envelope header (``read_header``, ``parse_envelope``, the openers) goes
through ``envelope.header.parse_header``; this wraps it in every loaded module that holds it,
so a test can say how many headers a piece of code parsed (not how long it took).
"""

from __future__ import annotations

import sys

import pytest

import envelope.header as header_module


def count_header_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A one-item list whose item counts header parses until the monkeypatch is undone."""
    original = header_module.parse_header
    calls = [0]

    def counting_parse_header(envelope):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(envelope)

    for module in list(sys.modules.values()):
        if getattr(module, "parse_header", None) is original:
            monkeypatch.setattr(module, "parse_header", counting_parse_header)
    return calls
