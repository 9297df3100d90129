"""A backup repository: content-addressed objects, one small manifest per backup, and the WAL
archive (docs/format.md, "Backup repository", describes every byte).

Layout (names relative to the repository's root)::

    REPOSITORY                 what this is: {"format": 1, ...} + a sha256 line (format 2:
                               encrypted with a repository key, sealing.py; its key id
                               and check value are here, every other file is sealed)
    LOCK                       flock: one backup, archive or prune at a time
    objects/XX/<sha256>        file contents, named by the SHA-256 of their bytes (XX: the
                               first two hex digits; encrypted: HMAC-SHA256 under the
                               repository key); stored once, whichever backup needs them
    backups/<id>.json          one per backup: its files (name, size, sha256), sequence, time
    wal/<number>-<sha16>.json  one per archived WAL segment: its object and what it covers
    tmp/                       uploads in progress (a crash leaves them; the next writer
                               removes them)

Invariants:

- An object's name is the SHA-256 of its bytes, and it is published (renamed into place)
  only after its bytes are fsynced: an object that exists is whole.
- A backup's manifest is published last, after every object it names: a backup that is
  listed is complete; a crash before leaves unreferenced objects (reused by the next
  backup, or removed by prune) and uploads (removed by the next backup).
- Documents (REPOSITORY, manifests, WAL entries) end in a line ``sha256 <hex>`` of the bytes
  before it, so ``verify`` finds a flipped byte in any file of the repository.
- Checksums are computed while copying and while verifying, in chunks (never a whole table
  in memory).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..engine import vfs
from ..engine.archive import ArchivedSegment
from ..engine.crypto import master_key
from ..engine.filenames import KEYRING, OPTIONS, log_file, parse, table_file
from ..engine.vfs import FileSystem, Lock
from ..errors import (
    CorruptionError,
    EncryptionError,
    IncompatibleFormatError,
    InvalidArgument,
    StorageError,
)
from ..version import __version__
from .sealing import RepositoryKey, stored_size
from .storage import CHUNK, LocalStorage, Storage, Upload

#: Repository layout version (REPOSITORY's "format"); a higher one is refused. A plain
#: repository is still written as format 1 (its bytes did not change); format 2 is an
#: encrypted one (sealing.py), which an older ShaleDB must refuse rather than misread.
REPOSITORY_FORMAT = 2
PLAIN_REPOSITORY_FORMAT = 1
#: Version of backup manifests and WAL archive entries ("format" in each).
MANIFEST_FORMAT = 1
#: Seconds a writer waits for the repository's lock.
LOCK_TIMEOUT = 600.0
#: Largest repository document (REPOSITORY, a backup manifest, a WAL entry) read or written:
#: a manifest takes about 150 bytes per file, so this is some 400,000 files. A larger one is
#: damage (or crafted): refused before it is read, so memory stays bounded.
MAX_DOCUMENT_SIZE = 64 << 20

_SHA_LINE = b"sha256 "
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BACKUP_ID = re.compile(r"^[0-9]{8}T[0-9]{9}Z-[0-9a-f]{6}$")

ProgressFn = Callable[[int, int], None]


def encode_doc(info: dict[str, Any]) -> bytes:
    """A repository document: sorted, indented JSON, a newline, then ``sha256 <hex>\\n`` of
    every byte before that line."""
    body = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    return body + _SHA_LINE + hashlib.sha256(body).hexdigest().encode() + b"\n"


def decode_doc(raw: bytes, where: str, max_format: int = MANIFEST_FORMAT) -> dict[str, Any]:
    """Check and parse a repository document (CorruptionError naming ``where``;
    IncompatibleFormatError when its format is above ``max_format``)."""
    cut = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    body, line = raw[:cut], raw[cut:]
    if not line.startswith(_SHA_LINE) or not raw.endswith(b"\n"):
        raise CorruptionError(f"{where}: its sha256 line is missing (damaged or truncated)")
    if line[len(_SHA_LINE):-1] != hashlib.sha256(body).hexdigest().encode():
        raise CorruptionError(f"{where}: its sha256 does not match its content (damaged)")
    try:
        info = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise CorruptionError(f"{where}: not JSON ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from exc
    if not isinstance(info, dict):
        raise CorruptionError(f"{where}: not a JSON object")
    fmt = info.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CorruptionError(f"{where}: no format version")
    if fmt > max_format:
        raise IncompatibleFormatError(f"{where} has format {fmt}; this ShaleDB reads up to "
                                      f"{max_format}: upgrade ShaleDB")
    return info


def _int(v: Any, *, optional: bool = False) -> Any:
    """A JSON integer field, strictly (a float, string or bool is malformed: ValueError)."""
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{v!r} is not an integer")
    return v


def _database_file(name: str) -> bool:
    """Whether a backup may list ``name``: the files of a database directory a restore
    writes (a table, a WAL segment, a MANIFEST, OPTIONS, KEYRING), spelt exactly as the
    engine spells them. Anything else (``..``, a NUL, CURRENT, LOCK, a trailing newline)
    is a crafted or damaged manifest: a restore never writes it."""
    if name in (OPTIONS, KEYRING):
        return True
    parsed = parse(name)
    if parsed is None:
        return False
    kind, number = parsed
    canonical = {"sst": table_file, "log": log_file}.get(kind)
    return name == (canonical(number) if canonical else f"MANIFEST-{number:06d}")


def _ms_time(ms: int) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"{ms} ms is not a time ({exc})") from exc


def object_name(sha: str) -> str:
    """Where the object with SHA-256 ``sha`` (64 hex digits) lives."""
    return f"objects/{sha[:2]}/{sha}"


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of a backup: its name in the database directory and its object."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclasses.dataclass(frozen=True)
class BackupInfo:
    """One backup in a repository (``db.backup(repo)`` returns it)."""

    #: Sortable id: creation time (UTC, ms) and 6 random hex digits.
    id: str
    #: The last sequence number the backup holds: every write acknowledged before the
    #: backup started is in it, none after this number.
    sequence: int
    created_at: dt.datetime
    #: Number of files (tables, WAL segments, MANIFEST, OPTIONS, KEYRING).
    files: int
    #: Bytes of those files (what a restore writes).
    bytes: int
    #: Bytes this backup added to the repository (the rest was stored by earlier backups).
    new_bytes: int
    encrypted: bool
    database_format: int
    #: Commit time of the newest write in the backup (ms since the Unix epoch), if known.
    last_commit_ms: int | None
    entries: tuple[FileEntry, ...] = dataclasses.field(repr=False, default=())
    manifest: str = ""

    @property
    def created_ms(self) -> int:
        return int(self.created_at.timestamp() * 1000)

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "id": self.id, "sequence": self.sequence,
                "created_at": self.created_at.isoformat(), "created_ms": self.created_ms,
                "files": [e.to_json() for e in self.entries], "bytes": self.bytes,
                "new_bytes": self.new_bytes, "encrypted": self.encrypted,
                "database_format": self.database_format, "manifest": self.manifest,
                "last_commit_ms": self.last_commit_ms}

    def summary(self) -> dict[str, Any]:
        """What ``shaledb backups list --json`` prints for it."""
        return {"id": self.id, "sequence": self.sequence,
                "created_at": self.created_at.isoformat(), "files": self.files,
                "bytes": self.bytes, "new_bytes": self.new_bytes,
                "encrypted": self.encrypted}

    @classmethod
    def from_json(cls, info: dict[str, Any], where: str) -> BackupInfo:
        try:
            entries = tuple(FileEntry(str(f["name"]), _int(f["size"]), str(f["sha256"]))
                            for f in info["files"])
            for e in entries:
                if not _HEX64.match(e.sha256) or e.size < 0 or not _database_file(e.name):
                    raise ValueError(f"bad file entry {e}")
            if len({e.name for e in entries}) != len(entries):
                raise ValueError("a file is listed twice")
            if str(info["manifest"]) not in {e.name for e in entries if e.name.startswith(
                    "MANIFEST-")}:
                raise ValueError(f"its manifest {info['manifest']!r} is not among its files")
            created = _ms_time(_int(info["created_ms"]))
            return cls(id=str(info["id"]), sequence=_int(info["sequence"]),
                       created_at=created, files=len(entries), bytes=_int(info["bytes"]),
                       new_bytes=_int(info["new_bytes"]), encrypted=bool(info["encrypted"]),
                       database_format=_int(info["database_format"]),
                       last_commit_ms=_int(info.get("last_commit_ms"), optional=True),
                       entries=entries, manifest=str(info["manifest"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptionError(f"{where}: malformed backup manifest ({exc})") from exc


@dataclasses.dataclass(frozen=True)
class ArchiveEntry:
    """One archived WAL segment."""

    name: str
    number: int
    size: int
    sha256: str
    first_seq: int | None
    last_seq: int | None
    first_ms: int | None
    last_ms: int | None


@dataclasses.dataclass
class RepoVerifyReport:
    """What ``Repository.verify`` found. ``ok`` when every byte checked out."""

    files: int = 0
    bytes: int = 0
    backups: int = 0
    #: (repository file, what is wrong)
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notices: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclasses.dataclass
class PruneReport:
    """What ``Repository.prune`` kept and removed."""

    kept: list[str]
    removed: list[str]
    objects_removed: int
    bytes_freed: int
    wal_removed: int


class _Hashing:
    """Copies chunks to an upload while hashing them (and counting)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.size = 0


