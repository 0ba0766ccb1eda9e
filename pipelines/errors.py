"""Errors of the ``pipelines`` room: what a user of ``sealbeam`` can get wrong.

What it does: one base (``PipelineError``); the CLI prints any of them as one line and exits 2.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of errors raised by ``pipelines`` (bad options, bad input files, failed checks)."""


class InputFileError(PipelineError):
    """An input file is missing, too large, or not in the expected format."""


class ReaderRegionError(PipelineError):
    """A reader asked to open an output that belongs to another region."""


class ReconciliationError(PipelineError):
    """A run's counts do not reconcile: records_in != records_out + dead_letters + duplicates."""


class DemoCheckError(PipelineError):
    """A check of the demo's outputs failed (identifiers present, counts off, ledger broken)."""
