"""The manifest: which tables make up the database, as a log of version edits.

``CURRENT`` holds the name of the live ``MANIFEST-NNNNNN`` and its checksum (replaced
atomically: write temp, fsync, rename, fsync the directory). A manifest is a log (``logfile``
framing) of msgpack maps, each a :class:`VersionEdit`; its first record is a full snapshot of
the version. On every open a new manifest is written, so a manifest never grows past one
session's edits (and is rolled over when it passes ``max_manifest_size`` bytes).

Every edit is fsynced, then followed by a sync mark, before anything relies on it, so only
the last one can be torn by a crash; a damaged last edit that no later record vouches for was
never relied on: it is ignored, and its bytes are handed to the engine to keep under
``lost/``. Any other damage is corruption.

A :class:`Version` is an immutable list of tables per level. Readers pin the version they
started on (``ref``/``unref``); a table file is deleted only when no live version lists it.
"""

from __future__ import annotations

import dataclasses
import threading
from bisect import bisect_left
from typing import Any

import msgpack

from ..errors import (
    CorruptionError,
    DescriptorsExhaustedError,
    IncompatibleFormatError,
    StorageError,
)
from .crypto import MANIFEST_FILE, Keyring
from .filenames import CURRENT, manifest_name
from .logfile import ENCRYPTED_LOG_VERSION, LOG_VERSION, LogWriter, crc32c, lost_bytes, scan_log
from .sstable.format import FileMeta
from .vfs import FileSystem, join

MANIFEST_FORMAT_VERSION = 1


def encode_current(number: int) -> bytes:
    """The content of CURRENT naming manifest ``number``: the name, then its checksum."""
    name = f"MANIFEST-{number:06d}"
    return f"{name}\ncrc32c {crc32c(name.encode()):08x}\n".encode()


def decode_current(raw: bytes) -> tuple[str, bool]:
    """The manifest name in CURRENT, and whether a checksum line vouched for it;
    CorruptionError when it is damaged. The one-line form without a checksum (database
    formats 1 and 2) is accepted here; the caller accepts it only for a manifest of log
    format 1 (which is what such databases have)."""
    lines = raw.split(b"\n")
    if not raw.endswith(b"\n") or len(lines) not in (2, 3):
        raise CorruptionError(f"CURRENT file is damaged (holds {raw[:60]!r})")
    name = lines[0].decode("ascii", "replace")
    if not name.startswith("MANIFEST-") or not name[9:].isdigit() or len(name) < 15:
        raise CorruptionError(f"CURRENT file is damaged (holds {raw[:60]!r})")
    if len(lines) == 3 and lines[1] != f"crc32c {crc32c(lines[0]):08x}".encode():
        raise CorruptionError(f"CURRENT file is damaged: its checksum does not match "
                              f"(holds {raw[:60]!r})")
    return name, len(lines) == 3


@dataclasses.dataclass
class VersionEdit:
    """A change to the set of tables plus the counters recovery needs."""

    log_number: int | None = None
    next_file: int | None = None
    last_seq: int | None = None
    added: list[tuple[int, FileMeta]] = dataclasses.field(default_factory=list)
    deleted: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (level, number)
    compact_pointers: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)

    def encode(self) -> bytes:
        d: dict[str, Any] = {"v": MANIFEST_FORMAT_VERSION}
        if self.log_number is not None:
            d["log"] = self.log_number
        if self.next_file is not None:
            d["next"] = self.next_file
        if self.last_seq is not None:
            d["seq"] = self.last_seq
        if self.added:
            d["add"] = [[lvl, *m.to_list()] for lvl, m in self.added]
        if self.deleted:
            d["del"] = [list(x) for x in self.deleted]
        if self.compact_pointers:
            d["ptr"] = [list(x) for x in self.compact_pointers]
        packed: bytes = msgpack.packb(d, use_bin_type=True)
        return packed

    @classmethod
    def decode(cls, payload: bytes, path: str) -> VersionEdit:
        try:
            d = msgpack.unpackb(payload, raw=False)
            if not isinstance(d, dict):
                raise ValueError("not a map")
            if d.get("v", 1) > MANIFEST_FORMAT_VERSION:
                raise IncompatibleFormatError(
                    f"manifest {path!r} has format version {d['v']}; upgrade ShaleDB")
            return cls(
                log_number=d.get("log"),
                next_file=d.get("next"),
                last_seq=d.get("seq"),
                added=[(int(a[0]), FileMeta.from_list(a[1:])) for a in d.get("add", [])],
                deleted=[(int(x[0]), int(x[1])) for x in d.get("del", [])],
                compact_pointers=[(int(x[0]), bytes(x[1])) for x in d.get("ptr", [])],
            )
        except IncompatibleFormatError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
            raise CorruptionError(f"manifest {path!r} holds a malformed edit: {exc}") from exc


