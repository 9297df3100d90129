"""Set commands (Redis' t_set.c): SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP
SRANDMEMBER SMOVE SINTER SINTERSTORE SINTERCARD SUNION SUNIONSTORE SDIFF SDIFFSTORE SSCAN.

A set is a header under its key and one member record per member (docs/format.md,
"Hashes and sets"), kept in member order. So SUNION is a merge of sorted walks, SINTER walks
the smallest set and looks each member up in the others (a point read each), SDIFF walks
the first and looks members up in the rest: none of them holds a whole set in memory, and
their replies are charged to the output limit as they are built (the STORE variants buffer
the result they write, as any write does until its commit). Any other type answers
WRONGTYPE, checked for every key before anything is read, as Redis does.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import Entry
from ..keyspace.values import TAG_SET, CollRef
from . import CommandFamily, Context, parse_int
from .members import member_scan, random_reply

FAMILY = CommandFamily()
command = FAMILY.command


def _set(ctx: Context, key: bytes) -> Entry | None:
    return ctx.txn.get_coll(ctx.db, key, TAG_SET)


def _coll(e: Entry | None) -> CollRef | None:
    return None if e is None else e.coll


@command("sadd", -3, "write denyoom fast", "write set fast", (1, 1, 1))
def sadd(ctx: Context, argv: list[bytes]) -> Any:
    """SADD key member [member ...] -> members added"""
    members = dict.fromkeys(argv[2:])
    added = ctx.txn.put_members(ctx.db, argv[1], _set(ctx, argv[1]), TAG_SET,
                                [(m, b"") for m in members])
    if added:
        ctx.txn.notify(ev.SET, b"sadd", argv[1], ctx.db)
    return added


def _removed(ctx: Context, key: bytes, e: Entry, removed: int, event: bytes) -> None:
    """The events of members removed from set ``e``: ``event``, and ``del`` when the key
    went with its last member."""
    if removed:
        ctx.txn.notify(ev.SET, event, key, ctx.db)
        if e.coll is not None and removed >= e.coll.size:
            ctx.txn.notify(ev.GENERIC, b"del", key, ctx.db)


@command("srem", -3, "write fast", "write set fast", (1, 1, 1))
def srem(ctx: Context, argv: list[bytes]) -> Any:
    """SREM key member [member ...] -> members removed (the key goes with its last one)"""
    e = _set(ctx, argv[1])
    if e is None:
        return 0
    removed = ctx.txn.remove_members(ctx.db, argv[1], e, dict.fromkeys(argv[2:]))
    _removed(ctx, argv[1], e, removed, b"srem")
    return removed


@command("smembers", 2, "readonly", "read set slow", (1, 1, 1))
def smembers(ctx: Context, argv: list[bytes]) -> Any:
    """SMEMBERS key -> the members in member order (a set in RESP3)"""
    coll = _coll(_set(ctx, argv[1]))
    out = ctx.array()
    if coll is not None:
        for member, _ in ctx.txn.members(coll):
            if not out.add(member):
                return ctx.overflow()
    return out.done("set")


@command("sismember", 3, "readonly fast", "read set fast", (1, 1, 1))
def sismember(ctx: Context, argv: list[bytes]) -> Any:
    """SISMEMBER key member -> 1 or 0"""
    coll = _coll(_set(ctx, argv[1]))
    return int(coll is not None and ctx.txn.member(coll, argv[2]) is not None)


@command("smismember", -3, "readonly fast", "read set fast", (1, 1, 1))
def smismember(ctx: Context, argv: list[bytes]) -> Any:
    """SMISMEMBER key member [member ...] -> 1 or 0 for each"""
    coll = _coll(_set(ctx, argv[1]))
    out = ctx.array()
    for m in argv[2:]:
        if not out.add(int(coll is not None and ctx.txn.member(coll, m) is not None)):
            return ctx.overflow()
    return out.done()


@command("scard", 2, "readonly fast", "read set fast", (1, 1, 1))
def scard(ctx: Context, argv: list[bytes]) -> Any:
    """SCARD key -> members (from the header: O(1))"""
    coll = _coll(_set(ctx, argv[1]))
    return 0 if coll is None else coll.size


@command("spop", -2, "write fast", "write set fast", (1, 1, 1))
def spop(ctx: Context, argv: list[bytes]) -> Any:
    """SPOP key [count] -> a removed random member (nil: none), or up to count of them"""
    if len(argv) > 3:
        raise CommandError("syntax error")
    count = None
    if len(argv) == 3:
        count = parse_int(argv[2], "value is out of range, must be positive")
        if count < 0:
            raise CommandError("value is out of range, must be positive")
    e = _set(ctx, argv[1])
    coll = _coll(e)
    if count is None:
        if e is None or coll is None:
            return None
        picked = next(ctx.txn.random_members(coll, 1, distinct=True), None)
        if picked is None:
            return None
        ctx.txn.remove_members(ctx.db, argv[1], e, [picked[0]])
        _removed(ctx, argv[1], e, 1, b"spop")
        return picked[0]
    out = ctx.array()
    if e is None or coll is None or count == 0:
        return out.done("set")
    if count >= coll.size:
        members = [m for m, _ in ctx.txn.members(coll)]
    else:
        members = [m for m, _ in ctx.txn.random_members(coll, count, distinct=True)]
    for m in members:
        if not out.add(m):
            return ctx.overflow()
    if count >= coll.size:
        ctx.txn.delete(ctx.db, argv[1])  # the whole set: O(1), members reclaimed later
    else:
        ctx.txn.remove_members(ctx.db, argv[1], e, members)
    _removed(ctx, argv[1], e, len(members), b"spop")
    return out.done("set")


@command("srandmember", -2, "readonly", "read set slow", (1, 1, 1))
def srandmember(ctx: Context, argv: list[bytes]) -> Any:
    """SRANDMEMBER key [count]"""
    if len(argv) > 3:
        raise CommandError("syntax error")
    e = _set(ctx, argv[1])
    if len(argv) == 2:
        coll = _coll(e)
        if coll is None:
            return None
        return next(ctx.txn.random_members(coll, 1, distinct=True), (None,))[0]
    return random_reply(ctx, e, argv[2], False)


@command("smove", 4, "write fast", "write set fast", (1, 2, 1))
def smove(ctx: Context, argv: list[bytes]) -> Any:
    """SMOVE source destination member -> 1 moved, 0 not a member of source"""
    src, dst, member = argv[1], argv[2], argv[3]
    if not ctx.txn.exists(ctx.db, src):
        return 0  # Redis answers 0 before it looks at the destination's type
    e_src = _set(ctx, src)
    e_dst = _set(ctx, dst)  # WRONGTYPE for a destination of another type, member or not
    src_coll = _coll(e_src)
    if e_src is None or src_coll is None or ctx.txn.member(src_coll, member) is None:
        return 0
    if src == dst:
        return 1
    ctx.txn.remove_members(ctx.db, src, e_src, [member])
    _removed(ctx, src, e_src, 1, b"srem")
    if ctx.txn.put_members(ctx.db, dst, e_dst, TAG_SET, [(member, b"")]):
        ctx.txn.notify(ev.SET, b"sadd", dst, ctx.db)
    return 1


# -- SINTER, SUNION, SDIFF and their STORE and CARD variants ---------------------------------

def _sources(ctx: Context, keys: list[bytes]) -> list[CollRef | None]:
    """The sets named by ``keys`` (None: missing), every one type-checked first."""
    return [_coll(_set(ctx, k)) for k in keys]


def _inter(ctx: Context, sets: list[CollRef | None]) -> Iterator[bytes]:
    if not sets or any(s is None for s in sets):
        return
    ordered = sorted((s for s in sets if s is not None), key=lambda s: s.size)
    txn = ctx.txn
    for member, _ in txn.members(ordered[0]):
        if all(txn.member(other, member) is not None for other in ordered[1:]):
            yield member


def _union(ctx: Context, sets: list[CollRef | None]) -> Iterator[bytes]:
    walks = [(m for m, _ in ctx.txn.members(s)) for s in sets if s is not None]
    last = None
    for member in heapq.merge(*walks):
        if member != last:
            yield member
            last = member


def _diff(ctx: Context, sets: list[CollRef | None]) -> Iterator[bytes]:
    first = sets[0] if sets else None
    if first is None:
        return
    rest = [s for s in sets[1:] if s is not None]
    txn = ctx.txn
    for member, _ in txn.members(first):
        if all(txn.member(other, member) is None for other in rest):
            yield member


_OPS = {"sinter": _inter, "sunion": _union, "sdiff": _diff}


def _reply(ctx: Context, members: Iterator[bytes]) -> Any:
    out = ctx.array()
    for m in members:
        if not out.add(m):
            return ctx.overflow()
    return out.done("set")


def _store(ctx: Context, argv: list[bytes], op: str) -> Any:
    sets = _sources(ctx, argv[2:])
    result = list(_OPS[op](ctx, sets))  # read whole before the destination is replaced
    dst = argv[1]
    existed = ctx.txn.delete(ctx.db, dst)  # any type: overwritten, as in Redis
    if result:
        ctx.txn.put_members(ctx.db, dst, None, TAG_SET, [(m, b"") for m in result])
        ctx.txn.notify(ev.SET, op.encode() + b"store", dst, ctx.db)
    elif existed:
        ctx.txn.notify(ev.GENERIC, b"del", dst, ctx.db)
    return len(result)


@command("sinter", -2, "readonly", "read set slow", (1, -1, 1))
def sinter(ctx: Context, argv: list[bytes]) -> Any:
    """SINTER key [key ...]"""
    return _reply(ctx, _inter(ctx, _sources(ctx, argv[1:])))


@command("sunion", -2, "readonly", "read set slow", (1, -1, 1))
def sunion(ctx: Context, argv: list[bytes]) -> Any:
    """SUNION key [key ...]"""
    return _reply(ctx, _union(ctx, _sources(ctx, argv[1:])))


@command("sdiff", -2, "readonly", "read set slow", (1, -1, 1))
def sdiff(ctx: Context, argv: list[bytes]) -> Any:
    """SDIFF key [key ...]"""
    return _reply(ctx, _diff(ctx, _sources(ctx, argv[1:])))


@command("sinterstore", -3, "write denyoom", "write set slow", (1, -1, 1))
def sinterstore(ctx: Context, argv: list[bytes]) -> Any:
    """SINTERSTORE destination key [key ...] -> members stored"""
    return _store(ctx, argv, "sinter")


@command("sunionstore", -3, "write denyoom", "write set slow", (1, -1, 1))
def sunionstore(ctx: Context, argv: list[bytes]) -> Any:
    """SUNIONSTORE destination key [key ...] -> members stored"""
    return _store(ctx, argv, "sunion")


@command("sdiffstore", -3, "write denyoom", "write set slow", (1, -1, 1))
def sdiffstore(ctx: Context, argv: list[bytes]) -> Any:
    """SDIFFSTORE destination key [key ...] -> members stored"""
    return _store(ctx, argv, "sdiff")


def _numkeys(argv: list[bytes]) -> int:
    n = parse_int(argv[1], "numkeys should be greater than 0")
    if n <= 0:
        raise CommandError("numkeys should be greater than 0")
    if n > len(argv) - 2:
        raise CommandError("Number of keys can't be greater than number of args")
    return n


def _sintercard_keys(argv: list[bytes]) -> list[bytes]:
    try:
        n = _numkeys(argv)
    except CommandError:
        return []
    return argv[2:2 + n]


@command("sintercard", -3, "readonly movablekeys", "read set slow",
         key_finder=_sintercard_keys)
def sintercard(ctx: Context, argv: list[bytes]) -> Any:
    """SINTERCARD numkeys key [key ...] [LIMIT limit] -> the intersection's size (at most
    limit; 0: no limit)"""
    n = _numkeys(argv)
    limit = 0
    i = 2 + n
    while i < len(argv):
        if argv[i].upper() == b"LIMIT" and i + 1 < len(argv):
            limit = parse_int(argv[i + 1], "LIMIT can't be negative")
            if limit < 0:
                raise CommandError("LIMIT can't be negative")
            i += 2
        else:
            raise CommandError("syntax error")
    found = 0
    for _ in _inter(ctx, _sources(ctx, argv[2:2 + n])):
        found += 1
        if limit and found >= limit:
            break
    return found


@command("sscan", -3, "readonly", "read set slow", (1, 1, 1))
def sscan(ctx: Context, argv: list[bytes]) -> Any:
    """SSCAN key cursor [MATCH pattern] [COUNT count] -> [next cursor, [member ...]]"""
    return member_scan(ctx, argv, _set(ctx, argv[1]), False)


__all__ = ["FAMILY"]
