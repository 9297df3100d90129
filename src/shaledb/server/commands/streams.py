"""Stream commands (Redis' t_stream.c): XADD XLEN XRANGE XREVRANGE XREAD XDEL XTRIM XSETID
XGROUP (CREATE CREATECONSUMER DELCONSUMER DESTROY SETID) XREADGROUP XACK XPENDING XCLAIM
XAUTOCLAIM XINFO (STREAM [FULL] GROUPS CONSUMERS).

A stream is a header under its key (collection id, length, last id, entries added, largest
deleted id, next group number) and one member record per entry keyed by its 16-byte id, so
XRANGE is a range walk in id order and XADD one point write plus the header; its consumer
groups, their pending entries lists (PEL) and consumers are records of their own range
(``0xF5``, docs/format.md "Streams"), so a stream and its groups may be larger than memory,
and dropping one (DEL, expiry, FLUSHDB, an overwrite) is O(1): the purger reclaims both
ranges. Every change rewrites the header in the same batch (WATCH and the commit see it).

XREAD and XREADGROUP with BLOCK register with the server's
:class:`~shaledb.server.exec.blocking.BlockingQueue` and are woken by a committed write of
the key; inside MULTI they answer at once, as for a timeout. Replies and errors are Redis
7.0's; approximate trimming (``~``) removes whole multiples of :data:`NODE_ENTRIES`
entries, as Redis removes whole radix-tree nodes of that size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

from ..errors import CommandError, wrong_arity
from ..exec.blocking import NOT_READY
from ..keyspace import notify as ev
from ..keyspace.keyspace import Entry, KeyspaceTxn
from ..keyspace.streams import (
    ENTRIES_READ_UNKNOWN,
    ID_MAX,
    ConsumerRecord,
    GroupRecord,
    PendingRecord,
    StreamId,
    StreamMeta,
    anchor_key,
    consumer_key,
    consumer_prefix,
    decode_fields,
    decode_id,
    encode_fields,
    encode_id,
    format_id,
    group_key,
    pending_key,
    pending_prefix,
    prefix_end,
)
from ..keyspace.values import MAX_STRING, TAG_STREAM, CollRef, member_key, member_prefix
from ..net.protocol import NULL_ARRAY, OK, ArrayBuilder
from . import INT64_MAX, SYNTAX, CommandFamily, Context, parse_int
from .popping import block

FAMILY = CommandFamily()
command = FAMILY.command

#: Entries per radix-tree node in Redis (stream-node-max-entries): approximate trimming
#: (``~``) removes whole multiples of it, and its default LIMIT is 100 nodes.
NODE_ENTRIES: Final = 100
#: Most entries one XADD/XTRIM trim or XGROUP DESTROY/DELCONSUMER may delete: a command's
#: writes are buffered in memory until the commit. Past it the command fails and changes
#: nothing (approximate trimming stops at it instead, as its LIMIT allows).
STREAM_DELETE_MAX: Final = 1_000_000
#: XAUTOCLAIM examines at most COUNT times this many PEL entries (Redis' attempts factor).
AUTOCLAIM_ATTEMPTS: Final = 10
#: Longest BLOCK timeout in milliseconds (asyncio's timers need a finite float).
BLOCK_MAX_MS: Final = 10**13
MIN_ID: Final = (0, 0)
MAX_ID: Final = (ID_MAX, ID_MAX)
INVALID_ID: Final = "Invalid stream ID specified as stream command argument"
_UINT: Final = re.compile(rb"\s*\+?[0-9]+")


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _nogroup(key: bytes, group: bytes, where: str = "") -> CommandError:
    return CommandError(f"No such key '{_text(key)}' or consumer group '{_text(group)}'"
                        f"{where}", prefix="NOGROUP")


def _nogroup_for_key(key: bytes, group: bytes) -> CommandError:
    return CommandError(f"No such consumer group '{_text(group)}' for key name "
                        f"'{_text(key)}'", prefix="NOGROUP")


# -- ids ------------------------------------------------------------------------------------

def _uint(text: bytes) -> int | None:
    """Redis' string2ull: an unsigned 64-bit decimal, or None."""
    if not _UINT.fullmatch(text):
        return None
    v = int(text)
    return v if v <= ID_MAX else None


def parse_id(arg: bytes, missing_seq: int = 0, *, strict: bool = False,
             star_seq: bool = False) -> tuple[StreamId, bool]:
    """An id as Redis reads one: ``ms-seq``, ``ms`` (seq ``missing_seq``), ``-``/``+``
    (not ``strict``), ``ms-*`` (``star_seq``, XADD: second item False). (id, seq given)."""
    if len(arg) > 127:
        raise CommandError(INVALID_ID)
    if arg in (b"-", b"+"):
        if strict:
            raise CommandError(INVALID_ID)
        return (MIN_ID if arg == b"-" else MAX_ID), True
    ms_text, dash, seq_text = arg.partition(b"-")
    ms = _uint(ms_text)
    if ms is None:
        raise CommandError(INVALID_ID)
    if not dash:
        return (ms, missing_seq), True
    if star_seq and seq_text == b"*":
        return (ms, 0), False
    seq = _uint(seq_text)
    if seq is None:
        raise CommandError(INVALID_ID)
    return (ms, seq), True


def _incr(sid: StreamId) -> StreamId | None:
    ms, seq = sid
    if seq < ID_MAX:
        return ms, seq + 1
    if ms < ID_MAX:
        return ms + 1, 0
    return None


def _decr(sid: StreamId) -> StreamId | None:
    ms, seq = sid
    if seq > 0:
        return ms, seq - 1
    if ms > 0:
        return ms - 1, ID_MAX
    return None


def _interval(arg: bytes, missing_seq: int, start: bool) -> StreamId:
    """An XRANGE / XPENDING bound: ``(`` makes it exclusive."""
    if len(arg) > 1 and arg[:1] == b"(":
        sid, _ = parse_id(arg[1:], missing_seq, strict=True)
        moved = _incr(sid) if start else _decr(sid)
        if moved is None:
            raise CommandError(f"invalid {'start' if start else 'end'} ID for the interval")
        return moved
    return parse_id(arg, missing_seq)[0]


# -- the stream as the commands see it --------------------------------------------------------

