"""serve_in_thread and the shared ``running_broker`` fixture other rooms' tests reuse."""

from __future__ import annotations

import httpx
import pytest

from keybroker.client import BrokerClient, BrokerUnavailableError
from keybroker.service.server import RunningBroker
from keybroker.service.sessions import NONCE_BYTES
from tests.support.broker import running_broker  # noqa: F401  (a fixture, used by name below)


def test_running_broker_serves_on_an_ephemeral_loopback_port(
    running_broker: RunningBroker,  # noqa: F811
) -> None:
    assert running_broker.url.startswith("http://127.0.0.1:")
    assert not running_broker.url.endswith(":0")
    with BrokerClient(running_broker.url) as client:
        assert client.health()["status"] == "ok"
        assert len(client.challenge()) == NONCE_BYTES
    assert running_broker.settings.ledger_path.is_file()


def test_stop_closes_the_port(running_broker: RunningBroker) -> None:  # noqa: F811
    running_broker.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{running_broker.url}/v1/health", timeout=2)
    with (
        BrokerClient(running_broker.url, timeout=2) as client,
        pytest.raises(BrokerUnavailableError),
    ):
        client.health()
    running_broker.stop()  # idempotent
