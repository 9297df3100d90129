"""The server's backups: BGSAVE, SAVE and the schedule, into the configured repository.

A backup is ``DB.backup(repo)`` (src/shaledb/backup; docs/operations.md): an online,
consistent snapshot at a sequence number, taken while writes go on. It runs in one dedicated
worker thread, never on the event loop; every other field here is read and written on the
event loop only (INFO, /health and /metrics run there too), so no lock is needed but the
backup's own.

One backup at a time: BGSAVE while one runs answers Redis' ``Background save already in
progress`` (``BGSAVE SCHEDULE``: run one more when it ends); a scheduled start that comes
due while one runs is deferred the same way. Schedule: ``backup-interval`` seconds between
the *starts* of backups (0: none); the first one interval after the server starts or after
the interval is turned on.

Shutdown stops a running backup at its next chunk (1 MiB; the progress callback raises
:class:`BackupStopped`): the repository then holds no trace of it but an unreferenced
upload, which the next backup removes (the backup's manifest is written last), and the
database can close at once instead of after a copy of the whole database.

What the last attempt did (``ok``/``err``, its time, duration, size, error) is kept for
INFO persistence, /metrics and /health: a failed last backup makes /health *degraded*
until one succeeds. LASTSAVE (``last_save_time``) is the time of the newest successful
backup: at start, the newest one already in the repository, else the start time (Redis'
start value).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from typing import Any, Final, Protocol

import shaledb

from ...backup.repository import BackupInfo, Repository
from ..errors import CommandError

log = logging.getLogger("shaledb.server.backup")

#: Seconds shutdown waits for a stopped backup before saying so in the log.
JOIN_WARNING: Final = 5.0

#: What BGSAVE and SAVE answer on a server without a repository.
NO_REPOSITORY: Final = (
    "no backup repository is configured: start the server with --backup-repo PATH "
    "(backup-repo in the config file, or SHALEDB_BACKUP_REPO) to take backups with "
    "BGSAVE; SAVE alone checkpoints the database (flush and fsync)")


class BackupStopped(Exception):
    """Raised inside a running backup to stop it (shutdown)."""


class BackupSettings(Protocol):
    """The settings backups read, live (CONFIG SET changes backup_interval)."""

    @property
    def backup_interval(self) -> float: ...


class BackupHost(Protocol):
    """What backups use of the server (a Protocol: the server imports this module)."""

    @property
    def db(self) -> shaledb.DB: ...
    @property
    def config(self) -> BackupSettings: ...

    last_save_time: int
    bgsave_in_progress: bool


@dataclasses.dataclass(frozen=True)
class BackupAttempt:
    """One finished backup (successful or not)."""

    #: "ok" or "err" (Redis' rdb_last_bgsave_status values).
    status: str
    #: What started it: "bgsave", "save" or "schedule".
    trigger: str
    #: Unix time of its start, and its length in seconds.
    started: float
    duration: float
    #: The backup (None when it failed).
    info: BackupInfo | None = None
    #: Why it failed ("" when ok).
    error: str = ""


@dataclasses.dataclass(frozen=True)
class BackupStatus:
    """A copy of the backups' state (for INFO, /metrics, /health)."""

    configured: bool
    interval: float
    in_progress: bool
    current_trigger: str
    current_started: float
    current_bytes: int
    current_total: int
    #: Attempts since start by result: ok, err, stopped.
    results: dict[str, int]
    #: The last finished attempt (None: none yet).
    last: BackupAttempt | None
    #: The newest successful backup (this run's, else the newest in the repository).
    last_ok: BackupInfo | None

    def health_reason(self) -> str | None:
        """Why /health is degraded because of backups, or None."""
        last = self.last
        if last is None or last.status == "ok":
            return None
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last.started))
        return (f"the last backup ({last.trigger}, started {when}) failed: {last.error}; "
                f"fix the repository (space, permissions), then BGSAVE")


