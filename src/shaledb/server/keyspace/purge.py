"""Purging in the background: flushed physical databases, and the chunks of large strings
nothing references any more.

FLUSHDB and FLUSHALL do not delete keys: they point the logical database at a free physical
id (:mod:`shaledb.server.keyspace.dbmap`) and hand the old id to the :class:`Purger`, which deletes
its entries in batches of at most ``PURGE_CHUNK`` keys, one batch per step of
:func:`run_purger` on the event loop, so no client waits long behind it. A purged id becomes
free again (reused oldest-first, which gives compaction time to drop its tombstones). A
chunked string's header deleted by the purge gets a garbage record in the same batch, and
the id's key count record goes with its last batch.

Garbage records (``0xF1`` + chunk-set id -> chunks left, written in the same batch as the
deletion or overwrite of the header that named the chunk set) are the other work
(:meth:`Purger.collect`): each step deletes up to ``PURGE_CHUNK`` chunks, from the last one
down, and in the same batch lowers the record's count, or deletes the record with the last
chunk. A crash at any point leaves a record that names exactly the chunks still to delete.
The purger finds the records through the ids the writes listed (``Keyspace.garbage_ids``,
point reads), not by scanning the garbage range: records come and go like a queue, and a
scan would skip the tombstones of every record deleted before it until compaction: 6,000
garbage records (as many overwrites of chunked strings) took 20.6 s to purge that way, 0.3 s
this way. Records not
listed (found at open, or past ``GARBAGE_LIST_MAX``) are found by one scan.
Nothing can name a chunk set once its garbage record exists (the header that named it is
gone in the same batch, and chunk sets have one header), so these steps need no
coordination with commands.

Nothing else here is persisted: on open, every unmapped id is checked (one seek each) and
those that still hold entries are queued again, so a crash in the middle of a purge just
resumes it. When a flush needs a free id and none is left (about 200 flushes of non-empty
databases faster than the purger), the oldest queued id is purged at once, inside that
command: the command then costs what FLUSHDB cost before the map existed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Final, Protocol

import shaledb

from ...errors import ShaleError
from .dbmap import (
    GARBAGE_PREFIX,
    GROUP_PREFIX,
    MEMBER_GARBAGE_PREFIX,
    MEMBER_PREFIX,
    PHYSICAL_DATABASES,
    SCORE_PREFIX,
    count_key,
)
from .values import (
    GARBAGE_LIST_MAX,
    chunk_key,
    decode_garbage,
    encode_garbage,
    garbage_id,
    garbage_key,
    id_of,
    member_garbage_key,
    member_prefix,
    orphan,
)


class PurgedKeyspace(Protocol):
    """What the purger uses of the keyspace (:class:`~.keyspace.Keyspace`). A Protocol:
    the keyspace owns its purger, so naming the class here would be an import cycle."""

    db: shaledb.DB
    map: list[int]
    counts: dict[int, tuple[int, int]]
    garbage_ids: collections.deque[int]
    garbage_unlisted: bool
    member_garbage_ids: collections.deque[int]
    member_garbage_unlisted: bool
    #: A script is running past busy-reply-threshold: no step until it ends.
    frozen: bool

    def fenced(self) -> bool: ...

    @property
    def purger(self) -> Purger: ...
    @property
    def garbage_pending(self) -> bool: ...
    def raw_range(self, lo: bytes, hi: bytes, *, limit: int | None = None
                  ) -> Iterator[tuple[bytes, bytes]]: ...
    def physical_empty(self, phys: int) -> bool: ...
    def write(self, batch: shaledb.WriteBatch, *, garbage: Iterable[int] = (),
              member_garbage: Iterable[int] = ()) -> None: ...

log = logging.getLogger("shaledb.server")

#: Most keys deleted by one purge step (one write batch).
PURGE_CHUNK: Final = 2_000
#: The purger uses at most about 1 / (1 + PURGE_PAUSE_FACTOR) of the loop's time.
PURGE_PAUSE_FACTOR: Final = 3.0
#: Seconds between checks for new work while nothing is queued.
PURGE_IDLE_SECONDS: Final = 0.05


class Purger:
    """Free and queued physical ids of one keyspace, and the purge in progress."""

    def __init__(self, keyspace: PurgedKeyspace) -> None:
        self._ks = keyspace
        #: Ids known to hold no entry, oldest-purged first.
        self.free: collections.deque[int] = collections.deque()
        #: Ids that may hold entries, purged in this order.
        self.queue: collections.deque[int] = collections.deque()
        #: Last key deleted in queue[0] (the next step starts there; it is gone already).
        self._cursor: bytes | None = None
        self.rescan()
        #: Entries deleted by purging since start.
        self.purged_keys = 0
        #: Chunks of orphaned chunk sets deleted since start.
        self.purged_chunks = 0
        #: Members of orphaned hashes and sets deleted since start.
        self.purged_members = 0

    def rescan(self) -> None:
        """Find the free and the queued ids again from the database (at open, and after a
        replica's data was replaced or it became a primary)."""
        mapped = set(self._ks.map)
        self.free.clear()
        self.queue.clear()
        self._cursor = None
        for phys in range(PHYSICAL_DATABASES):
            if phys not in mapped:
                (self.free if self._ks.physical_empty(phys) else self.queue).append(phys)

    @property
    def busy(self) -> bool:
        """Whether a flushed id or garbage waits to be purged."""
        return bool(self.queue) or self._ks.garbage_pending

    def reserve(self, index: int) -> int:
        """The free id a transaction that already took ``index`` free ids maps next. When
        there is none, queued ids are purged now until there is."""
        while len(self.free) <= index:
            if not self.queue:
                raise RuntimeError("no physical database id is free or queued")
            while self.step(PURGE_CHUNK) and len(self.free) <= index:
                pass
        return self.free[index]

    def committed(self, taken: list[int], released: list[int]) -> None:
        """A transaction mapped ``taken`` (the first free ids) and unmapped ``released``."""
        for phys in taken:
            got = self.free.popleft()
            assert got == phys, (got, phys)
        self.queue.extend(released)

    def step(self, max_keys: int) -> bool:
        """Delete up to ``max_keys`` entries of the oldest queued id (one write batch);
        whether more work remains."""
        if not self.queue:
            return False
        ks, phys = self._ks, self.queue[0]
        lo = self._cursor if self._cursor is not None else bytes((phys,))
        batch = shaledb.WriteBatch()
        last = None
        deleted = 0
        garbage: list[int] = []
        member_garbage: list[int] = []
        for ek, raw in ks.raw_range(lo, bytes((phys + 1,)), limit=max_keys):
            batch.delete(ek)
            orphan(batch, raw, garbage, member_garbage)
            deleted += 1
            last = ek
        done = last is None or deleted < max_keys
        if done:
            batch.delete(count_key(phys))  # a free id has no count record
        ks.write(batch, garbage=garbage, member_garbage=member_garbage)
        self.purged_keys += deleted
        if done:
            self.queue.popleft()
            self.free.append(phys)
            ks.counts.pop(phys, None)
            self._cursor = None
        else:
            self._cursor = last
        return bool(self.queue)

    def collect(self, max_chunks: int) -> bool:
        """Delete up to ``max_chunks`` chunks of orphaned chunk sets (one write batch, with
        the garbage records updated to match); whether garbage remains. Works through the
        ids the keyspace listed with point reads; scans the garbage range only for records
        it did not list (found at open, or past the list's bound). Whether chunk garbage
        remains (:meth:`collect_members` does the members of hashes and sets)."""
        ks = self._ks
        ids = ks.garbage_ids
        if not ids and ks.garbage_unlisted:
            for gk, _ in ks.raw_range(bytes((GARBAGE_PREFIX,)), bytes((GARBAGE_PREFIX + 1,)),
                                      limit=GARBAGE_LIST_MAX):
                ids.append(garbage_id(gk))
            ks.garbage_unlisted = len(ids) >= GARBAGE_LIST_MAX
        batch = shaledb.WriteBatch()
        budget = max_chunks
        done = 0
        while done < len(ids) and budget > 0:
            cid = ids[done]
            gk = garbage_key(cid)
            raw = ks.db.get(gk)
            if raw is None:
                done += 1  # finished already (listed twice)
                continue
            left = decode_garbage(raw)
            n = min(left, budget)
            for index in range(left - n, left):
                batch.delete(chunk_key(cid, index))
            budget -= n
            if n < left:
                batch.put(gk, encode_garbage(left - n))
                break
            batch.delete(gk)
            done += 1
        if len(batch):
            ks.write(batch)
            self.purged_chunks += max_chunks - budget
        for _ in range(done):
            ids.popleft()
        return bool(ids) or ks.garbage_unlisted

    def collect_members(self, max_members: int) -> bool:
        """Delete up to ``max_members`` members of orphaned collections (hashes, sets
        deleted, expired, overwritten or flushed: one write batch, with the member garbage
        records updated to match); whether garbage remains. A record's value says where the
        previous step stopped (``0x01`` + the last member it deleted; ``0x02`` + the last
        score index entry it deleted once the members are gone: a sorted set's index goes
        after its members; ``0x03`` + the last key suffix deleted in a stream's group range
        ``0xF5``, walked last), so a step never walks the tombstones of the records deleted
        before it, and a crash resumes there: the records before it are deleted in the same
        batch that records it."""
        ks = self._ks
        ids = ks.member_garbage_ids
        if not ids and ks.member_garbage_unlisted:
            for gk, _ in ks.raw_range(bytes((MEMBER_GARBAGE_PREFIX,)),
                                      bytes((MEMBER_GARBAGE_PREFIX + 1,)),
                                      limit=GARBAGE_LIST_MAX):
                ids.append(id_of(gk))
            ks.member_garbage_unlisted = len(ids) >= GARBAGE_LIST_MAX
        batch = shaledb.WriteBatch()
        budget = max_members
        done = 0
        while done < len(ids) and budget > 0:
            cid = ids[done]
            gk = member_garbage_key(cid)
            raw = ks.db.get(gk)
            if raw is None:
                done += 1  # finished already (listed twice)
                continue
            # Three ranges: the members (0xF2), then a sorted set's score index (0xF4), then
            # a stream's group records (0xF5; none for other types: one seek each). The
            # record says which one a step stopped in.
            stopped = False
            for marker, first in ((1, MEMBER_PREFIX), (2, SCORE_PREFIX), (3, GROUP_PREFIX)):
                if raw and raw[0] > marker:
                    continue  # that range is done already
                prefix = bytes((first,)) + member_prefix(cid)[1:]
                lo = prefix + raw[1:] + b"\x00" if raw and raw[0] == marker else prefix
                last = None
                n = 0
                for mk, _ in ks.raw_range(lo, bytes((first,)) + member_prefix(cid + 1)[1:],
                                          limit=budget):
                    batch.delete(mk)
                    last = mk
                    n += 1
                budget -= n
                if budget == 0 and last is not None:  # maybe more: go on after it
                    batch.put(gk, bytes((marker,)) + last[len(prefix):])
                    stopped = True
                    break
            if stopped:
                break
            batch.delete(gk)
            done += 1
        if len(batch):
            ks.write(batch)
            self.purged_members += max_members - budget
        for _ in range(done):
            ids.popleft()
        return bool(ids) or ks.member_garbage_unlisted


async def run_purger(keyspace: PurgedKeyspace) -> None:
    """Purge queued ids, then garbage chunk sets, step by step on the event loop until
    cancelled, pausing after each step so the purger takes a bounded share of the loop."""
    purger = keyspace.purger
    failed = False
    while True:
        if not purger.busy or keyspace.frozen or keyspace.fenced():
            await asyncio.sleep(PURGE_IDLE_SECONDS)
            continue
        t0 = time.perf_counter()
        try:
            if purger.queue:
                purger.step(PURGE_CHUNK)
            elif keyspace.garbage_ids or keyspace.garbage_unlisted:
                purger.collect(PURGE_CHUNK)
            else:
                purger.collect_members(PURGE_CHUNK)
            failed = False
        except ShaleError as exc:
            if not failed:  # a read-only database fails every step: say it once
                log.warning("purging flushed keys failed (will retry): %s", exc)
            failed = True
            await asyncio.sleep(1.0)
            continue
        except Exception:  # noqa: BLE001 - a bug must not end purging for the server's life
            # Left to the task, it would end it silently: garbage would pile up unseen.
            log.exception("purge step failed (a bug: please report it); retrying")
            await asyncio.sleep(1.0)
            continue
        await asyncio.sleep(min(0.1, PURGE_PAUSE_FACTOR * (time.perf_counter() - t0)))


__all__ = ["PURGE_CHUNK", "Purger", "run_purger"]
