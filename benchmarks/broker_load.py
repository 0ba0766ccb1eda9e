"""Benchmark: the key broker under concurrent clients, per call, over real HTTP.

What it does: creates a demo state in a temporary directory (``init_state``: keyring, dev
SEV-SNP chain, a policy allowing the simulated worker), starts ``sealbeam broker serve`` on
it as a separate process on a free loopback port, then for each operation (``challenge``,
``attest``, ``release``, ``generate``) and each client count K (``--clients``, default 8 and
64) runs K clients for ``--seconds``, spread over ``--processes`` client processes, each
client with its own ``BrokerClient`` and keep-alive HTTP connection, calling the one
operation back to back. The client processes start once for the whole run; every client
first attests with real simulated SEV-SNP evidence
(a fresh TEE key, a report signed by the dev VCEK) and generates a data key, untimed, and
checks that the key the broker releases is the one it generated (HPKE-opened with its TEE
key). For ``attest``, each timed call is preceded by an untimed ``challenge`` and evidence
collection, as a worker does; only the attest call is timed.

The timed calls of ``challenge``, ``release`` and ``generate`` are made, by default
(``--client lean``), by a lean client, cheap so that the load generator takes little of the
CPU the broker shares with it (wrk is written in C for the same reason): HTTP/1.1 on a raw
socket (TCP_NODELAY), one keep-alive connection per client, its request (request line,
Host, Content-Type, Content-Length, body) built once; all of a client process's connections
are driven by one thread, one ``select`` loop (``run_lean``; measured cheaper than a thread
per client, and ``select`` waits to the microsecond where epoll rounds up to milliseconds).
Its reader is bounded: status line and headers at most ``MAX_HEAD_BYTES``, a Content-Length
required (at most ``MAX_BODY_BYTES``) and exactly that many body bytes read; after a
``Connection: close`` reply the next call reconnects. A short read or end of stream, a
malformed status line or header, a missing or oversized length, a status other than 200, a
reply without the fields that show the broker did the work (the released key's ``key_id``,
a ``sealed_dek`` and a grant; a challenge's nonce), or no whole reply within
``CALL_TIMEOUT_SECONDS``, is a typed error (``LeanHttpError``) counted as a failed call,
never a hang; the connection is then closed and the client's next call opens a new one.
Before and after its timed calls each client checks a full ``BrokerClient`` release (grant
signature verified against the pinned broker key, key HPKE-opened and compared).
``--client full`` times ``BrokerClient`` calls instead, one thread per client (httpx, grant
verification and HPKE open on every call: several times the client CPU); attest always uses
the full client, in threads.

Open loop (``--rate R``, wrk2's way): instead of calling back to back, the K clients together
offer R calls/s, each client one call every K/R s on a fixed schedule (client i starts i/R s
in, so the calls are spread evenly). A call's latency runs from its *scheduled* time, not
from when it left: when the broker is slow, a client's next calls wait behind the slow one
and that wait counts (no coordinated omission). A call that left more than
``LATE_SECONDS`` after its time is counted ``late``; calls still waiting when the phase
(plus a grace of ``DRAIN_SECONDS``) is over are not sent and are counted ``dropped`` (the
percentiles do not include them: with drops they are lower bounds). Only calls scheduled
inside the phase are made. Attest is closed-loop only (its untimed challenge and evidence
would sit inside the schedule).

Reported per (operation, K): calls/s over the phase (all clients), p50/p95/p99/max latency
in ms, failed calls, in open loop the offered rate and the late and dropped calls, and the
CPU the broker used (utime + stime from /proc of the ``broker
serve`` process and all its worker processes, in % of one core) and the CPU of the client
processes, so a figure can be read against what the load generator itself took from the
same cores. ``--json PATH`` also writes the numbers.

What it does not: no TLS, no KMS other than the local keyring; the broker runs exactly as
``sealbeam broker serve --workers N`` runs it (``--broker-workers``, default 1); the clients
share the machine's cores with the broker, which is what a one-machine test can do.

    .venv/bin/python benchmarks/broker_load.py [--clients 8 64] [--seconds 5]
        [--processes 4] [--broker-workers 1] [--client lean|full] [--rate R [R ...]]
        [--operations challenge attest release generate] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import math
import multiprocessing
import os
import platform
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

# The repository root goes first so that our packages are found, not this file's neighbours.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from envelope import TeeKeyPair, release_info, report_data_binding
from keybroker.client import GENERATE_PURPOSE, RELEASE_PURPOSE, BrokerClient, BrokerError
from keybroker.config import BROKER_SETTINGS_FILE, init_state

OPERATIONS = ("challenge", "attest", "release", "generate")
REGION = "eu"
PRODUCER = "acme"
STARTUP_TIMEOUT_SECONDS = 30.0
LATE_SECONDS = 0.001  # open loop: a call that left this long after its time is late
DRAIN_SECONDS = 1.0  # open loop: how long past the phase a client still sends its backlog
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkCheckError(Exception):
    """The broker gave a wrong answer or did not start: the numbers would be meaningless."""


# -- the broker process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_broker(state_dir: Path, port: int, workers: int = 1) -> subprocess.Popen[bytes]:
    """``sealbeam broker serve --workers N`` on ``state_dir``; returns once every worker
    answers /v1/health (the parent reports ready only after all workers loaded)."""
    root = Path(__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "broker", "serve", "--state", str(state_dir),
         "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        cwd=root, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    with BrokerClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        while True:
            if process.poll() is not None:
                raise BenchmarkCheckError(f"the broker exited with {process.returncode}")
            try:
                if client.health().get("status") == "ok":
                    return process
            except BrokerError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise BenchmarkCheckError("the broker did not answer /v1/health in time")
            time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads) and of its live descendants (the
    broker's worker processes), from /proc."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in
                               (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
    return total


# -- the lean client: HTTP/1.1 on a raw socket, all of a process's clients on one thread ---

MAX_HEAD_BYTES = 16 * 1024  # a reply's status line and headers, at most
MAX_BODY_BYTES = 1 << 20  # a reply's body (its Content-Length), at most
RECV_BYTES = 64 * 1024
CALL_TIMEOUT_SECONDS = 30.0  # a lean call without its whole reply by then has failed
TIMEOUT_SCAN_SECONDS = 0.5  # how often the loop looks for calls past their timeout
MAX_LEAN_CLIENTS = 512  # per process: select() takes descriptors below 1024


class LeanHttpError(Exception):
    """A lean call's reply was not the bounded HTTP/1.1 response it expects: the call is
    counted failed and its connection closed (the next call opens a new one)."""


class ShortReadError(LeanHttpError):
    """The connection ended before the whole response (status line, headers, body)."""


class MalformedResponseError(LeanHttpError):
    """A status line or header that is not HTTP/1.x, or bytes after the response."""


class HeadTooLargeError(LeanHttpError):
    """No end of headers within ``MAX_HEAD_BYTES``."""


class MissingLengthError(LeanHttpError):
    """No Content-Length (a chunked or close-delimited body has no bound up front)."""


class BodyTooLargeError(LeanHttpError):
    """A Content-Length over ``MAX_BODY_BYTES``."""


class CallTimeoutError(LeanHttpError):
    """No whole response within ``CALL_TIMEOUT_SECONDS`` of the request leaving."""


class StatusError(LeanHttpError):
    """A whole response whose status is not 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class ReplyError(LeanHttpError):
    """A 200 whose JSON lacks what shows the broker did the work (or names another key)."""


