"""DataKey, KeyReference, WrappedKey and dek_wrap_aad: validation, secrecy, canonical encodings."""

from __future__ import annotations

import copy
import hashlib
import pickle

import pytest

from envelope import (
    DataKey,
    EnvelopeFormatError,
    EnvelopeLimitError,
    KeyReference,
    WrappedKey,
    dek_wrap_aad,
)


class TestDataKey:
    def test_repr_and_str_never_show_the_key(self) -> None:
        key_bytes = bytes(range(0x41, 0x61))  # printable, so any leak would be visible
        key = DataKey(key_bytes, simulated=True)
        for shown in (repr(key), str(key), f"{key}", repr([key])):
            assert key_bytes.hex() not in shown
            assert key_bytes.decode() not in shown
            assert "secret" in shown
        assert "simulated=True" in repr(key)

    @pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
    def test_rejects_wrong_length(self, length: int) -> None:
        with pytest.raises(EnvelopeFormatError, match=f"data key length {length}, expected 32"):
            DataKey(bytes(length))

    def test_rejects_non_bytes(self) -> None:
        with pytest.raises(EnvelopeFormatError, match="data key must be bytes"):
            DataKey("a" * 32)  # type: ignore[arg-type]

    def test_generate_is_random_and_32_bytes(self) -> None:
        first, second = DataKey.generate(), DataKey.generate()
        assert len(first.secret_bytes()) == 32
        assert first.secret_bytes() != second.secret_bytes()
        assert first.simulated is False
        assert DataKey.generate(simulated=True).simulated is True

    def test_secret_bytes_returns_the_key(self) -> None:
        assert DataKey(bytearray(range(32))).secret_bytes() == bytes(range(32))

    def test_equality_is_by_value_and_unhashable(self) -> None:
        assert DataKey(bytes(32)) == DataKey(bytes(32))
        assert DataKey(bytes(32)) != DataKey(b"\x01" + bytes(31))
        assert DataKey(bytes(32)) != DataKey(bytes(32), simulated=True)
        with pytest.raises(TypeError):
            hash(DataKey(bytes(32)))

    def test_cannot_be_pickled_but_copies_are_itself(self) -> None:
        key = DataKey.generate()
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(key)
        assert copy.copy(key) is key
        assert copy.deepcopy({"k": key})["k"] is key


class TestKeyReferenceAndWrappedKey:
    def test_kek_reference_bounds(self) -> None:
        with pytest.raises(EnvelopeFormatError, match="kek uri is empty"):
            KeyReference("", "1")
        with pytest.raises(EnvelopeLimitError, match="kek uri length 1025 exceeds 1024"):
            KeyReference("x" * 1025, "1")
        with pytest.raises(EnvelopeLimitError, match="kek version length 129 exceeds 128"):
            KeyReference("local://k", "9" * 129)
        with pytest.raises(EnvelopeFormatError, match="kek version contains a control character"):
            KeyReference("local://k", "1\n")

    def test_wrapped_key_bounds_and_coercion(self) -> None:
        kek = KeyReference("local://k", "1")
        assert WrappedKey(kek, bytearray(b"abc")).ciphertext == b"abc"
        assert isinstance(WrappedKey(kek, bytearray(b"abc")).ciphertext, bytes)
        with pytest.raises(EnvelopeFormatError, match="wrapped key is empty"):
            WrappedKey(kek, b"")
        with pytest.raises(EnvelopeLimitError, match="wrapped key length 4097 exceeds 4096"):
            WrappedKey(kek, bytes(4097))
        with pytest.raises(EnvelopeFormatError, match="kek must be KeyReference"):
            WrappedKey(("local://k", "1"), b"abc")  # type: ignore[arg-type]

    def test_key_id_is_the_documented_sha256(self) -> None:
        wrapped = WrappedKey(KeyReference("local://keyring/eu/kek-1", "1"), b"\x00\xff")
        expected = hashlib.sha256(
            b"sealbeam/key-id/v1\x00"
            + b"\x00\x18local://keyring/eu/kek-1"
            + b"\x00\x011"
            + b"\x00\x02\x00\xff"
        ).hexdigest()
        assert wrapped.key_id == expected

    def test_key_id_changes_with_every_part_and_is_unambiguous(self) -> None:
        base = WrappedKey(KeyReference("local://a", "12"), b"ct")
        variants = [
            WrappedKey(KeyReference("local://b", "12"), b"ct"),
            WrappedKey(KeyReference("local://a", "13"), b"ct"),
            WrappedKey(KeyReference("local://a", "12"), b"cu"),
            WrappedKey(KeyReference("local://a1", "2"), b"ct"),  # same concatenation
            WrappedKey(KeyReference("local://a", "1"), b"2ct"),
        ]
        ids = {base.key_id, *(variant.key_id for variant in variants)}
        assert len(ids) == len(variants) + 1


class TestDekWrapAad:
    def test_documented_encoding(self) -> None:
        assert dek_wrap_aad("eu", "acme") == (
            b"sealbeam/dek-wrap/v1\x00" + b"\x00\x02eu" + b"\x00\x04acme"
        )

    def test_length_prefixes_make_it_injective(self) -> None:
        assert dek_wrap_aad("eua", "cme") != dek_wrap_aad("eu", "acme")

    def test_utf8_lengths_are_bytes(self) -> None:
        assert dek_wrap_aad("zürich", "p").endswith(b"\x00\x07z\xc3\xbcrich\x00\x01p")

    def test_bounds(self) -> None:
        with pytest.raises(EnvelopeLimitError, match="region length 300 exceeds 64"):
            dek_wrap_aad("r" * 300, "acme")
        with pytest.raises(EnvelopeFormatError, match="producer id is empty"):
            dek_wrap_aad("eu", "")
        with pytest.raises(EnvelopeFormatError, match="region must be str"):
            dek_wrap_aad(b"eu", "acme")  # type: ignore[arg-type]
