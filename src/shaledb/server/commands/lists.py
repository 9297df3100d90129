"""List commands (Redis' t_list.c): LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LLEN LRANGE LINDEX
LSET LINSERT LREM LTRIM LPOS LMOVE RPOPLPUSH LMPOP, and the blocking BLPOP BRPOP BLMOVE
BRPOPLPUSH BLMPOP.

A list is a header under its key (collection id, size, index of its first element,
expiry) and one record per element, keyed by the element's 64-bit index (docs/format.md,
"Lists"): a push or pop at either end is a point write plus the header, LINDEX and LSET a
point read or write, LRANGE a range walk charged to the output limit as it goes, so a list
may be larger than memory. LINSERT and LREM move the elements on one side of the change
(LINSERT the shorter side), LTRIM deletes what it cuts or, when it keeps less than it cuts,
copies what it keeps to a new collection (the old one is reclaimed in the background): at
most LIST_REWRITE_MAX elements per command, since a command's writes are buffered in memory
until the commit. Blocking commands that find nothing register with the server's
:class:`~shaledb.server.exec.blocking.BlockingQueue` and are woken by a committed push;
inside MULTI they answer at once, as for a timeout. Replies and errors are Redis 7's.
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import CommandError, wrong_arity
from ..exec.blocking import NOT_READY
from ..keyspace import notify as ev
from ..keyspace.keyspace import Entry, KeyspaceTxn
from ..keyspace.values import TAG_LIST, CollRef
from ..net.protocol import CHUNK, NULL_ARRAY, OK
from . import INT64_MAX, INT64_MIN, SYNTAX, CommandFamily, Context, parse_int
from .popping import block, block_timeout, mpop_args, numkeys_finder

FAMILY = CommandFamily()
command = FAMILY.command

#: Most elements one LINSERT, LREM or LTRIM may rewrite (move or copy): its writes are
#: buffered in memory until the commit. Past it the command fails and changes nothing.
LIST_REWRITE_MAX: Final = 1_000_000
#: Longest timeout a blocking command takes, in seconds (Redis refuses one whose deadline
#: would overflow its millisecond clock; asyncio's timers need a finite float).


def _list(txn: KeyspaceTxn, db: int, key: bytes) -> Entry | None:
    return txn.get_coll(db, key, TAG_LIST)


def _coll(e: Entry | None) -> CollRef:
    assert e is not None and e.coll is not None
    return e.coll


def _push(txn: KeyspaceTxn, db: int, key: bytes, e: Entry | None, values: list[bytes],
          left: bool) -> int:
    """Push ``values`` one by one at the head (``left``) or the tail of ``key`` (created
    when ``e`` is None); the new length."""
    coll = txn.new_list() if e is None else _coll(e)
    head, size = coll.head, coll.size
    if left:
        puts = [(head - 1 - i, v) for i, v in enumerate(values)]
        head -= len(values)
    else:
        puts = [(head + size + i, v) for i, v in enumerate(values)]
    coll = coll._replace(head=head, size=size + len(values))
    txn.list_write(db, key, e, coll, puts)
    txn.notify(ev.LIST, b"lpush" if left else b"rpush", key, db)
    return coll.size


def _pop(txn: KeyspaceTxn, db: int, key: bytes, e: Entry, count: int,
         left: bool, announce: bool = True) -> list[bytes]:
    """Pop up to ``count`` elements from the head (``left``) or the tail of ``key``; the
    key goes with its last element."""
    coll = _coll(e)
    n = min(count, coll.size)
    if n == 1:
        pos = 0 if left else coll.size - 1
        v = txn.list_element(coll, pos)
        got = [] if v is None else [(pos, v)]
    else:
        got = []
        for item in txn.list_walk(coll, 0 if left else coll.size - n, reverse=not left):
            got.append(item)
            if len(got) >= n:
                break
    if len(got) != n:
        raise CommandError(f"list {key[:64]!r} has {len(got)} of the {n} elements its "
                           "header counts at that end: the database is damaged",
                           prefix="ERR")
    head = coll.head + n if left else coll.head
    txn.list_write(db, key, e, coll._replace(head=head, size=coll.size - n),
                   drops=[coll.head + p for p, _ in got])
    if announce:
        _changed(txn, db, key, b"lpop" if left else b"rpop", coll.size - n)
    return [v for _, v in got]


def _changed(txn: KeyspaceTxn, db: int, key: bytes, event: bytes, size: int) -> None:
    """The events of a list change: ``event``, and ``del`` when the list is gone (as
    Redis)."""
    txn.notify(ev.LIST, event, key, db)
    if size <= 0:
        txn.notify(ev.GENERIC, b"del", key, db)


def _where(arg: bytes) -> bool:
    """LEFT -> True, RIGHT -> False."""
    w = arg.upper()
    if w == b"LEFT":
        return True
    if w == b"RIGHT":
        return False
    raise CommandError(SYNTAX)


# -- pushes -------------------------------------------------------------------------------

def _push_cmd(ctx: Context, argv: list[bytes], left: bool, create: bool) -> int:
    e = _list(ctx.txn, ctx.db, argv[1])
    if e is None and not create:
        return 0
    return _push(ctx.txn, ctx.db, argv[1], e, argv[2:], left)


_W = "write denyoom fast"


@command("lpush", -3, _W, "write list fast", (1, 1, 1))
def lpush(ctx: Context, argv: list[bytes]) -> Any:
    """LPUSH key element [element ...] -> the new length"""
    return _push_cmd(ctx, argv, True, True)


@command("rpush", -3, _W, "write list fast", (1, 1, 1))
def rpush(ctx: Context, argv: list[bytes]) -> Any:
    """RPUSH key element [element ...] -> the new length"""
    return _push_cmd(ctx, argv, False, True)


@command("lpushx", -3, _W, "write list fast", (1, 1, 1))
def lpushx(ctx: Context, argv: list[bytes]) -> Any:
    """LPUSHX key element [element ...] -> the new length (0: no list, nothing done)"""
    return _push_cmd(ctx, argv, True, False)


@command("rpushx", -3, _W, "write list fast", (1, 1, 1))
def rpushx(ctx: Context, argv: list[bytes]) -> Any:
    """RPUSHX key element [element ...] -> the new length (0: no list, nothing done)"""
    return _push_cmd(ctx, argv, False, False)


# -- pops ---------------------------------------------------------------------------------

def _pop_cmd(ctx: Context, argv: list[bytes], left: bool) -> Any:
    if len(argv) > 3:
        raise wrong_arity(argv[0].lower().decode())
    count = None
    if len(argv) == 3:
        count = parse_int(argv[2], "value is out of range, must be positive")
        if count < 0:
            raise CommandError("value is out of range, must be positive")
    e = _list(ctx.txn, ctx.db, argv[1])
    if e is None:
        return None if count is None else NULL_ARRAY
    if count is None:
        return _pop(ctx.txn, ctx.db, argv[1], e, 1, left)[0]
    if count == 0:
        return []
    return _pop(ctx.txn, ctx.db, argv[1], e, count, left)


@command("lpop", -2, "write fast", "write list fast", (1, 1, 1))
def lpop(ctx: Context, argv: list[bytes]) -> Any:
    """LPOP key [count] -> the first element, or up to count of them"""
    return _pop_cmd(ctx, argv, True)


@command("rpop", -2, "write fast", "write list fast", (1, 1, 1))
def rpop(ctx: Context, argv: list[bytes]) -> Any:
    """RPOP key [count] -> the last element, or up to count of them"""
    return _pop_cmd(ctx, argv, False)


# -- reads --------------------------------------------------------------------------------

@command("llen", 2, "readonly fast", "read list fast", (1, 1, 1))
def llen(ctx: Context, argv: list[bytes]) -> Any:
    """LLEN key -> the length (from the header)"""
    e = _list(ctx.txn, ctx.db, argv[1])
    return 0 if e is None else _coll(e).size


def _range(start: int, stop: int, size: int) -> tuple[int, int] | None:
    """Redis' normalisation of a start/stop pair: None when it selects nothing."""
    if start < 0:
        start += size
    if stop < 0:
        stop += size
    start = max(start, 0)
    if start > stop or start >= size:
        return None
    return start, min(stop, size - 1)


