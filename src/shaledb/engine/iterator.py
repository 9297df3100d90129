"""Merging sources of internal entries into what a reader sees.

Every source yields ``(key, -seq, kind, expire_at_ms, value)`` tuples in table order (key
ascending, sequence descending) or exactly reversed. ``heapq.merge`` interleaves them (the
``(key, -seq)`` prefix is unique, so tuples never compare past it); :func:`visible` then keeps,
per user key, the newest version a reader at sequence ``seq`` may see, and drops deletions and
expired values.

The read path (range scans and seeks) works on *chunks* instead: each source yields lists of
entries (a memtable chunk, a table block), and :func:`merge_chunks` merges them a round at a
time with C calls only -- the smallest last entry of the current chunks bounds what every
source has shown, ``bisect`` cuts each chunk there, and one ``list.sort`` (timsort merges the
sorted runs) orders the round -- so the interpreter touches each entry once, in
:func:`visible_chunks`, instead of once per generator layer and heap step.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

from .dbformat import PUT, Entry
from .memtable import MemTable

T = TypeVar("T")

# Memtable chunks start small (a short seek reads a few keys) and grow for long scans.
_FIRST_CHUNK: Final = 16
_MAX_CHUNK: Final = 1024


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


def memtable_chunks(mem: MemTable, lo: bytes | None, hi: bytes | None, reverse: bool,
                    seq: int, first: int = _FIRST_CHUNK) -> Iterator[list[Entry]]:
    """:func:`memtable_source` as the chunks it reads, the first of ``first`` keys."""
    lo_inc = True
    size = max(1, first)
    while True:
        if reverse:
            chunk = mem.scan_chunk(lo, True, hi, False, True, seq, size)
        else:
            chunk = mem.scan_chunk(lo, lo_inc, hi, False, False, seq, size)
        if chunk:
            yield chunk
        if len(chunk) < size:
            return
        size = min(size * 4, _MAX_CHUNK)
        if reverse:
            hi = chunk[-1][0]
        else:
            lo = chunk[-1][0]
            lo_inc = False


def concat_chunks(files: list[T], open_chunks: Callable[[T], Iterator[list[Entry]]]
                  ) -> Iterator[list[Entry]]:
    """Chain the chunks of disjoint, ordered tables, opening each only when reached."""
    for f in files:
        yield from open_chunks(f)


def _cut_descending(chunk: list[Entry], pos: int, bound: Entry) -> int:
    """Index of the first entry from ``pos`` on that is below ``bound`` (descending chunk)."""
    n = len(chunk)
    while pos < n and chunk[pos] >= bound:
        pos += 1
    return pos


def merge_chunks(sources: list[Iterator[list[Entry]]], reverse: bool
                 ) -> Iterator[list[Entry]]:
    """One ordered stream of chunks from many (each chunk non-empty and ordered)."""
    if len(sources) == 1:
        yield from sources[0]
        return
    # Per live source: its current chunk, the position of its first unmerged entry, itself.
    chunks: list[list[Entry]] = []
    positions: list[int] = []
    live: list[Iterator[list[Entry]]] = []
    for src in sources:
        first = next(src, None)
        if first:
            chunks.append(first)
            positions.append(0)
            live.append(src)
    while True:
        # Sources whose chunk the last round used up move on now, not before that round
        # was handed out: a short seek that got its pairs never reads further.
        i = 0
        while i < len(live):
            if positions[i] < len(chunks[i]):
                i += 1
                continue
            nxt = next(live[i], None)
            if nxt:
                chunks[i] = nxt
                positions[i] = 0
                i += 1
            else:
                del chunks[i], positions[i], live[i]
        if len(live) <= 1:
            break
        # Every source has shown all its entries up to the last of its current chunk, so
        # everything up to the smallest of those (largest, reversed) can go out now.
        bound = chunks[0][-1]
        for c in chunks:
            last = c[-1]
            if (last > bound) if reverse else (last < bound):
                bound = last
        out: list[Entry] = []
        for i in range(len(live)):
            c = chunks[i]
            pos = positions[i]
            cut = _cut_descending(c, pos, bound) if reverse else bisect_right(c, bound, pos)
            if cut > pos:
                out += c[pos:cut] if pos or cut < len(c) else c
                positions[i] = cut
        out.sort(reverse=reverse)
        yield out
    if live:
        c = chunks[0]
        pos = positions[0]
        yield c[pos:] if pos else c
        yield from live[0]


def visible_chunks(chunks: Iterable[list[Entry]], seq: int, now_ms: int, reverse: bool,
                   limit: int | None = None) -> Iterator[list[tuple[bytes, bytes]]]:
    """:func:`visible` over chunks of a merged stream, as lists of (key, value), stopping
    after ``limit`` pairs (None: no limit)."""
    left = -1 if limit is None else limit
    if left == 0:
        return
    if not reverse:
        last = None
        for chunk in chunks:
            out: list[tuple[bytes, bytes]] = []
            for key, negseq, kind, expire, value in chunk:
                if key == last or -negseq > seq:
                    continue
                last = key
                if kind == PUT and (expire == 0 or expire > now_ms):
                    out.append((key, value))
                    left -= 1
                    if left == 0:
                        yield out
                        return
            if out:
                yield out
        return
    # Reversed: a key's versions arrive oldest first, so the last visible one wins.
    cur: bytes | None = None
    best: Entry | None = None
    for chunk in chunks:
        out = []
        for e in chunk:
            key = e[0]
            if key != cur:
                if best is not None and best[2] == PUT and (best[3] == 0 or best[3] > now_ms):
                    out.append((best[0], best[4]))
                    left -= 1
                    if left == 0:
                        yield out
                        return
                cur = key
                best = None
            if -e[1] <= seq:
                best = e
        if out:
            yield out
    if best is not None and best[2] == PUT and (best[3] == 0 or best[3] > now_ms):
        yield [(best[0], best[4])]


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

