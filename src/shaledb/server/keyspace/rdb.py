"""Redis' RDB value format, as DUMP writes and RESTORE reads it (Redis 7.0: RDB version 10).

A DUMP payload is one RDB object -- a type byte and the value -- then the RDB version (2
bytes, little-endian) and the CRC-64 (Jones polynomial, reflected, as Redis' crc64.c; 8
bytes, little-endian) of everything before it.

What this module writes (Redis 7 reads every one of them; see docs/format.md "DUMP
payloads"): a string as type 0 (the plain length-prefixed bytes, never LZF-compressed or
integer-encoded), a list as type 1 (the plain linked-list type, which RESTORE converts), a
set as type 2, a hash as type 4, a sorted set as type 5 (ZSET_2: binary doubles, from the
highest score down, the bytes Redis 7.0 writes for a skiplist) and a stream as type 19
(STREAM_LISTPACKS_2, Redis 7.0's: listpack nodes, never LZF-compressed, then its state,
groups, PELs and consumers). What it reads: those, and what Redis 7.0 itself dumps --
integer-encoded and LZF-compressed strings, intsets (11), ziplists (10, 12, 13), listpacks
(16, 17), quicklists of ziplists (14) and of listpacks (18), old sorted sets (3) and
streams (15). Refused, with a message that says so: the encodings Redis 7 no longer writes
(zipmap, 9) and modules (6, 7).

Pure functions, no I/O: :mod:`shaledb.server.commands.dump` writes the keyspace.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

from .streams import ID_MAX, StreamId, decode_id

#: The RDB version of the payloads written (Redis 7.0's); RESTORE takes this one or older.
RDB_VERSION: Final = 10

T_STRING, T_LIST, T_SET, T_ZSET, T_HASH, T_ZSET_2 = 0, 1, 2, 3, 4, 5
T_MODULE, T_MODULE_2 = 6, 7
T_HASH_ZIPMAP, T_LIST_ZIPLIST, T_SET_INTSET, T_ZSET_ZIPLIST, T_HASH_ZIPLIST = 9, 10, 11, 12, 13
T_LIST_QUICKLIST, T_STREAM, T_HASH_LISTPACK, T_ZSET_LISTPACK = 14, 15, 16, 17
T_LIST_QUICKLIST_2, T_STREAM_2 = 18, 19

_ZSET_TYPES: Final = frozenset((T_ZSET, T_ZSET_2, T_ZSET_ZIPLIST, T_ZSET_LISTPACK))
_STREAM_TYPES: Final = frozenset((T_STREAM, T_STREAM_2))


class PayloadError(ValueError):
    """The payload is not a value this server can restore (the message says why)."""


class GroupValue(NamedTuple):
    """A consumer group of a decoded stream: its name, last delivered id, entries read
    (-1: not known), its PEL as ``(id, delivery time ms, deliveries, consumer)`` in id
    order, and its consumers as ``(name, seen time ms)``."""

    name: bytes
    last: StreamId
    entries_read: int
    pending: list[tuple[StreamId, int, int, bytes]]
    consumers: list[tuple[bytes, int]]


class StreamValue(NamedTuple):
    """A decoded stream: its live entries ``(id, fields and values alternating)`` in id
    order, and the state Redis keeps beside them."""

    entries: list[tuple[StreamId, list[bytes]]]
    last: StreamId
    max_deleted: StreamId
    added: int
    groups: list[GroupValue]


class Value(NamedTuple):
    """A decoded value: ``kind`` is ``string``, ``list``, ``set``, ``hash``, ``zset`` or
    ``stream``; ``items`` the string's bytes (one item), the list's elements or set's or
    sorted set's members in order, or a hash's fields and values alternating; ``scores``
    a sorted set's scores (one per member); ``stream`` a stream's content."""

    kind: str
    items: list[bytes]
    scores: list[float] | None = None
    stream: StreamValue | None = None


# -- CRC-64 (Jones, reflected: Redis' crc64.c) ----------------------------------------------

def _crc_table() -> list[int]:
    poly = 0x95AC9329AC4BC9B5  # 0xad93d23594c935a9 reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC: Final = _crc_table()


def crc64(data: bytes, crc: int = 0) -> int:
    """Redis' crc64 (``crc64(0, "123456789") == 0xe9c6d914c4b8d9ca``)."""
    table = _CRC
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


