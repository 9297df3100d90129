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
  (8 bytes): chunks ``0`` .. ``n - 1`` of that set;
- hash / set header (the key's *metadata*): tag ``0x02`` (hash) or ``0x03`` (set), bit 7
  again meaning an 8-byte expiry follows, then the collection's id (its *version*) and its
  size, 8 bytes each, big-endian;
- member: key ``0xF2`` + collection id (8 bytes) + the field or member's bytes, value the
  hash field's value (empty for a set member);
- member garbage record: key ``0xF3`` + collection id, value empty (no member deleted yet)
  or ``0x01`` + the last member deleted so far (the purger goes on after it);
- list header: tag ``0x04`` (``0x84`` with an expiry), then the collection id, the size and
  the index of the first element (8 bytes each, big-endian); element ``i`` (0-based) is the
  member record whose member bytes are ``head + i`` as 8 big-endian bytes. The first list's
  head is :data:`LIST_BIAS` (2^63), so pushes at either end for 2^63 elements never wrap;
- sorted set header: tag ``0x05`` (``0x85`` with an expiry), then the collection id and its
  size, as a hash's; member record: ``0xF2`` + id + member -> the score as an 8-byte
  big-endian IEEE 754 double; score index record: ``0xF4`` + id + the score in
  order-preserving form (:func:`score_bytes`, 8 bytes) + member -> empty, so the index
  walks in (score, member) order, Redis' order;
- stream header: tag ``0x06`` (``0x86`` with an expiry), then the collection id and the
  number of entries (8 bytes each), then :data:`STREAM_META_SIZE` bytes of stream state
  (last id, entries added, max deleted id, next group number: see
  :mod:`shaledb.server.keyspace.streams`, which also owns the entries' and consumer groups'
  bytes).

Collection ids and chunk-set ids are drawn from one counter, so an id names one thing.
"""

from __future__ import annotations

import struct
import time
from typing import Final, NamedTuple

import shaledb

from ...errors import CorruptionError
from ...options import MAX_KEY_SIZE, MAX_VALUE_SIZE
from ..errors import CommandError
from .dbmap import (
    CHUNK_PREFIX,
    GARBAGE_PREFIX,
    MEMBER_GARBAGE_PREFIX,
    MEMBER_PREFIX,
    SCORE_PREFIX,
)

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
GARBAGE_LIST_MAX = 100_000  # not Final: tests lower it (compiled code inlines a Final)

TAG_STRING: Final = 0x00
TAG_EXPIRES: Final = 0x80
TAG_CHUNKED: Final = 0x01
TAG_HASH: Final = 0x02
TAG_SET: Final = 0x03
TAG_LIST: Final = 0x04
TAG_ZSET: Final = 0x05
TAG_STREAM: Final = 0x06
#: Redis' TYPE name of each encoding.
TYPE_NAMES: Final = {TAG_STRING: b"string", TAG_CHUNKED: b"string", TAG_HASH: b"hash",
                     TAG_SET: b"set", TAG_LIST: b"list", TAG_ZSET: b"zset",
                     TAG_STREAM: b"stream"}
#: Collection encodings: a header naming a collection id, and member records.
COLL_TAGS: Final = frozenset((TAG_HASH, TAG_SET, TAG_LIST, TAG_ZSET, TAG_STREAM))
#: Bytes of a stream header after its id and size: last id (16), entries added (8), max
#: deleted id (16), next consumer-group number (8).
STREAM_META_SIZE: Final = 48
#: The index of the first element of a new list: the middle of the unsigned 64-bit range,
#: so LPUSH and RPUSH both have 2^63 indexes to go (Kvrocks' bias).
LIST_BIAS: Final = 2**63
#: Index limits of list elements (the 8 bytes of an element's member suffix).
LIST_INDEX_MAX: Final = 2**64 - 1
#: Longest hash field or set member: the engine's key limit minus the member key's prefix.
MAX_MEMBER: Final = MAX_KEY_SIZE - 9
#: Longest sorted set member: its score index key also holds the 8 score bytes.
MAX_ZMEMBER: Final = MAX_KEY_SIZE - 17
_EXPIRY_BIT: Final = 0x80
_EXP: Final = struct.Struct(">Q")
_REF: Final = struct.Struct(">QQ")
_LIST_REF: Final = struct.Struct(">QQQ")
_INDEX: Final = struct.Struct(">Q")
_CHUNK_KEY: Final = struct.Struct(">BQI")
_GARBAGE_KEY: Final = struct.Struct(">BQ")
_COUNT: Final = struct.Struct(">Q")
_ID: Final = struct.Struct(">BQ")
#: The reply Redis gives a command on a key of another type (after the WRONGTYPE prefix).
WRONGTYPE: Final = "Operation against a key holding the wrong kind of value"


class ChunkRef(NamedTuple):
    """A chunked string: its chunk set's id and its length in bytes."""

    id: int
    length: int


class CollRef(NamedTuple):
    """A hash, a set, a list or a stream: its encoding tag, its id (the prefix of its member
    records), its number of members, for a list the index of its first element (see
    :func:`list_index`), for a stream its state (:data:`STREAM_META_SIZE` bytes, decoded by
    :mod:`shaledb.server.keyspace.streams`)."""

    kind: int
    id: int
    size: int
    head: int = 0
    meta: bytes = b""


def wrong_type() -> CommandError:
    """Redis' WRONGTYPE error (no ERR prefix)."""
    return CommandError(WRONGTYPE, prefix="WRONGTYPE")


def coll_ref_of(raw: bytes) -> CollRef | None:
    """The collection a hash, set or list header names (None: not a collection)."""
    if not raw or raw[0] & 0x7F not in COLL_TAGS:
        return None
    off = 9 if raw[0] & _EXPIRY_BIT else 1
    if raw[0] & 0x7F == TAG_LIST:
        if len(raw) != off + _LIST_REF.size:
            raise CorruptionError(f"a list header has {len(raw)} bytes, expected "
                                  f"{off + _LIST_REF.size}")
        cid, size, head = _LIST_REF.unpack_from(raw, off)
        return CollRef(TAG_LIST, cid, size, head)
    if raw[0] & 0x7F == TAG_STREAM:
        if len(raw) != off + _REF.size + STREAM_META_SIZE:
            raise CorruptionError(f"a stream header has {len(raw)} bytes, expected "
                                  f"{off + _REF.size + STREAM_META_SIZE}")
        cid, size = _REF.unpack_from(raw, off)
        return CollRef(TAG_STREAM, cid, size, 0, raw[off + _REF.size:])
    if len(raw) != off + _REF.size:
        raise CorruptionError(f"a hash or set header has {len(raw)} bytes, expected "
                              f"{off + _REF.size}")
    cid, size = _REF.unpack_from(raw, off)
    return CollRef(raw[0] & 0x7F, cid, size)


def encode_coll(ref: CollRef, expire_ms: int) -> bytes:
    """The engine value of a hash, set or list header with an absolute expiry (0 = none)."""
    if ref.kind == TAG_STREAM and len(ref.meta) != STREAM_META_SIZE:
        raise ValueError(f"a stream header's state is {len(ref.meta)} bytes, expected "
                         f"{STREAM_META_SIZE} (a bug)")
    body = (_LIST_REF.pack(ref.id, ref.size, ref.head) if ref.kind == TAG_LIST
            else _REF.pack(ref.id, ref.size) + ref.meta)
    if expire_ms:
        return bytes((ref.kind | _EXPIRY_BIT,)) + _EXP.pack(expire_ms) + body
    return bytes((ref.kind,)) + body


def member_prefix(cid: int) -> bytes:
    """The first 9 bytes of every member key of collection ``cid``."""
    return _ID.pack(MEMBER_PREFIX, cid)


def member_key(cid: int, member: bytes) -> bytes:
    """The engine key of ``member`` (a hash field, a set member) of collection ``cid``."""
    if len(member) > MAX_MEMBER:
        raise CommandError(f"a field or member of {len(member)} bytes exceeds the maximum "
                           f"of {MAX_MEMBER}")
    return _ID.pack(MEMBER_PREFIX, cid) + member


def list_index(index: int) -> bytes:
    """The member bytes of list element index ``index`` (the header's head + position)."""
    return _INDEX.pack(index)


def list_index_of(member: bytes) -> int:
    """Inverse of :func:`list_index`."""
    return int(_INDEX.unpack(member)[0])


_DOUBLE: Final = struct.Struct(">d")
_SIGN: Final = 1 << 63
_ALL: Final = (1 << 64) - 1


def pack_score(score: float) -> bytes:
    """A sorted set member's value: its score as an 8-byte big-endian double."""
    return _DOUBLE.pack(score)


def unpack_score(raw: bytes) -> float:
    """Inverse of :func:`pack_score`."""
    if len(raw) != 8:
        raise CorruptionError(f"a sorted set member's score has {len(raw)} bytes, expected 8")
    return float(_DOUBLE.unpack(raw)[0])


def score_bytes(score: float) -> bytes:
    """The score in order-preserving form: the double's bits with the sign bit flipped for
    a positive number and every bit flipped for a negative one, so bytewise order is
    numeric order, -inf first, +inf last. -0.0 is written as 0.0 (they compare equal, so
    members scored either way sort by member, as in Redis)."""
    (bits,) = _INDEX.unpack(_DOUBLE.pack(score + 0.0))
    return _INDEX.pack(bits ^ _ALL if bits & _SIGN else bits | _SIGN)


def score_of_bytes(raw: bytes) -> float:
    """Inverse of :func:`score_bytes` (the first 8 bytes of ``raw``)."""
    (bits,) = _INDEX.unpack_from(raw)
    bits = bits ^ _SIGN if bits & _SIGN else bits ^ _ALL
    return float(_DOUBLE.unpack(_INDEX.pack(bits))[0])


def score_prefix(cid: int) -> bytes:
    """The first 9 bytes of every score index key of sorted set ``cid``."""
    return _ID.pack(SCORE_PREFIX, cid)


def score_key(cid: int, score: float, member: bytes) -> bytes:
    """The score index key of ``member`` with ``score`` in sorted set ``cid``."""
    return _ID.pack(SCORE_PREFIX, cid) + score_bytes(score) + member


def member_garbage_key(cid: int) -> bytes:
    """The engine key of collection ``cid``'s member garbage record."""
    return _ID.pack(MEMBER_GARBAGE_PREFIX, cid)


def id_of(k: bytes) -> int:
    """The id in a chunk, garbage, member or member garbage key (bytes 1 to 8)."""
    return int(_ID.unpack_from(k)[1])


def orphan(batch: shaledb.WriteBatch, raw: bytes, chunk_sets: list[int],
           collections: list[int]) -> None:
    """``raw``, a header being deleted or overwritten whose chunk set or collection nothing
    else names, leaves a garbage record in ``batch`` (listed in ``chunk_sets`` or
    ``collections`` for the purger)."""
    if not raw or raw[0] & 0x7F == TAG_STRING:
        return
    ref = chunk_ref_of(raw)
    if ref is not None:
        batch.put(garbage_key(ref.id), encode_garbage(chunk_count(ref.length)))
        chunk_sets.append(ref.id)
        return
    coll = coll_ref_of(raw)
    if coll is not None:
        batch.put(member_garbage_key(coll.id), b"")
        collections.append(coll.id)


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
    "MAX_ZMEMBER",
    "TAG_ZSET",
    "pack_score",
    "score_bytes",
    "score_key",
    "score_of_bytes",
    "score_prefix",
    "unpack_score",
    "COLL_TAGS",
    "LIST_BIAS",
    "LIST_INDEX_MAX",
    "TAG_LIST",
    "TAG_STREAM",
    "STREAM_META_SIZE",
    "list_index",
    "list_index_of",
    "MAX_MEMBER",
    "TAG_HASH",
    "TAG_SET",
    "TYPE_NAMES",
    "WRONGTYPE",
    "CollRef",
    "coll_ref_of",
    "encode_coll",
    "id_of",
    "member_garbage_key",
    "member_key",
    "member_prefix",
    "orphan",
    "wrong_type",
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
