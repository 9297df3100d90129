"""The server's keyspace: Redis' numbered databases and string values on one ShaleDB.

Mapping (documented byte by byte in docs/format.md, "Server keyspace", version 3):

- engine key = one byte, the *physical* database id (0x00-0xEF) that the logical database
  (SELECT 0-15) currently maps to (:mod:`shaledb.server.keyspace.dbmap`), followed by the Redis key.
  Callers speak logical numbers only; this module translates;
- engine value = one tag byte, then, when the tag's bit 7 is set, the absolute expiry as an
  8-byte big-endian count of milliseconds since the epoch, then: for an *inline* string (tag
  0x00 / 0x80) the value's bytes; for a *chunked* string (tag 0x01 / 0x81) its length and
  its chunk-set id (8 bytes each, big-endian).

A string longer than :data:`INLINE_MAX` is chunked: its bytes live in chunk records
(``0xF0`` + chunk-set id + chunk index, :data:`CHUNK_SIZE` bytes each, the last one
shorter), outside every database's key range. Key walks (KEYS, SCAN, RANDOMKEY, the expiry
sweeper, the purger) therefore read at most a small header per key, never a large value,
and copy no value at all (:class:`Entry` slices one out only when asked). APPEND rewrites
only the last, partial chunk and adds new ones, SETRANGE only the chunks it touches,
GETRANGE reads only the chunks it needs. Each chunk set belongs to exactly one header:
RENAME and MOVE keep the id, COPY copies the chunks to a new one. A header that is
overwritten, deleted, expired or purged leaves a *garbage* record (``0xF1`` + id -> number
of chunks) in the same write batch, and the purger (:mod:`shaledb.server.keyspace.purge`) deletes
those chunks in bounded steps, so nothing leaks, also across a crash.

The server judges expiry itself, from the header, on every read and walk; the engine is
*not* given the expiry. An entry the engine dropped by itself at compaction would leak a
chunked string's chunks and make the key counts wrong; instead the active-expiry sweeper
deletes expired keys (:mod:`shaledb.server.keyspace.expiry`), with their garbage record.

Key counts: each physical id has a count record (keys present, and how many have an
expiry) under the metadata prefix, updated in the same write batch as the writes that change
it, so DBSIZE and INFO keyspace are O(1) and exact. A key is counted from its write to its
deletion. As in Redis, an expired key nobody looked at still counts until the sweeper
deletes it, and one a command met is gone at once: Redis deletes it on access; here the
read remembers it (:meth:`Keyspace.note_expired`), the counts leave it out, and the
sweeper's next tick deletes it. To know whether a write creates a key or replaces one, and
whether it orphans a chunk set, the commit reads the committed entry of every key it writes
that the transaction did not read already (one point read per blind SET).

Commands read and write through a :class:`KeyspaceTxn`: its writes are buffered (reads see
them, chunks included) and :meth:`KeyspaceTxn.commit` applies them as one
:class:`shaledb.WriteBatch`, so a multi-key command or a whole ``EXEC`` is atomic, also
across a crash. The connection lets the consecutive write commands of one read (a pipeline)
share one transaction and so one WAL record; :meth:`KeyspaceTxn.mark` and
:meth:`KeyspaceTxn.undo` take back the writes of one command that fails. All of this runs on
the event-loop thread, one command at a time, which is what makes read-modify-write
commands atomic with respect to other clients. Background writers (the sweeper) first
settle the turn's shared transaction (:attr:`Keyspace.settle`): a header it buffered may
reference a chunk set the sweeper would otherwise free.

FLUSHDB, FLUSHALL and SWAPDB change the database map inside the transaction too, so the
map record and the data written around them are one batch; a flushed physical id is queued
for the background purger once the commit succeeded.
"""

from __future__ import annotations

import bisect
import collections
import logging
import operator
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import shaledb

from ...engine.replication import OP_PUT
from ...errors import CorruptionError, IncompatibleFormatError
from ...options import MAX_EXPIRE_AT_MS, MAX_KEY_SIZE
from ...snapshot import Reader
from ..errors import READONLY_MESSAGE, CommandError
from . import notify
from .dbmap import (
    CHUNK_PREFIX,
    COUNT_PREFIX,
    GARBAGE_PREFIX,
    GROUP_PREFIX,
    HASHES_MAP_VERSION,
    LISTS_MAP_VERSION,
    LOGICAL_DATABASES,
    MAP_KEY,
    MAP_VERSION,
    MEMBER_GARBAGE_PREFIX,
    MEMBER_PREFIX,
    META_PREFIX,
    PHYSICAL_DATABASES,
    SCORE_PREFIX,
    STRINGS_MAP_VERSION,
    ZSETS_MAP_VERSION,
    count_key,
    decode_counts,
    decode_map,
    encode_counts,
    encode_map,
    map_version,
)
from .expiry import ActiveExpiry
from .purge import Purger
from .values import (
    CHUNK_SIZE,
    COLL_TAGS,
    GARBAGE_LIST_MAX,
    INLINE_MAX,
    LIST_BIAS,
    LIST_INDEX_MAX,
    MAX_MEMBER,
    MAX_STRING,
    TAG_CHUNKED,
    TAG_EXPIRES,
    TAG_LIST,
    TAG_SET,
    TAG_STREAM,
    TAG_STRING,
    TAG_ZSET,
    TYPE_NAMES,
    ChunkRef,
    CollRef,
    chunk_count,
    chunk_key,
    chunk_key_parts,
    chunk_ref_of,
    coll_ref_of,
    decode_garbage,
    encode_coll,
    encode_garbage,
    encode_header,
    encode_value,
    expiry_of,
    garbage_id,
    garbage_key,
    id_of,
    list_index,
    list_index_of,
    member_key,
    member_prefix,
    now_ms,
    orphan,
    pack_score,
    score_key,
    score_prefix,
    unpack_score,
    wrong_type,
)

log = logging.getLogger("shaledb.server")

#: Number of logical databases (SELECT 0-15).
DATABASES: Final = LOGICAL_DATABASES
#: Longest Redis key: the engine's limit minus the database byte.
MAX_USER_KEY: Final = MAX_KEY_SIZE - 1
#: Longest Redis string value (see values.MAX_STRING).
MAX_USER_VALUE: Final = MAX_STRING
#: Largest expiry accepted, in ms since the epoch (about the year 33,658): the engine's limit
#: for an absolute expiry.
MAX_EXPIRE_MS: Final = MAX_EXPIRE_AT_MS
#: Up to this many chunks missing from the transaction's buffer are read with point reads;
#: more with one range scan.
_POINT_READS: Final = 4
#: Entries rewritten per write batch while upgrading a version 2 directory.
_UPGRADE_BATCH: Final = 2_000
#: Most collections whose member deletions the keyspace counts (for random draws, see
#: KeyspaceTxn.random_members); past it, the oldest counted is forgotten.
#: (Bounds that tests lower are plain variables, not ``Final``: the compiled build inlines a
#: ``Final`` constant, and a test's lower value would never reach compiled code.)
MEMBER_DELETES_MAX = 10_000
#: Most expired keys remembered for deletion after a read met them (:meth:`Keyspace.
#: note_expired`); past it, such keys count in DBSIZE until the sweeper reaches them.
LAZY_EXPIRED_MAX = 100_000

def _zero_clock() -> float:
    return 0.0


def _nothing() -> None:
    return None


_NEW: Final = notify.NEW


def _discard_events(events: list[notify.Event]) -> None:
    return None


def engine_key(phys: int, key: bytes) -> bytes:
    """The engine key of Redis key ``key`` in physical database ``phys``."""
    if len(key) > MAX_USER_KEY:
        raise CommandError(f"key of {len(key)} bytes exceeds the maximum of {MAX_USER_KEY}")
    return bytes((phys,)) + key


