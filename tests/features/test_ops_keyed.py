"""pseudonymize and hash_bucket against hmac/hashlib computed row by row."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.features import FeatureKeyError

from .support import KEY, run_one

texts = st.lists(st.none() | st.sampled_from(["a@x.org", "b@y.org", "", "é€😀"]) | st.text(
    max_size=12), max_size=40)
SETTINGS = settings(max_examples=40, deadline=None)


def _hmac(key: bytes, value: str) -> bytes:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).digest()


@SETTINGS
@given(values=texts)
def test_pseudonymize_hex_matches_hmac(values):
    out = run_one("string", values, {"op": "pseudonymize", "key": "tenant"},
                  keys={"tenant": KEY})["f"]
    assert out == [None if v is None else _hmac(KEY, v).hex() for v in values]


@SETTINGS
@given(values=texts)
def test_pseudonymize_binary_matches_hmac(values):
    out = run_one("string", values, {"op": "pseudonymize", "key": "t", "output": "binary"},
                  keys={"t": KEY})["f"]
    assert out == [None if v is None else _hmac(KEY, v) for v in values]


def test_pseudonymize_differs_per_tenant_key_and_hashes_integers_as_decimal():
    other = bytes(32)
    a = run_one("int64", [-12, 7, None], {"op": "pseudonymize", "key": "t"}, keys={"t": KEY})
    b = run_one("int64", [-12, 7, None], {"op": "pseudonymize", "key": "t"}, keys={"t": other})
    assert a["f"] == [_hmac(KEY, "-12").hex(), _hmac(KEY, "7").hex(), None]
    assert a["f"][:2] != b["f"][:2]


@SETTINGS
@given(values=texts, buckets=st.integers(1, 1000))
def test_hash_bucket_unkeyed_matches_sha256(values, buckets):
    out = run_one("string", values, {"op": "hash_bucket", "num_buckets": buckets})["f"]
    expected = [None if v is None else
                int.from_bytes(hashlib.sha256(v.encode()).digest()[:8], "big") % buckets
                for v in values]
    assert out == expected


def test_hash_bucket_keyed_matches_hmac():
    values = ["x", "y", None, "x"]
    out = run_one("string", values, {"op": "hash_bucket", "num_buckets": 97, "key": "k"},
                  keys={"k": KEY})["f"]
    assert out == [None if v is None else int.from_bytes(_hmac(KEY, v)[:8], "big") % 97
                   for v in values]


def test_missing_or_short_key_is_refused_by_name():
    with pytest.raises(FeatureKeyError, match=r"'tenant'.*not supplied"):
        run_one("string", ["a"], {"op": "pseudonymize", "key": "tenant"}, keys={})
    with pytest.raises(FeatureKeyError, match="'tenant' must be 16"):
        run_one("string", ["a"], {"op": "pseudonymize", "key": "tenant"},
                keys={"tenant": b"short"})
