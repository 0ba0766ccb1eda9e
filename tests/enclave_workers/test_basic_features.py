"""The fixed featurization: identifiers dropped, HMAC pseudonyms, standardized amounts."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from enclave_workers.basic_features import (
    FEATURE_SCHEMA,
    FeatureError,
    FeatureSettings,
    featurize,
    pseudonym_key_name,
)
from enclave_workers.records import parse_records
from tests.enclave_workers.broker_env import person

KEY = bytes(range(32))


def _table(count: int = 4):
    return parse_records([json.dumps(person(i, "eu")).encode() for i in range(count)]).table


def test_features_drop_identifiers_and_pseudonymize_with_hmac() -> None:
    features = featurize(_table(), pseudonym_key=KEY, settings=FeatureSettings(100.0, 2.0))
    assert features.schema == FEATURE_SCHEMA
    rows = features.to_pylist()
    expected = hmac.new(KEY, b"cust-secret-00001", hashlib.sha256).hexdigest()
    assert rows[1]["customer_pseudonym"] == expected
    assert [r["amount_z"] for r in rows] == [0.0, 0.5, 1.0, 1.5]
    assert {r["region"] for r in rows} == {"eu"}
    text = json.dumps(rows, default=str)
    assert "Zebulon" not in text and "private.example" not in text and "cust-secret" not in text


def test_pseudonyms_depend_on_the_key() -> None:
    one = featurize(_table(1), pseudonym_key=KEY, settings=FeatureSettings())
    other = featurize(_table(1), pseudonym_key=bytes(32), settings=FeatureSettings())
    assert one.column("customer_pseudonym") != other.column("customer_pseudonym")


@pytest.mark.parametrize(("mean", "std"), [(0.0, 0.0), (0.0, -1.0), (float("nan"), 1.0),
                                           (0.0, float("inf"))])
def test_bad_statistics_are_refused(mean: float, std: float) -> None:
    with pytest.raises(FeatureError):
        FeatureSettings(mean, std)


def test_short_keys_and_missing_columns_are_refused() -> None:
    with pytest.raises(FeatureError, match="shorter"):
        featurize(_table(), pseudonym_key=b"short", settings=FeatureSettings())
    with pytest.raises(FeatureError, match="amount"):
        featurize(_table().drop(["amount"]), pseudonym_key=KEY, settings=FeatureSettings())


def test_pseudonym_key_name_is_per_producer() -> None:
    assert pseudonym_key_name("acme") == "pseudonym/acme"
