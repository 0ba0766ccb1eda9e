"""Property tests: a statement with any field replaced by any JSON value is refused with a
reason (or is unreadable), never accepted and never an unexpected exception."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keybroker.identity import canonical_json
from pipelines.custody import CustodyError, verify_output

from .conftest import DemoRun

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
PREDICATE_FIELDS = ("output", "inputs", "spec_fingerprint", "kek_refs", "counts", "tee",
                    "attestation_result", "ledger_head")


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from((*PREDICATE_FIELDS, "subject", "_type", "signatures")),
       value=JSON)
def test_any_replaced_field_is_refused(demo_run: DemoRun, tmp_path_factory, field: str,
                                       value: object) -> None:
    output = demo_run.outputs()[0]
    envelope = json.loads(output.with_name(output.name + ".intoto.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    if field == "signatures":
        envelope["signatures"] = value
    elif field in PREDICATE_FIELDS:
        if statement["predicate"][field] == value:
            return
        statement["predicate"][field] = value
    else:
        statement[field] = value
    envelope["payload"] = base64.b64encode(canonical_json(statement)).decode()
    path = Path(tmp_path_factory.mktemp("prop")) / "statement.json"
    path.write_bytes(canonical_json(envelope))
    try:
        verdict = verify_output(output, broker_key=demo_run.broker_key, statement=path)
    except CustodyError:
        return
    assert not verdict.ok and verdict.reasons


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200))
def test_arbitrary_bytes_are_unreadable_not_a_crash(demo_run: DemoRun, tmp_path_factory,
                                                    content: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("bytes")) / "statement.json"
    path.write_bytes(content)
    try:
        verdict = verify_output(demo_run.outputs()[0], broker_key=demo_run.broker_key,
                                statement=path)
    except CustodyError:
        return
    assert not verdict.ok
