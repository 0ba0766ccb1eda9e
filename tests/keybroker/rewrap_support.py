"""Helpers for the rewrap and shred tests: sealed files under a local keyring, and a counting,
failure-injecting KMS wrapper.

Files are sealed with ``envelope`` directly (as ``sealbeam seal`` and the pipeline's region-pinned
writer do): record files hold one base64 envelope per line, ``.sbatch`` files one raw envelope.
"""

from __future__ import annotations

import base64
import os
from collections import Counter
from pathlib import Path

from envelope import (
    DataKey,
    WrappedKey,
    dek_wrap_aad,
    read_header,
    seal_batch,
    seal_record,
)
from envelope.header import parse_header
from keybroker.kms.local import LocalKeyring

EU_KEK = "local://keyring/eu/kek-1"
US_KEK = "local://keyring/us/kek-1"
SCHEMA = bytes(32)


def new_keyring(directory: Path) -> LocalKeyring:
    return LocalKeyring.create(directory / "keyring.json", ["eu", "us"])


def issue_key(keyring: LocalKeyring, region: str, producer: str) -> tuple[DataKey, WrappedKey]:
    data_key = DataKey.generate()
    wrapped = keyring.wrap(
        keyring.kek_for_region(region), data_key.secret_bytes(), dek_wrap_aad(region, producer)
    )
    return data_key, wrapped


def write_record_file(
    path: Path, keyring: LocalKeyring, *, records: int = 5, per_key: int = 2,
    region: str = "eu", producer: str = "acme", blank_line_after: int | None = None,
) -> list[bytes]:
    """A record file with a fresh DEK every ``per_key`` records; returns the plaintexts."""
    plaintexts, lines, key = [], [], None
    for index in range(records):
        if index % per_key == 0:
            key = issue_key(keyring, region, producer)
        assert key is not None
        plaintext = b'{"n": %d, "pad": "%s"}' % (index, os.urandom(8).hex().encode())
        envelope = seal_record(
            plaintext, data_key=key[0], wrapped_key=key[1], region=region,
            producer_id=producer, schema_fingerprint=SCHEMA, context={"k": "v"},
        )
        plaintexts.append(plaintext)
        lines.append(base64.b64encode(envelope) + b"\n")
        if blank_line_after == index:
            lines.append(b"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return plaintexts


def write_batch_file(
    path: Path, keyring: LocalKeyring, *, size: int = 1000, region: str = "eu",
    producer: str = "acme", segment_size: int = 64,
) -> bytes:
    data_key, wrapped = issue_key(keyring, region, producer)
    plaintext = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(seal_batch(
        plaintext, data_key=data_key, wrapped_key=wrapped, region=region, producer_id=producer,
        schema_fingerprint=SCHEMA, context={"sealbeam.kind": "features"},
        segment_size=segment_size,
    ))
    return plaintext


def envelopes_in(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data.startswith(b"SBEV"):
        return [data]
    return [base64.b64decode(line) for line in data.splitlines() if line.strip()]


def split(envelope: bytes) -> tuple[bytes, bytes, bytes]:
    """(core header, key block + tag, body)."""
    _, layout = parse_header(envelope)
    return envelope[: layout.core_end], envelope[layout.core_end : layout.end], envelope[
        layout.end :
    ]


def kek_versions(path: Path) -> list[str]:
    return [read_header(envelope)[0].wrapped_key.kek.version for envelope in envelopes_in(path)]


def unwrap_key(keyring: LocalKeyring, envelope: bytes) -> DataKey:
    header = read_header(envelope)[0]
    return DataKey(keyring.unwrap(header.wrapped_key,
                                  dek_wrap_aad(header.region, header.producer_id)))


class CountingKms:
    """Wraps a KMS, counts unwraps per key id and can crash on a chosen unwrap."""

    def __init__(self, inner: LocalKeyring, crash_on_unwrap: int | None = None) -> None:
        self.inner = inner
        self.scheme = inner.scheme
        self.unwraps: Counter[str] = Counter()
        self.wraps = 0
        self._crash_on = crash_on_unwrap

    def primary_version(self, kek_uri: str) -> str:
        return self.inner.primary_version(kek_uri)

    def wrap(self, kek_uri: str, dek: bytes, aad: bytes) -> WrappedKey:
        self.wraps += 1
        return self.inner.wrap(kek_uri, dek, aad)

    def unwrap(self, wrapped: WrappedKey, aad: bytes) -> bytes:
        self.unwraps[wrapped.key_id] += 1
        if self._crash_on is not None and sum(self.unwraps.values()) == self._crash_on:
            raise RuntimeError("simulated crash of the rewrap process")
        return self.inner.unwrap(wrapped, aad)
