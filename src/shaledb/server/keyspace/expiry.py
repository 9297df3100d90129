"""Active expiry: a background sweeper that deletes expired keys.

The server judges expiry itself (the engine is not told, see
:mod:`shaledb.server.keyspace.keyspace`): reads hide an expired key, and this sweeper deletes it.
Like Redis' active expire cycle, :func:`run_active_expire` runs ``hz`` times a second on the
event loop; each tick (:meth:`ActiveExpiry.step`) continues a scan of the mapped physical
databases from a cursor that goes round the whole keyspace, reads at most ``keys_per_tick``
entries, and stops early when it used its time budget (``25 + 2 * (effort - 1)`` percent of
the tick's period, Redis' formula). The expired entries it met are deleted with one write
batch, which also lowers the key counts and, for a chunked string, writes the garbage record
of its chunks. The scan reads only each key's header (an inline string's at most 64 KiB,
and it never copies them): a large string's bytes are in chunks outside the databases'
ranges.

A tick first commits the writes buffered in the turn's shared transaction
(``Keyspace.settle``): such a write may rename, persist or append to a chunked string the
sweeper would find expired and free, and its header would then name deleted chunks. It then
deletes the expired keys a read met (``Keyspace.lazy_expired``: Redis deletes those on
access, and the key counts already leave them out), then continues the walk. The reads and
the write happen in the same synchronous step on the loop, where no command can run in
between, and expiry only moves forward in time, so only keys still expired when the batch is
written are deleted.

The scan sees every entry through ``DB.range(include_expired=True)`` (directories upgraded
from version 2 may hold entries the engine was told the expiry of). Watchers are not told: a
key watched while live already fails EXEC once expired, and one watched after it expired
was absent then and is absent now (Redis 7 treats both alike).

A keyspace without expiring keys needs no sweeping: until the sweeper meets a key with an
expiry or one is written, and again after a full pass that met none, ticks get a twelfth of
the time budget (:meth:`ActiveExpiry.idle`), and none at all while the key counts say no
mapped database holds a key with an expiry.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

import shaledb

from ...errors import ShaleError
from .values import expiry_of, now_ms, orphan


class SweptKeyspace(Protocol):
    """What the sweeper uses of the keyspace (:class:`~.keyspace.Keyspace`). A Protocol:
    the keyspace owns its sweeper, so naming the class here would be an import cycle."""

    map: list[int]
    lazy_expired: set[bytes]
    expiring_writes: int
    expired_keys: int
    #: A script is running past busy-reply-threshold: no tick until it ends.
    frozen: bool
    #: Commits the writes buffered in the current turn (see the module docstring).
    settle: Callable[[], None]

    def fenced(self) -> bool: ...

    @property
    def sweeper(self) -> ActiveExpiry: ...
    def raw_range(self, lo: bytes, hi: bytes, *, limit: int | None = None
                  ) -> Iterator[tuple[bytes, bytes]]: ...
    def write(self, batch: shaledb.WriteBatch, deltas: dict[int, list[int]] | None = None, *,
              garbage: Iterable[int] = (), member_garbage: Iterable[int] = ()) -> None: ...
    def forget_expired(self, ek: bytes) -> None: ...
    def expired_event(self, ek: bytes) -> None: ...
    def expiring_keys(self) -> int: ...

log = logging.getLogger("shaledb.server")

#: Entries read per tick at effort 1 (effort n reads n times as many).
KEYS_PER_TICK: Final = 2_000
#: An idle sweeper (no expiring keys) gets this many times less time per tick.
IDLE_DIVISOR: Final = 12
#: The deadline is checked every this many entries (and never before the first batch of
#: them, so every tick makes progress).
_CHECK_EVERY: Final = 32


def tick_budget(hz: int, effort: int) -> tuple[int, float]:
    """(entries per tick, seconds per tick) for ``hz`` and ``active_expire_effort``."""
    return KEYS_PER_TICK * effort, (25 + 2 * (effort - 1)) / 100 / hz


class ActiveExpiry:
    """The sweeper's cursor and what its passes met."""

    def __init__(self, keyspace: SweptKeyspace) -> None:
        self._ks = keyspace
        #: Engine key the scan continues after (b"": the start of a pass). When its first
        #: byte names no mapped id, the scan continues at the next mapped id.
        self._cursor = b""
        #: When the last full pass ended (ms since the epoch; 0: none yet), and how many.
        self.last_pass_ms = 0
        self.passes = 0
        #: Keyspace.expiring_writes when the pass in progress started; whether the pass
        #: met a key with an expiry; and the same two facts of the last full pass.
        self._pass_mark = keyspace.expiring_writes
        self._pass_expiring = False
        # A server starts idle: the first key with an expiry the sweeper meets, or that a
        # client writes, wakes it.
        self._quiet = True
        self._quiet_mark = keyspace.expiring_writes

    def idle(self) -> bool:
        """Whether no key with an expiry was met by the last full pass or the current one,
        and none was written since the last full pass started (then ticks get a twelfth of
        the time)."""
        return (self._quiet and not self._pass_expiring
                and self._ks.expiring_writes == self._quiet_mark)

    def step(self, max_keys: int, budget: float) -> int:
        """One tick: read up to ``max_keys`` entries (at least ``_CHECK_EVERY`` unless the
        keyspace ends first) within about ``budget`` seconds, delete the expired ones; the
        number of entries read."""
        ks = self._ks
        ks.settle()
        deadline = time.perf_counter() + budget
        now = now_ms()
        if not self._cursor:
            self._pass_mark = ks.expiring_writes
            self._pass_expiring = False
        batch = shaledb.WriteBatch()
        deltas: dict[int, list[int]] = {}
        deleted: set[bytes] = set()
        garbage: list[int] = []
        member_garbage: list[int] = []
        #: Deleted keys whose ``expired`` notification is published after the write.
        announce: list[bytes] = []

        def delete(ek: bytes, raw: bytes) -> None:
            batch.delete(ek)
            deleted.add(ek)
            # A chunked string's chunks, a hash's or set's members: a garbage record.
            orphan(batch, raw, garbage, member_garbage)
            d = deltas.setdefault(ek[0], [0, 0])
            d[0] -= 1
            d[1] -= 1

        # First the expired keys reads met (Redis would have deleted them on access).
        for ek in itertools.islice(ks.lazy_expired, max_keys):
            for found, raw in ks.raw_range(ek, ek + b"\x00", limit=1):
                expire = expiry_of(raw)
                if found == ek and expire and expire <= now:
                    delete(ek, raw)
        scanned = 0
        mapped = sorted(ks.map)
        while scanned < max_keys:
            cursor = self._cursor
            first = cursor[0] if cursor else 0
            phys = next((p for p in mapped if p >= first), None)
            if phys is None:
                self._finish_pass()
                break
            resume = bool(cursor) and cursor[0] == phys and len(cursor) > 1
            lo = cursor if resume else bytes((phys,))
            out_of_budget = False
            last = None
            for ek, raw in ks.raw_range(lo, bytes((phys + 1,))):
                if resume and ek == cursor:
                    continue  # read by the previous tick
                if scanned >= max_keys or (scanned % _CHECK_EVERY == 0 and scanned
                                           and time.perf_counter() >= deadline):
                    out_of_budget = True
                    break
                scanned += 1
                last = ek
                expire = expiry_of(raw)
                if expire:
                    self._pass_expiring = True
                    if expire <= now and ek not in deleted:
                        delete(ek, raw)
                        if ek not in ks.lazy_expired:  # those were announced when read
                            announce.append(ek)
            if out_of_budget:
                if last is not None:
                    self._cursor = last
                break
            self._cursor = bytes((phys + 1,))
        if len(batch):
            ks.write(batch, deltas, garbage=garbage, member_garbage=member_garbage)
            ks.expired_keys += len(deleted)
            for ek in deleted:
                ks.forget_expired(ek)
            for ek in announce:
                ks.expired_event(ek)
        return scanned

    def _finish_pass(self) -> None:
        self._cursor = b""
        self.last_pass_ms = int(time.time() * 1000)
        self.passes += 1
        self._quiet = not self._pass_expiring
        self._quiet_mark = self._pass_mark


