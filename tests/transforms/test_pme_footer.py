"""The footer key of a PME file, read from its plaintext tail without any key."""

from __future__ import annotations

import contextlib
import struct

import pyarrow as pa
import pyarrow.parquet.encryption as pqe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.features.pme import write_encrypted_parquet
from enclave_workers.features.pme_kms import callback_kms_client_factory
from transforms.pme_footer import PmeFooterError, footer_key_blob

BLOB_PREFIX = b"test-blob:"


def _pme_file(footer_key: str = "footer-key") -> bytes:
    def wrap(key: bytes, key_id: str) -> bytes:
        return BLOB_PREFIX + key_id.encode() + b":" + key

    sink = pa.BufferOutputStream()
    write_encrypted_parquet(pa.table({"a": [1, 2], "b": ["x", "y"]}), sink,
                            column_keys={"col-key": ["a", "b"]}, footer_key=footer_key,
                            kms_client_factory=callback_kms_client_factory(wrap, wrap),
                            kms_connection_config=pqe.KmsConnectionConfig())
    return sink.getvalue().to_pybytes()


def test_the_footer_key_id_and_blob_come_from_the_plaintext_tail() -> None:
    footer = footer_key_blob(_pme_file())
    assert footer.master_key_id == "footer-key"
    assert footer.wrapped_blob.startswith(BLOB_PREFIX + b"footer-key:")


def test_plain_parquet_and_short_or_inconsistent_tails_are_refused() -> None:
    data = _pme_file()
    with pytest.raises(PmeFooterError, match="PARE"):
        footer_key_blob(b"PAR1" + data[4:-4] + b"PAR1")
    with pytest.raises(PmeFooterError, match="PARE"):
        footer_key_blob(b"PAREPARE")
    too_long = data[:-8] + struct.pack("<I", len(data)) + b"PARE"
    with pytest.raises(PmeFooterError, match="footer length"):
        footer_key_blob(too_long)


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=255))
def test_any_damaged_tail_raises_only_the_typed_error(position: int, flip: int) -> None:
    data = bytearray(_TEMPLATE)
    length = struct.unpack("<I", data[-8:-4])[0]
    start = len(data) - 8 - length
    offset = start + position % (length + 4)
    data[offset] ^= flip
    with contextlib.suppress(PmeFooterError):
        footer_key_blob(bytes(data))


_TEMPLATE = _pme_file()
