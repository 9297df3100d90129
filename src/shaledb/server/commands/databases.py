"""Commands across databases and on whole databases: RANDOMKEY COPY MOVE SWAPDB.

COPY and MOVE are ordinary reads and writes of the keyspace transaction (so WATCH sees
their writes, and inside EXEC they are part of the one batch). MOVE keeps a chunked
string's chunks (only its header moves); COPY copies them to a new chunk set, as Redis
copies the value. SWAPDB swaps two entries of
the database map (:mod:`shaledb.server.keyspace.dbmap`): one small write, atomic across a crash,
whatever the databases hold; clients that selected either database see the other's keys
from their next command on, as in Redis. Error texts are Redis 7's.
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import DATABASES, MAX_USER_KEY, KeyspaceTxn
from ..net.protocol import OK
from . import SYNTAX, CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command

_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1
_SAME_OBJECT: Final = "source and destination objects are the same"
_OUT_OF_RANGE: Final = "DB index is out of range"
#: Bytes RANDOMKEY draws after the first and last keys' common prefix.
_PROBE_BYTES: Final = 8


def _db_index(arg: bytes, message: str | None = None) -> int:
    """A database index as Redis' getIntFromObjectOrReply reads it (``message`` replaces
    its errors, as SWAPDB does); range-checked against the databases afterwards."""
    if message is None:
        value = parse_int(arg)
        if not _INT_MIN <= value <= _INT_MAX:
            raise CommandError(f"value is out of range, must be between {_INT_MIN} and "
                               f"{_INT_MAX}")
        return value
    try:
        value = parse_int(arg)
    except CommandError:
        raise CommandError(message) from None
    if not _INT_MIN <= value <= _INT_MAX:
        raise CommandError(message)
    return value


def _check_db(index: int) -> int:
    if not 0 <= index < DATABASES:
        raise CommandError(_OUT_OF_RANGE)
    return index


def random_key(txn: KeyspaceTxn, db: int) -> bytes | None:
    """A random live key of ``db``, or None when it has none. Not uniform (neither is
    Redis'): it draws a byte string between the first and the last key and returns the first
    key at or after it (wrapping round to the first key). After their common prefix, the
    first byte is drawn between the two keys' bytes there and the next ones between the
    smallest and largest byte value the two keys use (so keys of digits, letters or hex are
    drawn about evenly); keys after a wide gap in key order are drawn more often. Costs
    three seeks (plus the deleted and expired entries skipped), never O(keys)."""
    first = next(txn.scan(db), None)
    if first is None:
        return None
    last = next(txn.scan(db, reverse=True))
    lo, hi = first[0], last[0]
    if lo == hi:
        return lo
    common = 0
    while common < min(len(lo), len(hi)) and lo[common] == hi[common]:
        common += 1
    rng = txn.random
    tail = lo[common:] + hi[common:]  # not empty: lo != hi
    smallest, largest = min(tail), max(tail)
    head = rng.randint(lo[common] if common < len(lo) else smallest, hi[common])
    probe = lo[:common] + bytes((head, *(rng.randint(smallest, largest)
                                         for _ in range(_PROBE_BYTES - 1))))
    found = next(txn.scan(db, probe[:MAX_USER_KEY]), None)
    return lo if found is None else found[0]


@command("randomkey", 1, "readonly", "keyspace read slow")
def randomkey(ctx: Context, argv: list[bytes]) -> Any:
    """RANDOMKEY -> a random key of the selected database, or nil when it is empty"""
    return random_key(ctx.txn, ctx.db)


@command("copy", -3, "write", "keyspace write slow", (1, 2, 1))
def copy(ctx: Context, argv: list[bytes]) -> Any:
    """COPY source destination [DB destination-db] [REPLACE] -> 1 copied, 0 not (the
    source is missing, or the destination exists without REPLACE); keeps the TTL"""
    src, dst = argv[1], argv[2]
    dst_db, replace = ctx.db, False
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"REPLACE":
            replace = True
        elif opt == b"DB" and i + 1 < len(argv):
            dst_db = _check_db(_db_index(argv[i + 1]))
            i += 1
        else:
            raise CommandError(SYNTAX)
        i += 1
    if dst_db == ctx.db and src == dst:
        raise CommandError(_SAME_OBJECT)
    txn = ctx.txn
    e = txn.lookup(ctx.db, src)
    if e is None:
        return 0
    if not replace and txn.exists(dst_db, dst):
        return 0
    txn.set_entry(dst_db, dst, e, e.expire_ms, copy=True)  # new chunks / members
    txn.notify(ev.GENERIC, b"copy_to", dst, dst_db)
    return 1


@command("move", 3, "write fast", "keyspace write fast", (1, 1, 1))
def move(ctx: Context, argv: list[bytes]) -> Any:
    """MOVE key db -> 1 moved, 0 not (missing here, or present there); keeps the TTL"""
    dst_db = _check_db(_db_index(argv[2]))
    if dst_db == ctx.db:
        raise CommandError(_SAME_OBJECT)
    txn, key = ctx.txn, argv[1]
    e = txn.lookup(ctx.db, key)
    if e is None or txn.exists(dst_db, key):
        return 0
    txn.set_entry(dst_db, key, e, e.expire_ms)  # the chunks / members stay
    txn.delete(ctx.db, key)
    txn.notify(ev.GENERIC, b"move_from", key, ctx.db)
    txn.notify(ev.GENERIC, b"move_to", key, dst_db)
    return 1


@command("swapdb", 3, "write fast", "keyspace write fast dangerous")
def swapdb(ctx: Context, argv: list[bytes]) -> Any:
    """SWAPDB index1 index2: swap two databases (O(1), atomic across a crash)"""
    a = _db_index(argv[1], "invalid first DB index")
    b = _db_index(argv[2], "invalid second DB index")
    ctx.txn.swap(_check_db(a), _check_db(b))
    return OK


__all__ = ["FAMILY", "random_key"]
