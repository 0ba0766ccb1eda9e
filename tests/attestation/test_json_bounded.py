"""The bounded JSON loader, and every loader of untrusted JSON refusing deep nesting (typed).

``[[[[...]]]]`` a hundred thousand deep used to raise ``RecursionError`` (a 500 in the
broker, a traceback in ``attest verify``) from the Azure CVM, HCL runtime data, PCR
endorsement and MAA/Confidential Space token loaders.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.evidence.azure_vtpm import _json_answer
from enclave_workers.evidence.base import EvidenceUnavailableError
from enclave_workers.skr_errors import ReleaseTokenFormatError
from enclave_workers.skr_token import json_object
from keybroker.attestation.azure_cvm.evidence import AzureCvmEvidence, parse_azure_cvm_evidence
from keybroker.attestation.azure_cvm.hcl import parse_runtime_data
from keybroker.attestation.azure_cvm.verify import AzureCvmVerifier
from keybroker.attestation.errors import EvidenceFormatError
from keybroker.attestation.jose_encoding import load_json_object
from keybroker.attestation.json_bounded import (
    JsonBoundsError,
    load_bounded_json,
    load_bounded_object,
    nesting_depth,
)
from keybroker.attestation.jwks import JwksCache, JwksUnavailableError, parse_jwks
from keybroker.attestation.jwt_tokens import verify_rs256_token
from keybroker.attestation.tdx.collateral import parse_collateral, split_signed_response

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 20_000 + b"1" + b"}" * 20_000


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _recursive_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_recursive_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_recursive_depth(item) for item in value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_nesting_depth_matches_the_parsed_structure(value: Any) -> None:
    text = json.dumps(value)
    assert nesting_depth(text) == _recursive_depth(value)
    assert load_bounded_json(text, what="doc", max_bytes=1 << 20, max_depth=64) == value


def test_the_loader_refuses_what_it_should() -> None:
    def refused(data: bytes | str, message: str, **bounds: int) -> None:
        options = {"max_bytes": 1 << 20, **bounds}
        with pytest.raises(JsonBoundsError, match=message):
            load_bounded_json(data, what="doc", **options)

    refused(DEEP_ARRAY, "nested more than 32 levels")
    refused(DEEP_OBJECT, "nested more than 32 levels")
    refused(b"[" * 33 + b"]" * 33, "nested more than 32 levels")
    refused(b"[" * 5 + b"]" * 5, "nested more than 4 levels", max_depth=4)
    refused(b'{"a": 1, "a": 2}', "duplicate JSON key")
    refused(b"[NaN]", "NaN is not JSON")
    refused(b"[1" + b"0" * 5000 + b"]", "not valid JSON")  # int too long to convert
    refused(b"\xff", r"not valid JSON \(not UTF-8\)")
    refused(b"[1]" + b" " * 100, "exceeds the limit", max_bytes=100)
    refused(b'["' + b'\\"' * 200_000, "not valid JSON")  # an unterminated string, quickly
    assert load_bounded_json(b"[" * 32 + b"]" * 32, what="doc", max_bytes=100) is not None
    assert load_bounded_json('{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', what="doc",
                             max_bytes=100) == {"s": "[" * 35}
    with pytest.raises(EvidenceFormatError, match="doc: not a JSON object"):
        load_bounded_object(b"[]", what="doc", max_bytes=10, error=EvidenceFormatError)


@pytest.mark.parametrize("deep", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_every_attestation_loader_refuses_deep_json_with_a_typed_error(
    deep: bytes, tmp_path: Path
) -> None:
    with pytest.raises(EvidenceFormatError, match=r"nested more than|exceeds the limit"):
        parse_azure_cvm_evidence(deep[:100_000])
    with pytest.raises(EvidenceFormatError, match=r"nested more than|exceeds the limit"):
        parse_runtime_data(deep[:16_000])
    with pytest.raises(EvidenceFormatError, match="nested more than"):
        AzureCvmVerifier._pcr_values(AzureCvmEvidence(b"", b"", b""), {"pcrs": deep[:4000]})
    with pytest.raises(EvidenceFormatError, match="nested more than"):
        load_json_object(deep, "token payload", EvidenceFormatError)  # MAA, Confidential Space
    with pytest.raises(EvidenceFormatError, match="token header: nested more than"):
        token = f"{_b64url(deep[:40_000])}.{_b64url(b'{}')}.{_b64url(b'sig')}"
        verify_rs256_token(token, _unused_keys(), issuer="https://x", audience=None, now=0.0)
    with pytest.raises(JwksUnavailableError, match="nested more than"):
        parse_jwks(deep, "a test")
    with pytest.raises(EvidenceFormatError, match="collateral: nested more than"):
        parse_collateral(deep)
    with pytest.raises(EvidenceFormatError, match="collateral tcb_info: nested more than"):
        split_signed_response(deep[:100_000], "tcb_info")


def test_the_jwks_cache_file_ignores_deep_json(tmp_path: Path) -> None:
    cache_file = tmp_path / "jwks.json"
    cache_file.write_bytes(DEEP_ARRAY)
    keys = JwksCache(getter=_no_network, jwks_uri="https://x/certs", cache_file=cache_file)
    assert keys._load_cache_file(0.0) is False  # ignored like any bad cache file, no crash


@pytest.mark.parametrize("deep", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_the_worker_loaders_refuse_deep_json_with_a_typed_error(deep: bytes) -> None:
    with pytest.raises(ReleaseTokenFormatError, match="nested more than"):
        json_object(deep, "JWS payload")  # Azure Secure Key Release token
    with pytest.raises(EvidenceUnavailableError, match="nested more than"):
        _json_answer(deep, "IMDS")


def _no_network(url: str) -> bytes:
    raise JwksUnavailableError(f"no network in this test ({url})")


def _unused_keys() -> JwksCache:
    return JwksCache(getter=_no_network, jwks_uri="https://x/certs")
