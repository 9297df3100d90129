"""The public database object: :func:`open`, :class:`DB` and :class:`Snapshot`."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .engine.batch import Bytesish, WriteBatch, check_expire_at_ms, to_key, to_value, ttl_to_ms
from .engine.db import Engine
from .engine.dbformat import DELETE, ENTRY_OVERHEAD, PUT, charge
from .engine.replication import ReplicationBacklog
from .engine.verify import ProgressFn, VerifyReport
from .errors import InvalidArgument, TransactionConflict
from .options import MAX_KEY_SIZE, MAX_VALUE_SIZE, Options
from .snapshot import Reader, Snapshot, bound
from .transaction import Transaction

if TYPE_CHECKING:
    from .backup.repository import BackupInfo, Repository

T = TypeVar("T")


class DB(Reader):
    """An open ShaleDB database. Safe to share between threads. Use :func:`open`."""

    def __init__(self, path: str | os.PathLike[str], options: Options | None = None) -> None:
        options = options or Options()
        archive = options.wal_archive
        if isinstance(archive, (str, os.PathLike)):
            from .backup.repository import Repository

            options = dataclasses.replace(options, wal_archive=Repository(
                os.path.abspath(os.fspath(archive)), fs=options.fs))
        self._engine = Engine(os.fspath(path), options)
        self.path = self._engine.path
        self.options = self._engine.options
        #: Object names of the tables this object already backed up, by (number, size),
        #: per naming scheme (``Repository.naming``: SHA-256, or one repository key's HMAC).
        self._backup_digests: dict[str, dict[tuple[int, int], str]] = {}
        self._backup_lock = threading.Lock()

    # -- reads ----------------------------------------------------------------------------
    def get(self, key: Bytesish, default: bytes | None = None) -> bytes | None:
        """The value of ``key``, or ``default`` when it is missing or expired."""
        k = key if type(key) is bytes and len(key) <= MAX_KEY_SIZE else to_key(key)
        value = self._engine.get_live(k)
        return default if value is None else value

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: Bytesish, value: Bytesish, *, sync: bool = False,
            ttl: float | None = None, expire_at_ms: int | None = None) -> None:
        """Set ``key`` to ``value``; with ``ttl`` (seconds) it expires after that long, with
        ``expire_at_ms`` at that absolute time (ms since the Unix epoch; not both).
        ``sync=True`` returns only once the write is on stable storage (fsync)."""
        k = key if type(key) is bytes and len(key) <= MAX_KEY_SIZE else to_key(key)
        v = value if type(value) is bytes and len(value) <= MAX_VALUE_SIZE else to_value(value)
        if expire_at_ms is not None:
            if ttl is not None:
                raise InvalidArgument("give ttl or expire_at_ms, not both")
            exp = check_expire_at_ms(expire_at_ms)
        else:
            exp = 0 if ttl is None else ttl_to_ms(ttl, self.options.clock)
        self._engine.write([PUT, k, exp, v], len(k) + len(v) + ENTRY_OVERHEAD, sync)

    def delete(self, key: Bytesish, *, sync: bool = False) -> None:
        """Remove ``key`` (no error when it is missing)."""
        k = to_key(key)
        self._engine.write([DELETE, k, 0, b""], charge(k, b""), sync)

    def write(self, batch: WriteBatch, *, sync: bool = False) -> None:
        """Apply every operation of ``batch`` atomically."""
        if not isinstance(batch, WriteBatch):
            raise TypeError(f"write() takes a WriteBatch, not {type(batch).__name__}")
        if len(batch):
            self._engine.write(batch.resolved_ops(self.options.clock), batch.approximate_size,
                               sync)
        elif sync:
            self._engine.sync_wal()  # an empty durable batch still makes earlier writes durable

    def apply_replicated(self, ops: list[Any], commit_ms: int | None, *,
                         sync: bool = False) -> int:
        """Apply one replicated write group (the flat ``[kind, key, expire_at_ms, value, ...]``
        list of a primary's WAL record, see :mod:`shaledb.engine.replication`) atomically,
        keeping its commit time; returns the sequence number of its last operation here.
        Every operation is checked as a local write's would be."""
        if len(ops) % 4 or not ops:
            raise InvalidArgument("a replicated group is a non-empty flat list of "
                                  "[kind, key, expire_at_ms, value] operations")
        nbytes = 0
        for i in range(0, len(ops), 4):
            kind, key, exp, value = ops[i], ops[i + 1], ops[i + 2], ops[i + 3]
            if kind not in (PUT, DELETE) or type(key) is not bytes or type(value) is not bytes \
                    or type(exp) is not int or len(key) > MAX_KEY_SIZE \
                    or len(value) > MAX_VALUE_SIZE or exp < 0:
                raise InvalidArgument(f"replicated operation {i // 4} is malformed")
            nbytes += charge(key, value)
        return self._engine.write(ops, nbytes, sync, commit_ms=commit_ms)

    def attach_replication(self, backlog_bytes: int | None,
                           listener: Callable[[int], None] | None = None
                           ) -> ReplicationBacklog | None:
        """Keep the committed write groups in a replication backlog of ``backlog_bytes``
        (None: stop) and call ``listener(last_seq)`` after each commit; returns the backlog
        (:class:`shaledb.engine.replication.ReplicationBacklog`)."""
        return self._engine.attach_replication(backlog_bytes, listener)

    def wal_groups_after(self, after: int, max_bytes: int) -> list[bytes] | None:
        """Committed write groups past sequence number ``after`` from the WAL segments
        still on disk (see :meth:`attach_replication`); None when they are gone. Reads
        whole segments: call it from a worker thread."""
        return self._engine.wal_groups_after(after, max_bytes)

    @property
    def last_sequence(self) -> int:
        """The sequence number of the last committed operation."""
        return self._engine.last_sequence

    def batch(self, *, sync: bool = False) -> BatchContext:
        """A write batch committed atomically when the ``with`` block ends without an
        exception (and discarded when it raises)."""
        self._engine.check_open()
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

    def snapshot_at(self, sequence: int) -> Snapshot:
        """A snapshot at an older ``sequence``, which needs a snapshot at or below it to be
        open (the versions it reads are kept only for open snapshots; InvalidArgument
        otherwise): moves a view forward without ever losing what it sees."""
        return Snapshot(self._engine, sequence)

    def transaction(self) -> Transaction:
        """An optimistic transaction (see :class:`shaledb.Transaction`)."""
        return Transaction(self._engine)

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
        self._engine.compact_range(bound(start), bound(stop))

    def sync(self) -> None:
        """fsync the write-ahead log: every write so far survives power loss.
        ``DescriptorsExhaustedError`` (no descriptor left): nothing is lost, retry."""
        self._engine.sync_wal()

    def verify(self, *, progress: ProgressFn | None = None,
               rate: int | Callable[[], int | None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> VerifyReport:
        """Check every file of the open database (checksums, manifest references, key order,
        sequence numbers; see ``shaledb.engine.verify``) while it stays open: writes,
        flushes and compactions go on meanwhile. Damage is reported in the result (``.ok``,
        ``.problems``), not raised. ``progress(done, total)`` is called as bytes are read.
        For a closed database use :func:`shaledb.verify` (or ``shaledb verify PATH``).

        ``rate`` caps the reads at that many bytes per second over the whole pass (a token
        bucket that starts empty: N bytes take at least N / rate seconds); it may be a
        callable, asked before every read, so a running check follows a changed setting.
        ``should_stop()`` is asked before every read and while waiting for the rate (at least
        every 50 ms); when it answers true the check ends with
        :class:`shaledb.engine.verify.VerifyStopped`, whose ``report`` holds what was found
        so far. The version read is pinned until the check ends, so tables compactions
        replace meanwhile stay on disk until then (as with a long-lived iterator)."""
        return self._engine.verify(progress, rate=rate, should_stop=should_stop)

    def backup(self, repo: str | os.PathLike[str] | Repository, *,
               progress: Callable[[int, int], None] | None = None) -> BackupInfo:
        """An online backup into the repository ``repo`` (a directory, created if missing, or
        a :class:`shaledb.backup.Repository`) while writes go on. The backup is a consistent
        snapshot at ``info.sequence``: every write acknowledged before the call is in it,
        nothing after that sequence number, and no batch is split. Tables already in the
        repository are not stored again. ``progress(done, total)`` is called as bytes are
        copied, and with (0, 0) while the backup waits for the repository's lock (another
        backup, archive or prune holds it); an exception it raises stops the backup. An
        encrypted database's backup stays encrypted (its files are copied as
        they are, with KEYRING; never the master key). A plain database's backups are
        encrypted by a repository with its own key:
        ``db.backup(Repository(path, encryption_key_file=...))``. See docs/operations.md."""
        from .backup.backup import backup_db
        from .backup.repository import Repository as _Repository

        target = repo if isinstance(repo, _Repository) else os.fspath(repo)
        return backup_db(self, target, progress=progress)

    def stats(self) -> dict[str, Any]:
        """Engine statistics (memtable, levels, compaction, cache, WAL, errors)."""
        return self._engine.stats()

    @property
    def closed(self) -> bool:
        """Whether the database was closed."""
        return self._engine.closed

    @property
    def encrypted(self) -> bool:
        """Whether the database is encrypted at rest (opened with its key)."""
        return self._engine.encrypted

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


def open(path: str | os.PathLike[str], **options: Any) -> DB:  # noqa: A001
    """Open (creating if missing) the database at ``path``. Keyword arguments are
    :class:`shaledb.Options` fields; unknown ones raise InvalidArgument.

    ``encryption_key=<32 bytes>`` or ``encryption_key_file=PATH`` opens (or creates) an
    encrypted database (docs/security.md); EncryptionError when the key does not fit it."""
    return DB(path, Options.from_kwargs(**options))