class Response(NamedTuple):
    status: int
    body: bytes
    close: bool  # the server closes the connection after it (Connection: close, HTTP/1.0)


# A status line, then header lines (a token, a colon, a value without CR or LF); no
# obsolete line folding. The three fields the reader acts on, from the lower-cased headers.
HEAD = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?"
                  rb"((?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n]*)*)")
FIELDS = re.compile(rb"\r\n(content-length|connection|transfer-encoding):[ \t]*([^\r\n]*)")


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and close-after of a response's status line and headers
    (without the blank line). Raises the typed errors above."""
    match = HEAD.fullmatch(head)
    if match is None:
        raise MalformedResponseError(f"status line or headers {head[:40]!r}")
    close = match[1] == b"0"  # HTTP/1.0 closes unless it says keep-alive
    length: int | None = None
    for name, raw in FIELDS.findall(match[3].lower()):
        value = raw.rstrip(b" \t")
        if name == b"content-length":
            if not value.isdigit() or len(value) > 12 or (
                    length is not None and int(value) != length):
                raise MalformedResponseError(f"Content-Length {value[:20]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            raise MissingLengthError("a Transfer-Encoding body; Content-Length is required")
        else:
            tokens = {token.strip() for token in value.split(b",")}
            close = b"close" in tokens or (close and b"keep-alive" not in tokens)
    if length is None:
        raise MissingLengthError("no Content-Length")
    if length > MAX_BODY_BYTES:
        raise BodyTooLargeError(f"Content-Length {length} over {MAX_BODY_BYTES}")
    return int(match[2]), length, close


class ResponseReader:
    """One HTTP/1.1 response from the chunks a socket gives, however they are split.

    ``feed`` the bytes of each ``recv`` (``b""`` at end of stream): it returns the
    ``Response`` once the headers (at most ``MAX_HEAD_BYTES``) and exactly Content-Length
    body bytes are in, else None. The common case, a whole response in one chunk, is parsed
    without copying it into the buffer.
    """

    __slots__ = ("_buffer", "_head")

    def __init__(self) -> None:
        self._buffer = bytearray()  # a partial response
        self._head: tuple[int, int, bool, int] | None = None  # status, length, close, start

    def reset(self) -> None:
        self._buffer.clear()
        self._head = None

    def feed(self, data: bytes) -> Response | None:
        if not data:
            raise ShortReadError("the connection closed before the whole response")
        if self._buffer:
            self._buffer += data
            buffer: bytes | bytearray = self._buffer
        else:
            buffer = data
        head = self._head
        if head is None:
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
            if end < 0:
                if len(buffer) >= MAX_HEAD_BYTES:
                    raise HeadTooLargeError(f"no end of headers in {MAX_HEAD_BYTES} bytes")
                if buffer is data:
                    self._buffer += data
                return None
            head = self._head = (*parse_head(bytes(buffer[:end])), end + 4)
        status, length, close, start = head
        total = start + length
        if len(buffer) < total:
            if buffer is data:
                self._buffer += data
            return None
        if len(buffer) > total:
            raise MalformedResponseError("bytes after the response")
        body = bytes(buffer[start:])
        self.reset()
        return Response(status, body, close)


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """A POST's bytes, built once per client and operation."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("ascii") + body


