"""Benchmark: the latency a server that only burns a fixed CPU per call gets on this machine.

Why: the broker's latency goal (p99 under 50 ms at 1,000 releases/s on 2 cores) depends on
the machine as much as on the broker. This script answers "how little CPU per call must any
server need here to meet it?": it runs the broker benchmark's load, on the same machine,
against a server that does nothing but burn a known CPU time per call.

What it does: for each ``--cpu-us`` value, starts ``--workers`` server processes on one
free loopback port (``SO_REUSEPORT``, one listening socket each, as ``broker serve
--workers`` does), each an asyncio loop (uvloop where installed) that reads HTTP/1.1
requests on keep-alive connections (bounded: the head at most ``MAX_HEAD_BYTES``, a
Content-Length at most ``MAX_BODY_BYTES``; anything else is answered 400 and closed),
burns the CPU time (SHA-256 over a 4 KiB block, calibrated on this process's CPU clock) and
answers a small JSON object with a fresh ``nonce``, as ``/v1/challenge`` does. The load is
``benchmarks/broker_load.py``'s own lean client, open loop: ``--clients`` clients over
``--processes`` processes offer ``--rate`` calls/s in all, each call's latency from its
scheduled time (no coordinated omission), every reply checked (status, JSON, nonce).

Reported per (CPU per call, rate): the calls answered per second, p50/p95/p99/max latency,
failed, late and dropped calls as in ``broker_load.py``, and the servers' measured CPU per
call (utime + stime of the worker processes over the calls), which checks the burn.
``--json PATH`` also writes the rows.

What it does not: no TLS, no broker logic; it measures the machine and the load generator,
to be read beside ``broker_load.py`` and ``machine_jitter.py``.

    .venv/bin/python benchmarks/reference_server.py [--cpu-us 0 300 600 900]
        [--rate 1000] [--clients 64] [--processes 4] [--workers 2] [--seconds 5]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _load_broker_load():  # a module
    """``broker_load.py`` by path: the benchmarks folder on sys.path would shadow
    the ``envelope`` package with ``benchmarks/envelope.py``."""
    spec = importlib.util.spec_from_file_location(
        "_sealbeam_broker_load", Path(__file__).with_name("broker_load.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


broker_load = _load_broker_load()

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
CALIBRATION_RUNS = 15
_BLOCK = b"\xa5" * 4096
_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")


def burn(units: int) -> None:
    digest = hashlib.sha256()
    for _ in range(units):
        digest.update(_BLOCK)


def calibrate(cpu_us: float) -> int:
    """SHA-256 block updates that take ``cpu_us`` of this thread's CPU (median of runs)."""
    if cpu_us <= 0:
        return 0
    trial = 2000
    samples = []
    for _ in range(CALIBRATION_RUNS):
        started = time.thread_time_ns()
        burn(trial)
        samples.append((time.thread_time_ns() - started) / trial)
    return max(1, round(cpu_us * 1e3 / max(statistics.median(samples), 1e-3)))


class RequestError(Exception):
    """A request the reference server does not take (too large, no length, malformed)."""


def split_request(buffer: bytearray) -> int:
    """The length of the first whole request in ``buffer``, 0 when it is not all there.

    RequestError when the head is over MAX_HEAD_BYTES, a Content-Length is missing,
    malformed or over MAX_BODY_BYTES, or the head does not start with a request line.
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise RequestError("head too long")
        return 0
    lines = bytes(buffer[:end]).split(b"\r\n")
    if len(lines[0].split(b" ")) != 3:
        raise RequestError("no request line")
    length = None
    for line in lines[1:]:
        name, separator, value = line.partition(b":")
        if not separator:
            raise RequestError("a header without a colon")
        if name.strip().lower() == b"content-length":
            text = value.strip()
            if length is not None or not text.isdigit() or len(text) > 6:
                raise RequestError("a bad Content-Length")
            length = int(text)
    if length is None or length > MAX_BODY_BYTES:
        raise RequestError("no Content-Length, or over the limit")
    whole = end + 4 + length
    return whole if len(buffer) >= whole else 0


class BurningProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1: each whole request burns ``units`` and gets a nonce reply."""

    def __init__(self, units: int) -> None:
        self._units = units
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while True:
            try:
                length = split_request(self._buffer)
            except RequestError:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()
                return
            if not length:
                return
            del self._buffer[:length]
            burn(self._units)
            self._count += 1
            body = json.dumps({"nonce": f"{os.getpid():x}-{self._count:x}"}).encode()
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                  b"content-length: %d\r\n\r\n%s" % (len(body), body))