# -- writing ---------------------------------------------------------------------------------

def _length(n: int) -> bytes:
    if n < 1 << 6:
        return bytes((n,))
    if n < 1 << 14:
        return bytes((0x40 | (n >> 8), n & 0xFF))
    if n <= 0xFFFFFFFF:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def _string(data: bytes) -> bytes:
    return _length(len(data)) + data


def encode_string(value: bytes) -> bytes:
    return bytes((T_STRING,)) + _string(value)


def encode_header(kind: str, size: int) -> bytes:
    """The type byte and element count of a list, set or hash of ``size`` elements (fields
    for a hash): the caller appends :func:`encode_item` for each element."""
    tag = {"list": T_LIST, "set": T_SET, "hash": T_HASH}[kind]
    return bytes((tag,)) + _length(size)


def encode_item(data: bytes) -> bytes:
    return _string(data)


def encode_zset_header(size: int) -> bytes:
    """The type byte (ZSET_2) and member count of a sorted set: the caller appends
    :func:`encode_zset_item` for each member (Redis writes them from the highest score)."""
    return bytes((T_ZSET_2,)) + _length(size)


def encode_zset_item(member: bytes, score: float) -> bytes:
    """A member and its score as a binary double (8 bytes, little-endian)."""
    return _string(member) + struct.pack("<d", score)


def encode_length(n: int) -> bytes:
    """An RDB length (also how Redis writes a stream's ids, counters and entries read)."""
    return _length(n)


def encode_stream_id(sid: StreamId) -> bytes:
    """An id in raw form (ms and seq, 8 bytes each, big-endian), as PELs hold them."""
    return sid[0].to_bytes(8, "big") + sid[1].to_bytes(8, "big")


def encode_ms(ms: int) -> bytes:
    """A time in milliseconds (8 bytes, little-endian), as rdbSaveMillisecondTime."""
    return ms.to_bytes(8, "little", signed=True)


#: A stream entry's flags in its listpack (Redis' t_stream.c).
STREAM_DELETED: Final = 1
STREAM_SAMEFIELDS: Final = 2


class StreamNodes:
    """The radix-tree nodes of a stream as Redis 7.0 writes them: each a master id (the
    node's first entry id, 16 bytes) and a listpack of a master entry (count, deleted,
    the first entry's fields, 0) and then per entry its flags, id relative to the
    master's, fields (only the values when they are the master's: SAMEFIELDS) and
    lp-count. A node closes at ``max_entries`` entries (0: no bound) or ``max_bytes``
    of listpack (0: no bound), as Redis' streamAppendItem. :meth:`add` returns the bytes
    of the node it closed, so a caller bounds what it holds."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.count = 0
        self._master: StreamId = (0, 0)
        self._fields: list[bytes] = []
        self._items: list[bytes] = []
        self._n = 0
        #: The bytes of the open node's entries so far.
        self.open_bytes = 0

    def add(self, sid: StreamId, kv: list[bytes]) -> bytes:
        """Append an entry (fields and values alternating); the node it closed, or b""."""
        closed = b""
        if self._n and ((self.max_entries and self._n >= self.max_entries)
                        or (self.max_bytes and self.open_bytes >= self.max_bytes)):
            closed = self.close()
        fields = kv[::2]
        if not self._n:
            self._master, self._fields = sid, fields
        ms, seq = sid[0] - self._master[0], sid[1] - self._master[1]
        if fields == self._fields:
            new = [_lp_int(STREAM_SAMEFIELDS), _lp_int(ms), _lp_int(seq)]
            new += [_lp_entry(v) for v in kv[1::2]]
            new.append(_lp_int(len(fields) + 3))
        else:
            new = [_lp_int(0), _lp_int(ms), _lp_int(seq), _lp_int(len(fields))]
            new += [_lp_entry(v) for v in kv]
            new.append(_lp_int(2 * len(fields) + 4))
        self._items += new
        self.open_bytes += sum(len(x) for x in new)
        self._n += 1
        return closed

    def close(self) -> bytes:
        """The open node's bytes (b"" when none is open); the next entry opens one."""
        if not self._n:
            return b""
        head = [_lp_int(self._n), _lp_int(0), _lp_int(len(self._fields))]
        head += [_lp_entry(f) for f in self._fields]
        head.append(_lp_int(0))
        lp = _listpack_of(head + self._items, len(head) + len(self._items))
        self._items, self._n, self.open_bytes = [], 0, 0
        self.count += 1
        return _string(encode_stream_id(self._master)) + _string(lp)


