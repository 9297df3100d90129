"""String commands: GET SET SETNX SETEX PSETEX MGET MSET MSETNX GETSET GETDEL GETEX APPEND
STRLEN INCR INCRBY DECR DECRBY INCRBYFLOAT GETRANGE SETRANGE.

Replies and error messages are Redis 7's. Each command runs as one keyspace transaction on
the event loop, so its read and its write are atomic with respect to every other client.
Strings longer than 64 KiB are chunked (:mod:`shaledb.server.keyspace.keyspace`): APPEND, SETRANGE,
GETRANGE and STRLEN touch only the chunks they need, GETEX only the header.
"""

from __future__ import annotations

import decimal
import math
from typing import Any

from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import MAX_EXPIRE_MS, Entry
from ..net.protocol import OK
from . import (
    INT64_MAX,
    INT64_MIN,
    NOT_INTEGER,
    SYNTAX,
    CommandFamily,
    Context,
    parse_float,
    parse_int,
    wrong_arity,
)

FAMILY = CommandFamily()
command = FAMILY.command

#: parse_float's error (Redis' for a string that is no double).
NOT_FLOAT = "value is not a valid float"

_W = "write denyoom"
_R = "readonly fast"


def expire_at(ctx: Context, unit: bytes, arg: bytes, command_name: str) -> int:
    """The absolute expiry in ms for an EX/PX/EXAT/PXAT option value, with Redis' checks:
    positive, and no 64-bit overflow converting seconds or adding the time now. The engine
    keeps expiries up to the year 33658 (MAX_EXPIRE_MS): a later one is kept as that."""
    n = parse_int(arg)
    unit = unit.upper()
    seconds = unit in (b"EX", b"EXAT")
    if n <= 0 or (seconds and n > INT64_MAX // 1000):
        raise CommandError(f"invalid expire time in '{command_name}' command")
    ms = n * 1000 if seconds else n
    if unit in (b"EX", b"PX"):
        ms += ctx.txn.now
    if ms > INT64_MAX:
        raise CommandError(f"invalid expire time in '{command_name}' command")
    return min(ms, MAX_EXPIRE_MS)


def check_size(ctx: Context, size: int) -> None:
    """Refuse to build a string longer than proto-max-bulk-len."""
    if size > ctx.services.config.proto_max_bulk_len:
        raise CommandError("string exceeds maximum allowed size (proto-max-bulk-len)")


@command("get", 2, _R, "read string fast", (1, 1, 1))
def get(ctx: Context, argv: list[bytes]) -> Any:
    """GET key"""
    e = ctx.txn.get(ctx.db, argv[1])
    return None if e is None else e.value


@command("set", -3, _W, "write string slow", (1, 1, 1))
def set_(ctx: Context, argv: list[bytes]) -> Any:
    """SET key value [NX | XX] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL]"""
    nx = xx = want_get = keepttl = False
    expire: int | None = None
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            want_get = True
        elif opt == b"KEEPTTL" and expire is None:
            keepttl = True
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and expire is None and not keepttl \
                and i + 1 < len(argv):
            i += 1
            expire = expire_at(ctx, opt, argv[i], "set")
        else:
            raise CommandError(SYNTAX)
        i += 1
    txn, db, key = ctx.txn, ctx.db, argv[1]
    if not (nx or xx or want_get or keepttl):
        # A plain SET needs no read: it was 13% of the server's time under redis-benchmark.
        txn.set(db, key, argv[2], expire or 0)
        # _set_events inlined: with ``db`` at hand, no second call of ctx.db (a property
        # of the interpreted Context) per SET.
        txn.notify(ev.STRING, b"set", key, db)
        if expire:
            txn.notify(ev.GENERIC, b"expire", key, db)
        return OK
    old = txn.get(db, key)
    if (nx and old is not None) or (xx and old is None):
        return old.value if want_get and old is not None else None
    if expire is None:
        expire = old.expire_ms if keepttl and old is not None else 0
    txn.set(db, key, argv[2], expire)
    _set_events(ctx, key, expire if not keepttl else None)
    if want_get:
        return None if old is None else old.value
    return OK


def _set_events(ctx: Context, key: bytes, expire: int | None) -> None:
    """``set``, and ``expire`` when the command gave the key an expiry (as Redis)."""
    ctx.txn.notify(ev.STRING, b"set", key, ctx.db)
    if expire:
        ctx.txn.notify(ev.GENERIC, b"expire", key, ctx.db)


@command("setnx", 3, _W + " fast", "write string fast", (1, 1, 1))
def setnx(ctx: Context, argv: list[bytes]) -> Any:
    """SETNX key value"""
    if ctx.txn.exists(ctx.db, argv[1]):
        return 0
    ctx.txn.set(ctx.db, argv[1], argv[2])
    _set_events(ctx, argv[1], None)
    return 1


@command("setex", 4, _W, "write string slow", (1, 1, 1))
def setex(ctx: Context, argv: list[bytes]) -> Any:
    """SETEX key seconds value"""
    ctx.txn.set(ctx.db, argv[1], argv[3], expire_at(ctx, b"EX", argv[2], "setex"))
    _set_events(ctx, argv[1], 1)
    return OK


@command("psetex", 4, _W, "write string slow", (1, 1, 1))
def psetex(ctx: Context, argv: list[bytes]) -> Any:
    """PSETEX key milliseconds value"""
    ctx.txn.set(ctx.db, argv[1], argv[3], expire_at(ctx, b"PX", argv[2], "psetex"))
    _set_events(ctx, argv[1], 1)
    return OK


@command("mget", -2, _R, "read string fast", (1, -1, 1))
def mget(ctx: Context, argv: list[bytes]) -> Any:
    """MGET key [key ...] (the reply is charged to the output limit value by value)"""
    txn, db = ctx.txn, ctx.db
    out = ctx.array()
    for key in argv[1:]:
        e = txn.lookup(db, key)  # nil for a key of another type, as in Redis
        if not out.add(None if e is None or e.coll is not None else e.value):
            return ctx.overflow()
    return out.done()


@command("mset", -3, _W, "write string slow", (1, -1, 2))
def mset(ctx: Context, argv: list[bytes]) -> Any:
    """MSET key value [key value ...] (atomic: one write batch)"""
    if len(argv) % 2 == 0:
        raise wrong_arity("mset")
    for i in range(1, len(argv), 2):
        ctx.txn.set(ctx.db, argv[i], argv[i + 1])
        _set_events(ctx, argv[i], None)
    return OK


@command("msetnx", -3, _W, "write string slow", (1, -1, 2))
def msetnx(ctx: Context, argv: list[bytes]) -> Any:
    """MSETNX key value [key value ...]: sets all, or none when any key exists."""
    if len(argv) % 2 == 0:
        raise wrong_arity("msetnx")
    if any(ctx.txn.exists(ctx.db, argv[i]) for i in range(1, len(argv), 2)):
        return 0
    for i in range(1, len(argv), 2):
        ctx.txn.set(ctx.db, argv[i], argv[i + 1])
        _set_events(ctx, argv[i], None)
    return 1


@command("getset", 3, _W + " fast", "write string fast", (1, 1, 1))
def getset(ctx: Context, argv: list[bytes]) -> Any:
    """GETSET key value (clears the TTL, like SET)"""
    old = ctx.txn.get(ctx.db, argv[1])
    ctx.txn.set(ctx.db, argv[1], argv[2])
    _set_events(ctx, argv[1], None)
    return None if old is None else old.value


@command("getdel", 2, "write fast", "write string fast", (1, 1, 1))
def getdel(ctx: Context, argv: list[bytes]) -> Any:
    """GETDEL key"""
    old = ctx.txn.get(ctx.db, argv[1])
    if old is None:
        return None
    ctx.txn.delete(ctx.db, argv[1])
    ctx.txn.notify(ev.GENERIC, b"del", argv[1], ctx.db)
    return old.value


@command("getex", -2, "write fast", "write string fast", (1, 1, 1))
def getex(ctx: Context, argv: list[bytes]) -> Any:
    """GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]"""
    expire: int | None = None
    persist = False
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if opt in (b"EX", b"PX", b"EXAT", b"PXAT") and expire is None and not persist \
                and i + 1 < len(argv):
            i += 1
            expire = expire_at(ctx, opt, argv[i], "getex")
        elif opt == b"PERSIST" and expire is None:
            persist = True
        else:
            raise CommandError(SYNTAX)
        i += 1
    e = ctx.txn.get(ctx.db, argv[1])
    if e is None:
        return None
    value = e.value
    if expire is not None:
        ctx.txn.set_entry(ctx.db, argv[1], e, expire)
        ctx.txn.notify(ev.GENERIC, b"expire" if expire > ctx.txn.now else b"del", argv[1],
                       ctx.db)
    elif persist and e.expire_ms:
        ctx.txn.set_entry(ctx.db, argv[1], e, 0)
        ctx.txn.notify(ev.GENERIC, b"persist", argv[1], ctx.db)
    return value


@command("append", 3, _W + " fast", "write string fast", (1, 1, 1))
def append(ctx: Context, argv: list[bytes]) -> Any:
    """APPEND key value -> the new length"""
    e = ctx.txn.get(ctx.db, argv[1])
    if e is not None:
        check_size(ctx, e.length + len(argv[2]))
    n = ctx.txn.append(ctx.db, argv[1], e, argv[2])
    ctx.txn.notify(ev.STRING, b"append", argv[1], ctx.db)
    return n


@command("strlen", 2, _R, "read string fast", (1, 1, 1))
def strlen(ctx: Context, argv: list[bytes]) -> Any:
    """STRLEN key"""
    e = ctx.txn.get(ctx.db, argv[1])
    return 0 if e is None else e.length


def _number_text(e: Entry, error: str) -> bytes:
    """The bytes of a string INCR* parses: a chunked one (over 64 KiB) is no number, and is
    not read to find that out."""
    if e.chunks is not None:
        raise CommandError(error)
    return e.value


def _incr(ctx: Context, key: bytes, delta: int) -> int:
    e = ctx.txn.get(ctx.db, key)
    current = 0 if e is None else parse_int(_number_text(e, NOT_INTEGER))
    new = current + delta
    if not INT64_MIN <= new <= INT64_MAX:
        raise CommandError("increment or decrement would overflow")
    ctx.txn.set(ctx.db, key, b"%d" % new, 0 if e is None else e.expire_ms)
    ctx.txn.notify(ev.STRING, b"incrby", key, ctx.db)
    return new


@command("incr", 2, _W + " fast", "write string fast", (1, 1, 1))
def incr(ctx: Context, argv: list[bytes]) -> Any:
    """INCR key"""
    return _incr(ctx, argv[1], 1)


@command("decr", 2, _W + " fast", "write string fast", (1, 1, 1))
def decr(ctx: Context, argv: list[bytes]) -> Any:
    """DECR key"""
    return _incr(ctx, argv[1], -1)


@command("incrby", 3, _W + " fast", "write string fast", (1, 1, 1))
def incrby(ctx: Context, argv: list[bytes]) -> Any:
    """INCRBY key increment"""
    return _incr(ctx, argv[1], parse_int(argv[2]))


@command("decrby", 3, _W + " fast", "write string fast", (1, 1, 1))
def decrby(ctx: Context, argv: list[bytes]) -> Any:
    """DECRBY key decrement"""
    delta = parse_int(argv[2])
    if delta == INT64_MIN:
        raise CommandError("decrement would overflow")
    return _incr(ctx, argv[1], -delta)


def format_float(value: float) -> bytes:
    """A float the way INCRBYFLOAT stores it: plain decimal, no exponent, no trailing
    zeros (``10.5``, ``5000``, ``3.0e-5`` -> ``0.00003``)."""
    text = format(decimal.Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return b"0" if text in ("-0", "") else text.encode()


@command("incrbyfloat", 3, _W + " fast", "write string fast", (1, 1, 1))
def incrbyfloat(ctx: Context, argv: list[bytes]) -> Any:
    """INCRBYFLOAT key increment -> the new value as a bulk string"""
    delta = parse_float(argv[2])
    e = ctx.txn.get(ctx.db, argv[1])
    current = 0.0 if e is None else parse_float(_number_text(e, NOT_FLOAT))
    new = current + delta
    if math.isinf(new) or math.isnan(new) or math.isinf(delta):
        raise CommandError("increment would produce NaN or Infinity")
    text = format_float(new)
    ctx.txn.set(ctx.db, argv[1], text, 0 if e is None else e.expire_ms)
    ctx.txn.notify(ev.STRING, b"incrbyfloat", argv[1], ctx.db)
    return text


@command("getrange", 4, "readonly", "read string slow", (1, 1, 1))
def getrange(ctx: Context, argv: list[bytes]) -> Any:
    """GETRANGE key start end (inclusive, negative counts from the end)"""
    start, end = parse_int(argv[2]), parse_int(argv[3])
    e = ctx.txn.get(ctx.db, argv[1])
    n = 0 if e is None else e.length
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start = max(n + start, 0)
    if end < 0:
        end = max(n + end, 0)
    end = min(end, n - 1)
    if e is None or n == 0 or start > end:
        return b""
    return e.read(start, end + 1)


@command("setrange", 4, _W, "write string slow", (1, 1, 1))
def setrange(ctx: Context, argv: list[bytes]) -> Any:
    """SETRANGE key offset value -> the new length (zero bytes pad a gap)"""
    offset = parse_int(argv[2])
    if offset < 0:
        raise CommandError("offset is out of range")
    patch = argv[3]
    e = ctx.txn.get(ctx.db, argv[1])
    if not patch:
        return 0 if e is None else e.length
    check_size(ctx, offset + len(patch))
    n = ctx.txn.setrange(ctx.db, argv[1], e, offset, patch)
    ctx.txn.notify(ev.STRING, b"setrange", argv[1], ctx.db)
    return n
