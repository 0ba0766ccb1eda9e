"""One pool worker: its key session with the broker, its feature spec and its channel key.

What it does: ``PoolWorker`` attests to the broker itself when it starts (``start``; a
refusal stops it: fail closed), answers a client's attestation request with fresh evidence
whose report_data binds the client's nonce and the worker's channel key
(``channel.channel_binding``), and processes an opened request with the same
``BatchProcessor`` the in-process confidential step uses, so both modes compute the same
outputs. It names each output by the request's batch id and window label
(``output_names``, as in-process) and signs its custody statement here, in the TEE, with the
statement key its attestation bound (``BatchProcessor.sign_custody``); a request without a
batch id is refused, since its outputs could not be named or vouched for. A request may
carry its batch's destination (region, sink, location, verified: what the pipeline's preflight
found); the worker refuses it unless every envelope of the batch is of that region
(``destination_refusal``), and otherwise generates the batch's output keys with it, so the
broker's ledger records where their outputs go, as in-process runs do. Output keys are
cached per destination. Started with ``require_destination``, it refuses a request that
names none; started with ``require_routes``, one sent without routes. A request may
carry, per envelope, the facts the Beam side routed it by (data-key id, region, producer:
``routes``); they go to ``BatchProcessor.process``, which dead-letters an envelope whose
authenticated header says otherwise (stage ``route``), as the in-process step does. With
routes, the destination is checked against the routed regions (an envelope whose header
names another region is then a ``route`` dead letter, not a reason to refuse the batch).
``build_pool_worker`` assembles one from settings: a ``BrokerClient`` pinned to the
broker's identity key (``broker_pin``: a grant the broker did not sign is refused) whose
``generate`` names the spec's fingerprint (recorded in the broker's ledger), the TEE's
evidence provider, the compiled spec. The worker runs only the spec it was started with: a
request for another fingerprint or output format is refused, not processed.

What it does not: no HTTP (``server``), no plaintext out: results are sealed outputs and
sealed dead letters only.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from enclave_workers.batch_processor import (
    OUTPUT_FORMATS,
    PARQUET_PME,
    BatchProcessor,
    BatchResult,
    Route,
)
from enclave_workers.evidence.base import EvidenceProvider
from enclave_workers.features import FeatureSpec, compile_spec
from enclave_workers.key_session import KeySession
from enclave_workers.output_names import output_file_name, output_name_id
from enclave_workers.spec_bound_broker import SpecBoundBrokerClient
from envelope import (
    EnvelopeError,
    WrappedKey,
    is_stream_excerpt,
    read_header,
    read_stream_piece,
)

from .broker_pin import pinned_broker_client
from .channel import ChannelKeys, channel_binding
from .tee import make_provider
from .wire import PoolRequest

__all__ = ["PoolMismatchError", "PoolRequestError", "PoolSettings", "PoolWorker",
           "build_pool_worker", "destination_refusal"]

MIN_CLIENT_NONCE = 16
MAX_CLIENT_NONCE = 64


class PoolMismatchError(Exception):
    """A request for a spec or output format this worker was not started with."""


class PoolRequestError(ValueError):
    """A client request this worker cannot take as it is (e.g. a nonce of the wrong size)."""


@dataclass(frozen=True)
class PoolSettings:
    """What a pool worker is started with (``sealbeam worker serve`` flags)."""

    broker_url: str
    tee: str
    dev_tee_dir: str | None
    spec: FeatureSpec
    output_format: str
    key_ttl_s: float = 300.0
    max_uses_per_key: int = 100_000
    max_cached_keys: int = 1024
    output_key_max_envelopes: int = 1024
    audience: str | None = None            # Confidential Space: the token audience
    launcher_socket: str | None = None     # Confidential Space: the launcher's socket
    broker_identity: str | None = None     # the broker's public identity key (PEM) to pin
    broker_ca_bundle: str | None = None    # CA bundle (PEM) of an https:// broker
    broker_pinned_cert: str | None = None  # or the broker's own TLS certificate (PEM)
    location: str | None = None            # simulated SEV-SNP: the HOST_DATA location claim
    require_destination: bool = False      # refuse a batch that names no destination
    require_routes: bool = False           # refuse a batch sent without its routing facts


class _DestinedSession:
    """The worker's key session for one request: its output keys are generated with (and
    cached per) the request's destination, so the broker's ledger names where their outputs
    go. Everything else is the shared session's."""

    def __init__(self, session: KeySession, destination: Mapping[str, object]) -> None:
        self._session = session
        self._destination = dict(destination)

    def output_key(self, region: str, producer_id: str) -> tuple[Any, WrappedKey]:
        return self._session.output_key(region, producer_id, self._destination)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def destination_refusal(destination: Mapping[str, object], envelopes: Sequence[bytes],
                        routes: Sequence[Route] | None = None) -> str | None:
    """Why a request's destination cannot be the batch's, or None.

    With ``routes``: every envelope must have been routed by the destination's region;
    ``BatchProcessor`` then dead-letters (stage ``route``) any whose header names another,
    so only envelopes of that region reach an output key. Without: every envelope whose
    header parses must be of the destination's region (others become dead letters anyway
    and need no output key)."""
    if routes is not None:
        routed = sorted({region for _, region, _ in routes} - {destination["region"]})
        if routed:
            return (f"the destination is of region {destination['region']!r}, but the batch "
                    f"was routed by region {', '.join(map(repr, routed))}")
        return None
    regions = set()
    for envelope in envelopes:
        try:
            header = (read_stream_piece(envelope).header if is_stream_excerpt(envelope)
                      else read_header(envelope)[0])     # a stream piece: its stream's
            regions.add(header.region)
        except EnvelopeError:
            continue
    others = sorted(regions - {destination["region"]})
    if others:
        return (f"the destination is of region {destination['region']!r}, but the batch "
                f"holds envelopes of region {', '.join(map(repr, others))}")
    return None


