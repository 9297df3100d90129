"""The bytes of streams (docs/format.md, "Streams", server keyspace version 7). Pure
functions, no I/O: :mod:`shaledb.server.commands.streams` reads and writes them through a
:class:`~shaledb.server.keyspace.keyspace.KeyspaceTxn`.

A stream is a collection (:class:`~shaledb.server.keyspace.values.CollRef`, tag ``0x06``):

- header: the collection id, the number of entries, then :data:`STREAM_META_SIZE` bytes of
  state (:class:`StreamMeta`): the last id, the entries ever added, the largest id XDEL
  removed, the number the next consumer group gets;
- entry: the member record ``0xF2`` + collection id + the entry's id as 16 bytes (ms, seq,
  8 bytes each, big-endian, so member order is id order), value :func:`encode_fields`;
- group range ``0xF5`` + collection id + one byte of kind: ``0x00`` the *anchor* (empty
  value, always present: it keeps an empty stream's id out of reuse, see
  ``Keyspace._largest_chunk_id``); ``0x01`` + group name -> :class:`GroupRecord`;
  ``0x02`` + group number (8) + entry id (16) -> :class:`PendingRecord` (the group's PEL in
  id order); ``0x03`` + group number (8) + consumer name -> :class:`ConsumerRecord`.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from ...errors import CorruptionError
from .dbmap import GROUP_PREFIX
from .values import STREAM_META_SIZE, member_prefix

#: Largest id component (ms or seq): unsigned 64 bits.
ID_MAX: Final = 2**64 - 1
#: A group's entries-read counter when it is not known (Redis' SCG_INVALID_ENTRIES_READ).
ENTRIES_READ_UNKNOWN: Final = -1
KIND_ANCHOR: Final = 0x00
KIND_GROUP: Final = 0x01
KIND_PENDING: Final = 0x02
KIND_CONSUMER: Final = 0x03

_ID: Final = struct.Struct(">QQ")
_META: Final = struct.Struct(">QQQQQQ")
_GROUP: Final = struct.Struct(">QQQQ")
_PENDING: Final = struct.Struct(">QQ")
_CONSUMER: Final = struct.Struct(">QQ")
_NUM: Final = struct.Struct(">Q")
_LEN: Final = struct.Struct(">I")
assert _META.size == STREAM_META_SIZE

StreamId = tuple[int, int]


def encode_id(sid: StreamId) -> bytes:
    """The 16 bytes of an entry id (its member bytes)."""
    return _ID.pack(*sid)


def decode_id(raw: bytes, offset: int = 0) -> StreamId:
    """Inverse of :func:`encode_id`."""
    ms, seq = _ID.unpack_from(raw, offset)
    return int(ms), int(seq)


def format_id(sid: StreamId) -> bytes:
    """``ms-seq``, as Redis replies an id."""
    return b"%d-%d" % sid


class StreamMeta(NamedTuple):
    """A stream's state, in its header after the id and size."""

    last: StreamId = (0, 0)
    added: int = 0
    max_deleted: StreamId = (0, 0)
    next_group: int = 0

    def encode(self) -> bytes:
        return _META.pack(*self.last, self.added, *self.max_deleted, self.next_group)

    @staticmethod
    def decode(raw: bytes) -> StreamMeta:
        if len(raw) != _META.size:
            raise CorruptionError(f"a stream header's state has {len(raw)} bytes, expected "
                                  f"{_META.size}")
        lm, ls, added, dm, ds, ng = _META.unpack(raw)
        return StreamMeta((lm, ls), added, (dm, ds), ng)


def encode_fields(fields: list[bytes]) -> bytes:
    """An entry's value: the number of items (fields and values, alternating: even) as 4
    bytes, then each item as its length (4 bytes) and its bytes."""
    parts = [_LEN.pack(len(fields))]
    for f in fields:
        parts.append(_LEN.pack(len(f)))
        parts.append(f)
    return b"".join(parts)


def decode_fields(raw: bytes) -> list[bytes]:
    """Inverse of :func:`encode_fields`."""
    try:
        (n,) = _LEN.unpack_from(raw, 0)
        out: list[bytes] = []
        off = 4
        for _ in range(n):
            (size,) = _LEN.unpack_from(raw, off)
            off += 4
            if off + size > len(raw):
                raise struct.error("truncated")
            out.append(raw[off:off + size])
            off += size
    except struct.error:
        raise CorruptionError("a stream entry's value is truncated: the database is "
                              "damaged") from None
    if off != len(raw):
        raise CorruptionError("a stream entry's value has bytes after its last field: the "
                              "database is damaged")
    return out


