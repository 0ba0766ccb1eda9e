"""The broker's HTTP API fuzzed from its own OpenAPI document (schemathesis), over loopback.

Requests that follow the schema (positive) and requests that break it (negative: wrong
types, missing or extra fields, bad media types) go to a real broker; every answer must be
below 500 and, when it is an error, exactly ``{"error": str, "reason": str}`` (never
FastAPI's ``{"detail": ...}``); answers must also match the documented response schemas.
Bounded: a fixed number of examples per mode, no shrinking deadline, a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from keybroker.service.server import RunningBroker
from keybroker.service_limits import ServiceLimits
from tests.support.broker import start_broker

EXAMPLES = 40
BOUNDED_PHASES = (Phase.explicit, Phase.generate)  # no shrinking: bounded in time


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    state = tmp_path_factory.mktemp("fuzz") / "state"
    limits = ServiceLimits(rate_per_second=1_000_000, rate_burst=1_000_000)
    with start_broker(state, settings_changes={"limits": limits}) as running:
        yield running


@pytest.fixture(scope="module")
def schema(broker: RunningBroker) -> schemathesis.BaseSchema:
    document = httpx.get(f"{broker.url}/openapi.json").json()
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(scope="module")
def http(broker: RunningBroker) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=broker.url, timeout=30) as client:
        yield client


def _check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error", "reason"}, f"{what}: {body}"
        assert isinstance(body["error"], str) and isinstance(body["reason"], str), what


def _send(http: httpx.Client, case: schemathesis.Case) -> httpx.Response:
    """Send the generated request with httpx (the case's body as JSON or raw bytes)."""
    kwargs = case.as_transport_kwargs(base_url=str(http.base_url))
    request_headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if k != "User-Agent"}
    content = kwargs.get("data")
    body_json = kwargs.get("json")
    return http.request(
        kwargs["method"],
        case.formatted_path,
        params=kwargs.get("params"),
        headers=request_headers,
        content=content if body_json is None else None,
        json=body_json,
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_no_5xx_and_only_the_error_shape(
    schema: schemathesis.BaseSchema, http: httpx.Client, mode: GenerationMode
) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=BOUNDED_PHASES,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=schema.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        response = _send(http, case)
        _check(response, f"{case.method} {case.formatted_path}")
        if response.status_code < 500:
            case.validate_response(response, checks=[response_schema_conformance])

    fuzz()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=BOUNDED_PHASES, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
    path=st.sampled_from(["/", "/v1", "/v1/keys", "/v1/attest/", "/v1/health", "/v2/x"])
    | st.text(alphabet="abc/%._-", min_size=1, max_size=20).map(lambda tail: "/" + tail),
    body=st.binary(max_size=64),
)
def test_unknown_routes_methods_and_junk_bodies_use_the_error_shape(
    http: httpx.Client, method: str, path: str, body: bytes
) -> None:
    headers = {"content-type": "application/json"}
    response = http.request(method, path, content=body, headers=headers)
    _check(response, f"{method} {path}")


def test_openapi_documents_the_error_statuses(schema: schemathesis.BaseSchema) -> None:
    raw = schema.raw_schema
    attest = raw["paths"]["/v1/attest"]["post"]["responses"]
    for status in ("400", "401", "403", "413", "422", "429", "503"):
        assert status in attest, status
