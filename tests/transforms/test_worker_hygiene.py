"""Worker hygiene of the confidential step: the shared session is closed by the last
``teardown``, and a broker outage is ridden out with bounded backoff, losing nothing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.key_session import KeySession
from tests.enclave_workers.broker_env import BrokerEnv, person, seal_json
from tests.enclave_workers.test_key_session_concurrency import GatedBroker
from transforms import ConfidentialProcess, TeeSettings
from transforms import session as session_pool
from transforms.metrics import BROKER_RETRIES, NAMESPACE


def test_the_last_release_closes_the_shared_session(broker: BrokerEnv) -> None:
    client = GatedBroker(broker.client())
    made: list[KeySession] = []

    def factory() -> KeySession:
        made.append(KeySession(client, broker.provider(), owns_broker=True))  # type: ignore[arg-type]
        return made[-1]

    first = session_pool.acquire_session("hygiene-test", factory)
    second = session_pool.acquire_session("hygiene-test", factory)
    assert first is second and len(made) == 1
    session_pool.release_session("hygiene-test")
    assert not client.closed                                   # one holder is left
    session_pool.release_session("hygiene-test")
    assert client.closed
    assert session_pool.acquire_session("hygiene-test", factory) is not first
    session_pool.release_session("hygiene-test")


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@contextmanager
def broker_after_outage(broker_url: str, dropped_connections: int) -> Iterator[str]:
    """A loopback TCP relay to the broker that hangs up on its first connections."""
    target = urlsplit(broker_url)
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]

    def serve() -> None:
        dropped = 0
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            if dropped < dropped_connections:
                dropped += 1
                client.close()                                 # the broker is "down"
                continue
            upstream = socket.create_connection((target.hostname, target.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield f"{target.scheme}://127.0.0.1:{port}"
    finally:
        stop.set()
        server.join(5)
        listener.close()


def test_a_broker_outage_is_retried_with_backoff_and_nothing_is_lost(broker: BrokerEnv
                                                                     ) -> None:
    data_key, wrapped = broker.wrap_new_key("eu", "acme")
    envelopes = [seal_json(person(i, "eu"), data_key, wrapped, "eu", "acme") for i in range(12)]
    tee = TeeSettings("simulated-sev-snp", str(broker.dev_tee_dir))
    # The client may try a call twice itself: 4 hang-ups are at least one failed attempt.
    with broker_after_outage(broker.url, dropped_connections=4) as url:
        started = time.monotonic()
        pipeline = beam.Pipeline(runner=FnApiRunner())
        processed = (pipeline | beam.Create(envelopes)
                     | ConfidentialProcess(url, tee, default_feature_spec(), broker_retries=5))
        assert_that(processed[ConfidentialProcess.SEALED] | beam.Map(lambda o: o.source_count),
                    equal_to([12]), label="every envelope in the output")
        assert_that(processed[ConfidentialProcess.DEAD_LETTER], equal_to([]), label="no dead")
        result = pipeline.run()
        result.wait_until_finish()
    # Every DoFn instance's teardown gave the worker's session back: the pool closed it.
    assert not [tag for tag in session_pool._POOL if url in tag]
    counters = result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name(BROKER_RETRIES))["counters"]
    assert sum(c.committed for c in counters) >= 1
    assert time.monotonic() - started < 20                      # bounded: 0.5 + 1 + 2 ... s
