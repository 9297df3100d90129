"""The public database object: :func:`open`, :class:`DB` and :class:`Snapshot`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from .engine.batch import (
    DELETE,
    ENTRY_OVERHEAD,
    PUT,
    Bytesish,
    WriteBatch,
    to_key,
    to_value,
    ttl_to_ms,
)
from .engine.db import Engine
from .errors import ClosedError, InvalidArgument, TransactionConflict
from .options import MAX_KEY_SIZE, MAX_VALUE_SIZE, Options

T = TypeVar("T")


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes((p[-1] + 1,))


def _bound(key: Bytesish | None) -> bytes | None:
    return None if key is None else to_key(key)


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must be >= 0, got {limit}")


class _Reader:
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
        _check_limit(limit)
        return self._engine.iterate(_bound(start), _bound(stop), bool(reverse), limit,
                                    self._seq(), bool(include_expired))

    def prefix(self, prefix: Bytesish, *, reverse: bool = False,
               limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Iterate the pairs whose key starts with ``prefix``, in key order."""
        _check_limit(limit)
        p = to_key(prefix)
        return self._engine.iterate(p, _prefix_end(p), bool(reverse), limit, self._seq())

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


class DB(_Reader):
    """An open ShaleDB database. Safe to share between threads. Use :func:`open`."""

    def __init__(self, path: str | os.PathLike[str], options: Options | None = None) -> None:
        self._engine = Engine(os.fspath(path), options or Options())
        self.path = self._engine.path
        self.options = self._engine.options

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: Bytesish, value: Bytesish, *, sync: bool = False,
            ttl: float | None = None) -> None:
        """Set ``key`` to ``value``; with ``ttl`` (seconds) it expires after that long.
        ``sync=True`` returns only once the write is on stable storage (fsync)."""
        k = key if type(key) is bytes and len(key) <= MAX_KEY_SIZE else to_key(key)
        v = value if type(value) is bytes and len(value) <= MAX_VALUE_SIZE else to_value(value)
        exp = 0 if ttl is None else ttl_to_ms(ttl, self.options.clock)
        self._engine.write([PUT, k, exp, v], len(k) + len(v) + ENTRY_OVERHEAD, sync)

    def delete(self, key: Bytesish, *, sync: bool = False) -> None:
        """Remove ``key`` (no error when it is missing)."""
        k = to_key(key)
        self._engine.write([DELETE, k, 0, b""], len(k) + ENTRY_OVERHEAD, sync)

    def write(self, batch: WriteBatch, *, sync: bool = False) -> None:
        """Apply every operation of ``batch`` atomically."""
        if not isinstance(batch, WriteBatch):
            raise TypeError(f"write() takes a WriteBatch, not {type(batch).__name__}")
        if len(batch):
            self._engine.write(batch.resolved_ops(self.options.clock), batch.approximate_size,
                               sync)

    def batch(self, *, sync: bool = False) -> BatchContext:
        """A write batch committed atomically when the ``with`` block ends without an
        exception (and discarded when it raises)."""
        self._engine._check_open()
        return BatchContext(self, sync)

    def __setitem__(self, key: Bytesish, value: Bytesish) -> None:
        self.put(key, value)

    def __delitem__(self, key: Bytesish) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        self.delete(key)

    # -- snapshots and transactions ----------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A consistent read-only view of the database as of now. Close it (or use ``with``)
        so compaction can reclaim the versions it keeps alive."""
        return Snapshot(self._engine)

    def transaction(self) -> Transaction:
        """An optimistic transaction (see :class:`shaledb.Transaction`)."""
        from .transaction import Transaction

        return Transaction(self)

    def run_transaction(self, fn: Callable[[Transaction], T], *, retries: int = 10) -> T:
        """Run ``fn(txn)`` and commit, retrying on TransactionConflict up to ``retries``
        more times; returns what ``fn`` returned. ``fn`` may run more than once."""
        attempt = 0
        while True:
            txn = self.transaction()
            try:
                result = fn(txn)
                txn.commit()
                return result
            except TransactionConflict:
                attempt += 1
                if attempt > retries:
                    raise
            finally:
                txn.rollback()

    # -- maintenance ----------------------------------------------------------------------
    def flush(self) -> None:
        """Write the memtable to a table now (and wait for it)."""
        self._engine.flush()

    def compact_range(self, start: Bytesish | None = None, stop: Bytesish | None = None) -> None:
        """Compact every table holding keys in ``[start, stop]`` down the tree, reclaiming
        space of overwritten, deleted and expired keys. Blocks until done."""
        self._engine.compact_range(_bound(start), _bound(stop))

    def sync(self) -> None:
        """fsync the write-ahead log: every write so far survives power loss."""
        self._engine.sync_wal()

    def stats(self) -> dict[str, Any]:
        """Engine statistics (memtable, levels, compaction, cache, WAL, errors)."""
        return self._engine.stats()

    @property
    def closed(self) -> bool:
        """Whether the database was closed."""
        return self._engine.closed

    def close(self) -> None:
        """Sync the WAL, stop background work and release the directory. Idempotent."""
        self._engine.close()

    def __enter__(self) -> DB:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<shaledb.DB {self.path!r}{' closed' if self.closed else ''}>"


class BatchContext(WriteBatch):
    """A :class:`WriteBatch` bound to a database, committed at the end of a ``with`` block."""

    __slots__ = ("_db", "_sync", "_done")

    def __init__(self, db: DB, sync: bool) -> None:
        super().__init__(db.options.clock)
        self._db = db
        self._sync = sync
        self._done = False

    def __enter__(self) -> BatchContext:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._done:
            return
        self._done = True
        if exc_type is None:
            self._db.write(self, sync=self._sync)


class Snapshot(_Reader):
    """A read-only view fixed at one sequence number. TTLs are still judged by the clock at
    read time. Thread-safe; close it when done."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.sequence: int | None = engine.acquire_snapshot()

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


def open(path: str | os.PathLike[str], **options: Any) -> DB:  # noqa: A001
    """Open (creating if missing) the database at ``path``. Keyword arguments are
    :class:`shaledb.Options` fields; unknown ones raise InvalidArgument."""
    return DB(path, Options.from_kwargs(**options))


from .transaction import Transaction  # noqa: E402  (import cycle: Transaction uses DB)