@command("lrange", 4, "readonly", "read list slow", (1, 1, 1))
def lrange(ctx: Context, argv: list[bytes]) -> Any:
    """LRANGE key start stop -> the elements, streamed under the output limit"""
    start, stop = parse_int(argv[2]), parse_int(argv[3])
    e = _list(ctx.txn, ctx.db, argv[1])
    out = ctx.array()
    if e is None:
        return out.done()
    coll = _coll(e)
    span = _range(start, stop, coll.size)
    if span is None:
        return out.done()
    # Encoded in batches of up to CHUNK bytes (one C join each), charged as they go.
    batch: list[bytes] = []
    pending = 0
    for value in ctx.txn.list_values(coll, span[0], span[1]):
        batch.append(value)
        pending += len(value)
        if pending >= CHUNK or len(batch) >= 1024:
            if not out.extend(batch):
                return ctx.overflow()
            batch = []
            pending = 0
    if not out.extend(batch):
        return ctx.overflow()
    return out.done()


@command("lindex", 3, "readonly", "read list slow", (1, 1, 1))
def lindex(ctx: Context, argv: list[bytes]) -> Any:
    """LINDEX key index -> the element (one point read), or nil"""
    index = parse_int(argv[2])
    e = _list(ctx.txn, ctx.db, argv[1])
    if e is None:
        return None
    coll = _coll(e)
    if index < 0:
        index += coll.size
    if not 0 <= index < coll.size:
        return None
    return ctx.txn.list_element(coll, index)


