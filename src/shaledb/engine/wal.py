"""The write-ahead log: numbered segment files of framed records, one record per write group.

Every write group (one or more batches) becomes one record, copied into the segment's shared
memory map (:class:`~shaledb.engine.vfs.MappedFile`: in the page cache at once, so it survives
a process crash, without a system call that would give up the GIL). A segment is started
whenever the memtable is frozen and sealed at a clean close; the segment it replaces is sealed
(fsynced, with a seal record) by the flush thread, off the writer's thread, and always before
anything in the new segment is fsynced: the new segment's :meth:`WriteAheadLog.sync` and
:meth:`~WriteAheadLog.seal` seal their *prior* first. A segment is deleted once the manifest
records that every memtable it fed is in a table (``log_number`` moved past it). A segment
that was open during a crash ends in zeros (space allocated but never written): the reader
takes an all-zero tail as the end of the segment.

What recovery keeps (docs/format.md, "WAL recovery"): the records up to the first damage. The
damage is *unsynced* (what a crash tears) when no valid record after it vouches that it had been
synced (a ``synced`` claim past it, a sync mark, a seal), in its segment or in a later one
(any sync in a later segment came after this one's seal: :attr:`LogScan.vouches_prior`).
Anything else is *synced* damage: corruption, which ``wal_recovery="strict"`` refuses to open
and ``"point_in_time"`` cuts like unsynced damage. Cut bytes are never just dropped: the
engine saves them under ``lost/``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import CorruptionError, ShaleError, StorageError
from .batch import decode_batch
from .crypto import WAL_FILE, Keyring
from .filenames import log_name, prepared_log_name
from .logfile import HEADER_SIZE, LogScan, LogWriter, encode_record_v2, scan_log
from .vfs import FileSystem

#: Bytes of a sync mark or a seal (an empty format-2 record).
SYNC_MARK_SIZE = HEADER_SIZE
#: Room kept mapped behind every append: a sync mark and the seal. The seal of a segment a
#: memtable switch replaced may come from a sync of the next segment, after that one's record
#: was appended, where an error is fatal: it must never need a new map (EMFILE).
TAIL_ROOM = 2 * SYNC_MARK_SIZE


class WriteAheadLog:
    """One open WAL segment. ``append`` is called only by the write-group leader; ``sync`` may
    come from the leader or the periodic syncer, so it is serialized by a small lock."""

    def __init__(self, fs: FileSystem, dirpath: str, number: int,
                 prior: WriteAheadLog | None = None, *, prepared: bool = False,
                 keyring: Keyring | None = None) -> None:
        self.number = number
        self._fs = fs
        self._dirpath = dirpath
        # A prepared segment is made ahead of its memtable switch under a name recovery does
        # not replay (its header fsynced, off the writer's thread); :meth:`activate` renames
        # it. Its new name becomes durable before anything in it is fsynced (_ensure_named).
        self.path = prepared_log_name(dirpath, number) if prepared else log_name(dirpath, number)
        #: The directory entry of :attr:`path` is durable (the creator fsyncs the directory
        #: after creating an unprepared segment).
        self._named = not prepared
        file = fs.create_mapped(self.path)
        try:
            # Encrypted: a new file key (fresh salt) for every segment, never reused.
            self._writer = LogWriter(file, number,
                                     cipher=None if keyring is None
                                     else keyring.writer(WAL_FILE, number))
            # The header is durable before any record is written: a damaged header with
            # records after it is then damage to durable data, never something a crash left.
            self._writer.sync(mark=False)
        except BaseException:
            with contextlib.suppress(Exception):
                file.close()  # no descriptor left behind (its map may have failed: EMFILE)
            raise
        self._file = self._writer.file
        self._salt = self._writer.salt
        # Sealing and framing of one record, bound once: it runs on every write (hot path).
        self._frame_sealed = (None if self._writer.cipher is None
                              else self._writer.sealed_framer())
        self._sync_lock = threading.Lock()
        self.syncs = 0
        #: A seal was written: nothing may be appended any more.
        self.sealed = False
        #: The segment this one replaces, until it is known sealed. Nothing in this segment
        #: is fsynced before it is: recovery may then take an unsealed older segment's torn
        #: tail (and everything after it) for unsynced writes, unless a later segment holds
        #: a sync (the new-order rule, docs/format.md "WAL recovery").
        self._prior = prior
        #: A sync mark should say that the prior segment was sealed (note_prior_sealed).
        self.note_due = prior is not None
        #: The error of a failed fsync of this segment. The kernel may have dropped the pages
        #: it could not write, and a later fsync would not say so (fsyncgate): nothing may
        #: vouch for them any more, no seal, no sync mark, no sync of a newer segment (which
        #: seals this one first). Every later sync and seal raises.
        self._sync_error: StorageError | None = None

    @property
    def size(self) -> int:
        """Bytes written to this segment."""
        return self._writer.size

    @property
    def dirty(self) -> bool:
        """Whether bytes were written since the last fsync."""
        return self._writer.size != self._writer.synced

    def append(self, payload: bytes) -> int:
        """Append one record; returns its size in bytes."""
        record = self.frame(payload)
        self.reserve(len(record))
        return self.append_framed(record)

    def frame(self, payload: bytes) -> bytes:
        """``payload`` framed (and sealed, when encrypted, for the offset where the file ends
        now) as this segment's next record (InvalidArgument when too large; nothing is
        written). Only the write-group leader calls it, and appends the record right after."""
        if self._frame_sealed is not None:
            return self._frame_sealed(payload)
        return encode_record_v2(payload, self._salt, self._writer.synced)

    def reserve(self, nbytes: int) -> None:
        """Make room for a record of ``nbytes``, the sync mark that may follow it and the seal
        (:data:`TAIL_ROOM`), so that appending them maps nothing new. Raises before anything
        is written (an EMFILE from the map is then harmless: DescriptorsExhaustedError, the
        write may be retried)."""
        self._file.reserve(nbytes + TAIL_ROOM)

    def unframe(self) -> None:
        """The record :meth:`frame` made last is dropped unwritten (the write failed before
        its first byte was copied, retryable: no descriptor for the map or for the directory
        fsync of :meth:`ready_for_sync`). Encrypted, the retry seals its write group for the
        same offset again, which the cipher's nonce guard allows only after this: only
        ciphertext that reaches the file counts as a use of a nonce, and at most one record
        sealed for an offset ever does."""
        if self._writer.cipher is not None:
            self._writer.cipher.discard(self._file.size)

    def append_framed(self, record: bytes) -> int:
        """Append a record :meth:`frame` made; returns its size in bytes."""
        assert not self.sealed, "append to a sealed WAL segment"
        self._file.append(record)
        return len(record)

    def sync(self, mark: bool = False) -> None:
        """fsync everything appended so far (a no-op when nothing is new). With ``mark``
        (only the write-group leader, the one thread that appends), append a sync mark after
        it, so that a synced last record stays vouched for even if no record follows."""
        with self._sync_lock:
            self._seal_prior()
            self._ensure_named()
            w = self._writer
            if w.size != w.synced:
                self._fsynced(lambda: w.sync(mark))
                self.syncs += 1
            elif mark and w.marked != w.synced:
                w.mark()  # the periodic syncer already made it durable: still say so

    def ready_for_sync(self) -> None:
        """What :meth:`sync` does before its fsync: seal the prior segment and make this
        one's name durable. The write-group leader calls it before appending a durable
        write's record, so that an EMFILE on the way (the directory fsync opens the
        directory) fails the write before anything was written, retryable."""
        with self._sync_lock:
            self._seal_prior()
            self._ensure_named()

    def seal(self) -> None:
        """Mark the segment complete (a seal record) and fsync it: recovery then knows that
        every record before the seal was durable. Once only: a memtable switch that could
        not open the next segment (no descriptor left) seals again when it is retried."""
        with self._sync_lock:
            if self.sealed:
                return
            self._seal_prior()
            self._ensure_named()
            self._fsynced(self._writer.seal)
            self.sealed = True
            self.syncs += 1

    def _fsynced(self, fsyncs: Callable[[], None]) -> None:
        """Run ``fsyncs`` (the writer's sync or seal), refusing once an fsync of this segment
        failed and remembering one that fails now. Caller holds ``_sync_lock``."""
        failed = self._sync_error
        if failed is not None:
            raise StorageError(
                f"WAL segment {self.path!r}: an earlier fsync of it failed ({failed}); the "
                f"writes it held may not be durable and no later fsync can tell: reopen the "
                f"database (recovery keeps what is durable)", failed.errno, "fsync")
        try:
            fsyncs()
        except StorageError as exc:
            if exc.op == "fsync":
                self._sync_error = exc
            raise

    def activate(self, prior: WriteAheadLog | None) -> None:
        """Give a prepared segment its real name (a rename, not yet durable) and the segment
        it replaces. The caller is the one thread that appends; nothing was appended yet."""
        final = log_name(self._dirpath, self.number)
        self._fs.rename(self.path, final)
        self.path = self._file.path = final
        self._prior = prior
        self.note_due = prior is not None

    def discard(self) -> None:
        """Close and remove a prepared segment that was never activated (best effort)."""
        with contextlib.suppress(Exception):
            self.close()
        with contextlib.suppress(Exception):
            self._fs.remove(self.path)

    def _ensure_named(self) -> None:
        """Make the segment's name durable before its first fsync counts (caller holds
        ``_sync_lock``)."""
        if not self._named:
            self._fs.sync_dir(self._dirpath)
            self._named = True

    def make_name_durable(self) -> None:
        """:meth:`_ensure_named` ahead of need (the flush thread, after a switch)."""
        with self._sync_lock:
            self._ensure_named()

    def note_prior_sealed(self) -> None:
        """Once the prior segment is sealed, append a sync mark (claiming only what this
        segment really has synced) as the evidence recovery needs to call later damage in
        the prior segment corruption (:attr:`LogScan.vouches_prior`). Only the write-group
        leader calls this; best effort: without room for the mark (no descriptor, disk
        full) it is simply not written, and nothing else is. Never waits: the lock may be
        held across an fsync (the periodic syncer, ``DB.sync()``, the flush thread's
        directory fsync), and the leader may be the server's event loop; the next leader
        tries again."""
        if not self.note_due or self.sealed:
            return
        prior = self._prior
        if prior is not None and not prior.sealed:
            return
        if not self._sync_lock.acquire(blocking=False):
            return
        try:
            try:
                self._file.reserve(TAIL_ROOM)  # the mark, and the seal after it
            except ShaleError:
                return
            self._writer.mark()
            self.note_due = False
        finally:
            self._sync_lock.release()

    def _seal_prior(self) -> None:
        """Seal the segment this one replaced, if that has not happened yet (the flush thread
        usually got there first; the prior's own lock makes it happen once). Caller holds
        ``_sync_lock``: lock order is always newer segment, then older."""
        prior = self._prior
        if prior is not None:
            prior.seal()
            self._prior = None  # _note_due stays: a sync mark of this segment may still be due

    def close(self) -> None:
        """Close the segment without syncing."""
        with self._sync_lock:
            self._writer.close()


class SegmentScan:
    """The batches of one segment, and the damage (if any) that ends them."""

    __slots__ = ("path", "number", "batches", "offsets", "scan", "malformed")

    def __init__(self, path: str, number: int, scan: LogScan) -> None:
        self.path = path
        self.number = number
        self.scan = scan
        self.batches: list[tuple[int, list[Any]]] = []
        self.offsets: list[int] = []
        #: A record whose checksum is right but whose batch does not decode: written that way
        #: (a bug), never a crash. Its offset, or None.
        self.malformed: int | None = None
        for payload, offset in zip(scan.records, scan.offsets, strict=True):
            try:
                self.batches.append(decode_batch(payload))
            except CorruptionError:
                self.malformed = offset
                break
            self.offsets.append(offset)

    def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
        return iter(self.batches)


def scan_segment(fs: FileSystem, dirpath: str, number: int,
                 expect: int | None = None, keyring: Keyring | None = None) -> SegmentScan:
    """Read every intact batch of segment ``number`` (damage is described, not raised);
    ``expect``: its log format, when the database knows it; ``keyring``: the database's
    data keys, when it is encrypted."""
    path = log_name(dirpath, number)
    return scan_segment_bytes(fs.read_file(path), path, number, expect, keyring)


def scan_segment_bytes(data: bytes, path: str, number: int, expect: int | None = None,
                       keyring: Keyring | None = None) -> SegmentScan:
    """:func:`scan_segment` of bytes already read (an archived copy: ``path`` names it)."""
    return SegmentScan(path, number, scan_log(data, path, expect=expect, keyring=keyring,
                                              file_kind=WAL_FILE))
