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
from keybroker.kms.backend_settings import (
    AzureKvSettings,
    GcpKmsSettings,
    KmsBackendSettings,
    Pkcs11Settings,
)
from keybroker.kms.base import KmsUnwrapError
from keybroker.kms.local import LocalKeyring
from keybroker.kms.named_keys import NamedKeyStore, named_key_aad
from keybroker.ledger import AuditLedger
from keybroker.policy import ReleasePolicy
from keybroker.service.app import create_app
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


# -- the kms section and the start-up residency check ------------------------------------------

GCP_EU_KEK = "gcp-kms://projects/p/locations/europe-west3/keyRings/eu/cryptoKeys/kek"
GCP_US_KEK = "gcp-kms://projects/p/locations/us-central1/keyRings/us/cryptoKeys/kek"


def _load_with(directory: Path, tmp_path: Path, change: dict) -> BrokerSettings:
    document = yaml.safe_load((directory / "broker.yaml").read_text())
    document.update(change)
    path = directory / "changed-broker.yaml"  # beside the state: relative paths stay valid
    path.write_text(yaml.safe_dump(document))
    return BrokerSettings.load(path)


def test_kms_section_round_trips_with_paths_relative_to_the_file(
    state: tuple[Path, BrokerSettings], tmp_path: Path
) -> None:
    directory, _settings = state
    kms = {
        "gcp_kms": {
            "endpoint": "cloudkms.europe-west3.rep.googleapis.com",
            "credentials_file": "gcp.json",
            "region_locations": {"eu": ["europe-west3", "eu"], "us": ["us-central1"]},
        },
        "azure_kv": {"allowed_hosts": ["Vault.Internal:8443"], "ca_bundle": "ca.pem",
                     "credential": "workload-identity", "client_id": "abc-123",
                     "verify_challenge_resource": False},
        "pkcs11": {"module": "/opt/hsm-vendor/lib/libvendor-pkcs11.so"},
    }
    settings = _load_with(directory, tmp_path, {"kms": kms})
    assert settings.kms == KmsBackendSettings(
        gcp_kms=GcpKmsSettings(
            endpoint="cloudkms.europe-west3.rep.googleapis.com",
            credentials_file=(directory / "gcp.json").resolve(),
            region_locations={"eu": ("europe-west3", "eu"), "us": ("us-central1",)},
        ),
        azure_kv=AzureKvSettings(
            allowed_hosts=("vault.internal:8443",), ca_bundle=(directory / "ca.pem").resolve(),
            credential="workload-identity", client_id="abc-123", verify_challenge_resource=False,
        ),
        pkcs11=Pkcs11Settings(module=Path("/opt/hsm-vendor/lib/libvendor-pkcs11.so")),
    )
    written = settings.to_mapping()
    assert written["kms"]["gcp_kms"]["credentials_file"] == "gcp.json"
    assert BrokerSettings.from_mapping(written, base_dir=directory) == settings
    assert _load_with(directory, tmp_path, {"kms": {"gcp_kms": {}}}).kms == KmsBackendSettings(
        gcp_kms=GcpKmsSettings()
    )


@pytest.mark.parametrize(
    ("kms", "message"),
    [
        ({"vault": {}}, r"kms: unknown field\(s\) vault"),
        ({"pkcs11": {"module": "m.so", "pin": "1234"}},
         r"kms\.pkcs11\.pin: .*only from the environment variable SEALBEAM_PKCS11_PIN"),
        ({"pkcs11": {}}, r"kms\.pkcs11\.module: expected the path"),
        ({"gcp_kms": {"region_locations": {"eu": []}}},
         r"kms\.gcp_kms\.region_locations\.eu: expected a list of 1\.\.64"),
        ({"gcp_kms": {"region_locations": {"eu": ["Europe West"]}}},
         r"kms\.gcp_kms\.region_locations\.eu\[0\]: not a Cloud KMS location"),
        ({"gcp_kms": {"endpoint": "https://x/"}}, r"kms\.gcp_kms\.endpoint"),
        ({"gcp_kms": {"credentials": "x"}}, r"kms\.gcp_kms: unknown field\(s\) credentials"),
        ({"azure_kv": {"credential": "password"}}, r"kms\.azure_kv\.credential: expected one of"),
        ({"azure_kv": {"verify_challenge_resource": False}},
         r"verify_challenge_resource: may be false only together with allowed_hosts"),
        ({"azure_kv": {"allowed_hosts": ["a/b"]}}, r"kms\.azure_kv\.allowed_hosts\[0\]"),
        ({"azure_kv": {"verify_challenge_resource": "no"}},
         r"kms\.azure_kv\.verify_challenge_resource: expected true or false"),
        (["gcp_kms"], r"kms: expected a mapping"),
    ],
)
def test_kms_settings_errors_name_the_field(
    state: tuple[Path, BrokerSettings], tmp_path: Path, kms: object, message: str
) -> None:
    directory, _settings = state
    with pytest.raises(ConfigError, match=message):
        _load_with(directory, tmp_path, {"kms": kms})


@pytest.mark.parametrize(
    ("region_keks", "kms", "message"),
    [
        ({"eu": GCP_US_KEK},
         {"gcp_kms": {"region_locations": {"eu": ["europe-west3"]}}},
         r"region_keks|location 'us-central1', which region 'eu' does not allow"),
        ({"eu": GCP_EU_KEK},
         {"gcp_kms": {"region_locations": {"us": ["us-central1"]}}},
         r"region 'eu': no Cloud KMS locations are allowed for it"),
        ({"eu": GCP_EU_KEK}, None,
         r"region_keks\.eu: .* needs the 'gcp-kms' backend, which broker\.yaml does not configure"),
        ({"eu": "vault://transit/kek"}, None, r"region_keks\.eu: .*'vault'"),
    ],
)
def test_broker_refuses_to_start_with_a_region_kek_it_cannot_serve(
    tmp_path: Path, region_keks: dict, kms: dict | None, message: str
) -> None:
    directory = tmp_path / "state"
    init_state(directory, allowed_measurements=(MEASUREMENT,))
    settings = _load_with(directory, tmp_path, {"region_keks": region_keks, "kms": kms})
    with pytest.raises(ConfigError, match=message) as refused:
        create_app(settings)
    assert str(refused.value).startswith("broker settings refused: ")
    assert not settings.ledger_path.exists()  # refused before anything was recorded


def test_broker_starts_with_a_gcp_kek_in_an_allowed_location(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    init_state(directory, allowed_measurements=(MEASUREMENT,))
    settings = _load_with(directory, tmp_path, {
        "region_keks": {"eu": GCP_EU_KEK, "us": "local://keyring/us/kek-1"},
        "kms": {"gcp_kms": {"region_locations": {"eu": ["europe-west1", "europe-west3"]}}},
    })
    app = create_app(settings)  # the Cloud KMS client is opened on first use, not here
    app.state.service.close()
    with AuditLedger(settings.ledger_path, read_only=True) as ledger:
        (start,) = list(ledger.entries())
    assert start.event == "broker-start"
    assert start.details["region_keks"] == {"eu": GCP_EU_KEK, "us": "local://keyring/us/kek-1"}
    assert start.details["dek_cache"]["enabled"] is True
