"""Where a backup repository keeps its bytes: a small object-store-like interface.

Names are relative, ``/``-separated (``objects/ab/abcd...``, ``backups/ID.json``). An object
appears whole or not at all: it is written to a temporary upload and published under its
name in one step (a rename here; an S3 store would complete a multipart upload), so a crash
mid-write leaves only a temporary upload, which :meth:`Storage.clean_uploads` removes (the
next backup does, under the repository lock). Nothing here knows what a backup is: the
repository (repository.py) holds that logic, so an object store can be added by writing one
class with these methods.

:class:`LocalStorage` keeps a directory through the engine's :class:`FileSystem` seam (so
crash tests cut backups as they cut databases): files 0600, directories 0700, every file
fsynced before it is renamed into place and the directory fsynced after.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from ..engine import vfs
from ..engine.vfs import AppendFile, FileSystem, Lock, default_fs
from ..errors import InvalidArgument, LockedError, StorageError

#: Bytes read or written per step when streaming an object (bounded memory per copy).
CHUNK = 1 << 20
#: Where uploads in progress live (removed by clean_uploads).
UPLOADS = "tmp"


class Upload(Protocol):
    """An object being written: ``write`` chunks, then ``publish(name)`` or ``abort()``."""

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``."""

    def publish(self, name: str) -> None:
        """Make the bytes durable and visible under ``name`` (replacing any object there)."""

    def abort(self) -> None:
        """Drop the upload. Idempotent."""


class Storage(Protocol):
    """The operations a backup repository needs from where it keeps its bytes."""

    #: A human-readable location (a path, a URL) for messages.
    location: str

    def exists(self, name: str) -> bool:
        """Whether object ``name`` exists."""

    def size(self, name: str) -> int:
        """Size of object ``name`` in bytes."""

    def read(self, name: str) -> bytes:
        """The whole (small) object ``name``."""

    def read_chunks(self, name: str) -> Iterator[bytes]:
        """Object ``name`` in chunks of at most :data:`CHUNK` bytes."""

    def list(self, prefix: str) -> list[str]:
        """Names of the objects under the "directory" ``prefix`` (recursively), sorted."""

    def upload(self) -> Upload:
        """Start writing a new object."""

    def put(self, name: str, data: bytes) -> None:
        """Write a small object atomically."""

    def delete(self, name: str) -> None:
        """Remove object ``name`` (a missing one is not an error)."""

    def lock(self, timeout: float, waiting: Callable[[], None] | None = None) -> Lock:
        """The repository's writer lock (one backup, archive or prune at a time), waiting up
        to ``timeout`` seconds; LockedError after that. ``waiting()`` is called while it
        waits (it may raise to give up: a server shutting down)."""

    def clean_uploads(self) -> int:
        """Remove uploads a crash left; returns how many. Call it holding the lock."""


class _LocalUpload:
    def __init__(self, storage: LocalStorage, tmp: str, f: AppendFile) -> None:
        self._storage = storage
        self._tmp = tmp
        self._file: AppendFile | None = f

    def write(self, data: bytes | memoryview) -> None:
        assert self._file is not None, "write after publish or abort"
        self._file.append(data)

    def publish(self, name: str) -> None:
        f, self._file = self._file, None
        assert f is not None, "publish after publish or abort"
        fs = self._storage.fs
        try:
            f.sync()
        finally:
            f.close()
        dst = self._storage.path_of(name)
        fs.mkdirs(vfs.parent(dst))
        fs.rename(self._tmp, dst)
        fs.sync_dir(vfs.parent(dst))

    def abort(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(StorageError):
                f.close()
            with contextlib.suppress(StorageError):
                self._storage.fs.remove(self._tmp)


class LocalStorage:
    """A repository in a local directory (through the engine's FileSystem seam)."""

    def __init__(self, root: str, fs: FileSystem | None = None) -> None:
        self.root = vfs.absolute(root)
        self.location = self.root
        self.fs = fs or default_fs()

    def path_of(self, name: str) -> str:
        parts = name.split("/")
        if not name or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument(f"not an object name in a repository: {name!r}")
        return vfs.join(self.root, name)  # "/"-separated, as the local paths are

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path_of(name))

    def size(self, name: str) -> int:
        return self.fs.file_size(self.path_of(name))

    def read(self, name: str) -> bytes:
        return self.fs.read_file(self.path_of(name))

    def read_chunks(self, name: str) -> Iterator[bytes]:
        f = self.fs.open_read(self.path_of(name))
        try:
            offset = 0
            while True:
                chunk = f.pread(CHUNK, offset)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            f.close()

    def list(self, prefix: str) -> list[str]:
        out: list[str] = []
        top = self.path_of(prefix)
        if not self.fs.is_dir(top):
            return out
        stack = [prefix]
        while stack:
            d = stack.pop()
            for entry in self.fs.listdir(self.path_of(d)):
                name = f"{d}/{entry}"
                if self.fs.is_dir(self.path_of(name)):
                    stack.append(name)
                else:
                    out.append(name)
        return sorted(out)

    def upload(self) -> _LocalUpload:
        d = vfs.join(self.root, UPLOADS)
        self.fs.mkdirs(d)
        tmp = vfs.join(d, secrets.token_hex(8) + ".part")
        return _LocalUpload(self, tmp, self.fs.create(tmp, exclusive=True))

    def put(self, name: str, data: bytes) -> None:
        up = self.upload()
        try:
            up.write(data)
            up.publish(name)
        except BaseException:
            up.abort()
            raise

    def delete(self, name: str) -> None:
        self.fs.remove(self.path_of(name))

    def lock(self, timeout: float, waiting: Callable[[], None] | None = None) -> Lock:
        self.fs.mkdirs(self.root)
        path = vfs.join(self.root, "LOCK")
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.fs.lock(path)
            except LockedError:
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"backup repository {self.root!r} is busy (another backup, WAL "
                        f"archive or prune holds its LOCK) for more than {timeout:g} s; "
                        f"try again when it is done") from None
                if waiting is not None:
                    waiting()
                time.sleep(0.05)

    def clean_uploads(self) -> int:
        d = vfs.join(self.root, UPLOADS)
        if not self.fs.is_dir(d):
            return 0
        names = self.fs.listdir(d)
        for name in names:
            self.fs.remove(vfs.join(d, name))
        if names:
            self.fs.sync_dir(d)
        return len(names)

    def __repr__(self) -> str:
        return f"LocalStorage({self.root!r})"


__all__ = ["CHUNK", "LocalStorage", "Storage", "Upload"]
