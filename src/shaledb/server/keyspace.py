"""The server's keyspace: Redis' numbered databases and string values on one ShaleDB.

Mapping (documented byte by byte in docs/format.md, "Server keyspace"):

- engine key = one byte, the *physical* database id (0x00-0xEF) that the logical database
  (SELECT 0-15) currently maps to (:mod:`shaledb.server.dbmap`), followed by the Redis key.
  Callers speak logical numbers only; this module translates;
- engine value = one tag byte, then, when the tag's bit 7 is set, the absolute expiry as an
  8-byte big-endian count of milliseconds since the epoch, then the value's bytes. Tag 0x00
  is a string without expiry, 0x80 a string with one.

The expiry is also handed to the engine as the entry's absolute expiry (``expire_at_ms``), so
the engine hides expired keys from every read and compaction removes them. It is repeated in
the value because engine reads do not return a key's exact expiry; the header keeps the
millisecond value that PEXPIRETIME must return.

Commands read and write through a :class:`KeyspaceTxn`: its writes are buffered (reads see
them) and :meth:`KeyspaceTxn.commit` applies them as one :class:`shaledb.WriteBatch`, so a
multi-key command or a whole ``EXEC`` is atomic, also across a crash. The connection lets the
consecutive write commands of one read (a pipeline) share one transaction and so one WAL
record; :meth:`KeyspaceTxn.mark` and :meth:`KeyspaceTxn.undo` take back the writes of one
command that fails. All of this runs on the event-loop thread, one command at a time, which
is what makes read-modify-write commands atomic with respect to other clients.

FLUSHDB, FLUSHALL and SWAPDB change the database map inside the transaction too, so the
map record and the data written around them are one batch; a flushed physical id is queued
for the background purger (:mod:`shaledb.server.purge`) once the commit succeeded.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, NamedTuple

import shaledb
from shaledb.options import MAX_EXPIRE_AT_MS, MAX_KEY_SIZE, MAX_VALUE_SIZE

from .dbmap import LOGICAL_DATABASES, MAP_KEY, decode_map, encode_map
from .errors import CommandError
from .expiry import ActiveExpiry
from .purge import Purger

#: Number of logical databases (SELECT 0-15).
DATABASES: Final = LOGICAL_DATABASES
#: Longest Redis key: the engine's limit minus the database byte.
MAX_USER_KEY: Final = MAX_KEY_SIZE - 1
#: Longest Redis string value: the engine's limit minus the largest header.
MAX_USER_VALUE: Final = MAX_VALUE_SIZE - 9
#: Largest expiry accepted, in ms since the epoch (about the year 33,658): the engine's limit
#: for an absolute expiry.
MAX_EXPIRE_MS: Final = MAX_EXPIRE_AT_MS

TAG_STRING: Final = 0x00
TAG_EXPIRES: Final = 0x80
_EXP: Final = struct.Struct(">Q")


class Entry(NamedTuple):
    """A live string value and its absolute expiry in ms (0 = none)."""

    value: bytes
    expire_ms: int


def now_ms() -> int:
    """Milliseconds since the epoch (the clock TTLs are judged by)."""
    return int(time.time() * 1000)


def _zero_clock() -> float:
    return 0.0


def engine_key(phys: int, key: bytes) -> bytes:
    """The engine key of Redis key ``key`` in physical database ``phys``."""
    if len(key) > MAX_USER_KEY:
        raise CommandError(f"key of {len(key)} bytes exceeds the maximum of {MAX_USER_KEY}")
    return bytes((phys,)) + key


def expiry_of(raw: bytes) -> int:
    """The absolute expiry (ms, 0 = none) in an engine value's header, without copying the
    value (the sweeper reads only this)."""
    if raw and raw[0] & 0x80 and len(raw) >= 9:
        return int(_EXP.unpack_from(raw, 1)[0])
    return 0


def encode_value(value: bytes, expire_ms: int) -> bytes:
    """The engine value of a string with an absolute expiry (0 = none)."""
    if len(value) > MAX_USER_VALUE:
        raise CommandError("string exceeds maximum allowed size")
    if expire_ms:
        return b"\x80" + _EXP.pack(expire_ms) + value
    return b"\x00" + value


def decode_value(raw: bytes) -> Entry:
    """Inverse of :func:`encode_value`."""
    tag = raw[0] if raw else -1
    if tag == TAG_STRING:
        return Entry(raw[1:], 0)
    if tag == TAG_EXPIRES and len(raw) >= 9:
        return Entry(raw[9:], _EXP.unpack_from(raw, 1)[0])
    raise CommandError("the stored value has an unknown encoding (written by a newer ShaleDB?)")


class Keyspace:
    """The logical databases of one open :class:`shaledb.DB`.

    ``on_write(keys)`` is called after every successful commit with the ``(db, key)`` pairs
    it changed (WATCH uses it); ``on_flush(db)`` after a database was emptied or swapped
    (``None``: all). Opening reads the database map (the identity map when none is stored)
    and queues for purging every unmapped physical id that still holds entries.
    """

    def __init__(self, db: shaledb.DB,
                 on_write: Callable[[Iterable[tuple[int, bytes]]], None] | None = None,
                 on_flush: Callable[[int | None], None] | None = None) -> None:
        self.db = db
        self._on_write = on_write
        self._on_flush = on_flush
        #: Logical database -> physical id (committed state).
        self.map: list[int] = decode_map(db.get(MAP_KEY))
        #: Writes committed since the server last waited for an fsync (appendfsync always).
        self.writes = 0
        #: Keys written with an expiry (the active-expiry sweeper slows down without any).
        self.expiring_writes = 0
        #: Keys deleted by the active-expiry sweeper since the server started.
        self.expired_keys = 0
        self.random = random.Random()
        self.purger = Purger(self)
        self.sweeper = ActiveExpiry(self)
        #: Key lookups that found a live key / found none (INFO keyspace_hits, _misses).
        self.hits = 0
        self.misses = 0

    def begin(self) -> KeyspaceTxn:
        """A new buffered transaction (commit it, or drop it to discard its writes)."""
        return KeyspaceTxn(self)

    def raw_range(self, lo: bytes, hi: bytes, *, limit: int | None = None
                  ) -> Iterator[tuple[bytes, bytes]]:
        """Engine entries with ``lo <= key < hi``, expired ones not yet compacted included
        (deleted ones never)."""
        return self.db.range(lo, hi, limit=limit, include_expired=True)

    def physical_empty(self, phys: int) -> bool:
        """Whether physical database ``phys`` holds no entry at all."""
        return next(self.raw_range(bytes((phys,)), bytes((phys + 1,)), limit=1), None) is None

    def logical_of(self) -> dict[int, int]:
        """Physical id -> logical database, for the mapped ids."""
        return {p: d for d, p in enumerate(self.map)}

    # -- what the INFO command reports -----------------------------------------------------
    def key_counts(self) -> dict[int, tuple[int, int]]:
        """Logical database -> (keys, keys with an expiry), as counted by the last complete
        pass of the active-expiry sweeper (databases without keys are left out). Approximate
        for databases flushed or swapped during that pass."""
        return self.sweeper.key_counts()

    def last_sweep_ms(self) -> int:
        """When the last complete sweeper pass ended (ms since the epoch; 0: none yet)."""
        return self.sweeper.last_pass_ms


_DELETED: Final = Entry(b"", -1)


def _logical_keys(ks: Keyspace, engine_keys: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    logical = ks.logical_of()
    for ek in engine_keys:
        if ek[0] in logical:
            yield logical[ek[0]], ek[1:]


class KeyspaceTxn:
    """Reads and buffered writes of one command (or one EXEC). Not thread-safe: the event
    loop owns it."""

    __slots__ = ("_ks", "_writes", "_undo", "now", "_map", "_taken", "_released", "_touched")

    def __init__(self, keyspace: Keyspace) -> None:
        self._ks = keyspace
        #: engine key -> new entry, or _DELETED.
        self._writes: dict[bytes, Entry] = {}
        #: (engine key, its previous buffered entry or None), for undo(); an empty engine key
        #: marks a saved map state instead (see _save_map_state).
        self._undo: list[tuple[bytes, Any]] = []
        #: The time this transaction judges expiry by (fixed within a command, like Redis).
        self.now = now_ms()
        #: The database map as changed by this transaction (None: unchanged).
        self._map: list[int] | None = None
        #: Free physical ids this transaction maps (the purger's first len(_taken) free ids).
        self._taken: list[int] = []
        #: Physical ids this transaction unmaps; queued for purging after the commit.
        self._released: list[int] = []
        #: Logical databases flushed or swapped (their watchers are told after the commit).
        self._touched: set[int] = set()

    @property
    def random(self) -> random.Random:
        """The keyspace's random number generator (RANDOMKEY draws from it)."""
        return self._ks.random

    def _phys(self, db: int) -> int:
        m = self._map
        return (m if m is not None else self._ks.map)[db]

    # -- reads ---------------------------------------------------------------------------
    def get(self, db: int, key: bytes) -> Entry | None:
        """The live entry of ``key``, or None when it is missing or expired."""
        ek = engine_key(self._phys(db), key)
        e = self._writes.get(ek)
        ks = self._ks
        if e is None:
            raw = ks.db.get(ek)
            if raw is None:
                ks.misses += 1
                return None
            e = decode_value(raw)
        elif e is _DELETED:
            ks.misses += 1
            return None
        if e.expire_ms and e.expire_ms <= self.now:
            ks.misses += 1
            return None
        ks.hits += 1
        return e

    def exists(self, db: int, key: bytes) -> bool:
        """Whether ``key`` is live."""
        return self.get(db, key) is not None

    def scan(self, db: int, lo: bytes | None = None, hi: bytes | None = None, *,
             reverse: bool = False) -> Iterator[tuple[bytes, Entry]]:
        """Live ``(key, entry)`` pairs of database ``db`` with ``lo <= key < hi`` (None: no
        bound), in key order, this transaction's own writes included."""
        phys = self._phys(db)
        start = bytes((phys,)) + (lo or b"")
        stop = bytes((phys,)) + hi if hi is not None else bytes((phys + 1,))
        if start >= stop:
            return iter(())
        own = sorted((k for k in self._writes if start <= k < stop), reverse=reverse)
        return self._merged(self._ks.db.range(start, stop, reverse=reverse), own, reverse)

    def _merged(self, base: Iterator[tuple[bytes, bytes]], own: list[bytes],
                reverse: bool) -> Iterator[tuple[bytes, Entry]]:
        writes, now, i = self._writes, self.now, 0

        def live(e: Entry) -> bool:
            return e is not _DELETED and not (e.expire_ms and e.expire_ms <= now)

        for ek, raw in base:
            while i < len(own) and (own[i] > ek if reverse else own[i] < ek):
                e = writes[own[i]]
                if live(e):
                    yield own[i][1:], e
                i += 1
            if i < len(own) and own[i] == ek:
                e = writes[ek]
                i += 1
            else:
                e = decode_value(raw)
            if live(e):
                yield ek[1:], e
        for k in own[i:]:
            e = writes[k]
            if live(e):
                yield k[1:], e

    # -- writes --------------------------------------------------------------------------
    def set(self, db: int, key: bytes, value: bytes, expire_ms: int = 0) -> None:
        """Buffer ``key = value`` with an absolute expiry in ms (0 = none). An expiry that
        has already passed deletes the key, as in Redis."""
        if expire_ms and expire_ms <= self.now:
            self.delete(db, key)
            return
        if len(value) > MAX_USER_VALUE:
            raise CommandError("string exceeds maximum allowed size")
        ek = engine_key(self._phys(db), key)
        self._undo.append((ek, self._writes.get(ek)))
        self._writes[ek] = Entry(value, expire_ms)

    def delete(self, db: int, key: bytes) -> bool:
        """Buffer the deletion of ``key``; whether it was live."""
        existed = self.get(db, key) is not None
        ek = engine_key(self._phys(db), key)
        self._undo.append((ek, self._writes.get(ek)))
        self._writes[ek] = _DELETED
        return existed

    def _save_map_state(self) -> list[int]:
        """Push the map state on the undo log and return the map to change."""
        m = self._map
        self._undo.append((b"", (None if m is None else list(m), len(self._taken),
                                 len(self._released), set(self._touched))))
        if m is None:
            m = self._map = list(self._ks.map)
        return m

    def flush(self, db: int | None) -> None:
        """Empty database ``db`` (every database when None), atomically with the rest of
        this transaction: a database with entries on disk is pointed at a fresh, empty
        physical id (one small write; the old id is purged in the background after the
        commit); this transaction's own buffered writes to it are dropped."""
        m = self._save_map_state()
        purger = self._ks.purger
        for d in range(DATABASES) if db is None else (db,):
            self._touched.add(d)
            phys = m[d]
            for ek in [k for k in self._writes if k[0] == phys]:
                self._undo.append((ek, self._writes.pop(ek)))
            if phys in self._taken or self._ks.physical_empty(phys):
                continue  # nothing on disk: no new id needed
            m[d] = purger.reserve(len(self._taken))
            self._taken.append(m[d])
            self._released.append(phys)

    def swap(self, a: int, b: int) -> None:
        """Swap logical databases ``a`` and ``b`` (SWAPDB), atomically with the rest of this
        transaction. Swapping a database with itself changes nothing, as in Redis."""
        if a == b:
            return
        m = self._save_map_state()
        m[a], m[b] = m[b], m[a]
        self._touched.update((a, b))

    def mark(self) -> int:
        """Start a command: refresh the clock and return a mark to :meth:`undo` to."""
        self.now = now_ms()
        return len(self._undo)

    def wrote_since(self, mark: int) -> bool:
        """Whether writes were buffered since ``mark``."""
        return len(self._undo) > mark

    def undo(self, mark: int) -> None:
        """Take back the writes buffered since ``mark`` (a failed command leaves no trace,
        as in Redis)."""
        undo, writes = self._undo, self._writes
        while len(undo) > mark:
            ek, previous = undo.pop()
            if not ek:
                m, taken, released, touched = previous
                self._map = m
                del self._taken[taken:]
                del self._released[released:]
                self._touched = touched
            elif previous is None:
                writes.pop(ek, None)
            else:
                writes[ek] = previous

    @property
    def dirty(self) -> bool:
        """Whether writes are buffered."""
        return bool(self._writes) or self._map is not None or bool(self._touched)

    def commit(self) -> None:
        """Apply the buffered writes, and the database map when it changed, as one atomic
        batch, then tell the watchers."""
        if not self.dirty:
            return
        writes, new_map = self._writes, self._map
        taken, released, touched = self._taken, self._released, self._touched
        # Committed or failed, these writes are settled: never apply them twice.
        self._writes, self._map, self._undo = {}, None, []
        self._taken, self._released, self._touched = [], [], set()
        batch = shaledb.WriteBatch(_zero_clock)
        expiring = 0
        for ek, e in writes.items():
            if e is _DELETED:
                batch.delete(ek)
            elif e.expire_ms:
                batch.put(ek, encode_value(e.value, e.expire_ms), expire_at_ms=e.expire_ms)
                expiring += 1
            else:
                batch.put(ek, encode_value(e.value, 0))
        ks = self._ks
        if new_map is not None and new_map != ks.map:
            batch.put(MAP_KEY, encode_map(new_map))
        else:
            new_map = None
        if len(batch):
            ks.db.write(batch)
            ks.writes += 1
            ks.expiring_writes += expiring
        if new_map is not None:
            ks.map = new_map
            ks.purger.committed(taken, released)
        if ks._on_write is not None and writes:
            # A generator: WATCH's registry looks at it only when someone watches.
            ks._on_write(_logical_keys(ks, writes))
        if ks._on_flush is not None and touched:
            if len(touched) == DATABASES:
                ks._on_flush(None)
            else:
                for d in sorted(touched):
                    ks._on_flush(d)


__all__ = [
    "DATABASES",
    "MAX_EXPIRE_MS",
    "MAX_USER_KEY",
    "MAX_USER_VALUE",
    "Entry",
    "Keyspace",
    "KeyspaceTxn",
    "decode_value",
    "encode_value",
    "engine_key",
    "expiry_of",
    "now_ms",
]
