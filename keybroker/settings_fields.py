"""One check for every section of ``broker.yaml``: a mapping, with no field it does not know.

A misspelt setting that were silently ignored would leave its default in force (a limit, a
trust anchor, a cache bound) while the operator believes otherwise; so each section refuses
unknown fields, naming them, with its own error type.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["checked_section"]


def checked_section(document: object, where: str, known: Collection[str],
                    error: type[Exception]) -> Mapping:
    """``document`` when it is a mapping whose keys are all in ``known``; otherwise
    ``error("<where>: expected a mapping")`` or ``error("<where>: unknown field(s) a, b")``."""
    if not isinstance(document, Mapping):
        raise error(f"{where}: expected a mapping")
    unknown = sorted(str(key) for key in document if key not in known)
    if unknown:
        raise error(f"{where}: unknown field(s) {', '.join(unknown)}")
    return document
