"""The TEE never processes a v1 record under routing facts its header does not state.

Outside the TEE, ``read_sealed`` peeks at a record's header for routing (data-key id,
region, producer); inside, ``BatchProcessor`` parses each record once and relies on none of
those facts. A record whose header bytes were changed fails authentication (or its key is
refused for the claimed region); a record routed by facts that differ from its header is a
dead letter at stage ``route``. Either way it is never in an output, and runs reconcile.
"""

from __future__ import annotations

import pytest

from enclave_workers.batch_processor import (
    STAGE_ROUTE,
    BatchProcessor,
    BatchResult,
    default_feature_spec,
)
from enclave_workers.features import CompiledSpec, compile_spec
from enclave_workers.key_session import KeySession
from envelope import read_header
from tests.enclave_workers.broker_env import BrokerEnv, person, seal_json
from transforms.parse import read_sealed
from transforms.sealed import SealedEnvelope


@pytest.fixture(scope="module")
def compiled() -> CompiledSpec:
    return compile_spec(default_feature_spec())


@pytest.fixture
def processor(broker: BrokerEnv, compiled: CompiledSpec) -> BatchProcessor:
    return BatchProcessor(KeySession(broker.client(), broker.provider()), compiled)


def _records(broker: BrokerEnv, region: str, count: int, producer: str = "acme"
             ) -> list[bytes]:
    data_key, wrapped = broker.wrap_new_key(region, producer)
    return [seal_json({**person(i, region), "amount": 20.0}, data_key, wrapped, region,
                      producer) for i in range(count)]


def _route(envelope: bytes) -> tuple[str, str, str]:
    read = read_sealed(envelope)
    assert isinstance(read, SealedEnvelope)
    return read.key_id, read.region, read.producer_id


def _with_region(envelope: bytes, old: bytes, new: bytes) -> bytes:
    """The envelope with its header's region text replaced (same length)."""
    position = envelope.index(b"\x00\x02" + old, 124)
    return envelope[:position + 2] + new + envelope[position + 2 + len(old):]


def _reconciles(inputs: int, result: BatchResult) -> bool:
    return inputs == (sum(o.source_count for o in result.outputs)
                      + sum(d.records for d in result.dead_letters))


def test_the_peek_routes_a_record_by_what_its_header_says(broker: BrokerEnv) -> None:
    [envelope] = _records(broker, "eu", 1)
    header, _ = read_header(envelope)
    read = read_sealed(envelope)
    assert isinstance(read, SealedEnvelope)
    assert (read.envelope_id, read.key_id, read.region, read.producer_id) == (
        header.envelope_id, header.wrapped_key.key_id, header.region, header.producer_id)


@pytest.mark.parametrize("with_routes", [True, False])
def test_a_record_whose_region_bytes_were_changed_is_never_processed(
        broker: BrokerEnv, processor: BatchProcessor, with_routes: bool) -> None:
    good = _records(broker, "eu", 4)
    tampered = _with_region(good[0], b"eu", b"us")
    assert _route(tampered)[1] == "us"           # the peek believes the bytes: not trusted
    inputs = [tampered, *good[1:]]
    routes = [_route(e) for e in inputs] if with_routes else None
    result = processor.process(inputs, routes)
    assert [(o.region, o.source_count) for o in result.outputs] == [("eu", 3)]
    [dead] = result.dead_letters
    assert dead.sealed == tampered and dead.records == 1
    # Refused where it claims to belong (the DEK is bound to "eu"), or failing its tag.
    assert dead.stage in ("key", "open")
    assert _reconciles(len(inputs), result)


@pytest.mark.parametrize("field", ["region", "producer", "key_id"])
def test_a_record_routed_by_facts_its_header_does_not_state_is_a_dead_letter(
        broker: BrokerEnv, processor: BatchProcessor, field: str) -> None:
    inputs = _records(broker, "eu", 3) + _records(broker, "us", 2)
    routes = [_route(e) for e in inputs]
    key_id, region, producer = routes[0]
    routes[0] = {"region": (key_id, "us", producer),
                 "producer": (key_id, region, "globex"),
                 "key_id": (routes[3][0], region, producer)}[field]
    result = processor.process(inputs, routes)
    [dead] = result.dead_letters
    assert dead.stage == STAGE_ROUTE and dead.sealed == inputs[0]
    assert "header" in dead.reason
    assert sorted((o.region, o.source_count) for o in result.outputs) == [("eu", 2), ("us", 2)]
    assert _reconciles(len(inputs), result)


def test_routes_that_agree_change_nothing(broker: BrokerEnv,
                                          processor: BatchProcessor) -> None:
    inputs = _records(broker, "eu", 3) + _records(broker, "us", 2)
    result = processor.process(inputs, [_route(e) for e in inputs])
    assert result.dead_letters == []
    assert sorted((o.region, o.source_count) for o in result.outputs) == [("eu", 3), ("us", 2)]


def test_routes_must_match_the_envelopes_one_to_one(broker: BrokerEnv,
                                                    processor: BatchProcessor) -> None:
    inputs = _records(broker, "eu", 2)
    with pytest.raises(ValueError, match="routes"):
        processor.process(inputs, [_route(inputs[0])])
