"""Log setup shared by the ``sealbeam`` command line and the key broker: level and format.

What it does: ``configure_logging(level, fmt)`` installs one stderr handler on the root logger,
as text (``sealbeam: WARNING: name: message``) or as JSON lines (``{"time", "level",
"logger", "message", ...}`` plus any ``extra`` fields a caller passed, e.g. the broker's
access log), and drops the import-time notices of optional Beam/GCP packages we do not use.
It lives in ``keybroker`` so that the broker process and the CLI (which may import keybroker,
never the reverse) share it.

What it does not: it never adds secrets; callers log counts, ids and reasons only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import TextIO

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "JsonLineFormatter", "configure_logging"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
_IMPORT_NOISE = ("apitools not found", "Failed to import GCSFileSystem")
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}  # uvicorn's ANSI-coloured copy of the message
_HANDLER_NAME = "sealbeam-stderr"


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record; ``extra`` fields are kept as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                document[key] = value if isinstance(value, (str, int, float, bool)) or \
                    value is None else str(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, sort_keys=True, ensure_ascii=False)


def _not_import_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_IMPORT_NOISE)


def configure_logging(level: str = "warning", fmt: str = "text", *,
                      stream: TextIO | None = None) -> logging.Handler:
    """Route every logger to one stderr handler at ``level`` in ``fmt`` (replacing ours)."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonLineFormatter() if fmt == "json" else logging.Formatter(
        "sealbeam: %(levelname)s: %(name)s: %(message)s"))
    handler.addFilter(_not_import_noise)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # A fresh configuration starts from the root's level: levels a command set on our own
    # loggers before (e.g. ``broker serve``'s access log) do not outlive it.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("sealbeam.") and isinstance(logger, logging.Logger):
            logger.setLevel(logging.NOTSET)
    return handler


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at each record, not the stream of the moment it
    was made (which a caller, a test harness or a daemon, may since have replaced and closed)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """The stream is always the current ``sys.stderr``."""
