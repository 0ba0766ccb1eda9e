"""The broker's signed ledger head for a run summary: fetched once at the end of a run.

What it does: ``fetch_ledger_head`` asks the broker a pipeline used for its ledger head
(``GET /v1/ledger/head``), verifies the checkpoint with the same pinned broker key the
workers used, and returns the signed envelope for the run summary, where
``sealbeam audit verify --anchor SUMMARY.json`` later finds it: a ledger cut back or
rewritten below that head no longer matches it.

What it does not: it does not verify the ledger itself (that is the auditor's job, offline).
"""

from __future__ import annotations

from keybroker.client import BrokerError
from transforms.broker_identity import pinned_broker_client, resolve_broker_trust
from transforms.errors import TransformError

from .errors import PipelineError
from .options import SealbeamOptions, broker_trust, required, tee_settings

__all__ = ["fetch_ledger_head"]


def fetch_ledger_head(opts: SealbeamOptions) -> dict[str, object]:
    """The broker's signed checkpoint of its ledger head, checked with the pinned key."""
    try:
        trust = resolve_broker_trust(broker_trust(opts), tee_settings(opts))
        with pinned_broker_client(required(opts, "broker_url"), trust) as client:
            return dict(client.ledger_head().envelope)
    except (BrokerError, TransformError) as exc:
        raise PipelineError(f"the broker's signed ledger head could not be fetched: {exc}"
                            ) from None
