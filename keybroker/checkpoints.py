"""Signed checkpoints of the audit ledger's head, and the check of a ledger against one.

What it does: a checkpoint is a DSSE envelope (payload type
``application/vnd.sealbeam.ledger-checkpoint+json``) in which the broker's identity key
states "my ledger had ``entries`` entries, the last with hash ``head``, the first with hash
``first``, at ``time``". The broker writes one at an interval and at shutdown
(``keybroker.service.checkpointer``) and signs one on request (``GET /v1/ledger/head``, which
run summaries and output manifests carry). ``check_anchor`` compares a ledger's recomputed
chain with a checkpoint: a ledger shorter than the checkpoint was truncated; a ledger whose
entry ``entries`` has another hash was rewritten (even when its chain was recomputed so
that it is consistent in itself); a ledger whose first entry differs was replaced.

What it does not: it cannot catch a rewrite of entries newer than the newest checkpoint one
holds, nor a rewrite by someone who holds the broker's identity key (docs/PROTOCOL.md,
"Anchored ledger"). It reads ledgers only through ``entries()``.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from keybroker.bounded_read import read_bounded
from keybroker.identity import BrokerIdentity, BrokerPublicKey, SignatureInvalidError

__all__ = [
    "CHECKPOINT_PAYLOAD_TYPE",
    "CHECKPOINT_TYPE",
    "AnchorCheck",
    "Checkpoint",
    "CheckpointError",
    "check_anchor",
    "load_anchors",
    "sign_checkpoint",
    "verify_checkpoint",
]

CHECKPOINT_PAYLOAD_TYPE = "application/vnd.sealbeam.ledger-checkpoint+json"
CHECKPOINT_TYPE = "sealbeam/ledger-checkpoint/v1"
GENESIS_HASH = "0" * 64
MAX_ANCHOR_FILE_BYTES = 64 * 1024 * 1024
_HEX_HASH = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(Exception):
    """A checkpoint is malformed or not signed by the pinned broker key."""


@dataclass(frozen=True)
class Checkpoint:
    """What a verified checkpoint states, and the signed envelope it came from."""

    entries: int
    head: str
    first: str
    time: float
    reason: str
    broker_key_id: str
    envelope: Mapping[str, Any]


class _Ledger(Protocol):
    def entries(self) -> Iterator[Any]: ...


def sign_checkpoint(
    identity: BrokerIdentity, entries: int, head: str, first: str, time: float, reason: str
) -> dict[str, Any]:
    """The broker's signed statement of its ledger head."""
    return identity.sign(
        CHECKPOINT_PAYLOAD_TYPE,
        {
            "type": CHECKPOINT_TYPE,
            "broker_key_id": identity.key_id,
            "entries": int(entries),
            "head": head,
            "first": first,
            "time": round(float(time), 3),
            "reason": reason,
        },
    )


def verify_checkpoint(public_key: BrokerPublicKey, envelope: object) -> Checkpoint:
    """The checkpoint in ``envelope`` once the pinned key's signature and its shape hold."""
    try:
        document = public_key.verify(envelope, CHECKPOINT_PAYLOAD_TYPE)
    except SignatureInvalidError as error:
        raise CheckpointError(f"checkpoint not authenticated ({error})") from None
    if document.get("type") != CHECKPOINT_TYPE:
        raise CheckpointError("checkpoint: unknown type")
    entries = document.get("entries")
    if not isinstance(entries, int) or isinstance(entries, bool) or entries < 0:
        raise CheckpointError("checkpoint: entries must be a non-negative integer")
    for name in ("head", "first"):
        value = document.get(name)
        if not isinstance(value, str) or not _HEX_HASH.match(value):
            raise CheckpointError(f"checkpoint: {name} must be 64 lowercase hex digits")
    time_value = document.get("time")
    if not isinstance(time_value, int | float) or isinstance(time_value, bool):
        raise CheckpointError("checkpoint: time must be a number")
    assert isinstance(envelope, Mapping)
    return Checkpoint(
        entries=entries,
        head=document["head"],
        first=document["first"],
        time=float(time_value),
        reason=str(document.get("reason", "")),
        broker_key_id=str(document.get("broker_key_id", "")),
        envelope=dict(envelope),
    )


@dataclass(frozen=True)
class AnchorCheck:
    """The outcome of ``check_anchor``: ok, or what the ledger lost against the checkpoint."""

    ok: bool
    checkpoint: Checkpoint
    problem: str | None = None


def check_anchor(ledger: _Ledger, checkpoint: Checkpoint) -> AnchorCheck:
    """Whether ``ledger`` still holds, unchanged, the entries ``checkpoint`` was signed over.

    Run the chain's own ``verify`` as well: this compares only the anchored positions.
    """
    if checkpoint.entries == 0:
        return AnchorCheck(True, checkpoint)
    first: str | None = None
    for entry in ledger.entries():
        if entry.seq == 1:
            first = entry.hash
            if not hmac.compare_digest(first, checkpoint.first):
                return AnchorCheck(
                    False,
                    checkpoint,
                    "entry 1 is not the one the checkpoint signed (the ledger was replaced "
                    "or rewritten from its start)",
                )
        if entry.seq == checkpoint.entries:
            if hmac.compare_digest(entry.hash, checkpoint.head):
                return AnchorCheck(True, checkpoint)
            return AnchorCheck(
                False,
                checkpoint,
                f"entry {entry.seq} has hash {entry.hash}, the checkpoint signed "
                f"{checkpoint.head} (entries at or before it were rewritten)",
            )
    return AnchorCheck(
        False,
        checkpoint,
        f"the checkpoint signed {checkpoint.entries} entries but the ledger ends before "
        "(entries were cut off the end)",
    )


def load_anchors(path: Path) -> list[object]:
    """The checkpoint envelopes in an anchor file, not yet verified.

    Accepts a saved checkpoint (one envelope), a checkpoints file (one envelope a line), or
    a JSON document that carries one under ``ledger_head`` (a run summary, a manifest).
    """
    path = Path(path)
    content = read_bounded(path, MAX_ANCHOR_FILE_BYTES, CheckpointError,
                           cannot_read=f"cannot read anchor {path.name}",
                           too_large=f"anchor {path.name} is over {MAX_ANCHOR_FILE_BYTES} bytes")
    try:
        text = content.decode("utf-8")
        documents = _json_documents(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"anchor {path.name} is not JSON or JSON lines") from None
    envelopes = [found for document in documents for found in _envelopes_in(document)]
    if not envelopes:
        raise CheckpointError(f"anchor {path.name} holds no ledger checkpoint")
    return envelopes


def _json_documents(text: str) -> list[object]:
    stripped = text.strip()
    try:
        return [json.loads(stripped)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in stripped.splitlines() if line.strip()]


def _envelopes_in(document: object) -> Iterable[object]:
    if isinstance(document, Mapping):
        if document.get("payloadType") == CHECKPOINT_PAYLOAD_TYPE:
            yield document
        elif "ledger_head" in document:
            yield from _envelopes_in(document["ledger_head"])
        elif isinstance(document.get("checkpoint"), Mapping):
            yield document["checkpoint"]
