"""The latency monitor, as Redis' LATENCY command sees it: events (``command``,
``fast-command``) that took at least ``latency-monitor-threshold`` milliseconds, each
with its last :data:`HISTORY_LEN` samples (one per second: a second's worst), its latest
and its all-time maximum.

Bounded: one deque of :data:`HISTORY_LEN` samples per event name, and the names are the
server's own (never from clients). Threshold 0 (the default) records nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Final

#: Samples kept per event (Redis' LATENCY_TS_LEN).
HISTORY_LEN: Final = 160


@dataclasses.dataclass
class LatencyEvent:
    """One event's samples: (unix seconds, milliseconds), oldest first, and its maximum."""

    samples: collections.deque[tuple[int, int]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=HISTORY_LEN))
    max_ms: int = 0


class LatencyMonitor:
    """Latency spikes per event name."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.events: dict[str, LatencyEvent] = {}
        self._clock = clock

    def add(self, event: str, ms: int) -> None:
        """Record that ``event`` took ``ms`` milliseconds (the caller compared it with the
        threshold); samples in the same second keep the worst, as Redis."""
        now = int(self._clock())
        entry = self.events.setdefault(event, LatencyEvent())
        entry.max_ms = max(entry.max_ms, ms)
        if entry.samples and entry.samples[-1][0] == now:
            if entry.samples[-1][1] < ms:
                entry.samples[-1] = (now, ms)
            return
        entry.samples.append((now, ms))

    def latest(self) -> list[list[object]]:
        """LATENCY LATEST: [event, time of the latest, its ms, the maximum ms] each."""
        return [[name.encode(), e.samples[-1][0], e.samples[-1][1], e.max_ms]
                for name, e in self.events.items() if e.samples]

    def history(self, event: str) -> list[list[int]]:
        """LATENCY HISTORY event: [time, ms] each, oldest first."""
        entry = self.events.get(event)
        return [] if entry is None else [[t, ms] for t, ms in entry.samples]

    def reset(self, events: list[str]) -> int:
        """LATENCY RESET [event ...]: forget those events (all without names); how many
        were forgotten."""
        if not events:
            n = len(self.events)
            self.events.clear()
            return n
        return sum(self.events.pop(e, None) is not None for e in dict.fromkeys(events))

    def doctor(self, threshold_ms: int) -> str:
        """LATENCY DOCTOR: a short human report."""
        if threshold_ms <= 0:
            return ("The latency monitor is disabled: set latency-monitor-threshold (in "
                    "milliseconds) with CONFIG SET to record latency spikes.\n")
        if not self.events:
            return ("No latency spike was observed over the threshold of "
                    f"{threshold_ms} milliseconds.\n")
        lines = [f"Latency spikes over {threshold_ms} milliseconds:"]
        for name, e in self.events.items():
            total = sum(ms for _, ms in e.samples)
            lines.append(f"{name}: {len(e.samples)} latency spikes (average "
                         f"{total // max(len(e.samples), 1)}ms, worst {e.max_ms}ms). "
                         "Check SLOWLOG GET for the commands that caused them.")
        return "\n".join(lines) + "\n"


__all__ = ["HISTORY_LEN", "LatencyEvent", "LatencyMonitor"]
