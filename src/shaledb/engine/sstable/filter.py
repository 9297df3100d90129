"""The table filter: which user keys a table may hold, answered without touching a block.

Format 2 (see docs/format.md): the 32-bit xxh32 hash of every user key is split into a
bucket number (its top ``k`` bits, ``2**k`` buckets of about 32 keys) and a 16-bit remainder
(its low 16 bits). The filter stores, bucket by bucket, the sorted distinct remainders as an
``array('H')`` and where each bucket starts as an ``array('I')``. A lookup is one hash and
one ``bisect`` inside one bucket, both in C. An absent key is reported present only when its
remainder collides with one in its bucket: about 32 / 65536 = 0.05%, below a 10-bit Bloom
filter's 1%, for about 2.1 bytes per key (a Bloom filter in Python would need several hash
probes per lookup).

Format 1 (still read): the sorted distinct 32-bit hashes as one ``array('I')``, 4 bytes per
key.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable

import xxhash

from ...errors import CorruptionError

_hash = xxhash.xxh32_intdigest
_BIG_ENDIAN = sys.byteorder == "big"
#: Target keys per bucket: the false-positive rate is about this / 65536.
BUCKET_KEYS = 32
_HEAD = struct.Struct("<BI")  # k (bucket bits), number of remainders


def _bucket_bits(n: int) -> int:
    k = 0
    while k < 16 and (n >> k) > BUCKET_KEYS:
        k += 1
    return k


def build_filter(keys: Iterable[bytes]) -> bytes:
    """The format-2 filter block payload for ``keys``."""
    hashes = set(map(_hash, keys))
    k = _bucket_bits(len(hashes))
    shift = 32 - k
    # (bucket << 16 | remainder), sorted and distinct: bucket by bucket, remainders ascending.
    combined = sorted({(h >> shift) << 16 | (h & 0xFFFF) for h in hashes})
    remainders = array("H", [c & 0xFFFF for c in combined])
    starts = array("I", [bisect_left(combined, b << 16) for b in range((1 << k) + 1)])
    if _BIG_ENDIAN:  # pragma: no cover - the format is little-endian
        remainders.byteswap()
        starts.byteswap()
    return _HEAD.pack(k, len(remainders)) + starts.tobytes() + remainders.tobytes()


class KeyFilter:
    """A decoded filter block (format 2, or format 1 with ``version=1``)."""

    __slots__ = ("_fp", "_starts", "_shift")

    def __init__(self, payload: bytes, version: int = 2, path: str = "") -> None:
        if version < 2:
            fp = array("I")
            fp.frombytes(payload[: len(payload) - len(payload) % 4])
            if _BIG_ENDIAN:  # pragma: no cover
                fp.byteswap()
            self._fp: array[int] = fp
            self._starts: array[int] | None = None
            self._shift = 0
            return
        if len(payload) < _HEAD.size:
            raise CorruptionError(f"table {path!r}: filter block too short")
        k, n = _HEAD.unpack_from(payload)
        nstarts = (1 << k) + 1
        if k > 16 or len(payload) != _HEAD.size + 4 * nstarts + 2 * n:
            raise CorruptionError(f"table {path!r}: malformed filter block")
        starts = array("I")
        starts.frombytes(payload[_HEAD.size:_HEAD.size + 4 * nstarts])
        fp = array("H")
        fp.frombytes(payload[_HEAD.size + 4 * nstarts:])
        if _BIG_ENDIAN:  # pragma: no cover
            starts.byteswap()
            fp.byteswap()
        # Bucket starts ascend from 0 to n (a lookup indexes the remainders with them).
        if starts[0] != 0 or starts[-1] != n or list(starts) != sorted(starts):
            raise CorruptionError(f"table {path!r}: malformed filter block")
        self._fp = fp
        self._starts = starts
        self._shift = 32 - k

    def may_contain(self, key: bytes) -> bool:
        """False only when ``key`` is certainly absent."""
        h = _hash(key)
        fp = self._fp
        starts = self._starts
        if starts is None:
            i = bisect_left(fp, h)
            return i < len(fp) and fp[i] == h
        b = h >> self._shift
        hi = starts[b + 1]
        r = h & 0xFFFF
        i = bisect_left(fp, r, starts[b], hi)
        return i < hi and fp[i] == r

    @property
    def nbytes(self) -> int:
        """Memory held by the filter."""
        return len(self._fp) * self._fp.itemsize + (
            0 if self._starts is None else len(self._starts) * 4)