@command("lpos", -3, "readonly", "read list slow", (1, 1, 1))
def lpos(ctx: Context, argv: list[bytes]) -> Any:
    """LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len] -> a position, or
    the positions of up to num-matches (0: all) matches"""
    rank, count, maxlen = 1, None, 0
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            raise CommandError(SYNTAX)
        if opt == b"RANK":
            rank = parse_int(argv[i + 1])
            if rank == 0:
                raise CommandError("RANK can't be zero: use 1 to start from the first match, "
                                   "2 from the second ... or use negative to start from the "
                                   "end of the list")
            if rank == INT64_MIN:
                raise CommandError(f"value is out of range, value must between "
                                   f"{-INT64_MAX} and {INT64_MAX}")
        elif opt == b"COUNT":
            count = parse_int(argv[i + 1])
            if count < 0:
                raise CommandError("COUNT can't be negative")
        elif opt == b"MAXLEN":
            maxlen = parse_int(argv[i + 1])
            if maxlen < 0:
                raise CommandError("MAXLEN can't be negative")
        else:
            raise CommandError(SYNTAX)
        i += 2
    e = _list(ctx.txn, ctx.db, argv[1])
    out = ctx.array()
    if e is None:
        return None if count is None else out.done()
    coll = _coll(e)
    want = argv[2]
    skip = abs(rank) - 1
    found = 0
    reverse = rank < 0
    for seen, (pos, value) in enumerate(ctx.txn.list_walk(coll, reverse=reverse)):
        if maxlen and seen >= maxlen:
            break
        if value != want:
            continue
        if skip:
            skip -= 1
            continue
        if count is None:
            return pos
        found += 1
        if not out.add(pos):
            return ctx.overflow()
        if count and found >= count:
            break
    return None if count is None else out.done()


# -- changes in the middle ------------------------------------------------------------------

@command("lset", 4, "write denyoom", "write list slow", (1, 1, 1))
def lset(ctx: Context, argv: list[bytes]) -> Any:
    """LSET key index element -> OK (one point write and the header)"""
    index = parse_int(argv[2])
    e = _list(ctx.txn, ctx.db, argv[1])
    if e is None:
        raise CommandError("no such key")
    coll = _coll(e)
    if index < 0:
        index += coll.size
    if not 0 <= index < coll.size:
        raise CommandError("index out of range")
    ctx.txn.list_write(ctx.db, argv[1], e, coll, [(coll.head + index, argv[3])])
    ctx.txn.notify(ev.LIST, b"lset", argv[1], ctx.db)
    return OK


