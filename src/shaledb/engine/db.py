"""The database: write path (group commit), read path, flush, compaction, recovery.

Lock order (always acquire left to right; never call a method that takes a lock to the left
of one you hold):

    _compaction_lock  ->  _manifest_lock  ->  _mutex  ->  leaf locks
    (one compaction)      (manifest writes)    (DB state)   (memtable, WAL sync, caches,
                                                             the replication backlog)

- ``_mutex`` guards the mutable state: the memtables, the current WAL, the writer queue,
  ``_last_seq``, snapshots, version pins, pending outputs and the background error. It is
  never held across I/O: a table build, a compaction, a manifest write, or the seal and
  creation of WAL segments at a memtable switch (the leader lets go of it for those;
  ``_locked_switch_memtable``). ``stats()`` and ``_delete_obsolete_files`` only list.
- Exactly one thread, the leader of the writer queue, appends to the WAL and inserts into the
  memtable, outside ``_mutex``; readers never wait for it. An online backup's cut
  (``_wal_cut``) leads the queue for a moment without writing (takes ``_mutex`` as a writer
  does, after ``backup_source`` let go of ``_manifest_lock``), so no record is half written
  when it reads the WAL's size.
- Helpers named ``_locked_*`` expect ``_mutex`` held and never take it again.
- Replication (engine/replication.py): the leader appends each committed group to the
  backlog under ``_mutex`` (the backlog's own lock is a leaf), and calls the commit
  listener after letting go of every lock.
- Background threads (flusher, compactor, syncer, WAL archiver) do their I/O without
  ``_mutex`` and take it only to install results. Any I/O error on the write path is
  recorded once as the background error: the database then refuses writes (ReadOnlyError)
  until reopened.
- Except running out of file descriptors (EMFILE/ENFILE: DescriptorsExhaustedError), which
  only ever happens while opening or mapping a file, before anything is written: a new WAL
  segment, a table, the map of a growing WAL segment (taken before the record is copied,
  ``WriteAheadLog.reserve``), a manifest. The write that met it fails with that retryable
  error and the next one tries again; a flush or compaction backs off and retries. The
  server's clients hold descriptors too, so this is a condition to ride out, not a reason
  to stop writing until a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

from ..errors import (
    ClosedError,
    CorruptionError,
    DescriptorsExhaustedError,
    EncryptionError,
    InvalidArgument,
    ReadOnlyError,
    ShaleError,
    StorageError,
)
from ..options import Options
from ..version import __version__ as _pkg_version
from . import vfs
from .archive import ArchivedSegment, BackupSource, SourceFile, WalArchive
from .batch import decode_batch_timed, encode_batch
from .cache import LRUCache, TableCache
from .compaction import (
    Compaction,
    CompactionAborted,
    MergeJob,
    drop_obsolete,
    level_scores,
    merge_writer,
    pick_compaction,
    range_compaction,
    run_merge,
)
from .compaction_worker import CompactionWorker
from .crypto import (
    Keyring,
    MasterKey,
    keyring_info,
    master_key,
    new_keyring,
    open_keyring,
    rewrap_keyring,
)
from .dbformat import DELETE, PUT, Entry, Record, record_is_live
from .filenames import (
    CURRENT,
    KEYRING,
    LOCK,
    LOST_DIR,
    OPTIONS,
    log_file,
    log_name,
    manifest_name,
    parse,
    parse_prepared,
    prepared_log_name,
    table_file,
    table_name,
)
from .iterator import (
    concat,
    concat_chunks,
    memtable_chunks,
    memtable_source,
    merge,
    merge_chunks,
    visible_chunks,
)
from .logfile import content_end, file_header_size, lost_bytes, scan_log
from .manifest import Version, VersionEdit, VersionSet
from .memtable import MemTable
from .optionsfile import (
    DB_FORMAT_VERSION,
    ENCRYPTED_DB_FORMAT_VERSION,
    decode_options,
    encode_options,
    expected_log_format,
    is_encrypted,
    log_format_2_from,
    wal_async_seal_from,
)
from .replication import ReplicationBacklog, group_span
from .sstable import FileMeta, TableReader
from .sstable.block import Block
from .sstable.writer import TableWriter
from .verify import LiveState, ProgressFn, VerifyReport, verify_live
from .vfs import FileSystem, Lock, default_fs
from .wal import SegmentScan, WriteAheadLog, scan_segment, scan_segment_bytes

_log = logging.getLogger("shaledb")

#: Operations whose failure in a compaction is retried rather than fatal: nothing was written.
_READ_OPS = frozenset({"read", "open", "stat", "worker"})
#: Seconds between retries of a flush that found no file descriptor free.
_DESCRIPTOR_RETRY_SECONDS = 0.2
_COMPACTION_RETRY_SECONDS = 1.0

#: Largest write group (bytes of memtable charge) the leader builds from queued writers.
MAX_GROUP_BYTES: Final = 1 << 20
#: Ranges with a limit up to this are read at once (a seek and a few next calls), unpinned.
EAGER_RANGE_LIMIT: Final = 32


class _Once:
    """Calls ``fn(arg)`` on the first call only, or when collected if it never was (the
    release of an iterator's version pin: a generator never started never runs its
    ``finally``, but frees its arguments when it is collected)."""

    __slots__ = ("_fn", "_arg")

    def __init__(self, fn: Callable[[Version], None], arg: Version) -> None:
        self._fn: Callable[[Version], None] | None = fn
        self._arg = arg

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn(self._arg)

    def __del__(self) -> None:
        self()


class _Writer:
    __slots__ = ("ops", "nbytes", "sync", "check", "done", "error", "seq", "cv", "commit_ms")

    def __init__(self, ops: list[Any] | None, nbytes: int, sync: bool,
                 check: Callable[[], None] | None, commit_ms: int | None = None) -> None:
        self.ops = ops
        self.nbytes = nbytes
        self.sync = sync
        self.check = check
        #: The commit time to record instead of now (a point-in-time restore replaying
        #: archived records); such a writer is never grouped with others.
        self.commit_ms = commit_ms
        self.done = False
        self.error: BaseException | None = None
        self.seq = 0
        # Created (on the DB mutex) only when this writer has to wait: each waiting writer
        # is woken by name, the next leader first, instead of all of them contending.
        self.cv: threading.Condition | None = None


#: What :meth:`Engine._write_alone` queues while it writes: it leads, so no field is read.
_ALONE: Final = _Writer(None, 0, False, None)


class Engine:
    """The storage engine behind :class:`shaledb.DB` (which adds the user-facing API)."""

    def __init__(self, path: str, options: Options) -> None:
        self.path = vfs.absolute(path)
        # The key bytes are not kept: the open below takes what it needs from them.
        self.options = options.without_key()
        self.fs: FileSystem = options.fs or default_fs()
        self._clock = options.clock
        self._mutex = threading.Lock()
        self._bg_cv = threading.Condition(self._mutex)
        self._writer_cv = threading.Condition(self._mutex)
        self._manifest_lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._writers: deque[_Writer] = deque()
        self._mem = MemTable()
        self._imm: MemTable | None = None
        self._imm_last_seq = 0
        self._imm_next_log = 0  # WAL number the memtable after ``_imm`` started in
        self._mem_first_log = 0  # oldest WAL segment holding data of ``_mem``
        self._wal: WriteAheadLog | None = None
        #: Segments replaced at memtable switches, not yet sealed and closed (the flush
        #: thread does it, off the writer's thread).
        self._retired_wals: list[WriteAheadLog] = []
        #: The next WAL segment, prepared ahead (created, header fsynced) so that a memtable
        #: switch does no I/O but a rename on the writer's thread (the server's event loop).
        self._next_wal: WriteAheadLog | None = None
        self._last_seq = 0
        self._last_commit_ms: int | None = None  # of the newest WAL record (backups)
        self._snapshots: Counter[int] = Counter()
        self._pinned: dict[int, Version] = {}
        self._deferred: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._pending_outputs: set[int] = set()
        self._bg_error: ShaleError | None = None
        #: The last flush attempt found no descriptor free (cleared by the next flush that
        #: works); writers that would wait for that flush fail with it instead.
        self._flush_shortage: DescriptorsExhaustedError | None = None
        self._compaction_read_error: str | None = None
        self._closed = False
        self._closing = False
        self._compaction_wanted = False
        self._lock: Lock | None = None
        self._dir_lock: Lock | None = None
        self._threads: list[threading.Thread] = []
        self._block_cache: LRUCache[tuple[int, int], Block] | None = (
            LRUCache(options.block_cache_size) if options.block_cache_size > 0 else None)
        self._tables: TableCache[TableReader] = TableCache(options.max_open_files,
                                                           self._open_table,
                                                           self._table_dropped)
        self._versions = VersionSet(self.fs, self.path, options.num_levels,
                                    options.max_manifest_size, self._mutex)
        # Large compactions run in a worker process (another core, no GIL contention), on
        # the file system fs.worker_state() describes (a test's fault injector too).
        self._worker: CompactionWorker | None = (
            CompactionWorker() if not options.read_only else None)
        self.counters: Counter[str] = Counter()
        self._delay_debt = 0.0  # seconds of write throttling owed (see _locked_make_room)
        self._last_sync_group = 0  # writers in the last group that fsynced
        self._delay_ms = 0.0  # total time writes were throttled, and stalled
        self._stall_ms = 0.0
        # Hot-path counters are plain attributes (a Counter update costs a dict round trip).
        self._writes = self._wal_records = self._wal_bytes_written = self._group_commits = 0
        self._memtable_size = options.memtable_size
        self._l0_slowdown = options.l0_slowdown_trigger
        self.recovery_seconds = 0.0
        #: The first file number whose logs are of log format 2 (OPTIONS).
        self._log_since = 0
        #: The first WAL segment number whose predecessor may be unsealed (OPTIONS).
        self._async_seal_since = 0
        #: Payloads of the WAL records replayed into the memtable (copied at open).
        self._replayed: list[bytes] = []
        #: Prepared WAL segments a crash left (removed once recovery saved what they hold).
        self._stale_prepared: list[int] = []
        #: What the last open's WAL recovery replayed and cut (see stats()["wal_recovery"]).
        self._cuts: list[dict[str, Any]] = []
        self._recovery: dict[str, Any] = {"segments": 0, "records": 0, "cut": self._cuts}
        #: The data keys of an encrypted database (None: a plain one); zeroed at close.
        self._keyring: Keyring | None = None
        #: WAL segments from these numbers on are kept on disk (online backups copying them).
        self._log_pins: Counter[int] = Counter()
        archive = options.wal_archive
        if archive is not None and not isinstance(archive, WalArchive):
            raise InvalidArgument("option wal_archive must be opened as a repository first "
                                  "(shaledb.open does it for a path)")
        #: Where WAL segments go before they are deleted (None: nowhere).
        self._archive: WalArchive | None = archive
        #: Obsolete segments waiting for the archive thread; segments archived whole.
        self._archive_due: set[int] = set()
        self._archived: set[int] = set()
        self._archive_error: str | None = None
        #: Committed write groups for replication (None: this database feeds no replica),
        #: and who is told the last sequence number after each commit (the server's feeders).
        self._repl_backlog: ReplicationBacklog | None = None
        self._commit_listener: Callable[[int], None] | None = None
        try:
            master = master_key(options.encryption_key, options.encryption_key_file)
            try:
                self._open(master, options.rotate_data_key)
            finally:
                if master is not None:
                    master.close()
        except BaseException:
            self._abandon_open()
            raise

    # ------------------------------------------------------------------------------------
    # Open and recovery
    def _open(self, master: MasterKey | None, rotate_data_key: bool) -> None:
        start = time.perf_counter()
        opts = self.options
        fs = self.fs
        current = vfs.join(self.path, CURRENT)
        if not fs.exists(self.path):
            if not opts.create_if_missing or opts.read_only:
                raise InvalidArgument(f"database {self.path!r} does not exist "
                                      "(open it with create_if_missing=True to create it)")
            fs.mkdirs(self.path)
        elif not fs.is_dir(self.path):
            raise InvalidArgument(f"{self.path!r} exists and is not a directory")
        # The directory itself is locked by every open (read-only ones too, writing nothing),
        # then LOCK, which a writer creates and stamps with its pid (and which older ShaleDB
        # versions lock alone). A read-only open locks an existing LOCK without writing it.
        self._dir_lock = fs.lock_dir(self.path)
        lock_path = vfs.join(self.path, LOCK)
        if not opts.read_only:
            self._lock = fs.lock(lock_path)
        elif fs.exists(lock_path):
            self._lock = fs.lock(lock_path, readonly=True)
        if fs.exists(current):
            if opts.error_if_exists:
                raise InvalidArgument(f"database {self.path!r} already exists "
                                      "(error_if_exists=True)")
            info = self._check_options_file()
            self._use_keyring(self._load_keyring(info, master, rotate_data_key))
            since = log_format_2_from(info)
            async_since = wal_async_seal_from(info)
            assert since is not None and async_since is not None
            self._log_since = since
            self._async_seal_since = async_since
            self._versions.recover(since)
            self._check_tables_present()
            if int(info["format_version"]) < DB_FORMAT_VERSION and not opts.read_only:
                # New files are written in the current format: say so first, so that an
                # older ShaleDB refuses the directory instead of misreading them. Logs from
                # the next number on are of format 2 (if older ones are not), and WAL
                # segments from it on may leave their predecessor unsealed.
                numbers = [n for _, n in filter(None, map(parse, fs.listdir(self.path)))]
                upgrade_from = max([self._versions.next_file, *[n + 1 for n in numbers]])
                self._log_since = min(self._log_since, upgrade_from)
                self._async_seal_since = min(self._async_seal_since, upgrade_from)
                self._write_options_file()
        else:
            if not opts.create_if_missing or opts.read_only:
                raise InvalidArgument(f"{self.path!r} holds no database (no CURRENT file); "
                                      "open it with create_if_missing=True to create one")
            self._clear_interrupted_creation()
            self._log_since = self._async_seal_since = 0
            if master is not None:
                # KEYRING before OPTIONS: a database whose OPTIONS say "encrypted" always has
                # its keys (a creation cut short before CURRENT is cleared on the next open).
                keyring, raw = new_keyring(master)
                self._use_keyring(keyring)
                fs.write_file_atomic(vfs.join(self.path, KEYRING), raw)
            self._write_options_file()
            self._versions.write_new_manifest()
        recovered = self._recover_wal()
        if not opts.read_only:
            self._save_lost()
            for n in self._stale_prepared:
                fs.remove(prepared_log_name(self.path, n))
            # The recovered writes go to new files (fsyncgate: the pages the WAL was read
            # from may never have reached the disk, and a later fsync of the same file would
            # not tell): the records still only in the memtable are copied into a new WAL
            # segment, fsynced, and one new manifest then records the tables replay wrote and
            # retires every old segment at once. (The memtable stays: reads after a reopen
            # are as fast as before it.)
            wal_number = self._versions.new_file_number()
            wal = WriteAheadLog(fs, self.path, wal_number, keyring=self._keyring)
            try:
                for payload in self._replayed:
                    wal.append(payload)
                if self._replayed:
                    wal.sync()
                fs.sync_dir(self.path)
            except BaseException:
                with contextlib.suppress(Exception):
                    wal.close()
                raise
            self._wal = wal
            self._replayed = []
            v = self._versions
            v.current = v.current.apply(VersionEdit(added=[(0, m) for m in recovered]))
            v.log_number = wal_number
            v.last_seq = max(v.last_seq, self._last_seq)
            self._mem_first_log = wal_number
            v.write_new_manifest()
            self._pending_outputs.clear()  # the recovered tables are in the manifest now
            self._delete_obsolete_files()
            self._prepare_wal()
            self._start_threads()
        self.recovery_seconds = time.perf_counter() - start

    def _clear_interrupted_creation(self) -> None:
        """Before creating a database where no CURRENT exists: a creation that failed before
        CURRENT was durable leaves OPTIONS, a MANIFEST and temporary files, but never a table
        or a WAL segment (those come after CURRENT). Remove such leftovers; refuse anything
        that holds data (a database that lost its CURRENT)."""
        names = self.fs.listdir(self.path)
        data = sorted(n for n in names if (parse(n) or ("", 0))[0] in ("sst", "log"))
        if data:
            shown = ", ".join(data[:5]) + (", ..." if len(data) > 5 else "")
            raise CorruptionError(
                f"{self.path!r} holds database files ({shown}) but no CURRENT file; refusing "
                f"to overwrite them. Salvage the data with `shaledb repair {self.path} DEST`")
        leftovers = [n for n in names if (parse(n) or ("", 0))[0] == "manifest"
                     or n in (OPTIONS, CURRENT + ".tmp", OPTIONS + ".tmp", KEYRING,
                              KEYRING + ".tmp")]
        for name in leftovers:
            self.fs.remove(vfs.join(self.path, name))
        if leftovers:
            self.fs.sync_dir(self.path)

    def _check_tables_present(self) -> None:
        """Refuse to open when a table the manifest lists is missing or has another size than
        the manifest recorded: serving the rest would return holes as missing keys."""
        present = set(self.fs.listdir(self.path))
        problems = []
        for _, f in self._versions.current.files():
            name = table_file(f.number)
            if name not in present:
                problems.append(f"{name} is missing")
                continue
            size = self.fs.file_size(table_name(self.path, f.number))
            if size != f.size:
                problems.append(f"{name} has {size} bytes, the manifest recorded {f.size}")
        if problems:
            shown = "; ".join(problems[:20]) + ("; ..." if len(problems) > 20 else "")
            raise CorruptionError(
                f"database {self.path!r}: {len(problems)} table(s) the manifest lists are "
                f"damaged: {shown}. Restore them from a backup, or salvage the rest with "
                f"`shaledb repair {self.path} DEST`")

    def _abandon_open(self) -> None:
        self._closing = self._closed = True
        with self._mutex:
            self._bg_cv.notify_all()
        for t in self._threads:
            t.join()
        if self._worker is not None:
            self._worker.close()
        if self._next_wal is not None:
            # The open got as far as preparing the next segment (its manifest is written):
            # record its number as close() does, so that the next open never reuses it.
            with contextlib.suppress(Exception):
                self._record_prepared_number(self._next_wal.number)
        for closer in (self._wal.close if self._wal else None, self._versions.close):
            if closer is not None:
                with contextlib.suppress(Exception):
                    closer()
        if self._next_wal is not None:  # prepared at the end of the open
            self._next_wal.discard()
            self._next_wal = None
        if self._keyring is not None:
            self._keyring.close()
        self._release_locks()

    def _release_locks(self) -> None:
        for lock in (self._lock, self._dir_lock):
            if lock is not None:
                lock.release()
        self._lock = self._dir_lock = None

    def _check_options_file(self) -> dict[str, Any]:
        """What OPTIONS records (refusing newer formats, and a missing or damaged file: a
        database always has one, written before its CURRENT)."""
        path = vfs.join(self.path, OPTIONS)
        if not self.fs.exists(path):
            raise CorruptionError(
                f"database {self.path!r} has no OPTIONS file (it records the format the "
                f"database was written in); restore it from a backup, or salvage the data "
                f"with `shaledb repair {self.path} DEST`")
        return decode_options(self.fs.read_file(path), self.path)

    def _write_options_file(self) -> None:
        self.fs.write_file_atomic(vfs.join(self.path, OPTIONS), encode_options(
            f"shaledb {_pkg_version}", self.options.persistent(), self._log_since,
            self._async_seal_since, encrypted=self._keyring is not None))

    def _use_keyring(self, keyring: Keyring | None) -> None:
        self._keyring = keyring
        self._versions.keyring = keyring

    def _load_keyring(self, info: dict[str, Any], master: MasterKey | None,
                      rotate_data_key: bool) -> Keyring | None:
        """The data keys of an existing database, checked against the key given: an
        encrypted database needs its key, a plain one takes none (EncryptionError)."""
        path = vfs.join(self.path, KEYRING)
        if not is_encrypted(info):
            if master is not None:
                raise EncryptionError(
                    f"database {self.path!r} is not encrypted, but a key was given: open it "
                    f"without one, or write an encrypted copy with `shaledb encrypt "
                    f"{self.path} DEST --key-file KEY`")
            return None
        if not self.fs.exists(path):
            raise CorruptionError(
                f"database {self.path!r} is encrypted but its KEYRING file is missing: "
                f"nothing in it can be decrypted without it; restore it from a backup of "
                f"the database")
        raw = self.fs.read_file(path)
        if master is None:
            info_k = keyring_info(raw, self.path)
            raise EncryptionError(
                f"database {self.path!r} is encrypted (key id {info_k['key_id']}): open it "
                f"with its key (encryption_key_file=..., or --encryption-key-file)")
        if rotate_data_key:
            if self.options.read_only:
                raise InvalidArgument("rotate_data_key needs a database opened for writing")
            # A fresh data key for every file written from now on; the old ones stay (the
            # files written with them still need them) until compaction has replaced them.
            raw = rewrap_keyring(raw, master, master, self.path, new_data_key=True)
            self.fs.write_file_atomic(path, raw)
        return open_keyring(raw, master, self.path)

    @property
    def encrypted(self) -> bool:
        """Whether the database is encrypted."""
        return self._keyring is not None

    def _recover_wal(self) -> list[FileMeta]:
        """Replay the live WAL segments into the memtable, in order, up to the first damage
        (docs/format.md, "WAL recovery"). Returns the L0 tables written on the way when the
        memtable filled up (not yet in any manifest: orphans if this open fails)."""
        opts = self.options
        versions = self._versions
        names = self.fs.listdir(self.path)
        found = [p for p in map(parse, names) if p is not None]
        prepared = [n for n in map(parse_prepared, names) if n is not None]
        # A crash can leave files numbered past the manifest's counter: never reuse a number.
        for n in [n for _, n in found] + prepared:
            versions.next_file = max(versions.next_file, n + 1)
        self._stale_prepared = prepared
        for n in prepared:
            self._check_prepared(n)
        logs = sorted(n for kind, n in found if kind == "log" and n >= versions.log_number)
        last_seq = versions.last_seq
        prev_end: int | None = None  # last sequence of the previous record replayed
        mem = self._mem
        tables: list[FileMeta] = []
        records = 0
        cut_at: int | None = None  # index in ``logs`` of the segment where replay stopped
        prev_sealed = True  # the previous segment ended in a seal (none: nothing to doubt)
        for idx, number in enumerate(logs):
            seg = scan_segment(self.fs, self.path, number,
                               expected_log_format(self._log_since, number, self.encrypted),
                               self._keyring)
            problem: tuple[int, str, bool] | None = None  # offset, reason, synced
            if seg.scan.number is not None and seg.scan.number != number:
                del seg.batches[:]
                problem = (0, f"its header says it is segment {seg.scan.number} (a file copied "
                           "or renamed into the database?)", True)
            for i, (first_seq, ops) in enumerate(seg.batches):
                # The first record may start at or below the manifest's last sequence (a
                # database of format 2 kept replayed records in the WAL); each next one
                # continues the previous one exactly.
                expected = last_seq + 1 if prev_end is None else prev_end + 1
                end = first_seq + len(ops) // 4 - 1
                if prev_end is not None and end <= prev_end and first_seq <= expected - 1:
                    # A copy of records already replayed: an open that copied them into a
                    # new segment died before its manifest retired the old ones.
                    continue
                if first_seq > expected or (prev_end is not None and first_seq != expected):
                    # Checksums fine, numbers not: records are missing (or repeated). Unless
                    # the segment before this one was never sealed and its unsynced tail
                    # did not reach the disk: a crash, when nothing later vouches for it.
                    del seg.batches[i:]
                    synced = (first_seq <= expected or i > 0 or prev_sealed
                              or self._later_logs_vouch(logs[idx:], seg))
                    problem = (seg.offsets[i], f"sequence {first_seq} where {expected} was "
                               "expected: records are missing or repeated", synced)
                    break
                mem.apply(first_seq, ops)
                if not opts.read_only:  # to be copied into the new segment
                    self._replayed.append(seg.scan.records[i])
                records += 1
                prev_end = end
                last_seq = max(last_seq, prev_end)
                if mem.approximate_size >= opts.memtable_size and not opts.read_only:
                    # Keep memory bounded while replaying a long log.
                    tables.extend(self._write_level0(mem, last_seq))
                    mem = self._mem = MemTable()
                    self._replayed = []
            if problem is None and seg.malformed is not None:
                problem = (seg.malformed, "a record with a good checksum does not decode", True)
            damage = seg.scan.damage
            if problem is None and damage is not None:
                # An older segment can hold unsynced writes too: the flush thread seals it
                # after the next one started. But nothing in a later segment is fsynced before
                # it is sealed, so a sync there vouches for all of it.
                synced = damage.vouched or (idx < len(logs) - 1 and self._later_logs_vouch(
                    logs[idx + 1:], None))
                problem = (damage.offset, damage.reason, synced)
            if problem is not None:
                self._cut_wal(seg, problem, logs[idx + 1:])
                cut_at = idx
                break
            prev_sealed = seg.scan.sealed
        self._last_seq = last_seq
        self._recovery = {"segments": len(logs) if cut_at is None else cut_at + 1,
                          "records": records, "cut": self._cuts}
        return tables

    def _check_prepared(self, number: int) -> None:
        """A prepared WAL segment left by a crash (removed after recovery). Records in it
        mean its rename at a memtable switch was not durable; nothing in it was fsynced then
        (its name is made durable first), so they are unsynced writes: cut, kept in lost/.
        Encrypted, the records are judged by their framing (checksums), not decrypted: they
        are kept with the file's header (lost_bytes), whose salt and data key id (in
        KEYRING, durable before any file used it) decrypt them with the database's key."""
        path = prepared_log_name(self.path, number)
        data = self.fs.read_file(path)
        expect = expected_log_format(self._log_since, number, self.encrypted)
        scan = scan_log(data, path, expect=expect, keyring=self._keyring, framing_only=True)
        end = content_end(data, expect)
        # From the first record, or from the first damage when none is intact (a torn first
        # record may have intact ones behind it): never drop bytes unsaved. Sync marks alone
        # hold no writes.
        start = (scan.offsets[0] if scan.records
                 else scan.damage.offset if scan.damage is not None else end)
        if end > start:
            self._cuts.append({"file": os.path.basename(path), "offset": start,
                               "bytes": end - start, "synced": False,
                               "reason": "a prepared WAL segment whose new name a crash lost",
                               "saved_to": None,
                               "_data": lost_bytes(data, start, end, scan.version)})

    def _later_logs_vouch(self, numbers: list[int], first: SegmentScan | None) -> bool:
        """Whether the segment before ``numbers`` was sealed, as far as they tell: one of them
        was fsynced past its header (or says so with a sync mark), which happens only after
        every older segment is sealed. A segment written before format 4 was always sealed
        before the next one started: True."""
        if numbers and numbers[0] < self._async_seal_since:
            return True
        for n in numbers:
            if first is not None and n == first.number:
                scan = first.scan
            else:
                data = self.fs.read_file(log_name(self.path, n))
                # What a segment says about its fsyncs is framing: no need to decrypt it.
                scan = scan_log(data, log_name(self.path, n),
                                expect=expected_log_format(self._log_since, n, self.encrypted),
                                keyring=self._keyring, framing_only=True)
            if scan.vouches_prior:
                return True
        return False

    def _cut_wal(self, seg: SegmentScan, problem: tuple[int, str, bool],
                 later: list[int]) -> None:
        """Recovery stops at ``problem`` in ``seg``: refuse (strict, synced damage) or cut
        there, keeping what is cut for :meth:`_save_lost`."""
        offset, reason, synced = problem
        name = log_file(seg.number)
        if synced and self.options.wal_recovery == "strict":
            raise CorruptionError(
                f"WAL segment {seg.path!r} is damaged at offset {offset} ({reason}), in data "
                f"that had been synced: this is corruption, not a crash. Restore from a "
                f"backup, or open with wal_recovery='point_in_time' to keep the "
                f"{len(seg.batches)} records before it in this segment (the rest is saved "
                f"under lost/)")
        data = self.fs.read_file(seg.path)
        expect = expected_log_format(self._log_since, seg.number, self.encrypted)
        end = content_end(data, expect)
        self._cuts.append({"file": name, "offset": offset, "bytes": max(0, end - offset),
                           "synced": synced, "reason": reason, "saved_to": None,
                           "_data": lost_bytes(data, offset, end, seg.scan.version)})
        for number in later:
            whole = self.fs.read_file(log_name(self.path, number))
            whole = whole[:content_end(whole, expected_log_format(self._log_since, number,
                                                                  self.encrypted))]
            # As synced as the cut: after a crash's cut (format 4: an unsealed segment's lost
            # tail) nothing later vouches for them, so they were never confirmed durable.
            self._cuts.append({"file": log_file(number), "offset": 0, "bytes": len(whole),
                               "synced": synced, "reason": "follows a cut segment",
                               "saved_to": None, "_data": whole})

    def _save_lost(self) -> None:
        """Write what recovery cut (WAL bytes, a torn manifest edit) under ``lost/``,
        durably, before anything deletes the files it came from; log each cut."""
        cut = self._versions.cut
        if cut is not None:
            name, offset, data = cut
            self._cuts.append({"file": name, "offset": offset, "bytes": len(data),
                               "synced": False, "reason": "torn last manifest edit",
                               "saved_to": None, "_data": data})
            self._versions.cut = None
        if not self._cuts:
            return
        lost = vfs.join(self.path, LOST_DIR)
        self.fs.mkdirs(lost)
        present = set(self.fs.listdir(lost))
        for c in self._cuts:
            data = c.pop("_data")
            if not data:
                continue
            base = f"{c['file']}.at-{c['offset']}"
            name, n = base, 1
            while name in present:  # an earlier recovery cut the same spot
                n += 1
                name = f"{base}.{n}"
            present.add(name)
            f = self.fs.create(vfs.join(lost, name), exclusive=True)
            try:
                f.append(data)
                f.sync()
            finally:
                f.close()
            c["saved_to"] = f"{LOST_DIR}/{name}"
        self.fs.sync_dir(lost)
        for c in self._cuts:
            level = logging.WARNING if c["synced"] else logging.INFO
            _log.log(level, "recovery of %s cut %d bytes of %s at offset %d (%s; %s); "
                     "they are kept in %s", self.path, c["bytes"], c["file"], c["offset"],
                     c["reason"], "damage in synced data" if c["synced"]
                     else "unsynced writes a crash tore", c["saved_to"] or "(all zeros)")

    def _write_level0(self, mem: MemTable, smallest_snapshot: int) -> list[FileMeta]:
        """Write a frozen memtable to new L0 tables (fsynced, their names durable): the one
        path for a runtime flush and a recovery flush. The caller records them in the
        manifest; until then they are pending outputs (or, at open, orphans)."""
        mem.frozen = True
        writer = TableWriter(self.fs, lambda n: table_name(self.path, n),
                             self._new_output_number, block_size=self.options.block_size,
                             compression=self.options.compression, target_size=None,
                             keyring=self._keyring)
        try:
            outputs = writer.write(drop_obsolete(mem.iter_all(), smallest_snapshot,
                                                 self._now_ms(), False))
            self.fs.sync_dir(self.path)  # new tables' names are durable before the manifest
        except BaseException:
            writer.abandon()
            with self._mutex:
                self._pending_outputs.difference_update(writer.created)
            for n in writer.created:
                with contextlib.suppress(ShaleError):
                    self.fs.remove(table_name(self.path, n))
            raise
        self.counters["flushes"] += 1
        self.counters["flush_bytes_written"] += writer.bytes_written
        return outputs

    def _start_threads(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            ("flush", self._flush_loop), ("compaction", self._compaction_loop)]
        if self.options.fsync_interval is not None:
            targets.append(("wal-sync", self._sync_loop))
        if self._archive is not None:
            targets.append(("wal-archive", self._archive_loop))
        for name, target in targets:
            t = threading.Thread(target=target, name=f"shaledb-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        with self._mutex:
            self._compaction_wanted = True
            self._bg_cv.notify_all()

    # ------------------------------------------------------------------------------------
    # Helpers
    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _commit_ms(self) -> int:
        """Now, as a WAL record's commit time (a test's odd clock cannot fail a write)."""
        ms = self._now_ms()
        return ms if 0 <= ms < 1 << 64 else max(0, min(ms, (1 << 64) - 1))

    def check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"database {self.path!r} is closed")

    def _locked_check_writable(self) -> None:
        self.check_open()
        if self.options.read_only:
            raise ReadOnlyError(f"database {self.path!r} was opened read-only")
        if self._bg_error is not None:
            raise ReadOnlyError(
                f"database {self.path!r} refuses writes after an earlier error: "
                f"{self._bg_error}. Fix the cause (disk space, hardware) and reopen it.")
        if self._closing:
            raise ClosedError(f"database {self.path!r} is closing")

    def _locked_fail(self, exc: BaseException, what: str) -> ShaleError:
        """The one background-error handler: record ``exc`` (from ``what``: "write", "flush",
        "compaction", "WAL sync", ...) as the error that stops all writes until the database
        is reopened, wake everyone who waits on the engine, and return the typed error to
        raise. A ShaleError is kept as it is; anything else (a bug, MemoryError) becomes a
        StorageError chained to it: after it the state of the files is unknown."""
        if isinstance(exc, ClosedError) and self._closing:
            # Not a failure: a flush or compaction that ended as close() began found the
            # database closing (``_install`` refuses the edit) and stops. Recorded, it made
            # close() skip the WAL's clean seal and the archive of the live segments, so a
            # point-in-time restore right after close() stopped short of the last commit.
            self._bg_cv.notify_all()
            self._writer_cv.notify_all()
            return exc
        err = exc if isinstance(exc, ShaleError) else StorageError(
            f"{what} failed unexpectedly: {exc!r}", None, "internal")
        if isinstance(exc, DescriptorsExhaustedError):
            # Met where a failure is fatal (after the WAL append began): not retryable.
            err = StorageError(str(exc), exc.errno, exc.op)
        if err is not exc:
            err.__cause__ = exc
        if self._bg_error is None:
            self._bg_error = err
        self._bg_cv.notify_all()
        self._writer_cv.notify_all()
        return err

    @staticmethod
    def _retryable(exc: DescriptorsExhaustedError) -> DescriptorsExhaustedError:
        """A fresh error for one caller (several threads may raise the same condition)."""
        err = DescriptorsExhaustedError(str(exc), exc.errno, exc.op)
        err.__cause__ = exc.__cause__
        return err

    def _fail(self, exc: BaseException, what: str) -> ShaleError:
        """:meth:`_locked_fail` for callers that do not hold the mutex."""
        with self._mutex:
            return self._locked_fail(exc, what)

    def _open_table(self, number: int, meta: FileMeta | None) -> TableReader:
        if self._closed:  # (a lock-free get racing close(): never open a table after it)
            raise ClosedError(f"database {self.path!r} is closed")
        reader = TableReader(self.fs, table_name(self.path, number), number, self._block_cache,
                             self._keyring, self.options.mmap_reads)
        if meta is not None:
            try:
                reader.check_identity(meta)
            except BaseException:
                reader.close()
                raise
        if self._block_cache is not None:
            self._block_cache.pin(reader.meta_bytes)
        return reader

    def _table_dropped(self, reader: TableReader) -> None:
        if self._block_cache is not None:
            self._block_cache.pin(-reader.meta_bytes)

    def _table(self, meta: FileMeta) -> TableReader:
        if self._closed:
            raise ClosedError(f"database {self.path!r} is closed")
        return self._tables.get(meta.number, meta)

    def _locked_smallest_snapshot(self) -> int:
        self._locked_drain()
        return min(self._snapshots) if self._snapshots else self._last_seq

    # ------------------------------------------------------------------------------------
    # Write path
    def write(self, ops: list[Any] | None, nbytes: int, sync: bool,
              check: Callable[[], None] | None = None, force_flush: bool = False,
              commit_ms: int | None = None) -> int:
        """Apply the flat op list atomically; returns the sequence of its last op.

        ``check`` runs with no other write in flight and may raise to cancel the write
        (optimistic transactions). ``ops=None`` with ``force_flush`` freezes the memtable.
        ``commit_ms``: the commit time the WAL record carries (default: now).
        """
        if ops and not sync and check is None and commit_ms is None and not force_flush:
            last = self._write_alone(ops)
            if last:
                return last
        w = _Writer(ops, nbytes, sync, check, commit_ms)
        with self._mutex:
            writers = self._writers
            writers.append(w)
            if len(writers) > 1:
                cv = w.cv = threading.Condition(self._mutex)
                while not w.done and writers[0] is not w:
                    cv.wait()
                if w.done:
                    if w.error is not None:
                        raise w.error
                    return w.seq
            try:
                # The leader checks for the whole group (followers never run this part).
                if self._closed or self._closing or self._bg_error is not None \
                        or self.options.read_only:
                    self._locked_check_writable()
                if (force_flush or self._mem.approximate_size >= self._memtable_size
                        or len(self._versions.current.levels[0]) >= self._l0_slowdown):
                    self._locked_make_room(force_flush, nbytes)
            except BaseException:
                writers.popleft()
                self._locked_wake_next_leader()
                raise
            if sync and len(writers) < self._last_sync_group:
                # Concurrent durable writers were just woken from the previous group and are
                # on their way back: give them the GIL once so they join this fsync instead
                # of the next (a commit delay of one thread switch, only under concurrency).
                self._mutex.release()
                try:
                    time.sleep(0)
                finally:
                    self._mutex.acquire()
            group = [w]
            if len(writers) > 1 and w.check is None and ops is not None and commit_ms is None:
                size = nbytes
                for other in itertools.islice(writers, 1, None):
                    if other.check is not None or other.ops is None \
                            or other.commit_ms is not None:
                        break
                    size += other.nbytes
                    if size > MAX_GROUP_BYTES:
                        break
                    group.append(other)
            first_seq = self._last_seq + 1
            wal = self._wal
            mem = self._mem
        error: BaseException | None = None
        fatal = False
        any_sync = False
        last = first_seq - 1
        wal_bytes = 0
        payload = b""
        try:
            if ops is not None:
                assert wal is not None
                if w.check is not None:
                    w.check()  # may raise: cancels this write only (a transaction conflict)
                if len(group) == 1:
                    flat, any_sync = ops, w.sync
                else:
                    flat = [x for g in group for x in g.ops]  # type: ignore[union-attr]
                    any_sync = any(g.sync for g in group)
                if flat:
                    if wal.note_due:
                        # Before the record: never lost with it. Best effort when there is
                        # no room for it (nothing written); an error past that leaves the
                        # log in an unknown state, as a failed record append: fatal.
                        fatal = True
                        wal.note_prior_sealed()
                        fatal = False
                    # Formats 6 and 7: every record carries its commit time (PITR).
                    if commit_ms is None:
                        commit_ms = self._commit_ms()
                    payload = encode_batch(first_seq, flat, commit_ms)
                    record = wal.frame(payload)
                    # (frame may refuse a too large group: harmless, nothing written)
                    try:
                        wal.reserve(len(record))  # the map it needs, before any byte
                        if any_sync:
                            # The prior segment's seal and this segment's name (a directory
                            # fsync: a descriptor), before any byte too: retryable here.
                            wal.ready_for_sync()
                    except DescriptorsExhaustedError:
                        wal.unframe()  # encrypted: the retry seals this offset again
                        self.counters["descriptor_shortages"] += 1
                        raise  # nothing written: retryable
                    except BaseException:
                        fatal = True  # as if the append had failed (ENOSPC, EIO)
                        raise
                    # From here on a failure leaves the WAL and the memtable in an unknown
                    # state (the record may be in the log, its sequence numbers used): fatal.
                    fatal = True
                    wal_bytes = wal.append_framed(record)
                    if any_sync:
                        wal.sync(mark=True)
                    mem.apply(first_seq, flat)
                    last = first_seq + len(flat) // 4 - 1

        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            error = exc
        with self._mutex:
            if error is not None and fatal:
                error = self._locked_fail(error, "write")
            if error is None:
                self._last_seq = last
                if wal_bytes:
                    self._last_commit_ms = commit_ms
                    if self._repl_backlog is not None:
                        self._repl_backlog.append(first_seq, last, payload)
                self._writes += len(group)
                self._wal_records += 1
                self._wal_bytes_written += wal_bytes
                if len(group) > 1:
                    self._group_commits += 1
                if any_sync:
                    self._last_sync_group = len(group)
                elif mem.approximate_size >= self._memtable_size:
                    # The next write switches memtables, and the flush thread then seals
                    # this segment (an fsync that a durable write in the next segment may
                    # have to wait for): have the background syncer (fsync_interval) start
                    # writing it back now.
                    self._bg_cv.notify_all()
            if len(group) == 1:
                writers.popleft()
                w.done = True
                w.seq = last
                self._locked_wake_next_leader()
            else:
                for g in group:
                    writers.popleft()
                    g.done = True
                    g.seq = last
                    if error is not None and g is not w:
                        g.error = error
                self._locked_wake_next_leader()  # first: it starts the next group's I/O
                for g in group:
                    if g.cv is not None:
                        g.cv.notify()
        if error is not None:
            raise error
        listener = self._commit_listener
        if listener is not None and wal_bytes:
            listener(last)
        return last

    def _write_alone(self, ops: list[Any]) -> int:
        """The single-writer fast path of :meth:`write` (a non-durable write, no check, no
        flush): when no other writer is queued and nothing needs attention (memtable room,
        L0 below the slowdown trigger, the database writable), lead the queue without a
        _Writer or a group and apply ``ops`` alone, exactly as a group of one would be.
        Returns the sequence of its last op, or 0 when it did nothing (the caller then takes
        the general path)."""
        with self._mutex:
            writers = self._writers
            if (writers or self._closed or self._closing or self._bg_error is not None
                    or self.options.read_only
                    or self._mem.approximate_size >= self._memtable_size
                    or len(self._versions.current.levels[0]) >= self._l0_slowdown):
                return 0
            # Queued as a writer would be: later writers wait behind it (their own cv), and
            # close() waits for it. Nobody ever groups it or waits on its cv (it leads).
            writers.append(_ALONE)
            first_seq = self._last_seq + 1
            wal = self._wal
            mem = self._mem
        error: BaseException | None = None
        fatal = False
        wal_bytes = 0
        commit_ms = 0
        payload = b""
        last = first_seq + len(ops) // 4 - 1
        try:
            assert wal is not None
            if wal.note_due:  # see write(): before the record, fatal past its start
                fatal = True
                wal.note_prior_sealed()
                fatal = False
            commit_ms = self._commit_ms()
            payload = encode_batch(first_seq, ops, commit_ms)
            record = wal.frame(payload)
            try:
                wal.reserve(len(record))
            except DescriptorsExhaustedError:
                wal.unframe()
                self.counters["descriptor_shortages"] += 1
                raise
            except BaseException:
                fatal = True
                raise
            fatal = True
            wal_bytes = wal.append_framed(record)
            mem.apply(first_seq, ops)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            error = exc
        with self._mutex:
            if error is not None and fatal:
                error = self._locked_fail(error, "write")
            if error is None:
                self._last_seq = last
                self._last_commit_ms = commit_ms
                if self._repl_backlog is not None:  # as write() does: replicas get it too
                    self._repl_backlog.append(first_seq, last, payload)
                self._writes += 1
                self._wal_records += 1
                self._wal_bytes_written += wal_bytes
                if mem.approximate_size >= self._memtable_size:
                    self._bg_cv.notify_all()  # see write(): the syncer starts on the segment
            writers.popleft()
            self._locked_wake_next_leader()
        if error is not None:
            raise error
        listener = self._commit_listener
        if listener is not None:
            listener(last)
        return last

    def attach_replication(self, backlog_bytes: int | None,
                           listener: Callable[[int], None] | None) -> ReplicationBacklog | None:
        """Keep the committed write groups in a new backlog of ``backlog_bytes`` (None: stop
        keeping them) and call ``listener(last_seq)`` after every committed group (outside
        every lock, on the writer's thread). Returns the backlog. The backlog starts at the
        current last sequence number: it is attached with no write group in flight."""
        with self._mutex:
            self.check_open()
            self._locked_lead_queue()
            try:
                backlog = (ReplicationBacklog(backlog_bytes, self._last_seq)
                           if backlog_bytes is not None else None)
                self._repl_backlog = backlog
                self._commit_listener = listener
            finally:
                self._writers.popleft()
                self._locked_wake_next_leader()
        return backlog

    def wal_groups_after(self, after: int, max_bytes: int) -> list[bytes] | None:
        """The committed write groups past sequence number ``after`` read back from the WAL
        segments still on disk (those not flushed yet), oldest first, at least one and then
        up to ``max_bytes``; ``[]`` when ``after`` is the last sequence number; None when
        the group right after ``after`` is no longer on disk, or ``after`` is not the end
        of a group. For a replica further behind than the in-memory backlog (engine/
        replication.py). Reads whole segments (about a memtable each, as recovery does):
        call it from a worker thread. The segments are pinned while they are read."""
        with self._mutex:
            self.check_open()
            log_number = self._versions.log_number
            self._log_pins[log_number] += 1
        try:
            segments, last, _ = self._wal_cut(log_number)
            if after == last:
                return []
            if after > last:
                return None
            out: list[bytes] = []
            total = 0
            expecting = after + 1
            for sf in segments:
                parsed = parse(sf.name)
                if parsed is None or sf.size <= 0:
                    continue
                number = parsed[1]
                data = self.fs.read_file(sf.path)[:sf.size]
                expect = expected_log_format(self._log_since, number, self.encrypted)
                cut = self._recovery_cut(number)
                if cut is not None:
                    data = data[:max(cut, 0)]
                seg = scan_segment_bytes(data, sf.path, number, expect, self._keyring)
                for payload in seg.scan.records:
                    first, end = group_span(payload)
                    if end <= after:
                        continue  # before the reader's position (or a recovered copy)
                    if first != expecting:
                        return None  # older groups are gone, or a position inside one
                    out.append(payload)
                    total += len(payload)
                    expecting = end + 1
                    if total >= max_bytes or end >= last:
                        return out
            return out or None
        finally:
            with self._mutex:
                self._log_pins[log_number] -= 1
                if self._log_pins[log_number] <= 0:
                    del self._log_pins[log_number]
            if not self.options.read_only:
                self._delete_obsolete_files()

    @property
    def last_sequence(self) -> int:
        """The sequence number of the last committed operation."""
        return self._last_seq

    def _locked_lead_queue(self) -> None:
        """Queue an empty writer and wait (releasing the mutex) until it leads the writer
        queue: then no write group is in flight and none starts, so the caller may read or
        change what writers touch. The caller must pop it (``self._writers.popleft()``) and
        call :meth:`_locked_wake_next_leader` under the mutex when done, even on error."""
        w = _Writer(None, 0, False, None)
        writers = self._writers
        writers.append(w)
        if len(writers) > 1:
            cv = w.cv = threading.Condition(self._mutex)
            while writers[0] is not w:
                cv.wait()

    def _locked_wake_next_leader(self) -> None:
        if self._writers:
            cv = self._writers[0].cv
            if cv is not None:
                cv.notify()
        elif self._closing:
            self._writer_cv.notify_all()  # close() waits for the queue to drain

    def _locked_make_room(self, force: bool, nbytes: int = 0) -> None:
        opts = self.options
        allow_delay = not force
        while True:
            if self._bg_error is not None:
                self._locked_check_writable()
            l0 = len(self._versions.current.levels[0])
            if allow_delay and l0 >= opts.l0_slowdown_trigger:
                # Back-pressure: throttle writes to a rate that falls as L0 grows, so that
                # compaction catches up in many short delays rather than one long stop.
                allow_delay = False
                steps = max(1, opts.l0_stop_trigger - opts.l0_slowdown_trigger)
                rate = opts.delayed_write_rate * max(1, opts.l0_stop_trigger - l0) / steps
                self._delay_debt += nbytes / rate
                if self._delay_debt >= 0.001:  # sleep in steps of at least 1 ms
                    delay = min(self._delay_debt, 1.0)
                    self._delay_debt = 0.0
                    self.counters["write_slowdowns"] += 1
                    self._delay_ms += delay * 1000
                    self._mutex.release()
                    try:
                        time.sleep(delay)
                    finally:
                        self._mutex.acquire()
            elif (self._mem.entries == 0 if force
                  else self._mem.approximate_size < opts.memtable_size):
                return
            elif self._imm is not None or l0 >= opts.l0_stop_trigger:
                if self._imm is not None and self._flush_shortage is not None:
                    # The flush this write waits for cannot open its table now: fail fast
                    # (retryable) instead of holding the writer, maybe the server's event
                    # loop, until descriptors come back.
                    self.counters["descriptor_shortages"] += 1
                    raise self._retryable(self._flush_shortage)
                self.counters["write_stalls"] += 1
                t0 = time.monotonic()
                self._bg_cv.wait(timeout=1.0)
                self._stall_ms += (time.monotonic() - t0) * 1000
                if self._closing:
                    raise ClosedError(f"database {self.path!r} is closing")
            else:
                self._locked_switch_memtable()
                force = False

    def _locked_switch_memtable(self) -> None:
        old = self._wal
        assert old is not None
        new, self._next_wal = self._next_wal, None
        number = new.number if new is not None else self._versions.new_file_number()
        error: BaseException | None = None
        retryable = False
        # The file operations below run without the mutex, so readers never wait for them;
        # this thread leads the writer queue, so nobody else appends to the WAL meanwhile.
        # No fsync here: each can take a second on a busy disk, on this thread (the server's
        # event loop). The next segment was prepared ahead (_prepare_wal), so the switch only
        # renames it; the flush thread seals the old one (_seal_retired_wals), and the new one
        # seals it, and makes its own name durable, before any fsync of its own.
        self._mutex.release()
        try:
            if new is not None:
                new.activate(prior=old)
            else:  # not prepared (preparing it met EMFILE: the open's, or the flush thread's)
                new = WriteAheadLog(self.fs, self.path, number, prior=old,
                                    keyring=self._keyring)
                # Its directory entry must be durable before its first fsync counts.
                self.fs.sync_dir(self.path)
        except BaseException as exc:  # noqa: BLE001 - recorded below, under the mutex
            error = exc
            if new is not None:
                new.discard()
            # No descriptor for the new segment: nothing is lost (the old one stays current,
            # untouched) once the half-made one is gone.
            retryable = (isinstance(exc, DescriptorsExhaustedError)
                         and self._remove_log(number))
        finally:
            self._mutex.acquire()
        if error is not None:
            if retryable:
                self.counters["descriptor_shortages"] += 1
                raise self._retryable(cast(DescriptorsExhaustedError, error)) from None
            raise self._locked_fail(error, "starting a new WAL segment") from None
        assert new is not None
        # From here on the engine writes to the new segment; the old one waits for its seal.
        self._wal = new
        self._retired_wals.append(old)
        self._locked_freeze_memtable(number)

    def _prepare_wal(self) -> None:
        """Create the next WAL segment ahead of its memtable switch (at open, and by the
        flush thread after each switch): under a name recovery skips, its header fsynced.
        Without a descriptor it is left for later (the switch then creates the segment
        itself, as before); any other error is the disk failing, as on the switch itself."""
        with self._mutex:
            if (self._next_wal is not None or self._closing or self._closed
                    or self._bg_error is not None):
                return
            number = self._versions.new_file_number()
        try:
            wal = WriteAheadLog(self.fs, self.path, number, prepared=True,
                                keyring=self._keyring)
        except ShaleError as exc:
            with contextlib.suppress(ShaleError):
                self.fs.remove(prepared_log_name(self.path, number))
            if isinstance(exc, DescriptorsExhaustedError):
                self.counters["descriptor_shortages"] += 1
                return
            raise self._fail(exc, "preparing a WAL segment") from None
        with self._mutex:
            # (close() may have begun meanwhile: then nobody would ever close it)
            keep = not self._locked_stopping()
            if keep:
                self._next_wal = wal
        if not keep:
            wal.discard()

    def _locked_stopping(self) -> bool:
        return self._closing or self._closed

    def _seal_retired_wals(self) -> None:
        """Seal and close the WAL segments that memtable switches replaced (the flush thread,
        before it writes their memtable out; and close())."""
        with self._mutex:
            retired = list(self._retired_wals)
        for old in retired:
            old.seal()  # durable, and marked complete; a no-op if a later sync got there first
            old.close()
            with self._mutex:
                self._retired_wals.remove(old)
                self.counters["wal_syncs_closed"] += old.syncs
        if retired:
            with self._mutex:
                wal = self._wal
            if wal is not None:
                wal.make_name_durable()  # the rename at the switch (a directory fsync)
            self._note_seal()

    def _note_seal(self) -> None:
        """Have the current WAL segment say (a sync mark) that the segments before it are
        sealed: if one of them is damaged later, that mark tells recovery it is corruption,
        not an unsynced tail, even when nothing in the new segment is ever synced. Only a
        leader of the writer queue appends, so this leads it when the queue is empty;
        otherwise the next leader writes the mark before its record (never waiting here:
        the leader may be waiting for this very flush)."""
        with self._mutex:
            wal = self._wal
            if (self._writers or wal is None or not wal.note_due or self._closing
                    or self._bg_error is not None):
                return
            self._writers.append(_Writer(None, 0, False, None))
        try:
            wal.note_prior_sealed()
        finally:
            with self._mutex:
                self._writers.popleft()
                self._locked_wake_next_leader()

    def _remove_log(self, number: int) -> bool:
        """Remove a WAL segment that failed to start; False if that failed too. It must go,
        or the switch fail-stops: left behind an older segment, an empty or half-made
        segment would read as damage to synced data at the next open."""
        try:
            self.fs.remove(log_name(self.path, number))
        except ShaleError:
            return False
        return True

    def _locked_freeze_memtable(self, number: int) -> None:
        """The memtable becomes the immutable one (the flush thread writes it to L0); a new
        one starts, fed by WAL segment ``number``."""
        self._mem.frozen = True
        self._imm = self._mem
        self._imm_last_seq = self._last_seq
        self._imm_next_log = number
        self._mem = MemTable()
        self._mem_first_log = number
        self._bg_cv.notify_all()

    def sync_wal(self) -> None:
        """fsync the WAL now. After a background error it raises ReadOnlyError: a failed
        fsync may have lost pages a second fsync would not write, so it cannot vouch for
        anything any more. Without a descriptor to open the directory (a new segment's name
        made durable first) it raises DescriptorsExhaustedError: retry."""
        with self._mutex:
            self.check_open()
            if self._bg_error is not None:
                self._locked_check_writable()
            wal = self._wal
        if wal is not None:
            try:
                wal.sync()
            except DescriptorsExhaustedError as exc:
                # Met opening the directory to make a new segment's name durable, before
                # this segment was fsynced (the prior's seal, if done, is complete): retry.
                with self._mutex:
                    self.counters["descriptor_shortages"] += 1
                raise self._retryable(exc) from None
            except BaseException as exc:
                raise self._fail(exc, "WAL sync")  # noqa: B904 - the same error, or chained

    # ------------------------------------------------------------------------------------
    # Read path
    def _pin(self, seq: int | None) -> tuple[MemTable, MemTable | None, Version, int]:
        with self._mutex:
            self.check_open()
            if self._deferred:
                self._locked_drain()
            v = self._versions.current
            v.refs += 1
            self._pinned[id(v)] = v
            return self._mem, self._imm, v, self._last_seq if seq is None else seq

    def _unpin(self, v: Version) -> None:
        self._release(self._locked_unpin, v)

    def _locked_unpin(self, v: Version) -> None:
        v.refs -= 1
        if v.refs == 0:
            self._pinned.pop(id(v), None)

    def _release(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` under the mutex, or, when the mutex is busy, later.

        Releases can come from garbage collection (an abandoned iterator or snapshot), which
        may run inside a thread that already holds the mutex; blocking there would deadlock.
        Deferred releases are applied by the next ``_locked_drain``."""
        if self._mutex.acquire(blocking=False):
            try:
                self._locked_drain()
                fn(arg)
            finally:
                self._mutex.release()
        else:
            self._deferred.append((fn, arg))

    def _locked_drain(self) -> None:
        deferred = self._deferred
        while deferred:
            fn, arg = deferred.popleft()
            fn(arg)

    def get_record(self, key: bytes, seq: int | None = None) -> Record | None:
        """The newest version of ``key`` visible at ``seq`` (default: latest), or None.

        One flat loop over the memtables and the candidate tables, without the mutex: the
        sequence is read first, then the memtable, the immutable one and the version, in the
        order the engine publishes them (a switch sets ``_imm`` before ``_mem``; a flush
        installs its version before it clears ``_imm``), so every write at or below the
        sequence is in what is read. The version is not pinned: a table that a compaction
        deleted meanwhile fails to open, and the lookup is then repeated, pinned
        (:meth:`_get_pinned`; so is any other error, which that one raises again)."""
        if self._closed:
            raise ClosedError(f"database {self.path!r} is closed")
        s = self._last_seq if seq is None else seq
        mem = self._mem
        imm = self._imm
        v = self._versions.current
        r = mem.get(key, s)
        if r is not None:
            return r
        if imm is not None:
            r = imm.get(key, s)
            if r is not None:
                return r
        try:
            return self._tables_get(v, key, s)
        except Exception:  # noqa: BLE001 - retried pinned, which raises what persists
            self.counters["unpinned_get_retries"] += 1
            return self._get_pinned(key, seq)

    def _tables_get(self, v: Version, key: bytes, seq: int) -> Record | None:
        """The newest version of ``key`` at ``seq`` in the tables of ``v`` (L0 newest first,
        then the one candidate of each deeper level)."""
        tables = self._tables
        r: Record | None
        for f in v.levels[0]:
            if f.smallest <= key <= f.largest:
                r = tables.get(f.number, f).get(key, seq)
                if r is not None:
                    return r
        for files, largest in v.deep:
            i = bisect_left(largest, key)
            if i < len(files):
                f = files[i]
                if f.smallest <= key:
                    r = tables.get(f.number, f).get(key, seq)
                    if r is not None:
                        return r
        return None

    def _get_pinned(self, key: bytes, seq: int | None) -> Record | None:
        mem, imm, v, seq = self._pin(seq)
        try:
            r = mem.get(key, seq)
            if r is None and imm is not None:
                r = imm.get(key, seq)
            if r is None:
                r = self._tables_get(v, key, seq)
            return r
        finally:
            self._unpin(v)

    def get_live(self, key: bytes) -> bytes | None:
        """The value of ``key`` now, or None when it is missing, deleted or expired."""
        r = self.get_record(key)
        if r is None or r[1] != PUT:
            return None
        exp = r[2]
        if exp and exp <= int(self._clock() * 1000):
            return None
        return r[3]

    def latest_seq(self, key: bytes) -> int:
        """Sequence of the newest version of ``key`` (0 if none)."""
        mem, imm, v, _ = self._pin(None)
        try:
            s = mem.latest_seq(key)
            if s is None and imm is not None:
                s = imm.latest_seq(key)
            if s is None:
                for f in v.candidates(key):
                    s = self._table(f).latest_seq(key)
                    if s is not None:
                        break
            return s or 0
        finally:
            self._unpin(v)

    def live(self, r: Record | None) -> bool:
        """Whether a record is a PUT that has not expired."""
        return record_is_live(r, self._now_ms())

    def iterate(self, lo: bytes | None, hi: bytes | None, reverse: bool, limit: int | None,
                seq: int | None = None, include_expired: bool = False
                ) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with ``lo <= key < hi`` at ``seq``, consistent for its life;
        with ``include_expired``, also PUTs whose expiry has passed (not yet compacted).

        A short range (``limit`` up to ``EAGER_RANGE_LIMIT``, a seek and a few next calls)
        is read at once, unpinned as a point lookup is (:meth:`_range_now`); a longer one
        lazily, chunk by chunk, pinning its version for its life."""
        now_ms = 0 if include_expired else self._now_ms()
        if limit is not None and limit <= EAGER_RANGE_LIMIT:
            return iter(self._range_now(lo, hi, reverse, limit, seq, now_ms))
        mem, imm, v, seq = self._pin(seq)
        # The generator holds the only reference to the release: one never started (whose
        # finally never runs) unpins when it is collected (_Once.__del__).
        return self._iterate(mem, imm, v, seq, now_ms, lo, hi, reverse, limit,
                             _Once(self._unpin, v))

    def _range_now(self, lo: bytes | None, hi: bytes | None, reverse: bool, limit: int,
                   seq: int | None, now_ms: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` pairs of the range, read now: first without the mutex or a pin
        (the memtables and version read in publication order, see :meth:`get_record`), and
        if a table it needs was deleted meanwhile (or anything else fails), pinned."""
        if self._closed:
            raise ClosedError(f"database {self.path!r} is closed")
        if limit <= 0:
            return []
        s = self._last_seq if seq is None else seq
        mem = self._mem
        imm = self._imm
        v = self._versions.current
        try:
            return self._collect(mem, imm, v, s, now_ms, lo, hi, reverse, limit)
        except Exception:  # noqa: BLE001 - retried pinned, which raises what persists
            self.counters["unpinned_get_retries"] += 1
        mem, imm, v, s = self._pin(seq)
        try:
            return self._collect(mem, imm, v, s, now_ms, lo, hi, reverse, limit)
        finally:
            self._unpin(v)

    def _collect(self, mem: MemTable, imm: MemTable | None, v: Version, seq: int, now_ms: int,
                 lo: bytes | None, hi: bytes | None, reverse: bool, limit: int
                 ) -> list[tuple[bytes, bytes]]:
        if not reverse:
            # Runs of ``limit`` entries a source answer most seeks; deletions and older
            # versions in the way need longer runs (4x, 16x), and past that the chunks.
            run_size = limit
            while run_size <= 16 * limit:
                short = self._collect_forward(mem, imm, v, seq, now_ms, lo, hi, limit,
                                              run_size)
                if short is not None:
                    return short
                run_size *= 4
        out: list[tuple[bytes, bytes]] = []
        for part in visible_chunks(merge_chunks(self._chunk_sources(
                mem, imm, v, seq, lo, hi, reverse, limit), reverse), seq, now_ms, reverse,
                limit):
            out += part
        return out

    def _collect_forward(self, mem: MemTable, imm: MemTable | None, v: Version, seq: int,
                         now_ms: int, lo: bytes | None, hi: bytes | None, limit: int,
                         run_size: int) -> list[tuple[bytes, bytes]] | None:
        """A short forward range in one round, or None when one round cannot answer it.

        Every source hands over its first ``run_size`` entries at once (a memtable slice;
        per table :meth:`TableReader.first_run`; per sorted level one bisect for its first
        file, then the next files only if the run continues past it), one ``list.sort``
        merges them, and the pairs are read off in one loop. A source cut at ``run_size``
        has shown everything up to its last entry, so the smallest such last entry
        (``bound``) is as far as the merge is complete. If ``limit`` live pairs come before
        it, or no source was cut, that is the answer; otherwise (deletions, expired or
        too-new versions) the caller tries longer runs, then reads the range in chunks."""
        # Sources are read deepest level first, and each one only up to the bound so far:
        # an entry past the bound cannot be part of the answer, so a source need not
        # decode it. The deepest level holds most keys, so its run (usually cut at
        # run_size) makes the bound tight, and the smaller levels above it and the
        # memtables hand over a key or two each instead of run_size (a seek at 1M keys
        # decoded 5 x 10 entries to keep 10). ``top`` is the smallest key past the bound's
        # key (every version of the bound's key stays below it).
        bound: Entry | None = None
        top = hi
        merged: list[Entry] = []
        deep = v.deep
        for d in range(len(deep) - 1, -1, -1):
            files, largest = deep[d]
            i = 0 if lo is None else bisect_left(largest, lo)
            run: list[Entry] = []
            while i < len(files) and len(run) < run_size:
                f = files[i]
                if top is not None and f.smallest >= top:
                    break
                run += self._table(f).first_run(lo, top, run_size - len(run))
                i += 1
            if len(run) >= run_size and (bound is None or run[-1] < bound):
                bound = run[-1]
                top = bound[0] + b"\x00"
            merged += run
        for f in v.levels[0]:
            if f.overlaps(lo, top):
                run = self._table(f).first_run(lo, top, run_size)
                if len(run) >= run_size and (bound is None or run[-1] < bound):
                    bound = run[-1]
                    top = bound[0] + b"\x00"
                merged += run
        for m in (imm, mem):
            if m is not None:
                run = m.scan_chunk(lo, True, top, False, False, seq, run_size)
                if len(run) >= run_size and (bound is None or run[-1] < bound):
                    bound = run[-1]
                    top = bound[0] + b"\x00"
                merged += run
        merged.sort()
        out: list[tuple[bytes, bytes]] = []
        last: bytes | None = None
        # The bound's (key, -seq), compared field by field: a compiled tuple comparison
        # would box both tuples anew for every entry.
        bkey = b"" if bound is None else bound[0]
        bneg = 0 if bound is None else bound[1]
        for e in merged:
            key = e[0]
            if bound is not None and (key > bkey or key == bkey and e[1] > bneg):
                return None
            if key == last or -e[1] > seq:
                continue
            last = key
            if e[2] == PUT and (e[3] == 0 or e[3] > now_ms):
                out.append((key, e[4]))
                if len(out) >= limit:
                    return out
        return out if bound is None else None

    def _sources(self, mem: MemTable, imm: MemTable | None, v: Version, seq: int,
                 lo: bytes | None, hi: bytes | None, reverse: bool) -> list[Iterator[Any]]:
        sources = [memtable_source(mem, lo, hi, reverse, seq)]
        if imm is not None:
            sources.append(memtable_source(imm, lo, hi, reverse, seq))
        for f in v.levels[0]:
            if f.overlaps(lo, hi):
                sources.append(self._table(f).iter_range(lo, hi, reverse))
        for lvl in range(1, len(v.levels)):
            files = [f for f in v.levels[lvl] if f.overlaps(lo, hi)]
            if not files:
                continue
            if reverse:
                files.reverse()
            sources.append(concat(files, lambda f: self._table(f).iter_range(lo, hi,
                                                                             reverse)))
        return sources

    def _chunk_sources(self, mem: MemTable, imm: MemTable | None, v: Version, seq: int,
                       lo: bytes | None, hi: bytes | None, reverse: bool, first: int = 16
                       ) -> list[Iterator[list[Entry]]]:
        """:meth:`_sources` as sources of chunks (for :func:`merge_chunks`), each starting
        with a chunk of about ``first`` entries (a seek wants a few)."""
        sources = [memtable_chunks(mem, lo, hi, reverse, seq, first)]
        if imm is not None:
            sources.append(memtable_chunks(imm, lo, hi, reverse, seq, first))
        for f in v.levels[0]:
            if f.overlaps(lo, hi):
                sources.append(self._table(f).iter_chunks(lo, hi, reverse, True, first))
        for lvl in range(1, len(v.levels)):
            files = [f for f in v.levels[lvl] if f.overlaps(lo, hi)]
            if not files:
                continue
            if reverse:
                files.reverse()
            if len(files) == 1:
                sources.append(self._table(files[0]).iter_chunks(lo, hi, reverse, True, first))
            else:
                sources.append(concat_chunks(
                    files, lambda f: self._table(f).iter_chunks(lo, hi, reverse, True, first)))
        return sources

    def live_records(self) -> Iterator[tuple[bytes, int, bytes]]:
        """``(key, expire_at_ms, value)`` of every live key, in key order, at the moment of
        the call (for copying a database: ``shaledb encrypt`` and ``decrypt``)."""
        mem, imm, v, seq = self._pin(None)
        return self._live_records(mem, imm, v, seq, self._now_ms(), _Once(self._unpin, v))

    def _live_records(self, mem: MemTable, imm: MemTable | None, v: Version, seq: int,
                      now_ms: int, release: _Once) -> Iterator[tuple[bytes, int, bytes]]:
        try:
            last = None
            for key, negseq, kind, expire, value in merge(
                    self._sources(mem, imm, v, seq, None, None, False), False):
                if key == last or -negseq > seq:
                    continue
                last = key
                if self._closed:
                    raise ClosedError(f"database {self.path!r} was closed during a copy")
                if kind == PUT and (expire == 0 or expire > now_ms):
                    yield key, expire, value
        finally:
            release()

    def _iterate(self, mem: MemTable, imm: MemTable | None, v: Version, seq: int, now_ms: int,
                 lo: bytes | None, hi: bytes | None, reverse: bool, limit: int | None,
                 release: _Once) -> Iterator[tuple[bytes, bytes]]:
        try:
            if limit is not None and limit <= 0:
                return
            chunks = visible_chunks(merge_chunks(self._chunk_sources(
                mem, imm, v, seq, lo, hi, reverse), reverse), seq, now_ms, reverse, limit)
            for part in chunks:
                for kv in part:
                    if self._closed:
                        raise ClosedError(
                            f"database {self.path!r} was closed during iteration")
                    yield kv
        finally:
            release()

    # ------------------------------------------------------------------------------------
    # Snapshots
    def acquire_snapshot(self) -> int:
        """Register a snapshot at the latest sequence and return it."""
        with self._mutex:
            self.check_open()
            seq = self._last_seq
            self._snapshots[seq] += 1
            return seq

    def acquire_snapshot_at(self, seq: int) -> int:
        """Register a snapshot at ``seq``, older than the latest sequence: allowed only
        while a snapshot at or below ``seq`` is registered. Flush and compaction drop a
        version only when a newer one of its key is at or below the oldest snapshot, so
        every version ``seq`` sees is still there (the server's sync-replicas reads move
        such a snapshot forward as replicas acknowledge)."""
        with self._mutex:
            self.check_open()
            if not (self._snapshots and min(self._snapshots) <= seq <= self._last_seq):
                raise InvalidArgument(
                    f"a snapshot at sequence {seq} needs an open snapshot at or below it "
                    f"(oldest open: {min(self._snapshots) if self._snapshots else None}, "
                    f"last sequence {self._last_seq}): older versions may be gone")
            self._snapshots[seq] += 1
            return seq

    def release_snapshot(self, seq: int) -> None:
        """Forget a snapshot so compaction may drop what only it could see."""
        self._release(self._locked_release_snapshot, seq)

    def _locked_release_snapshot(self, seq: int) -> None:
        self._snapshots[seq] -= 1
        if self._snapshots[seq] <= 0:
            del self._snapshots[seq]

    # ------------------------------------------------------------------------------------
    # Flush
    def flush(self) -> None:
        """Freeze the memtable and wait until it is written to an L0 table."""
        self.write(None, 0, False, force_flush=True)
        with self._mutex:
            while (self._imm is not None and self._bg_error is None and not self._closed
                   and not self._closing):
                if self._flush_shortage is not None:
                    raise self._retryable(self._flush_shortage)
                self._bg_cv.wait()
            if self._bg_error is not None:
                self._locked_check_writable()
            if self._imm is not None:  # closed before the flush thread got to it (in the WAL)
                raise ClosedError(f"database {self.path!r} was closed before the flush ended")

    def _flush_loop(self) -> None:
        while True:
            with self._mutex:
                while self._imm is None and not self._closing:
                    self._bg_cv.wait()
                if self._closing or self._bg_error is not None:
                    # After an error the manifest may end in a half-written edit: appending
                    # another would bury it mid-log. The frozen memtable is in the WAL.
                    return
                imm = self._imm
                assert imm is not None
                next_log = self._imm_next_log
                last_seq = self._imm_last_seq
                smallest = self._locked_smallest_snapshot()
            try:
                self._seal_retired_wals()
                self._prepare_wal()  # for the next switch
                self._flush_memtable(imm, next_log, last_seq, smallest)
            except DescriptorsExhaustedError as exc:
                # Nothing was recorded (the tables it wrote are removed, or orphans the next
                # obsolete-file pass deletes): wake the writers waiting for this flush (they
                # fail, retryable), wait a little and try again.
                with self._mutex:
                    self.counters["descriptor_shortages"] += 1
                    self._flush_shortage = exc
                    self._bg_cv.notify_all()
                    self._bg_cv.wait(timeout=_DESCRIPTOR_RETRY_SECONDS)
                continue
            except BaseException as exc:  # noqa: BLE001 - never die silently
                self._fail(exc, "flush")
                if not isinstance(exc, ShaleError):
                    raise  # a bug: let the thread's traceback show it too
                return

    def _new_output_number(self) -> int:
        with self._mutex:
            n = self._versions.new_file_number()
            self._pending_outputs.add(n)
            return n

    def _flush_memtable(self, imm: MemTable, next_log: int, last_seq: int,
                        smallest_snapshot: int) -> None:
        outputs = self._write_level0(imm, smallest_snapshot)
        edit = VersionEdit(log_number=next_log, last_seq=last_seq,
                           added=[(0, m) for m in outputs])
        try:
            with self._manifest_lock:
                with self._mutex:
                    if self._bg_error is not None:  # never an edit after it
                        raise self._bg_error
                new = self._versions.log_and_apply(edit)
                with self._mutex:
                    self._versions.install(new, edit)
                    self._imm = None
                    self._flush_shortage = None
                    self._compaction_wanted = True
                    self._bg_cv.notify_all()
        finally:
            with self._mutex:
                self._pending_outputs.difference_update(m.number for m in outputs)
        self._delete_obsolete_files()

    # ------------------------------------------------------------------------------------
    # Compaction
    def _compaction_loop(self) -> None:
        while True:
            with self._mutex:
                while not self._compaction_wanted and not self._closing:
                    self._bg_cv.wait()
                if self._closing or self._bg_error is not None:
                    return
                self._compaction_wanted = False
            try:
                with self._compaction_lock:
                    while not self._closing:
                        with self._mutex:
                            c = pick_compaction(self._versions.current, self.options,
                                                self._versions.compact_pointers)
                        if c is None:
                            break
                        self._run_compaction(c)
            except CompactionAborted:
                return
            except StorageError as exc:
                if exc.op not in _READ_OPS and not isinstance(exc, DescriptorsExhaustedError):
                    self._fail(exc, "compaction")
                    return
                # A failed read, or a file that could not be opened for lack of descriptors,
                # leaves nothing half-done: report it, back off, retry later.
                with self._mutex:
                    if isinstance(exc, DescriptorsExhaustedError):
                        self.counters["descriptor_shortages"] += 1
                    else:
                        self.counters["compaction_read_errors"] += 1
                        self._compaction_read_error = str(exc)
                    self._bg_cv.wait(timeout=_COMPACTION_RETRY_SECONDS)
                    self._compaction_wanted = True
            except BaseException as exc:  # noqa: BLE001 - never die silently
                self._fail(exc, "compaction")
                if not isinstance(exc, ShaleError):
                    raise  # a bug: let the thread's traceback show it too
                return

    def _run_compaction(self, c: Compaction) -> None:
        edit = VersionEdit()
        edit.deleted = [(lvl, f.number) for lvl, f in c.all_inputs()]
        if c.level > 0 and c.inputs:
            edit.compact_pointers = [(c.level, max(f.largest for f in c.inputs))]
        if c.is_trivial_move:
            f = c.inputs[0]
            edit.added = [(c.output_level, f)]
            self._install(edit)
            self.counters["trivial_moves"] += 1
            return
        with self._mutex:
            smallest = self._locked_smallest_snapshot()
        opts = self.options
        job = MergeJob(
            dirpath=self.path,
            l0_inputs=tuple(f.number for f in c.inputs) if c.level == 0 else (),
            level_inputs=() if c.level == 0 else tuple(f.number for f in c.inputs),
            below=tuple(f.number for f in c.below),
            smallest_snapshot=smallest, now_ms=self._now_ms(), drop_tombstones=c.bottommost,
            block_size=opts.block_size, compression=opts.compression,
            target_file_size=opts.target_file_size, write_rate=opts.compaction_write_rate,
            inputs=tuple(tuple(f.to_list()) for _, f in c.all_inputs()))
        use_worker = (self._worker is not None and opts.compaction_process_threshold is not None
                      and c.input_bytes >= opts.compaction_process_threshold)
        created: list[int] = []
        logged = False  # once the edit may be in the manifest, its outputs must stay
        try:
            if use_worker:
                assert self._worker is not None
                # Output numbers are handed out in advance (the worker cannot ask): enough
                # for the input bytes, as merging never grows them by a table's worth.
                count = c.input_bytes // opts.target_file_size + len(c.all_inputs()) + 2
                created = [self._new_output_number() for _ in range(count)]
                # Make the allocation durable first: should this process die, the worker
                # may live on for a moment, and a reopened database must never hand out
                # the same numbers again.
                self._install(VersionEdit())
                job = dataclasses.replace(job, numbers=tuple(created))
                outputs, _, written = self._worker.run(job, lambda: self._closing, self.fs,
                                                       self._keyring)
                self.counters["compactions_in_worker"] += 1
            else:
                writer = merge_writer(job, self.fs, self._new_output_number, self._keyring)
                created = writer.created
                metas = {f.number: f for _, f in c.all_inputs()}
                run_merge(job, lambda n: self._table(metas[n]), writer,
                          lambda: self._closing)
                outputs, written = writer.outputs, writer.bytes_written
            edit.added = [(c.output_level, m) for m in outputs]
            self.fs.sync_dir(self.path)
            logged = True
            self._install(edit)
        except BaseException:
            if not logged:
                for n in created:
                    with contextlib.suppress(StorageError):
                        self.fs.remove(table_name(self.path, n))
            raise
        finally:
            with self._mutex:
                self._pending_outputs.difference_update(created)
        self.counters["compactions"] += 1
        self.counters["compaction_bytes_read"] += c.input_bytes
        self.counters["compaction_bytes_written"] += written
        self._delete_obsolete_files()

    def _install(self, edit: VersionEdit) -> None:
        with self._manifest_lock:
            with self._mutex:
                self._locked_check_writable()  # never an edit after a background error
            new = self._versions.log_and_apply(edit)
            with self._mutex:
                self._versions.install(new, edit)
                self._bg_cv.notify_all()

    def compact_range(self, lo: bytes | None, hi: bytes | None) -> None:
        """Flush, then push every table meeting ``[lo, hi]`` down to the deepest level that
        holds data in that range, dropping whatever no reader can see."""
        self.flush()
        with self._compaction_lock:
            with self._mutex:
                v = self._versions.current
                deepest = max((lvl for lvl in range(len(v.levels))
                               if v.overlapping(lvl, lo, hi)), default=0)
            # Push everything down to the deepest level, then rewrite that level in place so
            # tombstones and expired values in the range are dropped too.
            for level in range(0, deepest + 1):
                with self._mutex:
                    self._locked_check_writable()
                    c = range_compaction(self._versions.current, level, lo, hi,
                                         in_place=0 < level == deepest)
                if c is None:
                    continue
                try:
                    self._run_compaction(c)
                except CompactionAborted:
                    raise ClosedError(f"database {self.path!r} closed during compaction"
                                      ) from None
                except StorageError as exc:
                    if exc.op not in _READ_OPS and not isinstance(
                            exc, DescriptorsExhaustedError):
                        self._fail(exc, "compaction")
                    raise
        with self._mutex:
            self._compaction_wanted = True
            self._bg_cv.notify_all()

    # ------------------------------------------------------------------------------------
    # Periodic WAL sync
    def _sync_loop(self) -> None:
        interval = self.options.fsync_interval
        assert interval is not None
        while True:
            with self._mutex:
                if not self._closing:
                    self._bg_cv.wait(timeout=interval)
                if self._closing:
                    return
                wal = self._wal
            if wal is None:
                continue
            try:
                wal.sync()
            except DescriptorsExhaustedError:
                # No descriptor to open the directory (a new segment's name), before anything
                # was fsynced: try again at the next interval.
                with self._mutex:
                    self.counters["descriptor_shortages"] += 1
            except BaseException as exc:
                # After a failed fsync the state of the log is unknown: stop writes.
                self._fail(exc, "WAL sync")
                return

    # ------------------------------------------------------------------------------------
    # Files
    def _delete_obsolete_files(self) -> None:
        # List first: a table number is registered as pending before its file is created, so
        # every file in the listing is pending, live or truly obsolete by the time we look.
        if self._closing or self._closed:
            # After close the directory may belong to someone else. (Every caller runs in a
            # thread close() joins, or under the compaction lock close() waits for.)
            return
        try:
            names = self.fs.listdir(self.path)
        except StorageError:
            return
        with self._mutex:
            if self._bg_error is not None:
                # The manifest on disk may be ahead of memory (a failed fsync): delete nothing.
                return
            self._locked_drain()
            live = {f.number for _, f in self._versions.current.files()}
            for v in self._pinned.values():
                live.update(f.number for _, f in v.files())
            live.update(self._pending_outputs)
            log_number = self._versions.log_number
            if self._log_pins:
                log_number = min(log_number, min(self._log_pins))  # an online backup copies
            keep_log = self._wal.number if self._wal is not None else -1
            manifest = self._versions.manifest_number
            archived = self._archived
            to_archive = False
        for name in names:
            parsed = parse(name)
            if parsed is None:
                continue
            kind, number = parsed
            obsolete = ((kind == "sst" and number not in live)
                        or (kind == "log" and number < log_number and number != keep_log)
                        # Never one newer than the live one: a rollover may be writing it.
                        or (kind == "manifest" and number < manifest))
            if obsolete and kind == "log" and self._archive is not None \
                    and number not in archived:
                # Archived first (by the archive thread, which removes it then): never
                # delete a segment point-in-time restore would need.
                with self._mutex:
                    self._archive_due.add(number)
                to_archive = True
                continue
            if obsolete:
                if kind == "sst":
                    self._tables.evict(number)
                try:
                    self.fs.remove(vfs.join(self.path, name))
                except StorageError:
                    pass  # retried after the next flush or compaction
                if kind == "log":
                    with self._mutex:
                        self._archived.discard(number)
        if to_archive:
            with self._mutex:
                self._bg_cv.notify_all()

    # ------------------------------------------------------------------------------------
    # WAL archive and online backups (engine/archive.py)
    def _archive_loop(self) -> None:
        """Copy obsolete WAL segments to the archive, then delete them. A failure is recorded
        (stats()["wal_archive"]) and retried every few seconds; the segment stays."""
        retry_at = 0.0
        while True:
            with self._mutex:
                while not self._closing and (not self._archive_due
                                             or time.monotonic() < retry_at):
                    self._bg_cv.wait(timeout=max(0.05, retry_at - time.monotonic())
                                     if self._archive_due else None)
                if self._closing:
                    return
                due = sorted(self._archive_due)
            failed = False
            for number in due:
                if not self._archive_log(number):
                    failed = True
                    break
                with self._mutex:
                    self._archive_due.discard(number)
            retry_at = time.monotonic() + 2.0 if failed else 0.0
            self._delete_obsolete_files()

    def _archive_log(self, number: int) -> bool:
        """Hand WAL segment ``number`` to the archive (its bytes up to the last non-zero one,
        what its records cover); False (recorded, logged) when that failed."""
        assert self._archive is not None
        path = log_name(self.path, number)
        try:
            if not self.fs.exists(path):
                # Removed by another pass of _delete_obsolete_files (which lists before it
                # looks): only this engine removes WAL segments, and only archived ones.
                return True
            data = self.fs.read_file(path)  # one segment: about a memtable, as recovery reads
            expect = expected_log_format(self._log_since, number, self.encrypted)
            end = content_end(data, expect)
            cut = self._recovery_cut(number)
            if cut is not None:
                # A recovery cut this segment there (a crash's torn tail, or damage): what
                # follows is in lost/, not in the database's history, and the sequence
                # numbers it held were given to later writes. Archive what recovery kept,
                # so that a point-in-time restore replays the history the database has.
                if cut <= file_header_size(expect):
                    # Nothing of it was kept (it followed a cut segment, or its header was
                    # damaged): no record of it belongs to the history.
                    _log.info("WAL archive: %s not archived: recovery kept none of it "
                              "(it is in %s/)", log_file(number), LOST_DIR)
                    with self._mutex:
                        self._archived.add(number)
                    return True
                end = min(end, cut)
            seg = scan_segment_bytes(data[:end], path, number, expect, self._keyring)
            first_seq = last_seq = first_ms = last_ms = None
            for payload in seg.scan.records:
                try:
                    first, ops, ms = decode_batch_timed(payload)
                except CorruptionError:
                    break
                if first_seq is None:
                    first_seq, first_ms = first, ms
                last_seq, last_ms = first + len(ops) // 4 - 1, ms
            self._archive.archive_segment(ArchivedSegment(
                number, data[:end], first_seq, last_seq, first_ms, last_ms, self.encrypted))
        except Exception as exc:  # noqa: BLE001 - recorded: the segment stays, retried
            with self._mutex:
                self.counters["wal_archive_errors"] += 1
                self._archive_error = f"{log_file(number)}: {exc}"
            _log.warning("WAL archive: %s could not be archived (kept, retried): %s",
                         log_file(number), exc)
            return False
        with self._mutex:
            self.counters["wal_segments_archived"] += 1
            self._archived.add(number)
            self._archive_error = None
        return True

    def _recovery_cut(self, number: int) -> int | None:
        """Where a recovery cut WAL segment ``number`` (the smallest offset of the
        ``lost/NNNNNN.log.at-OFFSET`` files it saved), or None. Read from lost/, which is
        durable before the segment can be deleted, so a crash between that recovery and
        the archive still finds it."""
        lost = vfs.join(self.path, LOST_DIR)
        if not self.fs.is_dir(lost):
            return None
        prefix = f"{log_file(number)}.at-"
        cuts = []
        for name in self.fs.listdir(lost):
            if name.startswith(prefix):
                digits = name[len(prefix):].split(".", 1)[0]
                if digits.isdigit():
                    cuts.append(int(digits))
        return min(cuts) if cuts else None

    def _archive_at_close(self) -> None:
        """At close (every segment sealed): archive the live segments and the obsolete ones
        the archive thread did not get to, so point-in-time restore reaches the last commit.
        Failures are logged; the segments stay and the next open archives them."""
        try:
            names = self.fs.listdir(self.path)
        except StorageError as exc:
            _log.warning("WAL archive at close: cannot list %r: %s", self.path, exc)
            return
        numbers = sorted(n for kind, n in filter(None, map(parse, names)) if kind == "log")
        for number in numbers:
            if number not in self._archived:
                self._archive_log(number)

    def backup_source(self, copy_manifest: Callable[[str, int], None]) -> BackupSource:
        """Pin a consistent snapshot for an online backup (engine/archive.py): the current
        version's tables stay on disk and so do the WAL segments from its ``log_number`` on,
        until the source is released. ``copy_manifest(path, size)`` is called under the
        manifest lock (no edit is appended meanwhile; flushes and compactions wait to install
        theirs) and must copy those bytes of the MANIFEST. Then, with no write group in
        flight (this thread leads the writer queue for a moment), the live WAL segment's
        size and the last sequence number are taken: a record boundary."""
        with self._manifest_lock:
            with self._mutex:
                self.check_open()
                self._locked_drain()
                v = self._versions.current
                v.refs += 1
                self._pinned[id(v)] = v
                log_number = self._versions.log_number
                self._log_pins[log_number] += 1
                manifest_number = self._versions.manifest_number

            def release() -> None:
                with self._mutex:
                    self._log_pins[log_number] -= 1
                    if self._log_pins[log_number] <= 0:
                        del self._log_pins[log_number]
                self._unpin(v)
                if not self.options.read_only:
                    self._delete_obsolete_files()

            try:
                mpath = manifest_name(self.path, manifest_number)
                copy_manifest(mpath, self.fs.file_size(mpath))
            except BaseException:
                release()
                raise
        try:
            tables = [SourceFile(table_file(f.number), table_name(self.path, f.number), f.size)
                      for _, f in v.files()]
            wal, seq, last_ms = self._wal_cut(log_number)
            other = [SourceFile(name, vfs.join(self.path, name), -1)
                     for name in (OPTIONS, KEYRING) if name != KEYRING or self.encrypted]
        except BaseException:
            release()
            raise
        fmt = ENCRYPTED_DB_FORMAT_VERSION if self.encrypted else DB_FORMAT_VERSION
        return BackupSource(sequence=seq, manifest=os.path.basename(mpath),
                            manifest_number=manifest_number, tables=tables, wal=wal, other=other,
                            encrypted=self.encrypted, format_version=fmt,
                            last_commit_ms=last_ms, _release=release)

    def _wal_cut(self, log_number: int) -> tuple[list[SourceFile], int, int | None]:
        """The WAL segments from ``log_number`` on with the byte count of each that the
        snapshot holds, the last sequence number and the newest record's commit time; taken
        while this thread leads the writer queue (no record is half written, no segment is
        switched)."""
        with self._mutex:
            self.check_open()
            self._locked_lead_queue()
            seq = self._last_seq
            sizes = {x.number: x.size for x in self._retired_wals}
            if self._wal is not None:
                sizes[self._wal.number] = self._wal.size
            last_ms = self._last_commit_ms
        try:
            # Nothing is appended while this thread leads the queue, and segments closed
            # since their switch were cut to their last record: their size is final.
            numbers = sorted(n for kind, n in filter(None, map(parse, self.fs.listdir(self.path)))
                             if kind == "log" and n >= log_number)
            out: list[SourceFile] = []
            for n in numbers:
                path = log_name(self.path, n)
                size = sizes[n] if n in sizes else self.fs.file_size(path)
                out.append(SourceFile(log_file(n), path, size))
            return out, seq, last_ms
        finally:
            with self._mutex:
                self._writers.popleft()
                self._locked_wake_next_leader()

    def replay_archived(self, data: bytes, number: int, after_seq: int,
                        until_seq: int | None, until_ms: int | None) -> tuple[int, bool]:
        """Point-in-time restore: apply the records of an archived WAL segment (its bytes,
        checked by the caller) whose operations all lie past ``after_seq`` (the database's
        last sequence number), in order, each keeping its commit time, up to ``until_seq``
        / ``until_ms``. Returns the last sequence number applied and whether the limit was
        reached. Records are never split: a record past the limit stops the replay.
        CorruptionError when records are missing (a gap) or the segment is damaged before
        the limit."""
        path = f"archived {log_file(number)}"
        seg = scan_segment_bytes(data, path, number, None, self._keyring)
        last = after_seq
        for payload, offset in zip(seg.scan.records, seg.scan.offsets, strict=True):
            try:
                first, ops, ms = decode_batch_timed(payload)
            except CorruptionError as exc:
                raise CorruptionError(f"{path}: record at {offset}: {exc}") from exc
            end = first + len(ops) // 4 - 1
            if end <= last:
                continue  # already in the backup, or a copy made by a recovery
            if first != last + 1:
                raise CorruptionError(
                    f"{path}: sequence {first} where {last + 1} was expected: the archive is "
                    f"missing WAL records (sequences {last + 1}-{first - 1})")
            if (until_seq is not None and end > until_seq) or (
                    until_ms is not None and ms is not None and ms > until_ms):
                return last, True
            self.write(ops, sum(len(ops[i + 1]) + len(ops[i + 3])
                                for i in range(0, len(ops), 4)), False, commit_ms=ms)
            last = end
        if seg.scan.damage is not None:
            raise CorruptionError(f"{path} is damaged at offset {seg.scan.damage.offset} "
                                  f"({seg.scan.damage.reason}); the archive holds nothing "
                                  f"after sequence {last} from it")
        return last, False

    # ------------------------------------------------------------------------------------
    # Verification (the checks are in verify.py; this only pins what they read)
    def verify(self, progress: ProgressFn | None = None, *,
               rate: int | Callable[[], int | None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> VerifyReport:
        """Check every file of the open database without blocking writes: the current
        version is pinned (its tables are not deleted while read), the manifest is read under
        the manifest lock (which only flushes and compactions take, for a few milliseconds),
        and the WAL is read up to where it was at the pin. No lock is held while tables are
        read. ``rate`` (bytes per second, or a callable giving it) paces the reads;
        ``should_stop`` ends the check early with ``verify.VerifyStopped``."""
        with self._manifest_lock:
            with self._mutex:
                self.check_open()
                self._locked_drain()
                v = self._versions.current
                v.refs += 1
                self._pinned[id(v)] = v
                wal = self._wal
                number = self._versions.manifest_number
                log_number = self._versions.log_number
                wal_number, wal_size = (wal.number, wal.size) if wal is not None else (None, 0)
            try:
                manifest = self.fs.read_file(manifest_name(self.path, number))
            except BaseException:
                self._unpin(v)
                raise
        try:
            state = LiveState(levels=v.levels, manifest_number=number, manifest=manifest,
                              log_number=log_number, wal_number=wal_number, wal_size=wal_size)
            return verify_live(self.fs, self.path, state, progress, keyring=self._keyring,
                               rate=rate,
                               should_stop=should_stop)
        finally:
            self._unpin(v)

    # ------------------------------------------------------------------------------------
    # Stats and close
    def stats(self) -> dict[str, Any]:
        """A snapshot of the engine's counters and shape."""
        with self._mutex:
            self.check_open()
            self._locked_drain()
            v = self._versions.current
            scores = level_scores(v, self.options)
            levels = [{"level": i, "files": len(lvl), "bytes": sum(f.size for f in lvl),
                       "score": round(scores[i], 3) if i < len(scores) else 0.0}
                      for i, lvl in enumerate(v.levels)]
            cache = self._block_cache
            wal = self._wal
            return {
                "path": self.path,
                "last_sequence": self._last_seq,
                "memtable_bytes": self._mem.approximate_size,
                "memtable_entries": self._mem.entries,
                "immutable_memtables": 0 if self._imm is None else 1,
                "levels": levels,
                "total_table_bytes": sum(x["bytes"] for x in levels),
                "flushes": self.counters["flushes"],
                "compactions": self.counters["compactions"],
                "trivial_moves": self.counters["trivial_moves"],
                "compactions_in_worker": self.counters["compactions_in_worker"],
                "compaction_bytes_read": self.counters["compaction_bytes_read"],
                "compaction_bytes_written": self.counters["compaction_bytes_written"],
                "flush_bytes_written": self.counters["flush_bytes_written"],
                "writes": self._writes,
                "group_commits": self._group_commits,
                "wal_number": wal.number if wal is not None else None,
                "wal_bytes": wal.size if wal is not None else 0,
                "wal_records": self._wal_records,
                "wal_bytes_written": self._wal_bytes_written,
                "wal_syncs": self.counters["wal_syncs_closed"] + (wal.syncs if wal else 0),
                "write_stalls": self.counters["write_stalls"],
                "write_slowdowns": self.counters["write_slowdowns"],
                "slowdown_ms": int(self._delay_ms),
                "stall_ms": int(self._stall_ms),
                "block_cache": {
                    "hits": cache.hits if cache is not None else 0,
                    "misses": cache.misses if cache is not None else 0,
                    "bytes": cache.usage if cache is not None else 0,
                    # Filters and indexes of open tables, charged to the same budget.
                    "pinned_bytes": cache.pinned if cache is not None else 0,
                    "capacity": cache.capacity if cache is not None else 0,
                },
                "open_tables": len(self._tables),
                "live_snapshots": sum(self._snapshots.values()),
                "background_error": None if self._bg_error is None else str(self._bg_error),
                "compaction_read_errors": self.counters["compaction_read_errors"],
                # Files that could not be opened or mapped for lack of descriptors (each
                # failed one write, or delayed a flush or compaction; never read-only).
                "descriptor_shortages": self.counters["descriptor_shortages"],
                "last_compaction_read_error": self._compaction_read_error,
                "read_only": self.options.read_only or self._bg_error is not None,
                "encrypted": self.encrypted,
                "recovery_seconds": round(self.recovery_seconds, 6),
                # WAL segments copied to the wal_archive repository; segments waiting (kept
                # on disk until archived) and the last failure (None once one succeeds).
                "wal_archive": {
                    "enabled": self._archive is not None,
                    "archived": self.counters["wal_segments_archived"],
                    "waiting": len(self._archive_due),
                    "errors": self.counters["wal_archive_errors"],
                    "last_error": self._archive_error,
                },
                "wal_recovery": {**self._recovery, "cut": [
                    {k: v for k, v in c.items() if not k.startswith("_")}
                    for c in self._recovery["cut"]]},
            }

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _record_prepared_number(self, number: int) -> None:
        """Before close() removes the prepared WAL segment ``number``: when no manifest
        records the file counter past it yet (an open that is closed before any flush), an
        edit does, so that the next open never hands the number out again. (File numbers
        are never reused: in an encrypted database each names a file key, docs/security.md.
        The file held a header only, its salt fresh: no nonce was ever used under its key.)
        Called by close() and a failed open alone, with every other thread stopped."""
        v = self._versions
        if number < v.recorded_next:
            return
        edit = VersionEdit()
        v.install(v.log_and_apply(edit), edit)

    def close(self) -> None:
        """Stop background work, sync the WAL, release files and the lock. Idempotent.

        Raises the first error met (after releasing everything)."""
        with self._mutex:
            if self._closed or self._closing:
                return
            self._closing = True
            self._bg_cv.notify_all()
            self._writer_cv.notify_all()
        for t in self._threads:
            t.join()
        # A compact_range() in a caller's thread sees _closing and stops; wait for it, so that
        # nothing of this object touches the directory once its lock is released.
        with self._compaction_lock:
            pass
        if self._worker is not None:
            self._worker.close()
        first: BaseException | None = None
        with self._mutex:
            # Wait for an in-flight write group to finish before closing its WAL.
            while self._writers:
                self._writer_cv.wait(timeout=0.1)
            wal, self._wal = self._wal, None
            self._closed = True
            self._bg_cv.notify_all()  # a flush() waiting in another thread gives up
        if wal is not None:
            try:
                if self._bg_error is None:
                    # Durable, and marked complete: a clean close (the seal seals the
                    # retired segments the flush thread did not get to first).
                    wal.seal()
            except ShaleError as exc:
                first = exc
            with contextlib.suppress(ShaleError):
                wal.close()
        for old in self._retired_wals:
            with contextlib.suppress(ShaleError):
                old.close()
        self._retired_wals.clear()
        if self._archive is not None and first is None and self._bg_error is None:
            self._archive_at_close()  # every segment is sealed now
        if self._next_wal is not None:
            if first is None and self._bg_error is None:
                try:
                    self._record_prepared_number(self._next_wal.number)
                except ShaleError as exc:
                    first = exc
            self._next_wal.discard()
            self._next_wal = None
        with contextlib.suppress(ShaleError):
            self._versions.close()
        for reader in self._tables.clear():
            reader.close()
        if self._block_cache is not None:
            self._block_cache.drain()
        if self._keyring is not None:
            self._keyring.close()  # zero the data keys (docs/security.md: what this covers)
        self._release_locks()
        if first is not None:
            raise first


__all__ = ["DELETE", "PUT", "Engine", "FileMeta"]
