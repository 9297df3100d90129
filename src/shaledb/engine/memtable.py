"""The memtable: recent writes, in memory, readable by key and in key order.

Every version is stored as the :data:`Entry` ``(key, -seq, kind, expire_at_ms, value)`` that
readers and the flush consume, built once when it is written. Two structures index them:

- a dict maps each user key to its entry, or, once it has several versions, to the list of
  them in ascending sequence order (appends only): a point read is one dict lookup and,
  almost always, one entry (most keys have one version, and then no list is allocated);
- the sorted user keys, kept as a list of sorted *sublists* (at most ``_SPLIT`` keys each,
  with ``_maxes`` holding each sublist's last key, the layout of sortedcontainers'
  ``SortedList``), with a parallel list of sublists holding each key's *newest* entry.

An ordered read bisects to its start and then slices the parallel sublists: when nothing in
the memtable is newer than the reader's sequence (``last_seq <= seq``, the common case) a
chunk of a scan is a list slice in C, with no per-key lookup at all. Otherwise each newest
entry is checked, and only a key whose newest version is too new costs a dict lookup.

Mutations and ordered reads of the active memtable take ``_lock`` (the sublists must not
change under an ordered read); a frozen (immutable) memtable is never mutated again.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any, Final

from .dbformat import ENTRY_OVERHEAD, Entry, Record

#: A sublist of keys is split in two when it grows past this many keys: short enough that an
#: insert's ``list.insert`` moves little memory, long enough that ``_maxes`` stays small.
_SPLIT: Final = 1024


class MemTable:
    """An in-memory, multi-version sorted map. Bounded by :attr:`approximate_size`."""

    __slots__ = ("_data", "_klists", "_vlists", "_maxes", "_lock", "approximate_size",
                 "entries", "frozen", "last_seq")

    def __init__(self) -> None:
        # Entries are held as ``Any``: mypyc keeps a value typed as a fixed-length tuple
        # unboxed and would box it again (a new tuple) every time it is stored or returned;
        # as objects the same tuple is shared by both structures and every scan.
        self._data: dict[bytes, Any] = {}  # key -> Entry, or list of 2+ Entry
        self._klists: list[list[bytes]] = []
        self._vlists: list[list[Any]] = []
        self._maxes: list[bytes] = []
        self._lock = threading.Lock()
        self.approximate_size: int = 0
        self.entries: int = 0
        self.frozen: bool = False
        #: The highest sequence number applied (0: none): a reader at or above it sees the
        #: newest version of every key, which lets a scan skip the per-key check.
        self.last_seq: int = 0

    def __len__(self) -> int:
        return self.entries

    def apply(self, first_seq: int, ops: list[Any]) -> None:
        """Insert the flat ``[kind, key, expire, value, ...]`` list with sequences from
        ``first_seq`` on."""
        data = self._data
        size = 0
        seq = first_seq
        n = len(ops)
        with self._lock:
            for i in range(0, n, 4):
                key: bytes = ops[i + 1]
                value: bytes = ops[i + 3]
                e: Any = (key, -seq, ops[i], ops[i + 2], value)
                old = data.get(key)
                if old is None:
                    data[key] = e
                    self._locked_insert(key, e)
                else:
                    if isinstance(old, list):
                        old.append(e)
                    else:
                        data[key] = [old, e]
                    self._locked_replace(key, e)
                size += len(key) + len(value)
                seq += 1
            self.approximate_size += size + ENTRY_OVERHEAD * (n // 4)
            self.entries += n // 4
            if seq - 1 > self.last_seq:
                self.last_seq = seq - 1

    def _locked_insert(self, key: bytes, e: Any) -> None:
        """Add a key that is not in the sorted sublists yet, with its newest entry."""
        maxes = self._maxes
        klists = self._klists
        vlists = self._vlists
        if not maxes:
            klists.append([key])
            vlists.append([e])
            maxes.append(key)
            return
        pos = bisect_left(maxes, key)
        if pos == len(maxes):
            pos -= 1
            sub = klists[pos]
            sub.append(key)
            vlists[pos].append(e)
            maxes[pos] = key
        else:
            sub = klists[pos]
            idx = bisect_left(sub, key)
            sub.insert(idx, key)
            vlists[pos].insert(idx, e)
        if len(sub) > _SPLIT:
            half = len(sub) >> 1
            vsub = vlists[pos]
            klists.insert(pos + 1, sub[half:])
            vlists.insert(pos + 1, vsub[half:])
            del sub[half:]
            del vsub[half:]
            maxes.insert(pos, sub[-1])

    def _locked_replace(self, key: bytes, e: Any) -> None:
        """Make ``e`` the newest entry of ``key``, which is in the sorted sublists."""
        pos = bisect_left(self._maxes, key)
        self._vlists[pos][bisect_left(self._klists[pos], key)] = e

    def get(self, key: bytes, seq: int) -> Record | None:
        """The newest version of ``key`` with sequence <= ``seq``, or None."""
        x = self._data.get(key)
        if x is None:
            return None
        e: Entry
        if not isinstance(x, list):
            e = x
            s = -e[1]
            return (s, e[2], e[3], e[4]) if s <= seq else None
        versions: list[Any] = x
        e = versions[-1]
        s = -e[1]
        if s <= seq:
            return (s, e[2], e[3], e[4])
        j = len(versions) - 2  # (an index loop: mypyc cannot iterate reversed(list[Any]))
        while j >= 0:
            e = versions[j]
            s = -e[1]
            if s <= seq:
                return (s, e[2], e[3], e[4])
            j -= 1
        return None

    def latest_seq(self, key: bytes) -> int | None:
        """Sequence of the newest version of ``key`` here, or None."""
        x = self._data.get(key)
        if x is None:
            return None
        e: Entry = x[-1] if isinstance(x, list) else x
        return -e[1]

    def _visible(self, e: Any, seq: int) -> Any:
        """The newest entry of ``e``'s key visible at ``seq`` (``e`` is its newest), or
        None."""
        newest: Entry = e
        if -newest[1] <= seq:
            return e
        x = self._data[newest[0]]
        if not isinstance(x, list):
            return None  # its one version is ``e``
        versions: list[Any] = x
        j = len(versions) - 2
        while j >= 0:
            older: Entry = versions[j]
            if -older[1] <= seq:
                return versions[j]
            j -= 1
        return None

    def scan_chunk(self, lo: bytes | None, lo_inclusive: bool, hi: bytes | None,
                   hi_inclusive: bool, reverse: bool, seq: int, limit: int) -> list[Entry]:
        """Up to ``limit`` keys of the range, each as its newest version visible at ``seq``
        (keys with no visible version are skipped), in key order (descending if reverse)."""
        out: list[Entry] = []
        if limit <= 0:
            return out
        with self._lock:
            if self._klists:
                if reverse:
                    self._locked_scan_backward(lo, lo_inclusive, hi, hi_inclusive, seq, limit,
                                               out)
                else:
                    self._locked_scan_forward(lo, lo_inclusive, hi, hi_inclusive, seq, limit,
                                              out)
        return out

    def _locked_scan_forward(self, lo: bytes | None, lo_inclusive: bool, hi: bytes | None,
                             hi_inclusive: bool, seq: int, limit: int, out: list[Entry]
                             ) -> None:
        klists = self._klists
        vlists = self._vlists
        maxes = self._maxes
        nlists = len(klists)
        pos = 0
        idx = 0
        if lo is not None:
            if lo_inclusive:
                pos = bisect_left(maxes, lo)
                if pos == nlists:
                    return
                idx = bisect_left(klists[pos], lo)
            else:
                pos = bisect_right(maxes, lo)
                if pos == nlists:
                    return
                idx = bisect_right(klists[pos], lo)
        all_visible = self.last_seq <= seq
        while pos < nlists and len(out) < limit:
            sub = klists[pos]
            end = len(sub)
            # When the range ends in this sublist, every later key is above maxes[pos].
            ends_here = hi is not None and maxes[pos] >= hi
            if hi is not None and ends_here:
                end = bisect_right(sub, hi, idx) if hi_inclusive else bisect_left(sub, hi, idx)
            stop = min(end, idx + limit - len(out))
            if all_visible:
                out += vlists[pos][idx:stop]
            else:
                for e in vlists[pos][idx:stop]:
                    v = self._visible(e, seq)
                    if v is not None:
                        out.append(v)
            if stop < end:
                idx = stop  # the limit, or keys hidden from ``seq`` were skipped: go on here
            elif ends_here:
                return
            else:
                pos += 1
                idx = 0

    def _locked_scan_backward(self, lo: bytes | None, lo_inclusive: bool, hi: bytes | None,
                              hi_inclusive: bool, seq: int, limit: int, out: list[Entry]
                              ) -> None:
        klists = self._klists
        vlists = self._vlists
        maxes = self._maxes
        nlists = len(klists)
        if hi is None:
            pos = nlists - 1
            end = len(klists[pos])
        else:
            pos = bisect_left(maxes, hi)
            if pos == nlists:
                pos -= 1
                end = len(klists[pos])
            else:
                sub = klists[pos]
                end = bisect_right(sub, hi) if hi_inclusive else bisect_left(sub, hi)
        all_visible = self.last_seq <= seq
        while pos >= 0:
            sub = klists[pos]
            vsub = vlists[pos]
            start = 0
            first_sublist = False
            if lo is not None and sub[0] <= lo:
                # The range starts in this sublist (every earlier key is below sub[0]).
                first_sublist = True
                start = bisect_left(sub, lo) if lo_inclusive else bisect_right(sub, lo)
            if all_visible:
                chunk = vsub[max(start, end - (limit - len(out))):end]
                chunk.reverse()
                out += chunk
            else:
                j = end - 1
                while j >= start and len(out) < limit:
                    v = self._visible(vsub[j], seq)
                    if v is not None:
                        out.append(v)
                    j -= 1
            if len(out) >= limit or first_sublist:
                return
            pos -= 1
            if pos >= 0:
                end = len(klists[pos])

    def iter_all(self) -> Iterator[Entry]:
        """Every version in table order (key ascending, sequence descending). Only for a
        frozen memtable."""
        assert self.frozen, "iter_all needs a frozen memtable"
        data = self._data
        for sub in self._klists:
            for key in sub:
                x = data[key]
                if not isinstance(x, list):
                    yield x
                    continue
                versions: list[Any] = x
                j = len(versions) - 1
                while j >= 0:
                    yield versions[j]
                    j -= 1

    def __repr__(self) -> str:
        return f"MemTable(entries={self.entries}, bytes={self.approximate_size})"
