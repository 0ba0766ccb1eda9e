"""PME master keys backed by broker-style output DEKs: blob format, scope checks, a real file."""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pqe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.batch_processor import default_feature_spec
from enclave_workers.features import FINGERPRINT_METADATA_KEY, compile_spec
from enclave_workers.features.pme import (
    ParquetEncryptionError,
    pseudonymized_columns,
    read_encrypted_parquet,
)
from enclave_workers.features.pme_kms import callback_kms_client_factory
from enclave_workers.pme_keys import (
    ROLE_FEATURES,
    ROLE_PSEUDONYMS,
    PmeKeyAuthenticationError,
    PmeKeyFormatError,
    PmeKeyScopeError,
    PmeMasterKeys,
    WrappedPmeKey,
    keyring_unwrapper,
    master_keys_for,
    write_pme_table,
)
from enclave_workers.records import parse_records
from envelope import DataKey, dek_wrap_aad
from keybroker.kms.local import LocalKeyring
from tests.enclave_workers.broker_env import person

KEK_SIZE = 16


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyring:
    return LocalKeyring.create(tmp_path_factory.mktemp("kms") / "keyring.json", ["eu", "us"])


def _output_key(keyring: LocalKeyring, region: str, producer: str = "acme"):
    """What the broker's generate returns: a DEK and its wrap under the region's KEK."""
    dek = DataKey.generate()
    wrapped = keyring.wrap(keyring.kek_for_region(region), dek.secret_bytes(),
                           dek_wrap_aad(region, producer))
    return dek, wrapped


def _master_keys(keyring: LocalKeyring, region: str = "eu") -> PmeMasterKeys:
    return master_keys_for({ROLE_FEATURES: _output_key(keyring, region),
                            ROLE_PSEUDONYMS: _output_key(keyring, region)}, region, "acme")


def test_wrap_then_unwrap_inside_and_through_the_kms(keyring: LocalKeyring) -> None:
    keys = _master_keys(keyring)
    features = keys.by_role(ROLE_FEATURES)
    kek = bytes(range(KEK_SIZE))
    blob = keys.wrap(kek, features.key_id)
    parsed = WrappedPmeKey.parse(blob)
    assert (parsed.role, parsed.region, parsed.producer_id) == (ROLE_FEATURES, "eu", "acme")
    assert parsed.wrapped_dek == features.wrapped_dek
    assert parsed.master_key_id == features.key_id
    assert keys.unwrap(blob, features.key_id) == kek
    reader = keyring_unwrapper(keyring.unwrap, region="eu",
                               expected_kek_uri=keyring.kek_for_region("eu"))
    assert reader(blob, features.key_id) == kek
    assert kek not in blob


def test_each_role_needs_its_own_dek(keyring: LocalKeyring) -> None:
    shared = _output_key(keyring, "eu")
    with pytest.raises(PmeKeyScopeError, match="share one output DEK"):
        master_keys_for({ROLE_FEATURES: shared, ROLE_PSEUDONYMS: shared}, "eu", "acme")


def test_a_blob_does_not_open_under_another_master_key_id(keyring: LocalKeyring) -> None:
    keys = _master_keys(keyring)
    features, pseudonyms = keys.by_role(ROLE_FEATURES), keys.by_role(ROLE_PSEUDONYMS)
    blob = keys.wrap(bytes(KEK_SIZE), features.key_id)
    with pytest.raises(PmeKeyScopeError, match="names master key"):
        keys.unwrap(blob, pseudonyms.key_id)


def test_any_altered_byte_fails_authentication_or_structure(keyring: LocalKeyring) -> None:
    keys = _master_keys(keyring)
    features = keys.by_role(ROLE_FEATURES)
    blob = keys.wrap(bytes(range(32)), features.key_id)
    header_length = len(WrappedPmeKey.parse(blob).header_bytes())
    for offset in range(header_length, len(blob)):      # nonce and ciphertext
        altered = bytearray(blob)
        altered[offset] ^= 0x01
        with pytest.raises(PmeKeyAuthenticationError):
            keys.unwrap(bytes(altered), features.key_id)
    for offset in range(header_length):                 # header: bound in id, aad, or parse
        altered = bytearray(blob)
        altered[offset] ^= 0x01
        with pytest.raises((PmeKeyFormatError, PmeKeyScopeError, PmeKeyAuthenticationError)):
            keys.unwrap(bytes(altered), features.key_id)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600))
def test_parse_raises_only_its_own_format_error(data: bytes) -> None:
    with contextlib.suppress(PmeKeyFormatError):
        WrappedPmeKey.parse(data)


