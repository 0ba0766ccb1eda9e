"""The errors of featurization: one base class, one subclass per kind of mistake.

What it does: gives callers (the batch processor, the command line) typed errors whose messages
name what was wrong: the spec field and line, the missing key name, the input column.

What it does not: never carries data values or key bytes in a message. A row that breaks the
declared input schema is not an error at all: it is reported as a ``RowViolation`` and the rest
of the batch proceeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FeatureError(Exception):
    """Base of every error raised by ``enclave_workers.features``."""


@dataclass(frozen=True)
class SpecProblem:
    """One thing wrong with a spec: where (path and, when known, line) and what."""

    path: tuple[str | int, ...]
    message: str
    line: int | None = None

    @property
    def field(self) -> str:
        """The path written the way a reader finds it: ``features[2].boundaries``."""
        return format_path(self.path)

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.field}: {self.message}"


class FeatureSpecError(FeatureError):
    """The spec is not valid: every problem found, each naming its field and line."""

    def __init__(self, problems: Sequence[SpecProblem], *, source: str | None = None) -> None:
        if not problems:
            raise ValueError("FeatureSpecError needs at least one problem")
        self.problems: tuple[SpecProblem, ...] = tuple(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            text = f"{prefix}invalid feature spec: {self.problems[0]}"
        else:
            listed = "\n  ".join(str(p) for p in self.problems)
            text = f"{prefix}invalid feature spec ({len(self.problems)} problems):\n  {listed}"
        super().__init__(text)


class FeatureKeyError(FeatureError):
    """A key the spec names was not supplied, or is too short to be a key."""


class FeatureInputError(FeatureError):
    """The input as a whole cannot be featurized: a declared column is missing, a file is
    unreadable or over its size limit. (Bad *rows* are violations, not errors.)"""


def format_path(path: Sequence[str | int]) -> str:
    """``("features", 2, "std")`` -> ``features[2].std``; the empty path is ``(spec)``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(spec)"
