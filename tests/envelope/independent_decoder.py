"""A second implementation of docs/FORMAT.md, written from the document alone, to prove it.

It deliberately imports nothing of sealbeam (no ``envelope``, ``keybroker``,
``enclave_workers``, ``pipelines``): plain ``struct``, ``hashlib``, ``hmac``, ``base64``,
``json``, ``cryptography`` primitives and ``pyarrow``. It raises ``ValueError`` for structure
and ``AuthFailed`` for cryptography, in the order of section 3.5: the whole envelope's
structure first, then the commitment, the header tag and the segments.

Besides the envelope (sections 2-4) and the record stream of record profile 2 (section 13:
``parse``/``decode`` handle kind 3 too, ``decode_excerpt`` opens an ``SBRX`` excerpt,
``decode_piece`` a stream piece, section 13.4a) it
follows section 5.1 (DEK wrap AAD), section 7 (payloads and context keys), section 8 (file
layouts), section 9 (the local keyring's ``SBLW`` wrap) and section 10 (fingerprints). Used by
tests/envelope/test_vectors.py, tests/envelope/test_format_vectors.py,
tests/envelope/test_record_stream_vectors.py and tests/envelope/test_second_implementation.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.ipc as ipc
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
    frames: list[tuple[bool, bytes]] = field(default_factory=list)  # (final, ciphertext)
    segments: list[bytes] = field(default_factory=list)
    # Kind 3 (section 13): (index, record_id, event_time_ms, ciphertext)
    record_frames: list[tuple[int, bytes, int, bytes]] = field(default_factory=list)
    # Kind 3, once opened: (index, record_id, event_time_ms, plaintext or None if it failed)
    records: list[tuple[int, bytes, int, bytes | None]] = field(default_factory=list)

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


def _u16(data: bytes, offset: int, name: str) -> int:
    if offset + 2 > len(data):
        raise ValueError(f"{name}: truncated")
    return struct.unpack_from(">H", data, offset)[0]


def _prefixed(data: bytes, offset: int, name: str) -> tuple[bytes, int]:
    length = _u16(data, offset, name)
    low, high = _BOUNDS[name]
    if not low <= length <= high or offset + 2 + length > len(data):
        raise ValueError(name)
    return data[offset + 2 : offset + 2 + length], offset + 2 + length


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        raise ValueError("control character")
    return text


def parse(envelope: bytes) -> Decoded:
    """Section 3.5 step 1: the whole structure (header and body), no key needed."""
    decoded = parse_header(envelope)
    offset = decoded.header_length
    if decoded.kind == 3:
        if len(envelope) > 48 * 1024 * 1024:
            raise ValueError("record stream too long")
        decoded.record_frames = _stream_frames(envelope, offset, range(decoded.segment_size))
        if offset + sum(28 + len(frame[3]) for frame in decoded.record_frames) != len(envelope):
            raise ValueError("trailing bytes")
    else:
        decoded.frames = _record_frames(envelope, offset) if decoded.kind == 1 else \
            _batch_frames(envelope, offset, decoded.segment_size)
    return decoded


def parse_header(envelope: bytes) -> Decoded:
    """Section 2: the header only (its length is ``header_length``)."""
    if len(envelope) < 124 or envelope[:4] != b"SBEV" or envelope[4] != 1:
        raise ValueError("magic/version")
    kind, algorithm = envelope[5], struct.unpack_from(">H", envelope, 6)[0]
    envelope_id, schema, salt, commitment, segment_size = struct.unpack_from(
        ">16s32s32s32sI", envelope, 8
    )
    if kind not in (1, 2, 3) or algorithm != 1:
        raise ValueError("kind/algorithm")
    if (kind == 1 and segment_size != 0) or (kind == 2 and not 16 <= segment_size <= 1 << 24):
        raise ValueError("segment size")
    if kind == 3 and not 1 <= segment_size <= 65536:
        raise ValueError("record count")
    offset = 124
    values = {}
    for name in ("region", "producer_id"):
        values[name], offset = _prefixed(envelope, offset, name)
    count = _u16(envelope, offset, "context count")
    offset += 2
    if count > 32:
        raise ValueError("context count")
    context_start, context, previous = offset, {}, None
    for _ in range(count):
        klen = _u16(envelope, offset, "context key")
        key = envelope[offset + 2 : offset + 2 + klen]
        offset += 2 + klen
        vlen = _u16(envelope, offset, "context value")
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
    core_length = offset  # the core header: what every segment's AAD binds
    for name in ("kek_uri", "kek_version", "wrapped_key"):  # the key block
        values[name], offset = _prefixed(envelope, offset, name)
    tag = envelope[offset : offset + 32]
    if len(tag) != 32:
        raise ValueError("header tag")
    offset += 32
    decoded = Decoded(
        kind=kind, algorithm=algorithm, envelope_id=envelope_id, schema_fingerprint=schema,
        salt=salt, commitment=commitment, segment_size=segment_size,
        region=_text(values["region"]), producer_id=_text(values["producer_id"]),
        kek_uri=_text(values["kek_uri"]), kek_version=_text(values["kek_version"]),
        wrapped_key=values["wrapped_key"], context=context, core_length=core_length,
        header_tag=tag, header_length=offset,
    )
    return decoded


def _stream_frames(envelope: bytes, offset: int, indices: range
                   ) -> list[tuple[int, bytes, int, bytes]]:
    """Section 13.1 and 13.5 step 1: one frame per index, bounded, ids unique."""
    frames, ids = [], set()
    for index in indices:
        if offset + 28 > len(envelope):
            raise ValueError("record stream truncated")
        length, record_id, event_time = struct.unpack_from(">I16sQ", envelope, offset)
        if not 16 <= length <= (1 << 20) + 16:
            raise ValueError("record length")
        ciphertext = envelope[offset + 28 : offset + 28 + length]
        if len(ciphertext) != length:
            raise ValueError("record ciphertext truncated")
        if event_time > 253402300799999:
            raise ValueError("event time")
        if record_id in ids:
            raise ValueError("duplicate record id")
        ids.add(record_id)
        frames.append((index, record_id, event_time, ciphertext))
        offset += 28 + length
    return frames


def _record_frames(envelope: bytes, offset: int) -> list[tuple[bool, bytes]]:
    """Section 3.3."""
    if offset + 4 > len(envelope):
        raise ValueError("record length truncated")
    (length,) = struct.unpack_from(">I", envelope, offset)
    if not 16 <= length <= (1 << 24) + 16:
        raise ValueError("record length")
    if offset + 4 + length > len(envelope):
        raise ValueError("record ciphertext truncated")
    if offset + 4 + length != len(envelope):
        raise ValueError("trailing bytes")
    return [(True, envelope[offset + 4 :])]


def _batch_frames(envelope: bytes, offset: int, segment_size: int) -> list[tuple[bool, bytes]]:
    """Section 3.4; a body ending at a frame boundary without a final frame is returned as is
    (its missing final frame is an authentication failure, found in ``open_parsed``)."""
    frames: list[tuple[bool, bytes]] = []
    while offset < len(envelope):
        if offset + 5 > len(envelope):
            raise ValueError("segment frame truncated")
        flag, length = struct.unpack_from(">BI", envelope, offset)
        if flag not in (0, 1) or not 16 <= length <= segment_size + 16:
            raise ValueError("segment frame")
        if flag == 0 and length != segment_size + 16:
            raise ValueError("non-final segment size")
        if flag == 1 and frames and length == 16:
            raise ValueError("empty final segment")
        ciphertext = envelope[offset + 5 : offset + 5 + length]
        if len(ciphertext) != length:
            raise ValueError("truncated segment")
        frames.append((flag == 1, ciphertext))
        offset += 5 + length
        if flag == 1:
            if offset != len(envelope):
                raise ValueError("trailing bytes")
            return frames
    return frames  # no final frame


def open_parsed(envelope: bytes, decoded: Decoded, dek: bytes) -> Decoded:
    """Section 3.5 steps 2-4: commitment, header tag, then each segment in order."""
    info = b"sealbeam/envelope/v1" + b"\x00" + struct.pack(">H", decoded.algorithm)
    okm = HKDF(algorithm=hashes.SHA512(), length=96, salt=decoded.salt, info=info).derive(dek)
    tag_offset = decoded.header_length - 32
    expected_tag = hmac.new(okm[64:96], envelope[:tag_offset], hashlib.sha256).digest()
    if not hmac.compare_digest(okm[32:64], decoded.commitment):
        raise AuthFailed()
    if not hmac.compare_digest(expected_tag, decoded.header_tag):
        raise AuthFailed()
    if decoded.kind == 3:
        return _open_stream(envelope, decoded, AESGCM(okm[:32]))
    if not decoded.frames or not decoded.frames[-1][0]:
        raise AuthFailed()  # truncated before the final segment
    aead = AESGCM(okm[:32])
    core = envelope[: decoded.core_length]
    decoded.segments = []
    for index, (final, ciphertext) in enumerate(decoded.frames):
        nonce = bytes(8) + struct.pack(">I", index)
        aad = core + struct.pack(">IB", index, 1 if final else 0)
        try:
            decoded.segments.append(aead.decrypt(nonce, ciphertext, aad))
        except InvalidTag:
            raise AuthFailed() from None
    return decoded


def decode(envelope: bytes, dek: bytes) -> Decoded:
    return open_parsed(envelope, parse(envelope), dek)


def _open_stream(envelope: bytes, decoded: Decoded, aead: AESGCM) -> Decoded:
    """Section 13.3 and 13.5 step 4: each record on its own; a failure is that record's."""
    digest = hashlib.sha256(b"sealbeam/record-stream/v1\x00"
                            + envelope[: decoded.core_length]).digest()
    decoded.records = []
    for index, record_id, event_time, ciphertext in decoded.record_frames:
        nonce = bytes(8) + struct.pack(">I", index)
        aad = digest + record_id + struct.pack(">QI", event_time, index)
        try:
            plaintext = aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            plaintext = None
        decoded.records.append((index, record_id, event_time, plaintext))
    return decoded


