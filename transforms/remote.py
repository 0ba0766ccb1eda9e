"""The confidential step in remote mode: sealed batches to an attested pool of TEE workers.

Usage::

    processed = parsed[ParseSealed.SEALED] | ConfidentialProcessRemote(
        endpoints=["http://pool-0:8700", "http://pool-1:8700"],   # or discovery="pool.json"
        trust=PoolTrust.from_file("policy.yaml"),      # the broker's release policy
        spec=spec, output_format="sealed-arrow",
    )
    outputs = processed[ConfidentialProcessRemote.SEALED]        # SealedOutput
    dead = processed[ConfidentialProcessRemote.DEAD_LETTER]       # DeadLetter

In the style of Beam's ``RunInference`` with a remote model handler. Input and batching are
``ConfidentialProcess``'s: ``SealedEnvelope`` elements (or bare envelope bytes, whose headers
are read here; one that does not parse is a dead letter), grouped by data key and cut
deterministically by ``BatchByDataKey`` (or the ``batcher`` given), and each
``EnvelopeBatch`` goes whole to one pool worker, which runs the same ``BatchProcessor``. Every
output's ``output_id`` is ``output_name_id(batch_id, output)``, as in-process (the pool
worker names it from the batch id and window label sent with the batch, and signs its custody
statement in its TEE for that file name; the client checks the name): a batch that is
retried (on the same or another endpoint) or rerun is written under the same names, never a
second time, and both modes produce the same outputs under the same names for the same input.
With ``drop_duplicates=True`` exact copies are dropped inside the data-key groups (output
``DUPLICATES``, counted in ``duplicates``), as ``ConfidentialProcess`` does for batch runs.
Routing is by data key: the batch's most frequent data-key id picks the endpoint by
rendezvous hashing (``endpoint_order``), so each DEK stays cached on few pool workers and a
lost worker moves only its own keys. A failure (connection, timeout, 5xx, a cut or forged
response, 429) moves the batch to the next endpoint in that order, with bounded exponential
backoff (and the endpoint's Retry-After, capped); after ``max_attempts`` the bundle fails
and the runner retries it. A batch's outputs are emitted only once its whole response has
been authenticated, so a worker killed mid-request loses nothing and duplicates nothing.
An endpoint that fails attestation, or whose claims the policy refuses, is sent no data.
Given the run's ``destinations`` (preflight's sink facts per region), each batch carries its
region's (``batch_destination``) to the pool worker, which checks it against the batch's
envelopes and sends it with each output key's ``generate``: the broker's ledger records the
same destinations as for in-process runs. Each envelope's routing facts (data-key id, region,
producer, as read outside) travel with it, as in-process: the pool worker's
``BatchProcessor`` dead-letters (stage ``route``) an envelope whose header says otherwise.

The Beam worker holds no key and sees no plaintext. Endpoints come from a list or a
discovery file (JSON ``{"endpoints": [...]}`` or one URL per line; any Beam filesystem path,
read on the worker in ``setup``). Metrics (namespace ``sealbeam``): ``pool_requests``,
``pool_failovers``, ``pool_bytes_sent``, ``pool_bytes_received``, ``rows_suppressed``.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import BoundedWindow

from enclave_workers.batch_processor import OUTPUT_FORMATS, PARQUET_PME, SEALED_ARROW
from enclave_workers.features import FeatureSpec
from enclave_workers.pool.wire import PoolResponse
from envelope import EnvelopeError, read_header

from .batching import DEFAULT_MAX_BATCH_BYTES, DEFAULT_SHARDS, BatchByDataKey, EnvelopeBatch
from .confidential import _check_pme_assignment, batch_and_process, compile_for_workers
from .errors import TransformConfigError
from .metrics import NAMESPACE, ROWS_SUPPRESSED
from .pool_client import (
    PoolBusyError,
    PoolEndpoint,
    PoolRejectedError,
    PoolUnavailableError,
)
from .pool_trust import PoolAttestationError, PoolTrust, PoolVerifier
from .session import OutputDestinations, output_destinations
from .windows import window_label

__all__ = ["ConfidentialProcessRemote", "PoolRouter", "batch_destination", "endpoint_order",
           "load_endpoints", "route_key"]

MAX_DISCOVERY_BYTES = 1 << 20
DEFAULT_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0


def load_endpoints(endpoints: Sequence[str] | None, discovery: str | None) -> list[str]:
    """The endpoint URLs: the list given, else the discovery file's; never empty."""
    urls = [u.strip().rstrip("/") for u in (endpoints or []) if u.strip()]
    if not urls and discovery:
        with FileSystems.open(discovery) as handle:
            raw = handle.read(MAX_DISCOVERY_BYTES + 1)
        if len(raw) > MAX_DISCOVERY_BYTES:
            raise TransformConfigError(f"pool discovery file {discovery} is too large")
        text = raw.decode("utf-8")
        if text.lstrip().startswith("{"):
            listed = json.loads(text).get("endpoints", [])
        else:
            listed = [line for line in text.splitlines() if not line.startswith("#")]
        urls = [str(u).strip().rstrip("/") for u in listed if str(u).strip()]
    if not urls:
        raise TransformConfigError("remote mode needs pool endpoints (--pool_endpoints or "
                                   "--pool_discovery)")
    return sorted(set(urls))