def group_range(cid: int) -> bytes:
    """The first 9 bytes of every group-range key of stream ``cid``."""
    return bytes((GROUP_PREFIX,)) + member_prefix(cid)[1:]


def group_range_end(cid: int) -> bytes:
    """The first key after stream ``cid``'s group range."""
    return group_range(cid + 1)


def anchor_key(cid: int) -> bytes:
    return group_range(cid) + bytes((KIND_ANCHOR,))


def group_key(cid: int, name: bytes) -> bytes:
    return group_range(cid) + bytes((KIND_GROUP,)) + name


def pending_prefix(cid: int, gnum: int) -> bytes:
    return group_range(cid) + bytes((KIND_PENDING,)) + _NUM.pack(gnum)


def pending_key(cid: int, gnum: int, sid: StreamId) -> bytes:
    return pending_prefix(cid, gnum) + encode_id(sid)


def consumer_prefix(cid: int, gnum: int) -> bytes:
    return group_range(cid) + bytes((KIND_CONSUMER,)) + _NUM.pack(gnum)


def consumer_key(cid: int, gnum: int, name: bytes) -> bytes:
    return consumer_prefix(cid, gnum) + name


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (its last byte is < 0xFF in
    every prefix used here: a kind byte, or a group number's)."""
    i = len(prefix)
    while i and prefix[i - 1] == 0xFF:
        i -= 1
    if not i:
        raise ValueError("no key follows an all-0xFF prefix")
    return prefix[:i - 1] + bytes((prefix[i - 1] + 1,))


class GroupRecord(NamedTuple):
    """A consumer group: its number (the prefix of its PEL and consumers), the last id
    delivered, and the entries read (:data:`ENTRIES_READ_UNKNOWN`: not known)."""

    number: int
    last: StreamId
    entries_read: int

    def encode(self) -> bytes:
        er = ID_MAX if self.entries_read < 0 else self.entries_read
        return _GROUP.pack(self.number, *self.last, er)

    @staticmethod
    def decode(raw: bytes) -> GroupRecord:
        if len(raw) != _GROUP.size:
            raise CorruptionError(f"a consumer group record has {len(raw)} bytes, expected "
                                  f"{_GROUP.size}")
        num, lm, ls, er = _GROUP.unpack(raw)
        return GroupRecord(num, (lm, ls), ENTRIES_READ_UNKNOWN if er == ID_MAX else er)


class PendingRecord(NamedTuple):
    """An entry delivered and not acknowledged: when it was last delivered (ms), how often,
    and to which consumer."""

    delivered_ms: int
    deliveries: int
    consumer: bytes

    def encode(self) -> bytes:
        return _PENDING.pack(self.delivered_ms, self.deliveries) + self.consumer

    @staticmethod
    def decode(raw: bytes) -> PendingRecord:
        if len(raw) < _PENDING.size:
            raise CorruptionError(f"a pending entry record has {len(raw)} bytes, at least "
                                  f"{_PENDING.size} expected")
        t, n = _PENDING.unpack_from(raw)
        return PendingRecord(t, n, raw[_PENDING.size:])


class ConsumerRecord(NamedTuple):
    """A consumer: when it was last seen (any read or claim) and last active (ms)."""

    seen_ms: int
    active_ms: int

    def encode(self) -> bytes:
        return _CONSUMER.pack(self.seen_ms, self.active_ms)

    @staticmethod
    def decode(raw: bytes) -> ConsumerRecord:
        if len(raw) != _CONSUMER.size:
            raise CorruptionError(f"a consumer record has {len(raw)} bytes, expected "
                                  f"{_CONSUMER.size}")
        s, a = _CONSUMER.unpack(raw)
        return ConsumerRecord(s, a)


__all__ = [
    "ENTRIES_READ_UNKNOWN",
    "ID_MAX",
    "ConsumerRecord",
    "GroupRecord",
    "PendingRecord",
    "StreamId",
    "StreamMeta",
    "anchor_key",
    "consumer_key",
    "consumer_prefix",
    "decode_fields",
    "decode_id",
    "encode_fields",
    "encode_id",
    "format_id",
    "group_key",
    "group_range",
    "group_range_end",
    "pending_key",
    "pending_prefix",
    "prefix_end",
]
