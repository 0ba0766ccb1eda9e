"""read_bounded: the whole file up to the limit; over it, or unreadable, the caller's error."""

from __future__ import annotations

from pathlib import Path

import pytest

from keybroker.bounded_read import read_bounded


class _Refused(Exception):
    pass


def _read(path: Path, limit: int) -> bytes:
    return read_bounded(path, limit, _Refused, cannot_read=f"cannot read {path.name}",
                        too_large=f"{path.name} is over {limit} bytes")


def test_a_file_at_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_bytes(b"x" * 16)
    assert _read(path, 16) == b"x" * 16
    assert _read(path, 17) == b"x" * 16


def test_one_byte_over_the_limit_is_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_bytes(b"x" * 17)
    with pytest.raises(_Refused, match=r"^settings\.yaml is over 16 bytes$"):
        _read(path, 16)


def test_a_missing_file_is_the_callers_error_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(_Refused, match=r"^cannot read absent\.yaml: No such file or directory$"):
        _read(tmp_path / "absent.yaml", 16)


def test_a_directory_is_refused_not_read(tmp_path: Path) -> None:
    with pytest.raises(_Refused, match=r"^cannot read "):
        _read(tmp_path, 16)
