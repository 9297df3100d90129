"""The file-system layer: every file operation of the engine goes through here.

Invariants:
- Files are created 0600 and directories 0700; nothing ShaleDB creates is readable by others.
- Every ``OSError`` is turned into :class:`~shaledb.errors.StorageError` (with the errno), so the
  engine handles one error type and tests can inject any errno.
- :class:`FaultInjectionFS` wraps the real layer for tests: it fails chosen operations with
  chosen errnos (ENOSPC, EIO, ...), can tear a write in half, and can "crash": every byte not
  fsynced and every directory entry not made durable by a directory fsync is lost, like
  LevelDB's ``FaultInjectionTestEnv`` and Pebble's crash clones.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import fcntl
import mmap
import os
import random
import threading
from collections.abc import Callable

from ..errors import ClosedError, LockedError, StorageError

FILE_MODE = 0o600
DIR_MODE = 0o700
#: A mapped file grows by at least this much at a time (allocated on disk when it grows).
MAP_CHUNK = 1 << 20


def _storage_error(op: str, path: str, exc: OSError) -> StorageError:
    err = StorageError(f"{op} {path!r} failed: {exc.strerror or exc}", exc.errno,
                       op.split(" ", 1)[0])
    err.__cause__ = exc
    return err


class WritableFile:
    """An append-only file. ``append`` writes all bytes or raises; ``sync`` is fsync."""

    def __init__(self, fs: FileSystem, path: str, fd: int) -> None:
        self.fs = fs
        self.path = path
        self._fd = fd
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes appended so far."""
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at the end of the file (loops over short writes)."""
        n = self.fs._write(self, self._fd, data)
        self._size += n
        if n == len(data):
            return
        view = memoryview(data)[n:]
        while view:
            n = self.fs._write(self, self._fd, view)
            self._size += n
            view = view[n:]

    def sync(self) -> None:
        """Make everything appended so far durable (fsync)."""
        self.fs._fsync(self, self._fd)

    def close(self) -> None:
        """Close the descriptor (does not sync). Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                raise _storage_error("close", self.path, exc) from exc

    def __repr__(self) -> str:
        return f"WritableFile({self.path!r}, size={self._size})"


class MappedFile:
    """An append-only file written through a shared memory map.

    An append is a ``memcpy`` into the page cache: no system call, so the writing thread keeps
    the GIL (a ``write()`` releases it, and with CPU-bound threads about, getting it back can
    take a switch interval). The bytes are in the kernel's page cache as soon as the copy is
    done, so they survive a crash of the process exactly as written bytes do; ``sync`` makes
    them durable. Space is allocated on disk before it is mapped, so a full disk is an
    ENOSPC error when the file grows, never a SIGBUS on a copy. The file ends in zeros up to
    its allocated size until :meth:`close` cuts it to the bytes appended.
    """

    def __init__(self, fs: FileSystem, path: str, fd: int) -> None:
        self.fs = fs
        self.path = path
        self._fd = fd
        self._size = 0
        self.capacity = 0
        self.map: mmap.mmap | None = None

    @property
    def size(self) -> int:
        """Bytes appended so far."""
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to the end of the file (growing it when needed)."""
        end = self._size + len(data)
        if end > self.capacity:
            self.fs._map_grow(self, self._fd, end)
        self.fs._map_write(self, self._size, data)
        self._size = end

    def sync(self) -> None:
        """Make everything appended so far durable (fsync also writes back the pages
        dirtied through the map)."""
        self.fs._fsync(self, self._fd)

    def close(self) -> None:
        """Unmap, cut the file to the bytes appended and close it (does not sync).
        Idempotent."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        self.fs._map_close(self, fd)

    def __repr__(self) -> str:
        return f"MappedFile({self.path!r}, size={self._size})"


