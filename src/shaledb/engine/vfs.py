"""The file-system seam: every file operation of the engine goes through a :class:`FileSystem`.

:class:`FileSystem` is a small Protocol; :class:`PosixFileSystem` is the real implementation,
and ``shaledb.testing.FaultInjectionFS`` wraps it for tests (injected errors, simulated power
loss). The engine never calls ``os`` or ``os.path`` on its files directly.

Invariants of the POSIX implementation:
- Files are created 0600 and directories 0700; nothing ShaleDB creates is readable by others.
- Every ``OSError`` is turned into :class:`~shaledb.errors.StorageError` (with the errno and
  the operation), so the engine handles one error type and tests can inject any errno.
- Creating, renaming and removing a file is durable only after :meth:`FileSystem.sync_dir`
  of its directory; :meth:`FileSystem.mkdirs` makes the directories it creates durable itself.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import fcntl
import mmap
import os
import stat as stat_mod
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any, Protocol

from ..errors import ClosedError, DescriptorsExhaustedError, LockedError, StorageError

FILE_MODE = 0o600
DIR_MODE = 0o700
#: A mapped file grows by at least this much at a time (allocated on disk when it grows).
MAP_CHUNK = 1 << 20
#: madvise advice for read maps (None where the platform lacks it).
_RANDOM: int | None = getattr(mmap, "MADV_RANDOM", None)
_WILLNEED: int | None = getattr(mmap, "MADV_WILLNEED", None)
_PAGE_SHIFT = mmap.PAGESIZE.bit_length() - 1
#: Ones to mark a run of pages of RandomAccessFile.asked with (a view: no copy per read).
_ASKED = memoryview(b"\x01" * 4096)
#: A copy out of the map that took this long faulted (a cached 16 KiB block copies in ~1 us,
#: a page from the disk takes 50 us or more): pages it had asked for were evicted since.
_FAULTED_NS = 20_000


def join(dirpath: str, name: str) -> str:
    """``dirpath/name`` (a string operation; touches no file)."""
    return os.path.join(dirpath, name)


def absolute(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute (a string operation; touches no file)."""
    return os.path.abspath(os.fspath(path))


def resolved(path: str) -> str:
    """``path`` absolute, with every symbolic link in it followed (as far as it exists)."""
    return os.path.realpath(path)


def fs_inside(path: str, directory: str) -> bool:
    """Whether ``path`` (existing or not) lies inside ``directory`` or is it, judged by
    device and inode of ``path``'s existing ancestors (a bind mount shows the same directory
    under two names)."""
    try:
        target = os.stat(directory)
    except OSError:
        return False
    p = os.path.realpath(path)
    while True:
        try:
            st = os.stat(p)
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return True
        except OSError:
            pass
        up = os.path.dirname(p)
        if up == p:
            return False
        p = up


def parent(path: str) -> str:
    """The directory holding ``path`` (a string operation)."""
    return os.path.dirname(path) or "."


class AppendFile(Protocol):
    """A file written front to back."""

    path: str

    @property
    def size(self) -> int:
        """Bytes appended so far."""

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at the end of the file, or raise StorageError."""

    def reserve(self, nbytes: int) -> None:
        """Take now whatever appending ``nbytes`` more will need (a bigger map), so that a
        failure to get it (EMFILE) comes before anything is written."""

    def sync(self) -> None:
        """Make everything appended so far durable (fsync)."""

    def close(self) -> None:
        """Close (without syncing). Idempotent."""


class ReadFile(Protocol):
    """A file read at offsets; thread-safe."""

    path: str
    size: int

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset``."""

    def readahead(self, offset: int, length: int) -> None:
        """Hint that ``[offset, offset + length)`` will be read soon (an iterator's next
        blocks). Does nothing, or starts reading them in; never fails."""

    def close(self) -> None:
        """Close. Idempotent."""


class Lock(Protocol):
    """An exclusive lock on a database directory."""

    def release(self) -> None:
        """Drop the lock. Idempotent."""


