"""What the engine hands to backups: a pinned, consistent set of files, and WAL segments to
archive before it deletes them.

The engine knows nothing of backup repositories (``shaledb.backup`` does, one layer up): it
pins a version for :class:`BackupSource` (its tables and the WAL up to a sequence number are
kept on disk until the source is released) and calls a :class:`WalArchive` for every WAL
segment before removing it. Invariants:

- A :class:`BackupSource` is a consistent snapshot at ``sequence``: the MANIFEST bytes were
  copied under the manifest lock, so they list exactly ``tables``; the WAL segments from the
  manifest's ``log_number`` on are listed up to a record boundary taken with no write group
  in flight, so every write acknowledged before the pin is in them, nothing after
  ``sequence`` is, and no batch is split.
- A WAL segment is removed only after :meth:`WalArchive.archive_segment` returned for it
  (when an archive is configured); a failure is recorded and the segment stays on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file of a pinned database: its name in the directory, its path, and how many of
    its bytes belong to the snapshot (a live WAL segment goes on growing past them)."""

    name: str
    path: str
    size: int


@dataclasses.dataclass
class BackupSource:
    """A consistent snapshot of an open database, pinned until :meth:`release`.

    ``manifest`` names the MANIFEST file the ``copy_manifest`` callback of
    ``Engine.backup_source`` received (copied under the manifest lock)."""

    sequence: int
    manifest: str
    manifest_number: int
    tables: list[SourceFile]
    wal: list[SourceFile]
    other: list[SourceFile]
    encrypted: bool
    format_version: int
    #: Commit time (ms) of the newest WAL record in the snapshot, when known.
    last_commit_ms: int | None
    _release: Callable[[], None] | None = dataclasses.field(default=None, repr=False)

    def release(self) -> None:
        """Let the engine delete the pinned files again. Idempotent."""
        fn, self._release = self._release, None
        if fn is not None:
            fn()


@dataclasses.dataclass(frozen=True)
class ArchivedSegment:
    """A WAL segment handed to the archive: its bytes up to its last non-zero one, and what
    its intact records cover (None when it holds none)."""

    number: int
    data: bytes
    first_seq: int | None
    last_seq: int | None
    first_ms: int | None
    last_ms: int | None
    encrypted: bool


@runtime_checkable
class WalArchive(Protocol):
    """Where WAL segments go before the engine deletes them (``shaledb.open(path,
    wal_archive=repo)``). ``archive_segment`` returns once the copy is durable, or raises;
    it may be called again for the same segment (the same bytes, or a longer copy)."""

    def archive_segment(self, segment: ArchivedSegment) -> None:
        """Store ``segment`` durably."""


__all__ = ["ArchivedSegment", "BackupSource", "SourceFile", "WalArchive"]
