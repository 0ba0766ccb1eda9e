"""keybroker.shred: rotation and crypto-shredding of KEK versions, each decision in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from keybroker.kms.base import KeyDestroyedError, KmsPermissionError
from keybroker.ledger import AuditLedger
from keybroker.rewrap import rewrap_paths
from keybroker.shred import (
    KekLifecycle,
    KeyOperationUnsupportedError,
    ShredRefusedError,
    rotate_kek,
    shred_kek_version,
)
from tests.keybroker.rewrap_support import (
    EU_KEK,
    US_KEK,
    envelopes_in,
    new_keyring,
    unwrap_key,
    write_record_file,
)


@pytest.fixture
def keyring(tmp_path: Path):
    return new_keyring(tmp_path)


@pytest.fixture
def ledger(tmp_path: Path):
    with AuditLedger(tmp_path / "ledger.sqlite") as opened:
        yield opened


def events(ledger: AuditLedger) -> list[tuple[str, str, dict]]:
    return [(entry.event, entry.decision, dict(entry.details)) for entry in ledger.entries()]


def test_the_local_keyring_offers_the_lifecycle(keyring) -> None:
    assert isinstance(keyring, KekLifecycle)


def test_rotate_makes_a_new_primary_and_records_it(keyring, ledger) -> None:
    result = rotate_kek(keyring, EU_KEK, ledger=ledger)
    assert (result.previous_version, result.new_version) == ("1", "2")
    assert keyring.primary_version(EU_KEK) == "2"
    assert keyring.primary_version(US_KEK) == "1"
    assert keyring.wrap(EU_KEK, bytes(32), b"aad").kek.version == "2"
    assert events(ledger) == [("kek-rotate", "granted", {
        "kek": EU_KEK, "previous_version": "1", "new_version": "2", "backend": "local",
    })]
    assert ledger.verify().ok


def test_shred_destroys_a_retired_version(tmp_path: Path, keyring, ledger) -> None:
    stranded = tmp_path / "data" / "records.sealed"
    write_record_file(stranded, keyring, records=2)
    envelope = envelopes_in(stranded)[0]
    unwrap_key(keyring, envelope)  # opens before the shred
    rotate_kek(keyring, EU_KEK, ledger=ledger)

    result = shred_kek_version(keyring, EU_KEK, "1", ledger=ledger)

    assert (result.version, result.rotated_to) == ("1", None)
    assert keyring.versions(EU_KEK) == {"1": "destroyed", "2": "enabled"}
    with pytest.raises(KeyDestroyedError, match="version 1 was destroyed"):
        unwrap_key(keyring, envelope)
    report = rewrap_paths([stranded], kms=keyring, kek_uri=EU_KEK,
                          journal_path=tmp_path / "journal.jsonl")
    assert report.files_failed[0]["reason"].startswith("key destroyed:")
    assert events(ledger)[-1] == ("kek-shred", "granted", {
        "kek": EU_KEK, "version": "1", "backend": "local",
    })
    assert ledger.verify().ok
    # Destroyed material is gone from the keyring file itself, not only marked.
    assert b'"material": null' in (tmp_path / "keyring.json").read_bytes()


def test_shredding_twice_is_idempotent(keyring, ledger) -> None:
    rotate_kek(keyring, EU_KEK, ledger=ledger)
    shred_kek_version(keyring, EU_KEK, "1", ledger=ledger)
    shred_kek_version(keyring, EU_KEK, "1", ledger=ledger)
    assert [event[:2] for event in events(ledger)] == [
        ("kek-rotate", "granted"), ("kek-shred", "granted"), ("kek-shred", "granted")
    ]


def test_the_primary_version_is_refused_without_force(keyring, ledger) -> None:
    with pytest.raises(ShredRefusedError, match="version 1 is the primary version"):
        shred_kek_version(keyring, EU_KEK, "1", ledger=ledger)
    assert keyring.versions(EU_KEK) == {"1": "enabled"}
    ((event, decision, details),) = events(ledger)
    assert (event, decision) == ("kek-shred", "denied")
    assert "primary" in details["reason"]


def test_force_rotates_first_then_destroys(keyring, ledger) -> None:
    result = shred_kek_version(keyring, EU_KEK, "1", ledger=ledger, force=True)
    assert result.rotated_to == "2"
    assert keyring.primary_version(EU_KEK) == "2"
    assert keyring.versions(EU_KEK) == {"1": "destroyed", "2": "enabled"}
    assert [(event, decision) for event, decision, _ in events(ledger)] == [
        ("kek-rotate", "granted"), ("kek-shred", "granted")
    ]
    assert events(ledger)[1][2]["rotated_to"] == "2"


def test_a_backend_refusal_is_recorded_and_raised(keyring, ledger) -> None:
    class RefusingKeyring:
        scheme = "local"

        def primary_version(self, kek_uri: str) -> str:
            return "2"

        def rotate(self, kek_uri: str):
            raise KmsPermissionError("rotation needs an administrator")

        def destroy_version(self, kek_uri: str, version: str) -> None:
            raise KmsPermissionError("caller may not destroy key versions")

    with pytest.raises(KmsPermissionError, match="may not destroy"):
        shred_kek_version(RefusingKeyring(), EU_KEK, "1", ledger=ledger)
    with pytest.raises(KmsPermissionError, match="needs an administrator"):
        rotate_kek(RefusingKeyring(), EU_KEK, ledger=ledger)
    assert [(event, decision) for event, decision, _ in events(ledger)] == [
        ("kek-shred", "denied"), ("kek-rotate", "denied")
    ]


def test_a_backend_without_the_lifecycle_is_refused(ledger) -> None:
    class WrapOnly:
        scheme = "wrap-only"

        def wrap(self, kek_uri, dek, aad): ...

        def unwrap(self, wrapped, aad): ...

    with pytest.raises(KeyOperationUnsupportedError, match="wrap-only backend cannot rotate"):
        rotate_kek(WrapOnly(), EU_KEK, ledger=ledger)
    with pytest.raises(KeyOperationUnsupportedError, match="cannot destroy versions"):
        shred_kek_version(WrapOnly(), EU_KEK, "1", ledger=ledger)
