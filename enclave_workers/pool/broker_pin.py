"""The broker a pool worker trusts: its pinned identity key, and its TLS certificate.

What it does: ``pinned_broker_client`` builds the pool worker's ``BrokerClient`` pinned to
the broker's public identity key, so every grant the worker gets (attest, release, generate)
must carry the broker's signature over the request and reply, as in-process workers require
(``transforms/broker_identity.py`` is their side; this module repeats its small resolution
rule because a pool worker never imports ``transforms``). The key is ``--broker_identity``
(a PEM file); for local runs of a simulated TEE, by default ``broker-identity.pub.pem`` in
the state directory that holds ``--dev_tee_dir`` (written by ``sealbeam keys init``).
``--broker_ca_bundle`` or ``--broker_pinned_cert`` name the TLS trust of an ``https://``
broker.

What it does not: it never builds an unpinned client (no key found is a
``BrokerPinError``: fail closed), and it holds no client private key.
"""

from __future__ import annotations

from pathlib import Path

from keybroker.client import BrokerClient, BrokerRequestError
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey, IdentityError

__all__ = ["BrokerPinError", "broker_identity_path", "pinned_broker_client"]


class BrokerPinError(ValueError):
    """No broker identity to pin, an unreadable one, or contradictory TLS trust."""


def broker_identity_path(identity: str | None, dev_tee_dir: str | None) -> Path:
    """``identity``, else ``broker-identity.pub.pem`` beside ``dev_tee_dir``; or raise."""
    if identity:
        return Path(identity)
    if dev_tee_dir:
        candidate = Path(dev_tee_dir).parent / IDENTITY_PUBLIC_KEY_FILE
        if candidate.is_file():
            return candidate
    raise BrokerPinError("no broker identity to pin: pass --broker_identity (the broker's "
                         f"{IDENTITY_PUBLIC_KEY_FILE})")


def pinned_broker_client(broker_url: str, *, identity: str | None, dev_tee_dir: str | None,
                         ca_bundle: str | None = None,
                         pinned_cert: str | None = None) -> BrokerClient:
    """A client that verifies every grant with the pinned key (and TLS as given)."""
    if ca_bundle and pinned_cert:
        raise BrokerPinError("give the broker's CA bundle or its pinned certificate, not both")
    path = broker_identity_path(identity, dev_tee_dir)
    try:
        key = BrokerPublicKey.load(path)
    except (IdentityError, OSError) as exc:
        raise BrokerPinError(f"broker identity {path}: {exc}") from None
    try:
        return BrokerClient(broker_url, broker_identity=key,
                            ca_bundle=Path(ca_bundle) if ca_bundle else None,
                            pinned_certificate=Path(pinned_cert) if pinned_cert else None)
    except BrokerRequestError as exc:
        raise BrokerPinError(str(exc)) from None
