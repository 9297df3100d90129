"""The memtable: recent writes, in memory, readable by key and in key order.

A dict maps each user key to its versions, a list of ``(seq, kind, expire_at_ms, value)``
tuples in ascending sequence order (appends only), so a point read is one dict lookup and,
almost always, a look at the last version. A ``SortedList`` of the user keys serves ordered
scans and the flush. Mutations and ordered reads of the active memtable take ``_lock`` (the
sorted list must not change under an ordered read); a frozen (immutable) memtable is never
mutated again.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any

from sortedcontainers import SortedList

from .dbformat import ENTRY_OVERHEAD, Entry, Record


class MemTable:
    """An in-memory, multi-version sorted map. Bounded by :attr:`approximate_size`."""

    __slots__ = ("_data", "_keys", "_lock", "approximate_size", "entries", "frozen")

    def __init__(self) -> None:
        self._data: dict[bytes, list[Record]] = {}
        self._keys = SortedList()
        self._lock = threading.Lock()
        self.approximate_size: int = 0
        self.entries: int = 0
        self.frozen: bool = False

    def __len__(self) -> int:
        return self.entries

    def apply(self, first_seq: int, ops: list[Any]) -> None:
        """Insert the flat ``[kind, key, expire, value, ...]`` list with sequences from
        ``first_seq`` on."""
        data = self._data
        if len(ops) == 4:  # one put or delete: no loop
            key = ops[1]
            value = ops[3]
            with self._lock:
                versions = data.get(key)
                if versions is None:
                    data[key] = [(first_seq, ops[0], ops[2], value)]
                    self._keys.add(key)
                else:
                    versions.append((first_seq, ops[0], ops[2], value))
                self.approximate_size += len(key) + len(value) + ENTRY_OVERHEAD
                self.entries += 1
            return
        add_key = self._keys.add
        size = 0
        seq = first_seq
        with self._lock:
            for i in range(0, len(ops), 4):
                key = ops[i + 1]
                value = ops[i + 3]
                versions = data.get(key)
                if versions is None:
                    data[key] = [(seq, ops[i], ops[i + 2], value)]
                    add_key(key)
                else:
                    versions.append((seq, ops[i], ops[i + 2], value))
                size += len(key) + len(value)
                seq += 1
            self.approximate_size += size + ENTRY_OVERHEAD * (len(ops) // 4)
            self.entries += len(ops) // 4

    def get(self, key: bytes, seq: int) -> Record | None:
        """The newest version of ``key`` with sequence <= ``seq``, or None."""
        versions = self._data.get(key)
        if versions is None:
            return None
        last = versions[-1]
        if last[0] <= seq:
            return last
        for v in reversed(versions):
            if v[0] <= seq:
                return v
        return None

    def latest_seq(self, key: bytes) -> int | None:
        """Sequence of the newest version of ``key`` here, or None."""
        versions = self._data.get(key)
        return None if versions is None else versions[-1][0]

    def scan_chunk(self, lo: bytes | None, lo_inclusive: bool, hi: bytes | None,
                   hi_inclusive: bool, reverse: bool, seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` keys of the range, each as its newest version visible at ``seq``
        (keys with no visible version are skipped), in key order (descending if reverse)."""
        out: list[Entry] = []
        data = self._data
        with self._lock:
            if not reverse and not hi_inclusive:
                self._locked_scan_forward(lo, lo_inclusive, hi, seq, limit, out)
                return out
            it = self._keys.irange(lo, hi, (lo_inclusive, hi_inclusive), reverse=reverse)
            for key in it:
                versions = data[key]
                v = versions[-1]
                if v[0] > seq:
                    for v in reversed(versions):  # noqa: B007
                        if v[0] <= seq:
                            break
                    else:
                        continue
                out.append((key, -v[0], v[1], v[2], v[3]))
                if len(out) >= limit:
                    break
        return out

    def _locked_scan_forward(self, lo: bytes | None, lo_inclusive: bool, hi: bytes | None,
                             seq: int, limit: int, out: list[Entry]) -> None:
        """:meth:`scan_chunk` forward with ``hi`` exclusive, on the sorted list's sublists
        (``_lists``/``_maxes``, stable in sortedcontainers 2.x) with slices and bisects in
        C: ``irange`` builds a chain of iterators per call, which costs more than a short
        seek reads."""
        keys: Any = self._keys
        lists: list[list[bytes]] = keys._lists
        data = self._data
        if not lists:
            return
        if lo is None:
            pos = idx = 0
        else:
            find = bisect_left if lo_inclusive else bisect_right
            pos = find(keys._maxes, lo)
            if pos == len(lists):
                return
            idx = find(lists[pos], lo)
        nlists = len(lists)
        while pos < nlists:
            sub = lists[pos]
            part = sub[idx:idx + limit - len(out)]
            for key in part:
                if hi is not None and key >= hi:
                    return
                versions = data[key]
                v = versions[-1]
                if v[0] > seq:
                    for v in reversed(versions):  # noqa: B007
                        if v[0] <= seq:
                            break
                    else:
                        continue
                out.append((key, -v[0], v[1], v[2], v[3]))
            if len(out) >= limit:
                return
            idx += len(part)
            if idx >= len(sub):
                pos += 1
                idx = 0

    def iter_all(self) -> Iterator[Entry]:
        """Every version in table order (key ascending, sequence descending). Only for a
        frozen memtable."""
        assert self.frozen, "iter_all needs a frozen memtable"
        data = self._data
        for key in self._keys:
            versions = data[key]
            if len(versions) == 1:
                v = versions[0]
                yield (key, -v[0], v[1], v[2], v[3])
            else:
                for v in reversed(versions):
                    yield (key, -v[0], v[1], v[2], v[3])

    def __repr__(self) -> str:
        return f"MemTable(entries={self.entries}, bytes={self.approximate_size})"
