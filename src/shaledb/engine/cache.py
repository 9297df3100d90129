"""Caches: the block cache (data blocks, LRU bounded by bytes) and the table cache (open
table readers, LRU bounded by count).

The block cache's byte budget also covers the filters and indexes of the open tables: they
are *pinned* (charged, never evicted while their table is open), and the cache evicts blocks
to make room for them. So the memory of blocks and table metadata together stays within the
one ``block_cache_size`` however large the data set grows."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A thread-safe LRU map bounded by the sum of its entries' charges."""

    __slots__ = ("capacity", "_map", "_lock", "usage", "pinned", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._map: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.usage = 0
        self.pinned = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        """The cached value (now most recently used), or None.

        Lock-free: ``OrderedDict.get`` and ``move_to_end`` are single C calls, atomic under
        the GIL, and the lock guards only the compound updates of :meth:`put` and :meth:`pop`
        (an entry evicted between the two calls is simply not moved). The hit and miss
        counters may lose an increment when threads race; they are statistics."""
        item = self._map.get(key)
        if item is None:
            self.misses += 1
            return None
        try:
            self._map.move_to_end(key)
        except KeyError:
            pass
        self.hits += 1
        return item[0]

    def put(self, key: K, value: V, charge: int) -> list[V]:
        """Insert ``value``; returns the values evicted to stay within capacity."""
        evicted: list[V] = []
        if charge > self.capacity - self.pinned:
            return evicted
        with self._lock:
            old = self._map.pop(key, None)
            if old is not None:
                self.usage -= old[1]
            self._map[key] = (value, charge)
            self.usage += charge
            self._locked_shrink(evicted)
        return evicted

    def pin(self, charge: int) -> None:
        """Charge ``charge`` bytes held outside the cache (negative: release them); entries
        are evicted to keep entries + pinned bytes within the capacity."""
        with self._lock:
            self.pinned += charge
            self._locked_shrink([])

    def _locked_shrink(self, evicted: list[V]) -> None:
        while self.usage + self.pinned > self.capacity and self._map:
            _, (v, c) = self._map.popitem(last=False)
            self.usage -= c
            evicted.append(v)

    def pop(self, key: K) -> V | None:
        """Remove and return ``key``'s value."""
        with self._lock:
            item = self._map.pop(key, None)
            if item is None:
                return None
            self.usage -= item[1]
            return item[0]

    def drain(self) -> list[V]:
        """Remove everything; returns the values."""
        with self._lock:
            values = [v for v, _ in self._map.values()]
            self._map.clear()
            self.usage = 0
            return values

    def __len__(self) -> int:
        return len(self._map)


class TableCache(Generic[V]):
    """Open table readers by file number, at most ``capacity`` at once. Evicted readers are
    closed when the last user drops them (their file descriptors close on collection), so an
    iterator never loses a file it is reading."""

    __slots__ = ("_lru", "_opener", "_on_drop", "_open_lock")

    def __init__(self, capacity: int, opener: Callable[[int, Any], V],
                 on_drop: Callable[[V], None] | None = None) -> None:
        self._lru: LRUCache[int, V] = LRUCache(capacity)
        self._opener = opener
        self._on_drop = on_drop
        self._open_lock = threading.Lock()

    def get(self, number: int, meta: Any = None) -> V:
        """The reader for table ``number``, opening it (with ``meta``, what the manifest says
        of it) if needed."""
        reader = self._lru.get(number)
        if reader is None:
            with self._open_lock:
                reader = self._lru.get(number)
                if reader is None:
                    reader = self._opener(number, meta)
                    for old in self._lru.put(number, reader, 1):
                        self._dropped(old)
        return reader

    def _dropped(self, reader: V) -> None:
        if self._on_drop is not None:
            self._on_drop(reader)

    def evict(self, number: int) -> None:
        """Forget table ``number`` (after it was deleted)."""
        reader = self._lru.pop(number)
        if reader is not None:
            self._dropped(reader)

    def clear(self) -> list[V]:
        """Forget every reader; returns them so the caller can close them."""
        readers = self._lru.drain()
        for reader in readers:
            self._dropped(reader)
        return readers

    def __len__(self) -> int:
        return len(self._lru)
