"""Reads at a fixed point: :class:`Snapshot`, and the read methods it shares with
:class:`shaledb.DB` and :class:`shaledb.Transaction`."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType

from .engine.batch import Bytesish, to_key
from .engine.db import Engine
from .errors import ClosedError, InvalidArgument


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes((p[-1] + 1,))


def bound(key: Bytesish | None) -> bytes | None:
    return None if key is None else to_key(key)


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be >= 0, got {limit}")


class Reader:
    """Reads shared by :class:`DB` (latest state) and :class:`Snapshot` (fixed sequence)."""

    _engine: Engine

    def _seq(self) -> int | None:
        return None

    def get(self, key: Bytesish, default: bytes | None = None) -> bytes | None:
        """The value of ``key``, or ``default`` when it is missing or expired."""
        r = self._engine.get_record(to_key(key), self._seq())
        if self._engine.live(r):
            assert r is not None
            return r[3]
        return default

    def ttl(self, key: Bytesish) -> float | None:
        """Seconds until ``key`` expires; None when it has no expiry or is missing."""
        r = self._engine.get_record(to_key(key), self._seq())
        if not self._engine.live(r):
            return None
        assert r is not None
        if r[2] == 0:
            return None
        return max(0.0, r[2] / 1000.0 - self._engine.options.clock())

    def range(self, start: Bytesish | None = None, stop: Bytesish | None = None, *,
              reverse: bool = False, limit: int | None = None,
              include_expired: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Iterate ``(key, value)`` for ``start <= key < stop`` in key order (descending when
        ``reverse``), at most ``limit`` pairs. The iterator sees the state of the moment it
        was created, whatever is written meanwhile.

        ``include_expired`` also yields entries whose TTL has passed but that no flush or
        compaction has removed yet: for tools that delete expired keys eagerly (the server's
        active expiry), never for answering reads."""
        check_limit(limit)
        return self._engine.iterate(bound(start), bound(stop), bool(reverse), limit,
                                    self._seq(), bool(include_expired))

    def prefix(self, prefix: Bytesish, *, reverse: bool = False,
               limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Iterate the pairs whose key starts with ``prefix``, in key order."""
        check_limit(limit)
        p = to_key(prefix)
        return self._engine.iterate(p, prefix_end(p), bool(reverse), limit, self._seq())

    def keys(self, start: Bytesish | None = None, stop: Bytesish | None = None, *,
             reverse: bool = False) -> Iterator[bytes]:
        """Iterate keys in ``[start, stop)``."""
        return (k for k, _ in self.range(start, stop, reverse=reverse))

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __getitem__(self, key: Bytesish) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()


class Snapshot(Reader):
    """A read-only view fixed at one sequence number. TTLs are still judged by the clock at
    read time. Thread-safe; close it when done."""

    def __init__(self, engine: Engine, sequence: int | None = None) -> None:
        self._engine = engine
        self.sequence: int | None = (engine.acquire_snapshot() if sequence is None
                                     else engine.acquire_snapshot_at(sequence))

    def _seq(self) -> int | None:
        seq = self.sequence
        if seq is None:
            raise ClosedError("snapshot is closed")
        return seq

    def close(self) -> None:
        """Release the snapshot. Idempotent."""
        seq, self.sequence = self.sequence, None
        if seq is not None:
            self._engine.release_snapshot(seq)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"<shaledb.Snapshot seq={self.sequence}>"
