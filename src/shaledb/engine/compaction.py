"""Leveled compaction: choosing the work, dropping what no reader can see, writing tables.

Scores (LevelDB's): L0 by table count over ``l0_compaction_trigger``; Ln by bytes over its
target ``max_bytes_for_level_base * level_size_multiplier**(n-1)``. The highest score >= 1 is
compacted. An L0 compaction takes every L0 table (they may overlap, and a tombstone may only
be dropped when no older version can hide below it) plus the overlapping L1 tables. An Ln
compaction takes one table, round-robin after the level's compact pointer, plus the
overlapping tables of Ln+1; a table with no overlap below is moved, not rewritten.

Dropping rules (``smallest_snapshot`` is the oldest sequence any reader may still ask for):
- a version is dropped when a newer version of the same key is visible to every reader
  (its sequence <= smallest_snapshot);
- an expired PUT is rewritten as a DELETE (same sequence), which every reader already sees
  it as;
- a DELETE at or below smallest_snapshot is dropped when the output is the bottom of the
  tree for its key range (no deeper table overlaps it).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..options import Options
from .crypto import Keyring
from .dbformat import DELETE, PUT, Entry
from .filenames import table_name
from .iterator import merge_chunks
from .manifest import Version
from .ratelimit import RateLimiter
from .sstable import FileMeta, TableReader
from .sstable.writer import TableWriter, WriteAborted
from .vfs import FileSystem

#: The database is closing, so a running compaction stops early (raised by should_stop).
CompactionAborted = WriteAborted


@dataclasses.dataclass
class Compaction:
    """One unit of compaction work."""

    level: int
    inputs: list[FileMeta]  # tables at ``level``
    below: list[FileMeta]  # overlapping tables at ``level + 1`` (empty for an in-place rewrite)
    bottommost: bool = False
    manual: bool = False
    in_place: bool = False  # rewrite ``level`` into itself (a manual bottom-level compaction)

    @property
    def output_level(self) -> int:
        return self.level if self.in_place else self.level + 1

    @property
    def is_trivial_move(self) -> bool:
        return self.level > 0 and len(self.inputs) == 1 and not self.below and not self.manual

    def all_inputs(self) -> list[tuple[int, FileMeta]]:
        return ([(self.level, f) for f in self.inputs]
                + [(self.level + 1, f) for f in self.below])

    def key_range(self) -> tuple[bytes, bytes]:
        files = self.inputs + self.below
        return min(f.smallest for f in files), max(f.largest for f in files)

    @property
    def input_bytes(self) -> int:
        return sum(f.size for f in self.inputs + self.below)


def max_bytes_for_level(options: Options, level: int) -> int:
    """Target size of ``level`` (>= 1)."""
    return int(options.max_bytes_for_level_base * options.level_size_multiplier ** (level - 1))


def level_scores(version: Version, options: Options) -> list[float]:
    """Compaction score per level (the last level never compacts further)."""
    scores = [len(version.levels[0]) / options.l0_compaction_trigger]
    for lvl in range(1, options.num_levels - 1):
        scores.append(version.level_bytes(lvl) / max_bytes_for_level(options, lvl))
    return scores


def _is_bottommost(version: Version, c: Compaction) -> bool:
    lo, hi = c.key_range()
    return all(not version.overlapping(lvl, lo, hi)
               for lvl in range(c.output_level + 1, len(version.levels)))


def pick_compaction(version: Version, options: Options,
                    pointers: dict[int, bytes]) -> Compaction | None:
    """The most urgent compaction, or None when every level is within its target."""
    scores = level_scores(version, options)
    best = max(range(len(scores)), key=lambda i: scores[i])
    if scores[best] < 1.0:
        return None
    if best == 0:
        inputs = list(version.levels[0])
        lo = min(f.smallest for f in inputs)
        hi = max(f.largest for f in inputs)
        c = Compaction(0, inputs, version.overlapping(1, lo, hi))
    else:
        files = version.levels[best]
        ptr = pointers.get(best)
        chosen = files[0]
        if ptr is not None:
            for f in files:
                if f.largest > ptr:
                    chosen = f
                    break
        c = Compaction(best, [chosen], version.overlapping(best + 1, chosen.smallest,
                                                           chosen.largest))
    c.bottommost = _is_bottommost(version, c)
    return c


def range_compaction(version: Version, level: int, lo: bytes | None,
                     hi: bytes | None, in_place: bool = False) -> Compaction | None:
    """A manual compaction of ``level``'s tables meeting ``[lo, hi]`` into ``level + 1``
    (or, ``in_place``, back into ``level``: how the bottom level sheds tombstones and
    expired values)."""
    inputs = list(version.levels[0]) if level == 0 else version.overlapping(level, lo, hi)
    if level == 0 and not any(f.overlaps(lo, hi) for f in inputs):
        return None
    if not inputs or (in_place and level == 0):
        return None
    smallest = min(f.smallest for f in inputs)
    largest = max(f.largest for f in inputs)
    below = [] if in_place else version.overlapping(level + 1, smallest, largest)
    c = Compaction(level, inputs, below, manual=True, in_place=in_place)
    c.bottommost = _is_bottommost(version, c)
    return c


def drop_obsolete(entries: Iterator[Entry], smallest_snapshot: int, now_ms: int,
                  drop_tombstones: bool) -> Iterator[Entry]:
    """Apply the dropping rules (module docstring) to a stream in table order."""
    last_key: bytes | None = None
    newer_seq = 0  # sequence of the previous (newer) version of the same key
    for e in entries:
        key, negseq, kind, expire, _ = e
        seq = -negseq
        if key != last_key:
            last_key = key
            newer_seq = 1 << 64
        elif newer_seq == seq:
            continue  # the same entry twice (replayed WAL data already in a table)
        if newer_seq <= smallest_snapshot:
            newer_seq = seq
            continue
        newer_seq = seq
        if kind == PUT and expire and expire <= now_ms:
            kind = DELETE
            e = (key, negseq, DELETE, 0, b"")
        if kind == DELETE and drop_tombstones and seq <= smallest_snapshot:
            continue
        yield e


def drop_obsolete_chunks(chunks: Iterable[list[Entry]], smallest_snapshot: int, now_ms: int,
                         drop_tombstones: bool) -> Iterator[list[Entry]]:
    """:func:`drop_obsolete` over a stream of chunks, yielding what each chunk keeps."""
    last_key: bytes | None = None
    newer_seq = 0
    for chunk in chunks:
        out: list[Entry] = []
        for e in chunk:
            key, negseq, kind, expire, _ = e
            seq = -negseq
            if key != last_key:
                last_key = key
                newer_seq = 1 << 64
            elif newer_seq == seq:
                continue
            if newer_seq <= smallest_snapshot:
                newer_seq = seq
                continue
            newer_seq = seq
            if kind == PUT and expire and expire <= now_ms:
                kind = DELETE
                e = (key, negseq, DELETE, 0, b"")
            if kind == DELETE and drop_tombstones and seq <= smallest_snapshot:
                continue
            out.append(e)
        if out:
            yield out


@dataclasses.dataclass(frozen=True)
class MergeJob:
    """Everything a merge needs, as plain data (it may be sent to a worker process)."""

    dirpath: str
    l0_inputs: tuple[int, ...]  # L0 tables: each is its own source (they may overlap)
    level_inputs: tuple[int, ...]  # one sorted run at the input level (level >= 1)
    below: tuple[int, ...]  # one sorted run at the output level
    smallest_snapshot: int
    now_ms: int
    drop_tombstones: bool
    block_size: int
    compression: str
    target_file_size: int
    numbers: tuple[int, ...] | None = None  # output numbers given in advance (worker)
    write_rate: int | None = None  # bytes/s cap on the outputs (None: unlimited)
    #: What the manifest says of each input (``FileMeta.to_list()``): a table that holds
    #: something else is refused (see ``TableReader.check_identity``).
    inputs: tuple[tuple[Any, ...], ...] = ()


#: One limiter per (database, rate) and process, shared by that database's compactions, so
#: the cap holds across jobs (a limiter per job would grant each a fresh burst). Bounded.
_limiters: dict[tuple[str, int], RateLimiter] = {}
_limiters_lock = threading.Lock()
_MAX_LIMITERS = 64


def _limiter(dirpath: str, rate: int | None) -> RateLimiter | None:
    if not rate:
        return None
    key = (dirpath, rate)
    with _limiters_lock:
        lim = _limiters.get(key)
        if lim is None:
            if len(_limiters) >= _MAX_LIMITERS:
                _limiters.pop(next(iter(_limiters)))
            lim = _limiters[key] = RateLimiter(rate)
        return lim


def merge_writer(job: MergeJob, fs: FileSystem, new_number: Callable[[], int],
                 keyring: Keyring | None = None) -> TableWriter:
    """The table writer for ``job``'s outputs (encrypted with ``keyring``'s active data key
    when the database is encrypted)."""
    return TableWriter(fs, lambda n: table_name(job.dirpath, n), new_number,
                       block_size=job.block_size, compression=job.compression,
                       target_size=job.target_file_size,
                       max_outputs=None if job.numbers is None else len(job.numbers),
                       rate_limiter=_limiter(job.dirpath, job.write_rate), keyring=keyring)


def run_merge(job: MergeJob, open_table: Callable[[int], TableReader], writer: TableWriter,
              should_stop: Callable[[], bool]) -> None:
    """Merge the job's tables into ``writer``. On error the caller removes the files in
    ``writer.created`` that no manifest edit names."""
    def run_of(numbers: tuple[int, ...]) -> Iterator[list[Entry]]:
        for n in numbers:
            yield from open_table(n).iter_chunks(None, None, fill_cache=False)

    # Whole blocks merged by merge_chunks (bisect and list.sort, in C) and written by
    # TableBuilder.add_run: the entries go through one Python loop each, in
    # drop_obsolete_chunks and add_run, instead of heapq.merge's and a generator's per entry.
    sources = [open_table(n).iter_chunks(None, None, fill_cache=False)
               for n in job.l0_inputs]
    for run in (job.level_inputs, job.below):
        if run:
            sources.append(run_of(run))
    try:
        chunks = drop_obsolete_chunks(merge_chunks(sources, False), job.smallest_snapshot,
                                      job.now_ms, job.drop_tombstones)
        writer.write_chunks(chunks, should_stop)
    except BaseException:
        writer.abandon()
        raise
