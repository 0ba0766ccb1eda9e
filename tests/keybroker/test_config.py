"""Broker settings and init_state: the state directory, refusal to overwrite, ``keys init``."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest
import yaml

from envelope.keys import dek_wrap_aad
from keybroker.config import (
    BrokerSettings,
    ConfigError,
    StateExistsError,
    init_state,
)
from keybroker.kms.base import KmsUnwrapError
from keybroker.kms.local import LocalKeyring
from keybroker.kms.named_keys import NamedKeyStore, named_key_aad
from keybroker.policy import ReleasePolicy
from pipelines.commands import broker as broker_command
from pipelines.commands import keys as keys_command

MEASUREMENT = "ab" * 48


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BrokerSettings]:
    directory = tmp_path_factory.mktemp("config") / "state"
    settings = init_state(
        directory,
        regions=("eu", "us"),
        tenants=("acme", "globex"),
        allowed_measurements=(MEASUREMENT,),
    )
    return directory, settings


def test_init_state_writes_the_documented_layout(state: tuple[Path, BrokerSettings]) -> None:
    directory, settings = state
    for name in ("keyring.json", "named-keys.json", "policy.yaml", "broker.yaml"):
        assert (directory / name).is_file()
    for name in ("ark.pem", "ask.pem", "vcek.pem", "vcek-key.pem"):
        assert (directory / "dev-tee" / name).is_file()
    assert stat.S_IMODE((directory / "keyring.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "named-keys.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert settings.region_keks == {
        "eu": "local://keyring/eu/kek-1",
        "us": "local://keyring/us/kek-1",
    }
    assert settings.ledger_path == (directory / "ledger.sqlite").resolve()
    assert settings.dev_chain_dir == (directory / "dev-tee").resolve()
    assert BrokerSettings.load(directory / "broker.yaml") == settings


def test_demo_policy_allows_only_the_given_measurement(state: tuple[Path, BrokerSettings]) -> None:
    _directory, settings = state
    policy = ReleasePolicy.load(settings.policy_path)
    assert policy.allow_simulated is True
    (rule,) = policy.rules
    assert rule.measurements == (MEASUREMENT,)
    assert rule.allow_simulated and not rule.debug
    assert rule.regions == ("eu", "us")
    assert rule.named_keys == ("pseudonym/acme", "pseudonym/globex")
    assert "SIMULATED" in settings.policy_path.read_text()


def test_named_keys_are_wrapped_and_bound_to_their_names(
    state: tuple[Path, BrokerSettings],
) -> None:
    _directory, settings = state
    keyring = LocalKeyring.open(settings.keyring_path)
    store = NamedKeyStore.open(settings.named_keys_path)
    assert store.names() == ("pseudonym/acme", "pseudonym/globex")
    acme = keyring.unwrap(store.wrapped_key("pseudonym/acme"), named_key_aad("pseudonym/acme"))
    globex = keyring.unwrap(
        store.wrapped_key("pseudonym/globex"), named_key_aad("pseudonym/globex")
    )
    assert len(acme) == 32 and acme != globex
    raw = json.loads(settings.named_keys_path.read_text())
    assert acme.hex() not in json.dumps(raw)


def test_init_state_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    first = init_state(directory, regions=("eu",), tenants=())
    keyring = LocalKeyring.open(first.keyring_path)
    wrapped = keyring.wrap("local://keyring/eu/kek-1", bytes(32), dek_wrap_aad("eu", "p"))
    with pytest.raises(StateExistsError, match="refusing to overwrite"):
        init_state(directory, regions=("eu",))
    assert LocalKeyring.open(first.keyring_path).unwrap(wrapped, dek_wrap_aad("eu", "p"))
    init_state(directory, regions=("eu",), force=True)
    with pytest.raises(KmsUnwrapError):
        LocalKeyring.open(first.keyring_path).unwrap(wrapped, dek_wrap_aad("eu", "p"))


def test_default_demo_policy_wildcard_is_simulated_only(tmp_path: Path) -> None:
    settings = init_state(tmp_path / "state", regions=("eu",), tenants=())
    (rule,) = ReleasePolicy.load(settings.policy_path).rules
    assert rule.measurements == ("*",) and rule.allow_simulated


@pytest.mark.parametrize(
    ("regions", "tenants", "message"),
    [
        ((), ("acme",), "regions"),
        (("EU",), (), "regions"),
        (("eu", "eu"), (), "duplicates"),
        (("eu",), ("Bad Tenant",), "tenants"),
    ],
)
def test_init_state_validates_its_arguments(
    tmp_path: Path, regions: tuple[str, ...], tenants: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        init_state(tmp_path / "state", regions=regions, tenants=tenants)
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version"),
        ({"extra": 1}, "unknown field"),
        ({"keyring": 5}, "keyring"),
        ({"region_keks": {}}, "region_keks"),
        ({"region_keks": ["eu"]}, "region_keks"),
        ({"nonce_ttl_seconds": 0}, "nonce_ttl_seconds"),
        ({"max_sessions": "many"}, "max_sessions"),
    ],
)
def test_settings_errors_name_the_field(
    state: tuple[Path, BrokerSettings], tmp_path: Path, change: dict, message: str
) -> None:
    directory, _settings = state
    document = yaml.safe_load((directory / "broker.yaml").read_text())
    document.update(change)
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError, match=message):
        BrokerSettings.load(path)


def test_settings_load_refuses_missing_and_non_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        BrokerSettings.load(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("a: [")
    with pytest.raises(ConfigError, match="YAML"):
        BrokerSettings.load(tmp_path / "bad.yaml")


def run_cli(module, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    module.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_keys_init_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cli-state"
    code = run_cli(
        keys_command,
        "keys",
        "init",
        "--state",
        str(directory),
        "--regions",
        "eu",
        "--tenants",
        "acme,globex",
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "region eu: KEK local://keyring/eu/kek-1" in out
    assert "named key: pseudonym/globex" in out
    (rule,) = ReleasePolicy.load(directory / "policy.yaml").rules
    from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT

    assert rule.measurements == (DEV_MEASUREMENT,)
    material = json.loads((directory / "keyring.json").read_text())
    secret = material["keks"]["local://keyring/eu/kek-1"]["versions"]["1"]["material"]
    assert secret not in out

    again = run_cli(keys_command, "keys", "init", "--state", str(directory))
    assert again == keys_command.USER_ERROR_EXIT
    assert capsys.readouterr().err.startswith("sealbeam: error: state ")


def test_broker_serve_cli_reports_a_missing_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(broker_command, "broker", "serve", "--state", str(tmp_path / "none"))
    assert code == broker_command.USER_ERROR_EXIT
    assert "cannot read broker settings" in capsys.readouterr().err
