"""Which broker key a pipeline's workers pin: the PEM they verify every grant with.

What it does: ``resolve_broker_identity`` returns the broker's public identity key (PEM text,
which pickles with the pipeline) from an explicit PEM, or for local runs of the simulated
TEE from the state directory that holds ``dev_tee_dir`` (``<state>/broker-identity.pub.pem``,
written by ``sealbeam keys init``). It parses the key once here, so a wrong file fails when
the pipeline is built, not on a worker. ``pinned_broker_client`` builds the worker's client.

What it does not: it never runs a pipeline unpinned: no key found is a TransformConfigError.
"""

from __future__ import annotations

from pathlib import Path

from keybroker.client import BrokerClient
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey, IdentityError

from .errors import TransformConfigError
from .tee import TeeSettings

__all__ = ["pinned_broker_client", "resolve_broker_identity"]


def resolve_broker_identity(pem: str | None, tee: TeeSettings) -> str:
    """The pinned broker key as PEM text; TransformConfigError when there is none."""
    if pem is None and tee.dev_tee_dir:
        candidate = Path(tee.dev_tee_dir).parent / IDENTITY_PUBLIC_KEY_FILE
        if candidate.is_file():
            pem = candidate.read_text(encoding="ascii", errors="replace")
    if pem is None:
        raise TransformConfigError(
            "no broker identity to pin: pass the broker's public key "
            f"(--broker_identity, the {IDENTITY_PUBLIC_KEY_FILE} of its state)"
        )
    try:
        BrokerPublicKey.from_pem(pem)
    except IdentityError as error:
        raise TransformConfigError(str(error)) from None
    return pem


def pinned_broker_client(broker_url: str, broker_identity_pem: str) -> BrokerClient:
    """A broker client that verifies every grant with the pinned key."""
    return BrokerClient(broker_url, broker_identity=BrokerPublicKey.from_pem(broker_identity_pem))
