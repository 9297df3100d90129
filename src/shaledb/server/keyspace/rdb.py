"""Redis' RDB value format, as DUMP writes and RESTORE reads it (Redis 7.0: RDB version 10).

A DUMP payload is one RDB object -- a type byte and the value -- then the RDB version (2
bytes, little-endian) and the CRC-64 (Jones polynomial, reflected, as Redis' crc64.c; 8
bytes, little-endian) of everything before it.

What this module writes (Redis 7 reads every one of them; see docs/format.md "DUMP
payloads"): a string as type 0 (the plain length-prefixed bytes, never LZF-compressed or
integer-encoded), a list as type 1 (the plain linked-list type, which RESTORE converts), a
set as type 2 and a hash as type 4. What it reads: those, and what Redis 7.0 itself dumps
-- integer-encoded and LZF-compressed strings, intsets (11), ziplists (10, 13),
listpacks (16), quicklists of ziplists (14) and of listpacks (18). Sorted sets and streams
(types 3, 5, 12, 15, 17, 19) are refused with a message that says so, as are the
encodings Redis 7 no longer writes (zipmap, 9) and modules (6, 7).

Pure functions, no I/O: :mod:`shaledb.server.commands.dump` writes the keyspace.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

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


class Value(NamedTuple):
    """A decoded value: ``kind`` is ``string``, ``list``, ``set`` or ``hash``; ``items``
    the string's bytes (one item), the list's elements or set's members in order, or a
    hash's fields and values alternating."""

    kind: str
    items: list[bytes]


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


class _Reader:
    __slots__ = ("data", "pos", "limit")

    def __init__(self, data: bytes, limit: int) -> None:
        self.data = data
        self.pos = 0
        #: The largest string a length may name (the payload cannot hold more, but an LZF
        #: string's stated length could otherwise claim any size).
        self.limit = limit

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
            if ulen > self.limit:
                raise PayloadError("Bad data format")
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
            for k in range(run):  # may overlap what it writes
                out.append(out[ref + k])
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


def _ziplist(blob: bytes) -> list[bytes]:
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
                continue
            if i + n > end:
                raise PayloadError("Bad data format")
            out.append(blob[i:i + n])
            i += n
    except IndexError:
        raise PayloadError("Bad data format") from None
    if i != end:
        raise PayloadError("Bad data format")
    return out


def _listpack(blob: bytes) -> list[bytes]:
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
            i += 1 if size < 128 else 2 if size < 16384 else 3 if size < 2097152 \
                else 4 if size < 268435456 else 5  # the entry's back-length
            if i > end:
                raise PayloadError("Bad data format")
            out.append(value)
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
        value = Value("list", _ziplist(r.string()))
    elif tag == T_HASH_ZIPLIST:
        value = Value("hash", _even(_ziplist(r.string())))
    elif tag == T_HASH_LISTPACK:
        value = Value("hash", _even(_listpack(r.string())))
    elif tag == T_LIST_QUICKLIST:
        items = []
        for _ in range(_bounded(r.count(), r)):
            items += _ziplist(r.string())
        value = Value("list", items)
    elif tag == T_LIST_QUICKLIST_2:
        items = []
        for _ in range(_bounded(r.count(), r)):
            container = r.count()
            if container == 1:
                items.append(r.string())
            elif container == 2:
                items += _listpack(r.string())
            else:
                raise PayloadError("Bad data format")
        value = Value("list", items)
    elif tag in _ZSET_TYPES:
        raise PayloadError("the payload holds a sorted set, which this server cannot "
                           "store yet")
    elif tag in _STREAM_TYPES:
        raise PayloadError("the payload holds a stream, which this server cannot store yet")
    elif tag in (T_MODULE, T_MODULE_2):
        raise PayloadError("the payload holds a module value, which this server cannot load")
    else:
        raise PayloadError("Bad data format")
    if r.pos != len(obj):
        raise PayloadError("Bad data format")
    if value.kind != "string" and not value.items:
        raise PayloadError("Bad data format")  # Redis refuses empty collections
    return value


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
