"""A fault-injecting file system for tests: chosen operations fail with chosen errnos, writes
tear, and :meth:`FaultInjectionFS.crash` simulates a power loss (also at the N-th mutating
operation, and inside a compaction worker process).

It wraps the real :class:`~shaledb.engine.vfs.PosixFileSystem` (the same code paths run
underneath), like LevelDB's ``FaultInjectionTestEnv`` and Pebble's ``errorfs`` and crash
clones. Tests of the engine and the server use it; it is importable by users who want to test
their own code against I/O errors.

The power-loss model (what :meth:`FaultInjectionFS.crash` leaves on disk):

- Data. Every file written through this file system is tracked: its length at the last
  fsync (``durable_size``), the end of the content that fsync made durable, and the 512-byte
  sectors (aligned to the file offset) written since. A file keeps its synced content. With
  no ``rng`` everything unsynced is dropped (an appended file is cut to its synced length, a
  mapped file to its synced content). With an ``rng`` each unsynced sector independently
  survives (new content) or not (it reads as before the write: zeros for space that was never
  written, appended, ``posix_fallocate``-d or mapped; the previous synced content where there
  was one); an appended file's length is anywhere between its synced and its written length;
  a mapped file keeps its allocated length or is cut back (to the length ``close`` cut it to).
- Metadata. Creating a file, creating a directory (:meth:`mkdirs`, each new directory,
  the database directory and its parents included), a rename (also over an existing file)
  and a removal are *not durable* until :meth:`sync_dir` of a directory they change.
  Journaling file systems (ext4, XFS) commit metadata in order, so that fsync also commits
  every operation before the last one it covers, and at a crash a random prefix of the
  operations not yet committed survives (with no ``rng``: none). The fsync of a file is not
  taken to commit any metadata (POSIX does not promise it, although ext4 does it). A lost
  creation removes the file (a lost directory creation removes the whole tree under it); a
  lost rename moves the file back and brings back the file it replaced; a lost removal
  brings the file back with its content (removed and replaced files are kept as hard links
  in a private side directory outside the database directory until the change is durable).

Atomicity: every mutating operation runs inside a gate; :meth:`crash` closes the gate, waits
for the operations already inside it (in other threads) to finish, and only then decides what
survives, so no thread writes after the power loss. Every later operation fails with EIO.

Crash points: every mutating operation (create, write including a copy into a map and the
growth of a map, fsync, rename, remove, truncate including the cut at a map's close, mkdirs,
sync_dir) gets the next number in :attr:`FaultInjectionFS.mutations`; with ``crash_at=N`` the
power fails *instead of* operation N (``crash_rng`` picks the outcome), which is then recorded
in :attr:`FaultInjectionFS.crash_point`.

The compaction worker process (:mod:`shaledb.engine.compaction_worker`) runs under the same
rules: :meth:`worker_state` hands it the fault rules, the operation counter and the crash
point, and a journal file in the side directory; the worker's file system applies the rules
and appends every operation to the journal *before* doing it (an fsync also after it), so
that :meth:`adopt_worker_report` (after the job) and :meth:`crash` (which first SIGKILLs a
worker still running) account for exactly what the worker may have written. Counting is exact
while the parent does no other I/O during the job (a test that enumerates crash points makes
sure of that). A worker that reaches the crash point writes nothing more and fails its job;
the parent simulates the power loss when it takes in the journal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno as errno_mod
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..engine.vfs import (
    FileLock,
    MappedFile,
    PosixFileSystem,
    RandomAccessFile,
    WritableFile,
    _storage_error,
    missing_dirs,
)
from ..errors import StorageError

#: Granularity of the power-loss model for unsynced data (a disk writes whole sectors).
SECTOR = 512

_T = TypeVar("_T")


@dataclasses.dataclass
class Fault:
    """One injection rule: fail the matching operation with ``errno``.

    ``op`` is one of create, write, fsync, read, rename, remove, sync_dir, truncate (also
    closing a mapped file, which cuts it to its content), mkdir.
    ``path`` matches when it is a substring of the file path (``""`` matches all). The first
    ``skip`` matching calls succeed; then ``count`` calls fail (``None``: all later ones).
    ``torn`` (writes only) writes the first half of the data before failing.
    """

    op: str
    path: str = ""
    errno: int = errno_mod.EIO
    skip: int = 0
    count: int | None = 1
    torn: bool = False
    hits: int = 0

    def matches(self, op: str, path: str) -> bool:
        if op != self.op or self.path not in path:
            return False
        self.hits += 1
        if self.hits <= self.skip:
            return False
        return self.count is None or self.hits - self.skip <= self.count


@dataclasses.dataclass
class _Inode:
    """What the power-loss model knows about one file's data."""

    size: int = 0  # the file's length now
    durable_size: int = 0  # its length at the last fsync
    durable_end: int = 0  # [0, durable_end) is synced content; past it, up to size: zeros
    data_end: int = 0  # end of the content written so far
    mapped: bool = False
    gen: int = 0  # write generation (an fsync makes the writes before it started durable)
    dirty: dict[int, int] = dataclasses.field(default_factory=dict)  # sector -> generation
    undo: dict[int, bytes] = dataclasses.field(default_factory=dict)  # sector -> synced bytes


