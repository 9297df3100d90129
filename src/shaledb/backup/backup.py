"""Taking a backup of an open database, and restoring one (optionally to a point in time).

A backup (``db.backup(repo)``) pins a consistent snapshot (``Engine.backup_source``: the
MANIFEST copied under the manifest lock, its tables, and the WAL up to a record boundary
taken with no write in flight), copies each file into the repository as a content-addressed
object (streaming, hashing while copying; a table already stored is not stored again), and
publishes the backup's manifest last. Writes go on meanwhile. The files are copied as they
are: an encrypted database's backup is its ciphertext and its KEYRING (the data keys wrapped
under the master key, which is never written anywhere). A repository with its own key
(sealing.py) encrypts whatever it stores, as it is stored.

A restore writes the files of a backup into an empty directory, checking every object's
SHA-256 while copying, and its CURRENT last (a restore cut short leaves a directory the
engine refuses to open, never a wrong database). With ``until``, the archived WAL segments
are replayed on top, record by record, up to that sequence number or commit time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..engine import vfs
from ..engine.archive import SourceFile
from ..engine.db import Engine
from ..engine.filenames import CURRENT, parse
from ..engine.manifest import encode_current
from ..engine.vfs import FileSystem, default_fs
from ..errors import CorruptionError, EncryptionError, InvalidArgument, StorageError
from ..options import Options
from .repository import (
    BackupInfo,
    FileEntry,
    ProgressFn,
    Repository,
    open_repository,
)
from .storage import CHUNK

if TYPE_CHECKING:
    from ..db import DB


class _Progress:
    def __init__(self, fn: ProgressFn | None, total: int) -> None:
        self.fn = fn
        self.total = total
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        if self.fn is not None:
            self.fn(self.done, max(self.total, self.done))


def _file_chunks(fs: FileSystem, path: str, size: int) -> Iterator[bytes]:
    """The first ``size`` bytes of ``path`` (all of it when ``size`` < 0), in chunks;
    StorageError when the file is shorter."""
    end = fs.file_size(path) if size < 0 else size
    f = fs.open_read(path)
    try:
        offset = 0
        while offset < end:
            chunk = f.pread(min(CHUNK, end - offset), offset)
            if not chunk:
                raise StorageError(f"{path!r} ended at byte {offset}, {end} expected (a file "
                                   f"changed while it was backed up?)", None, "read")
            offset += len(chunk)
            yield chunk
    finally:
        f.close()


def take_backup(engine: Engine, repo: Repository, *, progress: ProgressFn | None = None,
                digests: dict[tuple[int, int], str] | None = None) -> BackupInfo:
    """An online, consistent backup of the open database ``engine`` into ``repo``.

    ``digests`` maps (table number, size) to the object names (``repo``'s naming: SHA-256,
    or the HMAC of an encrypted repository) of tables already hashed by this database
    object (tables never change and their numbers are never reused, so a later backup need
    not read them again when the repository still has the object)."""
    fs = engine.fs
    digests = {} if digests is None else digests
    # While another backup, archive or prune holds the lock, progress(0, 0) is called every
    # 50 ms: a caller that must stop (a server shutting down) raises from it.
    waiting = None if progress is None else (lambda: progress(0, 0))
    with repo.locked(waiting):
        repo.storage.clean_uploads()  # what an interrupted backup left
        entries: list[FileEntry] = []
        new_bytes = 0

        def store(f: SourceFile, size: int) -> None:
            nonlocal new_bytes
            sha, n, new = repo.store_chunks(_file_chunks(fs, f.path, size),
                                            progress=prog.add)
            entries.append(FileEntry(f.name, n, sha))
            if new:
                new_bytes += n

        prog = _Progress(progress, 0)

        def copy_manifest(path: str, size: int) -> None:
            store(SourceFile(os.path.basename(path), path, size), size)

        src = engine.backup_source(copy_manifest)
        # After the cut: every record in the backup was committed before this time (a
        # point-in-time restore picks a backup by it), a record after it is in none.
        now = dt.datetime.now(dt.UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as stored: ms
        try:
            prog.total = (sum(t.size for t in src.tables) + sum(w.size for w in src.wal)
                          + prog.done)
            for t in src.tables:
                number = (parse(t.name) or ("", -1))[1]
                sha = digests.get((number, t.size))
                if sha is not None and repo.has_object(sha, t.size):
                    entries.append(FileEntry(t.name, t.size, sha))
                    prog.add(t.size)
                    continue
                store(t, t.size)
                digests[(number, t.size)] = entries[-1].sha256
            for w in src.wal:
                store(w, w.size)
            for o in src.other:
                store(o, -1)
        finally:
            src.release()
        info = BackupInfo(id=repo.new_backup_id(now), sequence=src.sequence, created_at=now,
                          files=len(entries), bytes=sum(e.size for e in entries),
                          new_bytes=new_bytes, encrypted=src.encrypted,
                          database_format=src.format_version,
                          last_commit_ms=src.last_commit_ms, entries=tuple(entries),
                          manifest=src.manifest)
        repo.publish_backup(info)
        return info


def backup_db(db: DB, repo: str | os.PathLike[str] | Repository, *,
              progress: ProgressFn | None = None) -> BackupInfo:
    """``db.backup(repo)``: see :meth:`shaledb.DB.backup`."""
    engine = db._engine  # noqa: SLF001 - the public DB object's own engine
    r = open_repository(repo, fs=engine.fs)
    with db._backup_lock:  # noqa: SLF001 - one backup of a database object at a time
        digests = db._backup_digests.setdefault(r.naming, {})  # noqa: SLF001
        return take_backup(engine, r, progress=progress, digests=digests)


@dataclasses.dataclass(frozen=True)
class RestoreInfo:
    """What :func:`restore` wrote."""

    path: str
    backup_id: str
    #: The last sequence number of the restored database.
    sequence: int
    #: Operations (sequence numbers) replayed from the archived WAL past the backup.
    replayed: int
    #: The ``until`` limit was reached (False: the archive ended before it).
    reached_until: bool | None


def _until(until: dt.datetime | int | None) -> tuple[int | None, int | None]:
    if until is None:
        return None, None
    if isinstance(until, dt.datetime):
        if until.tzinfo is None:
            raise InvalidArgument("until must be an aware datetime (with a time zone), e.g. "
                                  "datetime.now(timezone.utc)")
        return None, int(until.timestamp() * 1000)
    if isinstance(until, int) and not isinstance(until, bool) and until >= 0:
        return until, None
    raise InvalidArgument(f"until must be a datetime or a sequence number >= 0, "
                          f"got {until!r}")


def _newest_ms(b: BackupInfo) -> int:
    """The commit time of the newest write in ``b`` (its records' own clock), or, when it
    holds no timed record, the time it was taken."""
    return b.last_commit_ms if b.last_commit_ms is not None else b.created_ms


def _choose(repo: Repository, backup_id: str | None, until_seq: int | None,
            until_ms: int | None) -> BackupInfo:
    if backup_id is not None:
        b = repo.backup(backup_id)
        if (until_seq is not None and b.sequence > until_seq) or (
                until_ms is not None and _newest_ms(b) > until_ms):
            raise InvalidArgument(f"backup {backup_id} is newer than until: restore an "
                                  f"older one, or leave out --backup")
        return b
    found = repo.backups()
    if until_seq is not None:
        found = [b for b in found if b.sequence <= until_seq]
    if until_ms is not None:
        found = [b for b in found if _newest_ms(b) <= until_ms]
    if not found:
        raise InvalidArgument(
            f"backup repository {repo.location!r} holds no backup "
            + ("" if until_seq is None and until_ms is None else "taken before until ")
            + "to restore")
    return max(found, key=lambda b: (b.sequence, b.created_ms))


def restore(repo: str | os.PathLike[str] | Repository, dest: str | os.PathLike[str], *,
            backup_id: str | None = None, until: dt.datetime | int | None = None,
            encryption_key: bytes | None = None, encryption_key_file: str | None = None,
            fs: FileSystem | None = None, progress: ProgressFn | None = None) -> RestoreInfo:
    """Restore a backup into ``dest`` (which must not exist, or be an empty directory).

    ``backup_id=None`` takes the latest backup; ``until`` (an aware datetime, or a sequence
    number) restores the state as of that moment: the newest backup before it, then the
    archived WAL replayed up to it. Every object is checked against its SHA-256 while it is
    copied (CorruptionError names a damaged one; ``dest`` is then removed again). A
    point-in-time restore of an encrypted database needs its key (the archived WAL is
    decrypted to find the records' sequence numbers and times). An encrypted repository is
    passed as ``Repository(path, encryption_key_file=...)`` (its own key, not the
    database's)."""
    fs = fs or default_fs()
    r = open_repository(repo, fs=fs, create=False)
    until_seq, until_ms = _until(until)
    b = _choose(r, backup_id, until_seq, until_ms)
    dest = vfs.absolute(os.fspath(dest))
    if fs.exists(dest):
        if not fs.is_dir(dest) or fs.listdir(dest):
            raise InvalidArgument(f"restore destination {dest!r} exists and is not an empty "
                                  f"directory: restore into a new one")
        created = False
    else:
        created = True
    if until is not None and b.encrypted and encryption_key is None \
            and encryption_key_file is None:
        raise EncryptionError("a point-in-time restore of an encrypted database needs its "
                              "key (encryption_key_file=..., or --encryption-key-file): the "
                              "archived WAL is read to find where to stop")
    written: list[str] = []
    try:
        fs.mkdirs(dest)
        prog = _Progress(progress, b.bytes)
        # Data first, CURRENT last: a restore cut short is refused by open, never misread.
        order = sorted(b.entries, key=lambda e: (e.name in ("OPTIONS", "KEYRING"),
                                                   e.name.startswith("MANIFEST-"), e.name))
        for e in order:
            path = vfs.join(dest, e.name)
            written.append(path)
            f = fs.create(path, exclusive=True)
            try:
                for chunk in r.object_chunks(e.sha256, e.size, f"{e.name} of backup {b.id}"):
                    f.append(chunk)
                    prog.add(len(chunk))
                f.sync()
            finally:
                f.close()
        number = (parse(b.manifest) or ("", -1))[1]
        if number < 0:
            raise CorruptionError(f"backup {b.id}: {b.manifest!r} is not a MANIFEST name")
        written.append(vfs.join(dest, CURRENT))
        fs.write_file_atomic(vfs.join(dest, CURRENT), encode_current(number))
        fs.sync_dir(dest)
        replayed = 0
        last = b.sequence
        reached: bool | None = None
        if until is not None:
            last, replayed, reached = _replay(r, b, dest, until_seq, until_ms,
                                              encryption_key, encryption_key_file, fs)
    except BaseException:
        for path in reversed(written):
            with contextlib.suppress(Exception):
                fs.remove(path)
        if created:
            with contextlib.suppress(Exception):
                _remove_tree(fs, dest)
        raise
    return RestoreInfo(dest, b.id, last, replayed, reached)


def _remove_tree(fs: FileSystem, path: str) -> None:
    import shutil  # a failed restore's own directory: nothing else was in it

    del fs
    shutil.rmtree(path, ignore_errors=True)


def _replay(repo: Repository, b: BackupInfo, dest: str, until_seq: int | None,
            until_ms: int | None, key: bytes | None, key_file: str | None,
            fs: FileSystem) -> tuple[int, int, bool]:
    """Replay the archived WAL past backup ``b`` into the restored database at ``dest``."""
    segments = [e for e in repo.archived() if e.last_seq is not None and e.last_seq > b.sequence]
    opts: dict[str, Any] = {"fs": fs, "create_if_missing": False,
                            "encryption_key": key, "encryption_key_file": key_file}
    engine = Engine(dest, Options.from_kwargs(**opts))
    replayed = 0
    try:
        last = engine.stats()["last_sequence"]
        if last != b.sequence:
            raise CorruptionError(f"backup {b.id} restored to sequence {last}, its manifest "
                                  f"says {b.sequence}")
        for e in segments:
            data = b"".join(repo.object_chunks(e.sha256, e.size,
                                               f"archived WAL segment {e.number}"))
            before = last
            last, reached = engine.replay_archived(data, e.number, last, until_seq, until_ms)
            replayed += last - before
            if reached:
                return last, replayed, True
        return last, replayed, False
    finally:
        engine.close()


__all__ = ["RestoreInfo", "backup_db", "restore", "take_backup"]
