"""Data and index blocks.

A version-2 data block (see docs/format.md) keeps its entries searchable *without decoding*:
fixed-width columns for sequence numbers, kinds and expiry times, and for keys and values a
run of msgpack ``bin`` elements plus an array of each element's offset. A point lookup
binary-searches the raw bytes (about eight slices) and slices out the one value it returns;
a scan decodes any run of entries with one msgpack call per column. The block cache keeps
the raw payload, so it holds about twice as many blocks as it would decoded Python lists.

Version-1 tables (one msgpack array of five columns per block) are still read:
:class:`ColumnBlock` answers the same calls from decoded lists.

An index block payload is ``msgpack([last_keys, offsets, sizes])``: the last user key, the
offset and the payload size of every data block.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate
from typing import Any, Literal, Protocol

import msgpack

from ...errors import CorruptionError
from ..dbformat import Record

#: Estimated Python memory per decoded entry beyond its key and value bytes (list slots,
#: int objects, bytes headers); used to charge the block cache honestly for v1 blocks.
DECODED_ENTRY_OVERHEAD = 120
#: Python objects a cached v2 block holds besides its payload (the view and memoryviews).
VIEW_OVERHEAD = 1024

_LITTLE = sys.byteorder == "little"
_HEADER = struct.Struct("<IB3x")
_OFF32, _SEQ64, _EXPIRES = 1, 2, 4
#: Size of a msgpack bin header, by its first byte (0 where the byte is not a bin marker).
_BIN_HDR = tuple({0xC4: 2, 0xC5: 3, 0xC6: 5}.get(b, 0) for b in range(256))

Columns = tuple[Sequence[bytes], Sequence[int], Sequence[int], Sequence[int], Sequence[bytes]]


class Block(Protocol):
    """What a table reader needs from a cached data block, whatever its format version."""

    n: int
    charge: int

    def lower_bound(self, key: bytes) -> int:
        """Index of the first entry whose key is >= ``key``."""

    def get(self, key: bytes, seq: int) -> Record | None:
        """The newest version of ``key`` with sequence <= ``seq``."""

    def latest_seq(self, key: bytes) -> int | None:
        """Sequence of the newest version of ``key`` in this block, or None."""

    def columns(self, a: int, e: int) -> Columns:
        """Keys, seqs, kinds, expiry times and values of entries ``a`` to ``e - 1``."""


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 65536:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _uints(view: memoryview, offset: int, count: int, width: int) -> Sequence[int]:
    """``count`` little-endian unsigned ints of ``width`` bytes at ``offset``, indexable."""
    code: Literal["H", "I", "Q"] = "H" if width == 2 else "I" if width == 4 else "Q"
    if _LITTLE:
        return view[offset:offset + count * width].cast(code)
    a = array(code, view[offset:offset + count * width])  # pragma: no cover
    a.byteswap()  # pragma: no cover
    return a  # pragma: no cover


def _pack_uints(values: Sequence[int], width: int) -> bytes:
    a = array({2: "H", 4: "I", 8: "Q"}[width], values)
    if not _LITTLE:  # pragma: no cover
        a.byteswap()
    raw = a.tobytes()
    return raw + bytes(_pad8(len(raw)) - len(raw))


def _bin_run(items: list[bytes]) -> tuple[bytes, list[int]]:
    """The msgpack bin elements of ``items`` concatenated, and each one's start offset plus
    the end (relative to the run)."""
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    body = packed[len(_array_header(len(items))):]
    lens = list(map(len, items))
    if not lens or max(lens) < 256:
        sizes: Any = map((2).__add__, lens)
    else:
        sizes = (n + (2 if n < 256 else 3 if n < 65536 else 5) for n in lens)
    return body, list(accumulate(sizes, initial=0))


def encode_data_block(keys: list[bytes], seqs: list[int], kinds: list[int],
                      expires: list[int], values: list[bytes]) -> bytes:
    """Payload of a version-2 data block (entries in table order)."""
    n = len(keys)
    kbody, koffs = _bin_run(keys)
    vbody, voffs = _bin_run(values)
    flags = 0
    seq_width = 4
    if seqs and max(seqs) >= 1 << 32:
        flags |= _SEQ64
        seq_width = 8
    has_exp = any(expires)
    if has_exp:
        flags |= _EXPIRES
    fixed = (_HEADER.size + _pad8(n) + _pad8(n * seq_width) + (8 * n if has_exp else 0))
    off_width = 2
    if fixed + 2 * _pad8((n + 1) * 2) + len(kbody) + len(vbody) > 0xFFFF:
        flags |= _OFF32
        off_width = 4
    kstart = fixed + 2 * _pad8((n + 1) * off_width)
    vstart = kstart + len(kbody)
    kinds_raw = bytes(kinds)
    parts = [
        _HEADER.pack(n, flags),
        kinds_raw + bytes(_pad8(n) - n),
        _pack_uints(seqs, seq_width),
        _pack_uints(expires, 8) if has_exp else b"",
        _pack_uints([kstart + o for o in koffs], off_width),
        _pack_uints([vstart + o for o in voffs], off_width),
        kbody,
        vbody,
    ]
    return b"".join(parts)


class RawBlock:
    """A version-2 data block, searched in place."""

    __slots__ = ("payload", "n", "charge", "path", "_kinds", "_seqs", "_expires", "_koffs",
                 "_voffs")

    def __init__(self, payload: bytes, path: str) -> None:
        if len(payload) < _HEADER.size:
            raise CorruptionError(f"table {path!r}: data block shorter than its header")
        n: int
        flags: int
        n, flags = _HEADER.unpack_from(payload)
        seq_width = 8 if flags & _SEQ64 else 4
        off_width = 4 if flags & _OFF32 else 2
        kinds = _HEADER.size
        seqs = kinds + _pad8(n)
        expires = seqs + _pad8(n * seq_width)
        koffs = expires + (8 * n if flags & _EXPIRES else 0)
        voffs = koffs + _pad8((n + 1) * off_width)
        end = voffs + _pad8((n + 1) * off_width)
        if end > len(payload):
            raise CorruptionError(f"table {path!r}: malformed data block (n={n})")
        self.payload = payload
        self.path = path
        self.n = n
        self.charge = len(payload) + VIEW_OVERHEAD
        self._kinds = kinds
        view = memoryview(payload)
        self._seqs = _uints(view, seqs, n, seq_width)
        self._expires = _uints(view, expires, n, 8) if flags & _EXPIRES else None
        self._koffs = _uints(view, koffs, n + 1, off_width)
        self._voffs = _uints(view, voffs, n + 1, off_width)
        if n and (self._koffs[0] != end or self._koffs[n] != self._voffs[0]
                  or self._voffs[n] != len(payload)):
            raise CorruptionError(f"table {path!r}: malformed data block offsets")

    def __len__(self) -> int:
        return self.n

    def key_at(self, j: int) -> bytes:
        """The key of entry ``j``."""
        p = self.payload
        a = self._koffs[j]
        key: bytes = p[a + _BIN_HDR[p[a]]:self._koffs[j + 1]]
        return key

    def lower_bound(self, key: bytes) -> int:
        """Index of the first entry whose key is >= ``key``."""
        p = self.payload
        ko = self._koffs
        hdr = _BIN_HDR
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) >> 1
            a = ko[mid]
            if p[a + hdr[p[a]]:ko[mid + 1]] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def get(self, key: bytes, seq: int) -> Record | None:
        """The newest version of ``key`` with sequence <= ``seq``: (seq, kind, expire, value)."""
        # lower_bound and key_at inlined: this is the innermost loop of every point read.
        p = self.payload
        ko = self._koffs
        hdr = _BIN_HDR
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) >> 1
            a = ko[mid]
            if p[a + hdr[p[a]]:ko[mid + 1]] < key:
                lo = mid + 1
            else:
                hi = mid
        j = lo
        n = self.n
        seqs = self._seqs
        while j < n:
            a = ko[j]
            if p[a + hdr[p[a]]:ko[j + 1]] != key:
                return None
            s = seqs[j]
            if s <= seq:
                a = self._voffs[j]
                exp = self._expires[j] if self._expires is not None else 0
                return (s, p[self._kinds + j], exp, p[a + hdr[p[a]]:self._voffs[j + 1]])
            j += 1
        return None

    def latest_seq(self, key: bytes) -> int | None:
        """Sequence of the newest version of ``key`` in this block, or None."""
        j = self.lower_bound(key)
        if j < self.n and self.key_at(j) == key:
            return int(self._seqs[j])
        return None

    def columns(self, a: int, e: int) -> Columns:
        """Keys, seqs, kinds, expiry times and values of entries ``a`` to ``e - 1``."""
        p = self.payload
        c = e - a
        hdr = _array_header(c)
        try:
            keys = msgpack.unpackb(hdr + p[self._koffs[a]:self._koffs[e]], raw=True)
            values = msgpack.unpackb(hdr + p[self._voffs[a]:self._voffs[e]], raw=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptionError(f"table {self.path!r}: malformed data block: {exc}") from exc
        if len(keys) != c or len(values) != c:
            raise CorruptionError(f"table {self.path!r}: malformed data block columns")
        expires = self._expires[a:e] if self._expires is not None else [0] * c
        return (keys, self._seqs[a:e], p[self._kinds + a:self._kinds + e], expires, values)


class ColumnBlock:
    """A version-1 data block: five decoded column lists."""

    __slots__ = ("keys", "seqs", "kinds", "expires", "values", "n", "charge")

    def __init__(self, payload: bytes, path: str) -> None:
        keys, seqs, kinds, expires, values = _unpack(payload, 5, "data", path)
        self.keys: list[bytes] = keys
        self.seqs: list[int] = seqs
        self.kinds: list[int] = kinds
        self.expires: list[int] = expires
        self.values: list[bytes] = values
        self.n = len(keys)
        self.charge = len(payload) + self.n * DECODED_ENTRY_OVERHEAD

    def __len__(self) -> int:
        return self.n

    def lower_bound(self, key: bytes) -> int:
        """Index of the first entry whose key is >= ``key``."""
        return bisect_left(self.keys, key)

    def get(self, key: bytes, seq: int) -> Record | None:
        """The newest version of ``key`` with sequence <= ``seq``: (seq, kind, expire, value)."""
        keys = self.keys
        j = bisect_left(keys, key)
        n = self.n
        seqs = self.seqs
        while j < n and keys[j] == key:
            s = seqs[j]
            if s <= seq:
                return s, self.kinds[j], self.expires[j], self.values[j]
            j += 1
        return None

    def latest_seq(self, key: bytes) -> int | None:
        """Sequence of the newest version of ``key`` in this block, or None."""
        j = bisect_left(self.keys, key)
        if j < self.n and self.keys[j] == key:
            return int(self.seqs[j])
        return None

    def columns(self, a: int, e: int) -> Columns:
        """Keys, seqs, kinds, expiry times and values of entries ``a`` to ``e - 1``."""
        if a == 0 and e == self.n:
            return self.keys, self.seqs, self.kinds, self.expires, self.values
        return (self.keys[a:e], self.seqs[a:e], self.kinds[a:e], self.expires[a:e],
                self.values[a:e])


def encode_columns(columns: list[list[Any]]) -> bytes:
    """Payload of an index block (and of a version-1 data block)."""
    packed: bytes = msgpack.packb(columns, use_bin_type=True)
    return packed


def _unpack(payload: bytes, ncols: int, what: str, path: str) -> list[list[Any]]:
    try:
        cols = msgpack.unpackb(payload, raw=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptionError(f"table {path!r}: malformed {what} block: {exc}") from exc
    if (not isinstance(cols, list) or len(cols) != ncols
            or not all(isinstance(c, list) and len(c) == len(cols[0]) for c in cols)):
        raise CorruptionError(f"table {path!r}: malformed {what} block")
    return cols


def decode_data_block(payload: bytes, path: str, version: int) -> RawBlock | ColumnBlock:
    """The block object for a verified data block payload of table format ``version``."""
    if version >= 2:
        return RawBlock(payload, path)
    return ColumnBlock(payload, path)


def decode_index_block(payload: bytes, path: str) -> tuple[list[bytes], list[int], list[int]]:
    """Decode a verified index block payload."""
    last_keys, offsets, sizes = _unpack(payload, 3, "index", path)
    return last_keys, offsets, sizes
