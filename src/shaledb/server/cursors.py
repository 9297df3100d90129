"""SCAN cursors: small integers standing for a position in key order.

Redis encodes the position of a hash-table walk in the cursor itself. An ordered keyspace's
position is a key, up to 64 KiB long, which does not fit in the 64-bit number clients expect,
so the server keeps a table from cursor number to the next key to return. The table is
bounded (``max_scan_cursors``, least recently used dropped first); a dropped or unknown
cursor gets ``-ERR invalid cursor``.
"""

from __future__ import annotations

import collections


class ScanCursors:
    """Cursor number -> the key a SCAN continues from. Bounded; shared by all clients."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._positions: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._next = 1

    def put(self, position: bytes) -> int:
        """Remember ``position``; returns its new cursor number (never 0)."""
        cursor = self._next
        self._next = self._next + 1 if self._next < 2**63 - 1 else 1
        self._positions[cursor] = position
        while len(self._positions) > self.limit:
            self._positions.popitem(last=False)
        return cursor

    def get(self, cursor: int) -> bytes | None:
        """The position of ``cursor``, or None when unknown or dropped."""
        position = self._positions.get(cursor)
        if position is not None:
            self._positions.move_to_end(cursor)
        return position

    def __len__(self) -> int:
        return len(self._positions)
