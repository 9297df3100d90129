"""DUMP and RESTORE in Redis' RDB value format (:mod:`shaledb.server.keyspace.rdb`), so
keys move between ShaleDB and Redis (``redis-cli --pipe``, redis-py, migration tools).

DUMP builds the whole payload in memory, as Redis does. The payload's CRC-64 is computed in
Python on the event loop, about 0.1 s per MiB on the reference VM, so DUMP and RESTORE refuse
payloads over :data:`PAYLOAD_MAX` (4 MiB, about 0.4 s of checksum), before any checksum
work: a larger value is copied with GET/SET, or HSCAN/SSCAN/LRANGE/ZRANGE/XRANGE and their
writes. RESTORE writes the key in one batch like any command: a collection gets a fresh
collection id and its members (a stream: its entries, state, groups, PELs and consumers;
a consumer's active time is its seen time, all Redis 7.0 keeps) and raises ``restore``.
IDLETIME and FREQ are checked as Redis checks them and otherwise ignored: this server
keeps no access times or counters (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import MAX_EXPIRE_MS
from ..keyspace.rdb import (
    T_STREAM_2,
    PayloadError,
    StreamNodes,
    StreamValue,
    check,
    decode,
    encode_header,
    encode_item,
    encode_length,
    encode_ms,
    encode_stream_id,
    encode_string,
    encode_zset_header,
    encode_zset_item,
    pairs,
    seal,
)
from ..keyspace.streams import (
    ID_MAX,
    ConsumerRecord,
    GroupRecord,
    PendingRecord,
    StreamId,
    StreamMeta,
    decode_fields,
)
from ..keyspace.values import (
    TAG_HASH,
    TAG_LIST,
    TAG_SET,
    TAG_STREAM,
    TAG_ZSET,
    CollRef,
    score_of_bytes,
)
from ..net.protocol import OK
from . import INT64_MAX, SYNTAX, CommandFamily, Context, parse_int
from .streams import Stream

FAMILY = CommandFamily()
command = FAMILY.command

_KINDS = {TAG_HASH: "hash", TAG_SET: "set", TAG_LIST: "list"}
#: The largest DUMP payload written or RESTORE payload read (never more than
#: proto-max-bulk-len either): its checksum is computed on the event loop.
PAYLOAD_MAX: Final = 4 * 1024 * 1024


def _restore_stream(ctx: Context, key: bytes, v: StreamValue, expire: int) -> None:
    """Write a decoded stream: its entries, then its state as the payload gives it (the
    last id, entries added, largest deleted id), its groups (numbered in payload order),
    their PELs and consumers (active time: the seen time, which is all Redis 7.0 keeps)."""
    s = Stream.create(ctx.txn, ctx.db, key)
    s.expire_ms = expire
    for sid, kv in v.entries:
        s.add(sid, kv)
    s.meta = StreamMeta(v.last, v.added, v.max_deleted, len(v.groups))
    for number, grp in enumerate(v.groups):
        g = GroupRecord(number, grp.last, grp.entries_read)
        s.put_group(grp.name, g)
        for sid, when, count, consumer in grp.pending:
            s.put_pending(g, sid, PendingRecord(when, count, consumer))
        for cname, seen in grp.consumers:
            s.put_consumer(g, cname, ConsumerRecord(seen, seen))
    s.save()


def _payload_limit(ctx: Context) -> int:
    return min(PAYLOAD_MAX, ctx.services.config.proto_max_bulk_len)


@command("dump", 2, "readonly", "keyspace read slow", (1, 1, 1))
def dump(ctx: Context, argv: list[bytes]) -> Any:
    """DUMP key -> the value as an RDB payload (version 10, CRC-64), or nil"""
    e = ctx.txn.lookup(ctx.db, argv[1])
    if e is None:
        return None
    limit = _payload_limit(ctx)

    def too_big() -> CommandError:
        return CommandError(f"the DUMP payload would be larger than {limit} bytes (the "
                            f"largest this server checksums): copy the key with GET/SET "
                            f"or in parts (HSCAN, SSCAN, LRANGE)")

    coll = e.coll
    if coll is None:
        if e.length + 20 > limit:
            raise too_big()
        return seal(encode_string(e.value))
    if coll.kind == TAG_ZSET:
        return _dump_zset(ctx, coll, limit, too_big)
    if coll.kind == TAG_STREAM:
        return _dump_stream(ctx, argv[1], limit, too_big)
    parts = [encode_header(_KINDS[coll.kind], coll.size)]
    size = len(parts[0])
    if coll.kind == TAG_LIST:
        items = (v for _, v in ctx.txn.list_walk(coll))
        for value in items:
            parts.append(encode_item(value))
            size += len(parts[-1])
            if size > limit:
                raise too_big()
    else:
        for field, value in ctx.txn.members(coll):
            item = encode_item(field)
            if coll.kind == TAG_HASH:
                item += encode_item(value)
            parts.append(item)
            size += len(item)
            if size > limit:
                raise too_big()
    return seal(b"".join(parts))


def _dump_zset(ctx: Context, coll: CollRef, limit: int,
               too_big: Callable[[], CommandError]) -> bytes:
    """A sorted set as ZSET_2, from the highest score down as Redis writes it."""
    parts = [encode_zset_header(coll.size)]
    size = len(parts[0])
    for entry in ctx.txn.score_walk(coll, reverse=True):
        parts.append(encode_zset_item(entry[8:], score_of_bytes(entry)))
        size += len(parts[-1])
        if size > limit:
            raise too_big()
    return seal(b"".join(parts))


def _dump_stream(ctx: Context, key: bytes, limit: int,
                 too_big: Callable[[], CommandError]) -> bytes:
    """A stream as STREAM_LISTPACKS_2 (Redis 7.0's): its entries in nodes of
    stream-node-max-entries entries / stream-node-max-bytes, its state, and every
    consumer group with its PEL and consumers (each consumer's own PEL is the group PEL's
    entries it owns)."""
    s = Stream.get(ctx.txn, ctx.db, key)
    assert s is not None
    hints = dict(ctx.services.config.encoding_hints)
    nodes = StreamNodes(hints.get("stream-node-max-entries", 100),
                        hints.get("stream-node-max-bytes", 4096))
    body: list[bytes] = []
    size = 0

    def add(part: bytes) -> None:
        nonlocal size
        if part:
            body.append(part)
            size += len(part)
            if size > limit:
                raise too_big()

    first: StreamId | None = None
    for sid, raw in s.entries():
        if first is None:
            first = sid
        add(nodes.add(sid, decode_fields(raw)))
        if size + nodes.open_bytes > limit:  # the open node counts too
            raise too_big()
    add(nodes.close())
    m = s.meta
    tail = [encode_length(s.size)]
    for sid in (m.last, first or (0, 0), m.max_deleted):
        tail += [encode_length(sid[0]), encode_length(sid[1])]
    tail.append(encode_length(m.added))
    groups = list(s.groups())
    tail.append(encode_length(len(groups)))
    add(b"".join(tail))
    for name, g in groups:
        owned: dict[bytes, list[StreamId]] = {}
        pel: list[bytes] = []
        held = size
        for sid, p in s.pending(g):
            pel.append(encode_stream_id(sid) + encode_ms(p.delivered_ms)
                       + encode_length(p.deliveries))
            owned.setdefault(p.consumer, []).append(sid)
            held += len(pel[-1]) + 16  # and its id in its consumer's PEL
            if held > limit:
                raise too_big()
        consumers = dict(s.consumers(g))
        for c in owned:  # a PEL owner without a record cannot be: keep Redis' invariant
            consumers.setdefault(c, ConsumerRecord(0, 0))
        part = [encode_item(name), encode_length(g.last[0]), encode_length(g.last[1]),
                encode_length(ID_MAX if g.entries_read < 0 else g.entries_read),
                encode_length(len(pel)), *pel, encode_length(len(consumers))]
        for cname in sorted(consumers):
            ids = owned.get(cname, [])
            part += [encode_item(cname), encode_ms(consumers[cname].seen_ms),
                     encode_length(len(ids)), *(encode_stream_id(x) for x in ids)]
        add(b"".join(part))
    head = bytes((T_STREAM_2,)) + encode_length(nodes.count)
    return seal(head + b"".join(body))


@command("restore", -4, "write denyoom", "keyspace write slow dangerous", (1, 1, 1))
def restore(ctx: Context, argv: list[bytes]) -> Any:
    """RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME seconds] [FREQ frequency]"""
    replace = absttl = False
    idle = freq = -1
    j = 4
    while j < len(argv):
        opt = argv[j].upper()
        more = len(argv) - j - 1
        if opt == b"REPLACE":
            replace = True
        elif opt == b"ABSTTL":
            absttl = True
        elif opt == b"IDLETIME" and more >= 1 and freq == -1:
            j += 1
            idle = parse_int(argv[j])
            if idle < 0:
                raise CommandError("Invalid IDLETIME value, must be >= 0")
        elif opt == b"FREQ" and more >= 1 and idle == -1:
            j += 1
            freq = parse_int(argv[j])
            if not 0 <= freq <= 255:
                raise CommandError("Invalid FREQ value, must be >= 0 and <= 255")
        else:
            raise CommandError(SYNTAX)
        j += 1
    txn, db, key = ctx.txn, ctx.db, argv[1]
    if not replace and txn.exists(db, key):
        raise CommandError("Target key name already exists.", "BUSYKEY")
    ttl = parse_int(argv[2])
    if ttl < 0:
        raise CommandError("Invalid TTL value, must be >= 0")
    if len(argv[3]) > _payload_limit(ctx):
        raise CommandError(f"the payload is larger than {_payload_limit(ctx)} bytes (the "
                           f"largest this server checksums): copy the key in parts")
    try:
        value = decode(check(argv[3]), ctx.services.config.proto_max_bulk_len)
    except PayloadError as exc:
        raise CommandError(str(exc)) from None
    items = value.items
    if value.kind == "set" and len(set(items)) != len(items):
        raise CommandError("Bad data format")  # Redis refuses duplicate members
    if value.kind == "hash" and len(set(items[::2])) != len(items) // 2:
        raise CommandError("Bad data format")
    if ttl and not absttl:
        ttl = min(ttl + txn.now, INT64_MAX)
    expire = min(ttl, MAX_EXPIRE_MS)
    deleted = replace and txn.delete(db, key)
    if ttl and ttl <= txn.now:
        # already expired: nothing is created (the old key is gone with REPLACE)
        if deleted:
            txn.notify(ev.GENERIC, b"del", key, db)
        return OK
    if value.kind == "string":
        txn.set(db, key, items[0], expire)
        txn.notify(ev.GENERIC, b"restore", key, db)
        return OK
    if value.kind == "stream":
        assert value.stream is not None
        _restore_stream(ctx, key, value.stream, expire)
        txn.notify(ev.GENERIC, b"restore", key, db)
        return OK
    if value.kind == "zset":
        assert value.scores is not None
        coll = txn.new_collection(TAG_ZSET)._replace(size=len(items))
        txn.zset_write(db, key, None, coll,
                       ((m, sc, None) for m, sc in zip(items, value.scores, strict=True)))
    elif value.kind == "hash":
        txn.put_members(db, key, None, TAG_HASH, pairs(items))
    elif value.kind == "set":
        txn.put_members(db, key, None, TAG_SET, ((m, b"") for m in items))
    else:
        coll = txn.new_list()
        puts = [(coll.head + i, v) for i, v in enumerate(items)]
        txn.list_write(db, key, None, coll._replace(size=len(items)), puts)
    if expire:
        e = txn.lookup(db, key)
        assert e is not None
        txn.set_entry(db, key, e, expire)
    txn.notify(ev.GENERIC, b"restore", key, db)
    return OK
