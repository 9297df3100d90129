"""Write batches: the unit of atomic writes, and their encoding inside a WAL record.

A batch is a flat list ``[kind, key, expire_at_ms, value, kind, key, ...]`` so that the WAL
payload is one ``msgpack.packb`` call and recovery one ``msgpack.unpackb`` call.

WAL payload layout: ``first_seq`` (8 bytes LE) + ``count`` (4 bytes LE) + msgpack(flat list).
Operation *i* of the batch gets sequence number ``first_seq + i``. Since database formats 6
and 7 every record written also carries its commit time (for point-in-time restore): bit 31
of ``count`` is set and ``commit_ms`` (8 bytes LE, ms since the Unix epoch) follows it, before
the msgpack. A count never reaches 2^31 (a record is at most 4 GiB and an operation takes at
least 5 bytes), so the bit is free; records without it (written by formats up to 5, or
copied from them at an upgrade) are still read.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from ..errors import CorruptionError, InvalidArgument
from ..options import MAX_EXPIRE_AT_MS, MAX_KEY_SIZE, MAX_VALUE_SIZE
from .dbformat import DELETE, ENTRY_OVERHEAD, PUT, charge

_HEAD = struct.Struct("<QI")
_TIME = struct.Struct("<Q")
#: Bit of the payload's count that says a commit time follows it (formats 6 and 7).
TIMED = 1 << 31

Bytesish = bytes | bytearray | memoryview | str


def to_key(key: object) -> bytes:
    """Validate and normalize a key: bytes-like or str (UTF-8), at most MAX_KEY_SIZE bytes."""
    if type(key) is bytes:
        b = key
    elif isinstance(key, str):
        b = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
    else:
        raise TypeError(f"keys must be bytes or str, not {type(key).__name__}")
    if len(b) > MAX_KEY_SIZE:
        raise InvalidArgument(f"key of {len(b)} bytes exceeds the maximum of {MAX_KEY_SIZE} bytes")
    return b


def to_value(value: object) -> bytes:
    """Validate and normalize a value: bytes-like or str (UTF-8), at most MAX_VALUE_SIZE bytes."""
    if type(value) is bytes:
        b = value
    elif isinstance(value, str):
        b = value.encode("utf-8")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
    else:
        raise TypeError(f"values must be bytes or str, not {type(value).__name__}")
    if len(b) > MAX_VALUE_SIZE:
        raise InvalidArgument(
            f"value of {len(b)} bytes exceeds the maximum of {MAX_VALUE_SIZE} bytes"
        )
    return b


def check_expire_at_ms(expire_at_ms: object) -> int:
    """Validate an absolute expiry in ms since the epoch (1 .. MAX_EXPIRE_AT_MS)."""
    if isinstance(expire_at_ms, bool) or not isinstance(expire_at_ms, int):
        raise TypeError("expire_at_ms must be an int (milliseconds since the Unix epoch), not "
                        f"{type(expire_at_ms).__name__}")
    if not 0 < expire_at_ms <= MAX_EXPIRE_AT_MS:
        raise InvalidArgument(
            f"expire_at_ms must be in 1..{MAX_EXPIRE_AT_MS}, got {expire_at_ms}")
    return expire_at_ms


def _zero_clock() -> float:
    return 0.0


def ttl_to_ms(ttl: float | None, clock: Callable[[], float]) -> int:
    """Turn a TTL in seconds into an absolute expiry in ms since the epoch (0 = none)."""
    if ttl is None:
        return 0
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise InvalidArgument(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
    expire = max(1, math.ceil((clock() + ttl) * 1000))
    if expire > MAX_EXPIRE_AT_MS:
        raise InvalidArgument(f"ttl of {ttl!r} s expires after the latest time ShaleDB stores "
                              f"({MAX_EXPIRE_AT_MS} ms since the epoch)")
    return expire


class WriteBatch:
    """An ordered group of puts and deletes applied atomically by :meth:`shaledb.DB.write`.

    Later operations on the same key win. A batch can be reused after :meth:`clear`.
    """

    __slots__ = ("_ops", "_bytes", "_clock", "_ttls")

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._ops: list[Any] = []
        self._bytes = 0
        self._clock = clock
        # Without a clock (a free-standing batch), TTLs stay relative until the batch is
        # written, then the database's clock turns them into expiry times.
        self._ttls: list[tuple[int, float]] = []

    def put(self, key: Bytesish, value: Bytesish, *, ttl: float | None = None,
            expire_at_ms: int | None = None) -> None:
        """Add ``key = value``, expiring after ``ttl`` seconds, or at the absolute time
        ``expire_at_ms`` (milliseconds since the Unix epoch), when given (not both)."""
        # (the common case, bytes within the limits, without the two validating calls)
        k = key if type(key) is bytes and len(key) <= MAX_KEY_SIZE else to_key(key)
        v = value if type(value) is bytes and len(value) <= MAX_VALUE_SIZE else to_value(value)
        exp = 0
        if expire_at_ms is not None:
            if ttl is not None:
                raise InvalidArgument("give ttl or expire_at_ms, not both")
            exp = check_expire_at_ms(expire_at_ms)
        elif ttl is not None:
            if self._clock is not None:
                exp = ttl_to_ms(ttl, self._clock)
            else:
                ttl_to_ms(ttl, _zero_clock)  # validate now, resolve at write time
                self._ttls.append((len(self._ops) + 2, ttl))
        self._ops += (PUT, k, exp, v)
        self._bytes += len(k) + len(v) + ENTRY_OVERHEAD

    def delete(self, key: Bytesish) -> None:
        """Add a deletion of ``key``."""
        k = to_key(key)
        self._ops += (DELETE, k, 0, b"")
        self._bytes += charge(k, b"")

    def clear(self) -> None:
        """Drop every operation."""
        self._ops = []
        self._bytes = 0
        self._ttls = []

    def resolved_ops(self, clock: Callable[[], float]) -> list[Any]:
        """A copy of the flat operation list with relative TTLs turned into expiry times."""
        ops = list(self._ops)
        for index, ttl in self._ttls:
            ops[index] = ttl_to_ms(ttl, clock)
        return ops

    def __len__(self) -> int:
        return len(self._ops) // 4

    @property
    def approximate_size(self) -> int:
        """Approximate memory the batch will occupy in the memtable."""
        return self._bytes

    def ops(self) -> Iterator[tuple[int, bytes, int, bytes]]:
        """The operations as (kind, key, expire_at_ms, value) tuples."""
        o = self._ops
        return zip(o[0::4], o[1::4], o[2::4], o[3::4], strict=True)

    def __repr__(self) -> str:
        return f"WriteBatch({len(self)} ops)"


def encode_batch(first_seq: int, flat_ops: list[Any], commit_ms: int | None = None) -> bytes:
    """The WAL payload for ``flat_ops`` starting at ``first_seq``, stamped with ``commit_ms``
    (ms since the Unix epoch) unless it is None."""
    packed: bytes = msgpack.packb(flat_ops, use_bin_type=True)
    if commit_ms is None:
        return _HEAD.pack(first_seq, len(flat_ops) // 4) + packed
    return _HEAD.pack(first_seq, len(flat_ops) // 4 | TIMED) + _TIME.pack(commit_ms) + packed


def decode_batch_timed(payload: bytes) -> tuple[int, list[Any], int | None]:
    """Inverse of :func:`encode_batch`: ``(first_seq, flat_ops, commit_ms or None)``; raises
    CorruptionError on a malformed payload."""
    try:
        first_seq, count = _HEAD.unpack_from(payload, 0)
        start = _HEAD.size
        commit_ms: int | None = None
        if count & TIMED:
            count &= ~TIMED
            (commit_ms,) = _TIME.unpack_from(payload, start)
            start += _TIME.size
        ops = msgpack.unpackb(payload[start:], raw=True, use_list=True)
    except (struct.error, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptionError(f"malformed WAL batch: {exc}") from exc
    if not isinstance(ops, list) or len(ops) != count * 4:
        raise CorruptionError("malformed WAL batch: operation count does not match")
    return first_seq, ops, commit_ms


def decode_batch(payload: bytes) -> tuple[int, list[Any]]:
    """Inverse of :func:`encode_batch` without the commit time; raises CorruptionError on a
    malformed payload."""
    first_seq, ops, _ = decode_batch_timed(payload)
    return first_seq, ops