class RandomAccessFile:
    """A read-only file read with ``pread`` (thread-safe: no shared file offset)."""

    def __init__(self, fs: FileSystem, path: str, fd: int, size: int) -> None:
        self.fs = fs
        self.path = path
        self._fd = fd
        self.size = size

    def pread(self, length: int, offset: int) -> bytes:
        """Read up to ``length`` bytes at ``offset``."""
        fd = self._fd
        if fd < 0:
            raise ClosedError(f"file {self.path!r} is closed (was the database closed?)")
        return self.fs._pread(self, fd, length, offset)

    def close(self) -> None:
        """Close the descriptor. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"RandomAccessFile({self.path!r}, size={self.size})"


class FileLock:
    """An exclusive ``flock`` on a file; released by :meth:`release` or process death."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _allocate(fd: int, offset: int, length: int) -> None:
    """Reserve disk blocks for ``[offset, offset + length)`` (extending the file), so that
    later writes through a map cannot fail for lack of space."""
    if length <= 0:
        return
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno_mod.EOPNOTSUPP, errno_mod.EINVAL, errno_mod.ENOSYS):
                raise
    zeros = bytes(min(length, MAP_CHUNK))  # no fallocate here: write the zeros ourselves
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, zeros[:end - offset], offset)


class FileSystem:
    """The real POSIX file system. Subclasses override the ``_``-prefixed primitives."""

    # -- primitives (the seam for fault injection) -------------------------------------------
    def _write(self, f: WritableFile, fd: int, data: bytes | bytearray | memoryview) -> int:
        try:
            return os.write(fd, data)
        except OSError as exc:
            raise _storage_error("write", f.path, exc) from exc

    def _fsync(self, f: WritableFile | MappedFile, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _storage_error("fsync", f.path, exc) from exc

    def _map_write(self, f: MappedFile, offset: int, data: bytes | bytearray | memoryview) -> None:
        assert f.map is not None
        f.map[offset:offset + len(data)] = data

    def _map_close(self, f: MappedFile, fd: int) -> None:
        m, f.map = f.map, None
        try:
            if m is not None:
                m.close()
            os.ftruncate(fd, f.size)
        except OSError as exc:
            raise _storage_error("truncate", f.path, exc) from exc
        finally:
            os.close(fd)

    def _map_grow(self, f: MappedFile, fd: int, needed: int) -> None:
        """Allocate disk space for at least ``needed`` bytes and map all of it."""
        # Grow linearly, in whole chunks: the unused tail stays small (it is allocated space).
        capacity = -(-max(needed, f.capacity + MAP_CHUNK) // MAP_CHUNK) * MAP_CHUNK
        try:
            _allocate(fd, f.capacity, capacity - f.capacity)
            m = mmap.mmap(fd, capacity)
        except OSError as exc:
            raise _storage_error("write", f.path, exc) from exc
        old, f.map, f.capacity = f.map, m, capacity
        if old is not None:
            old.close()

    def _pread(self, f: RandomAccessFile, fd: int, length: int, offset: int) -> bytes:
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            raise _storage_error("read", f.path, exc) from exc

    # -- public operations -------------------------------------------------------------------
    def create(self, path: str, *, exclusive: bool = False) -> WritableFile:
        """Create (or truncate) ``path`` for appending, mode 0600. With ``exclusive``, an
        existing file is an error (EEXIST) instead of being truncated: numbered files are
        never reused, so a collision is a bug that must not destroy data."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        try:
            fd = os.open(path, flags, FILE_MODE)
        except OSError as exc:
            raise _storage_error("create", path, exc) from exc
        return WritableFile(self, path, fd)

    def create_mapped(self, path: str) -> MappedFile:
        """Create ``path`` (it must not exist) for appending through a memory map, mode 0600.
        See :class:`MappedFile`."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise _storage_error("create", path, exc) from exc
        return MappedFile(self, path, fd)

    def open_read(self, path: str) -> RandomAccessFile:
        """Open an existing file for random reads."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error("open", path, exc) from exc
        try:
            size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise _storage_error("stat", path, exc) from exc
        return RandomAccessFile(self, path, fd, size)

    def read_file(self, path: str) -> bytes:
        """Read a whole (small) file."""
        f = self.open_read(path)
        try:
            chunks = []
            offset = 0
            while offset < f.size:
                chunk = f.pread(min(f.size - offset, 1 << 24), offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
            return b"".join(chunks)
        finally:
            f.close()

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` durably: temp file, fsync, rename, fsync(dir)."""
        tmp = path + ".tmp"
        f = self.create(tmp)
        try:
            f.append(data)
            f.sync()
        finally:
            f.close()
        self.rename(tmp, path)
        self.sync_dir(os.path.dirname(path) or ".")

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        return os.path.exists(path)

    def file_size(self, path: str) -> int:
        """Size of ``path`` in bytes."""
        try:
            return os.stat(path).st_size
        except OSError as exc:
            raise _storage_error("stat", path, exc) from exc

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path``."""
        try:
            return os.listdir(path)
        except OSError as exc:
            raise _storage_error("list", path, exc) from exc

    def mkdirs(self, path: str) -> None:
        """Create ``path`` and missing parents with mode 0700 (existing ones are left alone).

        ``os.makedirs`` applies its mode to the last directory only, so walk it ourselves."""
        missing = []
        p = os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        for d in reversed(missing):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                pass
            except OSError as exc:
                raise _storage_error("mkdir", d, exc) from exc

    def remove(self, path: str) -> None:
        """Unlink ``path``; a missing file is not an error."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _storage_error("remove", path, exc) from exc

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` over ``dst`` (not durable until :meth:`sync_dir`)."""
        try:
            os.replace(src, dst)
        except OSError as exc:
            raise _storage_error("rename", src, exc) from exc

    @staticmethod
    def _on_fd(op: str, path: str, flags: int, *actions: Callable[[int], object]) -> None:
        """Open ``path`` with ``flags``, run ``actions`` on the descriptor, close it."""
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
            try:
                for action in actions:
                    action(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _storage_error(op, path, exc) from exc

    def truncate(self, path: str, size: int) -> None:
        """Cut ``path`` to ``size`` bytes and fsync it."""
        self._on_fd("truncate", path, os.O_WRONLY, lambda fd: os.ftruncate(fd, size), os.fsync)

    def sync_file(self, path: str) -> None:
        """fsync an existing file (e.g. a WAL segment written before a crash)."""
        self._on_fd("fsync", path, os.O_RDONLY, os.fsync)

    def sync_dir(self, path: str) -> None:
        """fsync a directory so that creations, renames and removals in it are durable."""
        self._on_fd("fsync directory", path, os.O_RDONLY | os.O_DIRECTORY, os.fsync)

    def lock(self, path: str) -> FileLock:
        """Take an exclusive, non-blocking lock on ``path``; LockedError names the holder."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise _storage_error("open lock file", path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno_mod.EWOULDBLOCK, errno_mod.EAGAIN, errno_mod.EACCES):
                who = f" by process {holder}" if holder else ""
                raise LockedError(
                    f"database {os.path.dirname(path)!r} is already open{who}; close it there "
                    f"first (one process, one DB object per directory)"
                ) from None
            raise _storage_error("lock", path, exc) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only a courtesy for the error message
        return FileLock(path, fd)


# ---------------------------------------------------------------------------------------------
# Fault injection for tests


@dataclasses.dataclass
class Fault:
    """One injection rule: fail the matching operation with ``errno``.

    ``op`` is one of create, write, fsync, read, rename, remove, sync_dir, truncate, mkdir.
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
class _Tracked:
    synced: int = 0  # bytes known durable
    written: int = 0


class FaultInjectionFS(FileSystem):
    """A :class:`FileSystem` that fails on command and can simulate a power loss.

    After :meth:`crash` every operation fails with EIO (the "process" is dead); open the
    database again with a fresh file system to "reboot".
    """

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._files: dict[str, _Tracked] = {}
        # Directory entries not yet made durable: created paths and (src, dst, old) renames.
        self._new_entries: set[str] = set()
        self._renames: list[tuple[str, str, bytes | None]] = []
        self.crashed = False
        self.op_counts: dict[str, int] = {}

    def inject(self, op: str, path: str = "", errno: int = errno_mod.EIO, *, skip: int = 0,
               count: int | None = 1, torn: bool = False) -> Fault:
        """Add a rule (see :class:`Fault`) and return it."""
        fault = Fault(op, path, errno, skip, count, torn)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove all rules."""
        with self._lock:
            self.faults.clear()

    def _check(self, op: str, path: str) -> Fault | None:
        with self._lock:
            self.op_counts[op] = self.op_counts.get(op, 0) + 1
            if self.crashed:
                raise StorageError(f"{op} {path!r}: simulated crash, the process is gone",
                                   errno_mod.EIO)
            for fault in self.faults:
                if fault.matches(op, path):
                    return fault
        return None

    def _raise(self, fault: Fault, op: str, path: str) -> None:
        exc = OSError(fault.errno, os.strerror(fault.errno), path)
        raise _storage_error(f"{op} (injected)", path, exc) from exc

    def _write(self, f: WritableFile, fd: int, data: bytes | bytearray | memoryview) -> int:
        fault = self._check("write", f.path)
        if fault is not None:
            if fault.torn and len(data) > 1:
                half = len(data) // 2
                os.write(fd, data[:half])
                self._track(f.path).written += half
            self._raise(fault, "write", f.path)
        n = super()._write(f, fd, data)
        self._track(f.path).written += n
        return n

    def _fsync(self, f: WritableFile | MappedFile, fd: int) -> None:
        fault = self._check("fsync", f.path)
        if fault is not None:
            self._raise(fault, "fsync", f.path)
        super()._fsync(f, fd)
        t = self._track(f.path)
        t.synced = t.written

    def _map_write(self, f: MappedFile, offset: int, data: bytes | bytearray | memoryview) -> None:
        # Under the lock: crash() truncates files, and a copy into a mapped page past the new
        # end of the file would be a SIGBUS.
        with self._lock:
            self.op_counts["write"] = self.op_counts.get("write", 0) + 1
            if self.crashed:
                raise StorageError(f"write {f.path!r}: simulated crash, the process is gone",
                                   errno_mod.EIO)
            fault = next((x for x in self.faults if x.matches("write", f.path)), None)
            t = self._files.setdefault(f.path, _Tracked())
            if fault is not None and fault.torn and len(data) > 1:
                half = len(data) // 2
                super()._map_write(f, offset, memoryview(data)[:half])
                t.written = offset + half
            if fault is None:
                super()._map_write(f, offset, data)
                t.written = offset + len(data)
        if fault is not None:
            self._raise(fault, "write", f.path)

    def _map_grow(self, f: MappedFile, fd: int, needed: int) -> None:
        fault = self._check("write", f.path)
        if fault is not None:
            self._raise(fault, "write", f.path)
        with self._lock:  # see _map_write
            if self.crashed:
                raise StorageError(f"write {f.path!r}: simulated crash", errno_mod.EIO)
            super()._map_grow(f, fd, needed)

    def _map_close(self, f: MappedFile, fd: int) -> None:
        with self._lock:
            if self.crashed:  # the process is gone: leave the file as the crash left it
                f.map = None
                os.close(fd)
                return
        super()._map_close(f, fd)

    def create_mapped(self, path: str) -> MappedFile:
        fault = self._check("create", path)
        if fault is not None:
            self._raise(fault, "create", path)
        f = super().create_mapped(path)
        with self._lock:
            self._files[path] = _Tracked()
            self._new_entries.add(path)
        return f

    def _pread(self, f: RandomAccessFile, fd: int, length: int, offset: int) -> bytes:
        fault = self._check("read", f.path)
        if fault is not None:
            self._raise(fault, "read", f.path)
        return super()._pread(f, fd, length, offset)

    def _track(self, path: str) -> _Tracked:
        with self._lock:
            t = self._files.get(path)
            if t is None:
                t = self._files[path] = _Tracked()
            return t

    def create(self, path: str, *, exclusive: bool = False) -> WritableFile:
        fault = self._check("create", path)
        if fault is not None:
            self._raise(fault, "create", path)
        existed = os.path.exists(path)
        f = super().create(path, exclusive=exclusive)
        with self._lock:
            self._files[path] = _Tracked()
            if not existed:
                self._new_entries.add(path)
        return f

    def rename(self, src: str, dst: str) -> None:
        fault = self._check("rename", src)
        if fault is not None:
            self._raise(fault, "rename", src)
        old = None
        if os.path.exists(dst):
            with open(dst, "rb") as fh:
                old = fh.read()
        super().rename(src, dst)
        with self._lock:
            self._renames.append((src, dst, old))
            if src in self._files:
                self._files[dst] = self._files.pop(src)
            if src in self._new_entries:
                self._new_entries.discard(src)
                self._new_entries.add(dst)

    def remove(self, path: str) -> None:
        fault = self._check("remove", path)
        if fault is not None:
            self._raise(fault, "remove", path)
        super().remove(path)
        with self._lock:
            self._files.pop(path, None)
            self._new_entries.discard(path)

    def truncate(self, path: str, size: int) -> None:
        fault = self._check("truncate", path)
        if fault is not None:
            self._raise(fault, "truncate", path)
        super().truncate(path, size)
        with self._lock:
            t = self._files.get(path)
            if t is not None:
                t.written = t.synced = size

    def sync_file(self, path: str) -> None:
        fault = self._check("fsync", path)
        if fault is not None:
            self._raise(fault, "fsync", path)
        super().sync_file(path)
        with self._lock:
            t = self._files.get(path)
            if t is not None:
                t.synced = t.written

    def mkdirs(self, path: str) -> None:
        fault = self._check("mkdir", path)
        if fault is not None:
            self._raise(fault, "mkdir", path)
        super().mkdirs(path)

    def sync_dir(self, path: str) -> None:
        fault = self._check("sync_dir", path)
        if fault is not None:
            self._raise(fault, "sync_dir", path)
        super().sync_dir(path)
        prefix = os.path.join(path, "")
        with self._lock:
            self._new_entries = {p for p in self._new_entries if not p.startswith(prefix)}
            self._renames = [r for r in self._renames if not r[1].startswith(prefix)]

    def crash(self, rng: random.Random | None = None) -> None:
        """Simulate power loss: drop unsynced bytes and non-durable directory entries.

        With ``rng``, a random prefix of each file's unsynced bytes survives (as a real disk
        may have written part of the page cache), which produces torn records.
        Afterwards every operation on this file system fails.
        """
        with self._lock:
            self.crashed = True
            for path, t in self._files.items():
                if not os.path.exists(path):
                    continue
                keep = t.synced
                if rng is not None and t.written > t.synced:
                    keep += rng.randint(0, t.written - t.synced)
                if os.path.getsize(path) > keep:
                    os.truncate(path, keep)
            for src, dst, old in reversed(self._renames):
                if os.path.exists(dst):
                    os.replace(dst, src)
                if old is not None:
                    with open(dst, "wb") as fh:
                        fh.write(old)
            for path in self._new_entries:
                if os.path.exists(path):
                    os.unlink(path)
            self._renames.clear()
            self._new_entries.clear()


def default_fs() -> FileSystem:
    """The real file system."""
    return FileSystem()


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "Fault",
    "FaultInjectionFS",
    "FileLock",
    "FileSystem",
    "MappedFile",
    "RandomAccessFile",
    "WritableFile",
    "default_fs",
]

