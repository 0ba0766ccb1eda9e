"""Only attested pool workers get data: a plain server answering the pool's API, replayed
evidence, and a worker whose evidence the policy refuses are all sent nothing."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from enclave_workers.features import compile_spec
from enclave_workers.key_session import KeySession
from enclave_workers.pool.channel import ChannelKeys, channel_binding
from keybroker.client import BrokerClient, BrokerDeniedError
from tests.enclave_workers.broker_env import BrokerEnv, person, seal_json
from tests.pool.conftest import PoolProcess, pool_call
from tests.pool.test_remote_mode import _health
from transforms.pool_client import PoolEndpoint
from transforms.pool_trust import PoolAttestationError, PoolTrust
from transforms.remote import PoolRouter, endpoint_order, route_key


class _PlainPool(ThreadingHTTPServer):
    """Answers the pool API with a canned attestation answer; counts what it is sent."""

    def __init__(self, answer: dict[str, object]) -> None:
        self.answer = answer
        self.process_requests = 0
        super().__init__(("127.0.0.1", 0), _PlainHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _PlainHandler(BaseHTTPRequestHandler):
    server: _PlainPool

    def log_message(self, *_args: object) -> None:
        return None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1/pool/process":
            self.server.process_requests += 1
        body = json.dumps(self.server.answer).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def plain_pool(request: pytest.FixtureRequest) -> Iterator[_PlainPool]:
    server = _PlainPool(request.param if hasattr(request, "param") else {})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _batch(broker: BrokerEnv, count: int = 5) -> list[bytes]:
    key, wrapped = broker.wrap_new_key("eu", "acme")
    return [seal_json(person(i, "eu"), key, wrapped, "eu", "acme") for i in range(count)]


def _endpoint(url: str, broker: BrokerEnv, fingerprint: str, policy: Path | None = None
              ) -> PoolEndpoint:
    trust = PoolTrust.from_file(str(policy or broker.settings.policy_path),
                                str(broker.dev_tee_dir))
    return PoolEndpoint(url, trust.verifier(), spec_fingerprint=fingerprint,
                        output_format="sealed-arrow", timeout_s=10)


def _replayed_answer(pool: PoolProcess) -> dict[str, object]:
    """A real pool worker's answer for a nonce of someone else's choosing."""
    body = json.dumps({"nonce": base64.b64encode(b"n" * 32).decode()}).encode()
    return pool_call(pool.url, "/v1/pool/attest", body)


def _self_made_answer(broker: BrokerEnv, fingerprint: str) -> dict[str, object]:
    """Well-formed evidence for a nonce the server did not get: it cannot know the client's."""
    channel = ChannelKeys()
    evidence = SimulatedSnpProvider(broker.dev_tee_dir).collect(
        channel_binding(b"x" * 32, channel.public_bytes()))
    return {"tee": evidence.tee, "evidence": base64.b64encode(evidence.evidence).decode(),
            "endorsements": {k: base64.b64encode(v).decode()
                             for k, v in evidence.endorsements.items()},
            "channel_public_key": base64.b64encode(channel.public_bytes()).decode(),
            "spec_fingerprint": fingerprint, "output_format": "sealed-arrow"}


@pytest.mark.parametrize("answer_kind", ["replayed", "self-made", "garbage"])
def test_a_plain_server_answering_the_pool_api_receives_no_batch(
        broker: BrokerEnv, pool_pair: list[PoolProcess], plain_pool: _PlainPool,
        answer_kind: str) -> None:
    fingerprint = pool_pair[0].spec_fingerprint
    plain_pool.answer = {
        "replayed": lambda: _replayed_answer(pool_pair[0]),
        "self-made": lambda: _self_made_answer(broker, fingerprint),
        "garbage": lambda: {"tee": "sev-snp", "evidence": "AAAA", "endorsements": {},
                            "channel_public_key": base64.b64encode(b"k" * 1216).decode()},
    }[answer_kind]()
    endpoint = _endpoint(plain_pool.url, broker, fingerprint)
    with pytest.raises(PoolAttestationError):
        endpoint.process(_batch(broker), batch_id=b"\x01" * 16)
    router = PoolRouter([endpoint, _endpoint(pool_pair[1].url, broker, fingerprint)],
                        sleep=lambda _s: None)
    first_choices = set()
    while plain_pool.url not in first_choices:   # until a data key routes to the plain server
        batch = _batch(broker)
        first_choices.add(endpoint_order(route_key(batch), [plain_pool.url, pool_pair[1].url])[0])
        # ... and still goes to the attested worker
        assert router.process(batch, batch_id=b"\x01" * 16).outputs
    assert plain_pool.process_requests == 0
    assert set(router.refused) == {plain_pool.url}


def test_a_pool_worker_whose_evidence_the_policy_refuses_receives_nothing(
        broker: BrokerEnv, pool_pair: list[PoolProcess], tmp_path: Path) -> None:
    document = yaml.safe_load(broker.settings.policy_path.read_text("utf-8"))
    for rule in document["rules"]:
        rule["measurements"] = ["ab" * 48]       # not the simulated worker's measurement
    strict = tmp_path / "strict-policy.yaml"
    strict.write_text(yaml.safe_dump(document), "utf-8")
    before = _health(pool_pair[0].url)
    endpoint = _endpoint(pool_pair[0].url, broker, pool_pair[0].spec_fingerprint, strict)
    router = PoolRouter([endpoint], sleep=lambda _s: None)
    with pytest.raises(PoolAttestationError, match="policy refuses"):
        router.process(_batch(broker), batch_id=b"\x01" * 16)
    after = _health(pool_pair[0].url)
    assert after["attested"] == before["attested"] + 1
    assert (after["batches"], after["envelopes"]) == (before["batches"], before["envelopes"])


def test_a_pool_worker_the_broker_refuses_does_not_start(broker: BrokerEnv) -> None:
    provider = SimulatedSnpProvider(broker.dev_tee_dir, measurement="cd" * 48)
    session = KeySession(BrokerClient(broker.url), provider)
    from enclave_workers.batch_processor import BatchProcessor
    from enclave_workers.pool.worker import PoolWorker
    worker = PoolWorker(session, provider,
                        BatchProcessor(session, compile_spec(default_feature_spec())),
                        "sealed-arrow")
    with pytest.raises(BrokerDeniedError):
        worker.start()