def decode_excerpt(excerpt: bytes, dek: bytes) -> tuple[int, bytes, int, bytes]:
    """Section 13.4: ``SBRX`` 01 u32 index, a stream header, one frame; (index, record id,
    event time, plaintext). ValueError for structure, AuthFailed for cryptography."""
    if len(excerpt) < 9 or excerpt[:4] != b"SBRX" or excerpt[4] != 1:
        raise ValueError("excerpt magic/version")
    (index,) = struct.unpack_from(">I", excerpt, 5)
    body = excerpt[9:]
    decoded = parse_header(body)
    if decoded.kind != 3 or index >= decoded.segment_size:
        raise ValueError("excerpt kind/index")
    decoded.record_frames = _stream_frames(body, decoded.header_length, range(index, index + 1))
    if decoded.header_length + 28 + len(decoded.record_frames[0][3]) != len(body):
        raise ValueError("trailing bytes")
    [(_, record_id, event_time, plaintext)] = open_parsed(body, decoded, dek).records
    if plaintext is None:
        raise AuthFailed()
    return index, record_id, event_time, plaintext


# -- section 5.1 -----------------------------------------------------------------------------

def dek_wrap_aad(region: str, producer_id: str) -> bytes:
    r, p = region.encode("utf-8"), producer_id.encode("utf-8")
    return (b"sealbeam/dek-wrap/v1\x00" + struct.pack(">H", len(r)) + r
            + struct.pack(">H", len(p)) + p)