def test_every_truncation_is_refused(keyring: LocalKeyring) -> None:
    keys = _master_keys(keyring)
    key_id = keys.by_role(ROLE_FEATURES).key_id
    blob = keys.wrap(bytes(32), key_id)
    for length in range(len(blob)):
        # structure first; a cut that still leaves an AES-key-sized ciphertext fails the tag
        with pytest.raises((PmeKeyFormatError, PmeKeyAuthenticationError)):
            keys.unwrap(blob[:length], key_id)
    with pytest.raises(PmeKeyFormatError, match="over"):
        WrappedPmeKey.parse(blob + bytes(20_000))


def test_a_reader_refuses_other_regions_keks_and_roles_before_asking_the_kms(
        keyring: LocalKeyring) -> None:
    keys = _master_keys(keyring, "us")
    blob = keys.wrap(bytes(KEK_SIZE), keys.by_role(ROLE_PSEUDONYMS).key_id)
    key_id = keys.by_role(ROLE_PSEUDONYMS).key_id
    calls: list[object] = []

    def counting_unwrap(wrapped, aad):
        calls.append(wrapped)
        return keyring.unwrap(wrapped, aad)

    eu_reader = keyring_unwrapper(counting_unwrap, region="eu", expected_kek_uri=None)
    with pytest.raises(PmeKeyScopeError, match="region 'us'"):
        eu_reader(blob, key_id)
    wrong_kek = keyring_unwrapper(counting_unwrap, region="us",
                                  expected_kek_uri=keyring.kek_for_region("eu"))
    with pytest.raises(PmeKeyScopeError, match="KEK"):
        wrong_kek(blob, key_id)
    features_only = keyring_unwrapper(counting_unwrap, region="us", expected_kek_uri=None,
                                      roles=[ROLE_FEATURES])
    with pytest.raises(PmeKeyScopeError, match="pseudonyms"):
        features_only(blob, key_id)
    assert calls == []
    with pytest.raises(PmeKeyScopeError, match="unknown"):
        keyring_unwrapper(counting_unwrap, region="us", expected_kek_uri=None, roles=["all"])


def _featurized(count: int) -> tuple[object, pa.Table]:
    compiled = compile_spec(default_feature_spec())
    rows = parse_records([json.dumps({**person(i, "eu"), "amount": 20.0 + i % 3}).encode()
                          for i in range(count)])
    result = compiled.apply(rows.table, {"tenant": bytes(range(32))})
    return compiled, result.table


def _read(path: Path, keyring: LocalKeyring, roles, columns=None) -> pa.Table:
    unwrap = keyring_unwrapper(keyring.unwrap, region="eu",
                               expected_kek_uri=keyring.kek_for_region("eu"), roles=roles)

    def no_wrap(key: bytes, key_id: str) -> bytes:
        raise AssertionError("a reader never wraps")

    return read_encrypted_parquet(
        path, kms_client_factory=callback_kms_client_factory(no_wrap, unwrap),
        kms_connection_config=pqe.KmsConnectionConfig(), columns=columns)


def test_a_pme_file_reads_back_with_pyarrows_reader_and_the_kms(
        keyring: LocalKeyring, tmp_path: Path) -> None:
    compiled, table = _featurized(12)
    path = tmp_path / "part.parquet"
    path.write_bytes(write_pme_table(table, compiled, _master_keys(keyring)))
    assert path.read_bytes()[:4] == b"PARE"
    with pytest.raises(OSError, match="no decryption"):
        pq.read_table(path)
    unwrap = keyring_unwrapper(keyring.unwrap, region="eu",
                               expected_kek_uri=keyring.kek_for_region("eu"))
    factory = callback_kms_client_factory(lambda k, i: b"", unwrap)
    properties = pqe.CryptoFactory(factory).file_decryption_properties(
        pqe.KmsConnectionConfig(),
        pqe.DecryptionConfiguration(cache_lifetime=datetime.timedelta(minutes=1)))
    back = pq.ParquetFile(path, decryption_properties=properties).read()
    assert back.equals(table)
    assert back.schema.metadata[FINGERPRINT_METADATA_KEY] == compiled.fingerprint.encode()


def test_a_features_only_reader_cannot_read_pseudonym_columns(keyring: LocalKeyring,
                                                               tmp_path: Path) -> None:
    compiled, table = _featurized(9)
    path = tmp_path / "part.parquet"
    path.write_bytes(write_pme_table(table, compiled, _master_keys(keyring)))
    pseudonyms = list(pseudonymized_columns(compiled))
    features = [name for name in table.column_names if name not in pseudonyms]
    assert pseudonyms == ["customer_pseudonym"]
    read = _read(path, keyring, [ROLE_FEATURES], columns=features)
    assert read.equals(table.select(features))
    with pytest.raises(ParquetEncryptionError, match="PmeKeyScopeError"):
        _read(path, keyring, [ROLE_FEATURES], columns=pseudonyms)
    with pytest.raises(ParquetEncryptionError, match="PmeKeyScopeError"):
        _read(path, keyring, [ROLE_PSEUDONYMS], columns=pseudonyms)   # footer is features
