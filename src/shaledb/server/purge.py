"""Purging flushed physical databases in the background.

FLUSHDB and FLUSHALL do not delete keys: they point the logical database at a free physical
id (:mod:`shaledb.server.dbmap`) and hand the old id to the :class:`Purger`, which deletes
its entries in batches of at most ``PURGE_CHUNK`` keys, one batch per step of
:func:`run_purger` on the event loop, so no client waits long behind it. A purged id becomes
free again (reused oldest-first, which gives compaction time to drop its tombstones).

Nothing here is persisted: on open, every unmapped id is checked (one seek each) and those
that still hold entries are queued again, so a crash in the middle of a purge just resumes
it. When a flush needs a free id and none is left (about 200 flushes of non-empty databases
faster than the purger), the oldest queued id is purged at once, inside that command: the
command then costs what FLUSHDB cost before the map existed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Final

import shaledb

from ..errors import ShaleError
from .dbmap import PHYSICAL_DATABASES

if TYPE_CHECKING:
    from .keyspace import Keyspace

log = logging.getLogger("shaledb.server")

#: Most keys deleted by one purge step (one write batch).
PURGE_CHUNK: Final = 2_000
#: The purger uses at most about 1 / (1 + PURGE_PAUSE_FACTOR) of the loop's time.
PURGE_PAUSE_FACTOR: Final = 3.0
#: Seconds between checks for new work while nothing is queued.
PURGE_IDLE_SECONDS: Final = 0.05


class Purger:
    """Free and queued physical ids of one keyspace, and the purge in progress."""

    def __init__(self, keyspace: Keyspace) -> None:
        self._ks = keyspace
        mapped = set(keyspace.map)
        #: Ids known to hold no entry, oldest-purged first.
        self.free: collections.deque[int] = collections.deque()
        #: Ids that may hold entries, purged in this order.
        self.queue: collections.deque[int] = collections.deque()
        for phys in range(PHYSICAL_DATABASES):
            if phys not in mapped:
                (self.free if keyspace.physical_empty(phys) else self.queue).append(phys)
        #: Last key deleted in queue[0] (the next step starts there; it is gone already).
        self._cursor: bytes | None = None
        #: Entries deleted by purging since start.
        self.purged_keys = 0

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
        for ek, _ in ks.raw_range(lo, bytes((phys + 1,)), limit=max_keys):
            batch.delete(ek)
            last = ek
        if last is not None:
            ks.db.write(batch)
            self.purged_keys += len(batch)
        if last is None or len(batch) < max_keys:
            self.queue.popleft()
            self.free.append(phys)
            self._cursor = None
        else:
            self._cursor = last
        return bool(self.queue)


async def run_purger(keyspace: Keyspace) -> None:
    """Purge queued ids step by step on the event loop until cancelled, pausing after each
    step so the purger takes a bounded share of the loop."""
    purger = keyspace.purger
    failed = False
    while True:
        if not purger.queue:
            await asyncio.sleep(PURGE_IDLE_SECONDS)
            continue
        t0 = time.perf_counter()
        try:
            purger.step(PURGE_CHUNK)
            failed = False
        except ShaleError as exc:
            if not failed:  # a read-only database fails every step: say it once
                log.warning("purging flushed keys failed (will retry): %s", exc)
            failed = True
            await asyncio.sleep(1.0)
            continue
        await asyncio.sleep(min(0.1, PURGE_PAUSE_FACTOR * (time.perf_counter() - t0)))


__all__ = ["PURGE_CHUNK", "Purger", "run_purger"]
