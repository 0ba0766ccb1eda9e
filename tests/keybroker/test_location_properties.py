"""Property test of the location reader: whatever a token, a platform field or HOST_DATA
holds, the policy gets a lowercase location name or None, never anything else."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from keybroker.attestation.claims import Claims
from keybroker.policy.location import attested_location

LOCATION = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=80),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _claims(tee: str, raw: dict, platform: dict, simulated: bool = False) -> Claims:
    return Claims(tee=tee, report_version=0, debug=False, measurement="ab" * 48,
                  report_data=bytes(64), product=None, signing_key=None, tcb={},
                  simulated=simulated, platform=platform, raw=raw)


@given(value=JSON, tee=st.sampled_from(["maa", "azure-cvm", "confidential-space", "sev-snp"]),
       host_data=st.binary(min_size=0, max_size=40))
def test_a_location_is_a_lowercase_name_or_none(value: object, tee: str,
                                                host_data: bytes) -> None:
    claims = _claims(tee, {"loc": value}, {"zone": value, "location": value,
                                           "host_data": host_data.hex()}, simulated=True)
    found = attested_location(claims, "loc")
    assert found is None or LOCATION.match(found)
    if tee == "azure-cvm":
        assert found is None

