"""Rotation, disabling and whole-key crypto-shredding in the azure-kv backend: the real
azure-keyvault-keys SDK (rotate_key, update_key_properties, begin_delete_key with its poller,
purge_deleted_key) against the local HTTPS fake, through `keybroker.shred` and `sealbeam keys`."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from azure.core.rest import HttpRequest
from azure.keyvault.keys import KeyClient

from envelope.keys import WrappedKey
from keybroker.kms.azure_kv import AzureKeyVaultKms, KeyDisabledError, KmsInputError
from keybroker.kms.base import (
    KeyDestroyedError,
    KeyNotFoundError,
    KmsPermissionError,
    KmsTransientError,
)
from keybroker.kms.retry import Backoff
from keybroker.ledger import AuditLedger
from keybroker.shred import (
    VERSION_KEPT_NOTE,
    KekLifecycle,
    ShredRefusedError,
    WholeKekShredding,
    rotate_kek,
    shred_kek_version,
    shred_whole_kek,
)
from pipelines.commands import keys as keys_commands
from tests.keybroker.kms.fake_azure_kv import FakeKeyVault, FakePki, StaticTokenCredential

AAD = b"partner=acme;region=eu"
KEY = "partner-acme"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FakePki:
    return FakePki.create(Path(tmp_path_factory.mktemp("azure-lifecycle-pki")))


@pytest.fixture
def vault(pki: FakePki) -> Iterator[FakeKeyVault]:
    with FakeKeyVault(pki, deletion_polls=2) as fake:
        yield fake


def make_kms(pki: FakePki, vault: FakeKeyVault, **options: object) -> AzureKeyVaultKms:
    settings: dict[str, object] = {
        "connection_verify": str(pki.ca_path),
        "allowed_hosts": [vault.host],
        "verify_challenge_resource": False,
        "backoff": Backoff(attempts=2, initial_delay=0.01, max_delay=0.02),
        "sleep": lambda _seconds: None,
        "delete_polling_interval": 0,
        "delete_timeout": 10.0,
    }
    settings.update(options)
    return AzureKeyVaultKms(StaticTokenCredential(), **settings)  # type: ignore[arg-type]


@pytest.fixture
def kms(pki: FakePki, vault: FakeKeyVault) -> AzureKeyVaultKms:
    return make_kms(pki, vault)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[AuditLedger]:
    with AuditLedger(tmp_path / "ledger.sqlite") as opened:
        yield opened


def uri(vault: FakeKeyVault, name: str = KEY) -> str:
    return f"azure-kv://{vault.host}/keys/{name}"


def events(ledger: AuditLedger) -> list[tuple[str, str, dict]]:
    assert ledger.verify().ok
    return [(entry.event, entry.decision, dict(entry.details)) for entry in ledger.entries()]


def requests_to(vault: FakeKeyVault, method: str, path: str) -> list[int]:
    """Statuses the fake answered to ``method path``, the 401s of the auth challenge aside."""
    return [
        status
        for seen_method, seen_path, status in vault.requests
        if seen_method == method and seen_path.split("?")[0] == path and status != 401
    ]


def sealed_under_each_version(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, versions: int = 2
) -> list[tuple[bytes, WrappedKey]]:
    """One DEK wrapped under each of ``versions`` versions of KEY (rotating in between)."""
    sealed = []
    for index in range(versions):
        if index:
            kms.rotate(uri(vault))
        dek = os.urandom(32)
        sealed.append((dek, kms.wrap(uri(vault), dek, AAD)))
    return sealed


# -- the protocols ----------------------------------------------------------------------------


def test_the_backend_offers_the_lifecycle_and_whole_key_shredding(kms: AzureKeyVaultKms) -> None:
    assert isinstance(kms, KekLifecycle)
    assert isinstance(kms, WholeKekShredding)
    assert kms.erases_destroyed_versions is False


# -- rotate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("create", ["create_rsa_key", "create_oct_key"])
def test_rotate_makes_a_new_current_version_and_old_ones_still_unwrap(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, create: str
) -> None:
    first = getattr(vault, create)(KEY)
    assert kms.primary_version(uri(vault)) == first
    old_dek = os.urandom(32)
    old = kms.wrap(uri(vault), old_dek, AAD)

    created = kms.rotate(uri(vault))

    assert created.uri == uri(vault)
    assert created.version != first
    assert created.version == vault.keys[KEY][-1].version
    assert kms.primary_version(uri(vault)) == created.version
    new_dek = os.urandom(32)
    new = kms.wrap(uri(vault), new_dek, AAD)
    assert (old.kek.version, new.kek.version) == (first, created.version)
    assert kms.unwrap(old, AAD) == old_dek
    assert kms.unwrap(new, AAD) == new_dek
    previous, current = vault.version_of(KEY, first), vault.version_of(KEY, created.version)
    assert current.key_type == previous.key_type
    if previous.rsa_key is not None:
        assert current.rsa_key is not None
        assert current.rsa_key.key_size == previous.rsa_key.key_size
    assert requests_to(vault, "POST", f"/keys/{KEY}/rotate") == [200]


def test_rotate_kek_records_the_rotation(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, ledger: AuditLedger
) -> None:
    first = vault.create_rsa_key(KEY)
    result = rotate_kek(kms, uri(vault), ledger=ledger)
    assert result.previous_version == first
    assert result.new_version == kms.primary_version(uri(vault)) != first
    assert events(ledger) == [
        (
            "kek-rotate",
            "granted",
            {
                "kek": uri(vault),
                "previous_version": first,
                "new_version": result.new_version,
                "backend": "azure-kv",
            },
        )
    ]


# -- disable ----------------------------------------------------------------------------------


def test_a_disabled_version_refuses_to_unwrap_typed_and_can_be_enabled_again(
    kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    vault.create_rsa_key(KEY)
    (old_dek, old), (new_dek, new) = sealed_under_each_version(kms, vault)

    kms.disable_version(uri(vault), old.kek.version)

    assert vault.version_of(KEY, old.kek.version).enabled is False
    assert requests_to(vault, "PATCH", f"/keys/{KEY}/{old.kek.version}") == [200]
    with pytest.raises(KeyDisabledError, match="disabled"):
        kms.unwrap(old, AAD)
    assert kms.unwrap(new, AAD) == new_dek
    # Disabling is not erasing: the material is still there.
    kms.enable_version(uri(vault), old.kek.version)
    assert kms.unwrap(old, AAD) == old_dek


def test_disabling_the_current_version_is_refused(
    kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    current = vault.create_oct_key(KEY)
    with pytest.raises(KmsPermissionError, match="is the current version; rotate before"):
        kms.disable_version(uri(vault), current)
    assert vault.version_of(KEY, current).enabled is True
    assert requests_to(vault, "PATCH", f"/keys/{KEY}/{current}") == []


# -- shredding one version (disables it, says so) ---------------------------------------------


def test_a_version_shred_disables_and_says_the_material_is_not_erased(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, ledger: AuditLedger
) -> None:
    vault.create_rsa_key(KEY)
    (_, old), (new_dek, new) = sealed_under_each_version(kms, vault)

    result = shred_kek_version(kms, uri(vault), old.kek.version, ledger=ledger)

    assert result.material_erased is False
    assert result.to_json() == {
        "kek": uri(vault),
        "disabled_version": old.kek.version,
        "rotated_to": None,
        "material_erased": False,
        "note": VERSION_KEPT_NOTE,
    }
    assert "not crypto-shredding" in VERSION_KEPT_NOTE
    assert events(ledger)[-1] == (
        "kek-shred",
        "granted",
        {
            "kek": uri(vault),
            "version": old.kek.version,
            "backend": "azure-kv",
            "material_erased": False,
            "effect": VERSION_KEPT_NOTE,
        },
    )
    with pytest.raises(KeyDisabledError):
        kms.unwrap(old, AAD)
    assert kms.unwrap(new, AAD) == new_dek
    assert vault.version_of(KEY, old.kek.version).rsa_key is not None  # still in the vault


def test_the_primary_version_is_refused_without_force(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, ledger: AuditLedger
) -> None:
    first = vault.create_rsa_key(KEY)
    with pytest.raises(ShredRefusedError, match=f"version {first} is the primary version"):
        shred_kek_version(kms, uri(vault), first, ledger=ledger)
    assert vault.version_of(KEY, first).enabled is True
    assert len(vault.keys[KEY]) == 1
    ((event, decision, details),) = events(ledger)
    assert (event, decision, details["material_erased"]) == ("kek-shred", "denied", False)

    result = shred_kek_version(kms, uri(vault), first, ledger=ledger, force=True)

    assert result.rotated_to == vault.keys[KEY][-1].version != first
    assert kms.primary_version(uri(vault)) == result.rotated_to
    assert vault.version_of(KEY, first).enabled is False
    assert [(event, decision) for event, decision, _ in events(ledger)] == [
        ("kek-shred", "denied"),
        ("kek-rotate", "granted"),
        ("kek-shred", "granted"),
    ]


# -- shredding the whole key (delete + purge) -------------------------------------------------


def test_a_whole_key_shred_deletes_and_purges_and_nothing_opens_afterwards(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, ledger: AuditLedger
) -> None:
    vault.create_rsa_key(KEY)
    vault.create_oct_key("other-partner")
    other_dek = os.urandom(32)
    other = kms.wrap(uri(vault, "other-partner"), other_dek, AAD)
    sealed = sealed_under_each_version(kms, vault, versions=3)

    result = shred_whole_kek(kms, uri(vault), ledger=ledger)

    assert result.to_json() == {
        "kek": uri(vault),
        "destroyed": "every version (whole key)",
        "already_destroyed": False,
    }
    assert KEY not in vault.keys and KEY not in vault.deleted
    assert vault.purged == [KEY]
    assert requests_to(vault, "DELETE", f"/keys/{KEY}") == [200]
    # The SDK's poller waited for the soft delete: 404 while it runs, then the deleted key.
    assert requests_to(vault, "GET", f"/deletedkeys/{KEY}") == [404, 404, 200]
    assert requests_to(vault, "DELETE", f"/deletedkeys/{KEY}") == [204]
    for _, wrapped in sealed:
        with pytest.raises(KeyDestroyedError, match="deleted and purged"):
            kms.unwrap(wrapped, AAD)
    with pytest.raises(KeyDestroyedError):
        kms.wrap(uri(vault), os.urandom(32), AAD)
    with pytest.raises(KeyDestroyedError):
        kms.primary_version(uri(vault))
    assert kms.unwrap(other, AAD) == other_dek  # other keys are untouched
    assert events(ledger) == [
        ("kek-shred", "granted", {"kek": uri(vault), "whole_key": True, "backend": "azure-kv"})
    ]

    again = shred_whole_kek(kms, uri(vault), ledger=ledger)

    assert again.already_destroyed is True
    assert events(ledger)[-1][1:] == (
        "granted",
        {"kek": uri(vault), "whole_key": True, "backend": "azure-kv", "already_destroyed": True},
    )


def test_another_process_sees_a_purged_key_as_destroyed_only_when_told(
    pki: FakePki, kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    vault.create_oct_key(KEY)
    ((_, wrapped),) = sealed_under_each_version(kms, vault, versions=1)
    kms.destroy_key(uri(vault))

    with pytest.raises(KeyNotFoundError) as not_found:
        make_kms(pki, vault).unwrap(wrapped, AAD)
    assert not isinstance(not_found.value, KeyDestroyedError)
    with pytest.raises(KeyDestroyedError):
        make_kms(pki, vault, purged_keys=[uri(vault)]).unwrap(wrapped, AAD)


def test_an_interrupted_whole_key_shred_can_be_repeated(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, ledger: AuditLedger
) -> None:
    vault.create_rsa_key(KEY)
    vault.fail_next("purge", 503, times=2)  # both attempts of the retry schedule

    with pytest.raises(KmsTransientError, match="purge"):
        shred_whole_kek(kms, uri(vault), ledger=ledger)

    assert KEY in vault.deleted and vault.purged == []
    assert events(ledger)[-1][1] == "denied"

    shred_whole_kek(kms, uri(vault), ledger=ledger)

    assert vault.purged == [KEY]
    assert requests_to(vault, "DELETE", f"/keys/{KEY}") == [200, 404]
    assert events(ledger)[-1][:2] == ("kek-shred", "granted")


def test_purge_protection_is_reported_as_not_purged(pki: FakePki, ledger: AuditLedger) -> None:
    with FakeKeyVault(pki, purge_protection=True, deletion_polls=0) as vault:
        kms = make_kms(pki, vault)
        vault.create_rsa_key(KEY)
        with pytest.raises(KmsPermissionError, match="deleted but NOT purged") as refused:
            shred_whole_kek(kms, uri(vault), ledger=ledger)
        assert "recoverable until" in str(refused.value)
        assert KEY in vault.deleted and vault.purged == []
        ((_, decision, details),) = events(ledger)
        assert decision == "denied" and "NOT purged" in details["reason"]


def test_without_soft_delete_the_delete_is_final(pki: FakePki) -> None:
    with FakeKeyVault(pki, soft_delete=False) as vault:
        kms = make_kms(pki, vault)
        vault.create_oct_key(KEY)
        ((_, wrapped),) = sealed_under_each_version(kms, vault, versions=1)
        kms.destroy_key(uri(vault))
        assert vault.purged == [KEY]
        assert requests_to(vault, "GET", f"/deletedkeys/{KEY}") == []
        assert requests_to(vault, "DELETE", f"/deletedkeys/{KEY}") == []
        with pytest.raises(KeyDestroyedError):
            kms.unwrap(wrapped, AAD)


def test_a_soft_delete_that_never_completes_times_out(pki: FakePki) -> None:
    with FakeKeyVault(pki, deletion_polls=10**6) as vault:
        kms = make_kms(pki, vault, delete_polling_interval=0.05, delete_timeout=0.3)
        vault.create_rsa_key(KEY)
        with pytest.raises(KmsTransientError, match=r"did not complete within 0\.3 s"):
            kms.destroy_key(uri(vault))
        assert requests_to(vault, "DELETE", f"/deletedkeys/{KEY}") == []


def test_a_region_kek_is_refused_without_force(
    kms: AzureKeyVaultKms, vault: FakeKeyVault, ledger: AuditLedger
) -> None:
    vault.create_rsa_key(KEY)
    with pytest.raises(ShredRefusedError, match=r"KEK of region\(s\) eu: their new outputs"):
        shred_whole_kek(kms, uri(vault), ledger=ledger, serving_regions=["eu"])
    assert KEY in vault.keys
    assert requests_to(vault, "DELETE", f"/keys/{KEY}") == []

    shred_whole_kek(kms, uri(vault), ledger=ledger, serving_regions=["eu"], force=True)

    assert vault.purged == [KEY]
    assert [(decision, details["serving_regions"]) for _, decision, details in events(ledger)] == [
        ("denied", ["eu"]),
        ("granted", ["eu"]),
    ]


# -- typed failures ---------------------------------------------------------------------------


def test_lifecycle_calls_take_the_key_uri_without_a_version(
    kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    version = vault.create_rsa_key(KEY)
    for call in (kms.rotate, kms.primary_version, kms.destroy_key):
        with pytest.raises(KmsInputError, match="names a version"):
            call(f"{uri(vault)}/{version}")
    with pytest.raises(KmsInputError, match="must be 1-64 letters or digits"):
        kms.disable_version(uri(vault), "not/a-version")
    assert vault.requests == []


def test_unknown_keys_and_versions_are_not_found(
    kms: AzureKeyVaultKms, vault: FakeKeyVault
) -> None:
    vault.create_rsa_key(KEY)
    missing = uri(vault, "no-such-key")
    with pytest.raises(KeyNotFoundError):
        kms.rotate(missing)
    with pytest.raises(KeyNotFoundError):
        kms.destroy_key(missing)
    with pytest.raises(KeyNotFoundError):
        kms.disable_version(uri(vault), "0" * 32)


def test_vault_refusals_and_outages_are_typed(kms: AzureKeyVaultKms, vault: FakeKeyVault) -> None:
    first = vault.create_rsa_key(KEY)
    vault.fail_next("rotate", 403, code="Forbidden", message="caller lacks keys/rotate")
    with pytest.raises(KmsPermissionError, match="keys/rotate"):
        kms.rotate(uri(vault))
    kms.rotate(uri(vault))
    vault.fail_next("update", 503, times=2)
    with pytest.raises(KmsTransientError):
        kms.disable_version(uri(vault), first)
    vault.fail_next("delete", 403, code="Forbidden", message="caller lacks keys/delete")
    with pytest.raises(KmsPermissionError, match="keys/delete"):
        kms.destroy_key(uri(vault))
    assert KEY in vault.keys


def test_fake_routes_only_what_key_vault_serves(pki: FakePki, vault: FakeKeyVault) -> None:
    """The fake must not answer requests the SDK would never send (so tests cannot pass on them)."""
    version = vault.create_rsa_key(KEY)
    client = KeyClient(
        vault.url,
        StaticTokenCredential(),
        connection_verify=str(pki.ca_path),
        verify_challenge_resource=False,
    )
    for method, path in (
        ("GET", f"/keys/{KEY}/rotate"),
        ("DELETE", f"/keys/{KEY}/{version}"),
        ("PATCH", f"/deletedkeys/{KEY}"),
        ("POST", f"/keys/{KEY}"),
    ):
        assert client.send_request(HttpRequest(method, path)).status_code == 404, (method, path)
    assert [item.version for item in vault.keys[KEY]] == [version]


# -- sealbeam keys shred --whole-key ----------------------------------------------------------


def cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    keys_commands.register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_help_of_whole_key_shred(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli(["keys", "shred", "--whole-key", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "--whole-key",
        "--version",
        "--force",
        "delete and purge",
        "per-partner",
        "material_erased: false",
        "only disabled",
    ):
        assert fragment in text, fragment


def test_cli_whole_key_and_version_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [
        "keys",
        "shred",
        "--state",
        str(tmp_path),
        "--kek",
        "azure-kv://v.vault.azure.net/keys/k",
    ]
    for extra in (["--whole-key", "--version", "1"], []):
        with pytest.raises(SystemExit) as exited:
            cli([*base, *extra, "--yes"])
        assert exited.value.code == 2
        assert "--version" in capsys.readouterr().err


@pytest.fixture
def cli_state(tmp_path: Path, kms: AzureKeyVaultKms, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory whose KMS for azure-kv URIs is the backend on the fake."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setattr(keys_commands, "_kms_for", lambda _state, _kek: kms)
    return state


def test_cli_shreds_a_whole_key(
    cli_state: Path,
    kms: AzureKeyVaultKms,
    vault: FakeKeyVault,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vault.create_oct_key(KEY)
    ((_, wrapped),) = sealed_under_each_version(kms, vault, versions=1)
    base = ["keys", "shred", "--state", str(cli_state), "--kek", uri(vault), "--whole-key"]

    assert cli(base) == 2
    assert "destroying every version of" in capsys.readouterr().err
    assert KEY in vault.keys

    assert cli([*base, "--yes"]) == 0

    assert json.loads(capsys.readouterr().out) == {
        "kek": uri(vault),
        "destroyed": "every version (whole key)",
        "already_destroyed": False,
    }
    assert vault.purged == [KEY]
    with pytest.raises(KeyDestroyedError):
        kms.unwrap(wrapped, AAD)
    with AuditLedger(cli_state / "ledger.sqlite") as ledger:
        assert events(ledger) == [
            ("kek-shred", "granted", {"kek": uri(vault), "whole_key": True, "backend": "azure-kv"}),
        ]


def test_cli_version_shred_on_azure_says_disabled_not_erased(
    cli_state: Path,
    kms: AzureKeyVaultKms,
    vault: FakeKeyVault,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = vault.create_rsa_key(KEY)
    kms.rotate(uri(vault))
    assert (
        cli(
            [
                "keys",
                "shred",
                "--state",
                str(cli_state),
                "--kek",
                uri(vault),
                "--version",
                first,
                "--yes",
            ]
        )
        == 0
    )
    output = json.loads(capsys.readouterr().out)
    assert (output["disabled_version"], output["material_erased"]) == (first, False)
    assert "destroyed_version" not in output
    assert vault.version_of(KEY, first).enabled is False


def test_cli_whole_key_on_the_local_keyring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert cli(["keys", "init", "--state", str(state)]) == 0
    eu_kek = "local://keyring/eu/kek-1"
    assert keys_commands.regions_served_by(state, eu_kek) == ["eu"]
    assert keys_commands.regions_served_by(state, "local://keyring/eu/kek-2") == []
    assert keys_commands.regions_served_by(tmp_path / "no-state", eu_kek) == []
    capsys.readouterr()

    assert (
        cli(["keys", "shred", "--state", str(state), "--kek", eu_kek, "--whole-key", "--yes"]) == 2
    )
    assert "the local backend cannot destroy whole KEKs here" in capsys.readouterr().err
