"""The background scrub: a rate-limited re-read of the whole served database.

A *pass* is one ``DB.verify()`` of the open database (every table of the current version
block by block, the manifest, the WAL segments still needed, OPTIONS, ``lost/``), paced by
``scrub-rate`` bytes per second and stoppable between any two reads. Passes run in one
dedicated thread, never on the event loop (a pass is CPU work as well as I/O: decoding and
checking every block), one at a time: a scheduled start that comes due while a pass runs
waits for it, and ``SCRUB NOW`` during a pass is refused.

Schedule: ``scrub-interval`` seconds between the *starts* of passes (0: no scheduled pass,
the default). The first scheduled pass starts one interval after the server starts, or after
the interval is turned on; changing the interval moves the next start to the last start plus
the new interval (at once when that is past). ``SCRUB NOW`` starts a pass whatever the
interval; ``SCRUB STOP`` stops the running one. A pass longer than the interval is followed
at once by the next.

What a pass finds: the result of the last *completed* pass (``ok``, ``damaged``, or
``error`` when the check itself failed) is kept with its counts, its first problem and the
names of the damaged files; INFO ``scrub``, ``SCRUB STATUS``, ``/metrics`` and ``/health``
read it. Damage or an error makes ``/health`` answer *degraded* until a later pass completes
clean; notices (files in ``lost/``) are shown but do not degrade it. A pass stopped early
(``SCRUB STOP``, shutdown) keeps the previous result, unless the part it read found damage.
Every problem is logged, one line each (``extra`` fields ``file``, ``kind``, ``severity``,
``offset``, ``length``, ``table_level``, ``keys``, ``seqs`` in JSON logs), at most
:data:`MAX_LOGGED_PROBLEMS` per pass; the first :data:`MAX_KEPT_PROBLEMS` are kept for
``SCRUB STATUS``. Memory is bounded by those two numbers plus what ``DB.verify`` holds.

Thread safety: the scrub thread writes the state under ``_lock``; the event loop reads
:meth:`Scrubber.status` (a consistent copy) and calls the control methods, which only set
fields and events under the same lock.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Final, Protocol

import shaledb

from ...engine.verify import Problem, Severity, VerifyReport, VerifyStopped


class ScrubSettings(Protocol):
    """The settings a scrub reads, live (CONFIG SET changes them)."""

    @property
    def scrub_interval(self) -> float: ...
    @property
    def scrub_rate(self) -> int: ...


class ScrubHost(Protocol):
    """What the scrub uses of the server: its database and current settings (a Protocol:
    the keyspace layer does not import the server or its configuration)."""

    @property
    def db(self) -> shaledb.DB: ...
    @property
    def config(self) -> ScrubSettings: ...

log = logging.getLogger("shaledb.server.scrub")

#: Problems of one pass written to the log (the rest are counted in one more line).
MAX_LOGGED_PROBLEMS: Final = 100
#: Problems of the last pass kept for SCRUB STATUS.
MAX_KEPT_PROBLEMS: Final = 100
#: Damaged file names kept (and named by /health).
MAX_KEPT_FILES: Final = 16
#: Seconds shutdown waits for a pass to notice the stop before it says so in the log.
JOIN_WARNING: Final = 5.0

RESULTS: Final = ("ok", "damaged", "error", "stopped")


def info_safe(text: str) -> str:
    """``text`` as one INFO value: no line breaks, and no ``,`` or ``=`` (which redis-py's
    INFO parser would take for a list or a map)."""
    return " ".join(text.replace(",", ";").replace("=", ":").split())


def problem_summary(p: Problem) -> str:
    """``file kind at offset N`` (no key text: keys may hold anything)."""
    where = f" at offset {p.offset}" if p.offset is not None else ""
    return f"{p.file or '.'} {p.kind.value}{where}"


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What one completed pass found."""

    #: How it ended: ok, damaged, error (the check could not run to the end).
    status: str
    #: What started it: "schedule" or "command".
    trigger: str
    #: Unix time of its start, and its length in seconds.
    started: float
    duration: float
    #: Bytes it read.
    bytes: int
    damage: int
    notices: int
    #: The first damage (else the first notice) as ``file kind at offset N``; "" if none.
    first_problem: str
    #: Names of the files with damage (at most MAX_KEPT_FILES), in the order found.
    damaged_files: tuple[str, ...]
    #: The first MAX_KEPT_PROBLEMS problems, one line each.
    problems: tuple[str, ...]
    #: The error of a pass that failed.
    error: str = ""
    #: True when the pass was stopped early but had found damage in the part it read.
    partial: bool = False

    @property
    def ended(self) -> float:
        """Unix time of its end."""
        return self.started + self.duration


