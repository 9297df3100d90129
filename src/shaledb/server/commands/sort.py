"""SORT and SORT_RO on lists, sets and sorted sets (Redis' sort.c): BY pattern (``*`` replaced
element, ``->field`` reads a hash field; a pattern without ``*`` means no sorting), LIMIT,
GET pattern / ``#`` (repeatable), ASC/DESC, ALPHA, STORE (SORT only).

Bounded work: SORT holds the elements it sorts in memory, so it refuses a key of more than
:data:`SORT_MAX_ELEMENTS` elements, or one whose elements and BY values pass
:data:`SORT_MAX_BYTES`, before sorting (a list with no sorting reads only its LIMIT range,
whatever its size); the reply is charged to the client's output limit as it is built. Each
BY and GET pattern is one point read per element. Ties in a numeric sort are ordered by
the elements' bytes, as in Redis; ALPHA compares bytes (Redis' ``strcoll`` in the C
locale). A sorted set sorts its members as a set's (their scores play no part), except
with no sorting (BY without ``*``): then, as a list keeps its order, a sorted set gives its
members in score order, reversed by DESC, reading only the LIMIT range.
ACL: as Redis 7, a user without access to every key may not use GET, nor BY with a ``*``
pattern (the keys they read are only known while SORT runs).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from typing import Any, Final

from ..admin.acl import KEY_READ
from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import Entry, KeyspaceTxn
from ..keyspace.values import TAG_HASH, TAG_LIST, TAG_SET, TAG_ZSET, CollRef
from . import SYNTAX, CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command

#: The most elements SORT loads to sort.
SORT_MAX_ELEMENTS: Final = 1_000_000
#: The most bytes of elements and BY values SORT holds.
SORT_MAX_BYTES: Final = 256 * 1024 * 1024

#: What C's strtod reads whole (leading spaces allowed, nothing after): decimal, hex,
#: inf/infinity (NaN is refused after).
_STRTOD: Final = re.compile(
    rb"[ \t\n\v\f\r]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?"
    rb"|nan|0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?)", re.I)


def _score(text: bytes) -> float | None:
    """strtod of the whole string, or None where Redis reports a conversion error."""
    if text == b"":
        return 0.0
    if not _STRTOD.fullmatch(text):
        return None
    t = text.strip()
    try:
        v = float.fromhex(t.decode()) if b"x" in t.lower() else float(t)
    except ValueError:
        return None
    if math.isnan(v) or (math.isinf(v) and b"inf" not in t.lower()):
        return None  # NaN, or ERANGE (overflow)
    return v


def _lookup(ctx: Context, pattern: bytes, element: bytes) -> bytes | None:
    """Redis' lookupKeyByPattern: ``#`` is the element; otherwise the first ``*`` becomes
    the element, and a ``->field`` after it reads that hash field; None when there is no
    ``*``, no key, or a key of the wrong type."""
    if pattern == b"#":
        return element
    star = pattern.find(b"*")
    if star < 0:
        return None
    arrow = pattern.find(b"->", star + 1)
    field: bytes | None = None
    if arrow >= 0 and arrow + 2 < len(pattern):
        field = pattern[arrow + 2:]
        key = pattern[:star] + element + pattern[star + 1:arrow]
    else:
        key = pattern[:star] + element + pattern[star + 1:]
    e = ctx.txn.lookup(ctx.db, key)
    if e is None:
        return None
    if field is not None:
        if e.coll is None or e.coll.kind != TAG_HASH:
            return None
        return ctx.txn.member(e.coll, field)
    return None if e.coll is not None else e.value


def _too_big(what: str) -> CommandError:
    return CommandError(f"SORT would hold more than {what} in memory: sort a smaller key, "
                        f"or read it in parts (LRANGE, SSCAN)")


def _sort(ctx: Context, argv: list[bytes], readonly: bool) -> Any:
    desc = alpha = False
    offset, count = 0, -1
    sortby: bytes | None = None
    dontsort = False
    gets: list[bytes] = []
    store: bytes | None = None
    j = 2
    while j < len(argv):
        opt = argv[j].upper()
        more = len(argv) - j - 1
        if opt == b"ASC":
            desc = False
        elif opt == b"DESC":
            desc = True
        elif opt == b"ALPHA":
            alpha = True
        elif opt == b"LIMIT" and more >= 2:
            offset, count = parse_int(argv[j + 1]), parse_int(argv[j + 2])
            j += 2
        elif opt == b"STORE" and more >= 1 and not readonly:
            store = argv[j + 1]
            j += 1
        elif opt == b"BY" and more >= 1:
            sortby = argv[j + 1]
            # A pattern with no '*' names one key for every element: no sorting.
            dontsort = b"*" not in sortby
            if not dontsort and not _reads_any_key(ctx, argv):
                # The keys it reads are unknown before it runs: Redis 7 asks for all keys.
                raise CommandError("BY option of SORT denied due to insufficient ACL "
                                   "permissions.")
            j += 1
        elif opt == b"GET" and more >= 1:
            if not _reads_any_key(ctx, argv):
                raise CommandError("GET option of SORT denied due to insufficient ACL "
                                   "permissions.")
            gets.append(argv[j + 1])
            j += 1
        else:
            raise CommandError(SYNTAX)
        j += 1
    txn, db = ctx.txn, ctx.db
    e: Entry | None = txn.lookup(db, argv[1])
    coll = None if e is None else e.coll
    if e is not None and (coll is None or coll.kind == TAG_HASH):
        raise CommandError("Operation against a key holding the wrong kind of value",
                           "WRONGTYPE")
    if e is not None and coll is not None and coll.kind not in (TAG_LIST, TAG_SET, TAG_ZSET):
        raise CommandError("Operation against a key holding the wrong kind of value",
                           "WRONGTYPE")
    if dontsort and coll is not None and coll.kind == TAG_SET and store is not None:
        # Redis sorts a set anyway when storing, so the stored order is deterministic.
        dontsort, alpha, sortby = False, True, None
    size = 0 if coll is None else coll.size
    start = max(offset, 0)
    end = size - 1 if count < 0 else start + count - 1
    if start >= size:
        start, end = size - 1, size - 2
    end = min(end, size - 1)
    elements: list[bytes] = []
    if coll is not None and coll.kind in (TAG_LIST, TAG_ZSET) and dontsort:
        # No sorting: a list keeps its order and a sorted set its score order, reversed
        # by DESC (Redis' sort.c), and only the LIMIT range is read.
        if end >= start:
            for v in _native(txn, coll, start, desc):
                elements.append(v)
                if len(elements) > end - start:
                    break
        start, end = 0, len(elements) - 1
    elif coll is not None:
        if coll.size > SORT_MAX_ELEMENTS:
            raise _too_big(f"{SORT_MAX_ELEMENTS} elements")
        held = 0
        walk = ((v for _, v in txn.list_walk(coll)) if coll.kind == TAG_LIST
                else (m for m, _ in txn.members(coll)))  # a set's or sorted set's members
        for v in walk:
            held += len(v)
            if held > SORT_MAX_BYTES:
                raise _too_big(f"{SORT_MAX_BYTES} bytes")
            elements.append(v)
    if not dontsort and elements:
        elements = _ordered(ctx, elements, sortby, alpha, desc)
    selected = elements[start:end + 1] if end >= start else []
    if store is not None:
        out: list[bytes] = []
        for el in selected:
            if not gets:
                out.append(el)
            for g in gets:
                out.append(_lookup(ctx, g, el) or b"")
        existed = txn.delete(db, store)
        if out:
            new = txn.new_list()
            puts = [(new.head + i, v) for i, v in enumerate(out)]
            txn.list_write(db, store, None, new._replace(size=len(out)), puts)
            txn.notify(ev.LIST, b"sortstore", store, db)
        elif existed:
            txn.notify(ev.GENERIC, b"del", store, db)
        return len(out)
    reply = ctx.array()
    for el in selected:
        items: list[bytes | None] = [el] if not gets else [_lookup(ctx, g, el) for g in gets]
        for item in items:
            if not reply.add(item):
                return ctx.overflow()
    return reply.done()


def _native(txn: KeyspaceTxn, coll: CollRef, start: int, desc: bool) -> Iterator[bytes]:
    """The elements of list or sorted set ``coll`` in their own order (a sorted set's:
    score, then member) from position ``start`` on, or from the end back with ``desc``."""
    if coll.kind == TAG_LIST:
        if desc:
            # Positions size-1-start down to 0.
            walk = txn.list_walk(coll, 0, reverse=True)
            return (v for pos, v in walk if pos <= coll.size - 1 - start)
        return (v for _, v in txn.list_walk(coll, start))
    entries = (entry[8:] for entry in txn.score_walk(coll, reverse=desc))
    return itertools.islice(entries, start, None)


def _ordered(ctx: Context, elements: list[bytes], sortby: bytes | None, alpha: bool,
             desc: bool) -> list[bytes]:
    if alpha:
        if sortby is None:
            return sorted(elements, reverse=desc)
        held = 0
        keyed: list[tuple[int, bytes, bytes]] = []
        for el in elements:
            by = _lookup(ctx, sortby, el)
            held += 0 if by is None else len(by)
            if held > SORT_MAX_BYTES:
                raise _too_big(f"{SORT_MAX_BYTES} bytes")
            # A missing BY value sorts first (Redis: NULL before anything).
            keyed.append((0, b"", el) if by is None else (1, by, el))
        keyed.sort(key=lambda t: (t[0], t[1]), reverse=desc)
        return [t[2] for t in keyed]
    scored: list[tuple[float, bytes]] = []
    for el in elements:
        by = el if sortby is None else _lookup(ctx, sortby, el)
        score = 0.0 if by is None else _score(by)
        if score is None:
            raise CommandError("One or more scores can't be converted into double")
        scored.append((score, el))
    scored.sort(reverse=desc)
    return [el for _, el in scored]


def _reads_any_key(ctx: Context, argv: list[bytes]) -> bool:
    # BY and GET read keys named by the data: Redis 7 asks for read access to every key in
    # a selector that allows this SORT.
    services = ctx.services
    table = services.dispatcher.table
    cmd = table[argv[0].lower()]
    return services.acl.full_key_access(ctx.client.user, cmd, argv, KEY_READ)


def _sort_keys(argv: list[bytes]) -> list[bytes]:
    """The key and the last STORE destination (Redis' sortGetKeys: LIMIT's, BY's and GET's
    arguments are skipped, so ``GET store`` names no key)."""
    store: bytes | None = None
    skip = {b"limit": 2, b"get": 1, b"by": 1}
    i = 2
    while i < len(argv):
        word = argv[i].lower()
        if word in skip:
            i += skip[word]
        elif word == b"store" and i + 1 < len(argv):
            store = argv[i + 1]
            i += 1
        i += 1
    return [argv[1]] if store is None else [argv[1], store]


@command("sort", -2, "write denyoom", "write set sortedset list slow dangerous",
         key_finder=_sort_keys)
def sort(ctx: Context, argv: list[bytes]) -> Any:
    """SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC | DESC] [ALPHA]
    [STORE destination]"""
    return _sort(ctx, argv, False)


@command("sort_ro", -2, "readonly", "read set sortedset list slow dangerous", (1, 1, 1))
def sort_ro(ctx: Context, argv: list[bytes]) -> Any:
    """SORT_RO key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC | DESC] [ALPHA]"""
    return _sort(ctx, argv, True)