def _lp_int(v: int) -> bytes:
    """A listpack integer entry with its back-length (Redis' lpEncodeIntegerGetType)."""
    if 0 <= v <= 127:
        enc = bytes((v,))
    elif -4096 <= v <= 4095:
        v &= 0x1FFF
        enc = bytes((0xC0 | (v >> 8), v & 0xFF))
    elif -(1 << 15) <= v < 1 << 15:
        enc = b"\xf1" + v.to_bytes(2, "little", signed=True)
    elif -(1 << 23) <= v < 1 << 23:
        enc = b"\xf2" + v.to_bytes(3, "little", signed=True)
    elif -(1 << 31) <= v < 1 << 31:
        enc = b"\xf3" + v.to_bytes(4, "little", signed=True)
    else:
        enc = b"\xf4" + v.to_bytes(8, "little", signed=True)
    return enc + _backlen(len(enc))


_CANONICAL_INT: Final = re.compile(rb"-?[1-9][0-9]{0,19}|0")


def _lp_entry(data: bytes) -> bytes:
    """A listpack entry of ``data``: an integer when it is one in canonical form (as
    Redis' lpStringToInt64 decides), a string otherwise."""
    if _CANONICAL_INT.fullmatch(data):
        v = int(data)
        if -(1 << 63) <= v < 1 << 63:
            return _lp_int(v)
    n = len(data)
    if n < 64:
        enc = bytes((0x80 | n,)) + data
    elif n < 4096:
        enc = bytes((0xE0 | (n >> 8), n & 0xFF)) + data
    else:
        enc = b"\xf0" + n.to_bytes(4, "little") + data
    return enc + _backlen(len(enc))


def _backlen(n: int) -> bytes:
    """An entry's back-length (Redis' lpEncodeBacklen): 7 bits a byte, read backwards."""
    if n <= 127:
        return bytes((n,))
    if n < 16383:
        return bytes((n >> 7, (n & 127) | 128))
    if n < 2097151:
        return bytes((n >> 14, ((n >> 7) & 127) | 128, (n & 127) | 128))
    if n < 268435455:
        return bytes((n >> 21, ((n >> 14) & 127) | 128, ((n >> 7) & 127) | 128,
                      (n & 127) | 128))
    return bytes((n >> 28, ((n >> 21) & 127) | 128, ((n >> 14) & 127) | 128,
                  ((n >> 7) & 127) | 128, (n & 127) | 128))


def _backlen_size(n: int) -> int:
    return 1 if n <= 127 else 2 if n < 16383 else 3 if n < 2097151 \
        else 4 if n < 268435455 else 5


def _listpack_of(entries: list[bytes], count: int) -> bytes:
    """A listpack of encoded entries: total bytes (4), count (2, 65535: unknown), the
    entries, 0xFF."""
    body = b"".join(entries)
    return ((len(body) + 7).to_bytes(4, "little") + min(count, 65535).to_bytes(2, "little")
            + body + b"\xff")


def seal(body: bytes) -> bytes:
    """The DUMP payload of an encoded object: version and checksum appended."""
    body += RDB_VERSION.to_bytes(2, "little")
    return body + crc64(body).to_bytes(8, "little")


# -- reading ---------------------------------------------------------------------------------

def check(payload: bytes) -> bytes:
    """The object bytes of a payload whose version and checksum are right (Redis'
    verifyDumpPayload); PayloadError otherwise (a zero checksum is not skipped: Redis only
    skips with its checksum check off)."""
    if len(payload) < 10:
        raise PayloadError("DUMP payload version or checksum are wrong")
    body, footer = payload[:-8], payload[-10:]
    version = int.from_bytes(footer[:2], "little")
    if version > RDB_VERSION or crc64(body) != int.from_bytes(payload[-8:], "little"):
        raise PayloadError("DUMP payload version or checksum are wrong")
    return payload[:-10]


#: What one element parsed out of a ziplist or listpack is charged against a payload's
#: decoding budget (about what the element costs in memory as a Python object).
ENTRY_COST: Final = 32


