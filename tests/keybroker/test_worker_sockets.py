"""``broker serve --workers N`` listens on one socket per worker (``SO_REUSEPORT``), so the
kernel spreads connections over the workers instead of letting one of them take most.

Checked on the sockets themselves: N listening sockets on one port, each accepting a share
of many connections (a shared socket gave one of two workers 56 of 64 clients).
"""

from __future__ import annotations

import select
import socket

import pytest

from keybroker.service.server import _bind_workers

CONNECTIONS = 64

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"),
                                reason="SO_REUSEPORT is Linux/BSD only")


def _accepted_per_socket(listening: list[socket.socket]) -> list[int]:
    counts = [0] * len(listening)
    clients = []
    try:
        port = listening[0].getsockname()[1]
        for _ in range(CONNECTIONS):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        accepted = 0
        while accepted < CONNECTIONS:
            ready, _, _ = select.select(listening, [], [], 5)
            assert ready, f"only {accepted} of {CONNECTIONS} connections arrived"
            for sock in ready:
                connection, _address = sock.accept()
                connection.close()
                counts[listening.index(sock)] += 1
                accepted += 1
    finally:
        for client in clients:
            client.close()
    return counts


def test_each_worker_gets_its_own_socket_on_one_port_and_a_share_of_connections() -> None:
    listening = _bind_workers("127.0.0.1", 0, 2)
    try:
        assert len(listening) == 2
        assert len({sock.getsockname()[1] for sock in listening}) == 1
        for sock in listening:
            assert sock.proto == socket.IPPROTO_TCP
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        counts = _accepted_per_socket(listening)
        assert sum(counts) == CONNECTIONS
        # Spread by a hash of each connection's ports: 64 over 2 is 32 +- 4 (1 sigma); a
        # socket with fewer than 8 would be 6 sigma away, i.e. no spreading at all.
        assert min(counts) >= 8, counts
    finally:
        for sock in listening:
            sock.close()


def test_one_worker_listens_on_one_plain_socket() -> None:
    (only,) = _bind_workers("127.0.0.1", 0, 1)
    try:
        assert only.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        only.close()
