"""Token buckets per key (client IP, user name), bounded by least-recently-used eviction.

One implementation serves two limits: failed AUTH attempts per IP (``acl.AuthRateLimiter``)
and commands per IP and per user (:class:`CommandRateLimits`). A bucket holds at most
``burst`` tokens and refills at ``rate`` per second; a key's bucket is created full. At most
``max_keys`` buckets are kept: when one more is needed, the least recently used is dropped,
and that key starts again from a full bucket. So memory stays bounded whatever the number of
distinct hosts, and a forgotten host gains at most one burst.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from .security import UNKNOWN_PEER


class _Named(Protocol):
    @property
    def name(self) -> bytes: ...


class LimitedClient(Protocol):
    """What the limits read of a client: its IP and its user's name (a Protocol: the client
    state lives above this module)."""

    @property
    def host(self) -> str | None: ...
    @property
    def user(self) -> _Named: ...


class TokenBuckets:
    """Token buckets keyed by a string: ``burst`` tokens at once, refilled at ``rate`` per
    second, at most ``max_hosts`` keys remembered (least recently used dropped).

    :meth:`take` checks and consumes one token in the same call, so a flood of pipelined
    requests cannot all pass a check made before any of them was counted.
    """

    def __init__(self, burst: float, rate: float, max_hosts: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.rate = rate
        self.max_hosts = max_hosts
        self._clock = clock
        #: key -> (tokens, time of that count), least recently used first.
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = \
            collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} burst={self.burst} rate={self.rate}/s "
                f"keys={len(self._buckets)}/{self.max_hosts}>")

    def take(self, host: str) -> float:
        """Consume one token of ``host``: 0.0 when there was one, else the seconds until
        there will be one (nothing is consumed then)."""
        now = self._clock()
        tokens, then = self._buckets.pop(host, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            wait = 0.0
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate if self.rate > 0 else float("inf")
        self._buckets[host] = (tokens, now)
        while len(self._buckets) > self.max_hosts:
            self._buckets.popitem(last=False)
        return wait

    def refund(self, host: str) -> None:
        """Give one token back (a successful login returns its attempt)."""
        entry = self._buckets.get(host)
        if entry is not None:
            self._buckets[host] = (min(float(self.burst), entry[0] + 1.0), entry[1])


class CommandRateLimits:
    """Commands per second per client IP and per ACL user, enforced by backpressure: when a
    bucket is empty the connection stops running and reading until a token is due (see
    ``connection.ClientConnection``), so a client is slowed down, never sent an error.

    ``per_ip``: commands/s for each client IP (None: no limit). ``per_user``: user name ->
    commands/s (users not listed are not limited). A bucket holds one second's worth
    (at least one command), so a client may burst that much after a quiet second.
    """

    def __init__(self, per_ip: float | None, per_user: Mapping[str, float], max_hosts: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ip = (TokenBuckets(max(per_ip, 1.0), per_ip, max_hosts, clock)
                   if per_ip is not None else None)
        self.user_rates = dict(per_user)
        #: One bucket set per rate, keyed by user name (users are few: ACL users only).
        self._users: dict[str, TokenBuckets] = {
            name: TokenBuckets(max(rate, 1.0), rate, 1, clock)
            for name, rate in self.user_rates.items()}

    @property
    def active(self) -> bool:
        """Whether any limit is set (the connection skips the check otherwise)."""
        return self.ip is not None or bool(self._users)

    def wait(self, client: LimitedClient) -> float:
        """Take a token for one command of ``client`` from every bucket that applies: 0.0
        when it may run now, else the seconds to wait before trying again. A token taken
        from the IP bucket is given back when the user bucket refuses, so a wait costs
        nothing."""
        host = client.host or UNKNOWN_PEER
        if self.ip is not None:
            wait = self.ip.take(host)
            if wait > 0:
                return wait
        if self._users:
            name = client.user.name.decode("utf-8", "replace")
            bucket = self._users.get(name)
            if bucket is not None:
                wait = bucket.take(name)
                if wait > 0:
                    if self.ip is not None:
                        self.ip.refund(host)
                    return wait
        return 0.0


__all__ = ["CommandRateLimits", "TokenBuckets"]