class Stream:
    """One stream read in a transaction: its header's state, and its entries and groups
    through the transaction. :meth:`save` buffers the header (every change must)."""

    __slots__ = ("txn", "db", "key", "expire_ms", "cid", "size", "meta")

    def __init__(self, txn: KeyspaceTxn, db: int, key: bytes, e: Entry) -> None:
        assert e.coll is not None
        self.txn, self.db, self.key = txn, db, key
        self.expire_ms = e.expire_ms
        self.cid, self.size = e.coll.id, e.coll.size
        self.meta = StreamMeta.decode(e.coll.meta)

    @classmethod
    def create(cls, txn: KeyspaceTxn, db: int, key: bytes) -> Stream:
        """A new, empty stream under ``key`` (its anchor record buffered; :meth:`save`
        writes its header)."""
        coll = txn.new_collection(TAG_STREAM)._replace(meta=StreamMeta().encode())
        txn.put_record(anchor_key(coll.id), b"")
        return cls(txn, db, key, Entry(b"", 0, 0, None, None, coll))

    @classmethod
    def get(cls, txn: KeyspaceTxn, db: int, key: bytes) -> Stream | None:
        """The stream under ``key``, None; WRONGTYPE for another type."""
        e = txn.get_coll(db, key, TAG_STREAM)
        return None if e is None else cls(txn, db, key, e)

    def notify(self, event: bytes) -> None:
        """Raise keyspace event ``event`` (class ``t``) for this stream."""
        self.txn.notify(ev.STREAM, event, self.key, self.db)

    def save(self) -> None:
        self.txn.put_coll(self.db, self.key, self.expire_ms,
                          _coll_of(self.cid, self.size, self.meta))

    # -- entries ---------------------------------------------------------------------------
    def entries(self, lo: StreamId = MIN_ID, hi: StreamId = MAX_ID, *,
                reverse: bool = False) -> Iterator[tuple[StreamId, bytes]]:
        """``(id, encoded fields)`` with ``lo <= id <= hi``, in id order (or reversed)."""
        if lo > hi:
            return
        txn = self.txn
        coll = _coll_of(self.cid, self.size, self.meta)
        if hi == MAX_ID:
            # From an end: the keyspace's member walk (it skips the tombstones of entries
            # trimmed at that end).
            for m, value in txn.members(coll, b"" if lo == MIN_ID else encode_id(lo),
                                        reverse=reverse):
                yield decode_id(m), value
            return
        prefix = member_prefix(self.cid)
        hi_key = _after(prefix + encode_id(hi))
        for k, value in txn.records(prefix + encode_id(lo), hi_key, self.cid,
                                    reverse=reverse):
            yield decode_id(k, 9), value

    def entry(self, sid: StreamId) -> bytes | None:
        return self.txn.record(member_key(self.cid, encode_id(sid)), self.cid)

    def first_id(self) -> StreamId:
        for sid, _ in self.entries():
            return sid
        return MIN_ID

    def last_entry_id(self) -> StreamId:
        for sid, _ in self.entries(reverse=True):
            return sid
        return MIN_ID

    def add(self, sid: StreamId, fields: list[bytes]) -> None:
        self.txn.put_record(member_key(self.cid, encode_id(sid)), encode_fields(fields))
        self.size += 1
        self.meta = self.meta._replace(last=sid, added=self.meta.added + 1)

    def delete(self, sid: StreamId) -> bool:
        """XDEL of one entry: whether it existed."""
        if self.entry(sid) is None:
            return False
        self.txn.put_record(member_key(self.cid, encode_id(sid)), None)
        self.size -= 1
        if sid > self.meta.max_deleted:
            self.meta = self.meta._replace(max_deleted=sid)
        return True

    def trim(self, maxlen: int | None, minid: StreamId | None, approx: bool,
             limit: int, node: int = NODE_ENTRIES) -> int:
        """Delete entries from the start down to ``maxlen`` or below ``minid``. ``approx``:
        only whole nodes of ``node`` entries, at most ``limit`` entries (0: no limit), as
        Redis removes whole radix-tree nodes: entry number ``k`` (in the order added, the
        first live one being number ``added - length``) lies in node ``k // node``. How
        many were deleted."""
        if not approx:
            if maxlen is not None:
                want = max(self.size - maxlen, 0)
            else:
                assert minid is not None
                want = 0
                for want, (sid, _) in enumerate(self.entries(), 1):  # noqa: B007
                    if sid >= minid or want > STREAM_DELETE_MAX + 1:
                        want -= 1
                        break
        else:
            node = max(node, 1)
            want = 0
            chunk = node - max(self.meta.added - self.size, 0) % node
            walk = self.entries()
            while want < self.size:
                chunk = min(chunk, self.size - want)  # the last node may not be full
                if maxlen is not None and self.size - want - chunk < maxlen:
                    break
                if limit and want + chunk > limit:
                    break
                if minid is not None:
                    taken = [item for _, item in zip(range(chunk), walk, strict=False)]
                    if not taken or taken[-1][0] >= minid:
                        break
                want += chunk
                chunk = node
                if want > STREAM_DELETE_MAX:
                    break
            want = min(want, self.size)
        if not want:
            return 0
        if want > STREAM_DELETE_MAX:
            raise CommandError(
                f"trimming would delete {want} stream entries, more than the "
                f"{STREAM_DELETE_MAX} one command may (they are buffered in memory until "
                "the commit); nothing was changed: trim in steps with LIMIT and '~', or "
                "DEL the stream")
        drops = [sid for sid, _ in zip(self.entries(), range(want), strict=False)]
        for sid, _ in drops:
            self.txn.put_record(member_key(self.cid, encode_id(sid)), None)
        self.size -= len(drops)
        return len(drops)

    # -- consumer groups -----------------------------------------------------------------
    def group(self, name: bytes) -> GroupRecord | None:
        raw = self.txn.record(group_key(self.cid, name), self.cid)
        return None if raw is None else GroupRecord.decode(raw)

    def put_group(self, name: bytes, g: GroupRecord) -> None:
        self.txn.put_record(group_key(self.cid, name), g.encode())

    def groups(self) -> Iterator[tuple[bytes, GroupRecord]]:
        lo = group_key(self.cid, b"")
        for k, raw in self.txn.records(lo, prefix_end(lo), self.cid):
            yield k[len(lo):], GroupRecord.decode(raw)

    def pending(self, g: GroupRecord, lo: StreamId = MIN_ID, hi: StreamId = MAX_ID
                ) -> Iterator[tuple[StreamId, PendingRecord]]:
        """The group's PEL from ``lo`` to ``hi``, in id order."""
        if lo > hi:
            return
        prefix = pending_prefix(self.cid, g.number)
        for k, raw in self.txn.records(prefix + encode_id(lo),
                                       _after(prefix + encode_id(hi)), self.cid):
            yield decode_id(k, len(prefix)), PendingRecord.decode(raw)

    def pending_entry(self, g: GroupRecord, sid: StreamId) -> PendingRecord | None:
        raw = self.txn.record(pending_key(self.cid, g.number, sid), self.cid)
        return None if raw is None else PendingRecord.decode(raw)

    def put_pending(self, g: GroupRecord, sid: StreamId, p: PendingRecord | None) -> None:
        self.txn.put_record(pending_key(self.cid, g.number, sid),
                            None if p is None else p.encode())

    def consumers(self, g: GroupRecord) -> Iterator[tuple[bytes, ConsumerRecord]]:
        prefix = consumer_prefix(self.cid, g.number)
        for k, raw in self.txn.records(prefix, prefix_end(prefix), self.cid):
            yield k[len(prefix):], ConsumerRecord.decode(raw)

    def consumer(self, g: GroupRecord, name: bytes) -> ConsumerRecord | None:
        raw = self.txn.record(consumer_key(self.cid, g.number, name), self.cid)
        return None if raw is None else ConsumerRecord.decode(raw)

    def put_consumer(self, g: GroupRecord, name: bytes, c: ConsumerRecord | None) -> None:
        self.txn.put_record(consumer_key(self.cid, g.number, name),
                            None if c is None else c.encode())

    def touch_consumer(self, g: GroupRecord, name: bytes, now: int, *, active: bool = False
                       ) -> bool:
        """Create consumer ``name`` (seen now) or refresh its seen time; whether it was
        created."""
        c = self.consumer(g, name)
        if c is None:
            self.put_consumer(g, name, ConsumerRecord(now, now if active else 0))
            self.notify(b"xgroup-createconsumer")  # as Redis' streamCreateConsumer
            return True
        self.put_consumer(g, name, ConsumerRecord(now, now if active else c.active_ms))
        return False

    def consumer_pending(self, g: GroupRecord, name: bytes) -> int:
        """Entries of the group's PEL owned by ``name`` (a walk of the group's PEL)."""
        return sum(1 for _, p in self.pending(g) if p.consumer == name)

    # -- Redis' lag bookkeeping (t_stream.c) ---------------------------------------------
    def range_has_tombstones(self, start: StreamId | None) -> bool:
        md = self.meta.max_deleted
        if not self.size or md == MIN_ID:
            return False
        return (start or MIN_ID) <= md

    def estimate_read(self, sid: StreamId) -> int:
        """streamEstimateDistanceFromFirstEverEntry: the entries read up to ``sid``, or
        ENTRIES_READ_UNKNOWN."""
        m = self.meta
        if not m.added:
            return 0
        if not self.size and sid <= m.last:
            return m.added
        if sid == m.last:
            return m.added
        if sid > m.last:
            return ENTRIES_READ_UNKNOWN
        first = self.first_id()
        if m.max_deleted == MIN_ID or m.max_deleted < first:
            if sid < first:
                return m.added - self.size
            if sid == first:
                return m.added - self.size + 1
        return ENTRIES_READ_UNKNOWN

    def lag(self, g: GroupRecord) -> int | None:
        m = self.meta
        if not m.added:
            return 0
        if g.entries_read != ENTRIES_READ_UNKNOWN and not self.range_has_tombstones(g.last):
            return m.added - g.entries_read
        read = self.estimate_read(g.last)
        return None if read == ENTRIES_READ_UNKNOWN else m.added - read

    def advance(self, g: GroupRecord, sid: StreamId) -> GroupRecord:
        """The group after delivering ``sid`` (> its last id)."""
        if g.entries_read != ENTRIES_READ_UNKNOWN and not self.range_has_tombstones(sid):
            read = g.entries_read + 1
        elif self.meta.added:
            read = self.estimate_read(sid)
        else:
            read = g.entries_read
        return g._replace(last=sid, entries_read=read)


