"""Remote mode checks the routing facts as in-process does (pool workers: processes,
simulated SEV-SNP).

The Beam side routes each envelope by what its header says, read without a key; those facts
travel with the envelope to the pool worker (``ROUTED_ENVELOPE`` frames), whose
``BatchProcessor`` parses every header itself: an envelope routed by facts its header does
not state is a dead letter at stage ``route``, still sealed, with its reason, never in an
output, and the batch's other envelopes are processed (mirrors
``tests/transforms/test_confidential.py``). A forged region no longer makes the pool refuse
the whole batch of the region it was routed to (its destination is that region's). Stream
pieces (``SBRX``) travel the same way, each standing for its records.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from enclave_workers.batch_processor import STAGE_ROUTE, default_feature_spec
from enclave_workers.records import INPUT_SCHEMA_FINGERPRINT
from envelope import extract_stream_piece, read_record_stream, seal_record_stream
from tests.enclave_workers.broker_env import BrokerEnv, person, seal_json
from tests.pool.conftest import PoolProcess, start_pool_worker
from transforms.parse import read_sealed
from transforms.pool_client import PoolEndpoint, PoolUnavailableError
from transforms.pool_trust import PoolTrust
from transforms.remote import ConfidentialProcessRemote
from transforms.sealed import SealedEnvelope


def _trust(broker: BrokerEnv) -> PoolTrust:
    return PoolTrust.from_file(str(broker.settings.policy_path), str(broker.dev_tee_dir))


def _read(envelopes: list[bytes]) -> list[SealedEnvelope]:
    read = [read_sealed(e) for e in envelopes]
    assert all(isinstance(r, SealedEnvelope) for r in read)
    return read   # type: ignore[return-value]


def _sealed(broker: BrokerEnv, count: int, region: str = "eu", producer: str = "acme"
            ) -> list[bytes]:
    data_key, wrapped = broker.wrap_new_key(region, producer)
    return [seal_json({**person(i, region), "amount": 20.0}, data_key, wrapped, region,
                      producer) for i in range(count)]


def _destinations(root: Path) -> dict[str, dict[str, object]]:
    return {region: {"sink": f"file://{root}/{region}-out", "location": "local",
                     "verified": True} for region in ("eu", "us")}


@pytest.mark.parametrize("forged_field", ["region", "producer_id"])
def test_an_envelope_routed_by_facts_its_header_does_not_state_is_a_route_dead_letter(
        broker: BrokerEnv, pool_pair: list[PoolProcess], tmp_path: Path,
        forged_field: str) -> None:
    """As in-process: the forged envelope is a ``route`` dead letter, still sealed, the
    others one output; with each region's destination, the forged one's batch (routed to
    ``us``, bound for us) is processed, not refused."""
    good = _read(_sealed(broker, 12))
    forged = dataclasses.replace(good[0], **{forged_field: {"region": "us",
                                                             "producer_id": "globex"}[
                                                                 forged_field]})
    transform = ConfidentialProcessRemote(
        trust=_trust(broker), spec=default_feature_spec(),
        endpoints=[w.url for w in pool_pair], max_batch_size=64, key_shards=1,
        destinations=_destinations(tmp_path))
    pipeline = beam.Pipeline(runner=FnApiRunner())
    processed = pipeline | beam.Create([forged, *good[1:]]) | transform
    outputs = processed[ConfidentialProcessRemote.SEALED] | beam.Map(
        lambda o: (o.region, o.producer_id, o.source_count, bool(o.statement)))
    assert_that(outputs, equal_to([("eu", "acme", 11, True)]), label="outputs")
    dead = processed[ConfidentialProcessRemote.DEAD_LETTER] | beam.Map(
        lambda d: (d.stage, d.record_id, d.sealed, d.records, "header" in d.reason))
    assert_that(dead, equal_to([(STAGE_ROUTE, forged.envelope_id.hex(), forged.data, 1,
                                 True)]), label="dead")
    pipeline.run().wait_until_finish()


def _endpoint(broker: BrokerEnv, pool: PoolProcess) -> PoolEndpoint:
    return PoolEndpoint(pool.url, _trust(broker).verifier(),
                        spec_fingerprint=pool.spec_fingerprint, output_format="sealed-arrow",
                        timeout_s=30)


def _json_line(index: int) -> bytes:
    return json.dumps({**person(index, "eu"), "amount": 20.0}).encode()


def _route(envelope: SealedEnvelope) -> tuple[str, str, str]:
    return envelope.key_id, envelope.region, envelope.producer_id


def test_stream_pieces_carry_their_streams_routes_to_the_pool(
        broker: BrokerEnv, pool_pair: list[PoolProcess]) -> None:
    """Two pieces of one stream and a whole stream: each piece is routed by its stream's
    header. A piece routed by another producer is a ``route`` dead letter standing for its
    records, still sealed; the rest reconciles in records."""
    records = [_json_line(i) for i in range(10)]
    data_key, wrapped = broker.wrap_new_key("eu", "acme")
    stream = seal_record_stream(records, data_key=data_key, wrapped_key=wrapped, region="eu",
                                producer_id="acme",
                                schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                                context={"sealbeam.kind": "partner-records"})
    layout = read_record_stream(stream)
    pieces = [extract_stream_piece(stream, range(0, 4), layout=layout),
              extract_stream_piece(stream, range(4, 10), layout=layout)]
    other_key, other_wrapped = broker.wrap_new_key("eu", "acme")
    whole = seal_record_stream(records[:5], data_key=other_key, wrapped_key=other_wrapped,
                               region="eu", producer_id="acme",
                               schema_fingerprint=INPUT_SCHEMA_FINGERPRINT,
                               context={"sealbeam.kind": "partner-records"})
    read = _read([stream, whole])
    batch = [*pieces, whole]
    routes = [_route(read[0]), _route(read[0]), _route(read[1])]
    endpoint = _endpoint(broker, pool_pair[0])
    agreed = endpoint.process(batch, batch_id=b"\x07" * 16, routes=routes)
    assert agreed.dead_letters == []
    assert sum(o.source_count for o in agreed.outputs) == 15

    forged = [routes[0], (routes[1][0], "eu", "globex"), routes[2]]
    response = endpoint.process(batch, batch_id=b"\x08" * 16, routes=forged)
    [dead] = response.dead_letters
    assert (dead.stage, dead.sealed, dead.records) == (STAGE_ROUTE, pieces[1], 6)
    assert dead.record_id == f"{layout.header.envelope_id.hex()}#4-9"
    assert "header" in dead.reason
    assert sum(o.source_count for o in response.outputs) == 4 + 5
    assert sum(o.source_count for o in response.outputs) + dead.records == 15


def test_routes_the_batch_was_not_sent_with_change_nothing_for_an_older_client(
        broker: BrokerEnv, pool_pair: list[PoolProcess]) -> None:
    """A request without routes (an older client) is processed as before: no route check,
    the header's own facts decide."""
    batch = _sealed(broker, 4)
    response = _endpoint(broker, pool_pair[1]).process(batch, batch_id=b"\x09" * 16)
    assert response.dead_letters == []
    assert [(o.region, o.source_count) for o in response.outputs] == [("eu", 4)]


