"""The in-process broker answers without the delayed-ACK stall (issue 13).

A listening socket created with protocol 0 made asyncio skip ``TCP_NODELAY`` on accepted
connections, so every reply written in two parts waited ~40 ms for the client's delayed
ACK. These tests check the socket option itself on the server's live connection and, as a
correctness check with a generous bound (the stall is 40 ms; a loopback release is a few),
that a release takes milliseconds, not tens of them. They are not benchmarks.
"""

from __future__ import annotations

import socket
import statistics
import time

from keybroker.client import BrokerClient
from keybroker.service.server import RunningBroker
from tests.support.broker import (
    attest_simulated_worker,
    running_broker,  # noqa: F401  (a fixture, used by name below)
)

RELEASES = 20
STALL_FREE_BOUND_SECONDS = 0.020  # the stall alone is ~40 ms; a loopback release 2-4 ms


def test_listening_socket_is_tcp_and_accepted_connections_have_nodelay(
    running_broker: RunningBroker,  # noqa: F811
) -> None:
    assert running_broker._socket.proto == socket.IPPROTO_TCP
    with BrokerClient(running_broker.url) as client:
        client.health()  # keeps the connection open (keep-alive) while we look at it
        connections = list(running_broker._server.server_state.connections)
        assert connections, "the server has no live connection to inspect"
        for connection in connections:
            server_side = connection.transport.get_extra_info("socket")
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_release_against_the_in_process_broker_takes_milliseconds(
    running_broker: RunningBroker,  # noqa: F811
) -> None:
    with BrokerClient(running_broker.url) as client:
        _, session = attest_simulated_worker(client, running_broker.settings)
        _, wrapped = client.generate(session, "eu", "stall-check")
        elapsed = []
        for _ in range(RELEASES):
            started = time.perf_counter()
            client.release(session, wrapped, "eu", "stall-check")
            elapsed.append(time.perf_counter() - started)
    assert statistics.median(elapsed) < STALL_FREE_BOUND_SECONDS