def route_key(batch: Sequence[bytes] | EnvelopeBatch) -> str:
    """The batch's most frequent wrapped-key id (headers only; ties: the smallest id)."""
    counts: Counter[str] = Counter()
    if isinstance(batch, EnvelopeBatch):
        counts.update(e.key_id for e in batch.envelopes)
    else:
        for envelope in batch:
            try:
                counts[read_header(envelope)[0].wrapped_key.key_id] += 1
            except EnvelopeError:
                counts[""] += 1
    return min(counts, key=lambda key: (-counts[key], key)) if counts else ""


def endpoint_order(key: str, endpoints: Sequence[str]) -> list[str]:
    """Rendezvous (highest random weight) order of ``endpoints`` for ``key``."""
    def weight(url: str) -> bytes:
        return hashlib.sha256(f"{url}\x00{key}".encode()).digest()

    return sorted(endpoints, key=weight, reverse=True)


class PoolRouter:
    """Sends a batch to the endpoint its data key routes to, failing over in order."""

    def __init__(self, endpoints: Sequence[PoolEndpoint], *, max_attempts: int | None = None,
                 backoff_s: float = DEFAULT_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
                 sleep: Callable[[float], None] = time.sleep,
                 on_failover: Callable[[str, Exception], None] | None = None) -> None:
        if not endpoints:
            raise TransformConfigError("a pool router needs at least one endpoint")
        self._endpoints = {e.url: e for e in endpoints}
        self._max_attempts = max_attempts or 2 * len(endpoints) + 1
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._on_failover = on_failover
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def endpoints(self) -> list[PoolEndpoint]:
        return list(self._endpoints.values())

    @property
    def refused(self) -> dict[str, str]:
        """Endpoints that failed attestation or the policy, with why (never sent data)."""
        with self._lock:
            return dict(self._refused)

    def _usable(self, key: str) -> list[PoolEndpoint]:
        with self._lock:
            refused = set(self._refused)
        return [self._endpoints[u] for u in endpoint_order(key, list(self._endpoints))
                if u not in refused]

    def _refuse(self, url: str, exc: Exception) -> None:
        with self._lock:
            self._refused[url] = str(exc)

    def process(self, batch: Sequence[bytes], *, batch_id: bytes, window: str = "",
                key: str | None = None, destination: Mapping[str, object] | None = None,
                routes: Sequence[tuple[str, str, str]] | None = None) -> PoolResponse:
        """``batch``'s response from the endpoint ``key`` (default: its data key) routes to;
        its outputs named by ``batch_id`` and ``window`` (a window label) and signed, their
        keys generated with ``destination`` (region, sink, location, verified); ``routes``
        per envelope what it was routed by (the pool worker checks each header against)."""
        key = route_key(batch) if key is None else key
        last: Exception | None = None
        for attempt in range(self._max_attempts):
            usable = self._usable(key)
            if not usable:
                break
            endpoint = usable[attempt % len(usable)]
            try:
                return endpoint.process(batch, batch_id=batch_id, window=window,
                                        destination=destination, routes=routes)
            except (PoolAttestationError, PoolRejectedError) as exc:
                self._refuse(endpoint.url, exc)
                last = exc
            except PoolUnavailableError as exc:
                last = exc
                delay = min(self._max_backoff_s, self._backoff_s * (2 ** attempt))
                if isinstance(exc, PoolBusyError):
                    delay = max(delay, min(exc.retry_after_s, self._max_backoff_s))
                self._sleep(delay * (0.5 + random.random() / 2))
            if self._on_failover is not None:
                self._on_failover(endpoint.url, last)
        if last is None or isinstance(last, (PoolAttestationError, PoolRejectedError)):
            refused = "; ".join(f"{u}: {why}" for u, why in sorted(self.refused.items()))
            raise PoolAttestationError(f"no pool endpoint passed attestation ({refused})")
        raise PoolUnavailableError(f"no pool endpoint processed the batch after "
                                   f"{self._max_attempts} attempts: {last}")


