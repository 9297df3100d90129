"""Bitmap commands on strings: SETBIT GETBIT BITCOUNT BITPOS BITOP BITFIELD BITFIELD_RO, and
LCS. Replies and error messages are Redis 7's.

Bit ``n`` of a string is bit ``7 - n % 8`` of byte ``n // 8`` (the most significant bit of
the first byte is bit 0), as in Redis. Bits past the end of the string read as 0; a write
past the end zero-pads the string first (and, as in Redis, a BITFIELD that writes pads the
string to its farthest write before it runs, even when an OVERFLOW FAIL then skips it).

Costs on a chunked string (over 64 KiB, :mod:`shaledb.server.keyspace.keyspace`): GETBIT
and BITFIELD GET read the one or two chunks their bytes lie in; SETBIT and BITFIELD SET /
INCRBY rewrite only those chunks (plus, when the string grows, the chunks of the zero gap,
which have to be written anyway); BITCOUNT and BITPOS read their range one chunk at a time
(memory does not grow with the string); BITOP reads its sources a chunk-sized slice at a
time and writes its result whole (at most ``proto-max-bulk-len`` bytes).

LCS keeps a bit-vector per byte of its first string (the Allison-Dix / Hyyrö bit-parallel
algorithm: one big-integer step per row instead of one Python step per cell) and refuses
inputs whose table would pass :data:`LCS_MAX_CELLS` cells, or whose first string has more
than :data:`LCS_MAX_ROWS` bytes, with Redis' error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from ..errors import CommandError
from ..keyspace import notify as ev
from ..keyspace.keyspace import Entry
from ..keyspace.values import CHUNK_SIZE
from . import SYNTAX, CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command

BIT_OFFSET_ERROR: Final = "bit offset is not an integer or out of range"
#: The most cells (``(len(a) + 1) * (len(b) + 1)``) an LCS table may have: 2^26, 8 MiB of
#: bit-vectors, well under a second of work.
LCS_MAX_CELLS: Final = 1 << 26
#: The most bytes of LCS's first string (one Python step each, forward and back).
LCS_MAX_ROWS: Final = 1 << 16
LCS_TOO_BIG: Final = "Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len"


def _bit_offset(ctx: Context, arg: bytes, *, hash_ok: bool = False, bits: int = 1) -> int:
    """A bit offset as Redis' getBitOffsetFromArgument reads it: ``#n`` (BITFIELD) means
    ``n * bits``; refused when negative or when its byte would pass proto-max-bulk-len
    (Redis' limit, 512 MiB there, 32 MiB here by default)."""
    use_hash = hash_ok and arg[:1] == b"#"
    n = parse_int(arg[1:] if use_hash else arg, BIT_OFFSET_ERROR)
    if use_hash:
        n *= bits
    if n < 0 or (n >> 3) >= ctx.services.config.proto_max_bulk_len:
        raise CommandError(BIT_OFFSET_ERROR)
    return n


def _string(ctx: Context, key: bytes) -> Entry | None:
    return ctx.txn.get(ctx.db, key)


def _pieces(e: Entry, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` of ``e``'s bytes ``start`` .. ``stop`` (exclusive), one chunk's
    worth at a time, so a walk over a large string holds one chunk."""
    if e.chunks is None:
        if start < stop:
            yield start, e.read(start, stop)
        return
    pos = start
    while pos < stop:
        end = min(stop, (pos // CHUNK_SIZE + 1) * CHUNK_SIZE)
        yield pos, e.read(pos, end)
        pos = end


def _read_bytes(e: Entry | None, start: int, stop: int) -> bytes:
    """Bytes ``start`` .. ``stop`` of ``e``, zero past its end."""
    n = 0 if e is None else e.length
    data = b"" if e is None or start >= n else e.read(start, min(stop, n))
    return data + bytes(stop - start - len(data))


def _grow(ctx: Context, key: bytes, e: Entry | None, byte: int) -> Entry:
    """Redis' lookupStringForBitCommand: ``key``'s string made at least ``byte + 1`` bytes
    long (created, or zero-padded: only the new chunks are written)."""
    n = 0 if e is None else e.length
    if e is None or n < byte + 1:
        if byte + 1 > ctx.services.config.proto_max_bulk_len:
            raise CommandError("string exceeds maximum allowed size (proto-max-bulk-len)")
        ctx.txn.setrange(ctx.db, key, e, n, bytes(byte + 1 - n))
        e = ctx.txn.get(ctx.db, key)
        assert e is not None
    return e


def _write(ctx: Context, key: bytes, offset: int, data: bytes) -> None:
    """Overwrite bytes at ``offset`` of ``key``'s (already long enough) string."""
    e = ctx.txn.get(ctx.db, key)
    ctx.txn.setrange(ctx.db, key, e, offset, data)


@command("setbit", 4, "write denyoom", "write bitmap slow", (1, 1, 1))
def setbit(ctx: Context, argv: list[bytes]) -> Any:
    """SETBIT key offset 0|1 -> the bit's old value"""
    offset = _bit_offset(ctx, argv[2])
    if argv[3] not in (b"0", b"1"):
        raise CommandError("bit is not an integer or out of range")
    on = argv[3] == b"1"
    before = _string(ctx, argv[1])
    e = _grow(ctx, argv[1], before, offset >> 3)
    byte = offset >> 3
    old = e.read(byte, byte + 1)[0]
    mask = 1 << (7 - (offset & 7))
    new = (old | mask) if on else (old & ~mask)
    if new != old:
        _write(ctx, argv[1], byte, bytes((new,)))
    if new != old or e is not before:  # the bit changed, or the string was made or grown
        ctx.txn.notify(ev.STRING, b"setbit", argv[1], ctx.db)
    return 1 if old & mask else 0


@command("getbit", 3, "readonly fast", "read bitmap fast", (1, 1, 1))
def getbit(ctx: Context, argv: list[bytes]) -> Any:
    """GETBIT key offset"""
    offset = _bit_offset(ctx, argv[2])
    e = _string(ctx, argv[1])
    byte = offset >> 3
    if e is None or byte >= e.length:
        return 0
    return (e.read(byte, byte + 1)[0] >> (7 - (offset & 7))) & 1


def _bit_range(argv: list[bytes], first: int, length: int
               ) -> tuple[int, int, bool] | None:
    """The inclusive bit range ``[lo, hi]`` BITCOUNT/BITPOS's ``start end [BYTE|BIT]``
    (from ``argv[first]``) name in a string of ``length`` bytes, whether an end was given;
    None when the range is empty."""
    start = parse_int(argv[first])
    end_given = len(argv) > first + 1
    end = parse_int(argv[first + 1]) if end_given else -1
    isbit = False
    if len(argv) > first + 2:
        unit = argv[first + 2].upper()
        if unit == b"BIT":
            isbit = True
        elif unit != b"BYTE":
            raise CommandError(SYNTAX)
    total = length * 8 if isbit else length
    if start < 0 and end < 0 and start > end:
        return None
    if start < 0:
        start = total + start
    if end < 0:
        end = total + end
    start, end = max(start, 0), max(end, 0)
    end = min(end, total - 1)
    if start > end:
        return None
    if not isbit:
        start, end = start * 8, end * 8 + 7
    return start, end, end_given


def _popcount(data: bytes) -> int:
    return int.from_bytes(data, "big").bit_count()


@command("bitcount", -2, "readonly", "read bitmap slow", (1, 1, 1))
def bitcount(ctx: Context, argv: list[bytes]) -> Any:
    """BITCOUNT key [start end [BYTE | BIT]]"""
    if len(argv) not in (2, 4, 5):
        raise CommandError(SYNTAX)
    e = _string(ctx, argv[1])
    if e is None:
        return 0
    length = e.length
    if len(argv) == 2:
        lo, hi = 0, length * 8 - 1
    else:
        r = _bit_range(argv, 2, length)
        if r is None:
            return 0
        lo, hi, _ = r
    if lo > hi:
        return 0
    count = 0
    for _pos, data in _pieces(e, lo >> 3, (hi >> 3) + 1):
        count += _popcount(data)
    # The edge bytes' bits outside the range.
    head = e.read(lo >> 3, (lo >> 3) + 1)[0] >> (8 - (lo & 7)) if lo & 7 else 0
    tail = e.read(hi >> 3, (hi >> 3) + 1)[0] & ((1 << (7 - (hi & 7))) - 1)
    return count - head.bit_count() - tail.bit_count()


@command("bitpos", -3, "readonly", "read bitmap slow", (1, 1, 1))
def bitpos(ctx: Context, argv: list[bytes]) -> Any:
    """BITPOS key 0|1 [start [end [BYTE | BIT]]] -> the first such bit, or -1"""
    if len(argv) > 6:
        raise CommandError(SYNTAX)
    if argv[2] not in (b"0", b"1") and parse_int(argv[2]) not in (0, 1):
        raise CommandError("The bit argument must be 1 or 0.")
    bit = int(argv[2])
    e = _string(ctx, argv[1])
    if e is None:
        return -1 if bit else 0
    length = e.length
    if len(argv) == 3:
        lo, hi, end_given = 0, length * 8 - 1, False
    else:
        r = _bit_range(argv, 3, length)
        if r is None:
            return -1
        lo, hi, end_given = r
    if lo > hi:
        return -1
    for pos, data in _pieces(e, lo >> 3, (hi >> 3) + 1):
        n = int.from_bytes(data, "big")
        width = len(data) * 8
        base = pos * 8
        # Only the bits of [lo, hi] in this piece count: the others are made !bit.
        a, b = max(lo - base, 0), min(hi - base, width - 1)
        if a > b:
            continue
        window = (1 << (b - a + 1)) - 1
        field = (n >> (width - 1 - b)) & window
        if not bit:
            field ^= window
        if field:
            return base + b - (field.bit_length() - 1)
    if bit or end_given:
        return -1
    return hi + 1  # looking for a 0 with no end: the string is padded with zeros


@command("bitop", -4, "write denyoom", "write bitmap slow", (2, -1, 1))
def bitop(ctx: Context, argv: list[bytes]) -> Any:
    """BITOP AND | OR | XOR | NOT destkey key [key ...] -> the result's length (missing keys
    are empty strings; an empty result deletes destkey)"""
    op = argv[1].upper()
    if op not in (b"AND", b"OR", b"XOR", b"NOT"):
        raise CommandError(SYNTAX)
    sources = argv[3:]
    if op == b"NOT" and len(sources) != 1:
        raise CommandError("BITOP NOT must be called with a single source key.")
    entries = [_string(ctx, k) for k in sources]  # WRONGTYPE before any work
    lengths = [0 if e is None else e.length for e in entries]
    size = max(lengths)
    if size == 0:
        if ctx.txn.delete(ctx.db, argv[2]):
            ctx.txn.notify(ev.GENERIC, b"del", argv[2], ctx.db)
        return 0
    parts: list[bytes] = []
    for lo in range(0, size, CHUNK_SIZE):
        hi = min(size, lo + CHUNK_SIZE)
        width = hi - lo
        acc: int | None = None
        for e in entries:
            v = int.from_bytes(_read_bytes(e, lo, hi), "big")
            if acc is None:
                acc = v
            elif op == b"AND":
                acc &= v
            elif op == b"OR":
                acc |= v
            else:
                acc ^= v
        assert acc is not None
        if op == b"NOT":
            acc ^= (1 << (width * 8)) - 1
        parts.append(acc.to_bytes(width, "big"))
    ctx.txn.set(ctx.db, argv[2], b"".join(parts))
    ctx.txn.notify(ev.STRING, b"set", argv[2], ctx.db)
    return size


# -- BITFIELD --------------------------------------------------------------------------------

_WRAP, _SAT, _FAIL = 0, 1, 2
BITFIELD_TYPE_ERROR: Final = ("Invalid bitfield type. Use something like i16 u8. Note that "
                              "u64 is not supported but i64 is.")


def _bf_type(arg: bytes) -> tuple[bool, int]:
    """``(signed, bits)`` of ``i1``..``i64`` / ``u1``..``u63``."""
    kind = arg[:1].lower()
    digits = arg[1:]
    if kind not in (b"i", b"u") or not digits.isdigit() or len(digits) > 2:
        raise CommandError(BITFIELD_TYPE_ERROR)
    bits = int(digits)
    signed = kind == b"i"
    if bits < 1 or (signed and bits > 64) or (not signed and bits > 63):
        raise CommandError(BITFIELD_TYPE_ERROR)
    return signed, bits


def _get_field(data: bytes, shift: int, bits: int, signed: bool) -> int:
    """The ``bits``-bit field that starts ``shift`` bits into ``data``."""
    v = (int.from_bytes(data, "big") >> (len(data) * 8 - shift - bits)) & ((1 << bits) - 1)
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v


def _set_field(data: bytes, shift: int, bits: int, value: int) -> bytes:
    width = len(data) * 8
    pos = width - shift - bits
    mask = ((1 << bits) - 1) << pos
    n = (int.from_bytes(data, "big") & ~mask) | ((value & ((1 << bits) - 1)) << pos)
    return n.to_bytes(len(data), "big")


def _overflow(value: int, signed: bool, bits: int, mode: int) -> int | None:
    """``value`` (the exact result) fitted to the field as Redis' checkSigned/Unsigned
    BitfieldOverflow do: wrapped, saturated, or None (FAIL) when out of range."""
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    if lo <= value <= hi:
        return value
    if mode == _FAIL:
        return None
    if mode == _SAT:
        return hi if value > hi else lo
    return ((value - lo) % (1 << bits)) + lo


def _bitfield(ctx: Context, argv: list[bytes], readonly: bool) -> Any:
    ops: list[tuple[bytes, bool, int, int, int, int]] = []  # op, signed, bits, off, arg, mode
    mode = _WRAP
    i = 2
    highest = -1
    while i < len(argv):
        op = argv[i].upper()
        left = len(argv) - i - 1
        if op == b"GET" and left >= 2:
            signed, bits = _bf_type(argv[i + 1])
            off = _bit_offset(ctx, argv[i + 2], hash_ok=True, bits=bits)
            ops.append((op, signed, bits, off, 0, mode))
            i += 3
        elif op in (b"SET", b"INCRBY") and left >= 3:
            signed, bits = _bf_type(argv[i + 1])
            off = _bit_offset(ctx, argv[i + 2], hash_ok=True, bits=bits)
            arg = parse_int(argv[i + 3])
            if readonly:
                raise CommandError("BITFIELD_RO only supports the GET subcommand")
            ops.append((op, signed, bits, off, arg, mode))
            highest = max(highest, off + bits - 1)
            i += 4
        elif op == b"OVERFLOW" and left >= 1:
            kind = argv[i + 1].upper()
            if kind == b"WRAP":
                mode = _WRAP
            elif kind == b"SAT":
                mode = _SAT
            elif kind == b"FAIL":
                mode = _FAIL
            else:
                raise CommandError("Invalid OVERFLOW type specified")
            i += 2
        else:
            if readonly and op in (b"SET", b"INCRBY"):
                raise CommandError("BITFIELD_RO only supports the GET subcommand")
            raise CommandError(SYNTAX)
    key = argv[1]
    e = _string(ctx, key)
    if highest >= 0:
        e = _grow(ctx, key, e, highest >> 3)
    out: list[int | None] = []
    changed = False
    for op, signed, bits, off, arg, m in ops:
        first, last = off >> 3, (off + bits - 1) >> 3
        data = _read_bytes(e, first, last + 1)
        shift = off - first * 8
        old = _get_field(data, shift, bits, signed)
        if op == b"GET":
            out.append(old)
            continue
        if op == b"SET":
            # Redis reads the 64-bit argument as the field's type (u8 SET -1 is 2^64 - 1).
            exact = arg if signed else arg % (1 << 64)
            if signed and bits == 64:
                exact = arg
            new = _overflow(exact, signed, bits, m)
            reply: int | None = old
        else:
            new = _overflow(old + arg, signed, bits, m)
            reply = new
        if new is None:
            out.append(None)
            continue
        _write(ctx, key, first, _set_field(data, shift, bits, new))
        changed = True
        e = _string(ctx, key)
        out.append(reply)
    if changed:
        ctx.txn.notify(ev.STRING, b"setbit", key, ctx.db)
    return out


@command("bitfield", -2, "write denyoom", "write bitmap slow", (1, 1, 1))
def bitfield(ctx: Context, argv: list[bytes]) -> Any:
    """BITFIELD key [GET type offset] [SET type offset value] [INCRBY type offset incr]
    [OVERFLOW WRAP | SAT | FAIL] ... (``type`` i1..i64 or u1..u63; ``#n`` offsets count
    fields)"""
    return _bitfield(ctx, argv, False)


@command("bitfield_ro", -2, "readonly fast", "read bitmap fast", (1, 1, 1))
def bitfield_ro(ctx: Context, argv: list[bytes]) -> Any:
    """BITFIELD_RO key [GET type offset ...]"""
    return _bitfield(ctx, argv, True)


# -- LCS -------------------------------------------------------------------------------------

def lcs_rows(a: bytes, b: bytes) -> list[int]:
    """The bit-parallel LCS table of ``a`` (rows) and ``b`` (columns): row ``i`` is a
    bit-vector over ``b`` whose bit ``j`` is 0 exactly where ``LCS(a[:i], b[:j+1])`` is one
    more than ``LCS(a[:i], b[:j])``, so ``LCS(a[:i], b[:j])`` is the number of zero bits
    below bit ``j`` (Allison-Dix / Hyyrö)."""
    m = len(b)
    full = (1 << m) - 1
    masks: dict[int, int] = {}
    for c in set(a):
        # Bit j set where b[j] == c: one C-speed parse of a reversed 0/1 string.
        table = bytes(0x31 if x == c else 0x30 for x in range(256))
        masks[c] = int(b.translate(table)[::-1] or b"0", 2)
    v = full
    rows = [v]
    for c in a:
        u = v & masks[c]
        v = ((v + u) | (v - u)) & full
        rows.append(v)
    return rows


def lcs_walk(a: bytes, b: bytes, rows: list[int]
             ) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """The LCS string and its matching ranges ``(a_start, a_end, b_start, b_end)``, from
    the end back, as Redis' lcsCommand walks its table (the same choices on ties)."""
    m = len(b)
    full = (1 << m) - 1

    def lcs(i: int, j: int) -> int:
        return ((~rows[i]) & full & ((1 << j) - 1)).bit_count()

    alen = len(a)
    i, j = alen, m
    out = bytearray()
    ranges: list[tuple[int, int, int, int]] = []
    a_start = a_end = b_start = b_end = alen
    in_range = False
    while i > 0 and j > 0:
        emit = False
        if a[i - 1] == b[j - 1]:
            out.append(a[i - 1])
            if not in_range:
                a_start = a_end = i - 1
                b_start = b_end = j - 1
                in_range = True
            elif a_start == i and b_start == j:
                a_start -= 1
                b_start -= 1
            else:
                emit = True
            if a_start == 0 or b_start == 0:
                emit = True
            i -= 1
            j -= 1
        else:
            if lcs(i - 1, j) > lcs(i, j - 1):
                i -= 1
            else:
                j -= 1
            if in_range:
                emit = True
        if emit:
            ranges.append((a_start, a_end, b_start, b_end))
            in_range = False
    out.reverse()
    return bytes(out), ranges


@command("lcs", -3, "readonly", "read string slow", (1, 2, 1))
def lcs_(ctx: Context, argv: list[bytes]) -> Any:
    """LCS key1 key2 [LEN] [IDX] [MINMATCHLEN len] [WITHMATCHLEN]"""
    getlen = getidx = withmatchlen = False
    minlen = 0
    i = 3
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"IDX":
            getidx = True
        elif opt == b"LEN":
            getlen = True
        elif opt == b"WITHMATCHLEN":
            withmatchlen = True
        elif opt == b"MINMATCHLEN" and i + 1 < len(argv):
            i += 1
            minlen = max(parse_int(argv[i]), 0)
        else:
            raise CommandError(SYNTAX)
        i += 1
    ea, eb = ctx.txn.lookup(ctx.db, argv[1]), ctx.txn.lookup(ctx.db, argv[2])
    if (ea is not None and ea.coll is not None) or (eb is not None and eb.coll is not None):
        raise CommandError("The specified keys must contain string values")
    if getlen and getidx:
        raise CommandError("If you want both the length and indexes, please just use IDX.")
    alen = 0 if ea is None else ea.length
    blen = 0 if eb is None else eb.length
    if (alen + 1) * (blen + 1) > LCS_MAX_CELLS or alen > LCS_MAX_ROWS:
        raise CommandError(LCS_TOO_BIG)
    a = b"" if ea is None else ea.value
    b = b"" if eb is None else eb.value
    rows = lcs_rows(a, b)
    length = len(b) - rows[-1].bit_count()
    if getlen:
        return length
    text, ranges = lcs_walk(a, b, rows)
    if not getidx:
        return text
    matches: list[Any] = []
    for a0, a1, b0, b1 in ranges:
        n = a1 - a0 + 1
        if minlen == 0 or n >= minlen:
            item: list[Any] = [[a0, a1], [b0, b1]]
            if withmatchlen:
                item.append(n)
            matches.append(item)
    return {b"matches": matches, b"len": length}  # a map in RESP3, a flat array in RESP2