class BackupScheduler:
    """BGSAVE, SAVE and scheduled backups of one server."""

    def __init__(self, server: BackupHost, repository: Repository | None) -> None:
        self._server = server
        self.repository = repository
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shaledb-backup")
        #: Set to stop the running backup (shutdown); read by the backup thread.
        self._stop = threading.Event()
        self._closed = False
        self._running: asyncio.Future[BackupInfo] | None = None
        #: The trigger of a backup to start when the running one ends (BGSAVE SCHEDULE, a
        #: schedule that came due meanwhile), or None.
        self._scheduled: str | None = None
        self._current_trigger = ""
        self._current_started = 0.0
        self._current_bytes = 0
        self._current_total = 0
        self._results: collections.Counter[str] = collections.Counter()
        self._last: BackupAttempt | None = None
        self._last_ok: BackupInfo | None = None
        self._anchor = time.monotonic()
        self._interval = 0.0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def configured(self) -> bool:
        """Whether a repository is configured."""
        return self.repository is not None

    # -- control (event loop) ------------------------------------------------------------
    def start(self, newest: BackupInfo | None) -> None:
        """Start the schedule (it idles while backup-interval is 0). ``newest`` is the
        newest backup already in the repository (LASTSAVE and INFO start from it)."""
        if newest is not None:
            self._last_ok = newest
            self._server.last_save_time = int(newest.created_at.timestamp())
        self._anchor = time.monotonic()
        self._interval = float(self._server.config.backup_interval)
        self._wake = asyncio.Event()
        if self.repository is not None:
            self._task = asyncio.get_running_loop().create_task(self._schedule())

    def reschedule(self, interval: float) -> None:
        """Follow a new backup-interval (CONFIG SET): the next start is the last start plus
        ``interval``, or ``interval`` from now when the schedule was off."""
        if self._interval <= 0 < interval and self._running is None:
            self._anchor = time.monotonic()
        self._interval = float(interval)
        if self._wake is not None:
            self._wake.set()

    def bgsave(self, schedule: bool) -> bytes:
        """BGSAVE [SCHEDULE]: start a backup and return at once. While one runs: with
        ``schedule``, run another when it ends, else refuse (Redis' replies)."""
        self._check_usable()
        if self._running is not None:
            if schedule:
                self._scheduled = "bgsave"
                return b"Background saving scheduled"
            raise CommandError("Background save already in progress")
        self._begin("bgsave")
        return b"Background saving started"

    def save(self) -> asyncio.Future[BackupInfo]:
        """SAVE: start a backup; the future gives its BackupInfo, or raises CommandError.
        Refused while one runs (as Redis refuses SAVE during a BGSAVE)."""
        self._check_usable()
        if self._running is not None:
            raise CommandError("Background save already in progress")
        return self._begin("save")

    def status(self) -> BackupStatus:
        """A copy of the state."""
        running = self._running is not None
        return BackupStatus(
            configured=self.configured, interval=self._interval, in_progress=running,
            current_trigger=self._current_trigger if running else "",
            current_started=self._current_started if running else 0.0,
            current_bytes=self._current_bytes if running else 0,
            current_total=self._current_total if running else 0,
            results={r: self._results[r] for r in ("ok", "err", "stopped")},
            last=self._last, last_ok=self._last_ok)

    def stop(self) -> None:
        """Start no more backups; tell the running one to stop at its next chunk (returns
        at once; see :meth:`close`)."""
        self._closed = True
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        """Stop (:meth:`stop`), wait for the running backup to end, stop the thread."""
        self.stop()
        running = self._running
        if running is not None:
            # Its end (stopped, failed or done) is recorded by _finished, not here.
            await asyncio.wait([running], timeout=JOIN_WARNING)
            if not running.done():
                log.warning("waiting for the running backup to stop (a write to the "
                            "repository is taking long)")
                await asyncio.wait([running])
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    # -- running one ---------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self.repository is None:
            raise CommandError(NO_REPOSITORY)
        if self._closed:
            raise CommandError("the server is shutting down")

    def _begin(self, trigger: str) -> asyncio.Future[BackupInfo]:
        loop = asyncio.get_running_loop()
        self._current_trigger = trigger
        self._current_started = time.time()
        self._current_bytes = self._current_total = 0
        self._server.bgsave_in_progress = True
        started = time.monotonic()
        if trigger == "schedule":
            self._anchor = started
        log.info("backup started (%s)", trigger)
        job = loop.run_in_executor(self._executor, self._take)
        self._running = job
        result: asyncio.Future[BackupInfo] = loop.create_future()

        def finished(job: asyncio.Future[BackupInfo]) -> None:
            self._finished(job, trigger, started, result)

        job.add_done_callback(finished)
        return result

    def _take(self) -> BackupInfo:
        """The backup itself (the worker thread)."""
        assert self.repository is not None
        if self._stop.is_set():
            raise BackupStopped("the server is shutting down")
        return self._server.db.backup(self.repository, progress=self._progress)

    def _progress(self, done: int, total: int) -> None:
        # Called by the backup thread after each chunk: the place to stop it. Two int
        # stores, each atomic; the loop only reads them for INFO.
        if self._stop.is_set():
            raise BackupStopped("the server is shutting down")
        self._current_bytes, self._current_total = done, total

    def _finished(self, job: asyncio.Future[BackupInfo], trigger: str, started: float,
                  result: asyncio.Future[BackupInfo]) -> None:
        duration = time.monotonic() - started
        self._running = None
        self._server.bgsave_in_progress = False
        exc = job.exception()
        if isinstance(exc, BackupStopped):
            self._results["stopped"] += 1
            log.warning("backup (%s) stopped after %.1f s: %s", trigger, duration, exc)
            result.set_exception(CommandError(f"backup stopped: {exc}"))
        elif exc is not None:
            self._results["err"] += 1
            error = f"{type(exc).__name__}: {exc}"
            self._last = BackupAttempt("err", trigger, self._current_started, duration,
                                       error=error)
            log.error("backup (%s) failed after %.1f s: %s", trigger, duration, error,
                      extra={"event": "backup_failed", "trigger": trigger})
            result.set_exception(CommandError(f"backup failed: {error}"))
        else:
            info = job.result()
            self._results["ok"] += 1
            self._last = BackupAttempt("ok", trigger, self._current_started, duration, info)
            self._last_ok = info
            self._server.last_save_time = int(time.time())
            log.info("backup %s (%s): sequence %d, %d files, %d bytes (%d new) in %.1f s",
                     info.id, trigger, info.sequence, info.files, info.bytes,
                     info.new_bytes, duration,
                     extra={"event": "backup", "backup_id": info.id, "trigger": trigger,
                            "bytes": info.bytes, "new_bytes": info.new_bytes,
                            "seconds": round(duration, 3)})
            result.set_result(info)
        # Nobody may wait for a BGSAVE's or a schedule's result: mark it retrieved.
        result.add_done_callback(_retrieve)
        if self._scheduled is not None and not self._closed:
            trigger, self._scheduled = self._scheduled, None
            self._begin(trigger)

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            now = time.monotonic()
            due = self._anchor + self._interval if self._interval > 0 else None
            if due is not None and now >= due:
                self._anchor = now
                if self._running is None:
                    self._begin("schedule")
                elif self._scheduled is None:
                    self._scheduled = "schedule"  # after the running one
                continue
            # (capped: a long interval simply waits in several steps)
            timeout = None if due is None else min(due - now, 86400.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    fut.exception()


__all__ = ["NO_REPOSITORY", "BackupAttempt", "BackupScheduler", "BackupStatus",
           "BackupStopped"]