def _coll_of(cid: int, size: int, meta: StreamMeta) -> CollRef:
    return CollRef(TAG_STREAM, cid, size, 0, meta.encode())


def _after(k: bytes) -> bytes:
    """The first key after ``k`` (exclusive upper bound of a walk that includes ``k``)."""
    return k + b"\x00"


def _entry_reply(sid: StreamId, raw: bytes) -> list[Any]:
    return [format_id(sid), decode_fields(raw)]


# -- XADD XTRIM -----------------------------------------------------------------------------

class _TrimArgs:
    __slots__ = ("maxlen", "minid", "approx", "limit", "nomkstream", "id", "seq_given",
                 "id_given", "next")

    def __init__(self) -> None:
        self.maxlen: int | None = None
        self.minid: StreamId | None = None
        self.approx = False
        self.limit = 0
        self.nomkstream = False
        self.id: StreamId = MIN_ID
        self.seq_given = True
        self.id_given = False
        self.next = 0


def _trim_args(argv: list[bytes], xadd: bool) -> _TrimArgs:
    """streamParseAddOrTrimArgsOrReply: options from argv[2]; for XADD, ``next`` is the
    index of the id."""
    a = _TrimArgs()
    limit_given = False
    i = 2
    n = len(argv)
    while i < n:
        more = n - 1 - i
        opt = argv[i]
        lo = opt.lower()
        if xadd and opt == b"*":
            break
        if lo in (b"maxlen", b"minid") and more:
            if a.maxlen is not None or a.minid is not None:
                raise CommandError("syntax error, MAXLEN and MINID options at the same time "
                                   "are not compatible")
            a.approx = False
            nxt = argv[i + 1]
            if more >= 2 and nxt == b"~":
                a.approx = True
                i += 1
            elif more >= 2 and nxt == b"=":
                i += 1
            if lo == b"maxlen":
                a.maxlen = parse_int(argv[i + 1])
                if a.maxlen < 0:
                    raise CommandError("The MAXLEN argument must be >= 0.")
            else:
                a.minid = parse_id(argv[i + 1], strict=True)[0]
            i += 2
            continue
        if lo == b"limit" and more:
            a.limit = parse_int(argv[i + 1])
            if a.limit < 0:
                raise CommandError("The LIMIT argument must be >= 0.")
            limit_given = True
            i += 2
            continue
        if xadd and lo == b"nomkstream":
            a.nomkstream = True
            i += 1
            continue
        if xadd:
            a.id, a.seq_given = parse_id(opt, strict=True, star_seq=True)
            a.id_given = True
            break
        raise CommandError(SYNTAX)
    a.next = i
    trimming = a.maxlen is not None or a.minid is not None
    if a.limit and not trimming:
        raise CommandError("syntax error, LIMIT cannot be used without specifying a trimming "
                           "strategy")
    if not xadd and not trimming:
        raise CommandError("syntax error, XTRIM must be called with a trimming strategy")
    if limit_given:
        if not a.approx:
            raise CommandError("syntax error, LIMIT cannot be used without the special ~ "
                               "option")
    else:
        a.limit = -1 if a.approx else 0  # -1: 100 nodes (the caller knows the node size)
    return a


def _node_entries(ctx: Context) -> int:
    """stream-node-max-entries (CONFIG SET changes it)."""
    return int(dict(ctx.services.config.encoding_hints).get("stream-node-max-entries",
                                                           NODE_ENTRIES))


def _trim_limit(a: _TrimArgs, node: int) -> int:
    if a.limit != -1:
        return a.limit
    limit = NODE_ENTRIES * node
    return 10_000 if limit <= 0 else min(limit, 1_000_000)


def _next_auto_id(last: StreamId, now: int) -> StreamId | None:
    if now > last[0]:
        return now, 0
    return _incr(last)


@command("xadd", -5, "write denyoom fast", "write stream fast", (1, 1, 1))
def xadd(ctx: Context, argv: list[bytes]) -> Any:
    """XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] *|id field value
    [field value ...] -> the new entry's id (nil with NOMKSTREAM and no stream)"""
    a = _trim_args(argv, True)
    fields = argv[a.next + 1:]
    if len(fields) < 2 or len(fields) % 2:
        raise wrong_arity("xadd")
    if a.id_given and a.seq_given and a.id == MIN_ID:
        raise CommandError("The ID specified in XADD must be greater than 0-0")
    if sum(len(f) + 8 for f in fields) > MAX_STRING:
        raise CommandError("Elements are too large to be stored")
    txn = ctx.txn
    s = Stream.get(txn, ctx.db, argv[1])
    if s is None:
        if a.nomkstream:
            return None
        s = Stream.create(txn, ctx.db, argv[1])
    last = s.meta.last
    if last == MAX_ID:
        raise CommandError("The stream has exhausted the last possible ID, unable to add "
                           "more items")
    sid: StreamId | None
    if not a.id_given:
        sid = _next_auto_id(last, txn.now)
    elif a.seq_given:
        sid = a.id
    elif a.id[0] == last[0]:
        sid = _incr(last) if last[1] < ID_MAX else None
    else:
        sid = a.id
    if sid is None or sid <= last:
        raise CommandError("The ID specified in XADD is equal or smaller than the target "
                           "stream top item")
    s.add(sid, fields)
    trimmed = 0
    if a.maxlen is not None or a.minid is not None:
        node = _node_entries(ctx)
        trimmed = s.trim(a.maxlen, a.minid, a.approx, _trim_limit(a, node), node)
    s.save()
    s.notify(b"xadd")
    if trimmed:
        s.notify(b"xtrim")
    return format_id(sid)


