"""A fault-injecting file system for tests: chosen operations fail with chosen errnos, writes
tear, and :meth:`FaultInjectionFS.crash` simulates a power loss.

It wraps the real :class:`~shaledb.engine.vfs.PosixFileSystem` (the same code paths run
underneath), like LevelDB's ``FaultInjectionTestEnv`` and Pebble's ``errorfs`` and crash
clones. Tests of the engine and the server use it; it is importable by users who want to test
their own code against I/O errors.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import os
import random
import threading

from ..engine.vfs import MappedFile, PosixFileSystem, RandomAccessFile, WritableFile, _storage_error
from ..errors import StorageError


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


class FaultInjectionFS(PosixFileSystem):
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
            # A lost rename puts src back (crash() undoes renames before it drops new entries,
            # so a non-durable src stays marked) and dst back to what it was: a new entry only
            # if it did not exist before (an existing dst gets its old content back).
            if src in self._new_entries and old is None:
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


__all__ = ["Fault", "FaultInjectionFS"]
