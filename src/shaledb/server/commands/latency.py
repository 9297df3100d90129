"""LATENCY: HISTOGRAM LATEST HISTORY RESET DOCTOR HELP (Redis 7).

HISTOGRAM answers from the per-command latency buckets of the command statistics (the
ones INFO latencystats reads); the others from the latency monitor
(:mod:`shaledb.server.admin.latency`), fed by the dispatcher when a command takes at least
``latency-monitor-threshold`` milliseconds."""

from __future__ import annotations

from typing import Any, Final

from ..admin.stats import BUCKET_BOUNDS_NS, CommandStats
from ..errors import CommandError
from ..net.protocol import Status, Verbatim
from . import CommandFamily, Context, wrong_arity

FAMILY = CommandFamily()

_SUBCOMMANDS = {"histogram": "slow", "latest": "admin slow dangerous",
                "history": "admin slow dangerous", "reset": "admin slow dangerous",
                "doctor": "admin slow dangerous", "help": "slow"}
LATENCY_HELP: Final = (
    "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "DOCTOR",
    "    Return a human readable latency analysis report.",
    "HISTOGRAM [COMMAND ...]",
    "    Return a cumulative distribution of latencies in the format of a histogram for",
    "    the specified command names. If no commands are specified then all histograms",
    "    are replied.",
    "HISTORY <event>",
    "    Return time-latency samples for the <event> class.",
    "LATEST",
    "    Return the latest latency samples for all events.",
    "RESET [<event> ...]",
    "    Reset latency data of one or more <event> classes.",
    "    (default: reset all data for all event classes)",
    "HELP",
    "    Prints this help.",
)


def _histogram(stats: CommandStats) -> dict[str, Any]:
    # Cumulative counts at each bucket's upper bound (in microseconds), only where the
    # count grows, as Redis' hdr histogram iteration.
    out: dict[int, int] = {}
    total = 0
    for i, n in enumerate(stats.buckets):
        if not n:
            continue
        total += n
        bound = BUCKET_BOUNDS_NS[i] if i < len(BUCKET_BOUNDS_NS) else BUCKET_BOUNDS_NS[-1] * 2
        out[max(bound // 1000, 1)] = total
    return {"calls": stats.calls, "histogram_usec": out}


@FAMILY.command("latency", -2, "loading stale", "admin slow dangerous",
                subcommands=_SUBCOMMANDS)
def latency(ctx: Context, argv: list[bytes]) -> Any:
    """LATENCY HISTOGRAM [command ...] | LATEST | HISTORY event | RESET [event ...] |
    DOCTOR | HELP"""
    sub = argv[1].lower()
    n = len(argv)
    stats = ctx.services.command_stats
    monitor = stats.latency
    if sub == b"histogram":
        units = {name: s for name, s in stats.commands.items() if s.calls}
        if n == 2:
            return {name.encode(): _histogram(s) for name, s in units.items()}
        out: dict[bytes, Any] = {}
        for arg in argv[2:]:
            want = arg.lower().decode("latin-1")
            for name, s in units.items():
                if name == want or ("|" not in want and name.startswith(want + "|")):
                    out[name.encode()] = _histogram(s)
        return out
    if sub == b"latest" and n == 2:
        return monitor.latest()
    if sub == b"history" and n == 3:
        return monitor.history(argv[2].decode("latin-1"))
    if sub == b"reset":
        return monitor.reset([a.decode("latin-1") for a in argv[2:]])
    if sub == b"doctor" and n == 2:
        return Verbatim(monitor.doctor(ctx.services.config.latency_monitor_threshold)
                        .encode())
    if sub == b"help" and n == 2:
        return [Status(line.encode()) for line in LATENCY_HELP]
    if sub.decode("latin-1") in _SUBCOMMANDS:
        raise wrong_arity("latency|" + sub.decode("latin-1"))
    raise CommandError(f"unknown subcommand '{argv[1][:128].decode('utf-8', 'replace')}'. "
                       "Try LATENCY HELP.")
