"""Which KMS and which ledger a command acting on ``--state`` uses, outside the broker.

What it does: ``kms_for_kek(state, kek_uri)`` opens the local keyring that ``STATE/broker.yaml``
names for ``local://`` KEKs (``STATE/keyring.json`` without broker.yaml), else the backend
broker.yaml configures for the URI's scheme (gcp-kms, azure-kv, pkcs11);
``state_ledger_path(state)`` is the ledger broker.yaml names (``STATE/ledger.sqlite`` without
it), so what ``keys`` and ``unseal`` record sits in the broker's own hash chain.

What it does not: it decides nothing about access; the KMS itself refuses callers who do not
hold the key (IAM, a missing keyring, a destroyed version).
"""

from __future__ import annotations

from pathlib import Path

from keybroker.config import BrokerSettings, ConfigError
from keybroker.kms.base import KeyManagementService
from keybroker.kms.local import LOCAL_SCHEME, LocalKeyring
from keybroker.kms.registry import kms_for_uri, uri_scheme

__all__ = ["KEYRING_FILE", "LEDGER_FILE", "SETTINGS_FILE", "broker_settings", "kms_for_kek",
           "state_ledger_path"]

LEDGER_FILE = "ledger.sqlite"
KEYRING_FILE = "keyring.json"
SETTINGS_FILE = "broker.yaml"


def broker_settings(state: Path) -> BrokerSettings | None:
    """The state's broker.yaml, or None when the state has none (a bare keyring)."""
    path = Path(state) / SETTINGS_FILE
    if not path.exists():
        return None
    return BrokerSettings.load(path)


def state_ledger_path(state: Path) -> Path:
    """broker.yaml's ``ledger``; ``STATE/ledger.sqlite`` without broker.yaml."""
    settings = broker_settings(state)
    return settings.ledger_path if settings is not None else Path(state) / LEDGER_FILE


def kms_for_kek(state: Path, kek_uri: str) -> KeyManagementService:
    """The KMS that serves ``kek_uri`` for a caller working from ``state``."""
    settings = broker_settings(state)
    if uri_scheme(kek_uri) == LOCAL_SCHEME:
        keyring = settings.keyring_path if settings is not None else Path(state) / KEYRING_FILE
        return LocalKeyring.open(keyring)
    if settings is None:
        raise ConfigError(f"no broker settings at {Path(state) / SETTINGS_FILE}: the KMS "
                          f"backend of {kek_uri} is configured there")
    return kms_for_uri(kek_uri, settings)
