"""The access-log layer's cached metric children and its access record, without a server:
each label set counts in its own series whether its child is cached or not (the cache is
bounded), a TEE's label is what ``tee_label`` gives, and the record is the one
``Logger.info`` made (message, fields, caller)."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from typing import Any

import pytest

from keybroker.service.observability import (
    ACCESS_LOGGER,
    BrokerMetrics,
    LabelChildren,
    ObservedRequests,
)


def sample(metrics: BrokerMetrics, name: str, **labels: str) -> float:
    found = [s.value for family in metrics.registry.collect() for s in family.samples
             if s.name == name and s.labels == labels]
    return sum(found)


def test_label_children_are_bounded_and_kept_per_key() -> None:
    children = LabelChildren(limit=2)
    children.put(("a",), "child a")
    children.put(("b",), "child b")
    children.put(("c",), "child c")  # over the bound: not kept
    assert len(children) == 2
    assert children.get(("a",)) == "child a" and children.get(("b",)) == "child b"
    assert children.get(("c",)) is None


class _Route:
    def __init__(self, path: str) -> None:
        self.path = path


def _app(status: int, route: str | None) -> Any:
    async def app(scope: dict[str, Any], _receive: Any, send: Any) -> None:
        if route is not None:
            scope["route"] = _Route(route)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def _request(layer: ObservedRequests, method: str, path: str) -> None:
    scope = {"type": "http", "method": method, "path": path, "client": ("127.0.0.1", 4242)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict[str, Any]) -> None:
        return None

    asyncio.run(layer(scope, receive, send))


@pytest.mark.parametrize("limit", [0, 2, 256])
def test_each_label_set_counts_in_its_own_series(limit: int) -> None:
    metrics = BrokerMetrics()
    metrics._request_children = LabelChildren(limit=limit)
    plan = [("POST", "/v1/keys/release", 200, "/v1/keys/release")] * 3 + [
        ("POST", "/v1/keys/release", 403, "/v1/keys/release"),
        ("GET", "/nowhere", 404, None),
        ("BREW", "/nowhere", 405, None),
        ("POST", "/v1/keys/release", 200, "/v1/keys/release"),
    ]
    for method, path, status, route in plan:
        _request(ObservedRequests(_app(status, route), metrics), method, path)
    count = "sealbeam_broker_request_duration_seconds_count"
    assert sample(metrics, count, route="/v1/keys/release", method="POST", status="200") == 4
    assert sample(metrics, count, route="/v1/keys/release", method="POST", status="403") == 1
    assert sample(metrics, count, route="unmatched", method="GET", status="404") == 1
    assert sample(metrics, count, route="unmatched", method="BREW", status="405") == 1
    assert len(metrics._request_children) == min(limit, 4)


def test_decisions_by_tee_cached_or_not() -> None:
    metrics = BrokerMetrics()
    metrics._decision_children = LabelChildren(limit=3)
    tees: list[object] = [f"tee-{index}" for index in range(34)]  # over the 32 TEE labels
    for tee in [*tees, *tees, None, None, "Not A Label", ["a", "list"]]:
        metrics.observe_decision("release", "granted", {"tee": tee})
    metrics.observe_decision("release", "denied", {"tee": "tee-0", "error": "policy_denied"})
    metrics.observe_decision("release", "denied", {"tee": "tee-0", "error": "Bad Code!"})
    total = "sealbeam_broker_decisions_total"
    for index in range(32):
        assert sample(metrics, total, event="release", decision="granted",
                      tee=f"tee-{index}", reason="") == 2
    assert sample(metrics, total, event="release", decision="granted", tee="other",
                  reason="") == 2 * 2 + 2  # tee-32, tee-33 twice; the bad label, the list
    assert sample(metrics, total, event="release", decision="granted", tee="none",
                  reason="") == 2
    assert sample(metrics, total, event="release", decision="denied", tee="tee-0",
                  reason="policy_denied") == 1
    assert sample(metrics, total, event="release", decision="denied", tee="tee-0",
                  reason="other") == 1


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_the_access_record_is_the_one_logger_info_made(level: int) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = _Records()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        _request(ObservedRequests(_app(201, "/v1/things"), BrokerMetrics()), "POST",
                 "/v1/things")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    if level > logging.INFO:
        assert handler.records == []
        return
    [record] = handler.records
    assert record.name == ACCESS_LOGGER and record.levelno == logging.INFO
    assert record.funcName == "__call__" and record.pathname.endswith("observability.py")
    assert record.msg == "%s %s %d %.1fms" and record.exc_info is None
    assert re.fullmatch(r"POST /v1/things 201 \d+\.\dms", record.getMessage())
    fields = {name: getattr(record, name) for name in
              ("method", "route", "path", "status", "client")}
    assert fields == {"method": "POST", "route": "/v1/things", "path": "/v1/things",
                      "status": 201, "client": "127.0.0.1:4242"}
    assert record.duration_ms >= 0


def test_a_request_leaves_no_reference_cycle() -> None:
    """Each request's frames and closures are freed when it ends, not by the collector."""
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = _Records()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    layer = ObservedRequests(_app(200, "/v1/things"), BrokerMetrics())
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            _request(layer, "POST", "/v1/things")
        handler.records.clear()  # a record holds its arguments, not the request's frames
        gc.collect()
        ours = [found for found in gc.garbage
                if getattr(getattr(found, "f_code", None), "co_filename", "").endswith(
                    "observability.py")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert ours == []
