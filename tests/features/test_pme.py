"""Parquet Modular Encryption output: written by ``pme``, read back by pyarrow's own PME reader.

The KMS behind every test is an in-test AES-GCM keyring (master keys in a dict), reached through
``CallbackKmsClient``; readers get a subset of its master keys to show per-column release.
"""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pqe
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.features import FeatureError, FeatureSpec, compile_spec
from enclave_workers.features.pme import (
    DATA_KEY_LENGTH_BITS,
    KEY_CACHE_LIFETIME,
    CallbackKmsClient,
    ParquetDecryptionError,
    ParquetEncryptionError,
    ParquetKeyAssignmentError,
    ParquetKmsError,
    callback_kms_client_factory,
    column_keys_for_spec,
    encryption_configuration,
    pseudonymized_columns,
    read_encrypted_parquet,
    write_encrypted_parquet,
)
from enclave_workers.features.pme_kms import MAX_WRAPPED_TEXT_CHARS

FOOTER = "footer-key-id"
PSEUDONYM = "pseudonym-key-id"
FEATURES = "features-key-id"
TENANT_KEY = bytes(range(100, 132))
PSEUDONYM_COLUMNS = ["user", "account"]
FEATURE_COLUMNS = ["amount_z", "amount_band", "country__DE", "country__FR", "country__oov"]