@command("xtrim", -4, "write", "write stream slow", (1, 1, 1))
def xtrim(ctx: Context, argv: list[bytes]) -> Any:
    """XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT count] -> entries deleted"""
    s = Stream.get(ctx.txn, ctx.db, argv[1])
    if s is None:
        return 0
    a = _trim_args(argv, False)
    if a.next != len(argv):
        raise CommandError(SYNTAX)
    node = _node_entries(ctx)
    n = s.trim(a.maxlen, a.minid, a.approx, _trim_limit(a, node), node)
    if n:
        s.save()
        s.notify(b"xtrim")
    return n


@command("xdel", -3, "write fast", "write stream fast", (1, 1, 1))
def xdel(ctx: Context, argv: list[bytes]) -> Any:
    """XDEL key id [id ...] -> entries deleted"""
    s = Stream.get(ctx.txn, ctx.db, argv[1])
    if s is None:
        return 0
    ids = [parse_id(a, strict=True)[0] for a in argv[2:]]
    n = sum(1 for sid in ids if s.delete(sid))
    if n:
        s.save()
        s.notify(b"xdel")
    return n


@command("xlen", 2, "readonly fast", "read stream fast", (1, 1, 1))
def xlen(ctx: Context, argv: list[bytes]) -> Any:
    """XLEN key -> the number of entries"""
    s = Stream.get(ctx.txn, ctx.db, argv[1])
    return 0 if s is None else s.size


@command("xsetid", -3, "write denyoom fast", "write stream fast", (1, 1, 1))
def xsetid(ctx: Context, argv: list[bytes]) -> Any:
    """XSETID key last-id [ENTRIESADDED entries-added] [MAXDELETEDID max-deleted-id]"""
    sid = parse_id(argv[2], strict=True)[0]
    added = -1
    max_del = MIN_ID
    i = 3
    while i < len(argv):
        opt = argv[i].lower()
        if opt == b"entriesadded" and i + 1 < len(argv):
            added = parse_int(argv[i + 1])
            if added < 0:
                raise CommandError("entries_added must be positive")
        elif opt == b"maxdeletedid" and i + 1 < len(argv):
            max_del = parse_id(argv[i + 1], strict=True)[0]
            if sid < max_del:
                raise CommandError("The ID specified in XSETID is smaller than the provided "
                                   "max_deleted_entry_id")
        else:
            raise CommandError(SYNTAX)
        i += 2
    s = Stream.get(ctx.txn, ctx.db, argv[1])
    if s is None:
        raise CommandError("no such key")
    if sid < s.meta.max_deleted:
        raise CommandError("The ID specified in XSETID is smaller than current "
                           "max_deleted_entry_id")
    if s.size:
        if sid < s.last_entry_id():
            raise CommandError("The ID specified in XSETID is smaller than the target stream "
                               "top item")
        if added != -1 and s.size > added:
            raise CommandError("The entries_added specified in XSETID is smaller than the "
                               "target stream length")
    m = s.meta._replace(last=sid)
    if added != -1:
        m = m._replace(added=added)
    if max_del != MIN_ID:
        m = m._replace(max_deleted=max_del)
    s.meta = m
    s.save()
    s.notify(b"xsetid")
    return OK


# -- XRANGE XREVRANGE -----------------------------------------------------------------------

def _range(ctx: Context, argv: list[bytes], reverse: bool) -> Any:
    if len(argv) not in (4, 6):
        if len(argv) > 6 or len(argv) == 5:
            raise CommandError(SYNTAX)
        raise wrong_arity(argv[0].lower().decode())
    lo_arg, hi_arg = (argv[3], argv[2]) if reverse else (argv[2], argv[3])
    lo = _interval(lo_arg, 0, True)
    hi = _interval(hi_arg, ID_MAX, False)
    count = -1
    if len(argv) == 6:
        if argv[4].lower() != b"count":
            raise CommandError(SYNTAX)
        count = max(parse_int(argv[5]), 0)
    s = Stream.get(ctx.txn, ctx.db, argv[1])
    out = ctx.array()
    if s is None:
        return out.done()
    if count == 0:
        return NULL_ARRAY
    for sid, raw in s.entries(lo, hi, reverse=reverse):
        if (sid > hi) if not reverse else (sid < lo):
            break
        if not out.add(_entry_reply(sid, raw)):
            return ctx.overflow()
        count -= 1
        if count == 0:
            break
    return out.done()


@command("xrange", -4, "readonly", "read stream slow", (1, 1, 1))
def xrange(ctx: Context, argv: list[bytes]) -> Any:
    """XRANGE key start end [COUNT count] -> entries in id order"""
    return _range(ctx, argv, False)


@command("xrevrange", -4, "readonly", "read stream slow", (1, 1, 1))
def xrevrange(ctx: Context, argv: list[bytes]) -> Any:
    """XREVRANGE key end start [COUNT count] -> entries in reverse id order"""
    return _range(ctx, argv, True)


# -- XREAD XREADGROUP -----------------------------------------------------------------------

def _block_ms(arg: bytes) -> float:
    """A BLOCK timeout (milliseconds) as Redis reads it; seconds returned (0: forever)."""
    try:
        ms = parse_int(arg)
    except CommandError:
        raise CommandError("timeout is not an integer or out of range") from None
    if ms < 0:
        raise CommandError("timeout is negative")
    if ms > BLOCK_MAX_MS:
        raise CommandError("timeout is out of range")
    return ms / 1000.0


class _ReadArgs:
    __slots__ = ("count", "block", "noack", "group", "consumer", "keys", "ids")

    def __init__(self) -> None:
        self.count = 0
        self.block: float | None = None
        self.noack = False
        self.group: bytes | None = None
        self.consumer = b""
        self.keys: list[bytes] = []
        self.ids: list[bytes] = []


def _read_args(argv: list[bytes], group: bool) -> _ReadArgs:
    a = _ReadArgs()
    name = "xreadgroup" if group else "xread"
    i = 1
    streams_at = 0
    while i < len(argv):
        more = len(argv) - 1 - i
        opt = argv[i].lower()
        if opt == b"block" and more:
            a.block = _block_ms(argv[i + 1])
            i += 2
        elif opt == b"count" and more:
            a.count = max(parse_int(argv[i + 1]), 0)
            i += 2
        elif opt == b"streams" and more:
            streams_at = i + 1
            rest = len(argv) - streams_at
            if rest % 2:
                raise CommandError(f"Unbalanced '{name}' list of streams: for each stream "
                                   "key an ID or '$' must be specified.")
            half = rest // 2
            a.keys = argv[streams_at:streams_at + half]
            a.ids = argv[streams_at + half:]
            break
        elif group and opt == b"group" and more >= 2:
            a.group, a.consumer = argv[i + 1], argv[i + 2]
            i += 3
        elif group and opt == b"noack":
            a.noack = True
            i += 1
        else:
            raise CommandError(SYNTAX)
    if not streams_at:
        raise CommandError(SYNTAX)
    if group and a.group is None:
        raise CommandError("Missing GROUP option for XREADGROUP")
    return a


