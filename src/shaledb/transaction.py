"""Optimistic transactions.

A transaction reads at a snapshot taken when it begins and buffers its writes. At commit, with
no other write in flight, it checks every key it read (by ``get``, or returned by a range
or prefix scan) or wrote: if any has a version newer than the snapshot, the commit fails with
:class:`~shaledb.TransactionConflict` and writes nothing. Otherwise its writes are applied as
one atomic batch. This makes transactions serializable with respect to the keys they touched.
Phantoms are not detected: a key *inserted* by someone else into a range the transaction
scanned (a key it never saw) does not cause a conflict.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from types import TracebackType

from .engine.batch import Bytesish, to_key, to_value, ttl_to_ms
from .engine.db import Engine
from .engine.dbformat import DELETE, PUT, charge, is_live
from .errors import ClosedError, TransactionConflict
from .snapshot import Snapshot, prefix_end


class Transaction:
    """An optimistic transaction; use ``with db.transaction() as txn:`` (commits on normal
    exit, rolls back when the block raises) or call :meth:`commit` / :meth:`rollback`."""

    def __init__(self, engine: Engine, *, sync: bool = False) -> None:
        self._engine = engine
        self._clock = engine.options.clock
        self._snapshot: Snapshot = Snapshot(self._engine)
        self._seq = self._snapshot.sequence
        self._writes: dict[bytes, tuple[int, int, bytes]] = {}
        self._reads: set[bytes] = set()
        self._open = True
        self.sync = sync

    def _check(self) -> None:
        if not self._open:
            raise ClosedError("transaction is already committed or rolled back")

    # -- reads ----------------------------------------------------------------------------
    def get(self, key: Bytesish, default: bytes | None = None) -> bytes | None:
        """The value of ``key`` as this transaction sees it (its own writes included)."""
        self._check()
        k = to_key(key)
        w = self._writes.get(k)
        if w is not None:
            return w[2] if self._live(w[0], w[1]) else default
        self._reads.add(k)
        return self._snapshot.get(k, default)

    def _live(self, kind: int, expire: int) -> bool:
        return is_live(kind, expire, int(self._clock() * 1000))

    def range(self, start: Bytesish | None = None, stop: Bytesish | None = None, *,
              reverse: bool = False, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Like :meth:`shaledb.DB.range`, at the transaction's snapshot, with its own writes
        merged in. Keys returned join the read set."""
        self._check()
        lo = None if start is None else to_key(start)
        hi = None if stop is None else to_key(stop)
        return self._merged(self._snapshot.range(lo, hi, reverse=reverse), lo, hi, reverse,
                            limit)

    def prefix(self, prefix: Bytesish, *, reverse: bool = False,
               limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Like :meth:`shaledb.DB.prefix`, with the transaction's own writes merged in."""
        self._check()
        p = to_key(prefix)
        return self._merged(self._snapshot.prefix(p, reverse=reverse), p, prefix_end(p),
                            reverse, limit)

    def _merged(self, base: Iterator[tuple[bytes, bytes]], lo: bytes | None, hi: bytes | None,
                reverse: bool, limit: int | None) -> Iterator[tuple[bytes, bytes]]:
        own = sorted((k for k in self._writes
                      if (lo is None or k >= lo) and (hi is None or k < hi)), reverse=reverse)
        writes = self._writes
        # Tag 0 sorts the transaction's own version first when both streams hold a key.
        mine = ((k, 0, writes[k]) for k in own)
        theirs = ((k, 1, v) for k, v in base)
        if reverse:
            stream = heapq.merge(mine, theirs, key=lambda e: (_Rev(e[0]), e[1]))
        else:
            stream = heapq.merge(mine, theirs, key=lambda e: (e[0], e[1]))

        def gen() -> Iterator[tuple[bytes, bytes]]:
            last: bytes | None = None
            for k, _tag, v in stream:
                if k == last:
                    continue
                last = k
                if isinstance(v, tuple):
                    kind, expire, value = v
                    if self._live(kind, expire):
                        yield k, value
                else:
                    self._reads.add(k)
                    yield k, v  # type: ignore[misc]

        it = gen()
        return itertools.islice(it, limit) if limit is not None else it

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: Bytesish, value: Bytesish, *, ttl: float | None = None) -> None:
        """Buffer ``key = value`` until commit."""
        self._check()
        k = to_key(key)
        self._writes.pop(k, None)  # keep the buffer in last-write order
        self._writes[k] = (PUT, ttl_to_ms(ttl, self._clock), to_value(value))

    def delete(self, key: Bytesish) -> None:
        """Buffer a deletion of ``key`` until commit."""
        self._check()
        k = to_key(key)
        self._writes.pop(k, None)
        self._writes[k] = (DELETE, 0, b"")

    def __setitem__(self, key: Bytesish, value: Bytesish) -> None:
        self.put(key, value)

    def __getitem__(self, key: Bytesish) -> bytes:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __delitem__(self, key: Bytesish) -> None:
        self.delete(key)

    # -- end ------------------------------------------------------------------------------
    def _validate(self) -> None:
        seq = self._seq
        assert seq is not None
        latest = self._engine.latest_seq
        for key in itertools.chain(self._reads, self._writes):
            if latest(key) > seq:
                raise TransactionConflict(
                    f"key {key[:64]!r} was changed by another writer after this transaction "
                    "began; nothing was written, retry the transaction")

    def commit(self) -> None:
        """Apply the buffered writes atomically, or raise TransactionConflict when a key this
        transaction read or wrote changed since it began (also for a read-only one)."""
        self._check()
        try:
            if self._writes:
                ops: list[object] = []
                nbytes = 0
                for k, (kind, expire, value) in self._writes.items():
                    ops += (kind, k, expire, value)
                    nbytes += charge(k, value)
                self._engine.write(ops, nbytes, self.sync, check=self._validate)
            elif self._reads:
                # Nothing to write, but the caller may rely on commit() to confirm that what
                # it read is still current.
                self._validate()
        finally:
            self._finish()

    def rollback(self) -> None:
        """Discard the buffered writes. Idempotent."""
        if self._open:
            self._finish()

    def _finish(self) -> None:
        self._open = False
        self._snapshot.close()

    @property
    def active(self) -> bool:
        """Whether the transaction can still be used."""
        return self._open

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None and self._open:
            self.commit()
        else:
            self.rollback()

    def __repr__(self) -> str:
        return f"<shaledb.Transaction seq={self._seq} writes={len(self._writes)}>"


class _Rev:
    """Inverts the order of bytes for a descending merge."""

    __slots__ = ("k",)

    def __init__(self, k: bytes) -> None:
        self.k = k

    def __lt__(self, other: _Rev) -> bool:
        return self.k > other.k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Rev) and self.k == other.k

    def __hash__(self) -> int:
        return hash(self.k)
