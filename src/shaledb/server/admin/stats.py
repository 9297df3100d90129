"""Command statistics: calls, time, rejections, failures and a latency histogram per command,
error replies by prefix, and the ops/s of the last few seconds. INFO (``commandstats``,
``errorstats``, ``latencystats``, ``stats``) and the Prometheus endpoint read them.

Every command pays for one :meth:`ServerStats.record` call: a dict lookup, three integer
increments and one ``bisect`` into a tuple of bucket bounds. The histogram's buckets are fixed
and log-spaced (factor sqrt(2) from 1 us to about 137 s), so an update never allocates and
percentiles are estimated by interpolating inside one bucket (at most 41% wide); Redis uses
HDR histograms, which are finer but cost more per update in Python.

Statistics are kept per *command unit*: the command name, or ``name|sub`` for Redis' container
commands (``client|list``, ``config|get``, ``acl|setuser``), as Redis 7 reports them. Only
subcommands the server knows get their own unit, so arbitrary subcommand names sent by a
client cannot grow the table.
"""

from __future__ import annotations

import bisect
import collections
import time
from typing import TYPE_CHECKING, Final

from .latency import LatencyMonitor

if TYPE_CHECKING:
    from ..exec.command import CommandSpec

#: Upper bounds (inclusive) of the latency buckets in nanoseconds: 1 us * sqrt(2)**i. A last,
#: unbounded bucket holds everything slower.
BUCKET_BOUNDS_NS: Final[tuple[int, ...]] = tuple(round(1000 * 2 ** (i / 2)) for i in range(55))

#: Container commands whose subcommands Redis counts separately, with the subcommands known
#: here (a command's own ``subcommands`` in the table are added to these).
CONTAINER_SUBCOMMANDS: Final[dict[str, frozenset[str]]] = {
    "acl": frozenset(),
    "client": frozenset(("id", "getname", "setname", "setinfo", "list", "info", "kill",
                         "pause", "unpause", "reply", "no-evict", "no-touch", "tracking",
                         "caching", "getredir", "trackinginfo", "unblock", "help")),
    "command": frozenset(("count", "list", "info", "docs", "getkeys", "getkeysandflags",
                          "help")),
    "config": frozenset(("get", "set", "resetstat", "rewrite", "help")),
    "slowlog": frozenset(("get", "len", "reset", "help")),
    "object": frozenset(("encoding", "freq", "idletime", "refcount", "help")),
    "memory": frozenset(("usage", "stats", "doctor", "purge", "malloc-stats", "help")),
    "latency": frozenset(("latest", "history", "reset", "graph", "doctor", "histogram",
                          "help")),
}

#: The sliding window of instantaneous_ops_per_sec: this many one-second samples.
OPS_WINDOW: Final = 5


class CommandStats:
    """The counters of one command unit."""

    __slots__ = ("name", "calls", "nanos", "rejected", "failed", "buckets")

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.nanos = 0
        #: Refused before running: arity, authentication, ACL.
        self.rejected = 0
        #: Ran and answered an error.
        self.failed = 0
        #: Call counts per latency bucket (BUCKET_BOUNDS_NS, then one for slower calls).
        self.buckets = [0] * (len(BUCKET_BOUNDS_NS) + 1)

    @property
    def usec(self) -> int:
        """Total time in microseconds."""
        return self.nanos // 1000

    def percentile(self, p: float) -> float:
        """Estimated latency in microseconds below which ``p`` percent of the calls ran
        (linear inside the bucket holding that rank); 0.0 without calls."""
        total = sum(self.buckets)
        if total == 0:
            return 0.0
        rank = p / 100 * total
        seen = 0
        for i, n in enumerate(self.buckets):
            if n and seen + n >= rank:
                lo = BUCKET_BOUNDS_NS[i - 1] if i > 0 else 0
                hi = BUCKET_BOUNDS_NS[i] if i < len(BUCKET_BOUNDS_NS) else lo * 2
                return (lo + (hi - lo) * max(rank - seen, 0) / n) / 1000
            seen += n
        return BUCKET_BOUNDS_NS[-1] / 1000  # not reached: the ranks add up to total


