"""SCAN cursors: numbers standing for a position in key order, owned by the client that got
them.

Redis encodes the position of a hash-table walk in the cursor itself and keeps no state.
An ordered keyspace's position is a key, up to 64 KiB long, which does not fit in the
64-bit number clients expect: redis-cli's ``--scan`` and ``--bigkeys`` parse the cursor with
``strtoull`` (a longer one comes back as 18446744073709551615), go-redis and redis-rs as a
``uint64``. So the server keeps a table from cursor number to (database, next key) -- but
no client can disturb another's iteration through it:

- each client's cursors are bounded separately (``max-scan-cursors`` per client, and
  CLIENT_BYTES of positions), least recently used dropped first: a client flooding SCAN
  only drops its own cursors (it used to drop everyone's from one shared 10,000);
- a cursor is an unguessable 63-bit number (a keyed hash of a counter): it cannot be
  guessed (to resume, or to learn the key another client's walk is at), and a cursor from
  before a restart is unknown (numbers counting from 1 again made it silently resume
  another walk) -- any client may use a cursor it was handed, so a pooled client that
  sends the next SCAN on another connection goes on;
- a cursor names its database: used in another one it is an error, not a walk that skips
  that database's first keys;
- the cursors of a client that disconnects are kept in a shared pool of the same bounds (a
  pooled connection may close mid-iteration).

A dropped, unknown or foreign cursor gets ``-ERR invalid cursor`` and a hint to start again
from 0.
"""

from __future__ import annotations

import collections
import hashlib
import secrets
from typing import Final

#: Bytes of positions one client's cursors may hold (each entry also counts ENTRY_OVERHEAD).
CLIENT_BYTES: Final = 4 * 1024 * 1024
#: What one entry costs besides its key bytes, roughly (dict slots, tuple, int, bytes header).
ENTRY_OVERHEAD: Final = 160
#: The owner of the cursors of clients that disconnected.
_ORPHANS: Final = 0


class _Owned:
    """One client's cursors, least recently used first, and the bytes they hold."""

    __slots__ = ("order", "bytes")

    def __init__(self) -> None:
        self.order: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.bytes = 0


class ScanCursors:
    """Cursor number -> (owner client id, database, the key a SCAN continues from), bounded
    per owner."""

    def __init__(self, limit: int, client_bytes: int = CLIENT_BYTES) -> None:
        #: Most cursors per client (max-scan-cursors).
        self.limit = limit
        self.client_bytes = client_bytes
        self._entries: dict[int, tuple[int, int, bytes]] = {}
        self._owned: dict[int, _Owned] = {}
        # Cursor numbers: a keyed hash of a counter, as unguessable as random numbers
        # without a getrandom() system call per SCAN (a SCAN flood made thousands a second).
        self._secret = secrets.token_bytes(32)
        self._counter = 0

    def _next_number(self) -> int:
        self._counter += 1
        digest = hashlib.blake2b(self._counter.to_bytes(8, "big"), key=self._secret,
                                 digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    def put(self, owner: int, db: int, position: bytes) -> int:
        """Remember ``position`` in ``db`` for client ``owner``; its new cursor (never 0)."""
        cursor = 0
        while not cursor or cursor in self._entries:
            cursor = self._next_number()
        self._entries[cursor] = (owner, db, position)
        owned = self._owned.get(owner)
        if owned is None:
            owned = self._owned[owner] = _Owned()
        self._add(owned, cursor, len(position) + ENTRY_OVERHEAD)
        return cursor

    def _add(self, owned: _Owned, cursor: int, size: int) -> None:
        owned.order[cursor] = size
        owned.bytes += size
        while len(owned.order) > self.limit or (
                owned.bytes > self.client_bytes and len(owned.order) > 1):
            old, old_size = owned.order.popitem(last=False)
            owned.bytes -= old_size
            del self._entries[old]

    def get(self, cursor: int, db: int) -> bytes | None:
        """The position of ``cursor`` in ``db``, or None when it is unknown, dropped, or of
        another database."""
        entry = self._entries.get(cursor)
        if entry is None or entry[1] != db:
            return None
        owned = self._owned[entry[0]]
        owned.order.move_to_end(cursor)
        return entry[2]

    def release(self, owner: int) -> None:
        """Client ``owner`` disconnected: its cursors join the shared pool of orphans."""
        owned = self._owned.pop(owner, None)
        if owned is None:
            return
        orphans = self._owned.get(_ORPHANS)
        if orphans is None:
            orphans = self._owned[_ORPHANS] = _Owned()
        for cursor, size in owned.order.items():
            _, db, position = self._entries[cursor]
            self._entries[cursor] = (_ORPHANS, db, position)
            self._add(orphans, cursor, size)

    def owned_by(self, owner: int) -> int:
        """How many cursors client ``owner`` holds."""
        owned = self._owned.get(owner)
        return 0 if owned is None else len(owned.order)

    def __len__(self) -> int:
        return len(self._entries)
