"""Hash commands (Redis' t_hash.c): HSET HMSET HSETNX HGET HMGET HGETALL HDEL HLEN HEXISTS
HKEYS HVALS HINCRBY HINCRBYFLOAT HSTRLEN HRANDFIELD HSCAN.

A hash is a header under its key (type, collection id, size, expiry) and one record per
field in the member range (docs/format.md, "Hashes and sets"): a field read or write is a
point read or write, HLEN reads the header, and DEL / EXPIRE / overwrite of the whole hash
touch only the header (the fields are reclaimed in the background). HGETALL, HKEYS and
HVALS walk the member records in field order and charge the reply to the output limit as
they build it, as MGET does, so a hash larger than memory cannot build a reply that would
not fit. Replies and errors are Redis 7's; any other type answers WRONGTYPE.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import Entry
from ..keyspace.values import TAG_HASH
from ..net.protocol import OK
from . import INT64_MAX, INT64_MIN, NOT_INTEGER, CommandFamily, Context, parse_float, parse_int
from .members import member_scan, random_reply
from .strings import format_float

FAMILY = CommandFamily()
command = FAMILY.command

_W = "write denyoom fast"


def _hash(ctx: Context, key: bytes) -> Entry | None:
    return ctx.txn.get_coll(ctx.db, key, TAG_HASH)


def _field(ctx: Context, e: Entry | None, field: bytes) -> bytes | None:
    if e is None:
        return None
    assert e.coll is not None
    return ctx.txn.member(e.coll, field)


def _pairs(argv: list[bytes], name: str) -> list[tuple[bytes, bytes]]:
    if len(argv) % 2:
        raise CommandError(f"wrong number of arguments for '{name}' command")
    return [(argv[i], argv[i + 1]) for i in range(2, len(argv), 2)]


@command("hset", -4, _W, "write hash fast", (1, 1, 1))
def hset(ctx: Context, argv: list[bytes]) -> Any:
    """HSET key field value [field value ...] -> fields added"""
    pairs = _pairs(argv, "hset")
    added = ctx.txn.put_members(ctx.db, argv[1], _hash(ctx, argv[1]), TAG_HASH, pairs)
    ctx.txn.notify(ev.HASH, b"hset", argv[1], ctx.db)
    return added


@command("hmset", -4, _W, "write hash fast", (1, 1, 1))
def hmset(ctx: Context, argv: list[bytes]) -> Any:
    """HMSET key field value [field value ...] -> OK"""
    pairs = _pairs(argv, "hmset")
    ctx.txn.put_members(ctx.db, argv[1], _hash(ctx, argv[1]), TAG_HASH, pairs)
    ctx.txn.notify(ev.HASH, b"hset", argv[1], ctx.db)
    return OK


@command("hsetnx", 4, _W, "write hash fast", (1, 1, 1))
def hsetnx(ctx: Context, argv: list[bytes]) -> Any:
    """HSETNX key field value -> 1 set, 0 the field exists"""
    added = ctx.txn.put_members(ctx.db, argv[1], _hash(ctx, argv[1]), TAG_HASH,
                                [(argv[2], argv[3])], nx=True)
    if added:
        ctx.txn.notify(ev.HASH, b"hset", argv[1], ctx.db)
    return added


@command("hget", 3, "readonly fast", "read hash fast", (1, 1, 1))
def hget(ctx: Context, argv: list[bytes]) -> Any:
    """HGET key field"""
    e = _hash(ctx, argv[1])
    return _field(ctx, e, argv[2])


@command("hmget", -3, "readonly fast", "read hash fast", (1, 1, 1))
def hmget(ctx: Context, argv: list[bytes]) -> Any:
    """HMGET key field [field ...] (charged to the output limit value by value)"""
    e = _hash(ctx, argv[1])
    out = ctx.array()
    for field in argv[2:]:
        value = _field(ctx, e, field)
        if not out.add(value):
            return ctx.overflow()
    return out.done()


def _walk(ctx: Context, key: bytes, fields: bool, values: bool, kind: str = "array") -> Any:
    e = _hash(ctx, key)
    out = ctx.array()
    if e is not None:
        assert e.coll is not None
        for field, value in ctx.txn.members(e.coll):
            if (fields and not out.add(field)) or (values and not out.add(value)):
                return ctx.overflow()
    return out.done(kind)


@command("hgetall", 2, "readonly", "read hash slow", (1, 1, 1))
def hgetall(ctx: Context, argv: list[bytes]) -> Any:
    """HGETALL key -> field, value, ... (a map in RESP3), in field order"""
    return _walk(ctx, argv[1], True, True, "map")


@command("hkeys", 2, "readonly", "read hash slow", (1, 1, 1))
def hkeys(ctx: Context, argv: list[bytes]) -> Any:
    """HKEYS key"""
    return _walk(ctx, argv[1], True, False)


@command("hvals", 2, "readonly", "read hash slow", (1, 1, 1))
def hvals(ctx: Context, argv: list[bytes]) -> Any:
    """HVALS key"""
    return _walk(ctx, argv[1], False, True)


@command("hdel", -3, "write fast", "write hash fast", (1, 1, 1))
def hdel(ctx: Context, argv: list[bytes]) -> Any:
    """HDEL key field [field ...] -> fields removed (the key goes with its last field)"""
    e = _hash(ctx, argv[1])
    if e is None:
        return 0
    removed = ctx.txn.remove_members(ctx.db, argv[1], e, dict.fromkeys(argv[2:]))
    if removed:
        ctx.txn.notify(ev.HASH, b"hdel", argv[1], ctx.db)
        if e.coll is not None and removed >= e.coll.size:
            ctx.txn.notify(ev.GENERIC, b"del", argv[1], ctx.db)
    return removed


@command("hlen", 2, "readonly fast", "read hash fast", (1, 1, 1))
def hlen(ctx: Context, argv: list[bytes]) -> Any:
    """HLEN key -> fields (from the header: O(1))"""
    e = _hash(ctx, argv[1])
    return 0 if e is None or e.coll is None else e.coll.size


@command("hexists", 3, "readonly fast", "read hash fast", (1, 1, 1))
def hexists(ctx: Context, argv: list[bytes]) -> Any:
    """HEXISTS key field -> 1 or 0"""
    e = _hash(ctx, argv[1])
    return int(_field(ctx, e, argv[2]) is not None)


@command("hstrlen", 3, "readonly fast", "read hash fast", (1, 1, 1))
def hstrlen(ctx: Context, argv: list[bytes]) -> Any:
    """HSTRLEN key field -> the value's length (0: no such field)"""
    e = _hash(ctx, argv[1])
    value = _field(ctx, e, argv[2])
    return 0 if value is None else len(value)