@dataclasses.dataclass(frozen=True)
class ScrubStatus:
    """A consistent copy of the scrubber's state (for INFO, SCRUB STATUS, metrics, health)."""

    enabled: bool
    interval: float
    rate: int
    in_progress: bool
    current_trigger: str
    current_started: float
    current_bytes: int
    current_total: int
    next_time: float
    passes: dict[str, int]
    bytes_read: int
    damage_found: int
    last: PassResult | None
    thread_error: str

    @property
    def completed(self) -> int:
        """Passes that ran to the end (ok, damaged or error)."""
        return sum(self.passes[r] for r in ("ok", "damaged", "error"))

    def health_reason(self) -> str | None:
        """Why /health is degraded because of the scrub, or None."""
        if self.thread_error:
            return f"the scrub thread stopped: {self.thread_error}"
        last = self.last
        if last is None:
            return None
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last.started))
        if last.status == "damaged":
            files = ", ".join(last.damaged_files) or "?"
            return (f"the scrub pass started {when} found {last.damage} damaged "
                    f"{'part' if last.damage == 1 else 'parts'} in {files} (first: "
                    f"{last.first_problem}); reads of the keys there fail: see SCRUB STATUS "
                    f"or the server log, restore from a backup or run `shaledb repair`")
        if last.status == "error":
            return f"the scrub pass started {when} failed: {last.error}"
        return None

    def fields(self) -> list[tuple[str, Any]]:
        """``(name, value)`` pairs of INFO's scrub section (without the ``scrub_`` prefix)."""
        last = self.last
        return [
            ("enabled", int(self.enabled)),
            ("interval", int(self.interval) if float(self.interval).is_integer()
             else self.interval),
            ("rate", self.rate),
            ("in_progress", int(self.in_progress)),
            ("current_trigger", self.current_trigger),
            ("current_start_time", int(self.current_started)),
            ("current_bytes", self.current_bytes),
            ("current_total_bytes", self.current_total),
            ("next_time", int(self.next_time)),
            ("passes", self.completed),
            ("passes_ok", self.passes["ok"]),
            ("passes_damaged", self.passes["damaged"]),
            ("passes_failed", self.passes["error"]),
            ("passes_stopped", self.passes["stopped"]),
            ("bytes_read", self.bytes_read),
            ("damage_found", self.damage_found),
            ("last_status", last.status if last is not None else "none"),
            ("last_trigger", last.trigger if last is not None else ""),
            ("last_start_time", int(last.started) if last is not None else 0),
            ("last_end_time", int(last.ended) if last is not None else 0),
            ("last_duration_sec", f"{last.duration:.3f}" if last is not None else "0"),
            ("last_bytes", last.bytes if last is not None else 0),
            ("last_partial", int(last.partial) if last is not None else 0),
            ("damage_count", last.damage if last is not None else 0),
            ("notice_count", last.notices if last is not None else 0),
            ("last_problem", info_safe(last.first_problem) if last is not None else ""),
            ("damaged_files", info_safe(" ".join(last.damaged_files))
             if last is not None else ""),
            ("last_error", info_safe(last.error) if last is not None else ""),
            ("thread_error", info_safe(self.thread_error)),
        ]