class FileSystem(Protocol):
    """What the engine needs from a file system. Every method raises StorageError on
    failure (LockedError from :meth:`lock` when another holder has the lock)."""

    def create(self, path: str, *, exclusive: bool = False) -> AppendFile:
        """Create (or, unless ``exclusive``, truncate) ``path`` for appending, mode 0600."""

    def create_mapped(self, path: str) -> AppendFile:
        """Create ``path`` (it must not exist) for appending through a memory map."""

    def open_read(self, path: str, *, mapped: bool = False) -> ReadFile:
        """Open an existing file for reads at offsets; ``mapped``: read through a read-only
        memory map when the file can be mapped (see :class:`RandomAccessFile`)."""

    def read_file(self, path: str) -> bytes:
        """The whole content of a (small) file."""

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` durably: temp file, fsync, rename, fsync(dir)."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""

    def file_size(self, path: str) -> int:
        """Size of ``path`` in bytes."""

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path``."""

    def mkdirs(self, path: str) -> None:
        """Create ``path`` and missing parents (0700), durably."""

    def remove(self, path: str) -> None:
        """Unlink ``path`` (not durable until :meth:`sync_dir`); a missing file is fine."""

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename ``src`` over ``dst`` (not durable until :meth:`sync_dir`)."""

    def truncate(self, path: str, size: int) -> None:
        """Cut ``path`` to ``size`` bytes and fsync it."""

    def sync_file(self, path: str) -> None:
        """fsync an existing file."""

    def sync_dir(self, path: str) -> None:
        """fsync a directory: creations, renames and removals in it become durable."""

    def lock(self, path: str, *, readonly: bool = False) -> Lock:
        """Take an exclusive, non-blocking lock on ``path``. With ``readonly``, ``path`` must
        exist and is neither created nor written (for tools that only read a database)."""

    def lock_dir(self, path: str) -> Lock:
        """Take an exclusive, non-blocking lock on the directory ``path`` itself."""

    def worker_state(self) -> Any:
        """What a compaction worker process needs to rebuild this file system (picklable;
        see :func:`worker_fs`), or None for the plain POSIX file system."""

    def adopt_worker_report(self, report: Any) -> None:
        """Take in what a worker's file system did (its report), after a job."""


def _storage_error(op: str, path: str, exc: OSError) -> StorageError:
    # No descriptor left: opening or mapping failed before anything was written, so the
    # engine may retry instead of stopping writes (DescriptorsExhaustedError).
    cls = (DescriptorsExhaustedError if exc.errno in (errno_mod.EMFILE, errno_mod.ENFILE)
           else StorageError)
    err = cls(f"{op} {path!r} failed: {exc.strerror or exc}", exc.errno, op.split(" ", 1)[0])
    err.__cause__ = exc
    return err


class WritableFile:
    """An append-only file. ``append`` writes all bytes or raises; ``sync`` is fsync."""

    def __init__(self, fs: PosixFileSystem, path: str, fd: int) -> None:
        self.fs = fs
        self.path = path
        self._fd = fd
        self._size = 0

    @property
    def size(self) -> int:
        """Bytes appended so far."""
        return self._size

    def reserve(self, nbytes: int) -> None:
        """Nothing to take in advance: ``write`` needs no new descriptor."""

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

    def __init__(self, fs: PosixFileSystem, path: str, fd: int) -> None:
        self.fs = fs
        self.path = path
        self._fd = fd
        #: Bytes appended so far (read it, never set it). An attribute, not a property: an
        #: encrypted WAL reads it for every record's nonce, and a property call costs more
        #: Python work than the rest of the read.
        self.size = 0
        self.capacity = 0
        self.map: mmap.mmap | None = None

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` to the end of the file (growing it when needed)."""
        end = self.size + len(data)
        if end > self.capacity:
            self.fs._map_grow(self, self._fd, end)
        self.fs._map_write(self, self.size, data)
        self.size = end

    def reserve(self, nbytes: int) -> None:
        """Make room for ``nbytes`` more bytes now (growing and remapping the file when
        needed), so that appending them needs no new map: a failure here writes nothing."""
        end = self.size + nbytes
        if end > self.capacity:
            self.fs._map_grow(self, self._fd, end)

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
        return f"MappedFile({self.path!r}, size={self.size})"


class RandomAccessFile:
    """A read-only file read at offsets (thread-safe: no shared file offset).

    Read with ``pread``, or, when opened ``mapped``, by copying from a read-only memory map
    of the whole file. Why a map: ``pread`` releases the GIL, and a thread that releases it
    while another thread runs Python code (a writer, a compaction) gets it back only after a
    switch interval (5 ms): readers next to a writer spent most of their time waiting for
    it (readwhilewriting: 11k gets/s with ``pread``, 38k through the map). A copy from the
    map keeps the GIL, and a page of the page cache costs no system call. The price, as in
    LevelDB and LMDB: a read error of the device (EIO) on a mapped page is a SIGBUS that
    ends the process instead of a :class:`~shaledb.errors.StorageError`
    (``Options.mmap_reads=False`` keeps ``pread``); checksums still catch every damaged byte.
    The map is advised MADV_RANDOM (no 128 KiB read around every fault), and the first read
    of a range asks for exactly that range (MADV_WILLNEED: one read request for a block that
    is not in the page cache, not one per page); iterators ask for read-ahead
    (:meth:`readahead`). ``asked`` records, one byte per page, which pages were asked for:
    the advice is a system call (~1.5 us, twice the copy of a 16 KiB block from the page
    cache), so a range asked for before is copied without it. A copy that was slow anyway
    (it faulted: the kernel evicted pages asked for before, under memory pressure) forgets
    what was asked, so the reads after it ask again; read-ahead always asks.
    A fault on a page not in the page cache waits for the disk holding the GIL, so cold
    reads from several threads do not overlap as ``pread``'s do (docs/design.md).
    """

    def __init__(self, fs: PosixFileSystem, path: str, fd: int, size: int,
                 map: mmap.mmap | None = None) -> None:
        self.fs = fs
        self.path = path
        #: The descriptor; -1 when the file is mapped (the map holds its own) or closed.
        self._fd = fd
        self.size = size
        self.map = map
        #: Per page of a mapped file: 1 once MADV_WILLNEED was asked for it (see above).
        self.asked = bytearray((size >> _PAGE_SHIFT) + 1) if map is not None else None
        self.closed = False

    def pread(self, length: int, offset: int) -> bytes:
        """Read up to ``length`` bytes at ``offset``."""
        if self.closed:
            raise ClosedError(f"file {self.path!r} is closed (was the database closed?)")
        return self.fs._pread(self, self._fd, length, offset)

    def readahead(self, offset: int, length: int) -> None:
        """Start reading ``[offset, offset + length)`` of a mapped file into the page cache
        (MADV_WILLNEED: the kernel's own read-ahead does this for ``pread``)."""
        m = self.map
        if m is None or length <= 0 or _WILLNEED is None or not 0 <= offset < self.size:
            return
        try:
            self.fs._will_need(self, m, offset, length, force=True)
        except (OSError, ValueError, OverflowError):
            pass  # a hint: a closed map or a refused advice costs nothing but speed

    def close(self) -> None:
        """Close the descriptor (or the map). Idempotent."""
        self.closed = True
        fd, self._fd = self._fd, -1
        m, self.map = self.map, None
        if m is not None:
            # A reader copying from it holds the GIL, so no copy is under way; one that
            # took the map before this gets ValueError from the closed map: ClosedError.
            with contextlib.suppress(OSError, ValueError, BufferError):
                m.close()
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


class PosixFileSystem:
    """The real POSIX file system. ``shaledb.testing.FaultInjectionFS`` overrides the
    ``_``-prefixed primitives."""

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
        m = f.map
        if m is not None:
            try:
                if _WILLNEED is not None and 0 <= offset < f.size and length > 0 \
                        and not self._will_need(f, m, offset, length):
                    # Asked for before: copied without asking. If the copy faulted, pages
                    # were evicted since: forget what was asked (the next reads ask again).
                    t = perf_counter_ns()
                    data = m[offset:offset + length]
                    if perf_counter_ns() - t >= _FAULTED_NS and f.asked is not None:
                        f.asked = bytearray(len(f.asked))
                    return data
                # One read request for the whole range if it is not in the page cache
                # (MADV_RANDOM would fault it in a page at a time: 4 serial reads for a
                # 16 KiB block, 2.6-5x slower cold reads); once per range.
                return m[offset:offset + length]
            except ValueError as exc:  # closed by another thread since ``pread`` checked
                raise ClosedError(f"file {f.path!r} is closed (was the database closed?)"
                                  ) from exc
            except OSError as exc:  # from madvise (a hint: EAGAIN, ENOMEM): read anyway
                try:
                    return m[offset:offset + length]
                except ValueError:
                    raise ClosedError(f"file {f.path!r} is closed (was the database "
                                      "closed?)") from exc
        if fd < 0:
            raise ClosedError(f"file {f.path!r} is closed (was the database closed?)")
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            raise _storage_error("read", f.path, exc) from exc

    @staticmethod
    def _will_need(f: RandomAccessFile, m: mmap.mmap, offset: int, length: int,
                   force: bool = False) -> bool:
        """MADV_WILLNEED over the pages of ``[offset, offset + length)`` (``offset`` inside
        the file) unless each was asked for before (``force``: even then); records them as
        asked. Whether it asked."""
        end = min(offset + length, f.size)
        first = offset >> _PAGE_SHIFT
        last = (end - 1) >> _PAGE_SHIFT
        asked = f.asked
        if not force and asked is not None and asked.find(0, first, last + 1) < 0:
            return False
        assert _WILLNEED is not None
        start = first << _PAGE_SHIFT
        m.madvise(_WILLNEED, start, end - start)
        if asked is not None:
            while first <= last:  # whole runs of _ASKED (a read-ahead spans 64 pages)
                n = min(last + 1 - first, len(_ASKED))
                asked[first:first + n] = _ASKED[:n]
                first += n
        return True

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

    def open_read(self, path: str, *, mapped: bool = False) -> RandomAccessFile:
        """Open an existing file for random reads; ``mapped``: through a read-only map of
        the whole file (see :class:`RandomAccessFile`), unless it is empty or cannot be
        mapped (then with ``pread``)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error("open", path, exc) from exc
        try:
            size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            raise _storage_error("stat", path, exc) from exc
        if mapped and size > 0:
            try:
                m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                pass  # no address space, or a file system that cannot map: read with pread
            else:
                if _RANDOM is not None:
                    with contextlib.suppress(OSError):
                        m.madvise(_RANDOM)
                os.close(fd)  # the map keeps its own descriptor: one per file, as before
                return RandomAccessFile(self, path, -1, size, m)
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
        self.sync_dir(parent(path))

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a directory."""
        return os.path.isdir(path)

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
        """Create ``path`` and missing parents with mode 0700 (existing ones are left alone),
        fsyncing the parent of each one created.

        ``os.makedirs`` applies its mode to the last directory only, so walk it ourselves."""
        for d in missing_dirs(path):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _storage_error("mkdir", d, exc) from exc
            # The new entry is durable only once its parent directory is fsynced.
            self.sync_dir(parent(d))

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

    def lock_dir(self, path: str) -> FileLock:
        """Take an exclusive, non-blocking lock on the directory ``path`` itself (writing
        nothing): every open of a database takes it, read-only ones too, so a read-only
        open and a writer exclude each other even where there is no LOCK file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error("open directory", path, exc) from exc
        _flock(fd, path, path)
        return FileLock(path, fd)

    def worker_state(self) -> Any:
        """None: a worker uses the plain POSIX file system."""
        return None

    def adopt_worker_report(self, report: Any) -> None:
        """Nothing to take in."""

    def lock(self, path: str, *, readonly: bool = False) -> FileLock:
        """Take an exclusive, non-blocking lock on ``path``; LockedError names the holder.

        The lock file is created if missing and gets this process' pid, unless ``readonly``:
        then it must exist, and it is opened read-only and left unchanged (``shaledb verify``
        and ``repair`` write nothing into the database they read)."""
        try:
            if readonly:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            else:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise _storage_error("open lock file", path, exc) from exc
        _flock(fd, path, os.path.dirname(path))
        if not readonly:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass  # the pid is only a courtesy for the error message
        return FileLock(path, fd)


def _flock(fd: int, path: str, database: str) -> None:
    """An exclusive, non-blocking flock on ``fd`` (closed on failure); LockedError names
    the holder's pid when the file holds one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            pass  # a directory, or unreadable: no pid to name
        os.close(fd)
        if exc.errno in (errno_mod.EWOULDBLOCK, errno_mod.EAGAIN, errno_mod.EACCES):
            who = f" by process {holder}" if holder else ""
            raise LockedError(
                f"database {database!r} is already open{who}; close it there "
                f"first (one process, one DB object per directory)"
            ) from None
        raise _storage_error("lock", path, exc) from exc


def read_secret_file(path: str, limit: int) -> bytearray:
    """The content of a small secret file outside the database (an encryption key file), at
    most ``limit`` bytes, into a bytearray the caller can zero. Like ssh with a private key,
    it refuses a file that anyone but its owner may read or write (any group or other
    permission bit), and anything but a regular file (a FIFO is refused, never waited
    on); symbolic links are followed (secret mounts use them) and the file they lead to is
    judged. Raises ``PermissionError`` with the mode, ``ValueError`` for a file that is not
    regular or too long, ``OSError`` otherwise."""
    # O_NONBLOCK: a FIFO put where the key file should be would block the open until a
    # writer came (an open, or a server's start, hung forever); it is judged and refused.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise ValueError(f"{path!r} is not a regular file")
        if st.st_mode & 0o077:
            raise PermissionError(
                f"key file {path!r} is accessible by group or others (mode "
                f"{stat_mod.S_IMODE(st.st_mode):04o}); refusing it, as ssh refuses a loose "
                f"private key: run `chmod 600 {path}`")
        if st.st_size > limit:
            raise ValueError(f"{path!r} is longer than {limit} bytes: not a key file")
        # Sized once (no resize that could leave a copy behind), read in place.
        buf = bytearray(st.st_size)
        n = 0
        view = memoryview(buf)
        while n < len(buf):
            got = os.readv(fd, [view[n:]])
            if got == 0:
                break
            n += got
        view.release()
        if n < len(buf):
            buf[:] = bytes(len(buf))
            raise ValueError(f"{path!r} changed while it was read")
        return buf
    finally:
        os.close(fd)


def missing_dirs(path: str) -> list[str]:
    """The directories ``mkdirs(path)`` would create, outermost first (absolute paths)."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        up = os.path.dirname(p)
        if up == p:
            break
        p = up
    return missing[::-1]


def default_fs() -> FileSystem:
    """The real file system."""
    return PosixFileSystem()


def worker_fs(state: Any) -> FileSystem:
    """The file system a compaction worker uses, rebuilt from ``worker_state()`` of its
    parent's: the plain POSIX one for None; otherwise ``state`` names an importable class
    (``module:Class``) and its arguments (a test's fault injector)."""
    if state is None:
        return PosixFileSystem()
    import importlib

    spec, args = state
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    fs: FileSystem = cls.from_worker_state(args)
    return fs


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "AppendFile",
    "FileLock",
    "FileSystem",
    "Lock",
    "MappedFile",
    "PosixFileSystem",
    "RandomAccessFile",
    "ReadFile",
    "WritableFile",
    "absolute",
    "fs_inside",
    "default_fs",
    "join",
    "missing_dirs",
    "parent",
    "read_secret_file",
    "resolved",
    "worker_fs",
]