@command("hincrby", 4, _W, "write hash fast", (1, 1, 1))
def hincrby(ctx: Context, argv: list[bytes]) -> Any:
    """HINCRBY key field increment -> the new value"""
    delta = parse_int(argv[3])
    e = _hash(ctx, argv[1])
    old = _field(ctx, e, argv[2])
    current = 0 if old is None else parse_int(old, "hash value is not an integer")
    new = current + delta
    if not INT64_MIN <= new <= INT64_MAX:
        raise CommandError("increment or decrement would overflow")
    ctx.txn.put_members(ctx.db, argv[1], e, TAG_HASH, [(argv[2], b"%d" % new)])
    ctx.txn.notify(ev.HASH, b"hincrby", argv[1], ctx.db)
    return new


@command("hincrbyfloat", 4, _W, "write hash fast", (1, 1, 1))
def hincrbyfloat(ctx: Context, argv: list[bytes]) -> Any:
    """HINCRBYFLOAT key field increment -> the new value as a bulk string"""
    delta = parse_float(argv[3])
    if math.isinf(delta) or math.isnan(delta):
        raise CommandError("value is NaN or Infinity")
    e = _hash(ctx, argv[1])
    old = _field(ctx, e, argv[2])
    if old is None:
        current = 0.0
    else:
        try:
            current = parse_float(old)
        except CommandError:
            raise CommandError("hash value is not a float") from None
    new = current + delta
    if math.isinf(new) or math.isnan(new):
        raise CommandError("increment would produce NaN or Infinity")
    text = format_float(new)
    ctx.txn.put_members(ctx.db, argv[1], e, TAG_HASH, [(argv[2], text)])
    ctx.txn.notify(ev.HASH, b"hincrbyfloat", argv[1], ctx.db)
    return text


@command("hrandfield", -2, "readonly", "read hash slow", (1, 1, 1))
def hrandfield(ctx: Context, argv: list[bytes]) -> Any:
    """HRANDFIELD key [count [WITHVALUES]]"""
    e = _hash(ctx, argv[1])
    if len(argv) == 2:
        if e is None or e.coll is None:
            return None
        return next(ctx.txn.random_members(e.coll, 1, distinct=True), (None,))[0]
    with_values = False
    if len(argv) == 4:
        if argv[3].upper() != b"WITHVALUES":
            raise CommandError("syntax error")
        with_values = True
    elif len(argv) > 4:
        raise CommandError("syntax error")
    return random_reply(ctx, e, argv[2], with_values)


@command("hscan", -3, "readonly", "read hash slow", (1, 1, 1))
def hscan(ctx: Context, argv: list[bytes]) -> Any:
    """HSCAN key cursor [MATCH pattern] [COUNT count] -> [next cursor, [field, value ...]]"""
    return member_scan(ctx, argv, _hash(ctx, argv[1]), True)


__all__ = ["FAMILY", "NOT_INTEGER"]
