"""HPKE key transport to a TEE, report_data binding and release_info encodings."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest

from envelope import (
    TEE_KEY_ALGORITHM,
    TEE_PUBLIC_KEY_LENGTH,
    EnvelopeError,
    KeyTransportError,
    TeeKeyPair,
    release_info,
    report_data_binding,
    seal_to_tee,
)
from envelope.transport import TeePublicKey

INFO = release_info("dek-release", "ab" * 32)


@pytest.fixture(scope="module")
def tee() -> TeeKeyPair:
    return TeeKeyPair.generate()


def test_public_key_wire_form(tee: TeeKeyPair) -> None:
    public = tee.public_bytes()
    assert len(public) == TEE_PUBLIC_KEY_LENGTH == 1184 + 32
    assert TEE_KEY_ALGORITHM == "MLKEM768-X25519"
    assert TeeKeyPair.generate().public_bytes() != public


def test_round_trip(tee: TeeKeyPair) -> None:
    secret = os.urandom(32)
    sealed = seal_to_tee(tee.public_bytes(), secret, INFO)
    assert len(sealed) == 1120 + 32 + 16
    assert tee.open(sealed, INFO) == secret
    assert seal_to_tee(tee.public_bytes(), secret, INFO) != sealed  # randomized


def test_empty_and_large_secrets(tee: TeeKeyPair) -> None:
    for secret in (b"", os.urandom(1 << 16)):
        assert tee.open(seal_to_tee(tee.public_bytes(), secret, INFO), INFO) == secret
    with pytest.raises(KeyTransportError, match="secret length 65537 exceeds 65536"):
        seal_to_tee(tee.public_bytes(), bytes((1 << 16) + 1), INFO)


def test_wrong_key_fails_uniformly(tee: TeeKeyPair) -> None:
    sealed = seal_to_tee(tee.public_bytes(), b"k" * 32, INFO)
    with pytest.raises(KeyTransportError, match=r"^key transport failed$"):
        TeeKeyPair.generate().open(sealed, INFO)


def test_wrong_info_fails(tee: TeeKeyPair) -> None:
    sealed = seal_to_tee(tee.public_bytes(), b"k" * 32, INFO)
    with pytest.raises(KeyTransportError, match=r"^key transport failed$"):
        tee.open(sealed, release_info("dek-generate", "ab" * 32))


@pytest.mark.parametrize("position", [0, 1119, 1120, -17, -1])
def test_tampered_sealed_key_fails(tee: TeeKeyPair, position: int) -> None:
    sealed = bytearray(seal_to_tee(tee.public_bytes(), b"k" * 32, INFO))
    sealed[position] ^= 0x01
    with pytest.raises(KeyTransportError, match=r"^key transport failed$"):
        tee.open(bytes(sealed), INFO)


def test_sealed_length_is_bounded(tee: TeeKeyPair) -> None:
    with pytest.raises(KeyTransportError, match="sealed key length 1135 is outside 1136"):
        tee.open(bytes(1135), INFO)
    with pytest.raises(KeyTransportError, match="sealed key length 66673 is outside"):
        tee.open(bytes(1136 + (1 << 16) + 1), INFO)
    with pytest.raises(KeyTransportError, match="info length 1025 exceeds 1024"):
        tee.open(bytes(1200), bytes(1025))


@pytest.mark.parametrize("length", [0, 32, 1184, 1215, 1217])
def test_public_key_length_is_checked(length: int) -> None:
    with pytest.raises(KeyTransportError, match=f"TEE public key length {length}, expected 1216"):
        seal_to_tee(bytes(length), b"k", INFO)


def test_invalid_public_keys_are_rejected(tee: TeeKeyPair) -> None:
    public = tee.public_bytes()
    with pytest.raises(KeyTransportError, match="not a valid ML-KEM-768"):
        seal_to_tee(b"\xff" * 1184 + public[1184:], b"k", INFO)
    with pytest.raises(KeyTransportError, match="rejected by HPKE"):
        seal_to_tee(public[:1184] + bytes(32), b"k", INFO)  # X25519 low-order point


def test_key_pair_does_not_leak(tee: TeeKeyPair) -> None:
    assert TEE_KEY_ALGORITHM in repr(tee)
    assert hashlib.sha256(tee.public_bytes()).hexdigest()[:16] in repr(tee)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(tee)


def test_constructor_checks_key_types() -> None:
    with pytest.raises(KeyTransportError, match="ML-KEM-768 private key"):
        TeeKeyPair(b"x", b"y")  # type: ignore[arg-type]


class TestReportDataBinding:
    NONCE = bytes(range(32))

    def test_is_64_bytes_and_the_documented_hash(self, tee: TeeKeyPair) -> None:
        public = tee.public_bytes()
        binding = report_data_binding(self.NONCE, public)
        assert len(binding) == 64
        expected = hashlib.sha512(
            b"sealbeam/report-data/v1\x00"
            + (32).to_bytes(4, "big") + self.NONCE
            + (1216).to_bytes(4, "big") + public
        ).digest()
        assert binding == expected

    def test_changes_with_either_input(self, tee: TeeKeyPair) -> None:
        public = tee.public_bytes()
        base = report_data_binding(self.NONCE, public)
        other_nonce = report_data_binding(bytes(range(1, 33)), public)
        other_key = report_data_binding(self.NONCE, TeeKeyPair.generate().public_bytes())
        longer_nonce = report_data_binding(self.NONCE + b"\x00", public)
        assert len({base, other_nonce, other_key, longer_nonce}) == 4

    def test_is_deterministic(self, tee: TeeKeyPair) -> None:
        public = tee.public_bytes()
        assert report_data_binding(self.NONCE, public) == report_data_binding(
            bytearray(self.NONCE), memoryview(public)
        )

    @pytest.mark.parametrize("length", [0, 15, 257])
    def test_nonce_bounds(self, tee: TeeKeyPair, length: int) -> None:
        with pytest.raises(KeyTransportError, match=f"nonce length {length} is outside 16..256"):
            report_data_binding(bytes(length), tee.public_bytes())

    def test_key_length(self) -> None:
        with pytest.raises(KeyTransportError, match="TEE public key length 32"):
            report_data_binding(self.NONCE, bytes(32))


class TestReleaseInfo:
    def test_documented_encoding(self) -> None:
        assert release_info("dek-release", "abc") == (
            b"sealbeam/key-release/v1\x00" + b"\x00\x0bdek-release" + b"\x00\x03abc"
        )

    def test_unambiguous(self) -> None:
        assert release_info("dek", "-release") != release_info("dek-", "release")

    @pytest.mark.parametrize(
        ("purpose", "key_id", "message"),
        [
            ("", "k", "purpose is empty"),
            ("p", "", "key id is empty"),
            ("p" * 129, "k", "purpose length 129 exceeds 128"),
            ("p", "k" * 257, "key id length 257 exceeds 256"),
            ("p\n", "k", "purpose contains a control character"),
        ],
    )
    def test_bounds(self, purpose: str, key_id: str, message: str) -> None:
        with pytest.raises(KeyTransportError, match=message):
            release_info(purpose, key_id)

    def test_errors_are_envelope_errors(self) -> None:
        assert issubclass(KeyTransportError, EnvelopeError)


def test_a_parsed_public_key_seals_as_the_bytes_do(tee: TeeKeyPair) -> None:
    parsed = TeePublicKey.from_bytes(tee.public_bytes())
    assert parsed.raw == tee.public_bytes()
    secrets = [os.urandom(32) for _ in range(3)]
    for secret in secrets:  # one parse, several seals, each opened by the TEE
        assert tee.open(seal_to_tee(parsed, secret, INFO), INFO) == secret
    with pytest.raises(KeyTransportError):
        TeeKeyPair.generate().open(seal_to_tee(parsed, secrets[0], INFO), INFO)
    assert hashlib.sha256(tee.public_bytes()).hexdigest()[:16] in repr(parsed)


def test_a_parsed_public_key_is_checked_as_the_bytes_are(tee: TeeKeyPair) -> None:
    public = tee.public_bytes()
    with pytest.raises(KeyTransportError, match="TEE public key length 1215"):
        TeePublicKey.from_bytes(public[:-1])
    with pytest.raises(KeyTransportError, match="not a valid ML-KEM-768"):
        TeePublicKey.from_bytes(b"\xff" * 1184 + public[1184:])
    low_order = TeePublicKey.from_bytes(public[:1184] + bytes(32))  # X25519 low-order point
    with pytest.raises(KeyTransportError, match="rejected by HPKE"):
        seal_to_tee(low_order, b"k", INFO)