class _Reader:
    __slots__ = ("data", "pos", "limit")

    def __init__(self, data: bytes, limit: int) -> None:
        self.data = data
        self.pos = 0
        #: What the payload may still expand to, in bytes (proto-max-bulk-len in all): the
        #: payload cannot hold more than its length in plain strings, but LZF strings and
        #: the elements packed in listpacks could otherwise expand a small payload without
        #: bound (a 375 KB payload named a 33 MB string).
        self.limit = limit

    def charge(self, n: int) -> None:
        if n > self.limit:
            raise PayloadError(f"Bad data format: the DUMP payload expands past "
                               f"proto-max-bulk-len ({self.limit} bytes left of it)")
        self.limit -= n

    def entries(self, parse: Callable[[bytes, int], list[bytes]]) -> list[bytes]:
        """The elements of a ziplist or listpack string, charged to the budget."""
        out = parse(self.string(), self.limit // ENTRY_COST)
        self.charge(len(out) * ENTRY_COST)
        return out

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PayloadError("Bad data format")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def length(self) -> tuple[int, bool]:
        """A length, or (with True) a special string encoding number."""
        b = self.byte()
        kind = b >> 6
        if kind == 0:
            return b & 0x3F, False
        if kind == 1:
            return ((b & 0x3F) << 8) | self.byte(), False
        if kind == 3:
            return b & 0x3F, True
        if b == 0x80:
            return int.from_bytes(self.take(4), "big"), False
        if b == 0x81:
            return int.from_bytes(self.take(8), "big"), False
        raise PayloadError("Bad data format")

    def count(self) -> int:
        n, special = self.length()
        if special:
            raise PayloadError("Bad data format")
        return n

    def string(self) -> bytes:
        n, special = self.length()
        if not special:
            return self.take(n)
        if n == 0:
            return b"%d" % struct.unpack("<b", self.take(1))[0]
        if n == 1:
            return b"%d" % struct.unpack("<h", self.take(2))[0]
        if n == 2:
            return b"%d" % struct.unpack("<i", self.take(4))[0]
        if n == 3:
            clen, ulen = self.count(), self.count()
            self.charge(ulen)
            return lzf_decompress(self.take(clen), ulen)
        raise PayloadError("Bad data format")


def lzf_decompress(data: bytes, size: int) -> bytes:
    """LZF (Redis' lzf_d.c), checked: bad back-references or a wrong size are refused."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            run = ctrl + 1
            if i + run > n:
                raise PayloadError("Bad data format")
            out += data[i:i + run]
            i += run
        else:
            run = ctrl >> 5
            if run == 7:
                if i >= n:
                    raise PayloadError("Bad data format")
                run += data[i]
                i += 1
            if i >= n:
                raise PayloadError("Bad data format")
            ref = len(out) - ((ctrl & 0x1F) << 8) - 1 - data[i]
            i += 1
            run += 2
            if ref < 0:
                raise PayloadError("Bad data format")
            dist = len(out) - ref
            if run <= dist:
                out += out[ref:ref + run]
            else:  # overlaps what it writes: the last ``dist`` bytes, repeated
                out += (out[ref:] * (run // dist + 1))[:run]
        if len(out) > size:
            raise PayloadError("Bad data format")
    if len(out) != size:
        raise PayloadError("Bad data format")
    return bytes(out)


def _intset(blob: bytes) -> list[bytes]:
    if len(blob) < 8:
        raise PayloadError("Bad data format")
    width = int.from_bytes(blob[:4], "little")
    n = int.from_bytes(blob[4:8], "little")
    fmt = {2: "<h", 4: "<i", 8: "<q"}.get(width)
    if fmt is None or len(blob) != 8 + n * width:
        raise PayloadError("Bad data format")
    return [b"%d" % v for (v,) in struct.iter_unpack(fmt, blob[8:])]


def _ziplist(blob: bytes, cap: int) -> list[bytes]:
    """The entries of a ziplist (Redis' ziplist.c)."""
    if len(blob) < 11 or blob[-1] != 0xFF:
        raise PayloadError("Bad data format")
    out: list[bytes] = []
    i, end = 10, len(blob) - 1
    try:
        while i < end:
            i += 5 if blob[i] == 0xFE else 1  # prevlen
            enc = blob[i]
            top = enc >> 6
            if top == 0:
                n, i = enc & 0x3F, i + 1
            elif top == 1:
                n, i = ((enc & 0x3F) << 8) | blob[i + 1], i + 2
            elif enc == 0x80:
                n, i = int.from_bytes(blob[i + 1:i + 5], "big"), i + 5
            else:
                i += 1
                if enc == 0xC0:
                    v, i = int.from_bytes(blob[i:i + 2], "little", signed=True), i + 2
                elif enc == 0xD0:
                    v, i = int.from_bytes(blob[i:i + 4], "little", signed=True), i + 4
                elif enc == 0xE0:
                    v, i = int.from_bytes(blob[i:i + 8], "little", signed=True), i + 8
                elif enc == 0xF0:
                    v, i = int.from_bytes(blob[i:i + 3], "little", signed=True), i + 3
                elif enc == 0xFE:
                    v, i = int.from_bytes(blob[i:i + 1], "little", signed=True), i + 1
                elif 0xF1 <= enc <= 0xFD:
                    v = (enc & 0x0F) - 1
                else:
                    raise PayloadError("Bad data format")
                if i > end:
                    raise PayloadError("Bad data format")
                out.append(b"%d" % v)
                if len(out) > cap:
                    raise PayloadError("Bad data format: the DUMP payload expands past "
                                       "proto-max-bulk-len")
                continue
            if i + n > end:
                raise PayloadError("Bad data format")
            out.append(blob[i:i + n])
            if len(out) > cap:
                raise PayloadError("Bad data format: the DUMP payload expands past "
                                   "proto-max-bulk-len")
            i += n
    except IndexError:
        raise PayloadError("Bad data format") from None
    if i != end:
        raise PayloadError("Bad data format")
    return out


def _listpack(blob: bytes, cap: int) -> list[bytes]:
    """The entries of a listpack (Redis' listpack.c)."""
    if len(blob) < 7 or blob[-1] != 0xFF or int.from_bytes(blob[:4], "little") != len(blob):
        raise PayloadError("Bad data format")
    out: list[bytes] = []
    i, end = 6, len(blob) - 1
    try:
        while i < end:
            start = i
            enc = blob[i]
            value: bytes
            if enc < 0x80:
                value, i = b"%d" % enc, i + 1
            elif enc >> 6 == 2:
                n = enc & 0x3F
                value, i = blob[i + 1:i + 1 + n], i + 1 + n
            elif enc >> 5 == 6:
                v = ((enc & 0x1F) << 8) | blob[i + 1]
                value, i = b"%d" % (v - 8192 if v >= 4096 else v), i + 2
            elif enc >> 4 == 14:
                n = ((enc & 0x0F) << 8) | blob[i + 1]
                value, i = blob[i + 2:i + 2 + n], i + 2 + n
            elif enc == 0xF0:
                n = int.from_bytes(blob[i + 1:i + 5], "little")
                value, i = blob[i + 5:i + 5 + n], i + 5 + n
            elif enc in (0xF1, 0xF2, 0xF3, 0xF4):
                w = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}[enc]
                value = b"%d" % int.from_bytes(blob[i + 1:i + 1 + w], "little", signed=True)
                i += 1 + w
            else:
                raise PayloadError("Bad data format")
            size = i - start
            i += _backlen_size(size)  # the entry's back-length
            if i > end:
                raise PayloadError("Bad data format")
            out.append(value)
            if len(out) > cap:
                raise PayloadError("Bad data format: the DUMP payload expands past "
                                   "proto-max-bulk-len")
    except IndexError:
        raise PayloadError("Bad data format") from None
    if i != end:
        raise PayloadError("Bad data format")
    return out


def decode(obj: bytes, limit: int) -> Value:
    """The value of an RDB object (a checked payload without its footer). ``limit`` bounds
    every string (proto-max-bulk-len)."""
    r = _Reader(obj, limit)
    tag = r.byte()
    items: list[bytes]
    if tag == T_STRING:
        value = Value("string", [r.string()])
    elif tag in (T_LIST, T_SET):
        items = [r.string() for _ in range(_bounded(r.count(), r))]
        value = Value("list" if tag == T_LIST else "set", items)
    elif tag == T_HASH:
        n = _bounded(r.count(), r)
        items = [r.string() for _ in range(2 * n)]
        value = Value("hash", items)
    elif tag == T_SET_INTSET:
        value = Value("set", _intset(r.string()))
    elif tag == T_LIST_ZIPLIST:
        value = Value("list", r.entries(_ziplist))
    elif tag == T_HASH_ZIPLIST:
        value = Value("hash", _even(r.entries(_ziplist)))
    elif tag == T_HASH_LISTPACK:
        value = Value("hash", _even(r.entries(_listpack)))
    elif tag == T_LIST_QUICKLIST:
        items = []
        for _ in range(_bounded(r.count(), r)):
            items += r.entries(_ziplist)
        value = Value("list", items)
    elif tag == T_LIST_QUICKLIST_2:
        items = []
        for _ in range(_bounded(r.count(), r)):
            container = r.count()
            if container == 1:
                items.append(r.string())
            elif container == 2:
                items += r.entries(_listpack)
            else:
                raise PayloadError("Bad data format")
        value = Value("list", items)
    elif tag in _ZSET_TYPES:
        value = _zset(r, tag)
    elif tag in _STREAM_TYPES:
        value = Value("stream", [], None, _stream(r, tag == T_STREAM_2))
    elif tag in (T_MODULE, T_MODULE_2):
        raise PayloadError("the payload holds a module value, which this server cannot load")
    else:
        raise PayloadError("Bad data format")
    if r.pos != len(obj):
        raise PayloadError("Bad data format")
    if value.kind not in ("string", "stream") and not value.items:
        raise PayloadError("Bad data format")  # Redis refuses empty collections (a
    return value                                 # stream may be empty)


#: What C's strtod reads whole (a score in a ziplist or listpack, or an old ZSET's).
_STRTOD: Final = re.compile(
    rb"[ \t\n\v\f\r]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?)",
    re.I)


def _score(text: bytes) -> float:
    if not _STRTOD.fullmatch(text):
        raise PayloadError("Bad data format")
    return float(text.strip())


def _zset(r: _Reader, tag: int) -> Value:
    """A sorted set: ZSET (scores as text, a length byte of 253/254/255 for nan/inf/-inf),
    ZSET_2 (binary doubles), or a ziplist / listpack of members and scores alternating.
    A NaN score or a repeated member is damage (Redis refuses both)."""
    members: list[bytes] = []
    scores: list[float] = []
    if tag in (T_ZSET, T_ZSET_2):
        for _ in range(_bounded(r.count(), r)):
            members.append(r.string())
            if tag == T_ZSET_2:
                scores.append(struct.unpack("<d", r.take(8))[0])
                continue
            n = r.byte()
            scores.append(math.nan if n == 253 else math.inf if n == 254
                          else -math.inf if n == 255 else _score(r.take(n)))
    else:
        items = _even(r.entries(_ziplist if tag == T_ZSET_ZIPLIST else _listpack))
        members = items[::2]
        scores = [_score(t) for t in items[1::2]]
    if any(math.isnan(x) for x in scores) or len(set(members)) != len(members):
        raise PayloadError("Bad data format")
    return Value("zset", members, scores)


def _number(raw: bytes) -> int:
    """A listpack integer of a stream node (the listpack reader gives them as text)."""
    try:
        return int(raw)
    except ValueError:
        raise PayloadError("Bad data format") from None


def _stream_node(master: StreamId, items: list[bytes],
                 out: list[tuple[StreamId, list[bytes]]]) -> None:
    """The live entries of one stream node (see :class:`StreamNodes`) appended to
    ``out``; entries flagged deleted are skipped."""
    try:
        count, _, nfields = (_number(x) for x in items[:3])
        if nfields < 0 or 4 + nfields > len(items) or _number(items[3 + nfields]) != 0:
            raise PayloadError("Bad data format")
        fields = items[3:3 + nfields]
        i, live = 4 + nfields, 0
        while i < len(items):
            flags = _number(items[i])
            sid = (master[0] + _number(items[i + 1]), master[1] + _number(items[i + 2]))
            i += 3
            if flags & STREAM_SAMEFIELDS:
                values = items[i:i + nfields]
                i += nfields
                kv = [x for pair in zip(fields, values, strict=True) for x in pair]
            else:
                n = _number(items[i])
                if n < 0:
                    raise PayloadError("Bad data format")
                kv = items[i + 1:i + 1 + 2 * n]
                i += 1 + 2 * n
            _number(items[i])  # lp-count
            i += 1
            if i > len(items) or not (0 <= sid[0] <= ID_MAX and 0 <= sid[1] <= ID_MAX):
                raise PayloadError("Bad data format")
            if not flags & STREAM_DELETED:
                out.append((sid, kv))
                live += 1
    except (ValueError, IndexError):  # too few items, or values short of the fields
        raise PayloadError("Bad data format") from None
    if live != count or not live:
        raise PayloadError("Bad data format")


def _stream_id(r: _Reader) -> StreamId:
    return r.count(), r.count()


def _legacy_entries_read(sid: StreamId, ids: list[StreamId], last: StreamId) -> int:
    """A group's entries read when the payload predates the counter (STREAM_LISTPACKS):
    Redis' streamEstimateDistanceFromFirstEverEntry with the entries added taken as the
    length and no deleted id, as Redis 7.0 loads such a stream; -1 when unknown."""
    added = len(ids)
    if not added:
        return 0
    if sid == last:
        return added
    if sid > last:
        return -1
    return 0 if sid < ids[0] else 1 if sid == ids[0] else -1


def _stream(r: _Reader, v2: bool) -> StreamValue:
    """A stream (STREAM_LISTPACKS, or _2 as Redis 7.0 writes: with the first id, the
    largest deleted id, the entries added and each group's entries read). Its ids must
    rise, every consumer's pending id be in its group's PEL once, and every PEL entry
    have a consumer."""
    entries: list[tuple[StreamId, list[bytes]]] = []
    for _ in range(_bounded(r.count(), r)):
        key = r.string()
        if len(key) != 16:
            raise PayloadError("Bad data format")
        _stream_node(decode_id(key), r.entries(_listpack), entries)
    length = r.count()
    last = _stream_id(r)
    if v2:
        _stream_id(r)  # the first id: the first entry's
        max_deleted = _stream_id(r)
        added = r.count()
    else:
        max_deleted, added = (0, 0), length
    ids = [sid for sid, _ in entries]
    if length != len(entries) or any(a >= b for a, b in zip(ids, ids[1:], strict=False)) \
            or (ids and ids[-1] > last):
        raise PayloadError("Bad data format")
    groups: list[GroupValue] = []
    names: set[bytes] = set()
    for _ in range(_bounded(r.count(), r)):
        name = r.string()
        glast = _stream_id(r)
        entries_read = r.count() if v2 else _legacy_entries_read(glast, ids, last)
        if entries_read >= 1 << 63:
            entries_read = -1  # Redis writes its -1 (not known) as 2**64 - 1
        pel: dict[StreamId, list[Any]] = {}
        for _ in range(_bounded(r.count(), r)):
            sid = decode_id(r.take(16))
            when = int.from_bytes(r.take(8), "little", signed=True)
            if sid in pel:
                raise PayloadError("Bad data format")
            pel[sid] = [max(when, 0), r.count(), None]
        consumers: list[tuple[bytes, int]] = []
        for _ in range(_bounded(r.count(), r)):
            cname = r.string()
            seen = int.from_bytes(r.take(8), "little", signed=True)
            for _ in range(_bounded(r.count(), r)):
                nack = pel.get(decode_id(r.take(16)))
                if nack is None or nack[2] is not None:
                    raise PayloadError("Bad data format")
                nack[2] = cname
            consumers.append((cname, max(seen, 0)))
        if name in names or len({c for c, _ in consumers}) != len(consumers) \
                or any(n[2] is None for n in pel.values()):
            raise PayloadError("Bad data format")
        names.add(name)
        groups.append(GroupValue(name, glast, entries_read,
                                 [(sid, n[0], n[1], n[2]) for sid, n in sorted(pel.items())],
                                 consumers))
    return StreamValue(entries, last, max_deleted, added, groups)


def _bounded(n: int, r: _Reader) -> int:
    # Every element takes at least one byte: a count beyond what is left is damage (and
    # must not size a loop).
    if n > len(r.data) - r.pos:
        raise PayloadError("Bad data format")
    return n


def _even(items: list[bytes]) -> list[bytes]:
    if len(items) % 2:
        raise PayloadError("Bad data format")
    return items


def pairs(items: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """A hash's (field, value) pairs from its alternating items."""
    return zip(items[::2], items[1::2], strict=True)
