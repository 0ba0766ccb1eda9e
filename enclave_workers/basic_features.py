"""The spine's fixed featurization of partner records, with pyarrow.compute.

What it does: drops the direct identifiers (``name``, ``email``), replaces ``customer_id``
by a keyed pseudonym (HMAC-SHA-256 under the broker-released named key
``pseudonym/<producer_id>``, lowercase hex), standardizes ``amount`` with a mean and standard
deviation given in the options, and keeps ``region`` and ``event_time``.

What it does not: no keys are fetched here (the caller passes the pseudonym key), nothing is
learned from the data (the statistics are configuration, so that one batch's output does not
depend on what else was in the batch), and nothing is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

FEATURE_SCHEMA = pa.schema(
    [
        pa.field("customer_pseudonym", pa.string(), nullable=False),
        pa.field("amount_z", pa.float64(), nullable=False),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("region", pa.string(), nullable=False),
    ]
)
DROPPED_IDENTIFIERS = ("name", "email")
PSEUDONYM_KEY_PREFIX = "pseudonym/"
MIN_PSEUDONYM_KEY_BYTES = 16


class FeatureError(Exception):
    """Base of featurization errors (bad settings, a key too short, a missing column)."""


@dataclass(frozen=True)
class FeatureSettings:
    """What the fixed featurization needs from configuration; validated on construction."""

    amount_mean: float = 0.0
    amount_std: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.amount_mean):
            raise FeatureError("amount_mean must be a finite number")
        if not math.isfinite(self.amount_std) or self.amount_std <= 0:
            raise FeatureError("amount_std must be a finite number greater than 0")


def pseudonym_key_name(producer_id: str) -> str:
    """The named broker key that pseudonymizes one producer's customer ids."""
    return PSEUDONYM_KEY_PREFIX + producer_id


def pseudonymize(values: pa.ChunkedArray | pa.Array, key: bytes) -> pa.Array:
    """HMAC-SHA-256 of each UTF-8 value under ``key``, as lowercase hex."""
    if len(key) < MIN_PSEUDONYM_KEY_BYTES:
        raise FeatureError(f"pseudonym key is shorter than {MIN_PSEUDONYM_KEY_BYTES} bytes")
    digests = [
        None if value is None
        else hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        for value in values.to_pylist()
    ]
    return pa.array(digests, type=pa.string())


def featurize(table: pa.Table, *, pseudonym_key: bytes, settings: FeatureSettings) -> pa.Table:
    """Partner rows (``records.INPUT_SCHEMA``, nulls already rejected) -> ``FEATURE_SCHEMA``."""
    missing = [n for n in ("customer_id", "amount", "event_time", "region")
               if n not in table.column_names]
    if missing:
        raise FeatureError(f"table lacks column(s) needed for features: {', '.join(missing)}")
    amount = table.column("amount").cast(pa.float64())
    amount_z = pc.divide(pc.subtract(amount, settings.amount_mean), settings.amount_std)
    columns = [
        pseudonymize(table.column("customer_id"), pseudonym_key),
        amount_z,
        table.column("event_time").cast(pa.timestamp("us", tz="UTC")),
        table.column("region").cast(pa.string()),
    ]
    try:
        return pa.Table.from_arrays(columns, schema=FEATURE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise FeatureError(f"featurized columns do not fit the feature schema: "
                           f"{str(exc).splitlines()[0][:200]}") from None
