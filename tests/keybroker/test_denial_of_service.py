"""No cheap denial: challenge floods, rate limits, slow clients, aggregated and truncated denials.

Every broker here is real, on loopback. Callers with different addresses are played by
binding the client socket to another loopback address (127.0.0.2, 127.0.0.3, ...), so the
broker's per-address limits see them as different sources.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from envelope.transport import TeeKeyPair
from keybroker.client import BrokerClient
from keybroker.ledger_denials import SUMMARY_EVENT
from keybroker.service.server import RunningBroker
from keybroker.service_limits import ServiceLimits
from tests.support.broker import attest_simulated_worker, ledger_entries, start_broker


def _from(address: str, **options: object) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (a loopback alias)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), **options)


def _bogus_attest(nonce: str = "A" * 64) -> dict[str, str]:
    return {
        "nonce": nonce,
        "tee": "sev-snp",
        "evidence": "AAAA",
        "tee_public_key": base64.b64encode(TeeKeyPair.generate().public_bytes()).decode(),
    }


@pytest.fixture
def open_broker(tmp_path: Path) -> Iterator[RunningBroker]:
    """Rate limits far out of the way, few nonces remembered: the flood hits the challenges."""
    limits = ServiceLimits(rate_per_second=1_000_000, rate_burst=1_000_000)
    with start_broker(
        tmp_path / "state", settings_changes={"limits": limits, "max_pending_nonces": 100}
    ) as broker:
        yield broker


def _pipelined_challenges(url: str, address: str, count: int) -> int:
    """Send ``count`` challenge requests at once on one connection; count the 200s."""
    host, port = url.removeprefix("http://").split(":")
    request = b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    answers = b""
    with socket.create_connection((host, int(port)), timeout=60, source_address=(address, 0)) as s:
        s.sendall(request * count)
        while answers.count(b"HTTP/1.1 200") < count:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            answers += chunk
    return answers.count(b"HTTP/1.1 200")


def test_challenge_flood_does_not_block_a_worker(open_broker: RunningBroker) -> None:
    """10 000 challenges, 100 times the nonces this broker remembers, from four callers at once.

    (The broker used to keep every outstanding nonce, so a flood of ``max_pending_nonces``
    challenges locked workers out; test_sessions.py issues 20 000 without a byte kept.)
    """
    issued: list[int] = []
    threads = [
        threading.Thread(
            target=lambda n=n: issued.append(
                _pipelined_challenges(open_broker.url, f"127.0.0.{n}", 2_500)
            )
        )
        for n in range(2, 6)
    ]
    for thread in threads:
        thread.start()
    with BrokerClient(open_broker.url) as worker:
        _keys, session = attest_simulated_worker(worker, open_broker.settings)  # during the flood
        assert session.id
    for thread in threads:
        thread.join()
    assert sum(issued) == 10_000
    with BrokerClient(open_broker.url) as worker:  # and after it
        _keys, session = attest_simulated_worker(worker, open_broker.settings)
        assert worker.release_named(session, "pseudonym/acme")


def test_rate_limit_refuses_a_flooder_with_429_not_a_worker(tmp_path: Path) -> None:
    limits = ServiceLimits(rate_per_second=1.0, rate_burst=5)
    with start_broker(tmp_path / "state", settings_changes={"limits": limits}) as broker:
        with _from("127.0.0.2", base_url=broker.url) as flooder:
            statuses = [flooder.post("/v1/challenge").status_code for _ in range(12)]
            assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
            refused = flooder.post("/v1/attest", json=_bogus_attest())
            assert refused.status_code == 429
            assert refused.json()["error"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 2
            unknown_path = flooder.get("/wp-admin")  # unknown paths share the bucket
            assert unknown_path.status_code == 429
            assert flooder.get("/v1/health").status_code == 200  # not limited
        with BrokerClient(broker.url) as worker:  # another address, its own bucket
            _keys, session = attest_simulated_worker(worker, broker.settings)
            assert worker.release_named(session, "pseudonym/acme")
        time.sleep(1.1)
        with _from("127.0.0.2", base_url=broker.url) as flooder:
            assert flooder.post("/v1/challenge").status_code == 200  # refilled


class _MovableClock:
    """Real time plus an offset: the test ends the aggregation interval when it chooses."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_anonymous_denials_are_aggregated_per_source(tmp_path: Path) -> None:
    limits = ServiceLimits(denial_interval_seconds=60, denials_in_full=3)
    clock = _MovableClock()
    with start_broker(
        tmp_path / "state", settings_changes={"limits": limits}, clock=clock
    ) as broker:
        with _from("127.0.0.3", base_url=broker.url) as prober:
            for _ in range(40):
                assert prober.post("/v1/attest", json=_bogus_attest()).status_code == 401
            for _ in range(10):
                bad_session = {"session_id": "stolen?", "name": "pseudonym/acme"}
                response = prober.post("/v1/keys/release-named", json=bad_session)
                assert response.status_code == 401
        assert not ledger_entries(broker.settings, SUMMARY_EVENT)  # still counting
        clock.offset += 61
        deadline = time.monotonic() + 10
        while not ledger_entries(broker.settings, SUMMARY_EVENT):
            assert time.monotonic() < deadline, "no summary row was written"
            time.sleep(0.1)
        entries = ledger_entries(broker.settings)
    in_full = [
        entry
        for entry in entries
        if entry.event in ("attest", "release-named") and entry.decision == "denied"
    ]
    assert len(in_full) == 3
    assert all(entry.details["source"] == "127.0.0.3" for entry in in_full)
    assert in_full[0].details["error"] == "bad_nonce"
    (summary,) = [entry for entry in entries if entry.event == SUMMARY_EVENT]
    assert summary.decision == "denied"
    assert summary.details["source"] == "127.0.0.3"
    assert summary.details["count"] == 47
    assert summary.details["by_event"] == {"attest": 37, "release-named": 10}
    assert summary.details["by_error"] == {"bad_nonce": 37, "bad_session": 10}
    assert len(entries) < 10  # 50 denials, a handful of rows


