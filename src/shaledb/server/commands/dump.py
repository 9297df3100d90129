"""DUMP and RESTORE in Redis' RDB value format (:mod:`shaledb.server.keyspace.rdb`), so
keys move between ShaleDB and Redis (``redis-cli --pipe``, redis-py, migration tools).

DUMP builds the whole payload in memory, as Redis does. The payload's CRC-64 is computed in
Python on the event loop, about 0.1 s per MiB on the reference VM, so DUMP and RESTORE refuse
payloads over :data:`PAYLOAD_MAX` (4 MiB, about 0.4 s of checksum), before any checksum
work: a larger value is copied with GET/SET, or HSCAN/SSCAN/LRANGE and their writes.
RESTORE writes the key in one batch like any command: a collection
gets a fresh collection id and its members. IDLETIME and FREQ are checked as Redis checks
them and otherwise ignored: this server keeps no access times or counters
(docs/design.md).
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import MAX_EXPIRE_MS
from ..keyspace.rdb import (
    PayloadError,
    check,
    decode,
    encode_header,
    encode_item,
    encode_string,
    pairs,
    seal,
)
from ..keyspace.values import TAG_HASH, TAG_LIST, TAG_SET
from ..net.protocol import OK
from . import INT64_MAX, SYNTAX, CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command

_KINDS = {TAG_HASH: "hash", TAG_SET: "set", TAG_LIST: "list"}
#: The largest DUMP payload written or RESTORE payload read (never more than
#: proto-max-bulk-len either): its checksum is computed on the event loop.
PAYLOAD_MAX: Final = 4 * 1024 * 1024


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
    kind = _KINDS.get(coll.kind)
    if kind is None:  # sorted sets and streams come from other branches
        raise CommandError(f"DUMP of a {e.type_name.decode()} is not supported by this "
                           f"server yet")
    parts = [encode_header(kind, coll.size)]
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
    if value.kind == "hash":
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
