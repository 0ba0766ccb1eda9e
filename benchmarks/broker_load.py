"""Benchmark: the key broker under concurrent clients, per call, over real HTTP.

What it does: creates a demo state in a temporary directory (``init_state``: keyring, dev
SEV-SNP chain, a policy allowing the simulated worker), starts ``sealbeam broker serve`` on
it as a separate process on a free loopback port, then for each operation (``challenge``,
``attest``, ``release``, ``generate``) and each client count K (``--clients``, default 8 and
64) runs K clients for ``--seconds``: K threads spread over ``--processes`` client processes,
each thread with its own ``BrokerClient`` (one keep-alive HTTP connection), calling the one
operation back to back. The client processes start once for the whole run; every client
first attests with real simulated SEV-SNP evidence
(a fresh TEE key, a report signed by the dev VCEK) and generates a data key, untimed, and
checks that the key the broker releases is the one it generated (HPKE-opened with its TEE
key). For ``attest``, each timed call is preceded by an untimed ``challenge`` and evidence
collection, as a worker does; only the attest call is timed.

The timed calls of ``challenge``, ``release`` and ``generate`` are made, by default
(``--client lean``), by a lean client: one ``http.client`` keep-alive connection per client
posting the request body it built once, checking the status and the reply's fields (the
released key's ``key_id``, a ``sealed_dek``); before and after its timed calls each client
checks a full ``BrokerClient`` release (grant signature verified against the pinned broker
key, key HPKE-opened and compared). ``--client full`` times ``BrokerClient`` calls instead
(httpx, grant verification and HPKE open on every call: several times the client CPU).

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
import http.client
import json
import math
import multiprocessing
import os
import platform
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


# -- one client thread -------------------------------------------------------------------


class LeanClient:
    """One keep-alive HTTP connection posting request bodies built once (the timed calls).

    It checks the status and the fields that show the broker did the work (``sealed_dek``,
    the expected ``key_id``); grants and keys are checked by the full client around it.
    """

    def __init__(self, url: str, session_id: str, wrapped: object) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._connection = http.client.HTTPConnection(host, int(port), timeout=30)
        self._headers = {"content-type": "application/json"}
        self.key_id = wrapped.key_id  # type: ignore[attr-defined]
        self.bodies = {
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
        }
        self.paths = {"challenge": "/v1/challenge", "release": "/v1/keys/release",
                      "generate": "/v1/keys/generate"}

    def call(self, operation: str) -> None:
        self._connection.request("POST", self.paths[operation], self.bodies[operation],
                                 self._headers)
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise BrokerError(f"{operation}: HTTP {response.status}")
        reply = json.loads(body)
        if operation == "challenge":
            if not reply.get("nonce"):
                raise BrokerError("challenge: no nonce")
        elif not reply.get("sealed_dek") or not reply.get("grant"):
            raise BrokerError(f"{operation}: no sealed key or grant")
        elif operation == "release" and reply.get("key_id") != self.key_id:
            raise BrokerError("release: another key")

    def reconnect(self) -> None:
        """A fresh connection before a phase (the broker closes idle keep-alive ones)."""
        self._connection.close()
        self._connection.connect()

    def close(self) -> None:
        self._connection.close()


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
                           LeanClient(url, session.id, wrapped))  # type: ignore[attr-defined]
    check_release(state, generated)
    return state


def check_release(state: AttestedClient, expected: bytes | None = None) -> None:
    """A full client's release: grant verified, key opened, and (at set-up) compared."""
    released = state.tee_keys.open(
        state.client.release(state.session, state.wrapped, REGION, PRODUCER),
        release_info(RELEASE_PURPOSE, state.wrapped.key_id))  # type: ignore[attr-defined]
    if len(released) != 32 or (expected is not None and released != expected):
        raise BenchmarkCheckError("the released key is not the generated one")


def one_call(state: AttestedClient, operation: str, lean: bool = True) -> float:
    """Run ``operation`` once; the seconds the timed broker call took."""
    if operation == "attest":  # challenge and evidence first, untimed, as a worker does
        _, _, seconds = attest(state.client, state.provider)
        return seconds
    if lean:
        started = time.perf_counter()
        state.lean.call(operation)
        return time.perf_counter() - started
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
        results.put(tuple(run_threads(
            states[:phase.threads], phase.operation, start.value,  # type: ignore[attr-defined]
            phase.seconds, lean, rate=phase.rate, first=phase.first, clients=phase.clients)))
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
        except (BrokerError, OSError, http.client.HTTPException):
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
        except (BrokerError, OSError, http.client.HTTPException):
            failed += 1
            continue
        latencies.append(clock() - scheduled)  # type: ignore[operator]
    return ThreadResults(latencies, failed, scheduled=due, late=late, dropped=due - sent)


def run_threads(states: list[AttestedClient], operation: str, start_at: float,
                seconds: float, lean: bool = True, *, rate: float = 0.0, first: int = 0,
                clients: int = 1) -> ThreadResults:
    """The process's clients in threads for one phase, closed loop or (``rate``) open."""
    outcomes: list[ThreadResults] = []
    lock = threading.Lock()
    checks: list[str] = []

    def loop(index: int, state: AttestedClient) -> None:
        if lean and operation != "attest":
            state.lean.reconnect()
        if rate:
            # One clock for the schedule: the shared wall-clock start, on perf_counter.
            start = time.perf_counter() + (start_at - time.time()) + (first + index) / rate
            outcome = open_loop(lambda: one_call(state, operation, lean), start, seconds,
                                clients / rate)
        else:
            while time.time() < start_at:
                time.sleep(0.001)
            outcome = closed_loop(lambda: one_call(state, operation, lean),
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
    print(f"broker: `sealbeam broker serve --workers {environment['broker_workers']}`; "
          f"clients ({environment['client']}): threads over "
          f"{environment['processes']} processes; {environment['seconds']} s per phase; "
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
