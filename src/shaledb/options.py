"""Validated database options: one frozen dataclass with documented defaults.

Pass options as keyword arguments to :func:`shaledb.open`; unknown names and out-of-range
values raise :class:`~shaledb.errors.InvalidArgument` before anything touches the disk.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument

if TYPE_CHECKING:
    from .engine.vfs import FileSystem

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Largest key accepted, in bytes. Keys are repeated in index blocks, so they stay small.
MAX_KEY_SIZE = 64 * KiB
#: Largest value accepted, in bytes (a value is one WAL record and lives in one data block).
MAX_VALUE_SIZE = 64 * MiB

#: Largest absolute expiry accepted, in ms since the Unix epoch (about the year 33,658).
MAX_EXPIRE_AT_MS = 10**15

COMPRESSIONS = ("none", "lz4", "zstd")
#: Options never written to OPTIONS: callables, the file system, what only one open means,
#: how this process reads its files, and everything about keys.
NOT_PERSISTED = ("clock", "fs", "create_if_missing", "error_if_exists", "read_only",
                 "encryption_key", "encryption_key_file", "rotate_data_key", "wal_archive",
                 "mmap_reads")
WAL_RECOVERY_MODES = ("strict", "point_in_time")


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything that tunes a database. Defaults suit a 1-100 GiB data set on a laptop."""

    #: Create the directory and an empty database when the path holds none.
    create_if_missing: bool = True
    #: Refuse to open a database that already exists.
    error_if_exists: bool = False
    #: Open without taking writes: no WAL, no flush, no compaction, nothing written to the
    #: directory. Every write raises ReadOnlyError. The directory lock is still taken when
    #: the directory has a LOCK file (any database ever opened for writing has one), without
    #: writing to it: one process per directory.
    read_only: bool = False
    #: Bytes of memtable (user bytes plus a per-entry estimate of Python's object overhead)
    #: before it is frozen and flushed to an L0 table. Bounds recovery time: at most about
    #: two memtables of WAL are replayed on open.
    memtable_size: int = 32 * MiB
    #: Target size of an uncompressed data block. A user key's versions never straddle blocks.
    block_size: int = 16 * KiB
    #: Bytes of decoded blocks kept in the LRU block cache (0 disables the cache).
    block_cache_size: int = 64 * MiB
    #: Block compression: "lz4" (default, fast), "zstd" (smaller; needs shaledb[zstd]), "none".
    compression: str = "lz4"
    #: In the default (non-sync) mode the WAL is fsynced at least this often, in seconds, by a
    #: background thread, like Redis' ``appendfsync everysec``. ``None`` leaves it to the OS.
    fsync_interval: float | None = 1.0
    #: Number of L0 tables that triggers a compaction into L1.
    l0_compaction_trigger: int = 4
    #: Number of L0 tables at which writes are throttled to ``delayed_write_rate``.
    l0_slowdown_trigger: int = 8
    #: Number of L0 tables at which writes wait for compaction to catch up.
    l0_stop_trigger: int = 12
    #: Bytes per second (memtable charge) writes may go at ``l0_slowdown_trigger`` L0 tables;
    #: with each further L0 table the rate falls by an equal step (defaults: 16, 12, 8 and
    #: 4 MiB/s at 8, 9, 10 and 11 tables), so compaction catches up before writes must stop.
    delayed_write_rate: int = 16 * MiB
    #: Target total size of L1; each deeper level is ``level_size_multiplier`` times larger.
    max_bytes_for_level_base: int = 64 * MiB
    #: Size ratio between consecutive levels.
    level_size_multiplier: int = 10
    #: Compaction cuts output tables at about this many bytes.
    target_file_size: int = 16 * MiB
    #: Number of levels (L0 .. L{num_levels-1}).
    num_levels: int = 7
    #: Compactions reading at least this many bytes run in a worker process, on another core
    #: and outside this process' GIL; smaller ones run in a background thread. ``None``: never
    #: use a worker; 0: always.
    compaction_process_threshold: int | None = 4 * MiB
    #: Bytes per second compactions may write (a token bucket; flushes are not limited, as
    #: writers wait for them). ``None``: unlimited, the compaction keeps up as fast as it can.
    compaction_write_rate: int | None = None
    #: Table files kept open (file descriptor + decoded index + filter) at once.
    max_open_files: int = 512
    #: Read tables through read-only memory maps instead of ``pread``: a read keeps the GIL
    #: (reader threads beside a busy writer wait far less) and a cached page costs no system
    #: call. The price (as in LevelDB and LMDB): a device read error (EIO) on a mapped page
    #: ends the process with SIGBUS instead of raising StorageError. Mapped pages are the
    #: OS page cache: they show in RSS (as file pages, reclaimable), not in the memory budget.
    mmap_reads: bool = True
    #: A MANIFEST is rolled over (a new one holding a snapshot of the version, CURRENT switched
    #: to it) once it passes this many bytes of edits.
    max_manifest_size: int = 8 * MiB
    #: "strict": a torn record at the end of the newest WAL segment is dropped (normal after a
    #: crash); any other damaged WAL record raises CorruptionError on open. "point_in_time":
    #: recovery stops at the first damaged record and keeps the consistent prefix before it.
    wal_recovery: str = "strict"
    #: Source of wall-clock time (seconds since the epoch) for TTLs; tests inject their own.
    clock: Callable[[], float] = time.time
    #: File-system layer; tests pass a fault-injecting one. ``None`` means the real one.
    fs: FileSystem | None = None
    #: The 32-byte master key of an encrypted database (AES-256-GCM; docs/security.md). A new
    #: database opened with a key is created encrypted; an encrypted one opens only with its
    #: key, a plain one only without (EncryptionError otherwise). The engine takes what it
    #: needs at open and keeps no copy (nor does this object's repr, nor OPTIONS).
    encryption_key: bytes | bytearray | None = dataclasses.field(default=None, repr=False,
                                                                  compare=False)
    #: A file holding the master key: 32 raw bytes or 64 hexadecimal characters, readable
    #: by its owner only (refused otherwise, as ssh refuses a loose private key).
    encryption_key_file: str | None = None
    #: At open, make a fresh data key the one new files are encrypted with (tables written by
    #: flushes and compactions, WAL segments, manifests), so compaction re-encrypts the data
    #: as it rewrites it (``compact_range()`` rewrites all of it). Needs the master key.
    rotate_data_key: bool = False
    #: A backup repository (its path, or a ``shaledb.backup.Repository``) that receives a
    #: copy of every WAL segment before the engine deletes it, and of the live ones at
    #: close, for point-in-time restore (``shaledb.restore(..., until=...)``). A segment
    #: that cannot be archived stays on disk (stats()["wal_archive"] says why) and is
    #: retried; writes go on.
    wal_archive: object | None = None

    def __post_init__(self) -> None:
        def positive(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise InvalidArgument(
                    f"option {name} must be an integer >= {minimum}, got {value!r}")

        positive("memtable_size", 64 * KiB)
        positive("block_size", 256)
        positive("block_cache_size", 0)
        positive("l0_compaction_trigger", 1)
        positive("l0_slowdown_trigger", 1)
        positive("l0_stop_trigger", 1)
        positive("max_bytes_for_level_base", 64 * KiB)
        positive("level_size_multiplier", 2)
        positive("target_file_size", 64 * KiB)
        positive("num_levels", 2)
        positive("max_open_files", 16)
        if not isinstance(self.mmap_reads, bool):
            raise InvalidArgument(f"option mmap_reads must be True or False, got "
                                  f"{self.mmap_reads!r}")
        positive("max_manifest_size", 1 * KiB)
        positive("delayed_write_rate", 64 * KiB)
        if self.compaction_process_threshold is not None:
            positive("compaction_process_threshold", 0)
        if self.compaction_write_rate is not None:
            positive("compaction_write_rate", 64 * KiB)
        if self.num_levels > 16:
            raise InvalidArgument("option num_levels must be <= 16")
        if not (self.l0_compaction_trigger <= self.l0_slowdown_trigger <= self.l0_stop_trigger):
            raise InvalidArgument(
                "options must satisfy l0_compaction_trigger <= l0_slowdown_trigger <= "
                "l0_stop_trigger"
            )
        if self.compression not in COMPRESSIONS:
            raise InvalidArgument(
                f"option compression must be one of {', '.join(COMPRESSIONS)}, "
                f"got {self.compression!r}"
            )
        if self.wal_recovery not in WAL_RECOVERY_MODES:
            raise InvalidArgument(
                f"option wal_recovery must be one of {', '.join(WAL_RECOVERY_MODES)}, "
                f"got {self.wal_recovery!r}"
            )
        if self.fsync_interval is not None and (
            not isinstance(self.fsync_interval, (int, float))
            or not math.isfinite(self.fsync_interval)
            or self.fsync_interval <= 0
        ):
            raise InvalidArgument(
                "option fsync_interval must be a positive number of seconds or None")
        if not callable(self.clock):
            raise InvalidArgument(
                "option clock must be a callable returning seconds since the epoch")
        if self.encryption_key is not None and self.encryption_key_file is not None:
            raise InvalidArgument("give encryption_key or encryption_key_file, not both")
        if self.encryption_key is not None and not isinstance(self.encryption_key,
                                                              (bytes, bytearray)):
            raise TypeError("option encryption_key must be bytes (32 of them), not "
                            f"{type(self.encryption_key).__name__}")
        if self.encryption_key_file is not None and (
                not isinstance(self.encryption_key_file, str) or not self.encryption_key_file):
            raise InvalidArgument("option encryption_key_file must be a path")
        if self.wal_archive is not None and not (
                isinstance(self.wal_archive, (str, os.PathLike))
                or callable(getattr(self.wal_archive, "archive_segment", None))):
            raise InvalidArgument("option wal_archive must be a backup repository: its path "
                                  "or a shaledb.backup.Repository")
        if self.wal_archive is not None and self.read_only:
            raise InvalidArgument("option wal_archive needs a database opened for writing")
        if self.rotate_data_key and (self.encryption_key is None
                                     and self.encryption_key_file is None):
            raise InvalidArgument("option rotate_data_key needs the master key "
                                  "(encryption_key or encryption_key_file)")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Options:
        """Build options from keyword arguments, naming any unknown option in the error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidArgument(
                f"unknown option(s): {', '.join(unknown)}; "
                f"known options: {', '.join(sorted(known))}"
            )
        return cls(**kwargs)

    def persistent(self) -> dict[str, Any]:
        """The options worth recording in the OPTIONS file (no callables, no fs)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in NOT_PERSISTED
        }

    def without_key(self) -> Options:
        """These options without the key bytes (what an open engine keeps: a key file's
        path stays, key bytes do not; see ``DB.encrypted``)."""
        if self.encryption_key is None:
            return self
        return dataclasses.replace(self, encryption_key=None, rotate_data_key=False)
