"""The bytes of the server keyspace's values and reserved records (docs/format.md, "Server
keyspace", version 3): inline strings, chunked strings' headers and chunks, garbage
records; and the clock expiries are judged by. Pure functions, no I/O: the keyspace, the
sweeper and the purger all build on them.

- inline string: tag ``0x00`` (no expiry) or ``0x80`` (8-byte big-endian expiry in ms
  follows), then the string's bytes;
- chunked string header: tag ``0x01`` or ``0x81`` (expiry follows), then the string's
  length and its chunk-set id, 8 bytes each, big-endian;
- chunk: key ``0xF0`` + chunk-set id (8 bytes) + chunk index (4 bytes), value the chunk's
  bytes, :data:`CHUNK_SIZE` of them except in the last chunk;
- garbage record: key ``0xF1`` + chunk-set id, value the number of chunks still to delete
  (8 bytes): chunks ``0`` .. ``n - 1`` of that set.
"""

from __future__ import annotations

import struct
import time
from typing import Final, NamedTuple

from ...errors import CorruptionError
from ...options import MAX_VALUE_SIZE
from ..errors import CommandError
from .dbmap import CHUNK_PREFIX, GARBAGE_PREFIX

#: Longest string value: the engine's value limit minus the largest inline header (kept when
#: large strings became chunked, which would allow more; proto-max-bulk-len caps it anyway).
MAX_STRING: Final = MAX_VALUE_SIZE - 9
#: Bytes of one chunk of a chunked string (the last chunk holds the rest). An APPEND writes
#: at most this much besides what it appends.
CHUNK_SIZE: Final = 64 * 1024
#: Strings up to this length are stored inline in their key's entry; longer ones are
#: chunked. Key walks read at most this much of a value.
INLINE_MAX: Final = 64 * 1024
#: Most garbage chunk-set ids the keyspace lists in memory for the purger; past it, the
#: purger finds the others by scanning the garbage range.
GARBAGE_LIST_MAX: Final = 100_000

TAG_STRING: Final = 0x00
TAG_EXPIRES: Final = 0x80
TAG_CHUNKED: Final = 0x01
_EXPIRY_BIT: Final = 0x80
_EXP: Final = struct.Struct(">Q")
_REF: Final = struct.Struct(">QQ")
_CHUNK_KEY: Final = struct.Struct(">BQI")
_GARBAGE_KEY: Final = struct.Struct(">BQ")
_COUNT: Final = struct.Struct(">Q")


class ChunkRef(NamedTuple):
    """A chunked string: its chunk set's id and its length in bytes."""

    id: int
    length: int


def chunk_count(length: int) -> int:
    """Chunks of a chunked string of ``length`` bytes."""
    return -(-length // CHUNK_SIZE)


def chunk_key(cid: int, index: int) -> bytes:
    """The engine key of chunk ``index`` of chunk set ``cid``."""
    return _CHUNK_KEY.pack(CHUNK_PREFIX, cid, index)


def chunk_key_parts(ck: bytes) -> tuple[int, int]:
    """(chunk-set id, index) of a chunk key."""
    _, cid, index = _CHUNK_KEY.unpack(ck)
    return cid, index


def garbage_key(cid: int) -> bytes:
    """The engine key of chunk set ``cid``'s garbage record."""
    return _GARBAGE_KEY.pack(GARBAGE_PREFIX, cid)


def garbage_id(gk: bytes) -> int:
    """The chunk-set id of a garbage record's key."""
    return int(_GARBAGE_KEY.unpack(gk)[1])


def encode_garbage(chunks: int) -> bytes:
    """A garbage record: how many chunks (indexes 0 .. chunks - 1) are left to delete."""
    return _COUNT.pack(chunks)


def decode_garbage(raw: bytes) -> int:
    """Inverse of :func:`encode_garbage`."""
    if len(raw) != _COUNT.size:
        raise CorruptionError(f"a chunk garbage record of the server has {len(raw)} bytes, "
                              f"expected {_COUNT.size}")
    return int(_COUNT.unpack(raw)[0])


def now_ms() -> int:
    """Milliseconds since the epoch (the clock TTLs are judged by)."""
    return int(time.time() * 1000)


def expiry_of(raw: bytes) -> int:
    """The absolute expiry (ms, 0 = none) in an engine value's header, without copying the
    value (the sweeper reads only this). Inline and chunked strings keep it at the same
    place."""
    if raw and raw[0] & _EXPIRY_BIT and len(raw) >= 9:
        return int(_EXP.unpack_from(raw, 1)[0])
    return 0


def chunk_ref_of(raw: bytes) -> ChunkRef | None:
    """The chunk set a chunked string's header names (None: not a chunked string)."""
    if not raw or raw[0] & 0x7F != TAG_CHUNKED:
        return None
    off = 9 if raw[0] & _EXPIRY_BIT else 1
    if len(raw) != off + _REF.size:
        raise CorruptionError(f"a chunked string's header has {len(raw)} bytes, expected "
                              f"{off + _REF.size}")
    length, cid = _REF.unpack_from(raw, off)
    return ChunkRef(cid, length)


def encode_value(value: bytes, expire_ms: int) -> bytes:
    """The engine value of an inline string with an absolute expiry (0 = none)."""
    if len(value) > MAX_STRING:
        raise CommandError("string exceeds maximum allowed size")
    if expire_ms:
        return b"\x80" + _EXP.pack(expire_ms) + value
    return b"\x00" + value


def encode_header(ref: ChunkRef, expire_ms: int) -> bytes:
    """The engine value of a chunked string (its header) with an absolute expiry."""
    body = _REF.pack(ref.length, ref.id)
    if expire_ms:
        return b"\x81" + _EXP.pack(expire_ms) + body
    return b"\x01" + body


__all__ = [
    "CHUNK_SIZE",
    "GARBAGE_LIST_MAX",
    "INLINE_MAX",
    "MAX_STRING",
    "TAG_CHUNKED",
    "TAG_EXPIRES",
    "TAG_STRING",
    "ChunkRef",
    "chunk_count",
    "chunk_key",
    "chunk_key_parts",
    "chunk_ref_of",
    "decode_garbage",
    "encode_garbage",
    "encode_header",
    "encode_value",
    "expiry_of",
    "garbage_id",
    "garbage_key",
    "now_ms",
]