class Entry:
    """A string value and its absolute expiry in ms (0 = none).

    An inline string keeps the engine value it was decoded from and slices its bytes out
    only when :attr:`value` is read, so walks that only look at keys or expiries never copy
    values. A chunked string (:attr:`chunks` set) reads its chunks through the transaction
    it was read from when :attr:`value` or :meth:`read` is called.
    """

    __slots__ = ("_raw", "_start", "expire_ms", "chunks", "_txn", "coll")

    def __init__(self, value: bytes, expire_ms: int = 0, start: int = 0,
                 chunks: ChunkRef | None = None, txn: KeyspaceTxn | None = None,
                 coll: CollRef | None = None) -> None:
        self._raw = value
        self._start = start
        self.expire_ms = expire_ms
        self.chunks = chunks
        self._txn = txn
        #: Set for a hash or a set (then there is no string: :attr:`value` is WRONGTYPE).
        self.coll = coll

    @property
    def type_name(self) -> bytes:
        """What TYPE answers: ``string``, ``hash`` or ``set``."""
        return TYPE_NAMES[TAG_STRING if self.coll is None else self.coll.kind]

    @property
    def value(self) -> bytes:
        """The string's bytes (a chunked string is assembled from its chunks)."""
        if self.coll is not None:
            raise wrong_type()
        if self.chunks is None:
            return self._raw[self._start:] if self._start else self._raw
        return self._reader().read_chunks(self.chunks, 0, self.chunks.length)

    @property
    def length(self) -> int:
        """The string's length, without reading it."""
        if self.coll is not None:
            raise wrong_type()
        if self.chunks is None:
            return len(self._raw) - self._start
        return self.chunks.length

    def read(self, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` (exclusive, ``0 <= start <= stop <= length``); a
        chunked string reads only the chunks they lie in."""
        if self.chunks is None:
            s = self._start
            return self._raw[s + start:s + stop]
        if start >= stop:
            return b""
        return self._reader().read_chunks(self.chunks, start, stop)

    def _reader(self) -> KeyspaceTxn:
        if self._txn is None:
            raise RuntimeError("a chunked string read outside of a keyspace transaction")
        return self._txn

    def __iter__(self) -> Iterator[Any]:
        """``value, expire_ms = entry`` (the shape of the named tuple it once was)."""
        return iter((self.value, self.expire_ms))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, tuple) and len(other) == 2:
            return bool(self.expire_ms == other[1] and self.value == other[0])
        if not isinstance(other, Entry):
            return NotImplemented
        if (self.expire_ms != other.expire_ms or self.chunks != other.chunks
                or self.coll != other.coll):
            return False
        if self.coll is not None:
            return True
        return self.chunks is not None or self.value == other.value

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        what = (f"coll={self.coll}" if self.coll is not None
                else f"chunks={self.chunks}" if self.chunks is not None
                else f"{self.length} bytes")
        return f"Entry({what}, expire_ms={self.expire_ms})"


def decode_value(raw: bytes, txn: KeyspaceTxn | None = None) -> Entry:
    """The entry an engine value encodes (see :func:`encode_value`, :func:`encode_header`);
    chunked strings read their chunks through ``txn``."""
    tag = raw[0] if raw else -1
    if tag == TAG_STRING:
        return Entry(raw, 0, 1)
    if tag == TAG_EXPIRES and len(raw) >= 9:
        return Entry(raw, expiry_of(raw), 9)
    if tag & 0x7F == TAG_CHUNKED:
        ref = chunk_ref_of(raw)
        return Entry(b"", expiry_of(raw), 0, ref, txn)
    if tag & 0x7F in COLL_TAGS:
        return Entry(b"", expiry_of(raw), 0, None, None, coll_ref_of(raw))
    raise CommandError("the stored value has an unknown encoding (written by a newer ShaleDB?)")


def _encode_entry(e: Entry) -> bytes:
    if e.coll is not None:
        return encode_coll(e.coll, e.expire_ms)
    if e.chunks is not None:
        return encode_header(e.chunks, e.expire_ms)
    raw, start = e._raw, e._start
    # Decoded from an engine value (start > 0) and the expiry unchanged (RENAME, MOVE):
    # that engine value is the encoding, no copy needed.
    if start and start == (9 if e.expire_ms else 1) and expiry_of(raw) == e.expire_ms:
        return raw
    return encode_value(e.value, e.expire_ms)


class Keyspace:
    """The logical databases of one open :class:`shaledb.DB`.

    ``on_write(keys)`` is called after every successful commit with the ``(db, key)`` pairs
    it changed (WATCH uses it); ``on_flush(db, keys)`` after database ``db`` was emptied
    (``keys``: its watched keys that existed, the only ones a flush changes, as Redis' touch
    of a flushed database) or swapped (``keys`` None: any watched key of it may change).
    Opening reads the database map (upgrading a directory of server keyspace version 1 or 2
    first), the key counts of the mapped ids, and queues for purging every unmapped physical
    id that still holds entries.
    """

    def __init__(self, db: shaledb.DB,
                 on_write: Callable[[Iterable[tuple[int, bytes]]], None] | None = None,
                 on_flush: Callable[[int, list[bytes] | None], None] | None = None,
                 watched_keys: Callable[[int], Iterable[bytes]] | None = None) -> None:
        self.db = db
        self._on_write = on_write
        self._on_flush = on_flush
        #: The keys of a logical database that clients WATCH (a flush checks which exist).
        self.watched_keys: Callable[[int], Iterable[bytes]] = watched_keys or (lambda d: ())
        raw_map = db.get(MAP_KEY)
        #: Logical database -> physical id (committed state).
        self.map: list[int] = decode_map(raw_map)
        #: Whether the version 2 map record still has to be written (a directory without any
        #: server entry yet: the first write records it, so older servers refuse the
        #: directory from then on).
        self.map_pending = False
        version = map_version(raw_map)
        if version in (STRINGS_MAP_VERSION, HASHES_MAP_VERSION, LISTS_MAP_VERSION,
                       ZSETS_MAP_VERSION):
            # Server keyspace versions 3 to 6 have the same bytes minus hashes and sets
            # (3), lists (3, 4), sorted sets (3 to 5) and streams (3 to 6): the first write
            # records the new map version (see Keyspace.write), before the directory can
            # hold what they would misread.
            self.map_pending = True
        elif version != MAP_VERSION:
            if raw_map is None and self._first_server_key() is None:
                self.map_pending = True
            else:
                self._upgrade()
        #: Physical id -> (keys, keys with an expiry), committed, for every mapped id (and
        #: ids unmapped since, until purged).
        self.counts: dict[int, tuple[int, int]] = {
            p: decode_counts(db.get(count_key(p))) for p in self.map}
        #: Incremented by every write; a transaction's cached committed reads are valid only
        #: for the generation they were read at.
        self.generation = 0
        #: Engine keys of expired entries a read met, not deleted yet (the sweeper deletes
        #: them), and how many per physical id (the counts leave them out).
        self.lazy_expired: set[bytes] = set()
        self._lazy_per_phys: dict[int, int] = {}
        #: The next chunk-set id: one past the largest in use (ids of chunk sets that are
        #: entirely gone may be used again; nothing references them).
        self._next_chunk_id = self._largest_chunk_id() + 1
        #: Chunk-set ids whose garbage record was written since the start, oldest first:
        #: the purger works through them with point reads (scanning the garbage range
        #: would skip the tombstones of every record deleted before it, again and again).
        self.garbage_ids: collections.deque[int] = collections.deque()
        #: Whether garbage records may exist that garbage_ids does not list (found at open,
        #: or the list was full): the purger then scans the garbage range for them.
        self.garbage_unlisted = self._first(GARBAGE_PREFIX) is not None
        #: The same for collections (hashes, sets) whose member garbage record was written.
        self.member_garbage_ids: collections.deque[int] = collections.deque()
        self.member_garbage_unlisted = self._first(MEMBER_GARBAGE_PREFIX) is not None
        #: Commits pending writes of the turn's shared transaction (the server sets it);
        #: background writers call it first.
        self.settle: Callable[[], None] = _nothing
        #: A Lua script past busy-reply-threshold is writing from its thread
        #: (exec/scripting.py): the background writers (expiry, purge) wait.
        self.frozen = False
        #: Writes committed since the server last waited for an fsync (appendfsync always).
        self.writes = 0
        #: Keys written with an expiry (the active-expiry sweeper slows down without any).
        self.expiring_writes = 0
        #: Keys deleted by the active-expiry sweeper since the server started.
        self.expired_keys = 0
        self.random = random.Random()
        self.purger = Purger(self)
        self.sweeper = ActiveExpiry(self)
        #: Collection id -> member records deleted since open (their tombstones stay in
        #: the member range until compaction, and a walk of the range skips them).
        self.member_deletes: dict[int, int] = {}
        #: Collection id -> [floor, ceiling]: engine keys no committed member of it lies
        #: below / above (None: unknown). A walk from either end starts there, past the
        #: tombstones of the members deleted at that end (a set drained by SPOP). Learnt by
        #: walks from an end, lowered / raised by the commit of a member outside them.
        self.member_bounds: dict[int, list[bytes | None]] = {}
        #: The same for the score index of sorted sets (ZPOPMIN drains it from one end).
        self.score_bounds: dict[int, list[bytes | None]] = {}
        #: notify-keyspace-events (:mod:`.notify` flags; 0: off) and where the events of
        #: a successful commit go (the server's pub/sub; nowhere until it sets it).
        self.notify_flags = 0
        self.publish_events: Callable[[list[notify.Event]], None] = _discard_events
        #: Key lookups that found a live key / found none (INFO keyspace_hits, _misses).
        self.hits = 0
        self.misses = 0
        #: This node is a replica: every write but the replication stream's is refused
        #: (:meth:`write`), and the background writers (expiry, purge) stand still: the
        #: primary's deletions arrive through the stream.
        self.replica = False
        #: Automatic failover: whether this node may write now (its lease is current;
        #: ``Replication.can_write``, the same predicate the dispatcher and the turn's
        #: commit ask). None: no failover.
        self.write_fence: Callable[[], bool] | None = None

    def fenced(self) -> bool:
        """No write may be made now: a replica, or a failover primary past its lease (the
        background writers wait; :meth:`write` refuses)."""
        fence = self.write_fence
        return self.replica or (fence is not None and not fence())

    def note_replicated(self, ops: list[Any]) -> None:
        """A replicated write group (flat engine ops) was applied to the database behind
        this keyspace's back: bring what memory caches of it up to date. Cheap for the
        common case (data keys): cached reads are invalidated by the generation, watchers
        of the touched databases are told; the map and the counts are read again only when
        the group wrote them."""
        self.generation += 1
        map_changed = False
        touched: set[int] = set()
        lazy = self.lazy_expired
        counts = self.counts
        for i in range(0, len(ops), 4):
            ek = ops[i + 1]
            first = ek[0] if ek else META_PREFIX
            if first == META_PREFIX:
                if ek == MAP_KEY:
                    map_changed = True
                elif len(ek) == len(COUNT_PREFIX) + 1 and ek.startswith(COUNT_PREFIX):
                    # The count record travels in the same group as the writes it counts.
                    counts[ek[-1]] = decode_counts(ops[i + 3] if ops[i] == OP_PUT
                                                   else None)
            elif first < PHYSICAL_DATABASES:
                touched.add(first)
                if lazy and ek in lazy:
                    self.forget_expired(ek)
            else:
                # Members, score index, groups: walks' learnt bounds may be wrong now.
                self.member_bounds.clear()
                self.score_bounds.clear()
        if map_changed:
            old = self.map
            self.map = decode_map(self.db.get(MAP_KEY))
            self.map_pending = map_version(self.db.get(MAP_KEY)) != MAP_VERSION
            for p in self.map:
                if p not in counts:
                    counts[p] = decode_counts(self.db.get(count_key(p)))
            if self._on_flush is not None:
                for db in range(len(self.map)):
                    if self.map[db] != old[db]:
                        self._on_flush(db, None)
        if self._on_flush is not None and touched:
            for db, phys in enumerate(self.map):
                if phys in touched:
                    self._on_flush(db, None)  # any watched key of it may have changed

    def reload(self) -> None:
        """Read every cached fact about the database again (after a full resync replaced
        its contents, and when a replica becomes a primary and its background writers and
        chunk-id counter take over)."""
        raw_map = self.db.get(MAP_KEY)
        self.map = decode_map(raw_map)
        version = map_version(raw_map)
        self.map_pending = version != MAP_VERSION
        self.counts = {p: decode_counts(self.db.get(count_key(p))) for p in self.map}
        self.generation += 1
        self.lazy_expired.clear()
        self._lazy_per_phys.clear()
        self._next_chunk_id = self._largest_chunk_id() + 1
        self.garbage_ids.clear()
        self.garbage_unlisted = self._first(GARBAGE_PREFIX) is not None
        self.member_garbage_ids.clear()
        self.member_garbage_unlisted = self._first(MEMBER_GARBAGE_PREFIX) is not None
        self.member_deletes.clear()
        self.member_bounds.clear()
        self.score_bounds.clear()
        self.purger.rescan()
        if self._on_flush is not None:
            for db in range(len(self.map)):
                self._on_flush(db, None)

    def _first(self, prefix: int, reverse: bool = False) -> bytes | None:
        """The first (last) engine key starting with byte ``prefix``."""
        for k, _ in self.db.range(bytes((prefix,)), bytes((prefix + 1,)), reverse=reverse,
                                  limit=1):
            return k
        return None

    def _first_server_key(self) -> bytes | None:
        """The first engine key the server wrote, if any (a database, chunk, garbage or
        metadata entry)."""
        for k, _ in self.raw_range(b"", b"\xff\xff", limit=1):
            return k
        return None

    def _largest_chunk_id(self) -> int:
        """The largest chunk-set or collection id in use (one counter names both): every
        live chunk set has chunks, every live collection has members (an empty one is
        deleted; a stream, which may be empty, always has its anchor record in the group
        range), and every dropped one its garbage record until it is gone."""
        largest = 0
        for prefix in (CHUNK_PREFIX, GARBAGE_PREFIX, MEMBER_PREFIX, MEMBER_GARBAGE_PREFIX,
                       GROUP_PREFIX):
            last = self._first(prefix, reverse=True)
            if last is not None:
                largest = max(largest, id_of(last))
        return largest

    def _upgrade(self) -> None:
        """Turn a directory of server keyspace version 1 or 2 into version 3, once: rewrite
        every value that has an expiry without the engine's copy of it, count the keys of
        every mapped id, then write the count records and the version 2 map record in one
        batch. A crash before that batch redoes the upgrade at the next open (rewriting a
        value is idempotent). O(keys), at the first open by this version only."""
        db = self.db
        if db.options.read_only:
            raise IncompatibleFormatError(
                "this database was written by an older ShaleDB server (server keyspace "
                "version 2 or older); open it writable once to upgrade it")
        t0 = time.monotonic()
        counts: dict[int, tuple[int, int]] = {}
        total = 0
        for phys in self.map:
            keys = expires = 0
            batch = shaledb.WriteBatch()
            for ek, raw in self.raw_range(bytes((phys,)), bytes((phys + 1,))):
                if not raw or raw[0] not in (TAG_STRING, TAG_EXPIRES):
                    raise IncompatibleFormatError(
                        f"a value of an older server keyspace has tag {raw[:1].hex()}, which "
                        "that version did not write: refusing to upgrade a damaged directory")
                keys += 1
                if expiry_of(raw):
                    expires += 1
                    batch.put(ek, raw)  # the same value, without an engine expiry
                    if len(batch) >= _UPGRADE_BATCH:
                        db.write(batch)
                        batch = shaledb.WriteBatch()
            if len(batch):
                db.write(batch)
            counts[phys] = (keys, expires)
            total += keys
        final = shaledb.WriteBatch()
        for phys, (keys, expires) in counts.items():
            final.put(count_key(phys), encode_counts(keys, expires))
        final.put(MAP_KEY, encode_map(self.map))
        db.write(final)
        if total:
            log.warning("upgraded the server keyspace of %s to version 3 (chunked strings, "
                        "key counts): %d keys in %.1f s", db.path, total,
                        time.monotonic() - t0)

    def begin(self) -> KeyspaceTxn:
        """A new buffered transaction (commit it, or drop it to discard its writes)."""
        return KeyspaceTxn(self)

    def view(self, snapshot: Reader) -> KeyspaceTxn:
        """A read-only transaction that sees the database as of ``snapshot`` (its map of
        logical databases included): :class:`KeyspaceView`."""
        return KeyspaceView(self, snapshot)

    def raw_range(self, lo: bytes, hi: bytes, *, limit: int | None = None
                  ) -> Iterator[tuple[bytes, bytes]]:
        """Engine entries with ``lo <= key < hi``, expired ones included (deleted ones
        never)."""
        return self.db.range(lo, hi, limit=limit, include_expired=True)

    def physical_empty(self, phys: int) -> bool:
        """Whether physical database ``phys`` holds no entry at all."""
        return next(self.raw_range(bytes((phys,)), bytes((phys + 1,)), limit=1), None) is None

    def logical_of(self) -> dict[int, int]:
        """Physical id -> logical database, for the mapped ids."""
        return {p: d for d, p in enumerate(self.map)}

    def new_chunk_id(self) -> int:
        """A chunk-set or collection id no header or garbage record uses."""
        cid = self._next_chunk_id
        self._next_chunk_id += 1
        return cid

    @property
    def chunk_garbage_pending(self) -> bool:
        """Whether chunk garbage records may exist."""
        return bool(self.garbage_ids) or self.garbage_unlisted

    @property
    def member_garbage_pending(self) -> bool:
        """Whether member garbage records (dropped hashes and sets) may exist."""
        return bool(self.member_garbage_ids) or self.member_garbage_unlisted

    @property
    def garbage_pending(self) -> bool:
        """Whether garbage records may exist (the purger deletes their chunks or
        members)."""
        return (bool(self.garbage_ids) or self.garbage_unlisted
                or bool(self.member_garbage_ids) or self.member_garbage_unlisted)

    def write(self, batch: shaledb.WriteBatch,
              deltas: dict[int, list[int]] | None = None, *,
              reset: Iterable[int] = (), garbage: Iterable[int] = (),
              member_garbage: Iterable[int] = (), map_written: bool = False) -> None:
        """Write ``batch`` plus the count records it changes: ids in ``reset`` start from
        zero, then ``deltas`` (physical id -> [keys, expires] change) apply; plus the map
        record while it is pending, unless ``batch`` writes it already; ``garbage`` lists
        the chunk sets it writes garbage records for, ``member_garbage`` the collections.
        Memory follows the durable write: the
        counts change only once the batch is written."""
        pending_map = self.map_pending and not map_written
        if pending_map:
            batch.put(MAP_KEY, encode_map(self.map))
        new: dict[int, tuple[int, int]] = {}
        for phys in reset:
            new[phys] = (0, 0)
        for phys, (dk, de) in (deltas or {}).items():
            if not dk and not de:
                continue
            keys, expires = new.get(phys, self.counts.get(phys, (0, 0)))
            keys, expires = keys + dk, expires + de
            if keys < 0 or expires < 0 or expires > keys:
                log.error("key count of physical database %d went to (%d, %d); clamped "
                          "(a bug: please report it)", phys, keys, expires)
                keys = max(keys, 0)
                expires = min(max(expires, 0), keys)
            new[phys] = (keys, expires)
        for phys, (keys, expires) in new.items():
            batch.put(count_key(phys), encode_counts(keys, expires))
        if self.fenced():
            # The fence of a replica (and of a demoted primary): its data changes only
            # through the replication stream (note_replicated), never through a command, a
            # script or a background writer that slipped past the dispatcher's check.
            raise CommandError(READONLY_MESSAGE, prefix="READONLY")
        self.db.write(batch)
        self.generation += 1
        self.counts.update(new)
        if pending_map or map_written:
            self.map_pending = False
        ids = self.garbage_ids
        for cid in garbage:
            if len(ids) < GARBAGE_LIST_MAX:
                ids.append(cid)
            else:
                self.garbage_unlisted = True
        ids = self.member_garbage_ids
        for cid in member_garbage:
            if len(ids) < GARBAGE_LIST_MAX:
                ids.append(cid)
            else:
                self.member_garbage_unlisted = True

    def note_expired(self, ek: bytes) -> None:
        """A read met ``ek`` expired (committed): leave it out of the counts from now on and
        have the sweeper delete it (Redis deletes a key its lookup finds expired)."""
        lazy = self.lazy_expired
        if ek not in lazy and len(lazy) < LAZY_EXPIRED_MAX:
            lazy.add(ek)
            self._lazy_per_phys[ek[0]] = self._lazy_per_phys.get(ek[0], 0) + 1
            # Redis deletes (and announces) the key at this lookup; the sweeper deletes it
            # soon and does not announce it again.
            self.expired_event(ek)

    def expired_event(self, ek: bytes) -> None:
        """Publish the ``expired`` notification of engine key ``ek`` (when asked for)."""
        if notify.wanted(self.notify_flags, notify.EXPIRED) and ek[0] in self.map:
            self.publish_events([(self.map.index(ek[0]), b"expired", ek[1:])])

    def forget_expired(self, ek: bytes) -> None:
        """``ek`` was written or deleted: no longer a remembered expired key."""
        lazy = self.lazy_expired
        if lazy and ek in lazy:
            lazy.remove(ek)
            self._lazy_per_phys[ek[0]] -= 1

    def _forget_physical(self, phys: int) -> None:
        """Physical id ``phys`` was unmapped: its remembered expired keys go with it."""
        if self._lazy_per_phys.pop(phys, 0):
            self.lazy_expired = {ek for ek in self.lazy_expired if ek[0] != phys}

    # -- what DBSIZE and INFO report -------------------------------------------------------
    def live_counts(self, phys: int) -> tuple[int, int]:
        """(keys, keys with an expiry) of physical id ``phys``, committed, without the
        expired keys a read already met."""
        keys, expires = self.counts.get(phys, (0, 0))
        lazy = self._lazy_per_phys.get(phys, 0)
        return keys - lazy, expires - lazy

    def key_counts(self) -> dict[int, tuple[int, int]]:
        """Logical database -> (keys, keys with an expiry), exact and committed (databases
        without keys are left out)."""
        out: dict[int, tuple[int, int]] = {}
        for d, p in enumerate(self.map):
            c = self.live_counts(p)
            if c[0]:
                out[d] = c
        return out

    def expiring_keys(self) -> int:
        """Keys with an expiry in the mapped databases (committed)."""
        counts = self.counts
        return sum(counts.get(p, (0, 0))[1] for p in self.map)

    def last_sweep_ms(self) -> int:
        """When the last complete sweeper pass ended (ms since the epoch; 0: none yet)."""
        return self.sweeper.last_pass_ms


_DELETED: Final = Entry(b"", -1)
_SECOND: Final = operator.itemgetter(1)
_MISSING: Final = object()
#: A buffered member deletion (a member's value may be any bytes, the empty ones included).
_NO_MEMBER: Final = object()
#: Collections up to this many members are read whole to draw random members uniformly
#: (HRANDFIELD, SRANDMEMBER, SPOP); larger ones are probed at random positions in member
#: order, which is cheap but not uniform (see docs/design.md).
RANDOM_EXACT_MAX: Final = 128
#: A transaction's buffered records of one collection are kept sorted as they are buffered
#: (bisect.insort) up to this many; past it they are appended and sorted when next walked
#: (one HSET of a million fields must not cost a million memmoves of a growing list).
_OWN_INSORT_MAX: Final = 4096


def _next_id_key(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (9 bytes: a first byte and
    a collection id)."""
    return prefix[:1] + member_prefix(id_of(prefix) + 1)[1:]


def _logical_keys(ks: Keyspace, engine_keys: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    logical = ks.logical_of()
    for ek in engine_keys:
        if ek[0] in logical:
            yield logical[ek[0]], ek[1:]


class KeyspaceTxn:
    """Reads and buffered writes of one command (or one EXEC). Not thread-safe: the event
    loop owns it."""

    __slots__ = ("_ks", "_writes", "_chunks", "_base", "_base_gen", "_undo", "now", "_map",
                 "_taken", "_released", "_touched", "_members", "_new_ids", "_events",
                 "_own", "_own_unsorted", "_skip", "_skip_gen", "_db", "view")

    def __init__(self, keyspace: Keyspace, view: Reader | None = None) -> None:
        self._ks = keyspace
        #: Where committed state is read: the database, or for a *view* (``view``) a
        #: snapshot: a read-only transaction that sees the database as of that snapshot
        #: (sync-replicas reads, at the sequence replicas acknowledged: exec/replication.py).
        #: A view never writes, never tells the keyspace that a key expired (an old
        #: version's expiry says nothing of the latest), and walks collections without the
        #: keyspace's walk bounds (learnt from, and valid for, the latest state only).
        self._db: Reader = keyspace.db if view is None else view
        self.view = view is not None
        #: engine key -> new entry, or _DELETED (entries of chunked strings are stored
        #: without a transaction and bound to one when read).
        self._writes: dict[bytes, Entry] = {}
        #: chunk key -> the chunk's new bytes.
        self._chunks: dict[bytes, bytes] = {}
        #: member key (a hash's field, a set's member) -> its new value, or _NO_MEMBER.
        self._members: dict[bytes, Any] = {}
        #: The keys of ``_members`` by their first 9 bytes (record type + collection id),
        #: sorted (except the lists named in ``_own_unsorted``): a walk of one collection
        #: merges in its own buffered records by bisection, not by a pass over every record
        #: the turn buffered. (That pass made a pipeline of pops quadratic: with 50 clients
        #: sending 16 SPOPs each, 800 pops shared one transaction and each walked all the
        #: others' deletions; SPOP -P 16 ran at 1k/s, slower than one per round trip.)
        self._own: dict[bytes, list[bytes]] = {}
        self._own_unsorted: set[bytes] = set()
        #: (first 9 bytes, reverse) -> a record key: every record of that collection from
        #: the walk's end up to it, committed or buffered, is deleted in ``_members``, so a
        #: walk from that end starts past it (ZPOPMIN after ZPOPMIN in one transaction
        #: otherwise re-walked every entry the transaction had already popped). Valid while
        #: nothing is committed (``_skip_gen``) or undone, and dropped when a record is
        #: buffered on the skipped side.
        self._skip: dict[tuple[bytes, bool], bytes] = {}
        self._skip_gen = keyspace.generation
        #: Collections created by this transaction: nothing committed to read for them.
        self._new_ids: set[int] = set()
        #: engine key -> its committed engine value (None: none), as read at generation
        #: ``_base_gen``: the commit needs the old entry of every key it writes.
        self._base: dict[bytes, bytes | None] = {}
        self._base_gen = keyspace.generation
        #: (engine key, its previous buffered entry or None), for undo(); an empty engine key
        #: marks a saved map state instead (see _save_map_state), a chunk key a chunk.
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
        #: Logical databases flushed (-> their watched keys that existed) or swapped (-> None).
        self._touched: dict[int, list[bytes] | None] = {}
        #: Keyspace notifications raised by the buffered writes: (undo-log length when
        #: raised, db, event, key); published after the commit, dropped by undo().
        self._events: list[tuple[int, int, bytes, bytes]] = []

    @property
    def random(self) -> random.Random:
        """The keyspace's random number generator (RANDOMKEY draws from it)."""
        return self._ks.random

    def _phys(self, db: int) -> int:
        m = self._map
        return (m if m is not None else self._ks.map)[db]

    def _committed(self, ek: bytes) -> bytes | None:
        """The committed engine value of ``ek`` (cached until the next write of anyone)."""
        base = self._base
        gen = self._ks.generation
        if self._base_gen != gen:
            base.clear()
            self._base_gen = gen
        raw = base.get(ek, _MISSING)
        if raw is _MISSING:
            raw = base[ek] = self._db.get(ek)
        return raw  # type: ignore[return-value]

    # -- reads ---------------------------------------------------------------------------
    def get(self, db: int, key: bytes) -> Entry | None:
        """The live string entry of ``key``, or None when it is missing or expired;
        WRONGTYPE when it holds another type (the one place string commands are checked)."""
        e = self.lookup(db, key)
        if e is not None and e.coll is not None:
            raise wrong_type()
        return e

    def get_coll(self, db: int, key: bytes, kind: int) -> Entry | None:
        """The live hash (``kind`` TAG_HASH) or set (TAG_SET) entry of ``key`` (its
        :attr:`Entry.coll` names the collection), or None; WRONGTYPE for another type."""
        e = self.lookup(db, key)
        if e is not None and (e.coll is None or e.coll.kind != kind):
            raise wrong_type()
        return e

    def lookup(self, db: int, key: bytes) -> Entry | None:
        """The live entry of ``key`` of any type, or None when it is missing or expired."""
        ek = engine_key(self._phys(db), key)
        e = self._writes.get(ek)
        ks = self._ks
        if e is None:
            raw = self._committed(ek)
            if raw is None:
                ks.misses += 1
                return None
            e = decode_value(raw, self)
            if e.expire_ms and e.expire_ms <= self.now:
                ks.misses += 1
                if not self.view:
                    ks.note_expired(ek)
                return None
        elif e is _DELETED:
            ks.misses += 1
            return None
        elif e.chunks is not None:
            e = Entry(b"", e.expire_ms, 0, e.chunks, self)
        if e.expire_ms and e.expire_ms <= self.now:
            ks.misses += 1
            return None
        ks.hits += 1
        return e

    def exists(self, db: int, key: bytes) -> bool:
        """Whether ``key`` is live."""
        return self.lookup(db, key) is not None

    def scan(self, db: int, lo: bytes | None = None, hi: bytes | None = None, *,
             reverse: bool = False) -> Iterator[tuple[bytes, Entry]]:
        """Live ``(key, entry)`` pairs of database ``db`` with ``lo <= key < hi`` (None: no
        bound), in key order, this transaction's own writes included. Values are not copied
        unless read (:attr:`Entry.value`)."""
        phys = self._phys(db)
        start = bytes((phys,)) + (lo or b"")
        stop = bytes((phys,)) + hi if hi is not None else bytes((phys + 1,))
        if start >= stop:
            return iter(())
        own = sorted((k for k in self._writes if start <= k < stop), reverse=reverse)
        return self._merged(self._db.range(start, stop, reverse=reverse), own, reverse)

    def _merged(self, base: Iterator[tuple[bytes, bytes]], own: list[bytes],
                reverse: bool) -> Iterator[tuple[bytes, Entry]]:
        writes, now, i = self._writes, self.now, 0

        def live(e: Entry) -> Entry | None:
            if e is _DELETED or (e.expire_ms and e.expire_ms <= now):
                return None
            if e.chunks is not None and e._txn is None:
                return Entry(b"", e.expire_ms, 0, e.chunks, self)
            return e

        for ek, raw in base:
            while i < len(own) and (own[i] > ek if reverse else own[i] < ek):
                e = live(writes[own[i]])
                if e is not None:
                    yield own[i][1:], e
                i += 1
            if i < len(own) and own[i] == ek:
                e = writes[ek]
                i += 1
            else:
                e = decode_value(raw, self)
                if e.expire_ms and e.expire_ms <= now:
                    if not self.view:
                        self._ks.note_expired(ek)
                    continue
            found = live(e)
            if found is not None:
                yield ek[1:], found
        for k in own[i:]:
            found = live(writes[k])
            if found is not None:
                yield k[1:], found

    def key_count(self, db: int) -> int:
        """Keys of database ``db`` (as Redis' DBSIZE: expired keys no command met yet
        included), this transaction's writes included: O(1) plus O(its writes)."""
        phys = self._phys(db)
        ks = self._ks
        keys = 0 if phys in self._taken else ks.live_counts(phys)[0]
        lazy = ks.lazy_expired
        for ek, e in self._writes.items():
            if ek[0] == phys:
                keys += ((e is not _DELETED) - (self._committed(ek) is not None)
                         + (ek in lazy))
        return keys

    def read_chunks(self, ref: ChunkRef, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop`` (exclusive, within the string) of chunked string
        ``ref``: only the chunks they lie in are read, this transaction's own first."""
        first, last = start // CHUNK_SIZE, (stop - 1) // CHUNK_SIZE
        parts = self._fetch_chunks(ref, first, last)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        offset = first * CHUNK_SIZE
        if start == offset and stop - offset == len(data):
            return data
        return data[start - offset:stop - offset]

    def _fetch_chunks(self, ref: ChunkRef, first: int, last: int) -> list[bytes]:
        """Chunks ``first`` .. ``last`` of ``ref``, each checked against the header's
        length (a missing or short chunk is damage, never returned as data)."""
        own = self._chunks
        parts: list[bytes | None] = []
        missing: list[int] = []
        for i in range(first, last + 1):
            data = own.get(chunk_key(ref.id, i)) if own else None
            if data is None:
                missing.append(i - first)
            parts.append(data)
        if missing:
            db = self._db
            if len(missing) <= _POINT_READS:
                for j in missing:
                    parts[j] = db.get(chunk_key(ref.id, first + j))
            else:
                lo = chunk_key(ref.id, first + missing[0])
                hi = chunk_key(ref.id, first + missing[-1] + 1)
                for ck, data in db.range(lo, hi):
                    j = chunk_key_parts(ck)[1] - first
                    if parts[j] is None:
                        parts[j] = data
        out: list[bytes] = []
        for j, data in enumerate(parts):
            i = first + j
            expected = min(CHUNK_SIZE, ref.length - i * CHUNK_SIZE)
            if data is None or len(data) != expected:
                raise CorruptionError(
                    f"chunk {i} of a {ref.length}-byte string (chunk set {ref.id:#x}) is "
                    + ("missing" if data is None else f"{len(data)} bytes long")
                    + f", expected {expected} bytes: the database is damaged")
            out.append(data)
        return out

    # -- writes --------------------------------------------------------------------------
    def _put(self, ek: bytes, e: Entry) -> None:
        if self._ks.notify_flags & _NEW and e is not _DELETED and not self._live(ek):
            self._undo.append((ek, self._writes.get(ek)))
            self._writes[ek] = e
            self.notify(notify.NEW, b"new", ek[1:], self._logical(ek[0]))
            return
        self._undo.append((ek, self._writes.get(ek)))
        self._writes[ek] = e

    def _live(self, ek: bytes) -> bool:
        """Whether engine key ``ek`` holds a live key now (buffered writes included)."""
        e = self._writes.get(ek)
        if e is None:
            raw = self._committed(ek)
            if raw is None:
                return False
            expire = expiry_of(raw)
            return not (expire and expire <= self.now)
        return e is not _DELETED and not (e.expire_ms and e.expire_ms <= self.now)

    def _logical(self, phys: int) -> int:
        """The logical database physical id ``phys`` is mapped to now."""
        m = self._map if self._map is not None else self._ks.map
        return m.index(phys) if phys in m else -1

    # -- keyspace notifications ------------------------------------------------------------
    def notify(self, kind: int, event: bytes, key: bytes, db: int) -> None:
        """THE hook of keyspace notifications (:mod:`.notify`): a command that changed
        ``key`` of database ``db`` calls it right after buffering the write, with the type
        class of the command (``notify.LIST`` ...) and Redis' event name (``b"lpush"``).
        Published after this transaction commits; taken back with the write by undo()."""
        flags = self._ks.notify_flags
        if flags and notify.wanted(flags, kind):  # off (0) by default: one test per write
            self._events.append((len(self._undo), db, event, key))

    def _put_chunk(self, cid: int, index: int, data: bytes) -> None:
        ck = chunk_key(cid, index)
        self._undo.append((ck, self._chunks.get(ck)))
        self._chunks[ck] = data

    def _new_chunks(self, value: bytes) -> ChunkRef:
        """Buffer ``value`` as the chunks of a new chunk set."""
        cid = self._ks.new_chunk_id()
        for i in range(chunk_count(len(value))):
            self._put_chunk(cid, i, value[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE])
        return ChunkRef(cid, len(value))

    def set(self, db: int, key: bytes, value: bytes, expire_ms: int = 0) -> None:
        """Buffer ``key = value`` with an absolute expiry in ms (0 = none). An expiry that
        has already passed deletes the key, as in Redis."""
        if expire_ms and expire_ms <= self.now:
            self.delete(db, key)
            return
        if len(value) > MAX_USER_VALUE:
            raise CommandError("string exceeds maximum allowed size")
        ek = engine_key(self._phys(db), key)
        if len(value) > INLINE_MAX:
            self._put(ek, Entry(b"", expire_ms, 0, self._new_chunks(value)))
        else:
            self._put(ek, Entry(value, expire_ms))

    def set_entry(self, db: int, key: bytes, e: Entry, expire_ms: int, *,
                  copy: bool = False) -> None:
        """Buffer ``key`` = the string of ``e`` (an entry read from this transaction) with an
        absolute expiry (0 = none; a past one deletes). A chunked string keeps its chunks
        (RENAME, MOVE, EXPIRE, PERSIST, GETEX: the caller drops or rewrites the key that
        named them) unless ``copy`` (COPY), which copies them to a new chunk set."""
        if expire_ms and expire_ms <= self.now:
            self.delete(db, key)
            return
        ek = engine_key(self._phys(db), key)
        coll = e.coll
        if coll is not None:
            if copy:  # a new collection with the same members: O(members), as in Redis
                new = self.new_collection(coll.kind)
                for field, value in list(self.members(coll)):
                    self._put_member(member_key(new.id, field), value)
                    if coll.kind == TAG_ZSET:
                        self._put_member(score_key(new.id, unpack_score(value), field), b"")
                if coll.kind == TAG_STREAM:  # and its anchor, groups, PELs and consumers
                    lo = bytes((GROUP_PREFIX,)) + member_prefix(coll.id)[1:]
                    for gk, value in list(self.records(lo, _next_id_key(lo), coll.id)):
                        self._put_member(lo[:1] + member_prefix(new.id)[1:] + gk[9:], value)
                coll = coll._replace(id=new.id)  # a list keeps its head
            self._put(ek, Entry(b"", expire_ms, 0, None, None, coll))
            return
        ref = e.chunks
        if ref is None:
            self._put(ek, Entry(e._raw, expire_ms, e._start))
            return
        if copy:
            cid = self._ks.new_chunk_id()
            chunks = self._fetch_chunks(ref, 0, chunk_count(ref.length) - 1)  # one scan
            for i, chunk in enumerate(chunks):
                self._put_chunk(cid, i, chunk)
            ref = ChunkRef(cid, ref.length)
        self._put(ek, Entry(b"", expire_ms, 0, ref))

    def append(self, db: int, key: bytes, e: Entry | None, data: bytes) -> int:
        """APPEND ``data`` to ``e`` (``key``'s live entry, or None) keeping its expiry; the
        new length. A chunked string gets its last, partial chunk rewritten and new chunks:
        what the command writes is at most one chunk more than what it appends."""
        if e is None:
            self.set(db, key, data)
            return len(data)
        length = e.length + len(data)
        if length > MAX_USER_VALUE:
            raise CommandError("string exceeds maximum allowed size")
        ref = e.chunks
        if ref is None:
            self.set(db, key, e.value + data, e.expire_ms)
            return length
        first, kept = divmod(ref.length, CHUNK_SIZE)
        tail = self._fetch_chunks(ref, first, first)[0] + data if kept else data
        for j in range(chunk_count(len(tail))):
            self._put_chunk(ref.id, first + j, tail[j * CHUNK_SIZE:(j + 1) * CHUNK_SIZE])
        self._put(engine_key(self._phys(db), key),
                  Entry(b"", e.expire_ms, 0, ChunkRef(ref.id, length)))
        return length

    def setrange(self, db: int, key: bytes, e: Entry | None, offset: int,
                 patch: bytes) -> int:
        """SETRANGE: overwrite ``e``'s bytes from ``offset`` with ``patch`` (not empty),
        zero-padding a gap, keeping the expiry; the new length. A chunked string gets only
        the chunks the patch (and the gap) touch rewritten."""
        old = 0 if e is None else e.length
        end = offset + len(patch)
        length = max(old, end)
        if length > MAX_USER_VALUE:
            raise CommandError("string exceeds maximum allowed size")
        ref = None if e is None else e.chunks
        if ref is None:
            value = b"" if e is None else e.value
            if len(value) < offset:
                value += bytes(offset - len(value))
            value = value[:offset] + patch + value[end:]
            self.set(db, key, value, 0 if e is None else e.expire_ms)
            return length
        assert e is not None
        for i in range(min(offset, old) // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1):
            lo = i * CHUNK_SIZE
            size = min(CHUNK_SIZE, length - lo)
            chunk = bytearray(self._fetch_chunks(ref, i, i)[0] if lo < old else b"")
            chunk += bytes(size - len(chunk))
            a, b = max(offset, lo), min(end, lo + size)
            if a < b:
                chunk[a - lo:b - lo] = patch[a - offset:b - offset]
            self._put_chunk(ref.id, i, bytes(chunk))
        self._put(engine_key(self._phys(db), key),
                  Entry(b"", e.expire_ms, 0, ChunkRef(ref.id, length)))
        return length

    # -- hashes and sets -------------------------------------------------------------------
    def new_collection(self, kind: int) -> CollRef:
        """An empty collection with a fresh id (its header is written with its members)."""
        cid = self._ks.new_chunk_id()
        self._new_ids.add(cid)
        return CollRef(kind, cid, 0)

    def _put_member(self, mk: bytes, value: Any) -> None:
        members = self._members
        previous = members.get(mk)
        self._undo.append((mk, previous))
        members[mk] = value
        if self._skip and value is not _NO_MEMBER:
            self._unskip(mk)
        if previous is None:
            head = mk[:9]
            keys = self._own.get(head)
            if keys is None:
                self._own[head] = [mk]
            elif len(keys) < _OWN_INSORT_MAX and head not in self._own_unsorted:
                bisect.insort(keys, mk)
            else:
                keys.append(mk)
                self._own_unsorted.add(head)

    def _own_keys(self, lo: bytes, hi: bytes, reverse: bool) -> list[bytes]:
        """The buffered record keys ``k`` with ``lo <= k < hi``, in key order (reversed
        when ``reverse``): a slice of the collection's sorted keys when the range lies
        within one collection's records, else (never today) a pass over them all."""
        members = self._members
        if not members:
            return []
        head = lo[:9]
        if len(lo) >= 9 and (hi[:9] == head or (
                len(hi) == 9 and hi[0] == head[0] and id_of(hi) == id_of(head) + 1)):
            keys = self._own.get(head)
            if not keys:
                return []
            if head in self._own_unsorted:
                keys.sort()
                self._own_unsorted.discard(head)
            own = keys[bisect.bisect_left(keys, lo):bisect.bisect_left(keys, hi)]
        else:
            own = sorted(k for k in members if lo <= k < hi)
        if reverse:
            own.reverse()
        return own

    def _skip_from(self, head: bytes, reverse: bool) -> bytes | None:
        """The record key a walk of ``head``'s records from its low end (high end:
        ``reverse``) may start past (see ``_skip``), or None."""
        if not self._skip:
            return None
        if self._skip_gen != self._ks.generation:
            self._skip.clear()
            return None
        return self._skip.get((head, reverse))

    def _unskip(self, mk: bytes) -> None:
        """Record ``mk`` was buffered: walks from an end must see it again."""
        head = mk[:9]
        low = self._skip.get((head, False))
        if low is not None and mk <= low:
            del self._skip[(head, False)]
        high = self._skip.get((head, True))
        if high is not None and mk >= high:
            del self._skip[(head, True)]

    def _skipped(self, head: bytes, reverse: bool, k: bytes) -> None:
        """Record ``k``, met by a walk from an end past only deleted records, is deleted
        in this transaction too: later walks from that end start past it."""
        if self._skip_gen != self._ks.generation:
            self._skip.clear()
            self._skip_gen = self._ks.generation
        self._skip[(head, reverse)] = k

    def member(self, coll: CollRef, field: bytes) -> bytes | None:
        """The value of hash field (set member) ``field`` of ``coll``, or None: one point
        read (none for a collection this transaction created)."""
        if len(field) > MAX_MEMBER:
            return None  # could never have been stored
        mk = member_key(coll.id, field)
        v = self._members.get(mk)
        if v is not None:
            return None if v is _NO_MEMBER else v
        if coll.id in self._new_ids:
            return None
        return self._db.get(mk)

    def put_members(self, db: int, key: bytes, e: Entry | None, kind: int,
                    items: Iterable[tuple[bytes, bytes]], *, nx: bool = False) -> int:
        """Set members (field, value) of ``key``'s collection ``e`` (None: create one of
        ``kind``), keeping its expiry; the header is rewritten with the new size (so WATCH
        sees every change). ``nx``: leave existing fields alone (a set's members always).
        How many were new."""
        if e is None:
            coll, expire = self.new_collection(kind), 0
        else:
            assert e.coll is not None
            coll, expire = e.coll, e.expire_ms
        added = wrote = 0
        for field, value in items:
            if len(value) > MAX_USER_VALUE:
                raise CommandError("string exceeds maximum allowed size")
            mk = member_key(coll.id, field)  # refuses a field longer than MAX_MEMBER
            if self.member(coll, field) is None:
                added += 1
            elif nx or coll.kind == TAG_SET:
                continue  # a set member that exists is not written (nor its key touched)
            self._put_member(mk, value)
            wrote += 1
        if wrote:
            self._put(engine_key(self._phys(db), key),
                      Entry(b"", expire, 0, None, None,
                            CollRef(coll.kind, coll.id, coll.size + added)))
        return added

    def remove_members(self, db: int, key: bytes, e: Entry, fields: Iterable[bytes]) -> int:
        """Delete members of ``key``'s collection ``e``; how many existed. The key goes
        with its last member (Redis has no empty hash or set): its header is deleted and its
        remaining members become garbage, so that is O(1) too."""
        coll = e.coll
        assert coll is not None
        removed = 0
        for field in fields:
            if self.member(coll, field) is not None:
                self._put_member(member_key(coll.id, field), _NO_MEMBER)
                removed += 1
        if removed:
            ek = engine_key(self._phys(db), key)
            size = coll.size - removed
            if size <= 0:
                self._put(ek, _DELETED)
            else:
                self._put(ek, Entry(b"", e.expire_ms, 0, None, None,
                                    CollRef(coll.kind, coll.id, size)))
        return removed

    # -- any record of a collection (streams) ------------------------------------------------
    def put_coll(self, db: int, key: bytes, expire_ms: int, coll: CollRef) -> None:
        """Buffer ``key``'s collection header ``coll`` as it is (a stream may be empty:
        nothing is deleted at size 0)."""
        self._put(engine_key(self._phys(db), key),
                  Entry(b"", expire_ms, 0, None, None, coll))

    def record(self, rk: bytes, cid: int) -> bytes | None:
        """The value of record ``rk`` (a member key, or a key of the group range, of
        collection ``cid``), or None: one point read (none for a new collection)."""
        v = self._members.get(rk)
        if v is not None:
            return None if v is _NO_MEMBER else v
        if cid in self._new_ids:
            return None
        return self._db.get(rk)

    def put_record(self, rk: bytes, value: bytes | None) -> None:
        """Buffer record ``rk`` = ``value`` (None: delete it); written by the commit only
        when its collection's header is written too, as members are."""
        self._put_member(rk, _NO_MEMBER if value is None else value)

    def records(self, lo: bytes, hi: bytes, cid: int, *, reverse: bool = False
                ) -> Iterator[tuple[bytes, bytes]]:
        """``(record key, value)`` with ``lo <= key < hi`` (a range of collection
        ``cid``'s records), in key order, this transaction's own writes included; memory
        does not grow with the range."""
        own = self._own_keys(lo, hi, reverse)
        base: Iterator[tuple[bytes, bytes]] = (
            iter(()) if cid in self._new_ids else self._db.range(lo, hi, reverse=reverse))
        members = self._members
        i, n = 0, len(own)
        for k, value in base:
            while i < n and (own[i] > k if reverse else own[i] < k):
                v = members[own[i]]
                if v is not _NO_MEMBER:
                    yield own[i], v
                i += 1
            if i < n and own[i] == k:
                v = members[k]
                i += 1
                if v is not _NO_MEMBER:
                    yield k, v
                continue
            yield k, value
        for k in own[i:]:
            v = members[k]
            if v is not _NO_MEMBER:
                yield k, v

    # -- lists ---------------------------------------------------------------------------
    def new_list(self) -> CollRef:
        """An empty list with a fresh id, its head at LIST_BIAS (written with its first
        elements by :meth:`list_write`)."""
        return self.new_collection(TAG_LIST)._replace(head=LIST_BIAS)

    def list_element(self, coll: CollRef, pos: int) -> bytes | None:
        """Element ``pos`` (0 = the head, ``0 <= pos < size``) of list ``coll``: one point
        read."""
        return self.member(coll, list_index(coll.head + pos))

    def list_walk(self, coll: CollRef, start: int = 0, *, reverse: bool = False
                  ) -> Iterator[tuple[int, bytes]]:
        """``(position, element)`` of list ``coll`` from position ``start`` to the tail (in
        reverse: from the tail down to ``start``): a walk of its element records, so memory
        does not grow with the list."""
        head, size = coll.head, coll.size
        for m, value in self.members(coll, list_index(head + max(start, 0)),
                                     reverse=reverse):
            pos = list_index_of(m) - head
            if pos >= size:
                if reverse:
                    continue  # cannot be (the header's size bounds them): never shown
                return
            yield pos, value

    def list_values(self, coll: CollRef, first: int, last: int) -> Iterator[bytes]:
        """The elements at positions ``first`` to ``last`` (``0 <= first <= last <
        size``) of list ``coll``, in order. When this transaction buffered nothing of the
        list, one bounded walk of the engine whose values are the elements as they are
        (no Python step per element: LRANGE's walk was ~60 opcodes an element through
        list_walk and members); else :meth:`list_walk`."""
        prefix = member_prefix(coll.id)
        if prefix in self._own or coll.id in self._new_ids:
            return self._list_values_walked(coll, first, last)
        end = coll.head + last + 1
        hi = prefix + list_index(end) if end <= LIST_INDEX_MAX else member_prefix(coll.id + 1)
        return map(_SECOND, self._db.range(prefix + list_index(coll.head + first), hi))

    def _list_values_walked(self, coll: CollRef, first: int, last: int) -> Iterator[bytes]:
        for pos, value in self.list_walk(coll, first):
            if pos > last:
                return
            yield value

    def list_write(self, db: int, key: bytes, e: Entry | None, coll: CollRef,
                   puts: Iterable[tuple[int, bytes]] = (),
                   drops: Iterable[int] = ()) -> None:
        """Buffer element writes (``(absolute index, value)``) and deletions (absolute
        indexes) of list ``key`` and its new header ``coll`` (size and head already
        updated), keeping ``e``'s expiry. A size of 0 deletes the key (Redis has no empty
        list): its remaining elements become garbage, so that is O(1) too. Raises before
        buffering anything when an index would leave the 64-bit range."""
        puts = list(puts)
        if coll.head < 0 or coll.head + coll.size > LIST_INDEX_MAX + 1 or any(
                not 0 <= i <= LIST_INDEX_MAX for i, _ in puts):
            raise CommandError("the list's element indexes would leave the 64-bit range "
                               "(2^63 more pushes at one end than at the other): copy it "
                               "to a new key (LRANGE + RPUSH) to recentre it")
        for _, value in puts:
            if len(value) > MAX_USER_VALUE:
                raise CommandError("string exceeds maximum allowed size")
        for i, value in puts:
            self._put_member(member_key(coll.id, list_index(i)), value)
        for i in drops:
            self._put_member(member_key(coll.id, list_index(i)), _NO_MEMBER)
        ek = engine_key(self._phys(db), key)
        if coll.size <= 0:
            self._put(ek, _DELETED)
        else:
            self._put(ek, Entry(b"", 0 if e is None else e.expire_ms, 0, None, None, coll))

    def members(self, coll: CollRef, start: bytes = b"", *, reverse: bool = False
                ) -> Iterator[tuple[bytes, bytes]]:
        """``(field, value)`` of ``coll`` in field order (bytewise) from ``start`` on (in
        reverse: from the last one down), this transaction's own writes included. A walk
        of the engine's member range: memory does not grow with the collection."""
        prefix = member_prefix(coll.id)
        lo, hi = prefix + start, member_prefix(coll.id + 1)
        from_end = (reverse or not start) and not self.view
        # A walk from an end starts past the members this transaction deleted there; the
        # first committed member met is then no bound (those deletions are not committed).
        passing = from_end and prefix in self._own
        skip = self._skip_from(prefix, reverse) if passing else None
        if skip is not None:
            from_end = False
            if reverse:
                hi = min(hi, skip)
            else:
                lo = max(lo, skip + b"\x00")
        own = self._own_keys(lo, hi, reverse)
        # The committed walk starts at the known bound of its end, if any.
        all_bounds = self._ks.member_bounds
        bounds = None if self.view else all_bounds.get(coll.id)
        base_lo, base_hi = lo, hi
        if bounds is not None:
            if bounds[0] is not None and bounds[0] > base_lo:
                base_lo = bounds[0]
            if bounds[1] is not None and bounds[1] + b"\x00" < base_hi:
                base_hi = bounds[1] + b"\x00"
        base: Iterator[tuple[bytes, bytes]] = (
            iter(()) if coll.id in self._new_ids or base_lo >= base_hi
            else self._db.range(base_lo, base_hi, reverse=reverse))
        members = self._members
        i, n = 0, len(own)
        for mk, value in base:
            if from_end:  # the first committed member from this end: a bound
                from_end = False
                if bounds is None:
                    bounds = all_bounds[coll.id] = [None, None]
                    while len(all_bounds) > MEMBER_DELETES_MAX:
                        del all_bounds[next(iter(all_bounds))]
                bounds[1 if reverse else 0] = mk
            while i < n and (own[i] > mk if reverse else own[i] < mk):
                v = members[own[i]]
                if v is not _NO_MEMBER:
                    passing = False
                    yield own[i][9:], v
                elif passing:
                    self._skipped(prefix, reverse, own[i])
                i += 1
            if i < n and own[i] == mk:
                v = members[mk]
                i += 1
                if v is not _NO_MEMBER:
                    passing = False
                    yield mk[9:], v
                elif passing:
                    self._skipped(prefix, reverse, mk)
                continue
            passing = False
            yield mk[9:], value
        for k in own[i:]:
            v = members[k]
            if v is not _NO_MEMBER:
                yield k[9:], v

    def score_walk(self, coll: CollRef, lo: bytes = b"", hi: bytes | None = None, *,
                   reverse: bool = False) -> Iterator[bytes]:
        """The score index entries (:func:`score_bytes` of the score + member) of sorted
        set ``coll`` with ``lo <= entry < hi`` (None: no upper bound), in (score, member)
        order (in reverse: from the highest down), this transaction's own writes included.
        A walk of the engine's index range: memory does not grow with the set. As
        :meth:`members` does, a walk from either end starts at the bound learnt for that
        end, past the tombstones of the entries ZPOPMIN / ZPOPMAX deleted there."""
        prefix = score_prefix(coll.id)
        end = score_prefix(coll.id + 1)
        lo_k = prefix + lo
        hi_k = end if hi is None else prefix + hi
        if lo_k >= hi_k:
            return
        idx = self._members
        from_end = ((hi is None) if reverse else not lo) and not self.view
        # Past the entries this transaction popped at that end (see members()).
        passing = from_end and prefix in self._own
        skip = self._skip_from(prefix, reverse) if passing else None
        if skip is not None:
            from_end = False
            if reverse:
                hi_k = min(hi_k, skip)
            else:
                lo_k = max(lo_k, skip + b"\x00")
        own = self._own_keys(lo_k, hi_k, reverse)
        all_bounds = self._ks.score_bounds
        bounds = None if self.view else all_bounds.get(coll.id)
        base_lo, base_hi = lo_k, hi_k
        if bounds is not None:
            if bounds[0] is not None and bounds[0] > base_lo:
                base_lo = bounds[0]
            if bounds[1] is not None and bounds[1] + b"\x00" < base_hi:
                base_hi = bounds[1] + b"\x00"
        base: Iterator[tuple[bytes, bytes]] = (
            iter(()) if coll.id in self._new_ids or base_lo >= base_hi
            else self._db.range(base_lo, base_hi, reverse=reverse))
        i, n = 0, len(own)
        for k, _ in base:
            if from_end:  # the first committed entry from this end: a bound
                from_end = False
                if bounds is None:
                    bounds = all_bounds[coll.id] = [None, None]
                    while len(all_bounds) > MEMBER_DELETES_MAX:
                        del all_bounds[next(iter(all_bounds))]
                bounds[1 if reverse else 0] = k
            while i < n and (own[i] > k if reverse else own[i] < k):
                if idx[own[i]] is not _NO_MEMBER:
                    passing = False
                    yield own[i][9:]
                elif passing:
                    self._skipped(prefix, reverse, own[i])
                i += 1
            if i < n and own[i] == k:
                i += 1
                if idx[k] is _NO_MEMBER:
                    if passing:
                        self._skipped(prefix, reverse, k)
                    continue
            passing = False
            yield k[9:]
        for k in own[i:]:
            if idx[k] is not _NO_MEMBER:
                yield k[9:]

    def zset_write(self, db: int, key: bytes, e: Entry | None, coll: CollRef,
                   puts: Iterable[tuple[bytes, float, float | None]] = (),
                   drops: Iterable[tuple[bytes, float]] = ()) -> None:
        """Buffer sorted set member writes (``(member, new score, old score or None)``)
        and removals (``(member, score)``) of ``key`` with its new header ``coll`` (size
        already updated), keeping ``e``'s expiry: the member record and its score index
        record change together. A size of 0 deletes the key (its remaining records become
        garbage: O(1))."""
        cid = coll.id
        for member, score, old in puts:
            if old is not None:
                self._put_member(score_key(cid, old, member), _NO_MEMBER)
            self._put_member(member_key(cid, member), pack_score(score))
            self._put_member(score_key(cid, score, member), b"")
        for member, score in drops:
            self._put_member(member_key(cid, member), _NO_MEMBER)
            self._put_member(score_key(cid, score, member), _NO_MEMBER)
        ek = engine_key(self._phys(db), key)
        if coll.size <= 0:
            self._put(ek, _DELETED)
        else:
            self._put(ek, Entry(b"", 0 if e is None else e.expire_ms, 0, None, None, coll))

    def random_members(self, coll: CollRef, count: int, *, distinct: bool
                       ) -> Iterator[tuple[bytes, bytes]]:
        """``count`` members of ``coll`` drawn at random (``distinct``: no repeats, at most
        its size), one at a time (a reply charged to the output limit stops drawing).
        Uniform up to RANDOM_EXACT_MAX members (read whole); above it each draw is the
        first member at or after a random probe (a seek per draw, not uniform: members
        after a wide gap in member order are drawn more often)."""
        rng = self._ks.random
        if count <= 0:
            return
        # A small collection is read whole, unless many of its members were deleted since
        # open: their tombstones (until compaction) would make every draw walk them all (a
        # set drained by SPOP: 30,000 tombstones, 10 ms per SPOP); probing skips only the
        # tombstones between a probe and the next member.
        deletes = self._ks.member_deletes.get(coll.id, 0)
        if coll.size <= RANDOM_EXACT_MAX and deletes <= 4 * RANDOM_EXACT_MAX:
            every = list(self.members(coll))
            if not every:
                return
            if distinct:
                yield from rng.sample(every, min(count, len(every)))
                return
            for _ in range(count):
                yield every[rng.randrange(len(every))]
            return
        first = next(self.members(coll), None)
        last = next(self.members(coll, reverse=True), None)
        if first is None or last is None:
            return
        lo, hi = first[0], last[0]
        common = 0
        while common < min(len(lo), len(hi)) and lo[common] == hi[common]:
            common += 1
        tail = lo[common:] + hi[common:] or b"\x00\xff"
        smallest, largest = min(tail), max(tail)
        seen: set[bytes] = set()
        drawn = attempts = 0
        while drawn < count and attempts < 3 * count + 16:
            attempts += 1
            head = rng.randint(lo[common] if common < len(lo) else smallest,
                               hi[common] if common < len(hi) else largest)
            probe = lo[:common] + bytes((head, *(rng.randint(smallest, largest)
                                                 for _ in range(7))))
            found = next(self.members(coll, probe[:MAX_MEMBER]), None) or first
            if distinct:
                if found[0] in seen:
                    continue
                seen.add(found[0])
            drawn += 1
            yield found
        if drawn < count and distinct:  # probes kept colliding: take the next ones
            for found in self.members(coll):
                if drawn >= count:
                    break
                if found[0] not in seen:
                    seen.add(found[0])
                    drawn += 1
                    yield found

    def delete(self, db: int, key: bytes) -> bool:
        """Buffer the deletion of ``key``; whether it was live."""
        existed = self.lookup(db, key) is not None
        ek = engine_key(self._phys(db), key)
        self._put(ek, _DELETED)
        return existed

    def _save_map_state(self) -> list[int]:
        """Push the map state on the undo log and return the map to change."""
        m = self._map
        self._undo.append((b"", (None if m is None else list(m), len(self._taken),
                                 len(self._released), dict(self._touched))))
        if m is None:
            m = self._map = list(self._ks.map)
        return m

    def flush(self, db: int | None) -> None:
        """Empty database ``db`` (every database when None), atomically with the rest of
        this transaction: a database with entries on disk is pointed at a fresh, empty
        physical id (one small write; the old id is purged in the background after the
        commit); this transaction's own buffered writes to it are dropped (their chunks are
        then referenced by nothing and not written)."""
        m = self._save_map_state()
        purger = self._ks.purger
        for d in range(DATABASES) if db is None else (db,):
            if d not in self._touched or self._touched[d] is not None:
                live = [k for k in self._ks.watched_keys(d) if self.lookup(d, k) is not None]
                self._touched[d] = [*(self._touched.get(d) or ()), *live]
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
        self._touched.update({a: None, b: None})

    def mark(self) -> int:
        """Start a command: refresh the clock and return a mark to :meth:`undo` to."""
        self.now = now_ms()
        if not self._writes and self._base:
            self._base.clear()  # only the keys written since the last commit stay cached
        return len(self._undo)

    def wrote_since(self, mark: int) -> bool:
        """Whether writes were buffered since ``mark``."""
        return len(self._undo) > mark

    def undo(self, mark: int) -> None:
        """Take back the writes buffered since ``mark`` (a failed command leaves no trace,
        as in Redis)."""
        undo, writes, chunks = self._undo, self._writes, self._chunks
        events = self._events
        while events and events[-1][0] > mark:
            events.pop()
        if len(undo) > mark:
            self._skip.clear()  # a deletion it passed may come back
        while len(undo) > mark:
            ek, previous = undo.pop()
            if not ek:
                m, taken, released, touched = previous
                self._map = m
                del self._taken[taken:]
                del self._released[released:]
                self._touched = touched
            elif ek[0] == CHUNK_PREFIX:
                if previous is None:
                    chunks.pop(ek, None)
                else:
                    chunks[ek] = previous
            elif ek[0] == MEMBER_PREFIX or ek[0] == SCORE_PREFIX or ek[0] == GROUP_PREFIX:
                if previous is None:
                    if self._members.pop(ek, None) is not None:
                        keys = self._own[ek[:9]]
                        if ek[:9] in self._own_unsorted:
                            keys.remove(ek)
                        else:
                            del keys[bisect.bisect_left(keys, ek)]
                else:
                    self._members[ek] = previous
            elif previous is None:
                writes.pop(ek, None)
            else:
                writes[ek] = previous

    @property
    def dirty(self) -> bool:
        """Whether writes are buffered."""
        return (bool(self._writes or self._members or self._chunks or self._touched)
                or self._map is not None)

    def commit(self) -> None:
        """Apply the buffered writes, their chunks, the garbage records of the chunk sets
        they orphan, the key counts they change and the database map when it changed, as
        one atomic batch, then tell the watchers and publish the keyspace notifications."""
        if not self.dirty:
            if self._events:  # raised without a write (none do today): not kept forever
                events, self._events = self._events, []
                self._ks.publish_events([e[1:] for e in events])
            return
        ks = self._ks
        writes, chunks, new_map = self._writes, self._chunks, self._map
        members, new_ids = self._members, self._new_ids
        taken, released, touched = self._taken, self._released, self._touched
        # The committed entry of every written key (read before the buffers are reset: the
        # cache lives in this transaction).
        old = {ek: self._committed(ek) for ek in writes}
        # Committed or failed, these writes are settled: never apply them twice.
        self._writes, self._chunks, self._map, self._undo = {}, {}, None, []
        self._members, self._new_ids = {}, set()
        self._own, self._own_unsorted, self._skip = {}, set(), {}
        self._taken, self._released, self._touched = [], [], {}
        self._base = {}
        events, self._events = self._events, []
        batch = shaledb.WriteBatch(_zero_clock)
        # Chunk sets named by the headers this batch writes (id -> length).
        named: dict[int, int] = {}
        # Collections named by the headers this batch writes.
        named_colls: set[int] = set()
        for e in writes.values():
            if e.coll is not None:
                if e.coll.id in named_colls:
                    raise CorruptionError(f"two keys would name collection {e.coll.id:#x}; "
                                          "nothing was written (a bug: please report it)")
                named_colls.add(e.coll.id)
            elif e.chunks is not None:
                if e.chunks.id in named:
                    raise CorruptionError(f"two keys would name chunk set {e.chunks.id:#x}; "
                                          "nothing was written (a bug: please report it)")
                named[e.chunks.id] = e.chunks.length
        deltas: dict[int, list[int]] = {}
        garbage: list[int] = []
        member_garbage: list[int] = []
        expiring = 0
        for ek, e in writes.items():
            raw = old[ek]
            if raw is not None and raw[0] & 0x7F != TAG_STRING:
                ref = chunk_ref_of(raw)
                coll = coll_ref_of(raw)
                if (ref is not None and ref.id not in named) or (
                        coll is not None and coll.id not in named_colls):
                    # Its header goes; nothing else names its chunk set or collection (each
                    # has one header): a garbage record, the version bump of Kvrocks.
                    orphan(batch, raw, garbage, member_garbage)
            if e is _DELETED:
                if raw is None:
                    continue  # nothing to delete
                batch.delete(ek)
            else:
                batch.put(ek, _encode_entry(e))
                expiring += e.expire_ms != 0
            d = deltas.get(ek[0])
            if d is None:
                d = deltas[ek[0]] = [0, 0]
            if raw is not None:
                d[0] -= 1
                d[1] -= expiry_of(raw) != 0
            if e is not _DELETED:
                d[0] += 1
                d[1] += e.expire_ms != 0
        for ck, data in chunks.items():
            cid, index = chunk_key_parts(ck)
            length = named.get(cid)
            # Chunks of sets no written header names were orphaned in this transaction.
            if length is not None and index < chunk_count(length):
                batch.put(ck, data)
        member_deletes: dict[int, int] = {}
        for mk, value in members.items():
            cid = id_of(mk)
            # Members of collections no written header names were dropped (deleted,
            # flushed or overwritten) in this transaction: their garbage record covers them.
            if cid in named_colls:
                # A member, a sorted set's score index record or a stream's group record.
                member = mk[0] == MEMBER_PREFIX
                if value is not _NO_MEMBER:
                    batch.put(mk, value)
                    bounds = (ks.member_bounds.get(cid) if member else
                              ks.score_bounds.get(cid) if mk[0] == SCORE_PREFIX else None)
                    if bounds is not None:  # a member outside the known bounds moves them
                        if bounds[0] is not None and mk < bounds[0]:
                            bounds[0] = mk
                        if bounds[1] is not None and mk > bounds[1]:
                            bounds[1] = mk
                elif cid not in new_ids:
                    batch.delete(mk)
                    if member:
                        member_deletes[cid] = member_deletes.get(cid, 0) + 1
        if new_map is not None and new_map != ks.map:
            batch.put(MAP_KEY, encode_map(new_map))
        else:
            new_map = None
        if len(batch):
            ks.write(batch, deltas, reset=taken if new_map is not None else (),
                     garbage=garbage, member_garbage=member_garbage,
                     map_written=new_map is not None)
            ks.writes += 1
            ks.expiring_writes += expiring
        for ek in writes:
            ks.forget_expired(ek)
        if member_deletes:
            counted = ks.member_deletes
            for cid, n in member_deletes.items():
                counted[cid] = counted.pop(cid, 0) + n  # most recent last
            while len(counted) > MEMBER_DELETES_MAX:
                del counted[next(iter(counted))]
        if new_map is not None:
            ks.map = new_map
            ks.purger.committed(taken, released)
            for phys in released:
                ks._forget_physical(phys)
        if ks._on_write is not None and writes:
            # A generator: WATCH's registry looks at it only when someone watches.
            ks._on_write(_logical_keys(ks, writes))
        if ks._on_flush is not None and touched:
            for db in sorted(touched):
                ks._on_flush(db, touched[db])
        if events:
            ks.publish_events([e[1:] for e in events])



class KeyspaceView(KeyspaceTxn):
    """A read-only :class:`KeyspaceTxn` at a snapshot: committed state as of the snapshot's
    sequence number, with the map of logical databases of that moment (a FLUSHDB or SWAPDB
    committed after it is not seen either). Never written to (commands that write never
    get one)."""

    __slots__ = ("_view_map",)

    def __init__(self, keyspace: Keyspace, snapshot: Reader) -> None:
        super().__init__(keyspace, snapshot)
        self._view_map = decode_map(snapshot.get(MAP_KEY))

    def _phys(self, db: int) -> int:
        return self._view_map[db]


__all__ = [
    "CHUNK_SIZE",
    "DATABASES",
    "GARBAGE_LIST_MAX",
    "INLINE_MAX",
    "MAX_EXPIRE_MS",
    "LAZY_EXPIRED_MAX",
    "MAX_USER_KEY",
    "MAX_USER_VALUE",
    "ChunkRef",
    "Entry",
    "Keyspace",
    "KeyspaceTxn",
    "KeyspaceView",
    "chunk_count",
    "chunk_key",
    "chunk_key_parts",
    "chunk_ref_of",
    "decode_garbage",
    "decode_value",
    "encode_garbage",
    "encode_header",
    "encode_value",
    "engine_key",
    "expiry_of",
    "garbage_id",
    "garbage_key",
    "now_ms",
]
