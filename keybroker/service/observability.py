"""What an operator sees of a running broker: Prometheus metrics, access logs, API docs.

What it does: ``install_observability(app, service)`` adds to the broker's FastAPI app (the
access log and latency histogram are the ``ObservedRequests`` layer the app puts outermost)

- ``GET /metrics`` (Prometheus text format, ``prometheus-client``, one registry per app):
  ``sealbeam_broker_decisions_total{event, decision, tee, reason}`` counts every decision the
  audit ledger records (grants and denials of attest, release, generate, release-named, by TEE
  type and, for denials, the error code, e.g. ``policy_denied``); a histogram
  ``sealbeam_broker_request_duration_seconds{route, method, status}`` per route template;
  ``sealbeam_broker_ledger_entries``; and the DEK cache's ``hits``, ``kms_calls``, ``shared``
  (single-flight waits) and ``entries``, read from ``DekCache.stats()`` at scrape time;
- a structured access log: one record per request on the logger ``sealbeam.broker.access``
  with ``method``, ``route``, ``path``, ``status``, ``duration_ms`` and ``client`` as fields
  (JSON lines under ``--log-format json``);
- ``GET /docs``: a small page and script shipped in the package (``static/``) that renders
  ``/openapi.json`` — FastAPI's own ``/docs`` and ``/redoc`` load their UI from a CDN and are
  blank offline, so they are removed.

Decisions are counted where the ledger is written (``KeyBrokerService.observe_decisions``:
after each grant or denial is durable, on a thread or on the event loop's ledger writer): the
metric then counts exactly what the audit trail holds, and no route needs to know.

What it does not: no labels from request content beyond bounded ones (route templates, TEE
names matching ``[a-z0-9-]{1,32}``, at most 32 distinct, others ``other``; error codes); no key
ids, KEKs, session ids or reasons in free text; ``/metrics`` is not authenticated, so bind the
broker where only operators reach it, as with every other route.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACCESS_LOGGER", "BrokerMetrics", "LabelChildren", "ObservedRequests",
           "install_observability"]

ACCESS_LOGGER = "sealbeam.broker.access"
_DOC_ROUTES = ("/docs", "/docs/oauth2-redirect", "/redoc")
_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_REASON = re.compile(r"^[a-z0-9_]{1,48}$")
_MAX_TEE_LABELS = 32
_MAX_CACHED_CHILDREN = 256
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)
_access_log = logging.getLogger(ACCESS_LOGGER)


class BrokerMetrics:
    """The broker's metric objects in their own registry (several apps can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "sealbeam_broker_decisions", "Decisions recorded in the audit ledger",
            ["event", "decision", "tee", "reason"], registry=self.registry)
        self.request_seconds = Histogram(
            "sealbeam_broker_request_duration_seconds", "Request latency per route",
            ["route", "method", "status"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._tees: set[str] = set()
        self._lock = threading.Lock()
        self._request_children = LabelChildren()
        self._decision_children = LabelChildren()

    def tee_label(self, value: object) -> str:
        if not isinstance(value, str) or not _LABEL.match(value):
            return "none" if value is None else "other"
        with self._lock:
            if value not in self._tees and len(self._tees) >= _MAX_TEE_LABELS:
                return "other"
            self._tees.add(value)
        return value

    def observe_decision(self, event: str, decision: str, details: Mapping[str, object]) -> None:
        reason = details.get("error") if decision == "denied" else ""
        if not reason:
            reason_label = ""
        else:
            reason_label = reason if isinstance(reason, str) and _REASON.match(reason) else "other"
        tee = details.get("tee")
        if tee is not None and type(tee) is not str:  # not a cache key: looked up as it is
            self.decisions.labels(event, decision, self.tee_label(tee), reason_label).inc()
            return
        # A TEE's label never changes once given (the set of TEE labels only grows, and
        # "other" past its bound stays "other"), so the child can be kept per raw value.
        key = (event, decision, tee, reason_label)
        child = self._decision_children.get(key)
        if child is None:
            child = self.decisions.labels(event, decision, self.tee_label(tee), reason_label)
            self._decision_children.put(key, child)
        child.inc()

    def request_child(self, route: str, method: str, status: int) -> Any:
        """The latency histogram's child for (route, method, status), looked up once each."""
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.request_seconds.labels(route, method, str(status))
            self._request_children.put(key, child)
        return child


class LabelChildren:
    """A labelled metric's children by label values, so that ``labels()`` (argument checks,
    a lock, a dict) runs once per label set, not per request. Bounded: past ``limit`` label
    sets (methods a client made up, say) a child is looked up each time, as before."""

    def __init__(self, limit: int = _MAX_CACHED_CHILDREN) -> None:
        self._limit = limit
        self._children: dict[tuple[object, ...], Any] = {}

    def get(self, key: tuple[object, ...]) -> Any:
        return self._children.get(key)

    def put(self, key: tuple[object, ...], child: Any) -> None:
        if len(self._children) < self._limit:
            self._children[key] = child

    def __len__(self) -> int:
        return len(self._children)


class _StateCollector(Collector):
    """Ledger size and DEK cache counters, read when Prometheus scrapes."""

    def __init__(self, service: Any) -> None:
        self._service = service

    def collect(self) -> Iterator[Any]:
        entries, _head = self._service.ledger.head()
        yield GaugeMetricFamily("sealbeam_broker_ledger_entries",
                                "Entries in the audit ledger", value=entries)
        stats = self._service.dek_cache.stats()
        for name, value, help_text in (
                ("hits", stats.hits, "Unwraps answered from the DEK cache"),
                ("kms_calls", stats.kms_calls, "Unwraps that called the KMS"),
                ("shared", stats.shared, "Unwraps that waited for a concurrent KMS call")):
            yield CounterMetricFamily(f"sealbeam_broker_dek_cache_{name}", help_text,
                                      value=value)
        yield GaugeMetricFamily("sealbeam_broker_dek_cache_entries",
                                "DEKs held in the cache", value=stats.entries)


class ObservedRequests:
    """ASGI middleware: latency histogram per route template and one access-log record."""

    def __init__(self, app: ASGIApp, metrics: BrokerMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self._metrics.request_child(template, method, status["code"]).observe(elapsed)
            if _access_log.isEnabledFor(logging.INFO):
                # The record Logger.info makes, without its walk up the stack to find the
                # caller: the caller is this frame.
                # (The frame is not kept in a local: it would hold itself, a cycle per request.)
                client = scope.get("client")
                _access_log.handle(_access_log.makeRecord(
                    ACCESS_LOGGER, logging.INFO, _CALLER.co_filename, sys._getframe().f_lineno,
                    "%s %s %d %.1fms", (method, template, status["code"], elapsed * 1000),
                    None, _CALLER.co_name,
                    {"method": method, "route": template, "path": scope.get("path", ""),
                     "status": status["code"], "duration_ms": round(elapsed * 1000, 3),
                     "client": f"{client[0]}:{client[1]}" if client else ""}))


_CALLER = ObservedRequests.__call__.__code__  # where Logger.info would find the caller


def _static(name: str) -> bytes:
    return resources.files("keybroker.service").joinpath("static", name).read_bytes()


def _install_docs(app: FastAPI) -> None:
    app.router.routes[:] = [route for route in app.router.routes
                            if getattr(route, "path", None) not in _DOC_ROUTES]
    page, script = _static("api-docs.html"), _static("api-docs.js")
    policy = {"Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"}

    def docs() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=policy)

    def docs_script() -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8", headers=policy)

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs/api-docs.js", docs_script, methods=["GET"],
                      include_in_schema=False)


def install_observability(app: FastAPI, service: Any) -> BrokerMetrics:
    """Add /metrics and the packaged /docs to the broker's ``app``; its metrics, for the
    access-log layer (``ObservedRequests``) the application puts in front of itself."""
    metrics = BrokerMetrics()
    metrics.registry.register(_StateCollector(service))
    service.observe_decisions(metrics.observe_decision)

    def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", scrape, methods=["GET"], include_in_schema=False)
    _install_docs(app)
    app.state.metrics = metrics
    return metrics
