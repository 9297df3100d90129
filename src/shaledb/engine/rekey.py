"""Key operations on a closed database (``shaledb rotate-key``, ``encrypt``, ``decrypt``).

- :func:`rotate_key` re-wraps the data keys in ``KEYRING`` under a new master key: one atomic
  replace of a small file, no data rewritten. Afterwards only the new key opens the database.
  With ``new_data_key`` it also adds a fresh data key that new files use from then on.
- :func:`reencrypt` makes every file use a fresh data key now: it opens the database with
  ``rotate_data_key``, compacts everything (every table is rewritten; the WAL segment and
  manifest an open writes are new anyway), and then drops from ``KEYRING`` the data keys no
  file uses any more (the files under ``lost/`` count: their bytes stay decryptable).
- :func:`convert` copies every live key (with its expiry) into a new database at DEST, plain
  or encrypted: ``encrypt`` and ``decrypt`` are conversions. The source is opened read-only
  and never written; DEST must be new or empty.

Each takes the directory lock of the database it changes, as an open does, so none of them
runs on a database a process has open (LockedError).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from ..errors import CorruptionError, EncryptionError
from ..options import Options
from .batch import WriteBatch
from .crypto import (
    SALT_SIZE,
    master_key,
    open_keyring,
    rewrap_keyring,
)
from .db import Engine
from .filenames import KEYRING, LOCK, LOST_DIR, OPTIONS, parse
from .optionsfile import decode_options, is_encrypted
from .repair import _check_dest, _dest_options, _staged
from .verify import check_database_dir
from .vfs import FileSystem, absolute, default_fs, join

#: Bytes of keys and values per write batch into DEST.
BATCH_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class KeyChange:
    """What :func:`rotate_key` or :func:`reencrypt` did (key ids only, never keys)."""

    path: str
    old_key_id: str
    new_key_id: str
    data_keys: tuple[int, ...]  # ids of the data keys KEYRING holds now
    active_data_key: int


def _locked(fs: FileSystem, path: str) -> list[Any]:
    locks: list[Any] = [fs.lock_dir(path)]
    try:
        locks.append(fs.lock(join(path, LOCK)))
    except BaseException:
        locks[0].release()
        raise
    return locks


def _encrypted_keyring(fs: FileSystem, path: str) -> bytes:
    info = decode_options(fs.read_file(join(path, OPTIONS)), path)
    if not is_encrypted(info):
        raise EncryptionError(f"database {path!r} is not encrypted: write an encrypted copy "
                              f"with `shaledb encrypt {path} DEST --key-file KEY`")
    if not fs.exists(join(path, KEYRING)):
        raise CorruptionError(f"database {path!r} is encrypted but its KEYRING is missing; "
                              "restore it from a backup of the database")
    return fs.read_file(join(path, KEYRING))


def rotate_key(path: str, *, old_key: bytes | bytearray | None = None,
               old_key_file: str | None = None, new_key: bytes | bytearray | None = None,
               new_key_file: str | None = None, new_data_key: bool = False,
               fs: FileSystem | None = None) -> KeyChange:
    """Re-wrap the data keys of the closed, encrypted database at ``path`` under a new master
    key (EncryptionError when the old key is not the database's). ``KEYRING`` is replaced
    atomically (temp file, fsync, rename, fsync the directory): after a crash either key
    opens the database, never neither. With ``new_data_key``, files written from now on use
    a fresh data key (:func:`reencrypt` rewrites the old ones)."""
    fs = fs or default_fs()
    path = absolute(path)
    check_database_dir(fs, path)
    old = master_key(old_key, old_key_file)
    new = master_key(new_key, new_key_file)
    if old is None or new is None:
        raise EncryptionError("rotate_key needs the old key and the new key")
    locks = _locked(fs, path)
    try:
        raw = rewrap_keyring(_encrypted_keyring(fs, path), old, new, path, new_data_key)
        fs.write_file_atomic(join(path, KEYRING), raw)
        ring = open_keyring(raw, new, path)
        try:
            return KeyChange(path, old.key_id, new.key_id, tuple(ring.ids), ring.active)
        finally:
            ring.close()
    finally:
        for lock in reversed(locks):
            lock.release()
        old.close()
        new.close()


def _key_id_of(data: bytes) -> int | None:
    """The data key id in the header of an encrypted log or table (None: not one)."""
    if len(data) < 48 or data[:8] not in (b"SHALElog", b"SHALEenc"):
        return None
    if int.from_bytes(data[8:12], "little") != 3:
        return None
    return int.from_bytes(data[20 + SALT_SIZE:24 + SALT_SIZE], "little")


def _lost_key_ids(fs: FileSystem, path: str) -> set[int] | None:
    """The data key ids the files under ``lost/`` start with (each holds the header of the
    log it was cut from: docs/format.md, "lost/"); None when one has no readable header."""
    lost = join(path, LOST_DIR)
    if not fs.exists(lost):
        return set()
    ids: set[int] = set()
    for name in fs.listdir(lost):
        f = fs.open_read(join(lost, name))
        try:
            key_id = _key_id_of(f.pread(48, 0))
        finally:
            f.close()
        if key_id is None:
            return None
        ids.add(key_id)
    return ids


def reencrypt(path: str, *, key: bytes | bytearray | None = None, key_file: str | None = None,
              fs: FileSystem | None = None, **options: Any) -> KeyChange:
    """Rewrite every file of the closed, encrypted database at ``path`` with a fresh data
    key, then drop the data keys no file uses from ``KEYRING`` (the key that opens it stays
    the same). ``options`` are passed to the open (e.g. ``compaction_process_threshold``)."""
    given_fs = fs
    fs = fs or default_fs()
    path = absolute(path)
    check_database_dir(fs, path)
    opts = Options.from_kwargs(encryption_key=key, encryption_key_file=key_file,
                               rotate_data_key=True, create_if_missing=False, fs=given_fs,
                               **options)
    db = Engine(path, opts)
    try:
        db.compact_range(None, None)
    finally:
        db.close()
    master = master_key(key, key_file)
    assert master is not None
    locks = _locked(fs, path)
    try:
        ring = open_keyring(_encrypted_keyring(fs, path), master, path)
        try:
            used = {ring.active}
            for name in fs.listdir(path):
                if parse(name) is None:
                    continue
                f = fs.open_read(join(path, name))
                try:
                    key_id = _key_id_of(f.pread(48, 0))
                finally:
                    f.close()
                if key_id is None:
                    raise CorruptionError(f"{name} of the encrypted database {path!r} has no "
                                          "readable encryption header; KEYRING is left as "
                                          "it was")
                used.add(key_id)
            lost = _lost_key_ids(fs, path)
            # Bytes a recovery kept under lost/ are sealed under the data key of the log
            # they were cut from: dropping it would make them undecryptable for good. A
            # lost file without a readable header (a cut inside it) could need any key.
            used |= set(ring.ids) if lost is None else lost
            raw = ring.encode(master, keep=used)
            active = ring.active
        finally:
            ring.close()
        fs.write_file_atomic(join(path, KEYRING), raw)
        return KeyChange(path, master.key_id, master.key_id, tuple(sorted(used)), active)
    finally:
        for lock in reversed(locks):
            lock.release()
        master.close()


def convert(path: str, dest: str, *, key: bytes | bytearray | None = None,
            key_file: str | None = None, dest_key: bytes | bytearray | None = None,
            dest_key_file: str | None = None, fs: FileSystem | None = None,
            clock: Callable[[], float] = time.time) -> int:
    """Copy every live key of the closed database at ``path`` (opened with ``key`` /
    ``key_file`` when it is encrypted) into a new database at ``dest`` (encrypted with
    ``dest_key`` / ``dest_key_file`` when given, plain otherwise), with its expiry; returns
    the number of keys copied (``clock`` decides what has expired). The source is opened
    read-only; DEST must not exist or be empty. The copy is written into ``DEST.incomplete``,
    fsynced and flushed to tables, and only then renamed to DEST."""
    fs = fs or default_fs()
    src = absolute(path)
    dest = absolute(dest)
    check_database_dir(fs, src)
    _check_dest(fs, src, dest, "encrypt" if dest_key is not None or dest_key_file is not None
                else "decrypt")
    recorded = _dest_options(decode_options(fs.read_file(join(src, OPTIONS)), src)
                             .get("options"))
    source = Engine(src, Options.from_kwargs(read_only=True, create_if_missing=False,
                                             encryption_key=key, encryption_key_file=key_file,
                                             clock=clock))
    copied = 0
    try:
        with _staged(fs, dest) as staging:
            target = Engine(staging, Options.from_kwargs(**recorded, encryption_key=dest_key,
                                                         encryption_key_file=dest_key_file,
                                                         clock=clock))
            try:
                batch = WriteBatch()
                nbytes = 0
                for k, expire, value in source.live_records():
                    batch.put(k, value, expire_at_ms=expire or None)
                    nbytes += len(k) + len(value)
                    copied += 1
                    if nbytes >= BATCH_BYTES:
                        target.write(batch.resolved_ops(target.options.clock),
                                     batch.approximate_size, False)
                        batch = WriteBatch()
                        nbytes = 0
                if len(batch):
                    target.write(batch.resolved_ops(target.options.clock),
                                 batch.approximate_size, False)
                target.sync_wal()
                target.flush()
            finally:
                target.close()
    finally:
        source.close()
    return copied


def encrypt(path: str, dest: str, *, key: bytes | bytearray | None = None,
            key_file: str | None = None, fs: FileSystem | None = None,
            clock: Callable[[], float] = time.time) -> int:
    """Write an encrypted copy of the plain database at ``path`` into ``dest`` (see
    :func:`convert`); returns the number of keys copied."""
    if key is None and key_file is None:
        raise EncryptionError("encrypt needs the key of the new database (key or key_file)")
    return convert(path, dest, dest_key=key, dest_key_file=key_file, fs=fs, clock=clock)


def decrypt(path: str, dest: str, *, key: bytes | bytearray | None = None,
            key_file: str | None = None, fs: FileSystem | None = None,
            clock: Callable[[], float] = time.time) -> int:
    """Write a plain copy of the encrypted database at ``path`` (opened with its key) into
    ``dest`` (see :func:`convert`); returns the number of keys copied."""
    if key is None and key_file is None:
        raise EncryptionError("decrypt needs the database's key (key or key_file)")
    return convert(path, dest, key=key, key_file=key_file, fs=fs, clock=clock)


__all__ = ["KeyChange", "convert", "decrypt", "encrypt", "reencrypt", "rotate_key"]