class Scrubber:
    """The scrub thread of one server and what its passes found."""

    def __init__(self, server: ScrubHost) -> None:
        self._server = server
        self._lock = threading.Lock()
        #: Set to make the thread look at its state again (a request, a new interval, stop).
        self._wake = threading.Event()
        #: Set at shutdown: the thread ends, a running pass stops.
        self._closing = threading.Event()
        #: Set by SCRUB STOP: the running pass stops; the schedule goes on.
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._requested = False
        #: time.monotonic() the schedule counts from (last start, or when it was turned on).
        self._anchor = time.monotonic()
        #: The interval the schedule follows (scrub-interval, as of the last reschedule).
        self._interval = float(server.config.scrub_interval)
        self._in_progress = False
        self._current_trigger = ""
        self._current_started = 0.0
        self._current_bytes = 0
        self._current_total = 0
        self._passes: collections.Counter[str] = collections.Counter()
        self._bytes_read = 0
        self._damage_found = 0
        self._last: PassResult | None = None
        self._thread_error = ""

    # -- control (event loop) ------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (it idles until a pass is due or requested)."""
        with self._lock:
            self._anchor = time.monotonic()
            self._interval = float(self._server.config.scrub_interval)
        self._thread = threading.Thread(target=self._main, name="shaledb-scrub", daemon=True)
        self._thread.start()

    def request(self) -> bool:
        """Start a pass now (SCRUB NOW); False when one is running or already requested."""
        with self._lock:
            if self._in_progress or self._requested or self._closing.is_set():
                return False
            self._requested = True
        self._wake.set()
        return True

    def stop_pass(self) -> bool:
        """Stop the running pass (SCRUB STOP); False when none runs."""
        with self._lock:
            if not self._in_progress:
                return False
            self._abort.set()
        return True

    def reschedule(self, interval: float) -> None:
        """Follow a new interval (CONFIG SET scrub-interval): the next start is the last
        start plus ``interval``, or ``interval`` from now when the schedule was off."""
        with self._lock:
            if self._interval <= 0 < interval and not self._in_progress:
                self._anchor = time.monotonic()
            self._interval = float(interval)
        self._wake.set()

    def close(self) -> None:
        """Stop the running pass and the thread (returns at once; see :meth:`join`)."""
        self._closing.set()
        self._wake.set()

    def join(self) -> None:
        """Wait for the thread to end (blocking; after :meth:`close`)."""
        thread = self._thread
        if thread is None:
            return
        thread.join(JOIN_WARNING)
        if thread.is_alive():
            log.warning("waiting for the scrub pass to stop (a read is taking long)")
            thread.join()

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> ScrubStatus:
        """A consistent copy of the state."""
        cfg = self._server.config
        with self._lock:
            due = self._due()
            next_time = 0.0 if due is None else time.time() + max(0.0, due - time.monotonic())
            return ScrubStatus(
                enabled=cfg.scrub_interval > 0, interval=cfg.scrub_interval,
                rate=cfg.scrub_rate, in_progress=self._in_progress,
                current_trigger=self._current_trigger if self._in_progress else "",
                current_started=self._current_started if self._in_progress else 0.0,
                current_bytes=self._current_bytes if self._in_progress else 0,
                current_total=self._current_total if self._in_progress else 0,
                next_time=next_time,
                passes={r: self._passes[r] for r in RESULTS},
                bytes_read=self._bytes_read, damage_found=self._damage_found,
                last=self._last, thread_error=self._thread_error)

    # -- the thread ----------------------------------------------------------------------
    def _due(self) -> float | None:
        """time.monotonic() of the next scheduled start, or None (lock held)."""
        return self._anchor + self._interval if self._interval > 0 else None

    def _main(self) -> None:
        try:
            while True:
                # Clear first, then look: a close(), request() or reschedule() sets its
                # state before it sets the event, so no wake-up is lost in between.
                self._wake.clear()
                if self._closing.is_set():
                    return
                with self._lock:
                    due = self._due()
                    now = time.monotonic()
                    trigger = ("command" if self._requested else
                               "schedule" if due is not None and now >= due else "")
                    if trigger:
                        self._requested = False
                        self._anchor = now
                        self._abort.clear()
                        self._in_progress = True
                        self._current_trigger = trigger
                        self._current_started = time.time()
                        self._current_bytes = self._current_total = 0
                if trigger:
                    self._pass(trigger)
                    continue
                # (capped: Event.wait refuses timeouts past threading.TIMEOUT_MAX, and a
                # long interval simply waits in several steps)
                self._wake.wait(None if due is None else min(max(0.0, due - now), 86400.0))
        except BaseException as exc:  # noqa: BLE001 - recorded: /health says the scrub is dead
            log.exception("the scrub thread failed")
            with self._lock:
                self._thread_error = f"{type(exc).__name__}: {exc}"
                self._in_progress = False

    def _should_stop(self) -> bool:
        return self._closing.is_set() or self._abort.is_set()

    def _rate(self) -> int | None:
        return self._server.config.scrub_rate or None

    def _progress(self, done: int, total: int) -> None:
        # ``total`` is what the pass expects to read (file sizes: it counts the space the WAL
        # allocated ahead, which is not read); the final call says done == total and is
        # skipped, so the counter rises only by bytes read: the report settles the pass.
        with self._lock:
            self._current_total = total
            if done < total and done > self._current_bytes:
                self._bytes_read += done - self._current_bytes
                self._current_bytes = done

    def _pass(self, trigger: str) -> None:
        started = self._current_started
        t0 = time.monotonic()
        log.info("scrub pass started (%s, rate %s bytes/s)", trigger,
                 self._server.config.scrub_rate or "unlimited")
        report: VerifyReport | None = None
        error = ""
        stopped = False
        try:
            report = self._server.db.verify(progress=self._progress, rate=self._rate,
                                            should_stop=self._should_stop)
        except VerifyStopped as exc:
            report = exc.report
            stopped = True
        except Exception as exc:  # noqa: BLE001 - a failed pass is a finding, not a crash
            error = f"{type(exc).__name__}: {exc}"
        duration = time.monotonic() - t0
        if report is not None:
            self._log_problems(report, redact=self._server.db.encrypted)
        result: PassResult | None = None
        if error:
            log.error("scrub pass failed after %.1f s: %s", duration, error,
                      extra={"event": "scrub_failed"})
            result = PassResult("error", trigger, started, duration,
                                self._current_bytes, 0, 0, "", (), (), error=error)
        elif report is not None and (not stopped or report.damage):
            result = self._result(report, trigger, started, duration, partial=stopped)
            log.log(logging.ERROR if report.damage else logging.INFO,
                    "scrub pass %s: %s, %d damage, %d notices, %d bytes in %.1f s",
                    "stopped early" if stopped else "finished", result.status,
                    result.damage, result.notices, result.bytes, duration,
                    extra={"event": "scrub_pass", "status": result.status,
                           "damage": result.damage, "notices": result.notices,
                           "bytes": result.bytes, "seconds": round(duration, 3)})
        else:
            assert report is not None
            log.info("scrub pass stopped after %.1f s (%s)", duration,
                     "shutdown" if self._closing.is_set() else "SCRUB STOP")
        with self._lock:
            if report is not None and not stopped:  # (a stopped pass counted its last
                # table's whole size when it opened it: keep the count of what progress saw)
                self._bytes_read += max(0, report.totals.bytes - self._current_bytes)
            if result is not None:
                self._last = result
                if not result.partial:
                    self._passes[result.status] += 1
                self._damage_found += result.damage
            if stopped:
                self._passes["stopped"] += 1
            self._in_progress = False
            self._current_bytes = self._current_total = 0
            self._abort.clear()

    @staticmethod
    def _result(report: VerifyReport, trigger: str, started: float, duration: float,
                partial: bool) -> PassResult:
        damage, notices = report.damage, report.notices
        first = damage[0] if damage else notices[0] if notices else None
        files: list[str] = []
        for p in damage:
            if p.file not in files and len(files) < MAX_KEPT_FILES:
                files.append(p.file or ".")
        return PassResult(
            "damaged" if damage else "ok", trigger, started, duration, report.totals.bytes,
            len(damage), len(notices), "" if first is None else problem_summary(first),
            tuple(files), tuple(str(p) for p in report.problems[:MAX_KEPT_PROBLEMS]),
            partial=partial)

    @staticmethod
    def _log_problems(report: VerifyReport, redact: bool = False) -> None:
        """One log line per problem. ``redact`` (an encrypted database): without the key
        range and the message, which name user keys; logs usually go to a disk of their own,
        unencrypted (docs/security.md). SCRUB STATUS keeps the full lines for an admin."""
        for p in report.problems[:MAX_LOGGED_PROBLEMS]:
            damage = p.severity is Severity.DAMAGE
            line = (f"{problem_summary(p)} (the database is encrypted: its keys are not "
                    "logged; SCRUB STATUS, or `shaledb verify --encryption-key-file` on a "
                    "copy, names them)") if redact else str(p)
            log.log(logging.ERROR if damage else logging.WARNING, "scrub found %s: %s",
                    "damage" if damage else "a notice", line,
                    extra={"event": "scrub_problem", "severity": p.severity.value,
                           "kind": p.kind.value, "file": p.file, "offset": p.offset,
                           "length": p.length, "table_level": p.level,
                           "keys": None if p.keys is None or redact else str(p.keys),
                           "seqs": None if p.seqs is None else list(p.seqs)})
        more = len(report.problems) - MAX_LOGGED_PROBLEMS
        if more > 0:
            log.error("scrub: %d more problems not logged; `shaledb verify` on a copy, or "
                      "DB.verify(), lists them all", more, extra={"event": "scrub_problem"})


__all__ = ["MAX_KEPT_FILES", "MAX_KEPT_PROBLEMS", "MAX_LOGGED_PROBLEMS", "PassResult",
           "ScrubStatus", "Scrubber", "info_safe", "problem_summary"]