def batch_destination(batch: EnvelopeBatch, destinations: OutputDestinations
                      ) -> dict[str, object] | None:
    """The destination of the batch's region (``{region, sink, location, verified}``), or
    None when the map has none for it or the batch spans regions (its batcher groups by
    region, so it does not)."""
    regions = {e.region for e in batch.envelopes}
    if len(regions) != 1:
        return None
    [region] = regions
    for name, sink, location, verified in destinations:
        if name == region:
            return {"region": region, "sink": sink, "location": location, "verified": verified}
    return None


class _RemoteProcessFn(beam.DoFn):
    def __init__(self, endpoints: Sequence[str], discovery: str | None, trust: PoolTrust,
                 fingerprint: str, output_format: str, timeout_s: float,
                 destinations: OutputDestinations = ()) -> None:
        self._endpoint_urls = list(endpoints)
        self._destinations = destinations
        self._discovery = discovery
        self._trust = trust
        self._fingerprint = fingerprint
        self._output_format = output_format
        self._timeout_s = timeout_s
        self._router: PoolRouter | None = None
        self._requests = Metrics.counter(NAMESPACE, "pool_requests")
        self._failovers = Metrics.counter(NAMESPACE, "pool_failovers")
        self._sent = Metrics.counter(NAMESPACE, "pool_bytes_sent")
        self._received = Metrics.counter(NAMESPACE, "pool_bytes_received")
        self._rows_suppressed = Metrics.counter(NAMESPACE, ROWS_SUPPRESSED)
        self._batch_sizes = Metrics.distribution(NAMESPACE, "confidential_batch_size")

    def setup(self) -> None:
        verifier: PoolVerifier = self._trust.verifier()
        urls = load_endpoints(self._endpoint_urls, self._discovery)
        endpoints = [PoolEndpoint(url, verifier, spec_fingerprint=self._fingerprint,
                                  output_format=self._output_format, timeout_s=self._timeout_s)
                     for url in urls]
        failovers = self._failovers
        self._router = PoolRouter(endpoints, on_failover=lambda _url, _exc: failovers.inc())

    def _traffic(self) -> tuple[int, int]:
        assert self._router is not None
        endpoints = self._router.endpoints
        return (sum(e.bytes_sent for e in endpoints), sum(e.bytes_received for e in endpoints))

    def process(self, batch: EnvelopeBatch,
                window: BoundedWindow = beam.DoFn.WindowParam) -> Iterable[object]:
        assert self._router is not None, "setup() creates the router"
        self._batch_sizes.update(len(batch.envelopes))
        sent, received = self._traffic()
        # The routing facts travel beside the bytes, as in-process: the pool worker's TEE
        # dead-letters an envelope whose header says otherwise, and relies on none of them.
        response = self._router.process([e.data for e in batch.envelopes],
                                        batch_id=batch.batch_id, window=window_label(window),
                                        key=route_key(batch),
                                        destination=batch_destination(batch, self._destinations),
                                        routes=[(e.key_id, e.region, e.producer_id)
                                                for e in batch.envelopes])
        sent_after, received_after = self._traffic()
        self._requests.inc()
        self._sent.inc(sent_after - sent)
        self._received.inc(received_after - received)
        self._rows_suppressed.inc(sum(o.rows_suppressed for o in response.outputs))
        # Named by the batch and signed in the pool's TEE (checked by the endpoint), as
        # in-process: retries rewrite the same files and their statements.
        yield from response.outputs
        for dead_letter in response.dead_letters:
            yield TaggedOutput(ConfidentialProcessRemote.DEAD_LETTER, dead_letter)