def test_over_long_denial_is_recorded_truncated(tmp_path: Path) -> None:
    with start_broker(tmp_path / "state") as broker:
        emoji = "\U0001f600"
        body = {
            "session_id": "stolen?",
            "kek_uri": emoji * 1024,
            "kek_version": "1",
            "region": emoji * 64,
            "producer_id": emoji * 256,
            "wrapped_dek": "AAAA",
        }
        response = httpx.post(f"{broker.url}/v1/keys/release", json=body)
        assert response.status_code == 401
        (entry,) = [e for e in ledger_entries(broker.settings, "release")]
    cap = broker.settings.limits.anonymous_denial_bytes
    assert entry.decision == "denied" and entry.details["truncated"] is True
    assert entry.details["original_bytes"] > cap
    assert entry.details["error"] == "bad_session"
    assert entry.details["kek"].startswith(emoji) and len(entry.details["kek"]) < 1024


def test_framework_errors_use_the_error_shape(running_broker: RunningBroker) -> None:  # noqa: F811
    url = running_broker.url
    cases = {
        "unknown path": httpx.get(f"{url}/v2/nothing"),
        "wrong method": httpx.get(f"{url}/v1/attest"),
        "validation": httpx.post(f"{url}/v1/attest", json={"nonce": 7}),
        "not json": httpx.post(
            f"{url}/v1/attest", content=b"{{", headers={"content-type": "application/json"}
        ),
        "too large": httpx.post(
            f"{url}/v1/attest", content=b"[" * (2 << 20), headers={"content-type": "a/b"}
        ),
        "deep json": httpx.post(
            f"{url}/v1/attest",
            content=b'{"nonce": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            headers={"content-type": "application/json"},
        ),
    }
    expected = {
        "unknown path": (404, "not_found"),
        "wrong method": (405, "method_not_allowed"),
        "validation": (422, "invalid_request"),
        "not json": (422, "invalid_request"),
        "too large": (413, "request_too_large"),
        "deep json": (400, "invalid_request"),
    }
    for name, response in cases.items():
        body = response.json()
        assert (response.status_code, body.get("error")) == expected[name], name
        assert set(body) == {"error", "reason"}, name
    assert "POST" in cases["wrong method"].headers["allow"]


def test_slow_headers_and_bodies_are_cut_off(tmp_path: Path) -> None:
    limits = ServiceLimits(header_timeout_seconds=0.5, body_timeout_seconds=0.5)
    with start_broker(tmp_path / "state", settings_changes={"limits": limits}) as broker:
        host, port = broker.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as slow:
            slow.sendall(b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\n")
            for _ in range(5):  # a byte now and then would keep a plain uvicorn waiting
                time.sleep(0.2)
                try:
                    slow.sendall(b"X")
                except OSError:
                    break
            assert slow.recv(1024) == b""  # closed by the broker, nothing answered
        with socket.create_connection((host, int(port)), timeout=5) as slow:
            slow.sendall(
                b"POST /v1/attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            answer = b""
            while chunk := slow.recv(4096):  # headers and body may come in separate segments
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408")
            assert b'"error": "request_timeout"' in answer
        with BrokerClient(broker.url) as worker:
            assert len(worker.challenge()) > 0


def test_request_headers_over_the_bound_are_refused_in_one_piece_or_trickled(
    tmp_path: Path,
) -> None:
    """The header cap holds with the httptools parser too (uvicorn bounds only h11's)."""
    limits = ServiceLimits(max_header_bytes=4096)
    with start_broker(tmp_path / "state", settings_changes={"limits": limits}) as broker:
        host, port = broker.url.removeprefix("http://").split(":")
        head = b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\n"
        for pieces in (1, 40):
            with socket.create_connection((host, int(port)), timeout=10) as big:
                big.sendall(head)
                filler = b"X-Filler: " + b"a" * 20_000 + b"\r\n"
                step = len(filler) // pieces + 1
                try:
                    for start in range(0, len(filler), step):
                        big.sendall(filler[start:start + step])
                        if pieces > 1:
                            time.sleep(0.01)
                    big.sendall(b"Content-Length: 0\r\n\r\n")
                except OSError:
                    pass  # closed by the broker while sending: what is asserted below
                answer = b""
                try:
                    while chunk := big.recv(4096):
                        answer += chunk
                except ConnectionResetError:
                    pass
            assert answer.startswith(b"HTTP/1.1 400") or answer == b"", answer[:100]
            assert b"HTTP/1.1 200" not in answer
        with socket.create_connection((host, int(port)), timeout=10) as fine:
            # Pipelined requests well under the cap each are answered, however they arrive.
            request = head + b"X-Filler: " + b"b" * 1000 + b"\r\nContent-Length: 0\r\n\r\n"
            fine.sendall(request * 20)
            answers = b""
            while answers.count(b"HTTP/1.1 200") < 20:
                chunk = fine.recv(65536)
                assert chunk, answers[-200:]
                answers += chunk


def test_limits_from_settings_are_validated() -> None:
    assert ServiceLimits.from_mapping({"rate_burst": 7}).rate_burst == 7
    with pytest.raises(ValueError, match=r"limits\.rate_burst"):
        ServiceLimits.from_mapping({"rate_burst": 0})
    with pytest.raises(ValueError, match="unknown field"):
        ServiceLimits.from_mapping({"rate": 1})


from tests.support.broker import running_broker  # noqa: E402, F401  (a fixture)