class PoolWorker:
    """Attested key session + compiled spec + channel key; thread-safe."""

    def __init__(self, session: KeySession, provider: EvidenceProvider,
                 processor: BatchProcessor, output_format: str,
                 channel: ChannelKeys | None = None, *,
                 require_destination: bool = False, require_routes: bool = False) -> None:
        self._session = session
        self._require_destination = require_destination
        self._require_routes = require_routes
        self._provider = provider
        self._processor = processor
        self._output_format = output_format
        self._channel = channel or ChannelKeys()
        self._evidence_lock = threading.Lock()

    @property
    def channel(self) -> ChannelKeys:
        return self._channel

    @property
    def spec_fingerprint(self) -> str:
        return self._processor.compiled.fingerprint

    @property
    def output_format(self) -> str:
        return self._output_format

    @property
    def broker_calls(self) -> Mapping[str, int]:
        return self._session.broker_calls

    def start(self) -> None:
        """Attest to the broker now (raises the broker's error when it refuses)."""
        _ = self._session.simulated

    def evidence_for(self, nonce: bytes) -> dict[str, Any]:
        """Fresh evidence binding ``nonce`` and the channel key, and what the worker runs."""
        if not MIN_CLIENT_NONCE <= len(nonce) <= MAX_CLIENT_NONCE:
            raise PoolRequestError(f"nonce must be {MIN_CLIENT_NONCE}..{MAX_CLIENT_NONCE} bytes")
        public_key = self._channel.public_bytes()
        with self._evidence_lock:
            evidence = self._provider.collect(channel_binding(nonce, public_key))
        return {
            "tee": evidence.tee,
            "evidence": evidence.evidence,
            "endorsements": dict(evidence.endorsements),
            "channel_public_key": public_key,
            "spec_fingerprint": self.spec_fingerprint,
            "output_format": self._output_format,
            "simulated": bool(getattr(self._provider, "simulated", False)),
        }

    def process(self, request: PoolRequest) -> BatchResult:
        if request.spec_fingerprint != self.spec_fingerprint:
            raise PoolMismatchError("this pool worker runs another feature spec "
                                    f"({self.spec_fingerprint[:16]}...)")
        if request.output_format != self._output_format:
            raise PoolMismatchError(f"this pool worker writes {self._output_format}, "
                                    f"not {request.output_format}")
        if request.batch_id is None:
            raise PoolRequestError("a request needs its batch id: outputs are named by it "
                                   "and their custody statements signed for that name")
        processor = self._processor
        if request.routes is None and self._require_routes:
            raise PoolRequestError("this pool worker requires each envelope's routing facts "
                                   "(--require_routes): upgrade the pipeline's sealbeam")
        if request.destination is None and self._require_destination:
            raise PoolRequestError("this pool worker requires each batch's destination "
                                   "(--require_destination): run the pipeline with a "
                                   "residency map or --output_root")
        if request.destination is not None:
            refusal = destination_refusal(request.destination, request.envelopes,
                                          request.routes)
            if refusal is not None:
                raise PoolRequestError(refusal)
            destination = {k: v for k, v in request.destination.items() if k != "region"}
            processor = BatchProcessor(
                _DestinedSession(self._session, destination),  # type: ignore[arg-type]
                processor.compiled, output_format=self._output_format)
        # The routes the Beam side sent (if any): an envelope whose header the TEE parses
        # to other facts is a ``route`` dead letter; nothing here relies on them.
        result = processor.process(request.envelopes, request.routes)
        signed = []
        for output in result.outputs:   # named as in-process, then signed here in the TEE
            named = replace(output, output_id=output_name_id(request.batch_id, output))
            signed.append(processor.sign_custody(
                named, output_file_name(named, request.window)))
        return replace(result, outputs=signed)

    def close(self) -> None:
        self._session.close()


def build_pool_worker(settings: PoolSettings, *, channel: ChannelKeys | None = None
                      ) -> PoolWorker:
    """A worker for ``settings`` (not yet attested: call ``start``)."""
    if settings.output_format not in OUTPUT_FORMATS:
        raise PoolMismatchError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}")
    compiled = compile_spec(settings.spec)
    provider = make_provider(settings.tee, settings.dev_tee_dir, audience=settings.audience,
                             launcher_socket=settings.launcher_socket,
                             location=settings.location)
    client = pinned_broker_client(  # every grant checked with the pinned broker key
        settings.broker_url, identity=settings.broker_identity,
        dev_tee_dir=settings.dev_tee_dir, ca_bundle=settings.broker_ca_bundle,
        pinned_cert=settings.broker_pinned_cert)
    session = KeySession(
        SpecBoundBrokerClient(client, compiled.fingerprint),  # type: ignore[arg-type]
        provider,
        key_ttl_s=settings.key_ttl_s,
        max_uses_per_key=settings.max_uses_per_key,
        max_cached_keys=settings.max_cached_keys,
        output_key_max_envelopes=(1 if settings.output_format == PARQUET_PME
                                  else settings.output_key_max_envelopes),
    )
    processor = BatchProcessor(session, compiled, output_format=settings.output_format)
    return PoolWorker(session, provider, processor, settings.output_format, channel,
                      require_destination=settings.require_destination,
                      require_routes=settings.require_routes)
