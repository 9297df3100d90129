"""WATCH: which clients watch which keys, and marking their transactions dirty.

As in Redis (``multi.c``), a write to a watched key flags every client watching it; that
client's next EXEC then fails (null reply). Every write goes through
:meth:`shaledb.server.keyspace.keyspace.KeyspaceTxn.commit` on the event loop, which reports the
changed keys here, so no write can slip past. The map holds at most ``max_watched_keys``
keys per connected client, and a client's entries are removed by EXEC, DISCARD, UNWATCH and
disconnection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Watcher(Protocol):
    """What the registry needs of a client."""

    #: Keys this client watches: (db, key) -> expiry (ms) the key had when watched.
    watched: dict[tuple[int, bytes], int]
    #: Set when a watched key changed; EXEC then fails.
    dirty_cas: bool


class WatchRegistry:
    """(db, key) -> the clients watching it."""

    def __init__(self) -> None:
        self._watchers: dict[tuple[int, bytes], set[Watcher]] = {}

    def watch(self, client: Watcher, db: int, key: bytes, expire_ms: int) -> None:
        """Add ``key`` to ``client``'s watched keys (a repeat keeps the first expiry)."""
        k = (db, key)
        if k in client.watched:
            return
        client.watched[k] = expire_ms
        self._watchers.setdefault(k, set()).add(client)

    def unwatch_all(self, client: Watcher) -> None:
        """Forget every key ``client`` watches and clear its dirty flag."""
        for k in client.watched:
            clients = self._watchers.get(k)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self._watchers[k]
        client.watched.clear()
        client.dirty_cas = False

    def touch(self, keys: Iterable[tuple[int, bytes]]) -> None:
        """Mark the watchers of ``keys`` dirty (the keys were written)."""
        if not self._watchers:
            return
        for k in keys:
            clients = self._watchers.get(k)
            if clients:
                for c in clients:
                    c.dirty_cas = True

    def touch_db(self, db: int | None) -> None:
        """Mark every watcher of a key in ``db`` (all databases: None) dirty."""
        for (d, _), clients in self._watchers.items():
            if db is None or d == db:
                for c in clients:
                    c.dirty_cas = True

    def keys_in(self, db: int) -> list[bytes]:
        """The keys of database ``db`` that some client watches."""
        return [k for d, k in self._watchers if d == db] if self._watchers else []

    def __len__(self) -> int:
        return len(self._watchers)
