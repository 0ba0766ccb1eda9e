"""Properties of the signed documents: any exchange round-trips, any change is refused, and
arbitrary input to the verifiers raises only their typed errors."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from keybroker.checkpoints import CheckpointError, verify_checkpoint
from keybroker.grants import GrantError, sign_grant, verify_attestation_result, verify_grant
from keybroker.identity import BrokerIdentity, SignatureInvalidError

IDENTITY = BrokerIdentity.generate()
KEY = IDENTITY.public_key

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k != "grant"),
                            json_values, min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(request=documents, reply=documents, data=st.data())
def test_a_grant_verifies_after_json_transport_and_fails_on_any_change(
    request: dict, reply: dict, data: st.DataObject
) -> None:
    signed = {**reply, "grant": sign_grant(IDENTITY, "generate", request, reply, "a" * 16, 50.0)}
    received = json.loads(json.dumps(signed))            # what crosses the wire
    verify_grant(KEY, "generate", json.loads(json.dumps(request)), received, "a" * 16, 60.0)
    name = data.draw(st.sampled_from(sorted(reply)))
    changed = {**received, name: ["changed", received[name]]}
    try:
        verify_grant(KEY, "generate", request, changed, "a" * 16, 60.0)
    except GrantError:
        return
    raise AssertionError(f"a change of reply field {name!r} was accepted")


@settings(max_examples=150, deadline=None)
@given(envelope=json_values)
def test_verifiers_raise_only_their_typed_errors_on_arbitrary_input(envelope: object) -> None:
    for check, errors in (
        (lambda: KEY.verify(envelope, "x"), SignatureInvalidError),
        (lambda: verify_checkpoint(KEY, envelope), CheckpointError),
        (lambda: verify_attestation_result(KEY, envelope), GrantError),
        (lambda: verify_grant(KEY, "release", {}, {"grant": envelope}, "b" * 16, 0.0),
         GrantError),
    ):
        try:
            check()
        except errors:
            continue
        raise AssertionError("arbitrary input verified")