# -- section 9: the local keyring --------------------------------------------------------------

def keyring_material(keyring: dict, kek_uri: str, version: str) -> bytes:
    """The KEK version's 32 bytes from a keyring.json document (section 9.1)."""
    if keyring.get("format") != "sealbeam-local-keyring" or keyring.get("format_version") != 1:
        raise ValueError("keyring format")
    entry = keyring["keks"][kek_uri]["versions"][version]
    if entry["state"] != "enabled" or entry["material"] is None:
        raise ValueError("KEK version not usable")
    material = base64.b64decode(entry["material"], validate=True)
    if len(material) != 32:
        raise ValueError("KEK material length")
    return material


def local_wrap_aad(kek_uri: str, version: str, caller_aad: bytes) -> bytes:
    fields = (b"sealbeam/local-kms/wrap/v1", kek_uri.encode("utf-8"), version.encode("ascii"),
              caller_aad)
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def local_unwrap(keyring: dict, kek_uri: str, version: str, blob: bytes,
                 caller_aad: bytes) -> bytes:
    """Section 9.2: ``SBLW`` || 01 || nonce(12) || AES-256-GCM(DEK) || tag(16)."""
    if blob[:4] != b"SBLW" or len(blob) < 34 or blob[4] != 1:
        raise ValueError("wrap format")
    material = keyring_material(keyring, kek_uri, version)
    try:
        return AESGCM(material).decrypt(blob[5:17], blob[17:],
                                        local_wrap_aad(kek_uri, version, caller_aad))
    except InvalidTag:
        raise AuthFailed() from None


