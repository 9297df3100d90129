"""The replication backlog: the most recent committed write groups, by sequence number.

A primary's replicas are fed the engine's own committed write groups (the WAL record
payloads, ``engine/batch.py``: first sequence, count, commit time, msgpack ops), not the
commands that made them, so a replica holds the same entries and applies each group
atomically. The leader of the writer queue appends every group it committed here (under
the DB mutex, after the WAL append and the memtable insert: only committed groups), and a
replication feeder reads them back from a sequence number.

Invariants:

- Groups are contiguous: ``first`` of each is ``last + 1`` of the one before it, and
  ``last_seq`` is the last sequence number of the newest group (or the engine's last
  sequence when the backlog was attached, before any group).
- The groups kept hold at most ``limit`` payload bytes, except that the newest group is
  always kept (one group is at most a WAL record): the oldest are dropped first. A reader
  asking for a sequence number older than what is kept gets ``None`` (it must resync
  fully), never a gap.

The backlog has its own lock, a leaf lock: it is taken under the DB mutex by the writer and
alone by readers, and nothing is called while it is held.
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections import deque

from .batch import decode_batch_timed
from .dbformat import DELETE, PUT

#: The kinds of a replicated group's operations (``[kind, key, expire_at_ms, value]``).
OP_PUT = PUT
OP_DELETE = DELETE
#: Decodes one backlog payload into ``(first_seq, flat ops, commit_ms)``.
decode_group = decode_batch_timed
_HEAD = struct.Struct("<QI")
_TIMED = 1 << 31


def group_span(payload: bytes) -> tuple[int, int]:
    """First and last sequence number of one write group payload (its header only)."""
    first, count = _HEAD.unpack_from(payload)
    return first, first + (count & ~_TIMED) - 1

#: The default size of the replication backlog (bytes of WAL payloads), Redis' default
#: ``repl-backlog-size`` is 1 MiB; ours holds write groups, which group many commands.
DEFAULT_BACKLOG_BYTES = 16 << 20
#: The least backlog that may be configured (one write group may be up to MAX_GROUP_BYTES).
MIN_BACKLOG_BYTES = 16 << 10


class ReplicationBacklog:
    """A bounded FIFO of committed write groups ``(first_seq, last_seq, payload)``."""

    __slots__ = ("_lock", "_groups", "_lasts", "_base", "_bytes", "limit", "last_seq",
                 "dropped")

    def __init__(self, limit: int, last_seq: int) -> None:
        if limit < MIN_BACKLOG_BYTES:
            raise ValueError(f"the replication backlog must be at least {MIN_BACKLOG_BYTES} "
                             f"bytes, not {limit}")
        self._lock = threading.Lock()
        self._groups: deque[tuple[int, int, bytes]] = deque()
        #: ``last`` of every kept group, in order (for bisect), offset by ``_base`` pops.
        self._lasts: list[int] = []
        self._base = 0
        self._bytes = 0
        #: The most payload bytes kept (besides the newest group).
        self.limit = limit
        #: The last sequence number appended (or the engine's when attached).
        self.last_seq = last_seq
        #: Groups dropped to stay under the limit (for INFO and tests).
        self.dropped = 0

    def append(self, first: int, last: int, payload: bytes) -> None:
        """Keep one committed group; drops the oldest ones past the limit."""
        with self._lock:
            if first != self.last_seq + 1:
                # A group the engine committed without the backlog seeing the one before it
                # cannot be: start afresh so that no reader is ever handed a gap.
                self._groups.clear()
                self._lasts.clear()
                self._base = 0
                self._bytes = 0
            self._groups.append((first, last, payload))
            self._lasts.append(last)
            self._bytes += len(payload)
            self.last_seq = last
            while self._bytes > self.limit and len(self._groups) > 1:
                _, _, old = self._groups.popleft()
                self._bytes -= len(old)
                self._base += 1
                self.dropped += 1
            if self._base > 1024 and self._base * 2 > len(self._lasts):
                del self._lasts[:self._base]  # amortized O(1) per group
                self._base = 0

    @property
    def size(self) -> int:
        """Payload bytes kept."""
        return self._bytes

    @property
    def first_seq(self) -> int:
        """The first sequence number a reader can start after minus one: the oldest
        position :meth:`read` serves (``last_seq`` when nothing is kept)."""
        with self._lock:
            return self._groups[0][0] - 1 if self._groups else self.last_seq

    def read(self, after: int, max_bytes: int) -> list[bytes] | None:
        """The payloads of the groups past sequence number ``after``, oldest first, at
        least one and then up to ``max_bytes`` in total; ``[]`` when ``after`` is the last
        sequence number. ``None`` when the groups right after ``after`` are no longer kept,
        or ``after`` is not the end of a group (the reader must resync fully)."""
        with self._lock:
            if after == self.last_seq:
                return []
            groups = self._groups
            if not groups or after > self.last_seq or after < groups[0][0] - 1:
                return None
            i = bisect.bisect_right(self._lasts, after, lo=self._base) - self._base
            if i >= len(groups) or groups[i][0] != after + 1:
                return None
            out: list[bytes] = []
            total = 0
            while i < len(groups):
                payload = groups[i][2]
                if out and total + len(payload) > max_bytes:
                    break
                out.append(payload)
                total += len(payload)
                i += 1
            return out


__all__ = ["DEFAULT_BACKLOG_BYTES", "MIN_BACKLOG_BYTES", "OP_DELETE", "OP_PUT",
           "ReplicationBacklog", "decode_group", "group_span"]
