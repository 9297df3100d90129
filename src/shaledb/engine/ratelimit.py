"""A token bucket for background write bandwidth (compaction output).

Compaction writes in 1 MiB chunks; before each chunk the writer asks the limiter for its
bytes and sleeps off any debt, so over any stretch longer than the burst the compaction
writes at most ``rate`` bytes per second and leaves the disk's remaining bandwidth to the
foreground (WAL appends and fsyncs, reads). RocksDB's ``RateLimiter`` plays the same role.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Allows ``rate`` bytes per second, with a burst of one second's worth."""

    def __init__(self, rate: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(rate)  # start with a full burst
        self._last = clock()
        self.waited = 0.0  # total seconds spent waiting, for statistics

    def request(self, nbytes: int) -> None:
        """Take ``nbytes`` from the bucket, sleeping until they are covered."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.waited += wait
            self._sleep(wait)
