"""``appendfsync always``: replies to writes wait for an fsync that covers them, and the
writes of many clients share one fsync (group commit).

Commands run on the event loop and write to the engine without fsync (the write reaches the
OS before the command returns). A connection that wrote asks :meth:`SyncGroup.barrier` for a
future and holds its replies until the future is done. The first barrier of an event-loop
turn schedules one ``db.sync()`` in a worker thread at the end of the turn; every barrier
requested until that fsync starts shares it, and barriers requested while it runs share the
next one. The loop never blocks on the disk, so reads and other clients go on meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import shaledb


class SyncGroup:
    """Batches fsync requests of one event loop into as few ``db.sync()`` calls as possible."""

    def __init__(self, db: shaledb.DB, loop: asyncio.AbstractEventLoop,
                 executor: concurrent.futures.Executor) -> None:
        self._db = db
        self._loop = loop
        self._executor = executor
        self._running: asyncio.Future[None] | None = None
        self._next: asyncio.Future[None] | None = None
        #: fsyncs done (for tests and stats).
        self.syncs = 0
        #: The last sequence number when the running fsync started.
        self._covers = 0

    def barrier(self) -> asyncio.Future[None]:
        """A future done once an fsync that started after this call has finished (it
        raises the engine's error when that fsync failed)."""
        if self._next is None:
            self._next = self._loop.create_future()
            if self._running is None:
                self._loop.call_soon(self._kick)
        return self._next

    def _kick(self) -> None:
        if self._running is not None or self._next is None:
            return
        fut, self._next = self._next, None
        self._running = fut
        # Every write committed by now is in the WAL the fsync covers.
        self._covers = self._db.last_sequence
        job = self._loop.run_in_executor(self._executor, self._db.sync)
        job.add_done_callback(self._done)

    def _done(self, job: asyncio.Future[None]) -> None:
        fut, self._running = self._running, None
        assert fut is not None
        self.syncs += 1
        exc = job.exception()
        if exc is not None:
            fut.set_exception(exc)
        else:
            self.synced(self._covers)
            fut.set_result(None)
        if self._next is not None:
            self._kick()

    def synced(self, seq: int) -> None:
        """An fsync succeeded: every write up to ``seq`` is durable (a hook)."""

    @property
    def idle(self) -> bool:
        """Whether no fsync is running or wanted."""
        return self._running is None and self._next is None

    async def wait_idle(self) -> None:
        """Wait until every requested fsync has finished."""
        while not self.idle:
            fut = self._running or self._next
            assert fut is not None
            await asyncio.wait([fut])
