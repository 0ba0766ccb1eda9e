"""Runs the broker with uvicorn: in a background thread (tests, the demo) or in the foreground.

``serve_in_thread`` binds the socket itself (port 0 picks a free port), starts uvicorn on
it in a daemon thread, waits until the server accepts connections, and returns a
``RunningBroker`` with the real URL and a ``stop()`` that shuts it down and closes the
ledger. With ``tls`` (``keybroker.service.tls.ServerTls``) it serves HTTPS, optionally
requiring client certificates. It does not daemonize or reload.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import uvicorn

from keybroker.attestation.verifier import Verifier
from keybroker.config import BrokerSettings
from keybroker.kms.base import KeyManagementService
from keybroker.service.app import create_app
from keybroker.service.tls import ServerTls

__all__ = ["BrokerStartError", "RunningBroker", "serve_forever", "serve_in_thread"]

STARTUP_TIMEOUT_SECONDS = 15.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0


class BrokerStartError(RuntimeError):
    """The server did not come up (port in use, bad settings, startup timeout)."""


@dataclass
class RunningBroker:
    """A broker serving on loopback in this process until ``stop()``."""

    url: str
    settings: BrokerSettings
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _socket: socket.socket = field(repr=False)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for the thread (idempotent)."""
        self._server.should_exit = True
        self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        self._socket.close()

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise BrokerStartError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(128)
    return sock


def serve_in_thread(
    settings: BrokerSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Callable[[], float] = time.time,
    verifiers: Mapping[str, Verifier] | None = None,
    kms_backends: Mapping[str, KeyManagementService] | None = None,
    tls: ServerTls | None = None,
) -> RunningBroker:
    """Start the broker in a background thread and return once it accepts connections.

    ``kms_backends`` injects KMS backend instances by scheme (tests bind them to fakes).
    """
    tls_options = tls.uvicorn_options() if tls is not None else {}
    app = create_app(settings, clock=clock, verifiers=verifiers, kms_backends=kms_backends)
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", **tls_options  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="keybroker-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(SHUTDOWN_TIMEOUT_SECONDS)
            sock.close()
            raise BrokerStartError("the broker did not start (see the log above)")
        time.sleep(0.01)
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningBroker(
        url=f"{'https' if tls is not None else 'http'}://{url_host}:{bound_port}",
        settings=settings,
        _server=server,
        _thread=thread,
        _socket=sock,
    )


def serve_forever(
    settings: BrokerSettings,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    tls: ServerTls | None = None,
) -> None:
    """Serve in the foreground until interrupted (``sealbeam broker serve``)."""
    tls_options = tls.uvicorn_options() if tls is not None else {}
    app = create_app(settings)
    uvicorn.run(
        app, host=host, port=port, log_level="info", access_log=True, **tls_options  # type: ignore[arg-type]
    )
