"""Runs the broker with uvicorn: in a background thread (tests, the demo) or in the foreground.

``serve_in_thread`` binds the socket itself (port 0 picks a free port), starts uvicorn on
it in a daemon thread, waits until the server accepts connections, and returns a
``RunningBroker`` with the real URL and a ``stop()`` that shuts it down and closes the
ledger. With ``tls`` (``keybroker.service.tls.ServerTls``) it serves HTTPS, optionally
requiring client certificates. Both apply the server bounds of ``settings.limits``
(http_limits.py: concurrency, header size and timeout, keep-alive). ``serve_forever`` binds
the socket itself too (``_bind``: TCP_NODELAY on accepted connections) and, with
``workers`` over 1, serves it from several processes (workers.py). uvicorn runs on uvloop
and httptools when they are installed (the ``broker`` extra), else on asyncio and h11. It
does not daemonize or reload.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import uvicorn
from starlette.types import ASGIApp

from keybroker.attestation.verifier import Verifier
from keybroker.config import BrokerSettings
from keybroker.kms.base import KeyManagementService
from keybroker.service.app import create_app
from keybroker.service.http_limits import uvicorn_limit_options
from keybroker.service.tls import ServerTls
from keybroker.service.workers import MAX_WORKERS, serve_workers

SERVE_LOGGER = "sealbeam.broker.serve"
_serve_log = logging.getLogger(SERVE_LOGGER)

__all__ = ["BrokerStartError", "RunningBroker", "freeze_startup_heap", "run_uvicorn",
           "serve_forever", "serve_in_thread"]

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


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket created with ``IPPROTO_TCP``, not protocol 0.

    asyncio sets ``TCP_NODELAY`` on accepted connections only when the listening socket's
    ``proto`` is ``IPPROTO_TCP`` (accepted sockets inherit it). With protocol 0 every reply
    written in two parts waited for the client's delayed ACK: ~40 ms per broker call.
    ``reuse_port`` sets ``SO_REUSEPORT`` (see ``_bind_workers``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise BrokerStartError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(2048)
    return sock


def _bind_workers(host: str, port: int, count: int) -> list[socket.socket]:
    """One listening socket per worker process, all on one port (``SO_REUSEPORT``).

    Why: worker processes accepting from one shared socket split connections unevenly (one
    took 56 of 64 keep-alive clients while the other idled, and the busy one queued
    requests at a quarter of the machine's CPU); with a socket each, the kernel spreads new
    connections over them by a hash of their addresses. Where ``SO_REUSEPORT`` does not
    exist, the workers share one socket as before. The kernel lets only sockets of the
    same user join a port's group.
    """
    if count == 1 or not hasattr(socket, "SO_REUSEPORT"):
        return [_bind(host, port)]
    first = _bind(host, port, reuse_port=True)
    sockets = [first]
    try:
        bound_port = first.getsockname()[1]
        for _ in range(count - 1):
            sockets.append(_bind(host, bound_port, reuse_port=True))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


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
        app,
        log_level="warning",
        access_log=False,
        lifespan="on",
        proxy_headers=False,
        **uvicorn_limit_options(settings.limits),
        **tls_options,  # type: ignore[arg-type]
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
    return RunningBroker(
        url=_url(bound_host, bound_port, tls),
        settings=settings,
        _server=server,
        _thread=thread,
        _socket=sock,
    )


def run_uvicorn(
    app: ASGIApp,
    sock: socket.socket,
    settings: BrokerSettings,
    tls: ServerTls | None,
    *,
    log_level: str = "info",
) -> None:
    """Serve ``app`` on the bound ``sock`` in the foreground until SIGTERM/SIGINT.

    Access lines come from keybroker.service.observability (structured, one per request);
    log_config=None leaves uvicorn's own records to the root handler (text or JSON).
    """
    tls_options = tls.uvicorn_options() if tls is not None else {}
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        log_config=None,
        lifespan="on",
        proxy_headers=False,  # the caller's address is the socket's: no header overrides it
        **uvicorn_limit_options(settings.limits),
        **tls_options,  # type: ignore[arg-type]
    )
    freeze_startup_heap()
    uvicorn.Server(config).run(sockets=[sock])


def freeze_startup_heap() -> None:
    """Keep what startup built (imports, the loaded app) out of the cyclic collector's passes.

    Why: a serving broker holds some 250,000 such objects, and each full collection walked
    them all, 120-140 ms a time (a stall of the event loop); under load one ran every six
    seconds or so (the objects of requests in flight when a younger collection runs count
    towards the next full one): about 2 % of the broker's CPU (benchmarks/README.md).
    What it does: collects once, so no startup garbage is kept, then moves every live object
    to the collector's permanent generation (``gc.freeze``); requests' objects are collected
    as before. Only for a process that serves (``run_uvicorn``): the objects frozen are never
    collected, which suits state that lives as long as the process.
    """
    gc.collect()
    gc.freeze()


def serve_forever(
    settings: BrokerSettings,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    tls: ServerTls | None = None,
    workers: int = 1,
    log_setup: Callable[[], None] | None = None,
) -> None:
    """Serve in the foreground until interrupted (``sealbeam broker serve``).

    ``workers`` > 1 serves from that many processes (workers.py); ``log_setup`` configures
    logging in each of them (a picklable callable: they start afresh).
    """
    sockets = _bind_workers(host, port, workers if 1 <= workers <= MAX_WORKERS else 1)
    bound_host, bound_port = sockets[0].getsockname()[:2]
    # Says where it listens (with --port 0 nothing else would); one line, before serving.
    _serve_log.info("serving on %s with %d process(es)", _url(bound_host, bound_port, tls),
                    workers)
    try:
        if workers == 1:
            run_uvicorn(create_app(settings), sockets[0], settings, tls)
        else:
            serve_workers(settings, sockets, workers, tls=tls, log_setup=log_setup)
    finally:
        for sock in sockets:
            sock.close()


def _url(host: str, port: int, tls: ServerTls | None) -> str:
    url_host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls is not None else 'http'}://{url_host}:{port}"