async def run_active_expire(keyspace: SweptKeyspace, hz: int, effort: int) -> None:
    """Run a sweeper tick ``hz`` times a second until cancelled."""
    max_keys, budget = tick_budget(hz, effort)
    idle_budget = budget / IDLE_DIVISOR
    failed = False
    sweeper = keyspace.sweeper
    while True:
        await asyncio.sleep(1 / hz)
        if keyspace.frozen or keyspace.fenced():  # a replica's deletions come from its primary
            continue
        if sweeper.idle() and not keyspace.expiring_keys():
            continue  # nothing can expire: no tick at all (the counts are exact)
        try:
            sweeper.step(max_keys, idle_budget if sweeper.idle() else budget)
            failed = False
        except ShaleError as exc:
            if not failed:  # a read-only database fails every tick: say it once
                log.warning("active expiry could not delete expired keys: %s", exc)
            failed = True
        except Exception:  # noqa: BLE001 - a bug must not end expiry for the server's life
            # An exception left to the task would end it silently (nobody awaits it): keys
            # nobody reads would never expire again. Say so loudly, go on after a pause.
            log.exception("active expiry tick failed (a bug: please report it); retrying")
            await asyncio.sleep(1.0)


__all__ = ["KEYS_PER_TICK", "ActiveExpiry", "run_active_expire", "tick_budget"]