class ConfidentialProcessRemote(beam.PTransform):
    """``SealedEnvelope`` (or envelope bytes) -> ``SealedOutput`` (named by their inputs) and
    dead letters, computed by an attested pool."""

    SEALED = "sealed"
    DEAD_LETTER = "dead_letter"
    DUPLICATES = "duplicates"

    def __init__(self, *, trust: PoolTrust, spec: FeatureSpec,
                 endpoints: Sequence[str] | None = None, discovery: str | None = None,
                 output_format: str = SEALED_ARROW, max_batch_size: int = 2000,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 key_shards: int = DEFAULT_SHARDS, key_spread: int = 1,
                 batcher: beam.PTransform | None = None, drop_duplicates: bool = False,
                 timeout_s: float = 120.0,
                 destinations: Mapping[str, Mapping[str, object]] | None = None) -> None:
        """``destinations``: per region, ``{"sink", "location", "verified"}`` from preflight;
        each batch carries its region's to the pool worker, which sends it with each output
        key's ``generate`` to the broker's ledger (as ``ConfidentialProcess`` does)."""
        super().__init__()
        if not endpoints and not discovery:
            raise TransformConfigError("remote mode needs pool endpoints or a discovery file")
        if max_batch_size < 1 or max_batch_bytes < 1:
            raise TransformConfigError("batch sizes must be at least 1 (max_batch_size, "
                                       "max_batch_bytes)")
        if drop_duplicates and batcher is not None:
            raise TransformConfigError("drop_duplicates works with the default batching only")
        if output_format not in OUTPUT_FORMATS:
            raise TransformConfigError(f"output format must be one of "
                                       f"{', '.join(OUTPUT_FORMATS)}, not {output_format!r}")
        if not isinstance(spec, FeatureSpec):
            raise TransformConfigError(f"spec must be a FeatureSpec, not {type(spec).__name__}")
        _, compiled = compile_for_workers(spec)
        if output_format == PARQUET_PME:
            _check_pme_assignment(compiled)
        self.compiled = compiled
        self._fn = _RemoteProcessFn(list(endpoints or []), discovery, trust,
                                    compiled.fingerprint, output_format, timeout_s,
                                    output_destinations(destinations))
        self._drop_duplicates = drop_duplicates
        self._batcher = batcher or BatchByDataKey(
            max_count=max_batch_size, max_bytes=max_batch_bytes, shards=key_shards,
            spread=key_spread, drop_duplicates=drop_duplicates)

    def expand(self, pcoll: beam.PCollection) -> dict[str, beam.PCollection]:
        # The same header facts, batching, copy dropping and dead letters as in-process.
        return batch_and_process(pcoll, self._batcher, self._drop_duplicates, "SendToPool",
                                 self._fn)
