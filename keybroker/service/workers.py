"""Several broker processes on one listening socket (``sealbeam broker serve --workers N``).

Why: one broker process uses one core at most (the GIL); the HTTP stack is most of a
release's cost, so more cores need more processes. What it does: ``serve_workers`` binds
nothing itself; it takes the listening sockets the caller bound (one per worker on one port
with ``SO_REUSEPORT``, so the kernel spreads connections evenly, or one they all share),
starts ``count`` worker processes (``spawn``: each imports afresh, shares no threads or
connections with the parent) that each build the application on the same settings and
serve their socket, waits until every worker has loaded its
settings, and then supervises: a worker that dies later is started again; SIGTERM or
SIGINT stops them all (each shuts down gracefully: lifespan, shutdown checkpoint).

What every process must agree on lives in the state directory, not in a process:
challenge MAC and session-token keys, the spent-nonce set, the ledger (one hash chain under
an inter-process lock) and the checkpoints file (docs/PROTOCOL.md). Rate limits, the DEK
cache, metrics and the anonymous-denial counters are per process (docs/OPERATIONS.md).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from keybroker.config import BrokerSettings

__all__ = ["MAX_WORKERS", "WorkerStartError", "serve_workers"]

logger = logging.getLogger("keybroker.workers")
MAX_WORKERS = 64
WORKER_STARTUP_SECONDS = 120.0
WORKER_STOP_SECONDS = 15.0
RESTART_DELAY_SECONDS = 1.0


class WorkerStartError(RuntimeError):
    """A worker could not load its settings or serve (its message says why)."""


def _worker_main(
    settings: BrokerSettings,
    sock: socket.socket,
    tls: Any,
    log_setup: Callable[[], None] | None,
    index: int,
    status: Connection,
) -> None:
    """One worker: build the app (reporting failure to the parent), then serve ``sock``."""
    if log_setup is not None:
        log_setup()
    from keybroker.service.server import run_uvicorn

    try:
        from keybroker.service.app import create_app

        app = create_app(settings)
    except Exception as error:  # reported to the parent, which refuses to start
        status.send(("error", f"{type(error).__name__}: {error}"))
        status.close()
        raise SystemExit(2) from None
    status.send(("ready", ""))
    status.close()
    logger.info("broker worker %d serving", index)
    run_uvicorn(app, sock, settings, tls, log_level="info")


class _Worker:
    """A worker process and the pipe on which it says it started."""

    def __init__(self, context: Any, arguments: tuple[Any, ...], index: int) -> None:
        receiver, sender = context.Pipe(duplex=False)
        self.index = index
        self.status = receiver
        self.process = context.Process(
            target=_worker_main, args=(*arguments, index, sender), name=f"broker-worker-{index}"
        )
        self.process.start()
        sender.close()

    def wait_ready(self, deadline: float, stopping: threading.Event) -> str | None:
        """None once the worker is serving, else why it is not."""
        while time.monotonic() < deadline:
            if stopping.is_set():
                return "stopped during startup"
            if self.status.poll(0.1):
                try:
                    kind, message = self.status.recv()
                except EOFError:
                    return f"worker {self.index} exited during startup"
                return None if kind == "ready" else message
            if not self.process.is_alive():
                return f"worker {self.index} exited with {self.process.exitcode} during startup"
        return f"worker {self.index} did not start within {WORKER_STARTUP_SECONDS:.0f} s"

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        self.process.join(WORKER_STOP_SECONDS)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(WORKER_STOP_SECONDS)
        self.status.close()


def serve_workers(
    settings: BrokerSettings,
    sockets: socket.socket | Sequence[socket.socket],
    count: int,
    *,
    tls: Any = None,
    log_setup: Callable[[], None] | None = None,
) -> None:
    """Serve with ``count`` worker processes until SIGTERM/SIGINT: worker i on
    ``sockets[i]`` when there is one socket per worker, else all on the one socket.

    WorkerStartError when a worker cannot start (bad settings): the others are stopped.
    A worker started again takes its predecessor's socket.
    """
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"workers: expected 1 to {MAX_WORKERS}, got {count}")
    listening = [sockets] if isinstance(sockets, socket.socket) else list(sockets)
    if len(listening) not in (1, count):
        raise ValueError(f"sockets: expected 1 or {count}, got {len(listening)}")
    context = multiprocessing.get_context("spawn")

    def arguments(index: int) -> tuple[Any, ...]:
        return (settings, listening[index % len(listening)], tls, log_setup)

    stopping = threading.Event()

    def on_signal(_number: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {number: signal.signal(number, on_signal)
                for number in (signal.SIGINT, signal.SIGTERM)}
    workers: list[_Worker] = []
    try:
        deadline = time.monotonic() + WORKER_STARTUP_SECONDS
        for index in range(count):
            workers.append(_Worker(context, arguments(index), index))
        for worker in workers:
            problem = worker.wait_ready(deadline, stopping)
            if stopping.is_set():
                return  # asked to stop while starting: the workers are stopped below
            if problem is not None:
                raise WorkerStartError(problem)
        logger.info("broker serving with %d worker processes", count)
        while not stopping.wait(0.5):
            for position, worker in enumerate(workers):
                if worker.process.is_alive() or stopping.is_set():
                    continue
                logger.error("broker worker %d exited with %s; starting it again",
                             worker.index, worker.process.exitcode)
                worker.status.close()
                time.sleep(RESTART_DELAY_SECONDS)
                workers[position] = _Worker(context, arguments(worker.index), worker.index)
    finally:
        for worker in workers:
            worker.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)