def serve(port: int, units: int) -> None:
    """One server process: its own SO_REUSEPORT socket on ``port``, served until killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)

    async def forever() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: BurningProtocol(units), sock=sock)
        await asyncio.Event().wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(forever())
    else:
        uvloop.run(forever())


def wait_until_answering(port: int, deadline_seconds: float = 30.0) -> None:
    client = broker_load.LeanClient(f"http://127.0.0.1:{port}", "", {"challenge": b""})
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            sock = client.connect()
            sock.setblocking(True)
            sock.settimeout(2)
            sock.sendall(client.requests["challenge"])
            while (reply := client.reader.feed(sock.recv(65536))) is None:
                pass
            broker_load.check_reply("challenge", reply, "")
            client.close()
            return
        except (OSError, broker_load.LeanHttpError):
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def client_process(port: int, count: int, first: int, clients: int, rate: float,
                   seconds: float, start_at: float,
                   results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """``count`` lean clients of one process, open loop, in the shared schedule."""
    lean = [broker_load.LeanClient(f"http://127.0.0.1:{port}", "", {"challenge": b""})
            for _ in range(count)]
    for client in lean:
        client.connect()
    cpu_before = time.process_time()
    start = time.perf_counter() + (start_at - time.time())
    outcome = broker_load.run_lean(lean, "challenge", start, seconds,
                                   interval=clients / rate,
                                   offsets=[(first + index) / rate for index in range(count)])
    for client in lean:
        client.close()
    results.put(tuple(outcome._replace(cpu_seconds=time.process_time() - cpu_before)))


def run_phase(cpu_us: float, rate: float, args: argparse.Namespace) -> dict[str, object]:
    context = multiprocessing.get_context("spawn")
    units = calibrate(cpu_us)
    port = broker_load.free_port()
    servers = [context.Process(target=serve, args=(port, units), daemon=True)
               for _ in range(args.workers)]
    for server in servers:
        server.start()
    try:
        wait_until_answering(port)
        results = context.Queue()
        shares = broker_load.shares(args.clients, args.processes)
        start_at = time.time() + 1.0 + 0.3 * args.processes
        children = [context.Process(target=client_process, args=(
            port, share, sum(shares[:index]), args.clients, rate, args.seconds, start_at,
            results), daemon=True) for index, share in enumerate(shares) if share]
        for child in children:
            child.start()
        cpu_before = sum(broker_load.cpu_seconds(server.pid) for server in servers)
        collected = [broker_load.ThreadResults(*results.get(
            timeout=args.seconds + broker_load.DRAIN_SECONDS + 120)) for _ in children]
        server_cpu = sum(broker_load.cpu_seconds(server.pid) for server in servers) - cpu_before
        for child in children:
            child.join(timeout=30)
    finally:
        for server in servers:
            server.kill()
            server.join(timeout=10)
    latencies = sorted(value for part in collected for value in part.latencies)
    if not latencies:
        raise broker_load.BenchmarkCheckError(f"{cpu_us:g} us: no call completed")
    percentile = broker_load.percentile
    return {
        "cpu_us_per_call": cpu_us, "burn_units": units, "offered_per_second": rate,
        "scheduled": sum(part.scheduled for part in collected),
        "calls": len(latencies), "calls_per_second": len(latencies) / args.seconds,
        "failures": sum(part.failures for part in collected),
        "late": sum(part.late for part in collected),
        "dropped": sum(part.dropped for part in collected),
        "p50_ms": percentile(latencies, 0.50) * 1e3, "p95_ms": percentile(latencies, 0.95) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3, "max_ms": latencies[-1] * 1e3,
        "server_cpu_ms_per_call": 1e3 * server_cpu / len(latencies),
        "client_cpu_percent": 100 * sum(part.cpu_seconds for part in collected) / args.seconds,
    }


def print_report(numbers: dict[str, object]) -> None:
    print(f"{'burn us/call':>12}{'offered/s':>10}{'calls/s':>9}{'p50 ms':>8}{'p95 ms':>8}"
          f"{'p99 ms':>8}{'max ms':>8}{'failed':>7}{'late':>6}{'dropped':>8}"
          f"{'server CPU ms/call':>19}")
    for row in numbers["rows"]:
        print(f"{row['cpu_us_per_call']:>12g}{row['offered_per_second']:>10,.0f}"
              f"{row['calls_per_second']:>9,.0f}{row['p50_ms']:>8.1f}{row['p95_ms']:>8.1f}"
              f"{row['p99_ms']:>8.1f}{row['max_ms']:>8.1f}{row['failures']:>7}"
              f"{row['late']:>6}{row['dropped']:>8}{row['server_cpu_ms_per_call']:>19.2f}")
    settings = numbers["settings"]
    print(f"{settings['workers']} server processes (SO_REUSEPORT); {settings['clients']} lean "
          f"clients over {settings['processes']} processes, open loop, "
          f"{settings['seconds']:g} s per row; {numbers['environment']['cpu_count']} CPUs")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-us", type=float, nargs="+", default=[0, 300, 600, 900],
                        help="CPU microseconds each call burns, one row each "
                             "(default 0 300 600 900)")
    parser.add_argument("--rate", type=float, nargs="+", default=[1000.0],
                        help="calls/s offered by all clients, one row each (default 1000)")
    parser.add_argument("--clients", type=int, default=64, help="clients (default 64)")
    parser.add_argument("--processes", type=int, default=4,
                        help="client processes (default 4)")
    parser.add_argument("--workers", type=int, default=2,
                        help="server processes (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="timed seconds per row (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if min(args.clients, args.processes, args.workers) < 1 or args.seconds <= 0:
        parser.error("--clients, --processes and --workers must be at least 1, "
                     "--seconds positive")
    if min(args.rate) <= 0 or min(args.cpu_us) < 0 or max(args.cpu_us) > 1e6:
        parser.error("--rate must be positive and --cpu-us within 0..1000000")
    if -(-args.clients // args.processes) > broker_load.MAX_LEAN_CLIENTS:
        parser.error(f"at most {broker_load.MAX_LEAN_CLIENTS} clients per process")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        rows = [run_phase(cpu_us, rate, args) for cpu_us in args.cpu_us for rate in args.rate]
    except (broker_load.BenchmarkCheckError, OSError) as error:
        print(f"reference server: error: {error}", file=sys.stderr)
        return 1
    numbers: dict[str, object] = {
        "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "settings": {"clients": args.clients, "processes": args.processes,
                     "workers": args.workers, "seconds": args.seconds},
        "rows": rows,
    }
    print_report(numbers)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
