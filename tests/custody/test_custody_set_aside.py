"""How the run check tells an envelope id from other record ids."""

from __future__ import annotations

from pipelines.custody_set_aside import is_envelope_id


def test_envelope_ids_are_32_lowercase_hex() -> None:
    assert is_envelope_id("0" * 32) and is_envelope_id("0123456789abcdef" * 2)
    assert not is_envelope_id("0" * 31) and not is_envelope_id("0" * 33)
    assert not is_envelope_id("A" * 32) and not is_envelope_id("g" * 32)