def _rewrite_limit(n: int, what: str) -> None:
    if n > LIST_REWRITE_MAX:
        raise CommandError(f"{what} would rewrite {n} list elements, more than the "
                           f"{LIST_REWRITE_MAX} one command may (they are buffered in memory "
                           "until the commit); nothing was changed: split the list, or "
                           "rebuild it with LRANGE and RPUSH in parts")


@command("linsert", 5, "write denyoom", "write list slow", (1, 1, 1))
def linsert(ctx: Context, argv: list[bytes]) -> Any:
    """LINSERT key BEFORE|AFTER pivot element -> the new length, -1 without the pivot, 0
    without the key. The elements on the shorter side of the insertion move by one."""
    where = argv[2].upper()
    if where not in (b"BEFORE", b"AFTER"):
        raise CommandError(SYNTAX)
    e = _list(ctx.txn, ctx.db, argv[1])
    if e is None:
        return 0
    coll = _coll(e)
    txn = ctx.txn
    at = None
    for pos, value in txn.list_walk(coll):
        if value == argv[3]:
            at = pos if where == b"BEFORE" else pos + 1
            break
    if at is None:
        return -1
    head, size = coll.head, coll.size
    if at <= size - at:  # move the head side one to the left
        _rewrite_limit(at, "LINSERT")
        moved = []
        for p, v in txn.list_walk(coll):
            if p >= at:
                break
            moved.append((head - 1 + p, v))
        puts = [*moved, (head - 1 + at, argv[4])]
        new = coll._replace(head=head - 1, size=size + 1)
    else:  # move the tail side one to the right
        _rewrite_limit(size - at, "LINSERT")
        moved = [(head + p + 1, v) for p, v in txn.list_walk(coll, at)]
        puts = [*moved, (head + at, argv[4])]
        new = coll._replace(size=size + 1)
    txn.list_write(ctx.db, argv[1], e, new, puts)
    txn.notify(ev.LIST, b"linsert", argv[1], ctx.db)
    return new.size


@command("lrem", 4, "write", "write list slow", (1, 1, 1))
def lrem(ctx: Context, argv: list[bytes]) -> Any:
    """LREM key count element -> how many were removed: the first count (from the tail
    when negative, all when 0). The kept elements on the shorter side of the removed ones
    move to close the gaps."""
    count = parse_int(argv[2])
    e = _list(ctx.txn, ctx.db, argv[1])
    if e is None:
        return 0
    coll = _coll(e)
    txn = ctx.txn
    want, limit = argv[3], abs(count)
    # First the positions to remove (a walk from the end LREM starts at, up to the last
    # match it takes), then the cheaper side moves to close the gaps.
    gone: list[int] = []
    for pos, value in txn.list_walk(coll, reverse=count < 0):
        if value == want:
            gone.append(pos)
            _rewrite_limit(len(gone), "LREM")
            if limit and len(gone) >= limit:
                break
    if not gone:
        return 0
    n, lo, hi = len(gone), min(gone), max(gone)
    dropped = set(gone)
    head, size = coll.head, coll.size
    if size - lo - n <= hi + 1 - n:  # the kept ones above the lowest move down
        _rewrite_limit(size - lo - n, "LREM")
        kept = [v for p, v in txn.list_walk(coll, lo) if p not in dropped]
        puts = [(head + lo + j, v) for j, v in enumerate(kept)]
        new = coll._replace(size=size - n)
        drops = [head + p for p in range(size - n, size)]
    else:  # the kept ones below the highest move up
        _rewrite_limit(hi + 1 - n, "LREM")
        kept = []
        for p, v in txn.list_walk(coll):
            if p > hi:
                break
            if p not in dropped:
                kept.append(v)
        puts = [(head + n + j, v) for j, v in enumerate(kept)]
        new = coll._replace(head=head + n, size=size - n)
        drops = [head + p for p in range(n)]
    txn.list_write(ctx.db, argv[1], e, new, puts, drops)
    _changed(txn, ctx.db, argv[1], b"lrem", new.size)
    return n


