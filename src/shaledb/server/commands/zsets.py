"""Sorted set commands (Redis' t_zset.c): ZADD ZINCRBY ZREM ZCARD ZSCORE ZMSCORE ZRANK
ZREVRANK ZCOUNT ZLEXCOUNT ZRANGE ZRANGESTORE ZRANGEBYSCORE ZREVRANGEBYSCORE ZRANGEBYLEX
ZREVRANGEBYLEX ZREVRANGE ZPOPMIN ZPOPMAX BZPOPMIN BZPOPMAX ZMPOP BZMPOP ZREMRANGEBYSCORE
ZREMRANGEBYRANK ZREMRANGEBYLEX ZUNION ZINTER ZDIFF ZUNIONSTORE ZINTERSTORE ZDIFFSTORE
ZINTERCARD ZRANDMEMBER ZSCAN.

A sorted set is a header under its key, one member record per member (member -> score)
and one score index record per member (score in order-preserving bytes + member), both
kept in the same write batch (docs/format.md, "Sorted sets"). So ZSCORE is one point read;
BYSCORE ranges, ZCOUNT, ZPOPMIN / ZPOPMAX and BYLEX ranges of a set whose members share
one score are range scans of the index that start at their first entry; rank queries
(ZRANK, ZRANGE by rank, ZREMRANGEBYRANK) walk the index from the nearer end: O(rank), no
skip list. Replies are charged to the output limit as they are built (a walk stops when
it is over), and the STORE variants buffer the result they write, as any write does until
its commit. Any other type answers WRONGTYPE, checked before anything is written.

Scores print as Redis 7.0 prints them (``%.17g``, ``inf``, ``-inf``); RESP3 clients get
doubles, and WITHSCORES replies as [member, score] pairs, as Redis 7 sends them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from ..errors import CommandError
from ..exec.blocking import NOT_READY
from ..keyspace import notify as ev
from ..keyspace.keyspace import Entry, KeyspaceTxn
from ..keyspace.values import (
    MAX_ZMEMBER,
    TAG_SET,
    TAG_ZSET,
    CollRef,
    score_bytes,
    score_of_bytes,
    unpack_score,
    wrong_type,
)
from ..net.protocol import NULL_ARRAY, Encoded
from . import SYNTAX, CommandFamily, Context, parse_float, parse_int
from .members import member_scan
from .popping import block, block_timeout, mpop_args, numkeys_finder

FAMILY = CommandFamily()
command = FAMILY.command

#: Longest timeout a blocking command takes, in seconds (as the list commands).
NOT_FLOAT: Final = "value is not a valid float"
_INF: Final = math.inf


# -- reading ---------------------------------------------------------------------------------

def _zset(txn: KeyspaceTxn, db: int, key: bytes) -> Entry | None:
    return txn.get_coll(db, key, TAG_ZSET)


def _coll(e: Entry | None) -> CollRef | None:
    return None if e is None else e.coll


def _score_of(txn: KeyspaceTxn, coll: CollRef | None, member: bytes) -> float | None:
    """The score of ``member`` in ``coll``, or None: one point read."""
    if coll is None or len(member) > MAX_ZMEMBER:
        return None
    raw = txn.member(coll, member)
    return None if raw is None else unpack_score(raw)


def fmt_score(score: float) -> bytes:
    """A score as Redis 7.0 prints it."""
    if math.isinf(score):
        return b"inf" if score > 0 else b"-inf"
    return b"%.17g" % score


def _score(ctx: Context, score: float) -> Any:
    """A score reply: a bulk string in RESP2, a double in RESP3."""
    text = fmt_score(score)
    if ctx.client.resp == 3:
        return Encoded([b",%s\r\n" % text], len(text) + 3)
    return text


def _entries(txn: KeyspaceTxn, coll: CollRef, lo: bytes = b"", hi: bytes | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, float]]:
    """(member, score) of ``coll`` in (score, member) order between index entries ``lo``
    and ``hi``."""
    for entry in txn.score_walk(coll, lo, hi, reverse=reverse):
        yield entry[8:], score_of_bytes(entry)


def _next_bytes(b: bytes) -> bytes:
    """The 8 bytes right after ``b`` (a score's): every index entry of that score sorts
    below it."""
    return (int.from_bytes(b, "big") + 1).to_bytes(8, "big")


# -- ranges ----------------------------------------------------------------------------------

class ScoreRange:
    """A BYSCORE range: min and max, each inclusive or exclusive (``(``)."""

    __slots__ = ("min", "max", "minex", "maxex")

    def __init__(self, lo: bytes, hi: bytes) -> None:
        self.min, self.minex = self._bound(lo)
        self.max, self.maxex = self._bound(hi)

    @staticmethod
    def _bound(arg: bytes) -> tuple[float, bool]:
        ex = arg[:1] == b"("
        try:
            v = parse_float(arg[1:] if ex else arg)
        except CommandError:
            raise CommandError("min or max is not a float") from None
        return v, ex

    def empty(self) -> bool:
        return self.min > self.max or (self.min == self.max and (self.minex or self.maxex))

    def bounds(self) -> tuple[bytes, bytes]:
        """The index entries [lo, hi) this range covers."""
        lo = score_bytes(self.min)
        if self.minex:
            lo = _next_bytes(lo)
        hi = score_bytes(self.max)
        if not self.maxex:
            hi = _next_bytes(hi)
        return lo, hi


class LexRange:
    """A BYLEX range: ``-``, ``+``, ``[member`` (inclusive) or ``(member`` (exclusive)."""

    __slots__ = ("min", "max", "minex", "maxex")

    def __init__(self, lo: bytes, hi: bytes) -> None:
        self.min, self.minex = self._bound(lo)
        self.max, self.maxex = self._bound(hi)

    @staticmethod
    def _bound(arg: bytes) -> tuple[bytes | bool, bool]:
        # (value, exclusive); the value is False for "-" and True for "+".
        if arg == b"-":
            return False, False
        if arg == b"+":
            return True, False
        if arg[:1] == b"[":
            return arg[1:], False
        if arg[:1] == b"(":
            return arg[1:], True
        raise CommandError("min or max not valid string range item")

    def gte_min(self, m: bytes) -> bool:
        lo = self.min
        if lo is False:
            return True
        if lo is True:
            return False
        assert isinstance(lo, bytes)
        return m > lo if self.minex else m >= lo

    def lte_max(self, m: bytes) -> bool:
        hi = self.max
        if hi is True:
            return True
        if hi is False:
            return False
        assert isinstance(hi, bytes)
        return m < hi if self.maxex else m <= hi


def _lex_entries(txn: KeyspaceTxn, coll: CollRef, r: LexRange, reverse: bool
                 ) -> Iterator[tuple[bytes, float]]:
    """Members of ``coll`` in range ``r`` (Redis assumes all members share one score; then
    the walk seeks straight to the range: first and last entries with the same score mean
    all do)."""
    first = next(txn.score_walk(coll), None)
    last = next(txn.score_walk(coll, reverse=True), None)
    if first is None or last is None:
        return
    lo, hi = b"", None
    if first[:8] == last[:8]:
        s = first[:8]
        lo = s + r.min if isinstance(r.min, bytes) else (_next_bytes(s) if r.min else s)
        hi_b: bytes | None
        if isinstance(r.max, bytes):
            hi_b = s + r.max + (b"" if r.maxex else b"\x00")
        else:
            hi_b = _next_bytes(s) if r.max else s
        hi = hi_b
    walk = _entries(txn, coll, lo, hi, reverse)
    if not reverse:
        for m, sc in walk:
            if not r.gte_min(m):
                continue
            if not r.lte_max(m):
                return
            yield m, sc
    else:
        for m, sc in walk:
            if not r.lte_max(m):
                continue
            if not r.gte_min(m):
                return
            yield m, sc


def _rank_entries(txn: KeyspaceTxn, coll: CollRef, start: int, stop: int, reverse: bool
                  ) -> Iterator[tuple[bytes, float]]:
    """Members ranked ``start`` .. ``stop`` (Redis' normalisation of negative ranks),
    walked from the nearer end: O(rank)."""
    size = coll.size
    if start < 0:
        start += size
    if stop < 0:
        stop += size
    start = max(start, 0)
    if start > stop or start >= size:
        return
    stop = min(stop, size - 1)
    # The entries skipped are only counted, never decoded.
    if start > size - 1 - stop:  # nearer the other end: walk from there and turn around
        got = []
        for i, entry in enumerate(txn.score_walk(coll, reverse=not reverse)):
            if i > size - 1 - start:
                break
            if i >= size - 1 - stop:
                got.append((entry[8:], score_of_bytes(entry)))
        yield from reversed(got)
        return
    for i, entry in enumerate(txn.score_walk(coll, reverse=reverse)):
        if i > stop:
            return
        if i >= start:
            yield entry[8:], score_of_bytes(entry)


def _score_entries(txn: KeyspaceTxn, coll: CollRef, r: ScoreRange, reverse: bool
                   ) -> Iterator[tuple[bytes, float]]:
    if r.empty():
        return iter(())
    lo, hi = r.bounds()
    return _entries(txn, coll, lo, hi, reverse)


# -- writing ---------------------------------------------------------------------------------

def _write(txn: KeyspaceTxn, db: int, key: bytes, e: Entry | None,
           puts: dict[bytes, tuple[float, float | None]], drops: dict[bytes, float],
           event: bytes) -> None:
    """Buffer new scores (member -> (score, committed score or None)) and removals
    (member -> score) of ``key``'s sorted set ``e`` (None: a new one); notify ``event``
    (and ``del`` when the last member went), as Redis does."""
    if not puts and not drops:
        return
    coll = txn.new_collection(TAG_ZSET) if e is None or e.coll is None else e.coll
    added = sum(1 for _, old in puts.values() if old is None)
    coll = coll._replace(size=coll.size + added - len(drops))
    txn.zset_write(db, key, e, coll, [(m, s, old) for m, (s, old) in puts.items()],
                   drops.items())
    txn.notify(ev.ZSET, event, key, db)
    if coll.size == 0:
        txn.notify(ev.GENERIC, b"del", key, db)


def _remove(txn: KeyspaceTxn, db: int, key: bytes, e: Entry,
            items: Iterable[tuple[bytes, float]], event: bytes) -> int:
    drops = dict(items)
    _write(txn, db, key, e, {}, drops, event)
    return len(drops)


# -- ZADD, ZINCRBY, ZREM, ZCARD, ZSCORE, ZMSCORE -------------------------------------------

def _check_member(m: bytes) -> None:
    if len(m) > MAX_ZMEMBER:
        raise CommandError(f"a sorted set member of {len(m)} bytes exceeds the maximum of "
                           f"{MAX_ZMEMBER}")


def _zadd(ctx: Context, key: bytes, pairs: list[tuple[float, bytes]], nx: bool, xx: bool,
          gt: bool, lt: bool, incr: bool) -> tuple[int, int, float | None]:
    """Redis' zsetAdd for each pair in order: (added, updated, last score or None when the
    INCR did nothing)."""
    txn, db = ctx.txn, ctx.db
    e = _zset(txn, db, key)
    coll = _coll(e)
    if coll is None and xx:
        return 0, 0, None
    # member -> (new score, committed score or None)
    puts: dict[bytes, tuple[float, float | None]] = {}
    added = updated = 0
    result: float | None = None
    for score, member in pairs:
        _check_member(member)
        if member in puts:
            cur: float | None = puts[member][0]
            committed = puts[member][1]
        else:
            cur = committed = _score_of(txn, coll, member)
        if cur is not None:
            if nx:
                result = None
                continue
            new = cur + score if incr else score
            if math.isnan(new):
                raise CommandError("resulting score is not a number (NaN)")
            if (gt and new <= cur) or (lt and new >= cur):
                result = None
                continue
            result = new
            if new != cur:
                puts[member] = (new, committed)
                updated += 1
        else:
            if xx:
                result = None
                continue
            puts[member] = (score, None)
            added += 1
            result = score
    _write(txn, db, key, e, {m: (s + 0.0, old) for m, (s, old) in puts.items()
                             if s != old or old is None}, {}, b"zincr" if incr else b"zadd")
    return added, updated, result


@command("zadd", -4, "write denyoom fast", "write sortedset fast", (1, 1, 1))
def zadd(ctx: Context, argv: list[bytes]) -> Any:
    """ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]"""
    nx = xx = gt = lt = ch = incr = False
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"NX":
            nx = True
        elif opt == b"XX":
            xx = True
        elif opt == b"GT":
            gt = True
        elif opt == b"LT":
            lt = True
        elif opt == b"CH":
            ch = True
        elif opt == b"INCR":
            incr = True
        else:
            break
        i += 1
    rest = argv[i:]
    if len(rest) % 2 or not rest:
        raise CommandError(SYNTAX)
    if nx and xx:
        raise CommandError("XX and NX options at the same time are not compatible")
    if (gt and nx) or (lt and nx) or (gt and lt):
        raise CommandError("GT, LT, and/or NX options at the same time are not compatible")
    if incr and len(rest) > 2:
        raise CommandError("INCR option supports a single increment-element pair")
    pairs = [(parse_float(rest[j]), rest[j + 1]) for j in range(0, len(rest), 2)]
    added, updated, result = _zadd(ctx, argv[1], pairs, nx, xx, gt, lt, incr)
    if incr:
        return None if result is None else _score(ctx, result)
    return added + updated if ch else added


@command("zincrby", 4, "write denyoom fast", "write sortedset fast", (1, 1, 1))
def zincrby(ctx: Context, argv: list[bytes]) -> Any:
    """ZINCRBY key increment member -> the new score"""
    _, _, result = _zadd(ctx, argv[1], [(parse_float(argv[2]), argv[3])],
                         False, False, False, False, True)
    return None if result is None else _score(ctx, result)


@command("zrem", -3, "write fast", "write sortedset fast", (1, 1, 1))
def zrem(ctx: Context, argv: list[bytes]) -> Any:
    """ZREM key member [member ...] -> members removed (the key goes with its last one)"""
    txn = ctx.txn
    e = _zset(txn, ctx.db, argv[1])
    coll = _coll(e)
    if e is None or coll is None:
        return 0
    drops: dict[bytes, float] = {}
    for m in argv[2:]:
        s = _score_of(txn, coll, m)
        if s is not None:
            drops[m] = s
    return _remove(txn, ctx.db, argv[1], e, drops.items(), b"zrem")


@command("zcard", 2, "readonly fast", "read sortedset fast", (1, 1, 1))
def zcard(ctx: Context, argv: list[bytes]) -> Any:
    """ZCARD key -> members (from the header: O(1))"""
    coll = _coll(_zset(ctx.txn, ctx.db, argv[1]))
    return 0 if coll is None else coll.size


@command("zscore", 3, "readonly fast", "read sortedset fast", (1, 1, 1))
def zscore(ctx: Context, argv: list[bytes]) -> Any:
    """ZSCORE key member -> the score, or nil"""
    s = _score_of(ctx.txn, _coll(_zset(ctx.txn, ctx.db, argv[1])), argv[2])
    return None if s is None else _score(ctx, s)


@command("zmscore", -3, "readonly fast", "read sortedset fast", (1, 1, 1))
def zmscore(ctx: Context, argv: list[bytes]) -> Any:
    """ZMSCORE key member [member ...] -> the score of each, or nil"""
    coll = _coll(_zset(ctx.txn, ctx.db, argv[1]))
    out = ctx.array()
    for m in argv[2:]:
        s = _score_of(ctx.txn, coll, m)
        if not out.add(None if s is None else _score(ctx, s)):
            return ctx.overflow()
    return out.done()


def _rank(ctx: Context, argv: list[bytes], reverse: bool) -> Any:
    if len(argv) > 4 or (len(argv) == 4 and argv[3].upper() != b"WITHSCORE"):
        raise CommandError(SYNTAX)
    withscore = len(argv) == 4
    txn = ctx.txn
    coll = _coll(_zset(txn, ctx.db, argv[1]))
    s = _score_of(txn, coll, argv[2])
    if coll is None or s is None:
        return NULL_ARRAY if withscore else None
    entry = score_bytes(s) + argv[2]
    # Count the entries on the nearer side of the member's: O(min(rank, size - rank)),
    # guessed from where the score lies between the first and last scores.
    first = next(txn.score_walk(coll), entry)
    last = next(txn.score_walk(coll, reverse=True), entry)
    lo_n = int.from_bytes(first[:8], "big")
    span = int.from_bytes(last[:8], "big") - lo_n
    near_low = span <= 0 or (int.from_bytes(entry[:8], "big") - lo_n) * 2 <= span
    if near_low:
        below = sum(1 for _ in txn.score_walk(coll, b"", entry))
        above = coll.size - 1 - below
    else:
        above = sum(1 for _ in txn.score_walk(coll, entry + b"\x00"))
        below = coll.size - 1 - above
    rank = above if reverse else below
    return [rank, _score(ctx, s)] if withscore else rank


@command("zrank", -3, "readonly fast", "read sortedset fast", (1, 1, 1))
def zrank(ctx: Context, argv: list[bytes]) -> Any:
    """ZRANK key member [WITHSCORE] -> the member's rank by ascending score (and its
    score: Redis 7.2), or nil"""
    return _rank(ctx, argv, False)


@command("zrevrank", -3, "readonly fast", "read sortedset fast", (1, 1, 1))
def zrevrank(ctx: Context, argv: list[bytes]) -> Any:
    """ZREVRANK key member [WITHSCORE] -> the member's rank by descending score, or nil"""
    return _rank(ctx, argv, True)


@command("zcount", 4, "readonly fast", "read sortedset fast", (1, 1, 1))
def zcount(ctx: Context, argv: list[bytes]) -> Any:
    """ZCOUNT key min max -> members with a score in the range (a walk of the range)"""
    r = ScoreRange(argv[2], argv[3])
    coll = _coll(_zset(ctx.txn, ctx.db, argv[1]))
    if coll is None or r.empty():
        return 0
    lo, hi = r.bounds()
    return sum(1 for _ in ctx.txn.score_walk(coll, lo, hi))


@command("zlexcount", 4, "readonly fast", "read sortedset fast", (1, 1, 1))
def zlexcount(ctx: Context, argv: list[bytes]) -> Any:
    """ZLEXCOUNT key min max -> members in the lexicographic range"""
    r = LexRange(argv[2], argv[3])
    coll = _coll(_zset(ctx.txn, ctx.db, argv[1]))
    if coll is None:
        return 0
    return sum(1 for _ in _lex_entries(ctx.txn, coll, r, False))


# -- ZRANGE and its family ---------------------------------------------------------------

RANK, SCORE, LEX = "rank", "score", "lex"


def _emit(ctx: Context, items: Iterable[tuple[bytes, float]], withscores: bool) -> Any:
    """An array of members (and scores: flat in RESP2, pairs in RESP3), charged to the
    output limit as it grows."""
    out = ctx.array()
    pairs = withscores and ctx.client.resp == 3
    for m, s in items:
        if pairs:
            ok = out.add([m, _score(ctx, s)])
        else:
            ok = out.add(m) and (not withscores or out.add(_score(ctx, s)))
        if not ok:
            return ctx.overflow()
    return out.done()


def _limited(items: Iterator[tuple[bytes, float]], offset: int, count: int
             ) -> Iterator[tuple[bytes, float]]:
    if offset < 0:
        return
    for i, item in enumerate(items):
        if i < offset:
            continue
        if 0 <= count <= i - offset:
            return
        yield item


def _zrange(ctx: Context, argv: list[bytes], first: int, kind: str | None,
            reverse: bool | None, dst: bytes | None = None) -> Any:
    """Redis' zrangeGenericCommand: ``argv[first]`` is the source key, then min and max,
    then the options; ``kind`` / ``reverse`` None: chosen by BYSCORE / BYLEX / REV."""
    withscores = False
    offset, count, limit = 0, -1, False
    j = first + 3
    while j < len(argv):
        opt = argv[j].upper()
        left = len(argv) - j - 1
        if dst is None and opt == b"WITHSCORES":
            withscores = True
        elif opt == b"LIMIT" and left >= 2:
            offset = parse_int(argv[j + 1])
            count = parse_int(argv[j + 2])
            limit = True
            j += 2
        elif reverse is None and opt == b"REV":
            reverse = True
        elif kind is None and opt == b"BYLEX":
            kind = LEX
        elif kind is None and opt == b"BYSCORE":
            kind = SCORE
        else:
            raise CommandError(SYNTAX)
        j += 1
    reverse = bool(reverse)
    kind = kind or RANK
    if limit and kind == RANK:
        raise CommandError("syntax error, LIMIT is only supported in combination with "
                           "either BYSCORE or BYLEX")
    if withscores and kind == LEX:
        raise CommandError("syntax error, WITHSCORES not supported in combination with "
                           "BYLEX")
    lo_arg, hi_arg = argv[first + 1], argv[first + 2]
    if reverse and kind != RANK:
        lo_arg, hi_arg = hi_arg, lo_arg
    txn = ctx.txn
    items: Iterator[tuple[bytes, float]]
    if kind == RANK:
        start, stop = parse_int(lo_arg), parse_int(hi_arg)
        coll = _coll(_zset(txn, ctx.db, argv[first]))
        items = iter(()) if coll is None else _rank_entries(txn, coll, start, stop, reverse)
    elif kind == SCORE:
        sr = ScoreRange(lo_arg, hi_arg)
        coll = _coll(_zset(txn, ctx.db, argv[first]))
        items = iter(()) if coll is None else _score_entries(txn, coll, sr, reverse)
    else:
        lr = LexRange(lo_arg, hi_arg)
        coll = _coll(_zset(txn, ctx.db, argv[first]))
        items = iter(()) if coll is None else _lex_entries(txn, coll, lr, reverse)
    if limit:
        items = _limited(items, offset, count)
    if dst is None:
        return _emit(ctx, items, withscores)
    result = list(items)  # read whole before the destination is replaced
    return _store(ctx, dst, result, b"zrangestore")


def _store(ctx: Context, dst: bytes, result: list[tuple[bytes, float]], event: bytes) -> int:
    txn = ctx.txn
    existed = txn.delete(ctx.db, dst)  # any type: overwritten, as in Redis
    if result:
        _write(txn, ctx.db, dst, None, {m: (s, None) for m, s in result}, {}, event)
    elif existed:
        txn.notify(ev.GENERIC, b"del", dst, ctx.db)
    return len(result)


@command("zrange", -4, "readonly", "read sortedset slow", (1, 1, 1))
def zrange(ctx: Context, argv: list[bytes]) -> Any:
    """ZRANGE key start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]"""
    return _zrange(ctx, argv, 1, None, None)


@command("zrangestore", -5, "write denyoom", "write sortedset slow", (1, 2, 1))
def zrangestore(ctx: Context, argv: list[bytes]) -> Any:
    """ZRANGESTORE dst src min max [BYSCORE|BYLEX] [REV] [LIMIT offset count] -> stored"""
    return _zrange(ctx, argv, 2, None, None, dst=argv[1])


@command("zrevrange", -4, "readonly", "read sortedset slow", (1, 1, 1))
def zrevrange(ctx: Context, argv: list[bytes]) -> Any:
    """ZREVRANGE key start stop [WITHSCORES]"""
    return _zrange(ctx, argv, 1, RANK, True)


@command("zrangebyscore", -4, "readonly", "read sortedset slow", (1, 1, 1))
def zrangebyscore(ctx: Context, argv: list[bytes]) -> Any:
    """ZRANGEBYSCORE key min max [WITHSCORES] [LIMIT offset count]"""
    return _zrange(ctx, argv, 1, SCORE, False)


@command("zrevrangebyscore", -4, "readonly", "read sortedset slow", (1, 1, 1))
def zrevrangebyscore(ctx: Context, argv: list[bytes]) -> Any:
    """ZREVRANGEBYSCORE key max min [WITHSCORES] [LIMIT offset count]"""
    return _zrange(ctx, argv, 1, SCORE, True)


@command("zrangebylex", -4, "readonly", "read sortedset slow", (1, 1, 1))
def zrangebylex(ctx: Context, argv: list[bytes]) -> Any:
    """ZRANGEBYLEX key min max [LIMIT offset count]"""
    return _zrange(ctx, argv, 1, LEX, False)


@command("zrevrangebylex", -4, "readonly", "read sortedset slow", (1, 1, 1))
def zrevrangebylex(ctx: Context, argv: list[bytes]) -> Any:
    """ZREVRANGEBYLEX key max min [LIMIT offset count]"""
    return _zrange(ctx, argv, 1, LEX, True)


def _remrange(ctx: Context, argv: list[bytes], kind: str) -> Any:
    txn = ctx.txn
    if kind == RANK:
        start, stop = parse_int(argv[2]), parse_int(argv[3])
    elif kind == SCORE:
        sr = ScoreRange(argv[2], argv[3])
    else:
        lr = LexRange(argv[2], argv[3])
    e = _zset(txn, ctx.db, argv[1])
    coll = _coll(e)
    if e is None or coll is None:
        return 0
    if kind == RANK:
        items = list(_rank_entries(txn, coll, start, stop, False))
    elif kind == SCORE:
        items = list(_score_entries(txn, coll, sr, False))
    else:
        items = list(_lex_entries(txn, coll, lr, False))
    return _remove(txn, ctx.db, argv[1], e, items, b"zremrangeby" + kind.encode())


@command("zremrangebyrank", 4, "write", "write sortedset slow", (1, 1, 1))
def zremrangebyrank(ctx: Context, argv: list[bytes]) -> Any:
    """ZREMRANGEBYRANK key start stop -> members removed"""
    return _remrange(ctx, argv, RANK)


@command("zremrangebyscore", 4, "write", "write sortedset slow", (1, 1, 1))
def zremrangebyscore(ctx: Context, argv: list[bytes]) -> Any:
    """ZREMRANGEBYSCORE key min max -> members removed"""
    return _remrange(ctx, argv, SCORE)


@command("zremrangebylex", 4, "write", "write sortedset slow", (1, 1, 1))
def zremrangebylex(ctx: Context, argv: list[bytes]) -> Any:
    """ZREMRANGEBYLEX key min max -> members removed"""
    return _remrange(ctx, argv, LEX)


# -- pops ------------------------------------------------------------------------------------

def _pop(txn: KeyspaceTxn, db: int, key: bytes, e: Entry, count: int, top: bool
         ) -> list[tuple[bytes, float]]:
    """Remove and return up to ``count`` members from the low (ZPOPMIN) or high end."""
    assert e.coll is not None
    got: list[tuple[bytes, float]] = []
    for item in _entries(txn, e.coll, reverse=top):
        if len(got) >= count:
            break
        got.append(item)
    _remove(txn, db, key, e, got, b"zpopmax" if top else b"zpopmin")
    return got


def _positive(arg: bytes) -> int:
    n = parse_int(arg, "value is out of range, must be positive")
    if n < 0:
        raise CommandError("value is out of range, must be positive")
    return n


def _zpop(ctx: Context, argv: list[bytes], top: bool) -> Any:
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    count = _positive(argv[2]) if len(argv) == 3 else None
    e = _zset(ctx.txn, ctx.db, argv[1])
    got = [] if e is None or count == 0 else _pop(ctx.txn, ctx.db, argv[1], e,
                                                  1 if count is None else count, top)
    if count is None or ctx.client.resp == 2:
        out: list[Any] = []
        for m, s in got:
            out += (m, _score(ctx, s))
        return out
    return [[m, _score(ctx, s)] for m, s in got]


@command("zpopmin", -2, "write fast", "write sortedset fast", (1, 1, 1))
def zpopmin(ctx: Context, argv: list[bytes]) -> Any:
    """ZPOPMIN key [count] -> the lowest scored members and their scores, removed"""
    return _zpop(ctx, argv, False)


@command("zpopmax", -2, "write fast", "write sortedset fast", (1, 1, 1))
def zpopmax(ctx: Context, argv: list[bytes]) -> Any:
    """ZPOPMAX key [count] -> the highest scored members and their scores, removed"""
    return _zpop(ctx, argv, True)


def _mpop_one(ctx: Context, txn: KeyspaceTxn, key: bytes, top: bool, count: int) -> Any:
    e = _zset(txn, ctx.db, key)
    if e is None:
        return None
    got = _pop(txn, ctx.db, key, e, count, top)
    return [key, [[m, _score(ctx, s)] for m, s in got]]


@command("zmpop", -4, "write", "write sortedset slow", key_finder=numkeys_finder(1))
def zmpop(ctx: Context, argv: list[bytes]) -> Any:
    """ZMPOP numkeys key [key ...] MIN|MAX [COUNT count] -> [key, [[member, score] ...]]
    of the first non-empty sorted set, or nil"""
    keys, top, count = mpop_args(argv, 1, (b"MAX", b"MIN"))
    for key in keys:
        got = _mpop_one(ctx, ctx.txn, key, top, count)
        if got is not None:
            return got
    return NULL_ARRAY


def _bzpop(ctx: Context, argv: list[bytes], top: bool) -> Any:
    keys = argv[1:-1]
    timeout = block_timeout(argv[-1])
    db = ctx.db
    for key in keys:  # every key's type first, as Redis
        _zset(ctx.txn, db, key)
    for key in keys:
        e = _zset(ctx.txn, db, key)
        if e is not None:
            m, s = _pop(ctx.txn, db, key, e, 1, top)[0]
            return [key, m, _score(ctx, s)]

    def attempt(txn: KeyspaceTxn, key: bytes) -> Any:
        try:
            e = _zset(txn, db, key)
        except CommandError:
            return NOT_READY  # another type now: the client stays blocked (Redis 7.0)
        if e is None:
            return NOT_READY
        m, s = _pop(txn, db, key, e, 1, top)[0]
        return [key, m, _score(ctx, s)]

    return block(ctx, keys, timeout, attempt, NULL_ARRAY)


@command("bzpopmin", -3, "write", "write sortedset fast blocking", (1, -2, 1))
def bzpopmin(ctx: Context, argv: list[bytes]) -> Any:
    """BZPOPMIN key [key ...] timeout -> [key, member, score], or nil after the timeout"""
    return _bzpop(ctx, argv, False)


@command("bzpopmax", -3, "write", "write sortedset fast blocking", (1, -2, 1))
def bzpopmax(ctx: Context, argv: list[bytes]) -> Any:
    """BZPOPMAX key [key ...] timeout -> [key, member, score], or nil after the timeout"""
    return _bzpop(ctx, argv, True)


@command("bzmpop", -5, "write", "write sortedset slow blocking", key_finder=numkeys_finder(2))
def bzmpop(ctx: Context, argv: list[bytes]) -> Any:
    """BZMPOP timeout numkeys key [key ...] MIN|MAX [COUNT count] -> as ZMPOP, or nil after
    the timeout"""
    timeout = block_timeout(argv[1])
    keys, top, count = mpop_args(argv, 2, (b"MAX", b"MIN"))
    for key in keys:
        got = _mpop_one(ctx, ctx.txn, key, top, count)
        if got is not None:
            return got

    def attempt(txn: KeyspaceTxn, key: bytes) -> Any:
        try:
            got = _mpop_one(ctx, txn, key, top, count)
        except CommandError:
            return NOT_READY
        return NOT_READY if got is None else got

    return block(ctx, keys, timeout, attempt, NULL_ARRAY)


# -- ZUNION, ZINTER, ZDIFF and their STORE and CARD variants ------------------------------

def _source(ctx: Context, key: bytes) -> CollRef | None:
    """A sorted set or a set (every member scored 1, as Redis reads one), or None."""
    e = ctx.txn.lookup(ctx.db, key)
    if e is None:
        return None
    if e.coll is None or e.coll.kind not in (TAG_ZSET, TAG_SET):
        raise wrong_type()
    return e.coll


def _members_of(ctx: Context, coll: CollRef) -> Iterator[tuple[bytes, float]]:
    if coll.kind == TAG_SET:
        return ((m, 1.0) for m, _ in ctx.txn.members(coll))
    return ((m, unpack_score(v)) for m, v in ctx.txn.members(coll))


def _score_in(ctx: Context, coll: CollRef, member: bytes) -> float | None:
    if coll.kind == TAG_SET:
        return 1.0 if ctx.txn.member(coll, member) is not None else None
    return _score_of(ctx.txn, coll, member)


def _aggregate(how: bytes, a: float, b: float) -> float:
    if how == b"SUM":
        s = a + b
        return 0.0 if math.isnan(s) else s
    return min(a, b) if how == b"MIN" else max(a, b)


def _weighted(score: float, weight: float) -> float:
    s = score * weight
    return 0.0 if math.isnan(s) else s


def _setop(ctx: Context, argv: list[bytes], first: int, op: str, name: str,
           store: bool) -> tuple[list[tuple[bytes, float]], bool]:
    """The result of ZUNION / ZINTER / ZDIFF with its arguments from ``argv[first]``
    (numkeys) on, sorted by (score, member), and whether WITHSCORES was given."""
    n = parse_int(argv[first])
    if n < 1:
        raise CommandError(f"at least 1 input key is needed for '{name}' command")
    keys = argv[first + 1:first + 1 + n]
    if len(keys) < n:
        raise CommandError(SYNTAX)
    weights = [1.0] * n
    how = b"SUM"
    withscores = False
    j = first + 1 + n
    while j < len(argv):
        opt = argv[j].upper()
        left = len(argv) - j - 1
        if op != "diff" and opt == b"WEIGHTS" and left >= n:
            for k in range(n):
                try:
                    weights[k] = parse_float(argv[j + 1 + k])
                except CommandError:
                    raise CommandError("weight value is not a float") from None
            j += n
        elif op != "diff" and opt == b"AGGREGATE" and left >= 1:
            how = argv[j + 1].upper()
            if how not in (b"SUM", b"MIN", b"MAX"):
                raise CommandError(SYNTAX)
            j += 1
        elif not store and opt == b"WITHSCORES":
            withscores = True
        else:
            raise CommandError(SYNTAX)
        j += 1
    sources = [_source(ctx, k) for k in keys]
    result: dict[bytes, float] = {}
    if op == "union":
        for coll, w in zip(sources, weights, strict=True):
            if coll is None:
                continue
            for m, s in _members_of(ctx, coll):
                s = _weighted(s, w)
                old = result.get(m)
                result[m] = s if old is None else _aggregate(how, old, s)
    elif op == "inter":
        if all(c is not None for c in sources):
            order = sorted(range(n), key=lambda k: sources[k].size)  # type: ignore[union-attr]
            smallest = order[0]
            base = sources[smallest]
            assert base is not None
            for m, s in _members_of(ctx, base):
                acc = _weighted(s, weights[smallest])
                for k in order[1:]:
                    other = sources[k]
                    assert other is not None
                    got = _score_in(ctx, other, m)
                    if got is None:
                        break
                    acc = _aggregate(how, acc, _weighted(got, weights[k]))
                else:
                    result[m] = acc
    else:
        base = sources[0]
        if base is not None:
            rest = [c for c in sources[1:] if c is not None]
            for m, s in _members_of(ctx, base):
                if all(_score_in(ctx, c, m) is None for c in rest):
                    result[m] = s
    ordered = sorted(result.items(), key=lambda item: (item[1], item[0]))
    return [(m, s + 0.0) for m, s in ordered], withscores


def _setop_keys(first: int) -> Callable[[list[bytes]], list[bytes]]:
    def keys(argv: list[bytes]) -> list[bytes]:
        try:
            n = int(argv[first])
        except (ValueError, IndexError):
            return []
        found = argv[first + 1:first + 1 + n] if n > 0 else []
        return ([argv[1]] if first == 2 else []) + found
    return keys


def _setop_reply(ctx: Context, argv: list[bytes], op: str, name: str) -> Any:
    result, withscores = _setop(ctx, argv, 1, op, name, False)
    return _emit(ctx, result, withscores)


def _setop_store(ctx: Context, argv: list[bytes], op: str, name: str) -> Any:
    result, _ = _setop(ctx, argv, 2, op, name, True)
    return _store(ctx, argv[1], result, name.encode())


@command("zunion", -3, "readonly", "read sortedset slow", key_finder=_setop_keys(1))
def zunion(ctx: Context, argv: list[bytes]) -> Any:
    """ZUNION numkeys key [key ...] [WEIGHTS w ...] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]"""
    return _setop_reply(ctx, argv, "union", "zunion")


@command("zinter", -3, "readonly", "read sortedset slow", key_finder=_setop_keys(1))
def zinter(ctx: Context, argv: list[bytes]) -> Any:
    """ZINTER numkeys key [key ...] [WEIGHTS w ...] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]"""
    return _setop_reply(ctx, argv, "inter", "zinter")


@command("zdiff", -3, "readonly", "read sortedset slow", key_finder=_setop_keys(1))
def zdiff(ctx: Context, argv: list[bytes]) -> Any:
    """ZDIFF numkeys key [key ...] [WITHSCORES]"""
    return _setop_reply(ctx, argv, "diff", "zdiff")


@command("zunionstore", -4, "write denyoom", "write sortedset slow",
         key_finder=_setop_keys(2))
def zunionstore(ctx: Context, argv: list[bytes]) -> Any:
    """ZUNIONSTORE destination numkeys key [key ...] [WEIGHTS ...] [AGGREGATE ...]"""
    return _setop_store(ctx, argv, "union", "zunionstore")


@command("zinterstore", -4, "write denyoom", "write sortedset slow",
         key_finder=_setop_keys(2))
def zinterstore(ctx: Context, argv: list[bytes]) -> Any:
    """ZINTERSTORE destination numkeys key [key ...] [WEIGHTS ...] [AGGREGATE ...]"""
    return _setop_store(ctx, argv, "inter", "zinterstore")


@command("zdiffstore", -4, "write denyoom", "write sortedset slow",
         key_finder=_setop_keys(2))
def zdiffstore(ctx: Context, argv: list[bytes]) -> Any:
    """ZDIFFSTORE destination numkeys key [key ...]"""
    return _setop_store(ctx, argv, "diff", "zdiffstore")


@command("zintercard", -3, "readonly", "read sortedset slow", key_finder=numkeys_finder(1))
def zintercard(ctx: Context, argv: list[bytes]) -> Any:
    """ZINTERCARD numkeys key [key ...] [LIMIT limit] -> the intersection's size (at most
    limit; 0: no limit)"""
    n = parse_int(argv[1])
    if n < 1:
        raise CommandError("at least 1 input key is needed for 'zintercard' command")
    if n > len(argv) - 2:
        raise CommandError(SYNTAX)
    limit = 0
    j = 2 + n
    while j < len(argv):
        if argv[j].upper() == b"LIMIT" and j + 1 < len(argv):
            limit = parse_int(argv[j + 1], "LIMIT can't be negative")
            if limit < 0:
                raise CommandError("LIMIT can't be negative")
            j += 2
        else:
            raise CommandError(SYNTAX)
    sources = [_source(ctx, k) for k in argv[2:2 + n]]
    if any(c is None for c in sources):
        return 0
    ordered = sorted((c for c in sources if c is not None), key=lambda c: c.size)
    found = 0
    for m, _ in _members_of(ctx, ordered[0]):
        if all(_score_in(ctx, c, m) is not None for c in ordered[1:]):
            found += 1
            if limit and found >= limit:
                break
    return found


# -- ZRANDMEMBER, ZSCAN ----------------------------------------------------------------

@command("zrandmember", -2, "readonly", "read sortedset slow", (1, 1, 1))
def zrandmember(ctx: Context, argv: list[bytes]) -> Any:
    """ZRANDMEMBER key [count [WITHSCORES]]"""
    if len(argv) > 4 or (len(argv) == 4 and argv[3].upper() != b"WITHSCORES"):
        raise CommandError(SYNTAX)
    txn = ctx.txn
    e = _zset(txn, ctx.db, argv[1])
    coll = _coll(e)
    if len(argv) == 2:
        if coll is None:
            return None
        return next(txn.random_members(coll, 1, distinct=True), (None,))[0]
    withscores = len(argv) == 4
    n = parse_int(argv[2])
    if n < -(2**63 - 1) or (withscores and n < -(2**62)):
        raise CommandError("value is out of range")
    if coll is None or n == 0:
        return ctx.array().done()
    want = abs(n)
    picks: Iterator[tuple[bytes, bytes]]
    if n > 0 and want >= coll.size:
        picks = txn.members(coll)
    else:
        picks = txn.random_members(coll, want, distinct=n > 0)
    return _emit(ctx, ((m, unpack_score(v)) for m, v in picks), withscores)


@command("zscan", -3, "readonly", "read sortedset slow", (1, 1, 1))
def zscan(ctx: Context, argv: list[bytes]) -> Any:
    """ZSCAN key cursor [MATCH pattern] [COUNT count] -> [next cursor, [member, score ...]]"""
    return member_scan(ctx, argv, _zset(ctx.txn, ctx.db, argv[1]), True,
                       value_of=lambda raw: fmt_score(unpack_score(raw)))


__all__ = ["FAMILY", "fmt_score"]
