"""Merging sources of internal entries into what a reader sees.

Every source yields ``(key, -seq, kind, expire_at_ms, value)`` tuples in table order (key
ascending, sequence descending) or exactly reversed. ``heapq.merge`` interleaves them (the
``(key, -seq)`` prefix is unique, so tuples never compare past it); :func:`visible` then keeps,
per user key, the newest version a reader at sequence ``seq`` may see, and drops deletions and
expired values.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .dbformat import PUT, Entry
from .memtable import MemTable

T = TypeVar("T")

# Memtable chunks start small (a short seek reads a few keys) and grow for long scans.
_FIRST_CHUNK = 16
_MAX_CHUNK = 1024


def memtable_source(mem: MemTable, lo: bytes | None, hi: bytes | None, reverse: bool,
                    seq: int) -> Iterator[Entry]:
    """The newest version (visible at ``seq``) of each key of ``mem`` in ``[lo, hi)``.

    Reads the memtable in chunks, each under the memtable lock, re-seeking after the last key
    returned, so concurrent inserts can never invalidate the iteration."""
    lo_inc = True
    size = _FIRST_CHUNK
    while True:
        if reverse:
            chunk = mem.scan_chunk(lo, True, hi, False, True, seq, size)
        else:
            chunk = mem.scan_chunk(lo, lo_inc, hi, False, False, seq, size)
        yield from chunk
        if len(chunk) < size:
            return
        size = min(size * 4, _MAX_CHUNK)
        if reverse:
            hi = chunk[-1][0]
        else:
            lo = chunk[-1][0]
            lo_inc = False


def merge(sources: list[Iterator[Entry]], reverse: bool) -> Iterator[Entry]:
    """One ordered stream from many."""
    if len(sources) == 1:
        return sources[0]
    return heapq.merge(*sources, reverse=reverse)


def visible(entries: Iterable[Entry], seq: int, now_ms: int, reverse: bool
            ) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for each user key whose newest version at ``seq`` is a live PUT."""
    if not reverse:
        last = None
        for key, negseq, kind, expire, value in entries:
            if key == last or -negseq > seq:
                continue
            last = key
            if kind == PUT and (expire == 0 or expire > now_ms):  # is_live, inlined
                yield key, value
        return
    # Reversed: a key's versions arrive oldest first, so the last visible one wins.
    cur: bytes | None = None
    best: Entry | None = None
    for e in entries:
        key = e[0]
        if key != cur:
            if best is not None and best[2] == PUT and (best[3] == 0 or best[3] > now_ms):
                yield best[0], best[4]
            cur = key
            best = None
        if -e[1] <= seq:
            best = e
    if best is not None and best[2] == PUT and (best[3] == 0 or best[3] > now_ms):
        yield best[0], best[4]


def concat(files: list[T], open_iter: Callable[[T], Iterator[Entry]]) -> Iterator[Entry]:
    """Chain the iterators of disjoint, ordered tables, opening each only when reached."""
    for f in files:
        yield from open_iter(f)


class Pinned(Iterator[T]):
    """Iterates ``it`` and calls ``release`` once: when ``it`` ends, on :meth:`close`, or when
    this object is collected, whichever comes first.

    A pinned version must be released even if the caller drops an iterator it never
    finished (or never started). A generator's ``finally`` cannot promise that: Python runs
    it only for a started generator, and a mypyc-compiled generator never runs it on
    collection (nor can it carry a weak reference for ``weakref.finalize``). ``__del__`` on
    this small object works in both builds.
    """

    __slots__ = ("_it", "_release")

    def __init__(self, it: Iterator[T], release: Callable[[], None]) -> None:
        self._it = it
        self._release = release

    def __iter__(self) -> Pinned[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._it)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Stop early and release now (iteration afterwards ends at once)."""
        self._it = iter(())
        self._release()

    def __del__(self) -> None:
        self._release()