@command("ltrim", 4, "write", "write list slow", (1, 1, 1))
def ltrim(ctx: Context, argv: list[bytes]) -> Any:
    """LTRIM key start stop -> OK: deletes what it cuts, or, when it keeps fewer elements
    than it cuts, copies them to a new collection (the old one is reclaimed in the
    background); nothing kept deletes the key (O(1))."""
    start, stop = parse_int(argv[2]), parse_int(argv[3])
    e = _list(ctx.txn, ctx.db, argv[1])
    if e is None:
        return OK
    coll = _coll(e)
    txn = ctx.txn
    span = _range(start, stop, coll.size)
    if span is None:
        txn.list_write(ctx.db, argv[1], e, coll._replace(size=0))
        _changed(txn, ctx.db, argv[1], b"ltrim", 0)
        return OK
    lo, hi = span
    keep = hi - lo + 1
    cut = coll.size - keep
    if not cut:
        return OK
    head = coll.head
    if cut <= keep:
        _rewrite_limit(cut, "LTRIM")
        drops = [head + p for p in range(lo)] + [head + p for p in range(hi + 1, coll.size)]
        txn.list_write(ctx.db, argv[1], e, coll._replace(head=head + lo, size=keep),
                       drops=drops)
        _changed(txn, ctx.db, argv[1], b"ltrim", keep)
        return OK
    _rewrite_limit(keep, "LTRIM")
    new = txn.new_list()
    puts = []
    for pos, value in txn.list_walk(coll, lo):
        if pos > hi:
            break
        puts.append((new.head + pos - lo, value))
    txn.list_write(ctx.db, argv[1], e, new._replace(size=keep), puts)
    _changed(txn, ctx.db, argv[1], b"ltrim", keep)
    return OK


# -- moves and multi-key pops ----------------------------------------------------------------

def _move(txn: KeyspaceTxn, db: int, src: bytes, dst: bytes, src_left: bool,
          dst_left: bool) -> Any:
    """LMOVE's work: None when ``src`` has no list; WRONGTYPE when ``dst`` holds another
    type (checked before anything moves)."""
    e = _list(txn, db, src)
    if e is None:
        return None
    _list(txn, db, dst)  # WRONGTYPE before the pop
    value = _pop(txn, db, src, e, 1, src_left, announce=False)[0]
    _push(txn, db, dst, _list(txn, db, dst), [value], dst_left)
    # Redis' order: the push, then the pop (and the source's del).
    _changed(txn, db, src, b"lpop" if src_left else b"rpop", _coll(e).size - 1)
    return value


@command("lmove", 5, "write denyoom", "write list slow", (1, 2, 1))
def lmove(ctx: Context, argv: list[bytes]) -> Any:
    """LMOVE source destination LEFT|RIGHT LEFT|RIGHT -> the element moved, or nil"""
    src_left, dst_left = _where(argv[3]), _where(argv[4])
    return _move(ctx.txn, ctx.db, argv[1], argv[2], src_left, dst_left)


@command("rpoplpush", 3, "write denyoom", "write list slow", (1, 2, 1))
def rpoplpush(ctx: Context, argv: list[bytes]) -> Any:
    """RPOPLPUSH source destination -> the element moved, or nil"""
    return _move(ctx.txn, ctx.db, argv[1], argv[2], False, True)


def _mpop_one(txn: KeyspaceTxn, db: int, key: bytes, left: bool, count: int) -> Any:
    e = _list(txn, db, key)
    if e is None:
        return None
    return [key, _pop(txn, db, key, e, count, left)]