@dataclasses.dataclass
class _MetaOp:
    """A directory-entry change not yet made durable by a directory fsync."""

    seq: int
    kind: str  # create | mkdir | rename | remove
    path: str  # the entry created / removed, or the rename's destination
    src: str = ""  # a rename's source
    parents: set[str] = dataclasses.field(default_factory=set)  # directories it changes
    side: str = ""  # hard link keeping a removed (or replaced) file
    inode: _Inode | None = None  # what was known of that file


def _crash_error(op: str, path: str) -> StorageError:
    return StorageError(f"{op} {path!r}: simulated crash, the process is gone", errno_mod.EIO,
                        op)


def _parent(path: str) -> str:
    return os.path.dirname(path) or "."


def _abs(path: str) -> str:
    return os.path.abspath(path)


def _read_journal(path: str) -> list[list[Any]]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return []
    # A worker killed in the middle of a line leaves it incomplete: skip it.
    return [json.loads(x) for x in data.split(b"\n")[:-1] if x]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(os.path.join(directory, ""))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _move_back(src: str, dst: str) -> None:
    try:
        os.replace(src, dst)
    except OSError:
        shutil.move(src, dst)


def _exited(pid: int) -> bool:
    """Whether process ``pid`` is a zombie or gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"Z", b"X")


def _worker_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) compaction worker started by this process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return False
    fields = stat.rsplit(b")", 1)[-1].split()
    return (len(fields) > 1 and fields[0] != b"Z" and int(fields[1]) == os.getpid()
            and b"shaledb.engine._worker_main" in cmdline)


class FaultInjectionFS(PosixFileSystem):
    """A :class:`FileSystem` that fails on command and can simulate a power loss.

    After :meth:`crash` (or the crash point ``crash_at``) every operation fails with EIO (the
    "process" is dead); open the database again with a fresh file system to "reboot".
    """

    def __init__(self, *, crash_at: int | None = None,
                 crash_rng: random.Random | None = None) -> None:
        self.faults: list[Fault] = []
        self.crashed = False
        self.op_counts: dict[str, int] = {}
        #: Mutating operations started so far (the last one's number).
        self.mutations = 0
        #: Simulate the power loss instead of mutating operation number ``crash_at``.
        self.crash_at = crash_at
        self.crash_rng = crash_rng
        #: (number, op, path) of the operation the power loss replaced, when it was crash_at.
        self.crash_point: tuple[int, str, str] | None = None
        #: With ``trace = True``: (number, op, path) of every mutating operation.
        self.trace = False
        self.traced: list[tuple[int, str, str]] = []
        #: Numbers of the mutating operations that compaction workers did.
        self.worker_ops: list[int] = []
        self._cv = threading.Condition(threading.Lock())
        self._inflight: dict[int, int] = {}  # thread -> depth of operations in the gate
        self._inodes: dict[str, _Inode] = {}  # by current path
        self._meta: list[_MetaOp] = []
        self._seq = 0
        self._side: str | None = None
        self._side_n = 0
        self._journals: list[str] = []  # workers' journals not yet taken in
        self._resolved = False  # the power loss was simulated (the disk is as it left it)
        # Set in a worker process (see from_worker_state).
        self._journal_fd = -1

    # -- rules -------------------------------------------------------------------------------
    def inject(self, op: str, path: str = "", errno: int = errno_mod.EIO, *, skip: int = 0,
               count: int | None = 1, torn: bool = False) -> Fault:
        """Add a rule (see :class:`Fault`) and return it."""
        fault = Fault(op, path, errno, skip, count, torn)
        with self._cv:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove all rules."""
        with self._cv:
            self.faults.clear()

    def crash_at_op(self, n: int | None, rng: random.Random | None = None) -> None:
        """Simulate the power loss instead of mutating operation number ``n`` (counted from
        this file system's creation; see :attr:`mutations`)."""
        with self._cv:
            self.crash_at, self.crash_rng = n, rng

    def _raise(self, fault: Fault, op: str, path: str) -> None:
        exc = OSError(fault.errno, os.strerror(fault.errno), path)
        raise _storage_error(f"{op} (injected)", path, exc) from exc

    def _locked_match(self, op: str, path: str) -> Fault | None:
        for i, fault in enumerate(self.faults):
            before = fault.hits
            hit = fault.matches(op, path)
            if fault.hits != before and self._journal_fd >= 0:
                self._journal(("hit", i))
            if hit:
                return fault
        return None

    # -- the gate ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _op(self, op: str, path: str, *, mutating: bool = True) -> Iterator[Fault | None]:
        """Run one operation inside the gate: fails after the crash, counts it, crashes
        instead of it at the crash point, and yields the fault rule that fires (if any)."""
        me = threading.get_ident()
        with self._cv:
            self.op_counts[op] = self.op_counts.get(op, 0) + 1
            if self.crashed:
                raise _crash_error(op, path)
            if mutating:
                self.mutations += 1
                n = self.mutations
                if self.trace:
                    self.traced.append((n, op, path))
                if self._journal_fd >= 0:
                    self._journal(("op", n, op, path))
                if self.crash_at is not None and n == self.crash_at:
                    self.crash_point = (n, op, path)
                    if self._journal_fd >= 0:  # a worker: the parent simulates the loss
                        self._journal(("crash", n, op, path))
                        self.crashed = True
                    else:
                        self._locked_crash(self.crash_rng)
                    raise _crash_error(op, path)
            fault = self._locked_match(op, path)
            self._inflight[me] = self._inflight.get(me, 0) + 1
        try:
            yield fault
        finally:
            with self._cv:
                depth = self._inflight[me] - 1
                if depth:
                    self._inflight[me] = depth
                else:
                    del self._inflight[me]
                self._cv.notify_all()

    def _check_alive(self, op: str, path: str) -> None:
        with self._cv:
            if self.crashed:
                raise _crash_error(op, path)

    # -- the model ---------------------------------------------------------------------------
    # Every change is a record: the parent applies it to the model once the operation
    # succeeded; a worker appends it to its journal *before* the operation (so that a worker
    # killed in the middle of it is accounted for), and the parent replays the journal.

    @property
    def _in_worker(self) -> bool:
        return self._journal_fd >= 0

    def _journal(self, record: tuple[Any, ...]) -> None:
        os.write(self._journal_fd, (json.dumps(record) + "\n").encode())

    def _apply(self, record: tuple[Any, ...]) -> None:
        with self._cv:
            self._locked_apply(record)

    def _tracked(self, record: tuple[Any, ...], do: Callable[[], _T],
                 *, undone_by_failure: bool = True) -> _T:
        """Run ``do`` (the real operation) and account for ``record``."""
        if not self._in_worker:
            result = do()
            self._apply(record)
            return result
        self._journal(record)
        try:
            return do()
        except BaseException:
            if undone_by_failure:
                self._journal(("failed",))
            raise

    def _locked_add_meta(self, kind: str, path: str, parents: set[str], *, src: str = "",
                         side: str = "", inode: _Inode | None = None) -> None:
        self._seq += 1
        self._meta.append(_MetaOp(self._seq, kind, path, src, parents, side, inode))

    def _locked_known(self, path: str) -> _Inode:
        """The model of ``path``; a file this file system never wrote is all durable."""
        ino = self._inodes.get(path)
        if ino is None:
            try:
                size = os.path.getsize(path)
            except OSError:
                size = 0
            ino = self._inodes[path] = _Inode(size, size, size, size)
        return ino

    def _locked_apply(self, r: tuple[Any, ...]) -> None:
        kind = r[0]
        if kind == "create":  # (create, path, mapped, existed)
            _, path, mapped, existed = r
            ino = _Inode(mapped=mapped)
            if existed:
                # O_TRUNC: until an fsync, the old synced content may come back.
                old = self._locked_known(path)
                ino.durable_size, ino.durable_end = old.durable_size, old.durable_end
                ino.undo = dict(old.undo)
                ino.dirty = dict.fromkeys(range(-(-old.durable_end // SECTOR)), 0)
            self._inodes[path] = ino
            if not existed:
                self._locked_add_meta("create", path, {_parent(path)})
        elif kind == "undo":  # (undo, path, sector, hex): synced bytes of a sector
            found = self._inodes.get(r[1])
            if found is not None:
                found.undo.setdefault(r[2], bytes.fromhex(r[3]))
        elif kind == "write":  # (write, path, offset, length)
            _, path, offset, length = r
            ino = self._locked_known(path)
            if length > 0:
                ino.gen += 1
                for s in range(offset // SECTOR, (offset + length - 1) // SECTOR + 1):
                    ino.dirty[s] = ino.gen
            ino.data_end = max(ino.data_end, offset + length)
            ino.size = max(ino.size, offset + length)
        elif kind == "grow":  # (grow, path, size): space allocated for a map
            ino = self._locked_known(r[1])
            ino.size = max(ino.size, r[2])
        elif kind == "cut":  # (cut, path, size): ftruncate without an fsync
            ino = self._locked_known(r[1])
            ino.size = r[2]
            ino.data_end = min(ino.data_end, r[2])
        elif kind == "fsync":  # (fsync, path, generation, size, data_end) as it started
            _, path, gen, size, data_end = r
            ino = self._locked_known(path)
            ino.durable_size = size
            ino.durable_end = max(min(ino.durable_end, size), data_end)
            ino.dirty = {s: g for s, g in ino.dirty.items() if g > gen}
            ino.undo = {s: b for s, b in ino.undo.items() if s in ino.dirty}
        elif kind == "truncate":  # (truncate, path, size): ftruncate + fsync
            ino = self._locked_known(r[1])
            ino.size = ino.durable_size = ino.data_end = ino.durable_end = r[2]
            ino.dirty.clear()
            ino.undo.clear()
        elif kind == "rename":  # (rename, src, dst, side link of the replaced dst or "")
            _, src, dst, side = r
            replaced = self._inodes.pop(dst, None)
            moved = self._inodes.pop(src, None)
            if moved is not None:
                self._inodes[dst] = moved
            self._locked_add_meta("rename", dst, {_parent(src), _parent(dst)}, src=src,
                                  side=side, inode=replaced)
        elif kind == "remove":  # (remove, path, side link or "" when there was no file)
            _, path, side = r
            gone = self._inodes.pop(path, None)
            if side:
                self._locked_add_meta("remove", path, {_parent(path)}, side=side, inode=gone)
        elif kind == "mkdir":  # (mkdir, path)
            self._locked_add_meta("mkdir", r[1], {_parent(r[1])})
        elif kind == "sync_dir":  # (sync_dir, path, last metadata seq when it started)
            # Metadata is committed in order: the fsync commits the last operation on this
            # directory that it covers, and with it every operation before that one.
            _, path, seq = r
            last = max((i for i, m in enumerate(self._meta)
                        if m.seq <= seq and path in m.parents), default=-1)
            durable, self._meta = self._meta[:last + 1], self._meta[last + 1:]
            for m in durable:
                if m.side:
                    with contextlib.suppress(OSError):
                        os.unlink(m.side)
        else:
            raise AssertionError(f"unknown fault-injection record {r!r}")

    def _side_dir(self) -> str:
        """The private directory for side links and worker journals (created lazily, 0700,
        outside every database directory)."""
        if self._side is None:
            self._side = tempfile.mkdtemp(prefix="shaledb-faultfs-")
            weakref.finalize(self, shutil.rmtree, self._side, True)
        return self._side

    def _side_link(self, path: str) -> str:
        """Keep the file at ``path`` alive under a side name (a hard link); returns it, or ""
        when the file is gone (another thread removed it first: nothing to bring back)."""
        with self._cv:
            self._side_n += 1
            side = os.path.join(self._side_dir(), f"{os.getpid()}-{self._side_n}")
        try:
            _link_or_copy(path, side)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.unlink(side)
            return ""
        return side

    def _save_synced(self, path: str, offset: int, length: int) -> None:
        """Before overwriting ``[offset, offset+length)`` of ``path``: remember the synced
        bytes of every sector it touches, so that a crash can undo the write."""
        if self._in_worker:
            return  # a worker writes new files only
        with self._cv:
            ino = self._inodes.get(path)
            if ino is None or offset >= ino.durable_end or length <= 0:
                return
            end = min(offset + length, ino.durable_end)
            wanted = [s for s in range(offset // SECTOR, (end - 1) // SECTOR + 1)
                      if s not in ino.undo]
            durable_end = ino.durable_end
        with open(path, "rb") as fh:
            for s in wanted:
                fh.seek(s * SECTOR)
                old = fh.read(min(SECTOR, durable_end - s * SECTOR))
                self._apply(("undo", path, s, old.hex()))

    # -- primitives --------------------------------------------------------------------------
    def _write(self, f: WritableFile, fd: int, data: bytes | bytearray | memoryview) -> int:
        path = _abs(f.path)
        with self._op("write", path) as fault:
            offset = f.size
            if fault is not None:
                if fault.torn and len(data) > 1:
                    half = len(data) // 2
                    self._tracked(("write", path, offset, half),
                                  lambda: os.write(fd, data[:half]), undone_by_failure=False)
                self._raise(fault, "write", path)
            self._save_synced(path, offset, len(data))
            if self._in_worker:
                return self._tracked(("write", path, offset, len(data)),
                                     lambda: super(FaultInjectionFS, self)._write(f, fd, data),
                                     undone_by_failure=False)
            n = super()._write(f, fd, data)
            self._apply(("write", path, offset, n))
            return n

    def _fsync(self, f: WritableFile | MappedFile, fd: int) -> None:
        self._sync(_abs(f.path), lambda: super(FaultInjectionFS, self)._fsync(f, fd))

    def _sync(self, path: str, do: Callable[[], None]) -> None:
        with self._op("fsync", path) as fault:
            if fault is not None:
                self._raise(fault, "fsync", path)
            if self._in_worker:
                do()
                self._journal(("fsync_done", path))
                return
            with self._cv:  # what this fsync covers: everything written before it started
                ino = self._locked_known(path)
                state = (ino.gen, ino.size, ino.data_end)
            do()
            self._apply(("fsync", path, *state))

    def _map_write(self, f: MappedFile, offset: int, data: bytes | bytearray | memoryview) -> None:
        path = _abs(f.path)
        base = super()._map_write
        with self._op("write", path) as fault:
            if fault is not None:
                if fault.torn and len(data) > 1:
                    half = len(data) // 2
                    self._tracked(("write", path, offset, half),
                                  lambda: base(f, offset, memoryview(data)[:half]),
                                  undone_by_failure=False)
                self._raise(fault, "write", path)
            self._save_synced(path, offset, len(data))
            self._tracked(("write", path, offset, len(data)), lambda: base(f, offset, data),
                          undone_by_failure=False)

    def _map_grow(self, f: MappedFile, fd: int, needed: int) -> None:
        path = _abs(f.path)
        with self._op("write", path) as fault:
            if fault is not None:
                self._raise(fault, "write", path)
            super()._map_grow(f, fd, needed)
            self._tracked(("grow", path, f.capacity), lambda: None)

    def _map_close(self, f: MappedFile, fd: int) -> None:
        path = _abs(f.path)
        with self._cv:
            crashed = self.crashed
        if crashed:  # the process is gone: leave the file as the crash left it
            m, f.map = f.map, None
            with contextlib.suppress(OSError, ValueError, BufferError):
                if m is not None:
                    m.close()
            os.close(fd)
            return
        try:
            with self._op("truncate", path) as fault:
                if fault is not None:
                    self._raise(fault, "truncate", path)
                super()._map_close(f, fd)  # closes fd, also on error
                self._tracked(("cut", path, f.size), lambda: None)
                return
        except StorageError:
            if f.map is not None:  # failed before the real close: release, do not cut
                m, f.map = f.map, None
                with contextlib.suppress(OSError, ValueError, BufferError):
                    m.close()
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

    def _pread(self, f: RandomAccessFile, fd: int, length: int, offset: int) -> bytes:
        # A read error injected here is a StorageError even for a mapped file (mmap_reads):
        # what pread would raise, not the SIGBUS a real EIO on a mapped page is.
        with self._op("read", f.path, mutating=False) as fault:
            if fault is not None:
                self._raise(fault, "read", f.path)
            return super()._pread(f, fd, length, offset)

    # -- public operations -------------------------------------------------------------------
    def create(self, path: str, *, exclusive: bool = False) -> WritableFile:
        ap = _abs(path)
        with self._op("create", ap) as fault:
            if fault is not None:
                self._raise(fault, "create", path)
            existed = os.path.exists(path)
            if existed and exclusive:  # EEXIST below; nothing changes
                return super().create(path, exclusive=exclusive)
            if existed:
                with self._cv:
                    self._locked_known(ap)
                self._save_synced(ap, 0, os.path.getsize(path))
            return self._tracked(("create", ap, False, existed),
                                 lambda: super(FaultInjectionFS, self).create(
                                     path, exclusive=exclusive))

    def create_mapped(self, path: str) -> MappedFile:
        ap = _abs(path)
        with self._op("create", ap) as fault:
            if fault is not None:
                self._raise(fault, "create", path)
            if os.path.exists(path):  # O_EXCL: EEXIST below; nothing changes
                return super().create_mapped(path)
            return self._tracked(("create", ap, True, False),
                                 lambda: super(FaultInjectionFS, self).create_mapped(path))

    def open_read(self, path: str, *, mapped: bool = False) -> RandomAccessFile:
        self._check_alive("open", path)
        return super().open_read(path, mapped=mapped)

    def exists(self, path: str) -> bool:
        self._check_alive("stat", path)
        return super().exists(path)

    def is_dir(self, path: str) -> bool:
        self._check_alive("stat", path)
        return super().is_dir(path)

    def file_size(self, path: str) -> int:
        self._check_alive("stat", path)
        return super().file_size(path)

    def listdir(self, path: str) -> list[str]:
        self._check_alive("list", path)
        return super().listdir(path)

    def lock(self, path: str, *, readonly: bool = False) -> FileLock:
        self._check_alive("lock", path)
        return super().lock(path, readonly=readonly)

    def lock_dir(self, path: str) -> FileLock:
        self._check_alive("lock", path)
        return super().lock_dir(path)

    def rename(self, src: str, dst: str) -> None:
        asrc, adst = _abs(src), _abs(dst)
        with self._op("rename", asrc) as fault:
            if fault is not None:
                self._raise(fault, "rename", src)
            side = self._side_link(dst) if os.path.isfile(dst) else ""
            try:
                self._tracked(("rename", asrc, adst, side),
                              lambda: PosixFileSystem.rename(self, src, dst))
            except BaseException:
                if side:
                    with contextlib.suppress(OSError):
                        os.unlink(side)
                raise

    def remove(self, path: str) -> None:
        ap = _abs(path)
        with self._op("remove", ap) as fault:
            if fault is not None:
                self._raise(fault, "remove", path)
            side = self._side_link(path) if os.path.isfile(path) else ""
            self._tracked(("remove", ap, side), lambda: PosixFileSystem.remove(self, path))

    def truncate(self, path: str, size: int) -> None:
        ap = _abs(path)
        with self._op("truncate", ap) as fault:
            if fault is not None:
                self._raise(fault, "truncate", path)
            self._tracked(("truncate", ap, size),
                          lambda: PosixFileSystem.truncate(self, path, size),
                          undone_by_failure=False)

    def sync_file(self, path: str) -> None:
        self._sync(_abs(path), lambda: PosixFileSystem.sync_file(self, path))

    def mkdirs(self, path: str) -> None:
        with self._op("mkdir", _abs(path)) as fault:
            if fault is not None:
                self._raise(fault, "mkdir", path)
            # Accounted for before they exist: a directory fsync inside mkdirs (of a parent
            # it created a directory in) must find them.
            for d in missing_dirs(_abs(path)):
                if self._in_worker:
                    self._journal(("mkdir", d))
                else:
                    self._apply(("mkdir", d))
            super().mkdirs(path)

    def sync_dir(self, path: str) -> None:
        ap = _abs(path)
        with self._op("sync_dir", ap) as fault:
            if fault is not None:
                self._raise(fault, "sync_dir", path)
            if self._in_worker:
                self._journal(("sync_dir_start", ap))
                super().sync_dir(path)
                self._journal(("sync_dir_done", ap))
                return
            with self._cv:
                seq = self._seq
            super().sync_dir(path)
            self._apply(("sync_dir", ap, seq))

    # -- compaction worker -------------------------------------------------------------------
    def worker_state(self) -> Any:
        """The fault rules, the operation counter, the crash point and a fresh journal for
        one compaction worker job (see the module docstring)."""
        with self._cv:
            if self.crashed:
                raise _crash_error("worker", "")
            self._side_n += 1
            journal = os.path.join(self._side_dir(), f"worker-{self._side_n}.journal")
            os.close(os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o600))
            self._journals.append(journal)
            args = {"journal": journal, "mutations": self.mutations, "crash_at": self.crash_at,
                    "faults": [dataclasses.asdict(f) for f in self.faults]}
        # The worker runs this class itself (a test's subclass may not be importable there).
        return (f"{__name__}:FaultInjectionFS", args)

    @classmethod
    def from_worker_state(cls, args: dict[str, Any]) -> FaultInjectionFS:
        """The worker's side of :meth:`worker_state`: the same rules, numbering and crash
        point; every operation goes to the journal."""
        fs = cls(crash_at=args["crash_at"])
        fs.mutations = args["mutations"]
        fs.faults = [Fault(**d) for d in args["faults"]]
        fs._side = os.path.dirname(args["journal"])  # side links next to the journal
        fd = os.open(args["journal"], os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        fs._journal_fd = fd
        weakref.finalize(fs, os.close, fd)
        fs._journal(("pid", os.getpid()))
        return fs

    def adopt_worker_report(self, report: Any) -> None:
        """Take in the journals of worker jobs (``report`` is not needed: the journal says
        everything); simulates the power loss when the worker reached the crash point."""
        with self._cv:
            if self.crashed:
                return
            if self._locked_read_journals(kill=False):
                self._locked_crash(self.crash_rng)

    def _locked_read_journals(self, *, kill: bool) -> bool:
        """Apply the workers' journals to the model (first SIGKILLing a worker still running
        when ``kill``); returns whether a worker reached the crash point."""
        crashed = False
        journals, self._journals = self._journals, []
        for journal in journals:
            records = _read_journal(journal)
            pid = next((r[1] for r in records if r[0] == "pid"), None)
            if kill and pid is not None and _worker_alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                # Wait for the zombie, not for "no longer a worker": while a killed process
                # exits its cmdline already reads empty, and a write in progress may finish.
                deadline = time.monotonic() + 10
                while not _exited(pid) and time.monotonic() < deadline:
                    time.sleep(0.002)
                records = _read_journal(journal)  # all it did before it died
            with contextlib.suppress(OSError):
                os.unlink(journal)
            crashed = self._locked_replay(records) or crashed
        return crashed

    def _locked_replay(self, records: list[list[Any]]) -> bool:
        dir_syncs: dict[str, int] = {}
        crashed = False
        last: tuple[Any, ...] | None = None
        for r in records:
            kind = r[0]
            if kind == "failed":  # the operation recorded just before did not happen
                if last is not None and last[0] in ("create", "rename", "remove"):
                    self._locked_forget(last)
                continue
            last = tuple(r)
            if kind == "pid":
                continue
            if kind == "op":
                _, n, op, path = r
                self.mutations = max(self.mutations, n)
                self.worker_ops.append(n)
                self.op_counts[op] = self.op_counts.get(op, 0) + 1
                if self.trace:
                    self.traced.append((n, op, path))
            elif kind == "hit":
                if r[1] < len(self.faults):
                    self.faults[r[1]].hits += 1
            elif kind == "crash":
                self.crash_point = (r[1], r[2], r[3])
                crashed = True
            elif kind == "fsync_done":
                ino = self._locked_known(r[1])
                self._locked_apply(("fsync", r[1], ino.gen, ino.size, ino.data_end))
            elif kind == "sync_dir_start":
                dir_syncs[r[1]] = self._seq
            elif kind == "sync_dir_done":
                self._locked_apply(("sync_dir", r[1], dir_syncs.pop(r[1], self._seq)))
            else:
                self._locked_apply(last)
        return crashed

    def _locked_forget(self, record: tuple[Any, ...]) -> None:
        """Take back a create/rename/remove a worker journaled but that failed."""
        if self._meta and self._meta[-1].kind == record[0]:
            m = self._meta.pop()
            if m.kind == "rename":
                ino = self._inodes.pop(m.path, None)
                if ino is not None:
                    self._inodes[m.src] = ino
                if m.inode is not None:
                    self._inodes[m.path] = m.inode
            elif m.kind == "remove" and m.inode is not None:
                self._inodes[m.path] = m.inode
            elif m.kind == "create":
                self._inodes.pop(m.path, None)
            if m.side:
                with contextlib.suppress(OSError):
                    os.unlink(m.side)

    # -- power loss --------------------------------------------------------------------------
    def crash(self, rng: random.Random | None = None) -> None:
        """Simulate power loss (see the module docstring): with no ``rng`` every unsynced
        byte and every non-durable directory entry is lost; with ``rng``, a random part of
        them survives. Afterwards every operation on this file system fails."""
        with self._cv:
            self._locked_crash(rng)

    def _locked_crash(self, rng: random.Random | None) -> None:
        self.crashed = True
        if self._resolved:
            return
        me = threading.get_ident()
        # Operations already inside the gate in other threads finish first (they happened
        # before the power loss); no new one starts.
        while any(depth for tid, depth in self._inflight.items() if tid != me):
            self._cv.wait()
        self._resolved = True
        self._locked_read_journals(kill=True)
        # Metadata: a prefix of the non-durable operations survives; undo the rest.
        meta = self._meta
        keep = rng.randint(0, len(meta)) if rng is not None and meta else 0
        for m in reversed(meta[keep:]):
            self._locked_undo(m)
        # Data of every file that is still there.
        for path in sorted(self._inodes):
            if os.path.isfile(path):
                self._crash_data(path, self._inodes[path], rng)
        self._meta = []
        self._inodes = {}
        if self._side is not None:
            shutil.rmtree(self._side, ignore_errors=True)
            self._side = None

    def _locked_undo(self, m: _MetaOp) -> None:
        if m.kind == "create":
            self._inodes.pop(m.path, None)
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(m.path)
        elif m.kind == "mkdir":
            for p in [p for p in self._inodes if _under(p, m.path)]:
                del self._inodes[p]
            shutil.rmtree(m.path, ignore_errors=True)
        elif m.kind == "rename":
            ino = self._inodes.pop(m.path, None)
            if os.path.lexists(m.path):
                os.replace(m.path, m.src)
                if ino is not None:
                    self._inodes[m.src] = ino
            if m.side:
                _move_back(m.side, m.path)
                if m.inode is not None:
                    self._inodes[m.path] = m.inode
        elif m.kind == "remove" and m.side and os.path.isdir(_parent(m.path)):
            _move_back(m.side, m.path)
            if m.inode is not None:
                self._inodes[m.path] = m.inode

    def _crash_data(self, path: str, ino: _Inode, rng: random.Random | None) -> None:
        """Apply the power-loss model to one file's unsynced data."""
        if rng is None:
            # Everything unsynced is lost; a mapped file is cut to its synced content.
            length = ino.durable_end if ino.mapped else ino.durable_size
            survive = 0.0
        else:
            if ino.mapped:
                length = rng.choice(sorted({ino.durable_size, ino.size}))
            elif ino.size >= ino.durable_size:
                length = rng.randint(ino.durable_size, ino.size)
            else:
                length = rng.choice([ino.durable_size, ino.size])
            # A third of the time every sector below the length survives (a torn tail);
            # otherwise each one survives with a probability drawn per file (holes, and
            # pages written back out of order).
            survive = 1.0 if rng.random() < 1 / 3 else rng.random()
        dirty = sorted(ino.dirty)
        lost = [s for s in dirty if rng is None or rng.random() >= survive]
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size != length:
                os.ftruncate(fd, length)  # a longer file reads zeros past its old end
            for s in lost:
                lo = s * SECTOR
                hi = min(lo + SECTOR, length)
                if lo >= hi:
                    continue
                old = ino.undo.get(s)
                if old is not None:
                    os.pwrite(fd, old[:hi - lo], lo)
                    start = lo + len(old)
                else:
                    start = max(lo, ino.durable_end)
                if start < hi:
                    os.pwrite(fd, bytes(hi - start), start)
        finally:
            os.close(fd)


__all__ = ["SECTOR", "Fault", "FaultInjectionFS"]