def test_the_destination_is_checked_against_the_routed_regions(
        broker: BrokerEnv, pool_pair: list[PoolProcess], tmp_path: Path) -> None:
    """With routes, a destination of another region than the batch was routed by is refused
    (400) before any key is generated; the headers are the route check's business."""
    batch = _sealed(broker, 3)
    routes = [_route(e) for e in _read(batch)]
    with pytest.raises(PoolUnavailableError, match="process answered 400 the destination is "
                       "of region 'us', but the batch was routed by region 'eu'"):
        _endpoint(broker, pool_pair[0]).process(
            batch, batch_id=b"\x0a" * 16, routes=routes,
            destination=_destinations(tmp_path)["us"] | {"region": "us"})


def test_a_pool_started_with_require_routes_refuses_a_batch_without_them(
        broker: BrokerEnv) -> None:
    """``--require_routes``: a batch sent without routing facts (an older client) is refused
    (400), so the route check cannot be skipped; with them it is processed."""
    pool = start_pool_worker(broker, "--require_routes")
    try:
        endpoint = _endpoint(broker, pool)
        batch = _sealed(broker, 3)
        with pytest.raises(PoolUnavailableError, match=r"process answered 400 this pool "
                           r"worker requires each envelope's routing facts "
                           r"\(--require_routes\)"):
            endpoint.process(batch, batch_id=b"\x0b" * 16)
        response = endpoint.process(batch, batch_id=b"\x0c" * 16,
                                    routes=[_route(e) for e in _read(batch)])
        assert response.dead_letters == []
        assert [(o.region, o.source_count) for o in response.outputs] == [("eu", 3)]
    finally:
        pool.kill()
