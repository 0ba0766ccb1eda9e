"""``sealbeam keys identity``: adds the broker's identity key to an older state, or rotates it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from keybroker.config import ConfigError, init_state
from keybroker.identity import IDENTITY_KEY_FILE, IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey
from keybroker.service.service import KeyBrokerService
from pipelines.commands import keys


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="sealbeam")
    keys.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_a_state_without_identity_refuses_to_serve_until_one_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    settings = init_state(state, allowed_measurements=(DEV_MEASUREMENT,))
    first = BrokerPublicKey.load(state / IDENTITY_PUBLIC_KEY_FILE)
    (state / IDENTITY_KEY_FILE).unlink()
    with pytest.raises(ConfigError, match="keys identity"):
        KeyBrokerService.from_settings(settings)

    assert run_cli("keys", "identity", "--state", str(state)) == 0
    created = BrokerPublicKey.load(state / IDENTITY_PUBLIC_KEY_FILE)
    assert created != first and f"key id {created.key_id}" in capsys.readouterr().out
    assert (state / IDENTITY_KEY_FILE).stat().st_mode & 0o777 == 0o600
    KeyBrokerService.from_settings(settings).close()

    assert run_cli("keys", "identity", "--state", str(state)) == 0  # shows, keeps
    assert BrokerPublicKey.load(state / IDENTITY_PUBLIC_KEY_FILE) == created
    assert run_cli("keys", "identity", "--state", str(state), "--rotate") == 0
    assert BrokerPublicKey.load(state / IDENTITY_PUBLIC_KEY_FILE) != created
