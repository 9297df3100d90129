"""SAVE (and SHUTDOWN SAVE): durable checkpoints of the served database.

ShaleDB has no RDB snapshot: every write is already in the WAL. A checkpoint is what makes
the database cheapest to reopen and safe from power loss at that point: the memtable is
flushed to a sorted table (``DB.flush``) and the WAL is fsynced (``DB.sync``). Both run in
one dedicated worker thread, so the event loop goes on serving every client meanwhile (even
during SAVE, whose reply alone waits); fsyncs of ``appendfsync always`` run in another
thread and never queue behind a flush. Checkpoints run one at a time in arrival order.
BGSAVE takes a backup instead (:mod:`.backups`).

The server's ``last_save_time`` (unix seconds, LASTSAVE) is updated here when no backup
repository is configured (with one, LASTSAVE is the time of the last backup); it starts as
the server's start time, as in Redis (the state loaded at start is durable).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from typing import Protocol

import shaledb

from ..errors import CommandError


class CheckpointHost(Protocol):
    """What checkpoints use of the server: the database, LASTSAVE's time and the counters
    (a Protocol: the server imports this module)."""

    @property
    def db(self) -> shaledb.DB: ...

    last_save_time: int
    stats: collections.Counter[str]

log = logging.getLogger("shaledb.server")


def checkpoint(db: shaledb.DB) -> None:
    """Flush the memtable to a table and fsync the WAL (blocking)."""
    db.flush()
    db.sync()


class Checkpointer:
    """Runs the checkpoints of one server."""

    def __init__(self, server: CheckpointHost) -> None:
        self._server = server
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shaledb-save")
        self._pending: set[asyncio.Future[None]] = set()
        self._closed = False

    def save(self, lastsave: bool = True) -> asyncio.Future[None]:
        """Start a checkpoint after those already started; the future raises CommandError
        when it failed (the cause is logged). ``lastsave``: a success sets LASTSAVE's
        time (not when a backup follows: then the backup's success does)."""
        if self._closed:
            raise CommandError("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, checkpoint, self._server.db)
        result: asyncio.Future[None] = loop.create_future()
        self._pending.add(result)

        def finished(job: asyncio.Future[None]) -> None:
            self._pending.discard(result)
            exc = job.exception()
            if exc is None:
                if lastsave:
                    self._server.last_save_time = int(time.time())
                self._server.stats["checkpoints"] += 1
                result.set_result(None)
            else:
                self._server.stats["checkpoint_failures"] += 1
                log.error("checkpoint (SAVE) failed: %s", exc)
                result.set_exception(CommandError(f"checkpoint failed: {exc}"))

        job.add_done_callback(finished)
        return result

    async def close(self) -> None:
        """Start no more checkpoints; wait for the running ones, then stop the thread."""
        self._closed = True
        if self._pending:
            await asyncio.wait(list(self._pending))
        self._executor.shutdown(wait=True)


__all__ = ["Checkpointer", "checkpoint"]
