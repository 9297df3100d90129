"""Generic key commands, for every type: DEL UNLINK EXISTS TYPE KEYS SCAN RENAME RENAMENX
EXPIRE PEXPIRE EXPIREAT PEXPIREAT TTL PTTL EXPIRETIME PEXPIRETIME PERSIST TOUCH DBSIZE
FLUSHDB FLUSHALL OBJECT. A hash's or set's header moves, expires or goes in one write; its
members are reclaimed in the background (:mod:`shaledb.server.keyspace.purge`).

KEYS and SCAN walk the keys in order, reading only each key's header (a large value's bytes
are chunks outside the database's range); KEYS with a pattern that starts with literal bytes
walks only the keys with that prefix. DBSIZE is O(1): every write batch keeps the database's
key count record. FLUSHDB and FLUSHALL are O(1) and atomic: they point the
database at a fresh physical id and the old keys are purged in the background
(:mod:`shaledb.server.keyspace.purge`); ASYNC and SYNC are accepted and mean the same.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any, Final

from ..admin.info import human_bytes, peak_rss_bytes, rss_bytes
from ..errors import CommandError
from ..exec.deferred import Deferred
from ..glob import compile_glob, literal_prefix
from ..keyspace import notify as ev
from ..keyspace.keyspace import MAX_EXPIRE_MS, Entry
from ..keyspace.values import TAG_LIST, TAG_STREAM, TAG_ZSET
from ..net.protocol import OK, Status
from . import INT64_MAX, SYNTAX, CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command

#: Seconds of work after which a SCAN call answers with the keys found so far and a cursor to
#: go on from (COUNT is a hint, as in Redis): walking COUNT keys, or matching a pattern
#: against long keys, must not hold the event loop for long.
SCAN_TIME_BUDGET: Final = 0.05
#: The largest number of seconds that converts to 64-bit milliseconds (Redis' LLONG_MAX/1000;
#: LLONG_MIN/1000 rounds to its negative).
_MAX_SECONDS: Final = INT64_MAX // 1000
#: Seconds of KEYS' walk per event-loop turn (it goes on in the next turns).
KEYS_SLICE: Final = 0.02


def _prefix_end(prefix: bytes) -> bytes | None:
    p = prefix.rstrip(b"\xff")
    return None if not p else p[:-1] + bytes((p[-1] + 1,))


@command("del", -2, "write", "keyspace write slow", (1, -1, 1))
def del_(ctx: Context, argv: list[bytes]) -> Any:
    """DEL key [key ...] -> keys removed (atomic: one write batch)"""
    deleted = 0
    for key in dict.fromkeys(argv[1:]):
        if ctx.txn.delete(ctx.db, key):
            deleted += 1
            ctx.txn.notify(ev.GENERIC, b"del", key, ctx.db)
    return deleted


@command("unlink", -2, "write fast", "keyspace write fast", (1, -1, 1))
def unlink(ctx: Context, argv: list[bytes]) -> Any:
    """UNLINK key [key ...]: DEL (an LSM delete is already O(1) per key)"""
    return del_(ctx, argv)


@command("exists", -2, "readonly fast", "keyspace read fast", (1, -1, 1))
def exists(ctx: Context, argv: list[bytes]) -> Any:
    """EXISTS key [key ...] -> how many of the arguments exist (repeats count)"""
    return sum(ctx.txn.exists(ctx.db, key) for key in argv[1:])


@command("touch", -2, "readonly fast", "keyspace read fast", (1, -1, 1))
def touch(ctx: Context, argv: list[bytes]) -> Any:
    """TOUCH key [key ...] -> how many exist (ShaleDB keeps no access times)"""
    return exists(ctx, argv)


@command("type", 2, "readonly fast", "keyspace read fast", (1, 1, 1))
def type_(ctx: Context, argv: list[bytes]) -> Any:
    """TYPE key -> string | hash | set | none"""
    e = ctx.txn.lookup(ctx.db, argv[1])
    return Status(b"none" if e is None else e.type_name)


@command("keys", 2, "readonly", "keyspace read slow dangerous")
def keys(ctx: Context, argv: list[bytes]) -> Any:
    """KEYS pattern

    The walk reads a snapshot (the state when KEYS started, as if it ran at once, like
    Redis), KEYS_SLICE seconds per event-loop turn: other clients are served in between
    and this one waits for its reply (inside EXEC the walk runs whole). The reply is encoded
    as the walk goes; once it passes client_output_buffer_limit the walk stops and the client
    is disconnected (as Redis would at its hard limit, but before the whole reply exists),
    so KEYS * over millions of keys cannot exhaust the server's memory.
    """
    pattern = argv[1]
    match = compile_glob(pattern, bounded=True)
    prefix = literal_prefix(pattern)
    out = ctx.array()
    walk = ctx.txn.scan(ctx.db, prefix or None, _prefix_end(prefix) if prefix else None)
    client, server = ctx.client, ctx.services
    if ctx.in_exec:
        for k, _ in walk:
            if match(k) and not out.add(k):
                return ctx.overflow()
        return out.done()
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def step() -> None:
        if server.connections.get(client.id) is None:  # the client left: stop walking
            future.cancel()
            return
        deadline = perf_counter() + KEYS_SLICE
        for n, (k, _) in enumerate(walk):
            if match(k) and not out.add(k):
                ctx.overflow()
                future.set_result(None)
                return
            if not n % 64 and perf_counter() > deadline:
                asyncio.get_running_loop().call_soon(step)
                return
        future.set_result(out.done())

    step()
    return future.result() if future.done() else Deferred(future)


@command("scan", -2, "readonly", "keyspace read slow")
def scan(ctx: Context, argv: list[bytes]) -> Any:
    """SCAN cursor [MATCH pattern] [COUNT count] [TYPE type] -> [next cursor, keys]

    The cursor names a position in key order, kept by the server for the client that got
    it (:mod:`shaledb.server.exec.cursors`); 0 starts and ends an iteration. Every key present
    for the whole iteration is returned exactly once. A call
    walks at most COUNT keys, and stops after SCAN_TIME_BUDGET seconds of work (having
    walked at least one); inside EXEC, after SCAN_TIME_BUDGET seconds of the EXEC, so that
    its SCANs together stop there.
    """
    try:
        cursor = int(argv[1])
        if cursor < 0 or argv[1] != b"%d" % cursor:
            raise ValueError
    except ValueError:
        raise CommandError("invalid cursor") from None
    count, match, want_type = 10, None, None
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if i + 1 >= len(argv):
            raise CommandError(SYNTAX)
        if opt == b"COUNT":
            count = parse_int(argv[i + 1])
            if count < 1:
                raise CommandError(SYNTAX)
        elif opt == b"MATCH":
            match = compile_glob(argv[i + 1], bounded=True)
        elif opt == b"TYPE":
            want_type = argv[i + 1].lower()
        else:
            raise CommandError(SYNTAX)
        i += 2
    cursors = ctx.services.scan_cursors
    start = b""
    if cursor:
        position = cursors.get(cursor, ctx.db)
        if position is None:
            raise CommandError("invalid cursor (unknown, dropped, or of another database): "
                               "start the scan again from 0")
        start = position
    found = ctx.array()
    last: bytes | None = None
    started = perf_counter()
    if ctx.in_exec and ctx.client.exec_started is not None:
        started = min(started, ctx.client.exec_started)  # one budget for EXEC's SCANs
    deadline = started + SCAN_TIME_BUDGET
    for seen, (k, e) in enumerate(ctx.txn.scan(ctx.db, start)):
        if seen == count or (seen and perf_counter() > deadline):
            break
        last = k
        if (match is None or match(k)) and (want_type is None or want_type == e.type_name) \
                and not found.add(k):
            return ctx.overflow()
    else:
        return [b"0", found.done()]
    assert last is not None
    return [b"%d" % cursors.put(ctx.client.id, ctx.db, last + b"\x00"), found.done()]


def _rename(ctx: Context, argv: list[bytes], nx: bool) -> Any:
    src, dst = argv[1], argv[2]
    e = ctx.txn.lookup(ctx.db, src)
    if e is None:
        raise CommandError("no such key")
    if src == dst:
        return 0 if nx else OK
    if nx and ctx.txn.exists(ctx.db, dst):
        return 0
    ctx.txn.delete(ctx.db, src)
    # A chunked string keeps its chunks, a hash or set its members (the header moves).
    ctx.txn.set_entry(ctx.db, dst, e, e.expire_ms)
    ctx.txn.notify(ev.GENERIC, b"rename_from", src, ctx.db)
    ctx.txn.notify(ev.GENERIC, b"rename_to", dst, ctx.db)
    return 1 if nx else OK


@command("rename", 3, "write", "keyspace write slow", (1, 2, 1))
def rename(ctx: Context, argv: list[bytes]) -> Any:
    """RENAME key newkey (keeps the TTL; atomic)"""
    return _rename(ctx, argv, False)


@command("renamenx", 3, "write fast", "keyspace write fast", (1, 2, 1))
def renamenx(ctx: Context, argv: list[bytes]) -> Any:
    """RENAMENX key newkey -> 1, or 0 when newkey exists"""
    return _rename(ctx, argv, True)


def _expire(ctx: Context, argv: list[bytes], unit_ms: int, absolute: bool) -> Any:
    name = argv[0].decode("ascii", "replace").lower()
    n = parse_int(argv[2])
    nx = xx = gt = lt = False
    for opt in argv[3:]:
        o = opt.upper()
        if o == b"NX":
            nx = True
        elif o == b"XX":
            xx = True
        elif o == b"GT":
            gt = True
        elif o == b"LT":
            lt = True
        else:
            raise CommandError(f"Unsupported option {opt.decode('utf-8', 'replace')}")
    if nx and (xx or gt or lt):
        raise CommandError("NX and XX, GT or LT options at the same time are not compatible")
    if gt and lt:
        raise CommandError("GT and LT options at the same time are not compatible")
    # Redis' checks, in its order (before the key is looked up): only a unit conversion or a
    # base time that overflows 64 bits is an error; any other time is taken, a past one
    # (even -2**63) deletes the key.
    base = 0 if absolute else ctx.txn.now
    if unit_ms == 1000:
        if not -_MAX_SECONDS <= n <= _MAX_SECONDS:
            raise CommandError(f"invalid expire time in '{name}' command")
        n *= 1000
    if n > INT64_MAX - base:
        raise CommandError(f"invalid expire time in '{name}' command")
    # The engine keeps expiries up to the year 33658 (MAX_EXPIRE_MS): a later one is kept as
    # that (Redis takes up to 2**63 - 1 ms), and compared as that by GT and LT.
    when = min(n + base, MAX_EXPIRE_MS)
    e = ctx.txn.lookup(ctx.db, argv[1])
    if e is None:
        return 0
    current = e.expire_ms  # 0: no expiry, which GT/LT treat as infinite
    if (nx and current) or (xx and not current):
        return 0
    if gt and (not current or when <= current):
        return 0
    if lt and current and when >= current:
        return 0
    if when <= ctx.txn.now:
        ctx.txn.delete(ctx.db, argv[1])
        ctx.txn.notify(ev.GENERIC, b"del", argv[1], ctx.db)
    else:
        ctx.txn.set_entry(ctx.db, argv[1], e, when)
        ctx.txn.notify(ev.GENERIC, b"expire", argv[1], ctx.db)
    return 1


@command("expire", -3, "write fast", "keyspace write fast", (1, 1, 1))
def expire(ctx: Context, argv: list[bytes]) -> Any:
    """EXPIRE key seconds [NX | XX | GT | LT]"""
    return _expire(ctx, argv, 1000, False)


@command("pexpire", -3, "write fast", "keyspace write fast", (1, 1, 1))
def pexpire(ctx: Context, argv: list[bytes]) -> Any:
    """PEXPIRE key milliseconds [NX | XX | GT | LT]"""
    return _expire(ctx, argv, 1, False)


@command("expireat", -3, "write fast", "keyspace write fast", (1, 1, 1))
def expireat(ctx: Context, argv: list[bytes]) -> Any:
    """EXPIREAT key unix-seconds [NX | XX | GT | LT]"""
    return _expire(ctx, argv, 1000, True)


@command("pexpireat", -3, "write fast", "keyspace write fast", (1, 1, 1))
def pexpireat(ctx: Context, argv: list[bytes]) -> Any:
    """PEXPIREAT key unix-milliseconds [NX | XX | GT | LT]"""
    return _expire(ctx, argv, 1, True)


def _ttl(ctx: Context, key: bytes, ms: bool, absolute: bool) -> int:
    e = ctx.txn.lookup(ctx.db, key)
    if e is None:
        return -2
    if not e.expire_ms:
        return -1
    value = e.expire_ms if absolute else max(e.expire_ms - ctx.txn.now, 0)
    return value if ms else (value + 500) // 1000


@command("ttl", 2, "readonly fast", "keyspace read fast", (1, 1, 1))
def ttl(ctx: Context, argv: list[bytes]) -> Any:
    """TTL key -> seconds left (rounded), -1 without expiry, -2 missing"""
    return _ttl(ctx, argv[1], False, False)


@command("pttl", 2, "readonly fast", "keyspace read fast", (1, 1, 1))
def pttl(ctx: Context, argv: list[bytes]) -> Any:
    """PTTL key -> milliseconds left"""
    return _ttl(ctx, argv[1], True, False)


@command("expiretime", 2, "readonly fast", "keyspace read fast", (1, 1, 1))
def expiretime(ctx: Context, argv: list[bytes]) -> Any:
    """EXPIRETIME key -> the expiry as unix seconds"""
    return _ttl(ctx, argv[1], False, True)


@command("pexpiretime", 2, "readonly fast", "keyspace read fast", (1, 1, 1))
def pexpiretime(ctx: Context, argv: list[bytes]) -> Any:
    """PEXPIRETIME key -> the expiry as unix milliseconds"""
    return _ttl(ctx, argv[1], True, True)


@command("persist", 2, "write fast", "keyspace write fast", (1, 1, 1))
def persist(ctx: Context, argv: list[bytes]) -> Any:
    """PERSIST key -> 1 when an expiry was removed"""
    e = ctx.txn.lookup(ctx.db, argv[1])
    if e is None or not e.expire_ms:
        return 0
    ctx.txn.set_entry(ctx.db, argv[1], e, 0)
    ctx.txn.notify(ev.GENERIC, b"persist", argv[1], ctx.db)
    return 1


@command("dbsize", 1, "readonly fast", "keyspace read fast")
def dbsize(ctx: Context, argv: list[bytes]) -> Any:
    """DBSIZE -> keys in the selected database: O(1), from its count record (expired keys
    the sweeper has not deleted yet count, as in Redis)"""
    return ctx.txn.key_count(ctx.db)


def _flush_mode(argv: list[bytes]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError(SYNTAX)


@command("flushdb", -1, "write", "keyspace write slow dangerous")
def flushdb(ctx: Context, argv: list[bytes]) -> Any:
    """FLUSHDB [ASYNC | SYNC]: empty the selected database (O(1), atomic)"""
    _flush_mode(argv)
    ctx.txn.flush(ctx.db)
    return OK


@command("flushall", -1, "write", "keyspace write slow dangerous")
def flushall(ctx: Context, argv: list[bytes]) -> Any:
    """FLUSHALL [ASYNC | SYNC]: empty every database (O(1), atomic)"""
    _flush_mode(argv)
    ctx.txn.flush(None)
    return OK



def _string_encoding(e: Entry) -> bytes:
    """Redis' names for a string's encoding: ``int`` for a 64-bit integer in canonical
    form, ``embstr`` up to 44 bytes, ``raw`` beyond (ShaleDB stores them all alike)."""
    if e.length <= 20:
        text = e.value
        try:
            parse_int(text)
            return b"int"
        except CommandError:
            pass
    return b"embstr" if e.length <= 44 else b"raw"


#: The most members OBJECT ENCODING reads to tell a sorted set's encoding (a
#: zset-max-listpack-entries above it answers ``skiplist`` for larger sets).
ENCODING_WALK_MAX: Final = 1024


def _zset_encoding(ctx: Context, e: Entry) -> bytes:
    """What Redis 7.0 would name for a sorted set of this size: ``listpack`` up to
    zset-max-listpack-entries members of at most zset-max-listpack-value bytes each,
    ``skiplist`` beyond (one encoding here, docs/format.md; Redis also keeps a set that
    grew past the bounds a skiplist after it shrinks, which this answer does not know)."""
    assert e.coll is not None
    hints = dict(ctx.services.config.encoding_hints)
    entries = hints.get("zset-max-listpack-entries", 128)
    value = hints.get("zset-max-listpack-value", 64)
    if e.coll.size > min(entries, ENCODING_WALK_MAX):
        return b"skiplist"
    for member, _ in ctx.txn.members(e.coll):
        if len(member) > value:
            return b"skiplist"
    return b"listpack"


@command("object", -2, "readonly", "keyspace read slow", (2, 2, 1),
         subcommands={"encoding": "keyspace read slow", "refcount": "keyspace read slow",
                      "freq": "keyspace read slow", "idletime": "keyspace read slow",
                      "help": "keyspace slow"})
def object_(ctx: Context, argv: list[bytes]) -> Any:
    """OBJECT ENCODING key | REFCOUNT key | IDLETIME key | FREQ key | HELP. A hash or set
    has one encoding here, ``hashtable`` (Redis switches from ``listpack``/``intset`` as
    they grow). No access times or counters are kept: IDLETIME is always 0 (the key looks
    just used), and FREQ answers Redis' error for a server without an LFU policy (there is
    no eviction here)."""
    sub = argv[1].lower()
    if sub == b"help" and len(argv) == 2:
        return [b"OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                b"ENCODING <key>", b"    Return the kind of internal representation used in "
                b"order to store the value associated with a <key>.", b"REFCOUNT <key>",
                b"    Return the number of references of the value associated with the "
                b"specified <key>.", b"FREQ <key>", b"    Return the access frequency index "
                b"of the key <key>.", b"IDLETIME <key>", b"    Return the idle time of the key "
                b"<key>.", b"HELP", b"    Print this help."]
    if sub not in (b"encoding", b"refcount", b"freq", b"idletime") or len(argv) != 3:
        raise CommandError(f"unknown subcommand or wrong number of arguments for "
                           f"'{argv[1].decode('utf-8', 'replace')}'. Try OBJECT HELP.")
    e = ctx.txn.lookup(ctx.db, argv[2])
    if e is None:
        return None
    if sub == b"refcount":
        return 1
    if sub == b"idletime":
        return 0  # not tracked (docs/design.md)
    if sub == b"freq":
        raise CommandError("An LFU maxmemory policy is not selected, access frequency not "
                           "tracked. Please note that when switching between policies at "
                           "runtime LRU and LFU data will take some time to adjust.")
    if e.coll is None:
        return _string_encoding(e)
    if e.coll.kind == TAG_ZSET:
        return _zset_encoding(ctx, e)
    if e.coll.kind == TAG_STREAM:
        return b"stream"
    return b"quicklist" if e.coll.kind == TAG_LIST else b"hashtable"


def _memory_report(ctx: Context, stats: bool) -> Any:
    # MEMORY STATS / DOCTOR: the process's resident memory (a Python process has no
    # allocator totals; INFO memory says the same) and the Lua scripts' share.
    rss = rss_bytes()
    peak = max(peak_rss_bytes(), rss)
    scripts = ctx.services.scripts
    if stats:
        return {"peak.allocated": peak, "total.allocated": rss,
                "lua.caches": scripts.cache_bytes, "lua.memory": scripts.memory_used()}
    return (f"Resident memory {human_bytes(rss)} (peak {human_bytes(peak)}); ShaleDB keeps its "
            "data on disk, so memory grows with the memtable, the block cache and the "
            "clients' buffers: see INFO memory and INFO clients.\n").encode()


#: What MEMORY USAGE adds per key and per member: the header and the engine's per-entry
#: cost, roughly (an estimate, as Redis' own is).
_KEY_OVERHEAD: Final = 64
_MEMBER_OVERHEAD: Final = 32


@command("memory", -2, "readonly", "read slow", (2, 2, 1),
         subcommands={"usage": "read slow", "help": "slow", "doctor": "slow",
                      "stats": "slow"})
def memory(ctx: Context, argv: list[bytes]) -> Any:
    """MEMORY USAGE key [SAMPLES count] -> an estimate of the bytes the key takes on disk
    before compression (a hash or set: the header plus its size times the mean size of up
    to ``count`` members, 5 by default, 0 for all, as Redis samples); MEMORY HELP"""
    sub = argv[1].lower()
    if sub == b"help" and len(argv) == 2:
        return [b"MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                b"USAGE <key> [SAMPLES <count>]",
                b"    Return memory in bytes used by <key> and its value.",
                b"STATS", b"    Return information about the memory usage of the server.",
                b"DOCTOR", b"    Return memory problems reports.", b"HELP",
                b"    Print this help."]
    if sub in (b"stats", b"doctor") and len(argv) == 2:
        return _memory_report(ctx, sub == b"stats")
    if sub != b"usage" or len(argv) not in (3, 5):
        raise CommandError(f"unknown subcommand or wrong number of arguments for "
                           f"'{argv[1].decode('utf-8', 'replace')}'. Try MEMORY HELP.")
    samples = 5
    if len(argv) == 5:
        if argv[3].upper() != b"SAMPLES":
            raise CommandError(SYNTAX)
        samples = parse_int(argv[4])
        if samples < 0:
            raise CommandError(SYNTAX)
    key = argv[2]
    e = ctx.txn.lookup(ctx.db, key)
    if e is None:
        return None
    base = _KEY_OVERHEAD + len(key)
    if e.coll is None:
        return base + e.length
    seen = total = 0
    for field, value in ctx.txn.members(e.coll):
        total += len(field) + len(value) + _MEMBER_OVERHEAD
        seen += 1
        if samples and seen >= samples:
            break
    return base + (total * e.coll.size // seen if seen else 0)
