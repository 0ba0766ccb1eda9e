"""Several broker processes on one state: nonces single use across them, sessions served by
any of them, one ledger chain, and ``broker serve --workers 2`` as a real server.

The brokers are real ``sealbeam broker serve`` subprocesses on free loopback ports, waited
for on /v1/health and stopped by pid (SIGTERM, their graceful shutdown).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT, SimulatedSnpProvider
from envelope.transport import TeeKeyPair, release_info, report_data_binding
from keybroker.client import (
    GENERATE_PURPOSE,
    RELEASE_PURPOSE,
    BrokerAuthError,
    BrokerClient,
    BrokerError,
)
from keybroker.config import BrokerSettings, init_state
from keybroker.ledger import AuditLedger
from tests.support.broker import attest_simulated_worker, ledger_entries, start_broker

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 120.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextmanager
def served(state: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``sealbeam broker serve --state state *extra`` until the block ends."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "broker", "serve", "--state", str(state),
         "--port", str(port), *extra],
        cwd=ROOT, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        with BrokerClient(url, timeout=2) as probe:
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"broker exited: {process.stderr.read().decode()[-2000:]}")
                try:
                    if probe.health().get("status") == "ok":
                        break
                except BrokerError:
                    pass
                assert time.monotonic() < deadline, "the broker did not start"
                time.sleep(0.1)
        yield url, process
    finally:
        _stop(process)
        assert process.stderr is not None
        process.stderr.close()


def _state(directory: Path) -> BrokerSettings:
    return init_state(directory, regions=("eu",), tenants=("acme",),
                      allowed_measurements=(DEV_MEASUREMENT,))


def _audit_verify(settings: BrokerSettings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "audit", "verify", "--ledger",
         str(settings.ledger_path)],
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=120,
    )


def test_two_broker_processes_share_nonces_sessions_and_one_ledger(tmp_path: Path) -> None:
    settings = _state(tmp_path / "state")
    assert settings.dev_chain_dir is not None
    provider = SimulatedSnpProvider(settings.dev_chain_dir)
    with ExitStack() as stack:
        first_url, first_process = stack.enter_context(served(settings.state_dir))
        second_url, second_process = stack.enter_context(served(settings.state_dir))
        first = stack.enter_context(BrokerClient(first_url))
        second = stack.enter_context(BrokerClient(second_url))

        # A nonce issued and spent through the first process is refused by the second.
        tee_keys = TeeKeyPair.generate()
        nonce = first.challenge()
        evidence = provider.collect(report_data_binding(nonce, tee_keys.public_bytes()))
        arguments = (nonce, evidence.tee, evidence.evidence, dict(evidence.endorsements),
                     tee_keys.public_bytes())
        session = first.attest(*arguments)
        with pytest.raises(BrokerAuthError, match="already used") as refused:
            second.attest(*arguments)
        assert refused.value.error == "bad_nonce"

        # The session opened by the first process serves the second, and the reverse.
        sealed, wrapped = second.generate(session, "eu", "acme")
        generated = tee_keys.open(sealed, release_info(GENERATE_PURPOSE, wrapped.key_id))
        released = tee_keys.open(first.release(session, wrapped, "eu", "acme"),
                                 release_info(RELEASE_PURPOSE, wrapped.key_id))
        assert released == generated and len(released) == 32
        _keys, other_session = attest_simulated_worker(second, settings)
        assert first.release_named(other_session, "pseudonym/acme")

        # Altered, truncated and foreign session tokens are refused by both.
        altered = session.id[:-3] + ("AAA" if session.id[-3:] != "AAA" else "BBB")
        with start_broker(tmp_path / "foreign") as foreign_broker, BrokerClient(
            foreign_broker.url
        ) as foreign:
            _k, foreign_session = attest_simulated_worker(foreign, foreign_broker.settings)
        for token in (altered, session.id[:-10], foreign_session.id, "sb1." + "A" * 200):
            for client in (first, second):
                with pytest.raises(BrokerAuthError) as bad:
                    client.release(dataclasses.replace(session, id=token), wrapped, "eu",
                                   "acme")
                assert bad.value.error == "bad_session"
        pids = {first_process.pid, second_process.pid}
    starts = ledger_entries(settings, "broker-start")
    assert {entry.details["pid"] for entry in starts} == pids
    verified = _audit_verify(settings)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ledger ok" in verified.stdout


def test_broker_serve_with_two_workers_serves_from_both(tmp_path: Path) -> None:
    settings = _state(tmp_path / "state")
    with served(settings.state_dir, "--workers", "2") as (url, parent):
        # Each client opens its own connection; the kernel spreads them over the workers.
        for _round in range(6):
            with BrokerClient(url) as attesting:
                tee_keys, session = attest_simulated_worker(attesting, settings)
            with BrokerClient(url) as generating:
                sealed, wrapped = generating.generate(session, "eu", "acme")
            with BrokerClient(url) as releasing:
                released = releasing.release(session, wrapped, "eu", "acme")
            assert tee_keys.open(released, release_info(RELEASE_PURPOSE, wrapped.key_id)) == \
                tee_keys.open(sealed, release_info(GENERATE_PURPOSE, wrapped.key_id))
        # The supervisor answers once one worker does; the other may still be importing on
        # a loaded machine. Both must start (each records its start), within a deadline.
        worker_pids = _started_worker_pids(settings, 2, deadline_s=60.0)
        assert len(worker_pids) == 2 and parent.pid not in worker_pids
    assert parent.returncode == 0
    for pid in worker_pids:  # stopped with the parent
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)
    verified = _audit_verify(settings)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _started_worker_pids(settings: BrokerSettings, count: int, deadline_s: float) -> set[object]:
    """The pids of the workers that recorded ``broker-start``, polled until ``count`` have
    or the deadline passes (then what there is, for the caller's assertion to show)."""
    deadline = time.monotonic() + deadline_s
    while True:
        pids = {entry.details["pid"] for entry in ledger_entries(settings, "broker-start")}
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def test_broker_serve_workers_refuses_a_bad_count_and_a_bad_state(tmp_path: Path) -> None:
    for count in ("0", "65", "two"):
        refused = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "broker", "serve", "--state",
             str(tmp_path), "--workers", count],
            cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=120,
        )
        assert refused.returncode == 2 and "--workers" in refused.stderr
    settings = _state(tmp_path / "state")
    settings.policy_path.write_text("rules: [", encoding="utf-8")  # not YAML: no worker starts
    failed = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "broker", "serve", "--state",
         str(settings.state_dir), "--port", str(_free_port()), "--workers", "2"],
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=300,
    )
    assert failed.returncode == 2
    assert "sealbeam: error:" in failed.stderr and "policy" in failed.stderr.lower()


def _append_many(path: str, label: str, count: int, start: object) -> None:
    with AuditLedger(Path(path)) as ledger:
        start.wait(120)  # type: ignore[attr-defined]  # both open: append at once
        for index in range(count):
            ledger.append("release", "granted", {"writer": label, "index": index})


def test_a_ledger_appended_by_two_processes_at_once_is_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    AuditLedger(path).close()
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    writers = [context.Process(target=_append_many, args=(str(path), label, 300, start))
               for label in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(300)
        assert writer.exitcode == 0
    with AuditLedger(path, read_only=True) as ledger:
        verification = ledger.verify()
        entries = list(ledger.entries())
    assert verification.ok and verification.entries == 600
    for label in ("a", "b"):  # every append of each writer, in its own order
        mine = [entry.details["index"] for entry in entries if entry.details["writer"] == label]
        assert mine == list(range(300))
    settings_like = dataclasses.make_dataclass("S", ["ledger_path"])(path)
    verified = _audit_verify(settings_like)  # type: ignore[arg-type]
    assert verified.returncode == 0 and "600 entries" in verified.stdout
