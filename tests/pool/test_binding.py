"""The report_data binding extended with bound keys: v1 bytes unchanged, extension distinct."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave_workers.pool.channel import POOL_CHANNEL_LABEL, channel_binding
from envelope import KeyTransportError, report_data_binding
from envelope.transport import REPORT_DATA_DOMAIN

KEY = bytes(range(256)) * 4 + bytes(192)          # 1216 bytes, the HPKE public key's size
NONCE = b"\x01" * 32


def test_without_bound_keys_the_binding_is_v1() -> None:
    expected = hashlib.sha512(REPORT_DATA_DOMAIN + (32).to_bytes(4, "big") + NONCE
                              + (1216).to_bytes(4, "big") + KEY).digest()
    assert report_data_binding(NONCE, KEY) == expected
    assert report_data_binding(NONCE, KEY, bound_keys={}) == expected


def test_a_bound_key_extends_the_same_digest() -> None:
    label = POOL_CHANNEL_LABEL.encode()
    expected = hashlib.sha512(REPORT_DATA_DOMAIN + (32).to_bytes(4, "big") + NONCE
                              + (1216).to_bytes(4, "big") + KEY
                              + len(label).to_bytes(4, "big") + label
                              + (1216).to_bytes(4, "big") + KEY).digest()
    assert channel_binding(NONCE, KEY) == expected
    assert channel_binding(NONCE, KEY) != report_data_binding(NONCE, KEY)


@given(st.dictionaries(st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True),
                       st.binary(min_size=1, max_size=64), min_size=1, max_size=3))
def test_bound_keys_are_order_free_and_change_the_binding(bound: dict[str, bytes]) -> None:
    reordered = dict(reversed(list(bound.items())))
    assert report_data_binding(NONCE, KEY, bound_keys=bound) == report_data_binding(
        NONCE, KEY, bound_keys=reordered)
    assert report_data_binding(NONCE, KEY, bound_keys=bound) != report_data_binding(NONCE, KEY)


@pytest.mark.parametrize("bound", [{"Pool": b"k"}, {"": b"k"}, {"x" * 33: b"k"},
                                   {"pool": b""}, {"pool": b"k" * 4097}])
def test_bad_labels_and_keys_are_refused(bound: dict[str, bytes]) -> None:
    with pytest.raises(KeyTransportError):
        report_data_binding(NONCE, KEY, bound_keys=bound)