class ServerStats:
    """Every statistic of one server that is not a plain counter (those live in
    ``Server.stats``, a Counter)."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandStats] = {}
        #: Error replies by prefix (``ERR``, ``WRONGTYPE``, ``NOPERM`` ...).
        self.errors: collections.Counter[str] = collections.Counter()
        self.total_error_replies = 0
        #: (monotonic time, commands processed) once a second, for the ops/s window.
        self._samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=OPS_WINDOW)
        #: Cache of command -> its stats, for commands without subcommands.
        self._by_command: dict[str, CommandStats] = {}
        self._subs: dict[str, frozenset[str]] = {}
        #: LATENCY LATEST/HISTORY's events (CONFIG RESETSTAT keeps them, as Redis).
        self.latency = LatencyMonitor()

    def unit(self, cmd: CommandSpec, argv: list[bytes]) -> CommandStats:
        """The statistics of the unit ``argv`` runs as (created on first use)."""
        stats = self._by_command.get(cmd.name)
        if stats is not None:
            return stats
        name = cmd.name
        subs = self._subs.get(name)
        if subs is None:
            subs = CONTAINER_SUBCOMMANDS.get(name, frozenset()) | {
                s for s, _ in cmd.subcommands}
            self._subs[name] = subs
        if subs and len(argv) > 1:
            sub = argv[1].decode("latin-1").lower()
            if sub in subs:
                name = f"{name}|{sub}"
        stats = self.commands.get(name)
        if stats is None:
            stats = self.commands[name] = CommandStats(name)
            if not subs:
                self._by_command[name] = stats
        return stats

    def record(self, cmd: CommandSpec, argv: list[bytes], nanos: int, error: str | None) -> None:
        """Count one call of ``cmd`` that took ``nanos``; ``error`` is the prefix of its error
        reply (None when it succeeded)."""
        stats = self._by_command.get(cmd.name) or self.unit(cmd, argv)
        stats.calls += 1
        stats.nanos += nanos
        stats.buckets[bisect.bisect_left(BUCKET_BOUNDS_NS, nanos)] += 1
        if error is not None:
            stats.failed += 1
            self.errors[error] += 1
            self.total_error_replies += 1

    def reject(self, cmd: CommandSpec | None, argv: list[bytes], error: str) -> None:
        """Count a command refused before it ran (unknown, arity, auth, ACL) and its error
        reply."""
        if cmd is not None:
            self.unit(cmd, argv).rejected += 1
        self.error_reply(error)

    def error_reply(self, prefix: str, n: int = 1) -> None:
        """Count ``n`` error replies with ``prefix`` that no command accounted for (protocol
        errors, a failed commit)."""
        self.errors[prefix] += n
        self.total_error_replies += n

    def sample(self, total_commands: int, now: float | None = None) -> None:
        """Remember the command count at ``now`` (called once a second by the server)."""
        self._samples.append((time.monotonic() if now is None else now, total_commands))

    def ops_per_sec(self, total_commands: int, now: float | None = None) -> float:
        """Commands per second since the oldest sample of the window (up to OPS_WINDOW s)."""
        if not self._samples:
            return 0.0
        t0, n0 = self._samples[0]
        elapsed = (time.monotonic() if now is None else now) - t0
        return round((total_commands - n0) / elapsed, 2) if elapsed > 0 else 0.0

    def reset(self) -> None:
        """Forget the command and error statistics and the ops/s samples (CONFIG
        RESETSTAT, which also zeroes the command count the samples are compared with)."""
        self._samples.clear()
        self.commands.clear()
        self._by_command.clear()
        self.errors.clear()
        self.total_error_replies = 0


__all__ = ["BUCKET_BOUNDS_NS", "CONTAINER_SUBCOMMANDS", "CommandStats", "OPS_WINDOW",
           "ServerStats"]
