"""``-`` as a file name: standard input spooled to a private file, standard output from a file.

What it does: commands whose library functions take paths (and may read them twice, or need
their size) accept ``-``: ``input_path("-")`` copies stdin into a private temporary file (mode
0600, deleted on exit) and yields its path; ``output_path("-")`` yields a temporary path whose
content is copied to stdout when the block succeeds (nothing is written on failure).

What it does not: it does not guess formats; a command reading ``-`` needs its format given or
uses its default.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["STDIO", "input_path", "output_path"]

STDIO = "-"
_CHUNK = 1 << 20


@contextmanager
def input_path(name: str | Path, suffix: str = "") -> Iterator[Path]:
    """``name`` as a path; for ``-``, a private copy of standard input (named ``stdin`` +
    ``suffix``, for readers that tell formats by suffix)."""
    if str(name) != STDIO:
        yield Path(name)
        return
    with tempfile.TemporaryDirectory(prefix="sealbeam-stdin-") as folder:
        spooled = Path(folder) / f"stdin{suffix}"
        descriptor = os.open(spooled, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, _CHUNK)
        yield spooled


@contextmanager
def output_path(name: str | Path, suffix: str = "") -> Iterator[Path]:
    """``name`` as a path; for ``-``, a temporary path copied to standard output on success."""
    if str(name) != STDIO:
        yield Path(name)
        return
    with tempfile.TemporaryDirectory(prefix="sealbeam-stdout-") as folder:
        produced = Path(folder) / f"stdout{suffix}"
        yield produced
        with produced.open("rb") as source:
            shutil.copyfileobj(source, sys.stdout.buffer, _CHUNK)
        sys.stdout.buffer.flush()