class Repository:
    """A backup repository (see the module docstring). Safe to share between threads; every
    write takes the repository's lock (one writer at a time, across processes too).

    It is also the WAL archive of ``shaledb.open(path, wal_archive=repo)``
    (:meth:`archive_segment`).

    **Encrypted repositories.** With ``encryption_key_file`` (or ``encryption_key``, 32
    bytes), a new repository is created encrypted under that *repository key*, and an
    existing one must be encrypted under it: every object, backup manifest and WAL archive
    entry is then encrypted and authenticated, and objects are named by an HMAC of their
    content (sealing.py). A repository is opened with its key, or without one when it is
    plain; anything else is EncryptionError. This is the one way to use a repository key:
    pass the Repository object where a path is accepted (``db.backup``, ``shaledb.restore``,
    ``wal_archive=``). An encrypted database needs no repository key (its files are
    ciphertext already), but may have one (the file list is then hidden too)."""

    def __init__(self, location: str | Storage, *, fs: FileSystem | None = None,
                 create: bool = True, lock_timeout: float = LOCK_TIMEOUT,
                 encryption_key: bytes | None = None,
                 encryption_key_file: str | None = None) -> None:
        self.storage: Storage = (LocalStorage(location, fs) if isinstance(location, str)
                                 else location)
        self.location = self.storage.location
        self.lock_timeout = lock_timeout
        #: The repository key's derived keys; None for a plain repository (and until
        #: REPOSITORY says the key given is its key).
        self._key: RepositoryKey | None = None
        master = master_key(encryption_key, encryption_key_file)
        key = None if master is None else RepositoryKey(master)
        if master is not None:
            master.close()  # only the derived keys are kept
        if not self.storage.exists("REPOSITORY"):
            if not create:
                raise InvalidArgument(f"{self.location!r} is not a backup repository (no "
                                      f"REPOSITORY file); take a backup into it to create one")
            with self.locked():
                if not self.storage.exists("REPOSITORY"):
                    info: dict[str, Any] = {
                        "format": PLAIN_REPOSITORY_FORMAT,
                        "kind": "shaledb backup repository",
                        "created_by": f"shaledb {__version__}",
                        "created_at": dt.datetime.now(dt.UTC).isoformat()}
                    if key is not None:
                        info["format"] = REPOSITORY_FORMAT
                        info["encryption"] = key.encryption_info()
                    self.storage.put("REPOSITORY", encode_doc(info))
        enc = self._check_repository_file().get("encryption")
        if enc is None and key is not None:
            raise EncryptionError(
                f"backup repository {self.location!r} is not encrypted (it was created "
                f"without a key), but a repository key was given: leave the key out, or "
                f"back up into a new repository to have the backups encrypted")
        if enc is not None and key is None:
            key_id = enc.get("key_id") if isinstance(enc, dict) else None
            raise EncryptionError(
                f"backup repository {self.location!r} is encrypted (key id {key_id}): pass "
                f"its key (Repository(path, encryption_key_file=...), or --repo-key-file)")
        if key is not None:
            key.accept(enc, self.location)
        self._key = key

    @property
    def encrypted(self) -> bool:
        """Whether this repository is encrypted under a repository key."""
        return self._key is not None

    @property
    def key_id(self) -> str | None:
        """The id of the repository key (None when plain)."""
        return None if self._key is None else self._key.key_id

    def _check_repository_file(self) -> dict[str, Any]:
        # Never encrypted: it says whether the rest is, and under which key.
        info = self._read_doc("REPOSITORY", f"{self.location}/REPOSITORY", sealed=False,
                              max_format=REPOSITORY_FORMAT)
        if info.get("kind") != "shaledb backup repository":
            raise CorruptionError(f"{self.location}/REPOSITORY does not describe a ShaleDB "
                                  f"backup repository")
        if int(info["format"]) > REPOSITORY_FORMAT:
            raise IncompatibleFormatError(
                f"backup repository {self.location!r} has format {info['format']}; this "
                f"ShaleDB reads up to {REPOSITORY_FORMAT}: upgrade ShaleDB")
        if ("encryption" in info) != (int(info["format"]) >= REPOSITORY_FORMAT):
            raise CorruptionError(f"{self.location}/REPOSITORY: format {info['format']} "
                                  f"{'with' if 'encryption' in info else 'without'} an "
                                  f"encryption field (damaged or not written by ShaleDB)")
        return info

    def locked(self, waiting: Callable[[], None] | None = None) -> _Locked:
        """The repository's writer lock, as a context manager (``waiting``: see
        :meth:`Storage.lock`)."""
        return _Locked(self.storage.lock(self.lock_timeout, waiting))

    def _read_doc(self, name: str, where: str, *, sealed: bool = True,
                  max_format: int = MANIFEST_FORMAT) -> dict[str, Any]:
        """Read and check a repository document (decrypted in an encrypted repository,
        unless ``sealed`` is False), refusing one larger than :data:`MAX_DOCUMENT_SIZE`
        before reading it (bounded memory)."""
        size = self.storage.size(name)
        if size > MAX_DOCUMENT_SIZE:
            raise CorruptionError(f"{where}: too large for a repository document ({size} "
                                  f"bytes; at most {MAX_DOCUMENT_SIZE}): damaged or not "
                                  f"written by ShaleDB")
        raw = self.storage.read(name)
        if sealed and self._key is not None:
            raw = self._key.open_document(raw, name, where)
        return decode_doc(raw, where, max_format)

    def _put_doc(self, name: str, info: dict[str, Any]) -> None:
        raw = encode_doc(info)
        if self._key is not None:
            raw = self._key.seal_document(raw, name)
        if len(raw) > MAX_DOCUMENT_SIZE:
            raise InvalidArgument(
                f"{self.location}/{name} would be {len(raw)} bytes, more than a repository "
                f"document may hold ({MAX_DOCUMENT_SIZE}): the database has too many files "
                f"for one backup manifest; raise target_file_size and compact")
        self.storage.put(name, raw)

    # -- objects ---------------------------------------------------------------------------
    @property
    def naming(self) -> str:
        """What object names are computed with: ``sha256``, or ``hmac:KEYID`` in an
        encrypted repository (names computed for one repository hold in another only when
        this is the same)."""
        return "sha256" if self._key is None else f"hmac:{self._key.key_id}"

    def has_object(self, sha: str, size: int) -> bool:
        """Whether the object named ``sha`` holding ``size`` bytes (of plaintext) is here."""
        name = object_name(sha)
        stored = size if self._key is None else stored_size(size)
        return self.storage.exists(name) and self.storage.size(name) == stored

    def store_chunks(self, chunks: Iterable[bytes], *, progress: Callable[[int], None]
                     | None = None) -> tuple[str, int, bool]:
        """Store the bytes ``chunks`` yields as an object, hashing while copying; returns
        (its name: the SHA-256, or in an encrypted repository the HMAC-SHA256, of the
        bytes; their size; whether it was new). Caller holds the lock."""
        if self._key is not None:
            return self._store_sealed(self._key, chunks, progress)
        h = _Hashing()
        up = self.storage.upload()
        try:
            for chunk in chunks:
                h.sha.update(chunk)
                h.size += len(chunk)
                up.write(chunk)
                if progress is not None:
                    progress(len(chunk))
            return self._publish(up, h.sha.hexdigest(), h.size)
        except BaseException:
            up.abort()
            raise

    def _store_sealed(self, key: RepositoryKey, chunks: Iterable[bytes],
                      progress: Callable[[int], None] | None) -> tuple[str, int, bool]:
        """store_chunks in an encrypted repository: sealed in chunks as they come."""
        sealer = key.sealer(b"object")
        up = self.storage.upload()
        try:
            up.write(sealer.header)
            for chunk in chunks:
                for sealed in sealer.feed(chunk):
                    up.write(sealed)
                if progress is not None:
                    progress(len(chunk))
            up.write(sealer.finish())
            return self._publish(up, sealer.name(), sealer.size)
        except BaseException:
            up.abort()
            raise

    def _publish(self, up: Upload, name: str, size: int) -> tuple[str, int, bool]:
        """Publish a finished upload as object ``name`` unless an earlier backup stored it
        (then the upload is dropped): ``(name, size, stored now)``."""
        if self.has_object(name, size):
            up.abort()  # stored by an earlier backup: once is enough
            return name, size, False
        up.publish(object_name(name))
        return name, size, True

    def object_chunks(self, sha: str, size: int, where: str) -> Iterator[bytes]:
        """The object's bytes (decrypted, in an encrypted repository) in chunks, checked
        while read: CorruptionError (naming the object and ``where``) when its size or
        SHA-256 (HMAC) is not what its name says, or a chunk fails authentication."""
        name = object_name(sha)
        if not self.storage.exists(name):
            raise CorruptionError(f"{self.location}/{name} ({where}) is missing")
        if self._key is not None:
            yield from self._open_chunks(self._key, name, sha, size, where)
            return
        h = hashlib.sha256()
        n = 0
        for chunk in self.storage.read_chunks(name):
            h.update(chunk)
            n += len(chunk)
            if n > size:
                break
            yield chunk
        if n != size or h.hexdigest() != sha:
            raise CorruptionError(f"{self.location}/{name} ({where}) is damaged: its bytes "
                                  f"do not match its SHA-256 name or size")

    def _open_chunks(self, key: RepositoryKey, name: str, sha: str, size: int,
                     where: str) -> Iterator[bytes]:
        opener = key.opener(b"object", f"{self.location}/{name} ({where})")
        for stored in self.storage.read_chunks(name):
            yield from opener.feed(stored)
            if opener.size > size:
                break
        else:
            yield opener.finish()
        if opener.size != size or not hmac.compare_digest(opener.name(), sha):
            raise CorruptionError(f"{self.location}/{name} ({where}) is damaged: its bytes "
                                  f"do not match its name or size (another object's?)")

    # -- backups ---------------------------------------------------------------------------
    def new_backup_id(self, now: dt.datetime) -> str:
        return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"

    def publish_backup(self, info: BackupInfo) -> None:
        """Write the backup's manifest (atomically, last). Caller holds the lock."""
        self._put_doc(f"backups/{info.id}.json", info.to_json())

    def backups(self) -> list[BackupInfo]:
        """Every complete backup, oldest first (damaged manifests raise CorruptionError:
        ``verify`` names them all)."""
        out = []
        for name in self.storage.list("backups"):
            if not name.endswith(".json"):
                continue
            where = f"{self.location}/{name}"
            out.append(BackupInfo.from_json(self._read_doc(name, where), where))
        return sorted(out, key=lambda b: (b.sequence, b.created_at, b.id))

    def backup(self, backup_id: str | None = None) -> BackupInfo:
        """The backup ``backup_id`` (the latest when None); InvalidArgument when none."""
        if backup_id is not None and not _BACKUP_ID.match(backup_id):
            raise InvalidArgument(f"{backup_id!r} is not a backup id (shaledb backups list "
                                  f"shows them)")
        found = self.backups()
        if backup_id is None:
            if not found:
                raise InvalidArgument(f"backup repository {self.location!r} holds no backup")
            return found[-1]
        for b in found:
            if b.id == backup_id:
                return b
        raise InvalidArgument(f"backup {backup_id!r} is not in {self.location!r} (shaledb "
                              f"backups list shows them)")

    # -- WAL archive -----------------------------------------------------------------------
    def archive_segment(self, segment: ArchivedSegment) -> None:
        """Store an archived WAL segment (the engine calls this before deleting it)."""
        data = segment.data
        with self.locked():
            sha, size, _ = self.store_chunks(
                memoryview(data)[i:i + CHUNK].tobytes() for i in range(0, len(data), CHUNK))
            name = f"wal/{segment.number:012d}-{sha[:16]}.json"
            if self.storage.exists(name):
                return
            self._put_doc(name, {
                "format": MANIFEST_FORMAT, "number": segment.number, "sha256": sha,
                "size": size, "first_seq": segment.first_seq, "last_seq": segment.last_seq,
                "first_ms": segment.first_ms, "last_ms": segment.last_ms,
                "encrypted": segment.encrypted,
                "archived_at": dt.datetime.now(dt.UTC).isoformat()})

    def archived(self) -> list[ArchiveEntry]:
        """Every archived WAL segment, by number."""
        out = []
        for name in self.storage.list("wal"):
            if not name.endswith(".json"):
                continue
            where = f"{self.location}/{name}"
            out.append(_archive_entry(name, self._read_doc(name, where), where))
        return sorted(out, key=lambda e: (e.number, e.size))

    # -- verify ----------------------------------------------------------------------------
    def verify(self, backup_id: str | None = None, *,
               progress: ProgressFn | None = None) -> RepoVerifyReport:
        """Check every byte: the documents' checksums, and every object's size and SHA-256
        (streamed). With ``backup_id``: that backup's manifest and objects only. Damage is
        reported (``.problems`` names each damaged file), not raised."""
        r = RepoVerifyReport()
        try:
            self._check_repository_file()
            r.files += 1
        except (CorruptionError, IncompatibleFormatError, StorageError) as exc:
            r.problems.append(("REPOSITORY", str(exc)))
        wanted: dict[str, int] = {}  # object name -> expected size
        docs = [n for n in self.storage.list("backups") if n.endswith(".json")]
        if backup_id is not None:
            docs = [n for n in docs if n == f"backups/{backup_id}.json"]
            if not docs:
                raise InvalidArgument(f"backup {backup_id!r} is not in {self.location!r}")
        for name in docs:
            try:
                b = BackupInfo.from_json(self._read_doc(name, name), name)
            except (CorruptionError, IncompatibleFormatError, StorageError) as exc:
                r.problems.append((name, str(exc)))
                continue
            r.files += 1
            r.backups += 1
            for e in b.entries:
                wanted[object_name(e.sha256)] = e.size
        if backup_id is None:
            for name in self.storage.list("wal"):
                try:
                    entry = _archive_entry(name, self._read_doc(name, name), name)
                    wanted[object_name(entry.sha256)] = entry.size
                    r.files += 1
                except (CorruptionError, IncompatibleFormatError, StorageError) as exc:
                    r.problems.append((name, f"damaged WAL archive entry: {exc}"))
            self._check_archive_continuity(r)
            for name in self.storage.list("objects"):
                wanted.setdefault(name, -1)  # unreferenced: still checked against its name
            leftovers = self.storage.list("tmp")
            if leftovers:
                r.notices.append(f"{len(leftovers)} upload(s) left by an interrupted backup "
                                 f"in tmp/ (the next backup removes them)")
        total = sum(max(0, s) if self._key is None else stored_size(max(0, s))
                    for s in wanted.values())
        done = 0
        for name in sorted(wanted):
            sha = name.rsplit("/", 1)[-1]
            if not _HEX64.match(sha):
                r.problems.append((name, "not an object name (64 hex digits)"))
                continue
            if not self.storage.exists(name):
                r.problems.append((name, "missing (a backup or the WAL archive needs it)"))
                continue
            if self._key is not None:
                done = self._verify_sealed(self._key, name, sha, wanted[name], r, done,
                                           total, progress)
                continue
            h = hashlib.sha256()
            n = 0
            try:
                for chunk in self.storage.read_chunks(name):
                    h.update(chunk)
                    n += len(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            except StorageError as exc:
                r.problems.append((name, f"cannot be read: {exc}"))
                continue
            r.files += 1
            r.bytes += n
            if h.hexdigest() != sha:
                r.problems.append((name, "damaged: its SHA-256 does not match its name"))
            elif wanted[name] >= 0 and n != wanted[name]:
                r.problems.append((name, f"has {n} bytes, {wanted[name]} expected"))
        return r

    def _verify_sealed(self, key: RepositoryKey, name: str, mac: str, want: int,
                       r: RepoVerifyReport, done: int, total: int,
                       progress: ProgressFn | None) -> int:
        """verify one object of an encrypted repository: every chunk authenticated, the
        plaintext's HMAC against the name, its size against what the documents say."""
        opener = key.opener(b"object", name)
        n = 0
        try:
            for chunk in self.storage.read_chunks(name):
                opener.feed(chunk)
                n += len(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            opener.finish()
        except StorageError as exc:
            r.problems.append((name, f"cannot be read: {exc}"))
            return done
        except CorruptionError as exc:
            r.files += 1
            r.bytes += n
            r.problems.append((name, str(exc)))
            return done
        r.files += 1
        r.bytes += n
        if not hmac.compare_digest(opener.name(), mac):
            r.problems.append((name, "damaged: its content does not match its name (another "
                                     "object's bytes?)"))
        elif want >= 0 and opener.size != want:
            r.problems.append((name, f"has {opener.size} bytes, {want} expected"))
        return done

    def _check_archive_continuity(self, r: RepoVerifyReport) -> None:
        """Report a gap in the archived WAL past the oldest backup: sequence numbers no
        archived segment holds between two that are there. Every point-in-time restore
        past it would fail, however well the bytes left check out. (Overlaps are normal: a
        recovery copies the records it replays into its new segment.)"""
        try:
            backups = self.backups()
            entries = self.archived()
        except (CorruptionError, IncompatibleFormatError, StorageError):
            return  # the damaged documents are reported on their own
        oldest = min((b.sequence for b in backups), default=-1)
        last: int | None = None
        prev = ""
        for e in entries:
            if e.first_seq is None or e.last_seq is None or e.last_seq <= oldest:
                continue
            if last is not None and e.first_seq > last + 1:
                r.problems.append((e.name, f"the WAL archive is missing sequences "
                                           f"{last + 1}-{e.first_seq - 1} (between {prev} "
                                           f"and this segment): a point-in-time restore "
                                           f"cannot get past them"))
            if last is None or e.last_seq > last:
                last, prev = e.last_seq, e.name

    # -- prune -----------------------------------------------------------------------------
    def prune(self, keep_last: int, keep_daily: int = 0, keep_weekly: int = 0,
              *, dry_run: bool = False) -> PruneReport:
        """Remove the backups no rule keeps, then the objects and archived WAL segments no
        remaining backup needs. Rules (restic's): the ``keep_last`` newest backups; the
        newest backup of each of the ``keep_daily`` most recent days (UTC) that have one;
        the newest of each of the ``keep_weekly`` most recent ISO weeks that have one.
        Archived WAL older than the oldest kept backup is removed (point-in-time restore
        starts from a backup)."""
        for name, value in (("keep_last", keep_last), ("keep_daily", keep_daily),
                            ("keep_weekly", keep_weekly)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"{name} must be an integer >= 0, got {value!r}")
        if keep_last < 1:
            raise InvalidArgument("keep_last must be at least 1: prune never removes the "
                                  "newest backup")
        with self.locked():
            found = sorted(self.backups(), key=lambda b: (b.created_at, b.id), reverse=True)
            keep = {b.id for b in found[:keep_last]}
            for count, bucket in ((keep_daily, _day), (keep_weekly, _week)):
                seen: list[str] = []
                for b in found:
                    key = bucket(b)
                    if key in seen:
                        continue
                    if len(seen) >= count:
                        break
                    seen.append(key)
                    keep.add(b.id)
            kept = [b for b in found if b.id in keep]
            removed = [b for b in found if b.id not in keep]
            report = PruneReport(kept=[b.id for b in kept], removed=[b.id for b in removed],
                                 objects_removed=0, bytes_freed=0, wal_removed=0)
            if dry_run:
                return report
            for b in removed:
                self.storage.delete(f"backups/{b.id}.json")
            needed: set[str] = {object_name(e.sha256) for b in kept for e in b.entries}
            # No backup yet (only a WAL archive): every archived segment may still matter
            # (the first backup's point-in-time restores start from it).
            oldest = min((b.sequence for b in kept), default=-1)
            for e in self.archived():
                if e.last_seq is not None and e.last_seq <= oldest:
                    self.storage.delete(e.name)
                    report.wal_removed += 1
                else:
                    needed.add(object_name(e.sha256))
            for name in self.storage.list("objects"):
                if name not in needed:
                    report.bytes_freed += self.storage.size(name)
                    self.storage.delete(name)
                    report.objects_removed += 1
            self.storage.clean_uploads()
            return report

    def __repr__(self) -> str:
        return f"Repository({self.location!r})"


def _day(b: BackupInfo) -> str:
    return b.created_at.date().isoformat()


def _week(b: BackupInfo) -> str:
    year, week, _ = b.created_at.isocalendar()
    return f"{year}-W{week:02d}"


def _archive_entry(name: str, info: dict[str, Any], where: str) -> ArchiveEntry:
    try:
        sha = str(info["sha256"])
        if not _HEX64.match(sha):
            raise ValueError(f"sha256 {sha!r} is not 64 hex digits")
        return ArchiveEntry(name, _int(info["number"]), _int(info["size"]), sha,
                            _int(info["first_seq"], optional=True),
                            _int(info["last_seq"], optional=True),
                            _int(info["first_ms"], optional=True),
                            _int(info["last_ms"], optional=True))
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptionError(f"{where}: malformed WAL archive entry ({exc})") from exc


class _Locked:
    def __init__(self, lock: Lock) -> None:
        self._lock = lock

    def __enter__(self) -> _Locked:
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def open_repository(repo: str | os.PathLike[str] | Repository, *,
                    fs: FileSystem | None = None, create: bool = True) -> Repository:
    """``repo`` as a :class:`Repository` (a path is opened, created when ``create``)."""
    if isinstance(repo, Repository):
        return repo
    if not isinstance(repo, (str, os.PathLike)):
        raise TypeError(f"a backup repository is a path or a Repository, not "
                        f"{type(repo).__name__}")
    return Repository(vfs.absolute(repo), fs=fs, create=create)


__all__ = ["ArchiveEntry", "BackupInfo", "FileEntry", "PruneReport", "RepoVerifyReport",
           "Repository", "decode_doc", "encode_doc", "object_name", "open_repository"]