class Version:
    """An immutable set of tables: ``levels[0]`` newest first (may overlap), deeper levels
    sorted by key and disjoint."""

    __slots__ = ("levels", "refs", "_largest", "deep")

    def __init__(self, levels: list[list[FileMeta]]) -> None:
        self.levels = levels
        self.refs = 0
        self._largest = [[f.largest for f in lvl] for lvl in levels]
        # The non-empty sorted levels with their search keys: a point lookup visits only these.
        self.deep: list[tuple[list[FileMeta], list[bytes]]] = [
            (lvl, self._largest[i]) for i, lvl in enumerate(levels) if i and lvl]

    def files(self) -> list[tuple[int, FileMeta]]:
        """Every (level, table)."""
        return [(i, f) for i, lvl in enumerate(self.levels) for f in lvl]

    def level_bytes(self, level: int) -> int:
        """Total size of the tables at ``level``."""
        return sum(f.size for f in self.levels[level])

    def candidates(self, key: bytes) -> list[FileMeta]:
        """Tables that may hold ``key``, newest data first."""
        out = [f for f in self.levels[0] if f.smallest <= key <= f.largest]
        for files, largest in self.deep:
            i = bisect_left(largest, key)
            if i < len(files) and files[i].smallest <= key:
                out.append(files[i])
        return out

    def overlapping(self, level: int, lo: bytes | None, hi: bytes | None) -> list[FileMeta]:
        """Tables at ``level`` whose range meets ``[lo, hi]`` (inclusive)."""
        return [f for f in self.levels[level] if f.overlaps(lo, hi)]

    def apply(self, edit: VersionEdit) -> Version:
        """A new version with ``edit`` applied."""
        deleted = set(edit.deleted)
        levels = [[f for f in lvl if (i, f.number) not in deleted]
                  for i, lvl in enumerate(self.levels)]
        for lvl, meta in edit.added:
            levels[lvl].append(meta)
        levels[0].sort(key=lambda f: f.number, reverse=True)
        for lvl in range(1, len(levels)):
            levels[lvl].sort(key=lambda f: f.smallest)
        return Version(levels)