class AesGcmKeyring:
    """Master keys in a dict; wrap = nonce || AES-256-GCM(key, aad = master key id)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys
        self.unwrap_requests: list[str] = []

    @classmethod
    def generate(cls, *key_ids: str) -> AesGcmKeyring:
        return cls({key_id: AESGCM.generate_key(256) for key_id in key_ids})

    def subset(self, *key_ids: str) -> AesGcmKeyring:
        return AesGcmKeyring({key_id: self.keys[key_id] for key_id in key_ids})

    def wrap(self, key: bytes, master_key_id: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.keys[master_key_id]).encrypt(nonce, key,
                                                                master_key_id.encode())

    def unwrap(self, blob: bytes, master_key_id: str) -> bytes:
        self.unwrap_requests.append(master_key_id)
        return AESGCM(self.keys[master_key_id]).decrypt(blob[:12], blob[12:],
                                                        master_key_id.encode())

    def factory(self):
        return callback_kms_client_factory(self.wrap, self.unwrap)

    def decryption_properties(self) -> pqe.FileDecryptionProperties:
        """What any pyarrow user would build: CryptoFactory over this keyring."""
        return pqe.CryptoFactory(self.factory()).file_decryption_properties(
            pqe.KmsConnectionConfig(),
            pqe.DecryptionConfiguration(cache_lifetime=KEY_CACHE_LIFETIME))


SPEC = {
    "version": 1,
    "input": {"columns": [
        {"name": "email", "type": "string", "identifier": True},
        {"name": "account_id", "type": "int64", "identifier": True},
        {"name": "amount", "type": "float64", "nullable": False, "min": 0},
        {"name": "country", "type": "string"},
    ]},
    "features": [
        {"name": "user", "op": "pseudonymize", "input": "email", "key": "tenant"},
        {"name": "amount_z", "op": "standardize", "input": "amount", "mean": 100.0, "std": 25.0},
        {"name": "account", "op": "pseudonymize", "input": "account_id", "key": "tenant",
         "output": "binary"},
        {"name": "amount_band", "op": "bucketize", "input": "amount",
         "boundaries": [10, 100, 1000]},
        {"name": "country", "op": "one_hot", "input": "country", "vocabulary": ["DE", "FR"]},
    ],
}


@pytest.fixture(scope="module")
def compiled():
    return compile_spec(FeatureSpec.from_dict(SPEC))


def featurize(compiled, emails: list[str], amounts: list[float]) -> pa.Table:
    count = len(emails)
    raw = pa.table({
        "email": pa.array(emails, pa.string()),
        "account_id": pa.array([900_000 + i for i in range(count)], pa.int64()),
        "amount": pa.array(amounts, pa.float64()),
        "country": pa.array([["DE", "FR", "US"][i % 3] for i in range(count)], pa.string()),
    })
    result = compiled.apply(raw, {"tenant": TENANT_KEY})
    assert result.violations == [] and result.table.num_rows == count
    return result.table


@pytest.fixture(scope="module")
def table(compiled) -> pa.Table:
    emails = [f"person.{i:03d}@partner-example.org" for i in range(40)]
    amounts = [13.37 + 7.919 * i for i in range(40)]
    return featurize(compiled, emails, amounts)


@pytest.fixture
def keyring() -> AesGcmKeyring:
    return AesGcmKeyring.generate(FOOTER, PSEUDONYM, FEATURES)


def write(table, target, keyring, compiled, **options):
    write_encrypted_parquet(
        table, target,
        column_keys=column_keys_for_spec(compiled, pseudonym_key_id=PSEUDONYM,
                                         features_key_id=FEATURES),
        footer_key=FOOTER, kms_client_factory=keyring.factory(),
        kms_connection_config=pqe.KmsConnectionConfig(), **options)


def read(path, keyring, **options) -> pa.Table:
    return read_encrypted_parquet(path, kms_client_factory=keyring.factory(),
                                  kms_connection_config=pqe.KmsConnectionConfig(), **options)


@pytest.fixture
def written(tmp_path, table, keyring, compiled) -> Path:
    path = tmp_path / "features.parquet"
    write(table, path, keyring, compiled)
    return path


# --- the column-key assignment ------------------------------------------------------------

def test_assignment_from_spec_puts_pseudonyms_under_their_own_key_and_covers_every_column(
        compiled):
    assert pseudonymized_columns(compiled) == ("user", "account")
    assignment = column_keys_for_spec(compiled, pseudonym_key_id=PSEUDONYM,
                                      features_key_id=FEATURES)
    assert assignment == {PSEUDONYM: PSEUDONYM_COLUMNS, FEATURES: FEATURE_COLUMNS}
    assigned = [column for columns in assignment.values() for column in columns]
    assert sorted(assigned) == sorted(compiled.output_schema.names)


def test_assignment_without_pseudonyms_has_only_the_features_key():
    spec = compile_spec(FeatureSpec.from_dict({
        "version": 1, "input": {"columns": [{"name": "x", "type": "float64"}]},
        "features": [{"name": "x_z", "op": "standardize", "input": "x", "mean": 0, "std": 1}]}))
    assert column_keys_for_spec(spec, pseudonym_key_id=PSEUDONYM,
                                features_key_id=FEATURES) == {FEATURES: ["x_z"]}


def test_assignment_refuses_one_key_for_both_roles(compiled):
    with pytest.raises(ParquetKeyAssignmentError, match="distinct master keys"):
        column_keys_for_spec(compiled, pseudonym_key_id=FEATURES, features_key_id=FEATURES)


@pytest.mark.parametrize(("column_keys", "message"), [
    ({PSEUDONYM: PSEUDONYM_COLUMNS, FEATURES: FEATURE_COLUMNS[:-1]},
     "no master key for column.*'country__oov'"),
    ({PSEUDONYM: PSEUDONYM_COLUMNS, FEATURES: [*FEATURE_COLUMNS, "email"]},
     "lacks: 'email'"),
    ({PSEUDONYM: PSEUDONYM_COLUMNS, FEATURES: [*FEATURE_COLUMNS, "user"]},
     "'user' is assigned to master keys"),
    ({PSEUDONYM: PSEUDONYM_COLUMNS, FEATURES: FEATURE_COLUMNS, "spare": []}, "non-empty list"),
    ({PSEUDONYM: "user", FEATURES: FEATURE_COLUMNS}, "non-empty list"),
    ({"pseudo:nym": PSEUDONYM_COLUMNS, FEATURES: FEATURE_COLUMNS}, "'pseudo:nym' contains"),
    ({" padded": PSEUDONYM_COLUMNS, FEATURES: FEATURE_COLUMNS}, "edge whitespace"),
    ({}, "must map master key ids"),
])
def test_write_refuses_an_assignment_that_does_not_cover_each_column_once(
        tmp_path, table, keyring, column_keys, message):
    path = tmp_path / "out.parquet"
    with pytest.raises(ParquetKeyAssignmentError, match=message):
        write_encrypted_parquet(table, path, column_keys=column_keys, footer_key=FOOTER,
                                kms_client_factory=keyring.factory(),
                                kms_connection_config=pqe.KmsConnectionConfig())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("columns", "message"), [
    ({"a;b": pa.array([1.0])}, "column name 'a;b'"),
    ({"nested": pa.array([{"x": 1}])}, "'nested' is nested"),
])
def test_write_refuses_columns_pme_cannot_name(tmp_path, keyring, columns, message):
    bad = pa.table(columns)
    with pytest.raises(ParquetKeyAssignmentError, match=message):
        write_encrypted_parquet(bad, tmp_path / "x.parquet",
                                column_keys={FEATURES: bad.column_names}, footer_key=FOOTER,
                                kms_client_factory=keyring.factory(),
                                kms_connection_config=pqe.KmsConnectionConfig())


def test_configuration_is_encrypted_footer_double_wrapped_256_bit_with_cache_lifetime():
    config = encryption_configuration({FEATURES: ["a"]}, FOOTER)
    assert config.footer_key == FOOTER
    assert config.column_keys == {FEATURES: ["a"]}
    assert config.plaintext_footer is False
    assert config.double_wrapping is True
    assert config.internal_key_material is True
    assert config.data_key_length_bits == DATA_KEY_LENGTH_BITS == 256
    assert config.encryption_algorithm == "AES_GCM_V1"
    assert config.cache_lifetime == KEY_CACHE_LIFETIME
    with pytest.raises(ParquetEncryptionError, match="cache_lifetime"):
        encryption_configuration({FEATURES: ["a"]}, FOOTER, cache_lifetime=KEY_CACHE_LIFETIME * 0)
    with pytest.raises(ParquetKeyAssignmentError, match="footer key id"):
        encryption_configuration({FEATURES: ["a"]}, "")


# --- round trip through pyarrow's own PME reader --------------------------------------------

def test_pyarrow_reads_back_the_same_table_with_its_fingerprint(written, table, keyring):
    assert table.schema.metadata  # the spec fingerprint rides in the (encrypted) footer
    by_pyarrow = pq.read_table(written, decryption_properties=keyring.decryption_properties())
    assert by_pyarrow.equals(table, check_metadata=True)
    assert read(written, keyring).equals(table, check_metadata=True)


@settings(max_examples=12, deadline=None)
@given(rows=st.lists(st.tuples(st.text(min_size=1, max_size=30),
                               st.floats(min_value=0, max_value=1e9)), max_size=25))
def test_round_trip_holds_for_any_featurized_batch(tmp_path_factory, compiled, rows):
    keyring = AesGcmKeyring.generate(FOOTER, PSEUDONYM, FEATURES)
    table = featurize(compiled, [email for email, _ in rows], [amount for _, amount in rows])
    path = tmp_path_factory.mktemp("pme") / "batch.parquet"
    write(table, path, keyring, compiled)
    assert pq.read_table(path, decryption_properties=keyring.decryption_properties()).equals(
        table, check_metadata=True)


def test_writes_to_a_file_object_and_accepts_a_record_batch(table, keyring, compiled, tmp_path):
    sink = pa.BufferOutputStream()
    write(table.combine_chunks().to_batches()[0], sink, keyring, compiled)
    data = sink.getvalue().to_pybytes()
    assert data[:4] == data[-4:] == b"PARE"
    (tmp_path / "from-sink.parquet").write_bytes(data)
    assert read(tmp_path / "from-sink.parquet", keyring).equals(table, check_metadata=True)


# --- per-column release ---------------------------------------------------------------------

def test_a_features_only_reader_reads_feature_columns_but_not_pseudonyms(written, table,
                                                                         keyring):
    features_reader = keyring.subset(FOOTER, FEATURES)
    parquet_file = pq.ParquetFile(written,
                                  decryption_properties=features_reader.decryption_properties())
    projected = pa.Table.from_batches(list(parquet_file.iter_batches(columns=FEATURE_COLUMNS)))
    assert projected.equals(table.select(FEATURE_COLUMNS))
    assert set(features_reader.unwrap_requests) == {FOOTER, FEATURES}

    with pytest.raises(ParquetKmsError, match=PSEUDONYM):
        list(parquet_file.iter_batches(columns=["user"]))
    assert PSEUDONYM in features_reader.unwrap_requests  # asked, and refused

    helper_read = read(written, features_reader, columns=FEATURE_COLUMNS)
    assert helper_read.equals(table.select(FEATURE_COLUMNS))
    for denied in (["user"], ["amount_z", "account"], None):
        with pytest.raises(ParquetKmsError, match=PSEUDONYM):
            read(written, features_reader, columns=denied)


def test_a_pseudonym_only_reader_reads_pseudonyms_but_not_features(written, table, keyring):
    pseudonym_reader = keyring.subset(FOOTER, PSEUDONYM)
    assert read(written, pseudonym_reader, columns=["account"]).equals(table.select(["account"]))
    with pytest.raises(ParquetKmsError, match=FEATURES):
        read(written, pseudonym_reader, columns=["amount_z"])


def test_a_reader_without_the_footer_key_reads_nothing(written, keyring):
    with pytest.raises(ParquetKmsError, match=FOOTER):
        read(written, keyring.subset(PSEUDONYM, FEATURES), columns=["amount_z"])


# --- what the file reveals ------------------------------------------------------------------

def plain_parquet_bytes(table: pa.Table, tmp_path: Path) -> bytes:
    """The same table written without encryption: the control that shows a search can hit."""
    path = tmp_path / "control.parquet"
    pq.write_table(table, path, compression="none")
    return path.read_bytes()


def test_footer_is_encrypted_so_column_names_are_absent_and_plain_readers_fail(
        written, table, tmp_path):
    data = written.read_bytes()
    assert data[:4] == data[-4:] == b"PARE"
    control = plain_parquet_bytes(table, tmp_path)
    fingerprint = table.schema.metadata[b"sealbeam.feature_spec.fingerprint"]
    for name in [*table.column_names, fingerprint]:
        needle = name if isinstance(name, bytes) else name.encode()
        assert needle in control
        assert needle not in data, f"{needle!r} is readable in the encrypted file"
    with pytest.raises(OSError, match="no decryption found"):
        pq.read_table(written)
    with pytest.raises(OSError):
        pq.read_metadata(written)


def test_no_plaintext_value_appears_in_the_file(table, keyring, compiled, tmp_path):
    path = tmp_path / "uncompressed.parquet"
    write(table, path, keyring, compiled, compression="none")
    data = path.read_bytes()
    control = plain_parquet_bytes(table, tmp_path)
    needles = [value.encode() for value in table.column("user").to_pylist()]
    needles += table.column("account").to_pylist()
    needles += [struct.pack("<d", value) for value in table.column("amount_z").to_pylist()]
    assert len(needles) == 3 * table.num_rows
    for needle in needles:
        assert needle in control
        assert needle not in data


# --- failures are typed, closed, and say nothing secret -------------------------------------

def test_wrong_master_key_is_a_typed_error_without_key_bytes(written, keyring):
    impostor = AesGcmKeyring.generate(FOOTER, PSEUDONYM, FEATURES)
    with pytest.raises(ParquetKmsError) as caught:
        read(written, impostor)
    message = str(caught.value)
    assert FOOTER in message and "InvalidTag" in message
    assert isinstance(caught.value, FeatureError)
    for secret in [*keyring.keys.values(), *impostor.keys.values()]:
        assert secret.hex() not in message and base64.b64encode(secret).decode() not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(ParquetKmsError, match="InvalidTag"):
        pq.read_table(written, decryption_properties=impostor.decryption_properties())


def test_a_failing_wrap_leaves_no_file_behind(tmp_path, table, keyring, compiled):
    path = tmp_path / "out.parquet"
    with pytest.raises(ParquetKmsError, match=f"{PSEUDONYM!r} failed \\(KeyError\\)"):
        write(table, path, keyring.subset(FOOTER, FEATURES), compiled)
    assert list(tmp_path.iterdir()) == []


def test_a_tampered_file_fails_to_read(written, keyring):
    data = bytearray(written.read_bytes())
    data[len(data) // 3] ^= 0x01
    written.write_bytes(bytes(data))
    with pytest.raises((ParquetDecryptionError, ParquetKmsError)):
        read(written, keyring)


def test_the_reader_refuses_plaintext_and_plaintext_footer_files(tmp_path, table, keyring):
    plain = tmp_path / "plain.parquet"
    pq.write_table(table, plain)
    with pytest.raises(ParquetDecryptionError, match="encrypted footer"):
        read(plain, keyring)
    # pyarrow alone would hand back the unencrypted table: the helper's magic check is the guard
    assert pq.read_table(plain, decryption_properties=keyring.decryption_properties()).equals(
        table)
    signed_only = tmp_path / "plaintext-footer.parquet"
    config = pqe.EncryptionConfiguration(footer_key=FOOTER, column_keys={FEATURES: ["amount_z"]},
                                         plaintext_footer=True)
    properties = pqe.CryptoFactory(keyring.factory()).file_encryption_properties(
        pqe.KmsConnectionConfig(), config)
    pq.write_table(table.select(["amount_z"]), signed_only, encryption_properties=properties)
    with pytest.raises(ParquetDecryptionError, match="encrypted footer"):
        read(signed_only, keyring)


def test_reader_size_limits_are_checked_before_reading(written, keyring):
    size = written.stat().st_size
    with pytest.raises(ParquetDecryptionError, match=f"{size} bytes; the limit is {size - 1}"):
        read(written, keyring, max_file_bytes=size - 1)
    assert keyring.unwrap_requests == []
    with pytest.raises(ParquetDecryptionError, match="uncompressed bytes; the limit is 10"):
        read(written, keyring, max_table_bytes=10)
    with pytest.raises(ParquetDecryptionError, match=r"no column.*'email'"):
        read(written, keyring, columns=["email"])
    with pytest.raises(ParquetDecryptionError, match="more than once"):
        read(written, keyring, columns=["user", "user"])
    with pytest.raises(ParquetDecryptionError, match="cannot open"):
        read(written.with_name("absent.parquet"), keyring)


# --- the KMS adapter on its own -------------------------------------------------------------

def test_adapter_wraps_to_base64_of_the_callable_blob_and_unwraps_it(keyring):
    client = CallbackKmsClient(keyring.wrap, keyring.unwrap)
    key = os.urandom(16)
    text = client.wrap_key(key, FEATURES)
    blob = base64.b64decode(text, validate=True)
    assert keyring.unwrap(blob, FEATURES) == key
    assert client.unwrap_key(text, FEATURES) == key


def test_adapter_checks_lengths_and_encoding_before_calling_unwrap():
    calls: list[str] = []

    def unwrap(blob: bytes, master_key_id: str) -> bytes:
        calls.append(master_key_id)
        return bytes(32)

    client = CallbackKmsClient(lambda key, mk: b"x", unwrap)
    with pytest.raises(ParquetKmsError, match="not valid base64"):
        client.unwrap_key("not*base64!", FEATURES)
    with pytest.raises(ParquetKmsError, match=f"allowed 1 to {MAX_WRAPPED_TEXT_CHARS}"):
        client.unwrap_key("A" * (MAX_WRAPPED_TEXT_CHARS + 4), FEATURES)
    with pytest.raises(ParquetKmsError, match="non-empty"):
        client.unwrap_key("AAAA", "")
    assert calls == []
    with pytest.raises(ParquetKmsError, match="20 bytes; an AES key"):
        client.wrap_key(bytes(20), FEATURES)


@pytest.mark.parametrize(("wrap_result", "unwrap_result", "message"), [
    ("text", bytes(16), "returned str, not bytes"),
    (b"", bytes(16), "is 0 bytes"),
    (b"blob", bytes(7), "unwrapped under master key .* is 7 bytes"),
    (b"blob", "key", "returned str, not bytes"),
])
def test_adapter_refuses_malformed_callable_results(wrap_result, unwrap_result, message):
    client = CallbackKmsClient(lambda key, mk: wrap_result, lambda blob, mk: unwrap_result)
    with pytest.raises(ParquetKmsError, match=message):
        text = client.wrap_key(bytes(16), FEATURES)
        client.unwrap_key(text, FEATURES)


def test_adapter_hides_the_callables_own_message():
    secret = os.urandom(32).hex()

    def leaky(*_: object) -> bytes:
        raise RuntimeError(f"KMS said no for key {secret}")

    client = CallbackKmsClient(leaky, leaky)
    for call in (lambda: client.wrap_key(bytes(32), FEATURES),
                 lambda: client.unwrap_key("AAAA", FEATURES)):
        with pytest.raises(ParquetKmsError, match="failed \\(RuntimeError\\)") as caught:
            call()
        assert secret not in str(caught.value)