# -- section 8: file layouts -------------------------------------------------------------------

def envelopes_in_file(content: bytes) -> list[bytes]:
    """A raw envelope (starts with ``SBEV``), or one base64 envelope per line."""
    if content[:4] == b"SBEV":
        return [content]
    envelopes = []
    for line in content.split(b"\n"):
        line = line.strip(b"\r ")
        if not line:
            continue
        try:
            envelopes.append(base64.b64decode(line, validate=True))
        except binascii.Error:
            raise ValueError("not a base64 line") from None
    return envelopes


def decode_piece(piece: bytes, dek: bytes) -> list[tuple[int, bytes, int, bytes | None]]:
    """Section 13.4a: ``SBRX`` 02 u32 n, n strictly increasing u32 indices, a stream header,
    those n frames; (index, record id, event time, plaintext or None if its tag failed)."""
    if len(piece) < 9 or piece[:4] != b"SBRX" or piece[4] != 2:
        raise ValueError("piece magic/version")
    (count,) = struct.unpack_from(">I", piece, 5)
    if not 1 <= count <= 65536 or len(piece) < 9 + 4 * count:
        raise ValueError("piece count")
    indices = struct.unpack_from(f">{count}I", piece, 9)
    if any(indices[k + 1] <= indices[k] for k in range(count - 1)):
        raise ValueError("piece indices not increasing")
    body = piece[9 + 4 * count :]
    decoded = parse_header(body)
    if decoded.kind != 3 or indices[-1] >= decoded.segment_size:
        raise ValueError("piece kind/index")
    decoded.record_frames = _stream_frames(body, decoded.header_length, indices)
    if decoded.header_length + sum(28 + len(f[3]) for f in decoded.record_frames) != len(body):
        raise ValueError("trailing bytes")
    return open_parsed(body, decoded, dek).records


# -- section 7: payloads -----------------------------------------------------------------------

def open_with_keyring(envelope: bytes, keyring: dict) -> Decoded:
    """Sections 5.1, 9 and 3: unwrap the header's DEK with the keyring, then open."""
    decoded = parse(envelope)
    dek = local_unwrap(keyring, decoded.kek_uri, decoded.kek_version, decoded.wrapped_key,
                       dek_wrap_aad(decoded.region, decoded.producer_id))
    return open_parsed(envelope, decoded, dek)


def record_object(decoded: Decoded) -> dict:
    """Section 7.1: a record's plaintext is one UTF-8 JSON object."""
    value = json.loads(decoded.plaintext.decode("utf-8"))
    if decoded.kind != 1 or not isinstance(value, dict):
        raise ValueError("not a record of one JSON object")
    return value


def batch_table(decoded: Decoded) -> pa.Table:
    """Section 7.2: a batch's plaintext is one Arrow IPC stream; sealbeam.rows must match."""
    if decoded.kind != 2:
        raise ValueError("not a batch")
    table = ipc.open_stream(pa.py_buffer(decoded.plaintext)).read_all()
    declared = decoded.context.get("sealbeam.rows")
    if declared is not None and int(declared) != table.num_rows:
        raise ValueError("sealbeam.rows does not match the stream")
    return table


def spec_fingerprint(document: dict) -> str:
    """Section 10.2."""
    body = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return hashlib.sha256(b"sealbeam/feature-spec/v1\n" + body.encode("utf-8")).hexdigest()