def _read_new(s: Stream, after: StreamId, count: int, out: ArrayBuilder) -> bool:
    """XREAD's entries of ``s`` after ``after`` (at most ``count``, 0: all) into ``out``,
    charged to the client's output limit as they are added; False once over it."""
    start = _incr(after)
    if start is None:
        return True
    for sid, raw in s.entries(start):
        if not out.add(_entry_reply(sid, raw)):
            return False
        if count and out.count >= count:
            break
    return True


def _builder(ctx: Context, used: int) -> ArrayBuilder:
    """An array charged to what is left of the output limit after ``used`` bytes."""
    return ArrayBuilder(ctx.client.resp, ctx.client.output_budget - used)


def _xread_reply(ctx: Context, results: list[tuple[bytes, Any]]) -> Any:
    if not results:
        return NULL_ARRAY
    if ctx.client.resp == 3:
        return dict(results)
    return [[k, v] for k, v in results]


@command("xread", -4, "readonly blocking", "read stream slow blocking",
         key_finder=lambda argv: _stream_keys(argv))
def xread(ctx: Context, argv: list[bytes]) -> Any:
    """XREAD [COUNT count] [BLOCK ms] STREAMS key [key ...] id [id ...] -> [[key,
    entries] ...] of the streams with entries after the ids, or nil"""
    a = _read_args(argv, False)
    txn, db = ctx.txn, ctx.db
    after: list[StreamId] = []
    streams: list[Stream | None] = []
    for key, arg in zip(a.keys, a.ids, strict=True):
        s = Stream.get(txn, db, key)
        streams.append(s)
        if arg == b"$":
            after.append(MIN_ID if s is None else s.meta.last)
        elif arg == b">":
            raise CommandError("The > ID can be specified only when calling XREADGROUP "
                               "using the GROUP <group> <consumer> option.")
        else:
            after.append(parse_id(arg, 0, strict=True)[0])
    results: list[tuple[bytes, Any]] = []
    used = 0
    for key, s, sid in zip(a.keys, streams, after, strict=True):
        if s is not None:
            out = _builder(ctx, used)
            if not _read_new(s, sid, a.count, out):
                return ctx.overflow()
            if out.count:
                got = out.done()
                used += got.size
                results.append((key, got))
    if results or a.block is None:
        return _xread_reply(ctx, results)
    wants = dict(zip(a.keys, after, strict=True))
    count = a.count

    def attempt(t: KeyspaceTxn, key: bytes) -> Any:
        try:
            s = Stream.get(t, db, key)
        except CommandError:
            return NOT_READY
        if s is None:
            return NOT_READY
        # Only entries added since it blocked: a write's worth, not charged.
        out = ArrayBuilder(ctx.client.resp, INT64_MAX)
        _read_new(s, wants[key], count, out)
        return _xread_reply(ctx, [(key, out.done())]) if out.count else NOT_READY

    return block(ctx, a.keys, a.block, attempt, NULL_ARRAY)