class VersionSet:
    """The current version, the manifest that records it, and the file-number counter.

    Publication rule: a version becomes :attr:`current` only in :meth:`install`, which the
    engine calls under its mutex *after* :meth:`log_and_apply` returned, i.e. after the edit
    that makes the version durable is fsynced (in the current manifest, or in a new one that
    CURRENT durably names). Until then no reader, and no obsolete-file deletion, can see it.
    The counters the engine reads under its mutex (``log_number``, ``last_seq``,
    ``compact_pointers``) change in :meth:`install` too. File numbers are allocated under
    ``mutex`` (the engine's), by whoever asks.

    Only one thread at a time calls :meth:`log_and_apply` (the engine's manifest lock).
    """

    def __init__(self, fs: FileSystem, dirpath: str, num_levels: int,
                 max_manifest_size: int = 8 << 20,
                 mutex: threading.Lock | None = None) -> None:
        self.fs = fs
        self.dirpath = dirpath
        self.num_levels = num_levels
        self.max_manifest_size = max_manifest_size
        self._mutex = mutex if mutex is not None else threading.Lock()
        self.current = Version([[] for _ in range(num_levels)])
        self.next_file = 2
        self.last_seq = 0
        self.log_number = 0
        self.compact_pointers: dict[int, bytes] = {}
        self.manifest_number = 0
        #: The ``next`` the live manifest last recorded: numbers from it on may have been
        #: handed out without any manifest saying so (see Engine.close).
        self.recorded_next = 0
        self._log: LogWriter | None = None
        #: A torn last edit ignored by :meth:`recover`: (manifest file name, offset, bytes).
        self.cut: tuple[str, int, bytes] | None = None
        #: The error that left the manifest in an unknown state (a half-written edit, a switch
        #: that may or may not have happened); no edit is appended after it.
        self._failed: BaseException | None = None
        #: The data keys of an encrypted database (set by the engine before anything is read
        #: or written): manifests are then of log format 3, their edits encrypted.
        self.keyring: Keyring | None = None
        #: The current edit wrote something (a new manifest file, an append): after that a
        #: failure leaves the manifest in an unknown state, whatever the error.
        self._touched = False

    def new_file_number(self) -> int:
        """Allocate a file number (caller holds the mutex, or is alone: open)."""
        n = self.next_file
        self.next_file += 1
        return n

    @property
    def manifest_size(self) -> int:
        """Bytes in the live manifest (0 when none is open)."""
        return 0 if self._log is None else self._log.size

    # -- open ------------------------------------------------------------------------------
    def recover(self, log_format_2_from: int = 0) -> None:
        """Load the version named by CURRENT (log files numbered from ``log_format_2_from``
        on are of log format 2). Raises CorruptionError on any damage."""
        name, checksummed = decode_current(self.fs.read_file(join(self.dirpath, CURRENT)))
        path = join(self.dirpath, name)
        if not self.fs.exists(path):
            raise CorruptionError(f"CURRENT names {name}, which does not exist")
        data = self.fs.read_file(path)
        number = int(name.split("-", 1)[1])
        encrypted = ENCRYPTED_LOG_VERSION if self.keyring is not None else LOG_VERSION
        scan = scan_log(data, path, legacy_resync=True,
                        expect=encrypted if number >= log_format_2_from else 1,
                        keyring=self.keyring, file_kind=MANIFEST_FILE)
        if scan.version >= 2 and not checksummed:
            raise CorruptionError(f"CURRENT lacks its checksum line, but names a manifest of "
                                  f"database format 3: CURRENT is damaged; salvage the data "
                                  f"with `shaledb repair {self.dirpath} DEST`")
        if scan.number is not None and scan.number != number:
            raise CorruptionError(
                f"manifest {path!r} says it is MANIFEST-{scan.number:06d} (a file copied or "
                f"renamed into the database?); restore the database from a backup")
        damage = scan.damage
        if damage is not None:
            if damage.vouched:
                raise CorruptionError(
                    f"manifest {path!r} is damaged at offset {damage.offset} "
                    f"({damage.reason}); restore the database from a backup, or salvage it "
                    f"with `shaledb repair {self.dirpath} DEST`")
            # A last edit torn by a crash: it was never fsynced, so nothing acted on it.
            self.cut = (name, damage.offset, lost_bytes(data, damage.offset, scan.end,
                                                        scan.version))
        version = Version([[] for _ in range(self.num_levels)])
        seen_snapshot = False
        for payload in scan.records:
            edit = VersionEdit.decode(payload, path)
            for lvl, _ in edit.added:
                if lvl >= self.num_levels:
                    raise CorruptionError(f"manifest {path!r} names level {lvl}, but the "
                                          f"database has {self.num_levels} levels")
            version = version.apply(edit)
            seen_snapshot = True
            if edit.log_number is not None:
                self.log_number = edit.log_number
            if edit.next_file is not None:
                self.next_file = max(self.next_file, edit.next_file)
            if edit.last_seq is not None:
                self.last_seq = max(self.last_seq, edit.last_seq)
            for lvl, key in edit.compact_pointers:
                self.compact_pointers[lvl] = key
        if not seen_snapshot:
            raise CorruptionError(f"manifest {path!r} is empty")
        numbers = [f.number for _, f in version.files()]
        if len(numbers) != len(set(numbers)):
            raise CorruptionError(f"manifest {path!r} lists a table twice")
        if numbers:
            self.next_file = max(self.next_file, max(numbers) + 1)
        self.manifest_number = int(name.split("-", 1)[1])
        self.next_file = max(self.next_file, self.manifest_number + 1, self.log_number + 1)
        self.recorded_next = self.next_file
        self.current = version

    def write_new_manifest(self) -> None:
        """Start a fresh manifest holding a snapshot of the current state, durably name it in
        CURRENT and delete the previous one (open, and single-threaded callers only)."""
        with self._mutex:
            number = self.new_file_number()
            next_file = self.next_file
        self._switch_manifest(number, VersionEdit(
            log_number=self.log_number, next_file=next_file, last_seq=self.last_seq,
            added=self.current.files(), compact_pointers=sorted(self.compact_pointers.items())))

    def _switch_manifest(self, number: int, snapshot: VersionEdit) -> None:
        """Write manifest ``number`` holding ``snapshot``, make it durable, point CURRENT at it
        (durably), then retire the old one. On error the old manifest stays the live one in
        memory and is never deleted (CURRENT may name either after a failed rename; both
        describe tables that are all still on disk, since nothing is deleted after an error)."""
        old = self.manifest_number
        path = manifest_name(self.dirpath, number)
        file = self.fs.create(path, exclusive=True)
        self._touched = True
        try:
            writer = LogWriter(file, number, cipher=None if self.keyring is None
                               else self.keyring.writer(MANIFEST_FILE, number))
            writer.add(snapshot.encode())
            writer.sync()
            # The manifest's directory entry must be durable before CURRENT names it.
            self.fs.sync_dir(self.dirpath)
            self.fs.write_file_atomic(join(self.dirpath, CURRENT), encode_current(number))
        except BaseException:
            file.close()
            raise
        if self._log is not None:
            self._log.close()
        self._log = writer
        self.manifest_number = number
        if snapshot.next_file is not None:
            self.recorded_next = snapshot.next_file
        if old:
            self.fs.remove(manifest_name(self.dirpath, old))

    # -- changes ---------------------------------------------------------------------------
    def log_and_apply(self, edit: VersionEdit) -> Version:
        """Durably record ``edit`` and return the version it makes; the caller publishes it
        with :meth:`install` (under the mutex). Nothing in memory changes here, also on error
        (but the manifest file in use may have changed: see :meth:`_switch_manifest`)."""
        assert self._log is not None, "the manifest is not open"
        if self._failed is not None:
            raise StorageError(
                f"the manifest of {self.dirpath!r} is in an unknown state after an earlier "
                f"error ({self._failed}); no edit is written after it: reopen the database",
                getattr(self._failed, "errno", None), "manifest")
        if edit.last_seq is None:
            edit.last_seq = self.last_seq
        self._touched = False
        try:
            return self._log_and_apply(edit)
        except DescriptorsExhaustedError as exc:
            if not self._touched:
                raise  # a new manifest could not even be created: nothing changed, retryable
            # Past that point the files may be ahead of memory: fail-stop as for any error.
            self._failed = exc
            raise StorageError(str(exc), exc.errno, exc.op) from exc
        except BaseException as exc:
            self._failed = exc
            raise

    def _log_and_apply(self, edit: VersionEdit) -> Version:
        assert self._log is not None
        new = self.current.apply(edit)
        if self._log.size > self.max_manifest_size:
            with self._mutex:
                number = self.new_file_number()
                next_file = self.next_file
            pointers = dict(self.compact_pointers)
            pointers.update(edit.compact_pointers)
            self._switch_manifest(number, VersionEdit(
                log_number=self.log_number if edit.log_number is None else edit.log_number,
                next_file=next_file, last_seq=max(self.last_seq, edit.last_seq or 0),
                added=new.files(), compact_pointers=sorted(pointers.items())))
            return new
        with self._mutex:
            edit.next_file = self.next_file
        self._touched = True
        self._log.add(edit.encode())
        self._log.sync()
        assert edit.next_file is not None
        self.recorded_next = edit.next_file
        return new

    def install(self, version: Version, edit: VersionEdit) -> None:
        """Make ``version`` (what :meth:`log_and_apply` returned for ``edit``) current and
        take in the edit's counters. The caller holds the mutex."""
        self.current = version
        if edit.log_number is not None:
            self.log_number = edit.log_number
        if edit.last_seq is not None:
            self.last_seq = max(self.last_seq, edit.last_seq)
        for lvl, key in edit.compact_pointers:
            self.compact_pointers[lvl] = key

    def close(self) -> None:
        """Close the manifest file."""
        if self._log is not None:
            self._log.close()
            self._log = None
