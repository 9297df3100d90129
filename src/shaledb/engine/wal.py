"""The write-ahead log: numbered segment files of framed records, one record per write group.

Every write group (one or more batches) becomes one record, copied into the segment's shared
memory map (:class:`~shaledb.engine.fs.MappedFile`: in the page cache at once, so it survives
a process crash, without a system call that would give up the GIL). A power loss can tear at
most the records after the last fsync. A segment is started whenever the memtable is
frozen; a segment is deleted once the manifest records that every memtable it fed is in a
table (``log_number`` moved past it). A segment that was open during a crash ends in zeros
(space allocated but never written): replay treats an all-zero tail as the end of the
segment. See docs/format.md for the bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .batch import decode_batch
from .filenames import log_name
from .logfile import LogWriter, encode_record, read_log
from .vfs import FileSystem


class WriteAheadLog:
    """One open WAL segment. ``append`` is called only by the write-group leader; ``sync`` may
    come from the leader or the periodic syncer, so it is serialized by a small lock."""

    def __init__(self, fs: FileSystem, dirpath: str, number: int) -> None:
        self.number = number
        self.path = log_name(dirpath, number)
        self._writer = LogWriter(fs.create_mapped(self.path))
        self._file = self._writer.file
        self._sync_lock = threading.Lock()
        self._synced_size = 0
        self.syncs = 0

    @property
    def size(self) -> int:
        """Bytes written to this segment."""
        return self._writer.size

    @property
    def dirty(self) -> bool:
        """Whether bytes were written since the last fsync."""
        return self._writer.size != self._synced_size

    def append(self, payload: bytes) -> None:
        """Append one record."""
        self._file.append(encode_record(payload))

    def sync(self) -> None:
        """fsync everything appended so far (a no-op when nothing is new)."""
        with self._sync_lock:
            size = self._writer.size
            if size == self._synced_size:
                return
            self._writer.sync()
            self._synced_size = size
            self.syncs += 1

    def close(self) -> None:
        """Close the segment without syncing."""
        with self._sync_lock:
            self._writer.close()


class ReplayedSegment:
    """The batches found in one segment and whether (and where) it was damaged."""

    def __init__(self, path: str, batches: list[tuple[int, list[Any]]], good_end: int,
                 damaged: bool, torn_tail: bool) -> None:
        self.path = path
        self.batches = batches
        self.good_end = good_end
        self.damaged = damaged
        self.torn_tail = torn_tail

    def __iter__(self) -> Iterator[tuple[int, list[Any]]]:
        return iter(self.batches)


def replay_segment(fs: FileSystem, dirpath: str, number: int) -> ReplayedSegment:
    """Read every intact batch of segment ``number`` (damage is reported, not raised)."""
    path = log_name(dirpath, number)
    data = fs.read_file(path)
    result = read_log(data)
    batches = [decode_batch(r) for r in result.records]
    end = result.good_end
    # Allocated-but-unwritten space (zeros to the end of the file) is not damage.
    damaged = result.damaged and data.count(0, end) != len(data) - end
    return ReplayedSegment(path, batches, end, damaged, result.torn_tail)