def _stream_keys(argv: list[bytes]) -> list[bytes]:
    """The keys of XREAD / XREADGROUP (after STREAMS, the first half), for ACL checks."""
    for i in range(1, len(argv)):
        if argv[i].lower() == b"streams":
            rest = argv[i + 1:]
            return rest[:len(rest) // 2]
    return []


def _deliver(s: Stream, gname: bytes, g: GroupRecord, consumer: bytes, count: int,
             noack: bool, now: int, out: ArrayBuilder) -> bool:
    """XREADGROUP ``>``: entries after the group's last id into ``out``, added to its PEL
    (unless ``noack``) for ``consumer``; the group's record updated. False once ``out`` is
    over the output limit (the client is disconnected, as by Redis' limit)."""
    fits = True
    start = _incr(g.last)
    if start is not None:
        for sid, raw in s.entries(start):
            g = s.advance(g, sid)
            if not noack:
                s.put_pending(g, sid, PendingRecord(now, 1, consumer))
            if not out.add(_entry_reply(sid, raw)):
                fits = False
                break
            if count and out.count >= count:
                break
    if out.count:
        s.put_group(gname, g)
        s.touch_consumer(g, consumer, now, active=True)
    return fits


def _history(s: Stream, g: GroupRecord, consumer: bytes, after: StreamId, count: int,
             out: ArrayBuilder) -> bool:
    """XREADGROUP with an id: ``consumer``'s pending entries after it (a deleted entry
    as [id, nil]) into ``out``; False once over the output limit."""
    start = _incr(after)
    if start is None:
        return True
    for sid, p in s.pending(g, start):
        if p.consumer != consumer:
            continue
        raw = s.entry(sid)
        if not out.add([format_id(sid), None] if raw is None else _entry_reply(sid, raw)):
            return False
        if count and out.count >= count:
            break
    return True


@command("xreadgroup", -7, "write blocking", "write stream slow blocking",
         key_finder=lambda argv: _stream_keys(argv))
def xreadgroup(ctx: Context, argv: list[bytes]) -> Any:
    """XREADGROUP GROUP group consumer [COUNT count] [BLOCK ms] [NOACK] STREAMS key [key
    ...] id [id ...] -> new entries (id ``>``) or the consumer's pending ones"""
    a = _read_args(argv, True)
    assert a.group is not None
    gname, consumer = a.group, a.consumer
    txn, db, now = ctx.txn, ctx.db, ctx.txn.now
    plan: list[tuple[bytes, Stream, GroupRecord, StreamId | None]] = []
    for key, arg in zip(a.keys, a.ids, strict=True):
        s = Stream.get(txn, db, key)
        g = None if s is None else s.group(gname)
        if s is None or g is None:
            raise _nogroup(key, gname, " in XREADGROUP with GROUP option")
        if arg == b">":
            plan.append((key, s, g, None))
        elif arg == b"$":
            raise CommandError("The $ ID is meaningless in the context of XREADGROUP: you want "
                               "to read the history of this consumer by specifying a proper "
                               "ID, or use the > ID to get new messages. The $ ID would just "
                               "return an empty result set.")
        else:
            plan.append((key, s, g, parse_id(arg, 0, strict=True)[0]))
    results: list[tuple[bytes, Any]] = []
    history = False
    used = 0
    for key, s, g, after in plan:
        # Streams may repeat a key: read the group again from the transaction.
        s = Stream.get(txn, db, key) or s
        g = s.group(gname) or g
        s.touch_consumer(g, consumer, now)
        out = _builder(ctx, used)
        if after is None:
            fits = _deliver(s, gname, g, consumer, a.count, a.noack, now, out)
        else:
            history = True
            fits = _history(s, g, consumer, after, a.count, out)
        s.save()
        if not fits:
            return ctx.overflow()
        if out.count or after is not None:
            got = out.done()
            used += got.size
            results.append((key, got))
    if results or history or a.block is None:
        return _xread_reply(ctx, results)
    count, noack = a.count, a.noack

    def attempt(t: KeyspaceTxn, key: bytes) -> Any:
        # Redis 7 answers a group reader whose stream went (DEL, FLUSHDB, another type)
        # at once; an XREAD waiter stays blocked.
        try:
            s = Stream.get(t, db, key)
        except CommandError:
            s = None
        if s is None:
            raise CommandError("the stream key no longer exists", prefix="UNBLOCKED")
        g = s.group(gname)
        if g is None:
            raise CommandError("the consumer group this client was blocked on no longer "
                               "exists", prefix="NOGROUP")
        out = ArrayBuilder(ctx.client.resp, INT64_MAX)  # entries added since it blocked
        _deliver(s, gname, g, consumer, count, noack, t.now, out)
        if not out.count:
            return NOT_READY
        s.save()
        return _xread_reply(ctx, [(key, out.done())])

    return block(ctx, a.keys, a.block, attempt, NULL_ARRAY)


# -- XGROUP ---------------------------------------------------------------------------------

#: Redis' arity of each subcommand (negative: at least).
_SUB_ARITY: Final = {
    b"xgroup": {b"create": -5, b"setid": -5, b"destroy": 4, b"createconsumer": 5,
                b"delconsumer": 5, b"help": 2},
    b"xinfo": {b"consumers": 4, b"groups": 3, b"stream": -3, b"help": 2},
}


def _check_subcommand(argv: list[bytes]) -> bytes:
    """The lower-case subcommand, after Redis' unknown-subcommand and arity checks."""
    cmd, sub = argv[0].lower(), argv[1].lower()
    arity = _SUB_ARITY[cmd].get(sub)
    if arity is None:
        raise CommandError(f"unknown subcommand '{_text(argv[1])}'. Try "
                           f"{_text(cmd).upper()} HELP.")
    if (arity >= 0 and len(argv) != arity) or len(argv) < -arity:
        raise wrong_arity(f"{_text(cmd)}|{_text(sub)}")
    return sub


def _subcommand_error(argv: list[bytes]) -> CommandError:
    return CommandError(f"unknown subcommand or wrong number of arguments for "
                        f"'{_text(argv[1])}'. Try {_text(argv[0]).upper()} HELP.")


def _drop_group(s: Stream, gname: bytes, g: GroupRecord) -> None:
    """Delete a group with its PEL and consumers."""
    txn = s.txn
    doomed = [k for k, _ in txn.records(pending_prefix(s.cid, g.number),
                                        prefix_end(pending_prefix(s.cid, g.number)), s.cid)]
    doomed += [k for k, _ in txn.records(consumer_prefix(s.cid, g.number),
                                         prefix_end(consumer_prefix(s.cid, g.number)), s.cid)]
    if len(doomed) > STREAM_DELETE_MAX:
        raise CommandError(f"the group has {len(doomed)} pending entries and consumers, more "
                           f"than the {STREAM_DELETE_MAX} one command may delete; nothing "
                           "was changed: acknowledge them first (XACK)")
    for k in doomed:
        txn.put_record(k, None)
    txn.put_record(group_key(s.cid, gname), None)


_XGROUP_HELP: Final = [
    b"XGROUP <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CREATE <key> <groupname> <id|$> [option]",
    b"    Create a new consumer group. Options are:",
    b"    * MKSTREAM",
    b"      Create the empty stream if it does not exist.",
    b"    * ENTRIESREAD entries_read",
    b"      Set the group's entries_read counter (internal use).",
    b"CREATECONSUMER <key> <groupname> <consumer>",
    b"    Create a new consumer in the specified group.",
    b"DELCONSUMER <key> <groupname> <consumer>",
    b"    Remove the specified consumer.",
    b"DESTROY <key> <groupname>",
    b"    Remove the specified group.",
    b"SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
    b"    Set the current group ID and entries_read counter.",
    b"HELP",
    b"    Prints this help.",
]


@command("xgroup", -2, "write", "write stream slow", (2, 2, 1),
         subcommands={"create": "write stream slow", "setid": "write stream slow",
                      "destroy": "write stream slow",
                      "createconsumer": "write stream slow",
                      "delconsumer": "write stream slow", "help": "stream slow"})
def xgroup(ctx: Context, argv: list[bytes]) -> Any:
    """XGROUP CREATE|SETID|DESTROY|CREATECONSUMER|DELCONSUMER|HELP ..."""
    sub = _check_subcommand(argv)
    n = len(argv)
    if sub == b"help" and n == 2:
        return _XGROUP_HELP
    if n < 4:
        raise _subcommand_error(argv)
    key, gname = argv[2], argv[3]
    mkstream = False
    entries_read = ENTRIES_READ_UNKNOWN
    if sub in (b"create", b"setid"):
        i = 5
        while i < n:
            opt = argv[i].lower()
            if sub == b"create" and opt == b"mkstream":
                mkstream = True
                i += 1
            elif opt == b"entriesread" and i + 1 < n:
                entries_read = parse_int(argv[i + 1])
                if entries_read < 0 and entries_read != ENTRIES_READ_UNKNOWN:
                    raise CommandError("value for ENTRIESREAD must be positive or -1")
                i += 2
            else:
                raise _subcommand_error(argv)
    txn = ctx.txn
    s = Stream.get(txn, ctx.db, key)
    g = None
    if not mkstream:
        if s is None:
            raise CommandError("The XGROUP subcommand requires the key to exist. Note that "
                               "for CREATE you may want to use the MKSTREAM option to create "
                               "an empty stream automatically.")
        g = s.group(gname)
        if g is None and sub in (b"setid", b"createconsumer", b"delconsumer"):
            raise _nogroup_for_key(key, gname)
    if sub == b"create" and 5 <= n <= 8:
        if argv[4] == b"$":
            sid = MIN_ID if s is None else s.meta.last
        else:
            sid = parse_id(argv[4], strict=True)[0]
        if s is None:
            s = Stream.create(txn, ctx.db, key)
        elif mkstream:
            g = s.group(gname)
        if g is not None:
            raise CommandError("Consumer Group name already exists", prefix="BUSYGROUP")
        s.put_group(gname, GroupRecord(s.meta.next_group, sid, entries_read))
        s.meta = s.meta._replace(next_group=s.meta.next_group + 1)
        s.save()
        s.notify(b"xgroup-create")
        return OK
    assert s is not None
    if sub == b"setid" and n in (5, 7):
        assert g is not None
        sid = s.meta.last if argv[4] == b"$" else parse_id(argv[4])[0]
        s.put_group(gname, g._replace(last=sid, entries_read=entries_read))
        s.save()
        s.notify(b"xgroup-setid")
        return OK
    if sub == b"destroy" and n == 4:
        if g is None:
            return 0
        _drop_group(s, gname, g)
        s.save()
        s.notify(b"xgroup-destroy")
        return 1
    if sub == b"createconsumer" and n == 5:
        assert g is not None
        if s.consumer(g, argv[4]) is not None:
            return 0
        s.put_consumer(g, argv[4], ConsumerRecord(txn.now, 0))
        s.save()
        s.notify(b"xgroup-createconsumer")
        return 1
    if sub == b"delconsumer" and n == 5:
        assert g is not None
        if s.consumer(g, argv[4]) is None:
            return 0
        mine = [sid for sid, p in s.pending(g) if p.consumer == argv[4]]
        if len(mine) > STREAM_DELETE_MAX:
            raise CommandError(f"the consumer has {len(mine)} pending entries, more than the "
                               f"{STREAM_DELETE_MAX} one command may delete; nothing was "
                               "changed: acknowledge them first (XACK)")
        for sid in mine:
            s.put_pending(g, sid, None)
        s.put_consumer(g, argv[4], None)
        s.save()
        s.notify(b"xgroup-delconsumer")
        return len(mine)
    raise _subcommand_error(argv)


# -- XACK XPENDING XCLAIM XAUTOCLAIM ----------------------------------------------------------

@command("xack", -4, "write fast", "write stream fast", (1, 1, 1))
def xack(ctx: Context, argv: list[bytes]) -> Any:
    """XACK key group id [id ...] -> entries acknowledged (removed from the PEL)"""
    s = Stream.get(ctx.txn, ctx.db, argv[1])
    g = None if s is None else s.group(argv[2])
    ids = [parse_id(a, strict=True)[0] for a in argv[3:]]
    if s is None or g is None:
        return 0
    n = 0
    for sid in dict.fromkeys(ids):
        if s.pending_entry(g, sid) is not None:
            s.put_pending(g, sid, None)
            n += 1
    if n:
        s.save()
    return n


@command("xpending", -3, "readonly", "read stream slow", (1, 1, 1))
def xpending(ctx: Context, argv: list[bytes]) -> Any:
    """XPENDING key group [[IDLE min-idle-time] start end count [consumer]] -> the summary
    [count, first, last, [[consumer, count] ...]] or the entries [id, consumer, idle ms,
    deliveries]"""
    n = len(argv)
    if n != 3 and not 6 <= n <= 9:
        raise CommandError(SYNTAX)
    min_idle = 0
    lo, hi, count = MIN_ID, MAX_ID, 0
    consumer: bytes | None = None
    if n >= 6:
        at = 3
        if argv[3].lower() == b"idle":
            min_idle = parse_int(argv[4])
            if n < 8:
                raise CommandError(SYNTAX)
            at = 5
        count = max(parse_int(argv[at + 2]), 0)
        lo = _interval(argv[at], 0, True)
        hi = _interval(argv[at + 1], ID_MAX, False)
        if at + 3 < n:
            consumer = argv[at + 3]
            if at + 4 < n:
                raise CommandError(SYNTAX)
    s = Stream.get(ctx.txn, ctx.db, argv[1])
    g = None if s is None else s.group(argv[2])
    if s is None or g is None:
        raise _nogroup(argv[1], argv[2])
    now = ctx.txn.now
    if n == 3:
        total = 0
        first: StreamId | None = None
        last: StreamId = MIN_ID
        per: dict[bytes, int] = {}
        for sid, p in s.pending(g):
            total += 1
            if first is None:
                first = sid
            last = sid
            per[p.consumer] = per.get(p.consumer, 0) + 1
        if not total or first is None:
            return [0, None, None, NULL_ARRAY]
        return [total, format_id(first), format_id(last),
                [[c, b"%d" % per[c]] for c in sorted(per)]]
    out = ctx.array()
    if consumer is not None and s.consumer(g, consumer) is None:
        return out.done()
    left = count
    for sid, p in s.pending(g, lo, hi):
        if not left:
            break
        if consumer is not None and p.consumer != consumer:
            continue
        idle = max(now - p.delivered_ms, 0)
        if min_idle and idle < min_idle:
            continue
        left -= 1
        if not out.add([format_id(sid), p.consumer, idle, p.deliveries]):
            return ctx.overflow()
    return out.done()


def _claim_one(s: Stream, g: GroupRecord, sid: StreamId, p: PendingRecord | None,
               consumer: bytes, delivered: int, retry: int, justid: bool) -> None:
    count = p.deliveries if p is not None else 0
    if retry >= 0:
        count = retry
    elif not justid:
        count += 1
    s.put_pending(g, sid, PendingRecord(delivered, count, consumer))


@command("xclaim", -6, "write fast", "write stream fast", (1, 1, 1))
def xclaim(ctx: Context, argv: list[bytes]) -> Any:
    """XCLAIM key group consumer min-idle-time id [id ...] [IDLE ms] [TIME ms]
    [RETRYCOUNT count] [FORCE] [JUSTID] [LASTID id] -> the entries (or ids) claimed"""
    txn = ctx.txn
    s = Stream.get(txn, ctx.db, argv[1])
    g = None if s is None else s.group(argv[2])
    if s is None or g is None:
        raise _nogroup(argv[1], argv[2])
    min_idle = max(parse_int(argv[4], "Invalid min-idle-time argument for XCLAIM"), 0)
    ids: list[StreamId] = []
    j = 5
    while j < len(argv):
        try:
            ids.append(parse_id(argv[j], strict=True)[0])
        except CommandError:
            break
        j += 1
    now = txn.now
    delivered = -1
    retry = -1
    force = justid = False
    last_id = MIN_ID
    while j < len(argv):
        more = len(argv) - 1 - j
        opt = argv[j].lower()
        if opt == b"force":
            force = True
        elif opt == b"justid":
            justid = True
        elif opt == b"idle" and more:
            j += 1
            delivered = now - parse_int(argv[j], "Invalid IDLE option argument for XCLAIM")
        elif opt == b"time" and more:
            j += 1
            delivered = parse_int(argv[j], "Invalid TIME option argument for XCLAIM")
        elif opt == b"retrycount" and more:
            j += 1
            retry = parse_int(argv[j], "Invalid RETRYCOUNT option argument for XCLAIM")
        elif opt == b"lastid" and more:
            j += 1
            last_id = parse_id(argv[j], strict=True)[0]
        else:
            raise CommandError(f"Unrecognized XCLAIM option '{_text(argv[j])}'")
        j += 1
    gname, consumer = argv[2], argv[3]
    if last_id > g.last:
        g = g._replace(last=last_id)
        s.put_group(gname, g)
    if delivered == -1 or delivered < 0 or delivered > now:
        delivered = now
    out: list[Any] = []
    seen = False
    for sid in ids:
        p = s.pending_entry(g, sid)
        raw = s.entry(sid)
        if raw is None:
            if p is not None:
                s.put_pending(g, sid, None)  # the entry is gone: so is its PEL entry
            continue
        if p is None and not force:
            continue
        if p is not None and min_idle and now - p.delivered_ms < min_idle:
            continue
        if not seen:
            s.touch_consumer(g, consumer, now, active=True)
            seen = True
        _claim_one(s, g, sid, p, consumer, delivered, retry, justid)
        out.append(format_id(sid) if justid else _entry_reply(sid, raw))
    s.save()
    return out


@command("xautoclaim", -6, "write fast", "write stream fast", (1, 1, 1))
def xautoclaim(ctx: Context, argv: list[bytes]) -> Any:
    """XAUTOCLAIM key group consumer min-idle-time start [COUNT count] [JUSTID] -> [next
    start, claimed entries (or ids), ids of deleted entries removed from the PEL]"""
    txn = ctx.txn
    s = Stream.get(txn, ctx.db, argv[1])
    g = None if s is None else s.group(argv[2])
    min_idle = max(parse_int(argv[4], "Invalid min-idle-time argument for XAUTOCLAIM"), 0)
    start = _interval(argv[5], 0, True)
    count = 100
    justid = False
    j = 6
    max_count = INT64_MAX // 16
    while j < len(argv):
        more = len(argv) - 1 - j
        opt = argv[j].lower()
        if opt == b"count" and more:
            count = parse_int(argv[j + 1], "COUNT must be > 0")
            if not 1 <= count <= max_count:
                raise CommandError("COUNT must be > 0")
            j += 2
        elif opt == b"justid":
            justid = True
            j += 1
        else:
            raise CommandError(SYNTAX)
    if s is None or g is None:
        raise _nogroup(argv[1], argv[2])
    now = txn.now
    consumer = argv[3]
    attempts = count * AUTOCLAIM_ATTEMPTS
    claimed: list[Any] = []
    deleted: list[bytes] = []
    cursor = MIN_ID
    walk = s.pending(g, start)
    s.touch_consumer(g, consumer, now)
    for sid, p in walk:
        if not attempts or not count:
            cursor = sid
            break
        attempts -= 1
        raw = s.entry(sid)
        if raw is None:
            s.put_pending(g, sid, None)
            deleted.append(format_id(sid))
            count -= 1  # Redis 7.0 counts a deleted entry it drops as one claimed
            continue
        if now - p.delivered_ms < min_idle:
            continue
        _claim_one(s, g, sid, p, consumer, now, -1, justid)
        claimed.append(format_id(sid) if justid else _entry_reply(sid, raw))
        count -= 1
    if claimed:
        s.touch_consumer(g, consumer, now, active=True)
    s.save()
    return [format_id(cursor), claimed, deleted]


# -- XINFO ----------------------------------------------------------------------------------

_XINFO_HELP: Final = [
    b"XINFO <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CONSUMERS <key> <groupname>",
    b"    Show consumers of <groupname>.",
    b"GROUPS <key>",
    b"    Show the stream consumer groups.",
    b"STREAM <key> [FULL [COUNT <count>]",
    b"    Show information about the stream.",
    b"HELP",
    b"    Prints this help.",
]


def _tree_estimate(size: int) -> tuple[int, int]:
    """What Redis' radix-tree-keys / -nodes would be about (nodes of NODE_ENTRIES)."""
    keys = max(1, -(-size // NODE_ENTRIES)) if size else 0
    return keys, keys + 1 if keys else 1


@command("xinfo", -2, "readonly", "read stream slow", (2, 2, 1),
         subcommands={"stream": "read stream slow", "groups": "read stream slow",
                      "consumers": "read stream slow", "help": "stream slow"})
def xinfo(ctx: Context, argv: list[bytes]) -> Any:
    """XINFO STREAM key [FULL [COUNT count]] | GROUPS key | CONSUMERS key group | HELP"""
    sub = _check_subcommand(argv)
    n = len(argv)
    if sub == b"help" and n == 2:
        return _XINFO_HELP
    if (sub == b"consumers" and n != 4) or (sub == b"groups" and n != 3) or (
            sub == b"stream" and not (n == 3 or n == 4 or n == 6)) or sub not in (
            b"consumers", b"groups", b"stream"):
        raise _subcommand_error(argv)
    full = False
    count = 10
    if sub == b"stream" and n > 3:
        if argv[3].lower() != b"full":
            raise CommandError(SYNTAX)
        full = True
        if n == 6:
            if argv[4].lower() != b"count":
                raise CommandError(SYNTAX)
            count = max(parse_int(argv[5]), 0)
    s = Stream.get(ctx.txn, ctx.db, argv[2])
    if s is None:
        raise CommandError("no such key")
    now = ctx.txn.now
    if sub == b"consumers":
        g = s.group(argv[3])
        if g is None:
            raise _nogroup_for_key(argv[2], argv[3])
        per: dict[bytes, int] = {}
        for _, p in s.pending(g):
            per[p.consumer] = per.get(p.consumer, 0) + 1
        return [{b"name": name, b"pending": per.get(name, 0),
                 b"idle": max(now - c.seen_ms, 0)} for name, c in s.consumers(g)]
    if sub == b"groups":
        out = []
        for name, g in s.groups():
            pending = sum(1 for _ in s.pending(g))
            consumers = sum(1 for _ in s.consumers(g))
            out.append({b"name": name, b"consumers": consumers, b"pending": pending,
                        b"last-delivered-id": format_id(g.last),
                        b"entries-read": (None if g.entries_read == ENTRIES_READ_UNKNOWN
                                          else g.entries_read),
                        b"lag": s.lag(g)})
        return out
    keys, nodes = _tree_estimate(s.size)
    m = s.meta
    info: dict[bytes, Any] = {
        b"length": s.size, b"radix-tree-keys": keys, b"radix-tree-nodes": nodes,
        b"last-generated-id": format_id(m.last),
        b"max-deleted-entry-id": format_id(m.max_deleted),
        b"entries-added": m.added, b"recorded-first-entry-id": format_id(s.first_id())}
    if not full:
        first = next(s.entries(), None)
        last = next(s.entries(reverse=True), None)
        info[b"groups"] = sum(1 for _ in s.groups())
        info[b"first-entry"] = None if first is None else _entry_reply(*first)
        info[b"last-entry"] = None if last is None else _entry_reply(*last)
        return info
    # FULL COUNT 0 shows everything: charge what it builds to the output limit (a rough
    # size: the bytes plus RESP's framing) and stop at it, as the array replies do.
    budget = ctx.client.output_budget
    size = 0
    entries: list[Any] = []
    for sid, raw in s.entries():
        if count and len(entries) >= count:
            break
        entries.append(_entry_reply(sid, raw))
        size += len(raw) + 64
        if size > budget:
            return ctx.overflow()
    info[b"entries"] = entries
    groups: list[Any] = []
    for name, g in s.groups():
        pel = []
        for item in s.pending(g):
            pel.append(item)
            size += len(item[1].consumer) + 80
            if size > budget:
                return ctx.overflow()
        shown = pel[:count] if count else pel
        per_consumer: dict[bytes, list[Any]] = {}
        for sid, p in pel:
            per_consumer.setdefault(p.consumer, []).append((sid, p))
        members: list[Any] = []
        for cname, c in s.consumers(g):
            mine = per_consumer.get(cname, [])
            members.append({
                b"name": cname, b"seen-time": c.seen_ms, b"pel-count": len(mine),
                b"pending": [[format_id(sid), p.delivered_ms, p.deliveries]
                             for sid, p in (mine[:count] if count else mine)]})
        groups.append({
            b"name": name, b"last-delivered-id": format_id(g.last),
            b"entries-read": (None if g.entries_read == ENTRIES_READ_UNKNOWN
                              else g.entries_read),
            b"lag": s.lag(g), b"pel-count": len(pel),
            b"pending": [[format_id(sid), p.consumer, p.delivered_ms, p.deliveries]
                         for sid, p in shown],
            b"consumers": members})
    info[b"groups"] = groups
    return info


__all__ = ["FAMILY", "NODE_ENTRIES", "STREAM_DELETE_MAX", "Stream", "parse_id"]