@command("lmpop", -4, "write", "write list slow", key_finder=numkeys_finder(1))
def lmpop(ctx: Context, argv: list[bytes]) -> Any:
    """LMPOP numkeys key [key ...] LEFT|RIGHT [COUNT count] -> [key, elements] of the
    first non-empty list, or nil"""
    keys, left, count = mpop_args(argv, 1, (b"LEFT", b"RIGHT"))
    for key in keys:
        got = _mpop_one(ctx.txn, ctx.db, key, left, count)
        if got is not None:
            return got
    return NULL_ARRAY


# -- blocking -----------------------------------------------------------------------------

def _bpop(ctx: Context, argv: list[bytes], left: bool) -> Any:
    keys = argv[1:-1]
    timeout = block_timeout(argv[-1])
    db = ctx.db
    for key in keys:
        e = _list(ctx.txn, db, key)
        if e is not None:
            return [key, _pop(ctx.txn, db, key, e, 1, left)[0]]

    def attempt(txn: KeyspaceTxn, key: bytes) -> Any:
        try:
            e = _list(txn, db, key)
        except CommandError:
            return NOT_READY  # another type now: Redis 7.0 keeps the client blocked
        if e is None:
            return NOT_READY
        return [key, _pop(txn, db, key, e, 1, left)[0]]

    return block(ctx, keys, timeout, attempt, NULL_ARRAY)


@command("blpop", -3, "write", "write list slow blocking", (1, -2, 1))
def blpop(ctx: Context, argv: list[bytes]) -> Any:
    """BLPOP key [key ...] timeout -> [key, element], or nil after the timeout"""
    return _bpop(ctx, argv, True)


@command("brpop", -3, "write", "write list slow blocking", (1, -2, 1))
def brpop(ctx: Context, argv: list[bytes]) -> Any:
    """BRPOP key [key ...] timeout -> [key, element], or nil after the timeout"""
    return _bpop(ctx, argv, False)


def _bmove(ctx: Context, src: bytes, dst: bytes, src_left: bool, dst_left: bool,
           timeout_arg: bytes) -> Any:
    timeout = block_timeout(timeout_arg)
    db = ctx.db
    got = _move(ctx.txn, db, src, dst, src_left, dst_left)
    if got is not None:
        return got

    def attempt(txn: KeyspaceTxn, key: bytes) -> Any:
        try:
            if _list(txn, db, src) is None:
                return NOT_READY
        except CommandError:
            return NOT_READY
        return _move(txn, db, src, dst, src_left, dst_left)  # WRONGTYPE on dst: the reply

    return block(ctx, [src], timeout, attempt, None)


@command("blmove", 6, "write denyoom", "write list slow blocking", (1, 2, 1))
def blmove(ctx: Context, argv: list[bytes]) -> Any:
    """BLMOVE source destination LEFT|RIGHT LEFT|RIGHT timeout -> the element, or nil"""
    return _bmove(ctx, argv[1], argv[2], _where(argv[3]), _where(argv[4]), argv[5])


@command("brpoplpush", 4, "write denyoom", "write list slow blocking", (1, 2, 1))
def brpoplpush(ctx: Context, argv: list[bytes]) -> Any:
    """BRPOPLPUSH source destination timeout -> the element, or nil"""
    return _bmove(ctx, argv[1], argv[2], False, True, argv[3])


@command("blmpop", -5, "write", "write list slow blocking", key_finder=numkeys_finder(2))
def blmpop(ctx: Context, argv: list[bytes]) -> Any:
    """BLMPOP timeout numkeys key [key ...] LEFT|RIGHT [COUNT count] -> [key, elements],
    or nil after the timeout"""
    timeout = block_timeout(argv[1])
    keys, left, count = mpop_args(argv, 2, (b"LEFT", b"RIGHT"))
    db = ctx.db
    for key in keys:
        got = _mpop_one(ctx.txn, db, key, left, count)
        if got is not None:
            return got

    def attempt(txn: KeyspaceTxn, key: bytes) -> Any:
        try:
            got = _mpop_one(txn, db, key, left, count)
        except CommandError:
            return NOT_READY
        return NOT_READY if got is None else got

    return block(ctx, keys, timeout, attempt, NULL_ARRAY)


__all__ = ["FAMILY", "LIST_REWRITE_MAX"]
