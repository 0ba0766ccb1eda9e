"""An envelope v1 decoder written from docs/FORMAT.md alone, to prove the document.

It deliberately imports nothing from ``envelope``: plain ``struct``, ``hashlib``, ``hmac``
and ``cryptography`` primitives. It raises ``ValueError`` for structure and ``AuthFailed``
for cryptography. Used only by tests/envelope/test_vectors.py.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class AuthFailed(Exception):
    pass


@dataclass
class Decoded:
    kind: int
    algorithm: int
    envelope_id: bytes
    schema_fingerprint: bytes
    salt: bytes
    commitment: bytes
    segment_size: int
    region: str
    producer_id: str
    kek_uri: str
    kek_version: str
    wrapped_key: bytes
    context: dict[str, str]
    core_length: int
    header_tag: bytes
    header_length: int
    segments: list[bytes] = field(default_factory=list)

    @property
    def plaintext(self) -> bytes:
        return b"".join(self.segments)


# Section 2: bounds of the prefixed fields, (min, max).
_BOUNDS = {
    "region": (1, 64),
    "producer_id": (1, 256),
    "kek_uri": (1, 1024),
    "kek_version": (1, 128),
    "wrapped_key": (1, 4096),
}


def _prefixed(data: bytes, offset: int, name: str) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">H", data, offset)
    low, high = _BOUNDS[name]
    if not low <= length <= high or offset + 2 + length > len(data):
        raise ValueError(name)
    return data[offset + 2 : offset + 2 + length], offset + 2 + length


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        raise ValueError("control character")
    return text


def decode(envelope: bytes, dek: bytes) -> Decoded:
    if len(envelope) < 124 or envelope[:4] != b"SBEV" or envelope[4] != 1:
        raise ValueError("magic/version")
    kind, algorithm = envelope[5], struct.unpack_from(">H", envelope, 6)[0]
    envelope_id, schema, salt, commitment, segment_size = struct.unpack_from(
        ">16s32s32s32sI", envelope, 8
    )
    if kind not in (1, 2) or algorithm != 1:
        raise ValueError("kind/algorithm")
    if (kind == 1 and segment_size != 0) or (kind == 2 and not 16 <= segment_size <= 1 << 24):
        raise ValueError("segment size")
    offset = 124
    values = {}
    for name in ("region", "producer_id"):
        values[name], offset = _prefixed(envelope, offset, name)
    (count,) = struct.unpack_from(">H", envelope, offset)
    offset += 2
    if count > 32:
        raise ValueError("context count")
    context_start, context, previous = offset, {}, None
    for _ in range(count):
        (klen,) = struct.unpack_from(">H", envelope, offset)
        key = envelope[offset + 2 : offset + 2 + klen]
        offset += 2 + klen
        (vlen,) = struct.unpack_from(">H", envelope, offset)
        value = envelope[offset + 2 : offset + 2 + vlen]
        offset += 2 + vlen
        if not 1 <= klen <= 128 or vlen > 1024 or offset > len(envelope):
            raise ValueError("context entry")
        if previous is not None and key <= previous:
            raise ValueError("context order")
        previous = key
        context[_text(key)] = _text(value)
    if offset - context_start > 8192:
        raise ValueError("context size")
    core = envelope[:offset]  # the core header: what every segment's AAD binds
    for name in ("kek_uri", "kek_version", "wrapped_key"):  # the key block
        values[name], offset = _prefixed(envelope, offset, name)
    tag = envelope[offset : offset + 32]
    if len(tag) != 32:
        raise ValueError("header tag")
    authenticated, offset = envelope[:offset], offset + 32
    decoded = Decoded(
        kind=kind,
        algorithm=algorithm,
        envelope_id=envelope_id,
        schema_fingerprint=schema,
        salt=salt,
        commitment=commitment,
        segment_size=segment_size,
        region=_text(values["region"]),
        producer_id=_text(values["producer_id"]),
        kek_uri=_text(values["kek_uri"]),
        kek_version=_text(values["kek_version"]),
        wrapped_key=values["wrapped_key"],
        context=context,
        core_length=len(core),
        header_tag=tag,
        header_length=offset,
    )

    # Section 3.1
    info = b"sealbeam/envelope/v1" + b"\x00" + struct.pack(">H", algorithm)
    okm = HKDF(algorithm=hashes.SHA512(), length=96, salt=salt, info=info).derive(dek)
    expected_tag = hmac.new(okm[64:96], authenticated, hashlib.sha256).digest()
    if not hmac.compare_digest(okm[32:64], commitment):
        raise AuthFailed()
    if not hmac.compare_digest(expected_tag, tag):  # Section 3.2: before any decryption
        raise AuthFailed()
    aead = AESGCM(okm[:32])

    def open_segment(index: int, final: bool, ciphertext: bytes) -> bytes:
        nonce = bytes(8) + struct.pack(">I", index)
        aad = core + struct.pack(">IB", index, 1 if final else 0)
        try:
            return aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise AuthFailed() from None

    if kind == 1:  # Section 3.3
        (length,) = struct.unpack_from(">I", envelope, offset)
        if not 16 <= length <= (1 << 24) + 16 or offset + 4 + length != len(envelope):
            raise ValueError("record length")
        decoded.segments.append(open_segment(0, True, envelope[offset + 4 :]))
        return decoded

    index = 0  # Section 3.4
    while True:
        if offset == len(envelope):
            raise AuthFailed()  # truncated before the final segment
        flag, length = struct.unpack_from(">BI", envelope, offset)
        if flag not in (0, 1) or not 16 <= length <= segment_size + 16:
            raise ValueError("segment frame")
        if flag == 0 and length != segment_size + 16:
            raise ValueError("non-final segment size")
        if flag == 1 and index > 0 and length == 16:
            raise ValueError("empty final segment")
        ciphertext = envelope[offset + 5 : offset + 5 + length]
        if len(ciphertext) != length:
            raise ValueError("truncated segment")
        decoded.segments.append(open_segment(index, flag == 1, ciphertext))
        offset += 5 + length
        if flag == 1:
            if offset != len(envelope):
                raise ValueError("trailing bytes")
            return decoded
        index += 1