PATHS = {"challenge": "/v1/challenge", "release": "/v1/keys/release",
         "generate": "/v1/keys/generate"}


def check_reply(operation: str, response: Response, key_id: str) -> None:
    """The status and the fields that show the broker did the work; grants and keys are
    checked by the full client around the timed calls."""
    if response.status != 200:
        raise StatusError(response.status)
    try:
        reply = json.loads(response.body)
    except ValueError as error:
        raise ReplyError(f"{operation}: the reply is not JSON") from error
    if not isinstance(reply, dict):
        raise ReplyError(f"{operation}: the reply is not an object")
    if operation == "challenge":
        if not reply.get("nonce"):
            raise ReplyError("challenge: no nonce")
    elif not reply.get("sealed_dek") or not reply.get("grant"):
        raise ReplyError(f"{operation}: no sealed key or grant")
    elif operation == "release" and reply.get("key_id") != key_id:
        raise ReplyError("release: another key")


class LeanClient:
    """One client's timed calls: its requests built once, one keep-alive connection (a
    non-blocking socket with TCP_NODELAY) that its process's loop (``run_lean``) drives, a
    reader for the replies. ``last_error`` is the last failed call's error."""

    def __init__(self, url: str, key_id: str, bodies: dict[str, bytes]) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))
        self.key_id = key_id
        self.requests = {operation: build_request(host, int(port), PATHS[operation], body)
                         for operation, body in bodies.items()}
        self.reader = ResponseReader()
        self.sock: socket.socket | None = None
        self.last_error: Exception | None = None

    @classmethod
    def for_key(cls, url: str, session_id: str, wrapped: object) -> LeanClient:
        """The client of one attested session holding one wrapped key."""
        return cls(url, wrapped.key_id, {  # type: ignore[attr-defined]
            "challenge": b"",
            "release": json.dumps({
                "session_id": session_id,
                "kek_uri": wrapped.kek.uri,  # type: ignore[attr-defined]
                "kek_version": wrapped.kek.version,  # type: ignore[attr-defined]
                "wrapped_dek": base64.b64encode(
                    wrapped.ciphertext).decode("ascii"),  # type: ignore[attr-defined]
                "region": REGION, "producer_id": PRODUCER}).encode(),
            "generate": json.dumps({"session_id": session_id, "region": REGION,
                                    "producer_id": PRODUCER}).encode(),
        })

    def connect(self) -> socket.socket:
        self.close()
        sock = socket.create_connection(self.address, timeout=CALL_TIMEOUT_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.reader.reset()


class _Call:
    """A client's state in ``run_lean``: its calls so far and the one in flight."""

    __slots__ = ("client", "deadline", "index", "request", "scheduled", "sent", "start",
                 "unsent")

    def __init__(self, index: int, client: LeanClient, request: bytes, start: float) -> None:
        self.index = index
        self.client = client
        self.request = request
        self.start = start  # open loop: its first call's time
        self.sent = 0
        self.scheduled = 0.0  # the call in flight: its time (open loop) or when it left
        self.deadline = 0.0  # ... and when it times out
        self.unsent = b""  # ... and what the socket did not take yet


def run_lean(clients: list[LeanClient], operation: str, start: float, seconds: float, *,
             interval: float = 0.0, offsets: list[float] | None = None,
             drain: float = DRAIN_SECONDS,
             timeout: float = CALL_TIMEOUT_SECONDS) -> ThreadResults:
    """All of one process's lean clients in one thread, one ``select`` over their sockets.

    ``start`` is on ``time.perf_counter``. Closed loop (``interval`` 0): each client sends
    its next call as soon as its reply is in, from ``start`` until ``start + seconds``, as
    ``closed_loop`` does; a call's latency runs from when it left.
    Open loop: client j's calls are due at ``start + offsets[j]``, then every ``interval``,
    exactly as ``open_loop`` makes them (latency from the due time, late, dropped after the
    drain). A failed call (an OSError, a ``LeanHttpError``, no reply within ``timeout``)
    is counted, its connection closed and reopened by the client's next call. ``select``
    waits with microsecond precision (epoll and poll round up to milliseconds, which would
    make calls late).
    """
    now_of = time.perf_counter
    calls = [_Call(index, client, client.requests[operation],
                   start + (offsets[index] if offsets else 0.0))
             for index, client in enumerate(clients)]
    is_open = interval > 0
    due = max(0, math.ceil(seconds / interval - 1e-9)) if is_open else 0
    end = start + seconds  # closed loop: no call leaves after it
    give_up = start + seconds + drain  # open loop: no call leaves after it
    latencies: list[float] = []
    failed = late = dropped = 0
    waiting = [(call.start, index) for index, call in enumerate(calls)]  # idle: next time
    heapq.heapify(waiting)
    reading: dict[int, _Call] = {}  # fd -> call in flight, its request sent
    writing: dict[int, _Call] = {}  # fd -> call in flight, part of its request unsent
    next_scan = start + TIMEOUT_SCAN_SECONDS

    def finish(call: _Call, now: float) -> None:
        """The call is over: the client waits for its next one, or is done."""
        if not is_open:
            if now < end:
                heapq.heappush(waiting, (now, call.index))
        elif call.sent < due:
            heapq.heappush(waiting, (call.start + call.sent * interval, call.index))

    def fail(call: _Call, error: Exception) -> None:
        nonlocal failed
        failed += 1
        call.client.last_error = error
        if call.client.sock is not None:
            fd = call.client.sock.fileno()
            reading.pop(fd, None)
            writing.pop(fd, None)
        call.client.close()
        finish(call, now_of())

    def send(call: _Call, data: bytes) -> None:
        sock = call.client.sock
        assert sock is not None
        try:
            written = sock.send(data)
        except BlockingIOError:
            written = 0
        except OSError as error:
            fail(call, error)
            return
        fd = sock.fileno()
        if written < len(data):
            call.unsent = data[written:]
            writing[fd] = call
            reading.pop(fd, None)
        else:
            call.unsent = b""
            writing.pop(fd, None)
            reading[fd] = call

    while waiting or reading or writing:
        now = now_of()
        while waiting and waiting[0][0] <= now:
            scheduled, index = heapq.heappop(waiting)
            call = calls[index]
            if is_open:
                if now > give_up:
                    dropped += due - call.sent
                    continue
                if now - scheduled > LATE_SECONDS:
                    late += 1
                call.scheduled = scheduled
            elif now >= end:
                continue
            else:
                call.scheduled = now
            call.sent += 1
            call.deadline = now + timeout
            try:
                if call.client.sock is None:
                    call.client.connect()
            except OSError as error:
                fail(call, error)
                continue
            send(call, call.request)
            now = now_of()
        if now >= next_scan:
            next_scan = now + TIMEOUT_SCAN_SECONDS
            for call in [*reading.values(), *writing.values()]:
                if now > call.deadline:
                    fail(call, CallTimeoutError(f"no reply within {timeout:g} s"))
        if not (reading or writing):
            if waiting:
                pause = waiting[0][0] - now_of()
                if pause > 0:
                    time.sleep(pause)
            continue
        wait = min(next_scan - now, waiting[0][0] - now if waiting else TIMEOUT_SCAN_SECONDS)
        readable, writable, _ = select.select(reading, writing, (), max(0.0, wait))
        for fd in writable:
            call = writing.get(fd)
            if call is not None:
                send(call, call.unsent)
        for fd in readable:
            call = reading.get(fd)
            if call is None:
                continue
            client = call.client
            try:
                data = client.sock.recv(RECV_BYTES)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError as error:
                fail(call, error)
                continue
            try:
                response = client.reader.feed(data)
                if response is None:
                    continue
                check_reply(operation, response, client.key_id)
            except LeanHttpError as error:
                fail(call, error)
                continue
            done = now_of()
            latencies.append(done - call.scheduled)
            del reading[fd]
            if response.close:
                client.close()
            finish(call, done)
    return ThreadResults(latencies, failed, scheduled=due * len(calls), late=late,
                         dropped=dropped)


# -- one client thread ---------------------------------------------------------------


class AttestedClient(NamedTuple):
    client: BrokerClient
    provider: SimulatedSnpProvider
    tee_keys: TeeKeyPair
    session: object
    wrapped: object
    lean: LeanClient


def attest(client: BrokerClient, provider: SimulatedSnpProvider
           ) -> tuple[TeeKeyPair, object, float]:
    """challenge, evidence, attest; the session and the seconds the attest call took."""
    tee_keys = TeeKeyPair.generate()
    nonce = client.challenge()
    evidence = provider.collect(report_data_binding(nonce, tee_keys.public_bytes()))
    started = time.perf_counter()
    session = client.attest(nonce, evidence.tee, evidence.evidence,
                            dict(evidence.endorsements), tee_keys.public_bytes())
    return tee_keys, session, time.perf_counter() - started


def set_up_client(url: str, chain_dir: Path) -> AttestedClient:
    """An attested client holding one generated key, checked by a release."""
    client = BrokerClient(url, timeout=30)
    provider = SimulatedSnpProvider(chain_dir)
    tee_keys, session, _ = attest(client, provider)
    sealed, wrapped = client.generate(session, REGION, PRODUCER)
    generated = tee_keys.open(sealed, release_info(GENERATE_PURPOSE, wrapped.key_id))
    state = AttestedClient(client, provider, tee_keys, session, wrapped,
                           LeanClient.for_key(url, session.id, wrapped))  # type: ignore[attr-defined]
    check_release(state, generated)
    return state


def check_release(state: AttestedClient, expected: bytes | None = None) -> None:
    """A full client's release: grant verified, key opened, and (at set-up) compared."""
    released = state.tee_keys.open(
        state.client.release(state.session, state.wrapped, REGION, PRODUCER),
        release_info(RELEASE_PURPOSE, state.wrapped.key_id))  # type: ignore[attr-defined]
    if len(released) != 32 or (expected is not None and released != expected):
        raise BenchmarkCheckError("the released key is not the generated one")


def one_call(state: AttestedClient, operation: str) -> float:
    """Run ``operation`` once with the full client; the seconds the timed call took."""
    if operation == "attest":  # challenge and evidence first, untimed, as a worker does
        _, _, seconds = attest(state.client, state.provider)
        return seconds
    started = time.perf_counter()
    if operation == "challenge":
        state.client.challenge()
    elif operation == "release":
        state.client.release(state.session, state.wrapped, REGION, PRODUCER)
    elif operation == "generate":
        state.client.generate(state.session, REGION, PRODUCER)
    else:
        raise ValueError(f"unknown operation {operation!r}")
    return time.perf_counter() - started


class Phase(NamedTuple):
    """One process's part of a phase: ``threads`` clients numbered from ``first`` of
    ``clients`` in all; ``rate`` 0 is closed loop, else the total calls/s offered."""

    operation: str
    threads: int
    seconds: float
    rate: float = 0.0
    first: int = 0
    clients: int = 1


def client_process(url: str, chain_dir: str, slots: int, plan: list[Phase],
                   ready: object, go: object, start: object,
                   results: multiprocessing.Queue, lean: bool = True) -> None:
    """One client process for the whole run: ``slots`` attested clients, then every phase.

    For each phase of ``plan`` it waits at ``ready`` (a barrier with the parent), then at
    ``go`` (after which the shared ``start`` time is set), runs ``threads`` of its clients
    from ``start`` for ``seconds`` and puts its counts (``ThreadResults``) on ``results``.
    Set-up errors are reported in the first phase.
    """
    error: str | None = None
    try:
        states = [set_up_client(url, Path(chain_dir)) for _ in range(slots)]
    except Exception as failure:  # reported to the parent, which fails the run
        states, error = [], f"setup: {type(failure).__name__}: {failure}"
    for phase in plan:
        ready.wait()  # type: ignore[attr-defined]
        go.wait()  # type: ignore[attr-defined]
        if error is not None:
            results.put(tuple(ThreadResults([], error=error)))
            continue
        # A plain tuple on the queue: the class lives in ``__mp_main__`` here.
        run = lean_phase if lean and phase.operation != "attest" else run_threads
        results.put(tuple(run(
            states[:phase.threads], phase.operation, start.value,  # type: ignore[attr-defined]
            phase.seconds, rate=phase.rate, first=phase.first, clients=phase.clients)))
    for state in states:
        state.client.close()
        state.lean.close()


class ThreadResults(NamedTuple):
    """What one client (or one process's clients) saw in a phase."""

    latencies: list[float]
    failures: int = 0
    cpu_seconds: float = 0.0
    error: str | None = None
    scheduled: int = 0  # open loop: calls due inside the phase
    late: int = 0  # open loop: calls that left over LATE_SECONDS after their time
    dropped: int = 0  # open loop: calls not sent by the end of the drain


def closed_loop(call: object, end: float, clock: object = time.time) -> ThreadResults:
    """``call()`` (returning its seconds) back to back until ``clock()`` passes ``end``."""
    latencies: list[float] = []
    failed = 0
    while clock() < end:  # type: ignore[operator]
        try:
            latencies.append(call())  # type: ignore[operator]
        except (BrokerError, OSError):
            failed += 1
    return ThreadResults(latencies, failed)


def open_loop(call: object, start: float, seconds: float, interval: float,
              clock: object = time.perf_counter, sleep: object = time.sleep,
              drain: float = DRAIN_SECONDS) -> ThreadResults:
    """One client's calls at ``start``, ``start + interval``, ... before ``start + seconds``.

    Each call waits for its time (or leaves at once if the client is behind); its latency is
    from its scheduled time to its answer, so time spent behind a slow call counts. Calls
    not sent by ``start + seconds + drain`` are dropped. ``clock`` and ``sleep`` are
    injectable (the smoke test drives this with a fake clock).
    """
    latencies: list[float] = []
    failed = late = 0
    due = max(0, math.ceil(seconds / interval - 1e-9))
    deadline = start + seconds + drain
    sent = 0
    while sent < due:
        scheduled = start + sent * interval
        now = clock()  # type: ignore[operator]
        if now < scheduled:
            sleep(scheduled - now)  # type: ignore[operator]
            now = clock()  # type: ignore[operator]
        if now > deadline:
            break
        if now - scheduled > LATE_SECONDS:
            late += 1
        sent += 1
        try:
            call()  # type: ignore[operator]
        except (BrokerError, OSError):
            failed += 1
            continue
        latencies.append(clock() - scheduled)  # type: ignore[operator]
    return ThreadResults(latencies, failed, scheduled=due, late=late, dropped=due - sent)


def run_threads(states: list[AttestedClient], operation: str, start_at: float,
                seconds: float, *, rate: float = 0.0, first: int = 0,
                clients: int = 1) -> ThreadResults:
    """The process's full clients (``--client full``, and attest) in threads for one phase,
    closed loop or (``rate``) open; each then checked by a full release."""
    outcomes: list[ThreadResults] = []
    lock = threading.Lock()
    checks: list[str] = []

    def loop(index: int, state: AttestedClient) -> None:
        if rate:
            # One clock for the schedule: the shared wall-clock start, on perf_counter.
            start = time.perf_counter() + (start_at - time.time()) + (first + index) / rate
            outcome = open_loop(lambda: one_call(state, operation), start, seconds,
                                clients / rate)
        else:
            while time.time() < start_at:
                time.sleep(0.001)
            outcome = closed_loop(lambda: one_call(state, operation),
                                  start_at + seconds)
        try:  # after the timed calls: the full client still gets its key (untimed)
            check_release(state)
        except (BrokerError, BenchmarkCheckError) as error:
            with lock:
                checks.append(f"check after {operation}: {error}")
        with lock:
            outcomes.append(outcome)

    cpu_before = time.process_time()
    workers = [threading.Thread(target=loop, args=(index, state))
               for index, state in enumerate(states)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return ThreadResults(
        [value for outcome in outcomes for value in outcome.latencies],
        sum(outcome.failures for outcome in outcomes), time.process_time() - cpu_before,
        checks[0] if checks else None,
        *(sum(getattr(outcome, name) for outcome in outcomes)
          for name in ("scheduled", "late", "dropped")))


def lean_phase(states: list[AttestedClient], operation: str, start_at: float,
               seconds: float, *, rate: float = 0.0, first: int = 0,
               clients: int = 1) -> ThreadResults:
    """The process's lean clients in this thread for one phase (``run_lean``), closed loop
    or (``rate``) open, each then checked by a full release."""
    cpu_before = time.process_time()
    for state in states:  # fresh connections (the broker closes idle keep-alive ones)
        state.lean.connect()
    # One clock for the schedule: the shared wall-clock start, on perf_counter.
    start = time.perf_counter() + (start_at - time.time())
    if rate:
        outcome = run_lean([state.lean for state in states], operation, start, seconds,
                           interval=clients / rate,
                           offsets=[(first + index) / rate for index in range(len(states))])
    else:
        outcome = run_lean([state.lean for state in states], operation, start, seconds)
    checks = []
    for state in states:  # after the timed calls: the full client still gets its key
        try:
            check_release(state)
        except (BrokerError, BenchmarkCheckError) as error:
            checks.append(f"check after {operation}: {error}")
    return outcome._replace(cpu_seconds=time.process_time() - cpu_before,
                            error=checks[0] if checks else None)


# -- the run: persistent client processes, one phase per (operation, client count) --------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def shares(clients: int, processes: int) -> list[int]:
    """``clients`` spread over ``processes`` as evenly as possible (first ones get more)."""
    return [clients // processes + (1 if i < clients % processes else 0)
            for i in range(processes)]


def run_all(url: str, chain_dir: Path, broker_pid: int, operations: list[str],
            client_counts: list[int], processes: int, seconds: float,
            lean: bool = True, rates: list[float] | None = None) -> list[dict[str, object]]:
    """Start the client processes once (every client attests once), then run each phase:
    each operation at each client count, closed loop or, with ``rates``, at each rate."""
    context = multiprocessing.get_context("spawn")
    processes = max(1, min(processes, max(client_counts)))
    phases = [(operation, clients, rate) for operation in operations
              for clients in client_counts for rate in (rates or [0.0])]
    plans = [[Phase(operation, shares(clients, processes)[i], seconds, rate,
                    sum(shares(clients, processes)[:i]), clients)
              for operation, clients, rate in phases] for i in range(processes)]
    slots = shares(max(client_counts), processes)
    results = context.Queue()
    ready, go = context.Barrier(processes + 1), context.Barrier(processes + 1)
    start = context.Value("d", 0.0)
    children = [context.Process(target=client_process,
                                args=(url, str(chain_dir), slots[i], plans[i], ready, go, start,
                                      results, lean), daemon=True)
                for i in range(processes)]
    for child in children:
        child.start()
    try:
        rows = []
        for operation, clients, rate in phases:
            # Waits for every client's set-up (attestation) before the first phase.
            ready.wait(timeout=300 + 2 * max(client_counts))
            start_at = time.time() + 0.05
            start.value = start_at
            go.wait(timeout=60)
            while time.time() < start_at:
                time.sleep(0.001)
            rows.append(collect_phase(results, broker_pid, operation, clients, processes,
                                      seconds, rate))
        return rows
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()


def collect_phase(results: multiprocessing.Queue, broker_pid: int, operation: str,
                  clients: int, processes: int, seconds: float,
                  rate: float = 0.0) -> dict[str, object]:
    broker_cpu_before = cpu_seconds(broker_pid)
    wall_before = time.perf_counter()
    collected: list[ThreadResults] = [
        ThreadResults(*results.get(timeout=seconds + DRAIN_SECONDS + 120 + clients))
        for _ in range(processes)]
    wall = time.perf_counter() - wall_before
    broker_cpu = cpu_seconds(broker_pid) - broker_cpu_before
    errors = [part.error for part in collected if part.error]
    if errors:
        raise BenchmarkCheckError(f"{operation} x{clients}: {errors[0]}")
    latencies = sorted(value for part in collected for value in part.latencies)
    if not latencies:
        raise BenchmarkCheckError(f"{operation} x{clients}: no call completed")
    row: dict[str, object] = {
        "operation": operation,
        "mode": "open" if rate else "closed",
        "clients": clients,
        "client_processes": sum(1 for share in shares(clients, processes) if share),
        "seconds": seconds,
    }
    if rate:
        row.update({
            "offered_per_second": rate,
            "scheduled": sum(part.scheduled for part in collected),
            "late": sum(part.late for part in collected),
            "dropped": sum(part.dropped for part in collected),
        })
    return {
        **row,
        "calls": len(latencies),
        "failures": sum(part.failures for part in collected),
        # Achieved: answered calls over the phase (open loop: those due inside it).
        "calls_per_second": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p95_ms": percentile(latencies, 0.95) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "max_ms": latencies[-1] * 1e3,
        "mean_ms": statistics.fmean(latencies) * 1e3,
        # From the start of the phase until every client reported (a little over
        # ``seconds``; the broker is idle in that tail).
        "broker_cpu_percent": 100 * broker_cpu / wall,
        # Where the broker's time goes per call: its CPU seconds over the calls served.
        "broker_cpu_ms_per_call": 1e3 * broker_cpu / len(latencies),
        "client_cpu_percent": 100 * sum(part.cpu_seconds for part in collected) / seconds,
    }


# -- output -----------------------------------------------------------------------------


def print_report(numbers: dict[str, object]) -> None:
    print(f"{'operation':11}{'clients':>8}{'offered/s':>10}{'calls/s':>10}{'p50 ms':>9}"
          f"{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'failed':>8}{'late':>7}{'dropped':>8}"
          f"{'broker CPU':>12}{'CPU ms/call':>13}{'client CPU':>12}")
    for row in numbers["phases"]:
        is_open = row["mode"] == "open"
        offered = f"{row['offered_per_second']:,.0f}" if is_open else "closed"
        late = str(row["late"]) if is_open else "-"
        dropped = str(row["dropped"]) if is_open else "-"
        print(f"{row['operation']:11}{row['clients']:>8}{offered:>10}"
              f"{row['calls_per_second']:>10,.0f}"
              f"{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['p99_ms']:>9.1f}"
              f"{row['max_ms']:>9.1f}{row['failures']:>8}{late:>7}{dropped:>8}"
              f"{row['broker_cpu_percent']:>11.0f}%"
              f"{row['broker_cpu_ms_per_call']:>13.2f}"
              f"{row['client_cpu_percent']:>11.0f}%")
    environment = numbers["environment"]
    clients_how = {"lean": "lean: one select loop per process; attest: a thread per client",
                   "full": "full: a thread per client"}
    print(f"broker: `sealbeam broker serve --workers {environment['broker_workers']}`; "
          f"clients ({clients_how[environment['client']]}) over "
          f"{environment['processes']} processes; "
          f"{environment['seconds']} s per phase; "
          f"{environment['cpu_count']} CPUs; CPU in % of one core")
    if environment.get("rates"):
        print(f"open loop: latency from each call's scheduled time; late = left over "
              f"{LATE_SECONDS * 1e3:g} ms after it; dropped = not sent within "
              f"{DRAIN_SECONDS:g} s after the phase")


def lift_rate_limit(state_dir: Path) -> None:
    """All load comes from one loopback address: lift the per-address rate limit of the
    unauthenticated routes (broker.yaml ``limits``), or it, not the broker, is measured."""
    path = state_dir / BROKER_SETTINGS_FILE
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    document["limits"] = {**(document.get("limits") or {}),
                          "rate_per_second": 1_000_000, "rate_burst": 1_000_000}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 64],
                        help="concurrent client counts, one phase each (default 8 64)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="timed seconds per phase (default 5)")
    parser.add_argument("--processes", type=int, default=4,
                        help="client processes the clients are spread over (default 4)")
    parser.add_argument("--operations", nargs="+", choices=OPERATIONS, default=list(OPERATIONS),
                        help="operations to drive (default: all four)")
    parser.add_argument("--broker-workers", type=int, default=1, metavar="N",
                        help="broker processes (`broker serve --workers N`; default 1)")
    parser.add_argument("--client", choices=("lean", "full"), default="lean",
                        help="timed calls by a lean HTTP client (default) or BrokerClient")
    parser.add_argument("--rate", type=float, nargs="+", metavar="R",
                        help="open loop: total calls/s offered by the clients, spread evenly "
                             "(one phase per rate; default: closed loop)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if (min(args.clients) < 1 or args.processes < 1 or args.seconds <= 0
            or args.broker_workers < 1):
        parser.error("--clients, --processes and --broker-workers must be at least 1, "
                     "--seconds positive")
    if args.client == "lean" and math.ceil(max(args.clients) / args.processes) > MAX_LEAN_CLIENTS:
        parser.error(f"--client lean: at most {MAX_LEAN_CLIENTS} clients per process "
                     "(select() takes descriptors below 1024); raise --processes")
    if args.rate is not None:
        if min(args.rate) <= 0 or not all(math.isfinite(rate) for rate in args.rate):
            parser.error("--rate must be positive")
        if "attest" in args.operations:
            parser.error("--rate: attest is closed loop only (leave it out of --operations)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    numbers: dict[str, object] = {"environment": {
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "processes": args.processes, "seconds": args.seconds, "clients": args.clients,
        "broker_workers": args.broker_workers, "client": args.client,
        "rates": args.rate or [],
    }}
    with tempfile.TemporaryDirectory(prefix="sealbeam-broker-load-") as workdir:
        state_dir = Path(workdir) / "state"
        settings = init_state(state_dir, regions=(REGION,), tenants=(PRODUCER,),
                              allowed_measurements=(DEV_MEASUREMENT,))
        if settings.dev_chain_dir is None:
            print("broker load: error: the demo state has no dev chain", file=sys.stderr)
            return 1
        lift_rate_limit(state_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            broker = start_broker(state_dir, port, args.broker_workers)
        except BenchmarkCheckError as error:
            print(f"broker load: error: {error}", file=sys.stderr)
            return 1
        try:
            phases = run_all(url, settings.dev_chain_dir, broker.pid, args.operations,
                             args.clients, args.processes, args.seconds,
                             args.client == "lean", args.rate)
        except BenchmarkCheckError as error:
            print(f"broker load: error: {error}", file=sys.stderr)
            return 1
        finally:
            broker.terminate()
            try:
                broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()
    numbers["phases"] = phases
    print_report(numbers)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
