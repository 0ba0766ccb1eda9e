"""What a pipeline's workers trust about the broker: its identity key, and its TLS certificate.

What it does: ``BrokerTrust`` carries, as PEM text that pickles with the pipeline, the
broker's public identity key that workers pin and verify every grant with, and optionally
the CA bundle or the one pinned certificate its ``https://`` endpoint must present.
``resolve_broker_trust`` fills in the identity for local runs of the simulated TEE from the
state directory that holds ``dev_tee_dir`` (``<state>/broker-identity.pub.pem``, written by
``sealbeam keys init``) and parses everything once, so a wrong file fails when the pipeline
is built, not on a worker. ``pinned_broker_client`` builds the worker's client from it.

What it does not: it never runs a pipeline unpinned (no key found is a
TransformConfigError), and it carries no client private key (a pickled pipeline is no
place for one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from keybroker.client import BrokerClient, BrokerRequestError
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey, IdentityError

from .errors import TransformConfigError
from .tee import TeeSettings

__all__ = ["BrokerTrust", "pinned_broker_client", "resolve_broker_trust"]


@dataclass(frozen=True)
class BrokerTrust:
    """PEM texts: the broker identity (required once resolved), a CA bundle or a pinned cert."""

    identity_pem: str | None = None
    ca_pem: str | None = None
    pinned_certificate_pem: str | None = None


def resolve_broker_trust(trust: BrokerTrust | None, tee: TeeSettings) -> BrokerTrust:
    """``trust`` with its identity filled in and checked; TransformConfigError otherwise."""
    trust = trust or BrokerTrust()
    if trust.identity_pem is None and tee.dev_tee_dir:
        candidate = Path(tee.dev_tee_dir).parent / IDENTITY_PUBLIC_KEY_FILE
        if candidate.is_file():
            trust = replace(trust, identity_pem=candidate.read_text("ascii", errors="replace"))
    if trust.identity_pem is None:
        raise TransformConfigError(
            "no broker identity to pin: pass the broker's public key "
            f"(--broker_identity, the {IDENTITY_PUBLIC_KEY_FILE} of its state)"
        )
    try:
        BrokerPublicKey.from_pem(trust.identity_pem)
    except IdentityError as error:
        raise TransformConfigError(str(error)) from None
    if trust.ca_pem is not None and trust.pinned_certificate_pem is not None:
        raise TransformConfigError("give the broker's CA bundle or its pinned certificate, "
                                   "not both")
    return trust


def pinned_broker_client(broker_url: str, trust: BrokerTrust) -> BrokerClient:
    """A broker client that verifies every grant with the pinned key (and TLS as given)."""
    if trust.identity_pem is None:
        raise TransformConfigError("the broker trust has no identity key (resolve it first)")
    try:
        return BrokerClient(
            broker_url,
            broker_identity=BrokerPublicKey.from_pem(trust.identity_pem),
            ca_bundle=trust.ca_pem.encode("ascii") if trust.ca_pem else None,
            pinned_certificate=(trust.pinned_certificate_pem.encode("ascii")
                                if trust.pinned_certificate_pem else None),
        )
    except BrokerRequestError as error:
        raise TransformConfigError(str(error)) from None
