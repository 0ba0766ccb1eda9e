"""The pool server pushes back (429 + Retry-After) at its concurrency limit, refuses bodies
over its bound (413) and requests for another spec (409); a forged or cut response is refused
by the client; the router backs off and moves a busy batch to the next endpoint."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from dataclasses import replace

import pytest

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.output_names import output_file_name, output_name_id
from enclave_workers.pool.channel import ChannelKeys, seal_request_secret
from enclave_workers.pool.server import PoolServer
from enclave_workers.pool.wire import (
    PoolResponse,
    WireError,
    encode_request,
    encode_response,
    read_request,
    read_response,
)
from enclave_workers.pool.worker import (
    PoolRequestError,
    PoolSettings,
    PoolWorker,
    build_pool_worker,
)
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pool.conftest import serving_pool
from tests.pool.test_attested_channel import _batch, _endpoint
from transforms.pool_client import (
    PoolBusyError,
    PoolEndpoint,
    PoolRejectedError,
    _named_and_signed,
)
from transforms.pool_trust import PoolTrust
from transforms.remote import PoolRouter


@pytest.fixture(scope="module")
def worker(broker: BrokerEnv) -> PoolWorker:
    built = build_pool_worker(PoolSettings(broker.url, "simulated-sev-snp",
                                           str(broker.dev_tee_dir), default_feature_spec(),
                                           "sealed-arrow"))
    built.start()
    return built


@pytest.fixture
def server(worker: PoolWorker) -> Iterator[PoolServer]:
    with serving_pool(worker, max_inflight=1, max_request_bytes=200_000) as running:
        yield running


def test_a_busy_worker_answers_429_with_retry_after_and_the_router_moves_on(
        broker: BrokerEnv, server: PoolServer, worker: PoolWorker) -> None:
    endpoint = _endpoint(server.url, broker, worker.spec_fingerprint)
    endpoint.attest()
    # Take the one slot (once the attest handler, which answers before it lets go, has).
    assert server.slots.acquire(timeout=10)
    try:
        with pytest.raises(PoolBusyError) as busy:
            endpoint.process(_batch(broker), batch_id=b"\x01" * 16)
        assert busy.value.retry_after_s == 1
        assert server.counts["refused_busy"] == 1 and server.counts["batches"] == 0
        waits: list[float] = []
        router = PoolRouter([endpoint], max_attempts=3, sleep=waits.append)
        with pytest.raises(Exception, match="after 3 attempts"):
            router.process(_batch(broker), batch_id=b"\x01" * 16)
        assert len(waits) == 3 and all(0.5 <= w <= 2.0 for w in waits)   # Retry-After, capped
    finally:
        server.slots.release()
    assert endpoint.process(_batch(broker), batch_id=b"\x01" * 16).outputs


def test_a_body_over_the_bound_is_refused_before_it_is_read(
        broker: BrokerEnv, server: PoolServer, worker: PoolWorker) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.request("POST", "/v1/pool/process", body=b"",
                       headers={"Content-Length": "300000"})
    assert connection.getresponse().status == 413
    connection.close()


def test_a_request_for_another_spec_is_refused(broker: BrokerEnv, server: PoolServer,
                                               worker: PoolWorker) -> None:
    endpoint = _endpoint(server.url, broker, "0" * 64)
    with pytest.raises(PoolRejectedError, match="runs spec"):
        endpoint.process(_batch(broker), batch_id=b"\x01" * 16)
    assert server.counts["batches"] == 0


def test_frames_do_not_open_when_cut_reordered_or_forged(broker: BrokerEnv,
                                                         worker: PoolWorker) -> None:
    channel = ChannelKeys()
    sealed, keys = seal_request_secret(channel.public_bytes())
    _, chunks = encode_request(sealed, keys, spec_fingerprint="f", output_format="sealed-arrow",
                               envelopes=[b"one", b"two"])
    body = b"".join(chunks)
    opened = read_request(_reader(body), channel)
    assert opened.envelopes == [b"one", b"two"]
    with pytest.raises(WireError):
        read_request(_reader(body[:-5]), channel)
    with pytest.raises(Exception, match="authentication"):
        read_request(_reader(body), ChannelKeys())        # not sealed to this worker
    result = worker.process(opened.__class__(opened.keys, worker.spec_fingerprint,
                                             "sealed-arrow", _batch(broker, 3), b"\x01" * 16))
    frames = list(encode_response(opened.keys, result.outputs, result.dead_letters))
    assert read_response(_reader(b"".join(frames)), keys).outputs
    whole = b"".join(frames)
    # The last byte changed (a flipped bit: setting it to 0 left it as it was 1 time in 256).
    for broken in (b"".join(frames[:-1]), b"".join(reversed(frames)),
                   whole[:-1] + bytes([whole[-1] ^ 1])):
        with pytest.raises(WireError):
            read_response(_reader(broken), keys)
    _, other_keys = seal_request_secret(channel.public_bytes())
    with pytest.raises(WireError, match="authentication"):
        read_response(_reader(b"".join(frames)), other_keys)


def test_the_worker_names_and_signs_each_output_and_the_client_checks_both(
        broker: BrokerEnv, worker: PoolWorker) -> None:
    channel = ChannelKeys()
    sealed, keys = seal_request_secret(channel.public_bytes())
    _, chunks = encode_request(sealed, keys, spec_fingerprint=worker.spec_fingerprint,
                               output_format="sealed-arrow", envelopes=_batch(broker, 3))
    unnamed = read_request(_reader(b"".join(chunks)), channel)
    with pytest.raises(PoolRequestError, match="batch id"):
        worker.process(unnamed)         # no batch id: nothing to name or sign the outputs by
    batch_id = b"\x07" * 16
    result = worker.process(replace(unnamed, batch_id=batch_id, window="w"))
    assert result.outputs
    for output in result.outputs:
        assert output.output_id == output_name_id(batch_id, output)
        statement = json.loads(base64.b64decode(json.loads(output.statement)["payload"]))
        assert statement["subject"][0]["name"] == output_file_name(output, "w")
    assert _named_and_signed(PoolResponse(result.outputs, []), batch_id).outputs
    for forged in (replace(result.outputs[0], output_id=b"\x00" * 16),
                   replace(result.outputs[0], statement=b"")):
        with pytest.raises(WireError):
            _named_and_signed(PoolResponse([forged], []), batch_id)
    with pytest.raises(WireError, match="not named by its batch"):
        _named_and_signed(PoolResponse(result.outputs, []), b"\x08" * 16)


def _reader(data: bytes):
    position = 0

    def read(count: int) -> bytes:
        nonlocal position
        chunk = data[position:position + count]
        position += len(chunk)
        return chunk

    return read


def test_endpoints_come_from_the_list_or_a_discovery_file(tmp_path) -> None:
    from transforms.errors import TransformConfigError
    from transforms.remote import endpoint_order, load_endpoints

    as_json = tmp_path / "pool.json"
    as_json.write_text('{"endpoints": ["http://b:1/", "http://a:1"]}')
    as_lines = tmp_path / "pool.txt"
    as_lines.write_text("# pool\nhttp://a:1\n\nhttp://b:1\n")
    assert load_endpoints(None, str(as_json)) == ["http://a:1", "http://b:1"]
    assert load_endpoints(None, str(as_lines)) == ["http://a:1", "http://b:1"]
    assert load_endpoints(["http://c:1"], str(as_json)) == ["http://c:1"]
    with pytest.raises(TransformConfigError, match="needs pool endpoints"):
        load_endpoints([], None)
    urls = [f"http://pool-{i}:8700" for i in range(5)]
    order = endpoint_order("key-1", urls)
    assert sorted(order) == sorted(urls) and order == endpoint_order("key-1", urls[::-1])
    survivors = [u for u in urls if u != order[0]]   # a lost worker moves only its own keys
    assert endpoint_order("key-1", survivors) == order[1:]


def test_parquet_pme_outputs_come_back_from_the_pool(broker: BrokerEnv) -> None:
    pme = build_pool_worker(PoolSettings(broker.url, "simulated-sev-snp",
                                         str(broker.dev_tee_dir), default_feature_spec(),
                                         "parquet-pme"))
    pme.start()
    with serving_pool(pme) as server:
        trust = PoolTrust.from_file(str(broker.settings.policy_path), str(broker.dev_tee_dir))
        endpoint = PoolEndpoint(server.url, trust.verifier(),
                                spec_fingerprint=pme.spec_fingerprint,
                                output_format="parquet-pme", timeout_s=10)
        outputs = endpoint.process(_batch(broker, 6), batch_id=b"\x01" * 16).outputs
        assert [(o.output_format, o.payload[:4], o.row_count) for o in outputs] == [
            ("parquet-pme", b"PARE", 6)]


def test_concurrent_batches_share_the_worker_within_its_limit(broker: BrokerEnv,
                                                              worker: PoolWorker) -> None:
    import functools
    from concurrent.futures import ThreadPoolExecutor

    with serving_pool(worker, max_inflight=2) as server:
        endpoint = _endpoint(server.url, broker, worker.spec_fingerprint)
        router = PoolRouter([endpoint], max_attempts=50, max_backoff_s=0.05)
        batches = [_batch(broker, 10) for _ in range(6)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(pool.map(functools.partial(router.process, batch_id=b"\x01" * 16),
                                      batches))
        assert [sum(o.source_count for o in r.outputs) for r in responses] == [10] * 6
        assert server.counts["batches"] == 6 and server.counts["envelopes"] == 60
