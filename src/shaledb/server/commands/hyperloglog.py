"""HyperLogLog: PFADD PFCOUNT PFMERGE, on strings in Redis' own HLL format, so a value
copied to or from a real Redis (GET/SET, DUMP/RESTORE) is the same sketch there.

The format (Redis' hyperloglog.c): a 16-byte header -- ``HYLL``, the encoding (0 dense,
1 sparse), three unused bytes, the cached cardinality (8 bytes, little-endian; bit 7 of
its last byte set = stale) -- then 16384 registers (P = 14, 64-bit MurmurHash64A with seed
``0xadc83b19``, Q = 50):

- *dense*: 6 bits per register, little-endian bit order, 12,288 bytes;
- *sparse*: run-length opcodes: ``00xxxxxx`` (``x + 1`` zero registers), ``01xxxxxx
  yyyyyyyy`` (``(x << 8 | y) + 1`` zero registers), ``1vvvvvxx`` (``x + 1`` registers of
  value ``v + 1``, 1..32), covering exactly 16384 registers.

A new key is sparse; it turns dense when a register needs more than 32, or its sparse
form would pass :data:`SPARSE_MAX_BYTES` (Redis' ``hll-sparse-max-bytes`` default). This
module writes the canonical sparse form of its registers (runs as long as the opcodes
allow), which may differ byte for byte from the one Redis' in-place edits leave, and which
Redis reads as the same registers. The cardinality is Redis 7's estimator (Ertl's
improved raw estimator), so both servers answer the same count for the same registers.
PFCOUNT of one key stores the count in the header, as Redis does.

A value is at most 12,304 bytes, so every command works on whole values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Final

from ..errors import CommandError
from ..keyspace import notify as ev
from ..net.protocol import OK
from . import CommandFamily, Context

FAMILY = CommandFamily()
command = FAMILY.command

P: Final = 14
Q: Final = 64 - P
REGISTERS: Final = 1 << P
DENSE_BYTES: Final = REGISTERS * 6 // 8
HEADER: Final = 16
MAGIC: Final = b"HYLL"
DENSE, SPARSE = 0, 1
#: Redis' hll-sparse-max-bytes default: a larger sparse value turns dense.
SPARSE_MAX_BYTES: Final = 3000
SPARSE_VAL_MAX: Final = 32
_M64: Final = (1 << 64) - 1
_ALPHA_INF: Final = 0.721347520444481703680

NOT_HLL: Final = CommandError("Key is not a valid HyperLogLog string value.", "WRONGTYPE")
CORRUPT: Final = "Corrupted HLL object detected"


def murmur64a(data: bytes, seed: int = 0xADC83B19) -> int:
    """MurmurHash64A, as Redis hashes HLL elements."""
    m, r = 0xC6A4A7935BD1E995, 47
    n = len(data)
    h = (seed ^ (n * m)) & _M64
    end = n - (n & 7)
    for i in range(0, end, 8):
        k = (int.from_bytes(data[i:i + 8], "little") * m) & _M64
        k ^= k >> r
        k = (k * m) & _M64
        h ^= k
        h = (h * m) & _M64
    rest = n & 7
    if rest:
        h ^= int.from_bytes(data[end:], "little")
        h = (h * m) & _M64
    h ^= h >> r
    h = (h * m) & _M64
    h ^= h >> r
    return h


def pattern(element: bytes) -> tuple[int, int]:
    """``(register, run)``: the register ``element`` hashes to and the length of the
    zero run (plus one) in the rest of its hash, at most Q + 1."""
    h = murmur64a(element)
    index = h & (REGISTERS - 1)
    h = (h >> P) | (1 << Q)
    return index, (h & -h).bit_length()


def _table(fn: Any) -> bytes:
    return bytes(fn(v) & 0xFF for v in range(256))


_LOW6, _HIGH2 = _table(lambda v: v & 63), _table(lambda v: v >> 6)
_LOW4_UP2, _HIGH4 = _table(lambda v: (v & 15) << 2), _table(lambda v: v >> 4)
_LOW2_UP4, _HIGH6 = _table(lambda v: (v & 3) << 4), _table(lambda v: v >> 2)
_R_LOW2_UP6, _R_HIGH4 = _table(lambda v: (v & 3) << 6), _table(lambda v: v >> 2)
_R_LOW4_UP4, _R_HIGH2 = _table(lambda v: (v & 15) << 4), _table(lambda v: v >> 4)
_R_UP2 = _table(lambda v: v << 2)


def _add(a: bytes, b: bytes) -> bytes:
    """Byte-wise ``a + b`` where no byte sum passes 255 (so one big-integer addition has no
    carry between bytes): how the 6-bit fields are packed and unpacked at C speed."""
    n = len(a)
    return (int.from_bytes(a, "big") + int.from_bytes(b, "big")).to_bytes(n, "big")


def _decode_dense(body: bytes) -> bytearray:
    """The 16384 registers (one byte each) of a dense body: every 3 bytes hold 4."""
    b0, b1, b2 = body[0::3], body[1::3], body[2::3]
    regs = bytearray(REGISTERS)
    regs[0::4] = b0.translate(_LOW6)
    regs[1::4] = _add(b0.translate(_HIGH2), b1.translate(_LOW4_UP2))
    regs[2::4] = _add(b1.translate(_HIGH4), b2.translate(_LOW2_UP4))
    regs[3::4] = b2.translate(_HIGH6)
    return regs


def _encode_dense(regs: bytearray) -> bytes:
    r0, r1, r2, r3 = (bytes(regs[k::4]) for k in range(4))
    out = bytearray(DENSE_BYTES)
    out[0::3] = _add(r0, r1.translate(_R_LOW2_UP6))
    out[1::3] = _add(r1.translate(_R_HIGH4), r2.translate(_R_LOW4_UP4))
    out[2::3] = _add(r2.translate(_R_HIGH2), r3.translate(_R_UP2))
    return bytes(out)


def _decode_sparse(body: bytes) -> bytearray | None:
    """The registers of a sparse body, or None when its runs do not cover exactly the
    16384 registers (a corrupt value)."""
    regs = bytearray()
    i, n = 0, len(body)
    while i < n:
        op = body[i]
        if op & 0x80:
            regs += bytes((((op >> 2) & 31) + 1,)) * ((op & 3) + 1)
            i += 1
        elif op & 0x40:
            if i + 1 >= n:
                return None
            regs += bytes((((op & 63) << 8) | body[i + 1]) + 1)
            i += 2
        else:
            regs += bytes((op & 63) + 1)
            i += 1
        if len(regs) > REGISTERS:
            return None
    return regs if len(regs) == REGISTERS else None


#: Stretches of non-zero registers, found at C speed (the zero runs are the gaps).
_NONZERO: Final = re.compile(rb"[^\x00]+")


def _zeros(out: bytearray, run: int) -> None:
    while run > 0:
        take = min(run, 16384)
        if take > 64:
            out += bytes((0x40 | ((take - 1) >> 8), (take - 1) & 0xFF))
        else:
            out.append(take - 1)
        run -= take


def _encode_sparse(regs: bytearray) -> bytes | None:
    """The canonical sparse body of ``regs``, or None when a register is over 32 or the
    body would pass SPARSE_MAX_BYTES. Python steps only over the non-zero registers."""
    if max(regs) > SPARSE_VAL_MAX:
        return None
    out = bytearray()
    limit = SPARSE_MAX_BYTES - HEADER
    pos = 0
    for m in _NONZERO.finditer(regs):
        a, b = m.span()
        _zeros(out, a - pos)
        i = a
        while i < b:
            v = regs[i]
            j = i + 1
            while j < b and j - i < 4 and regs[j] == v:
                j += 1
            out.append(0x80 | ((v - 1) << 2) | (j - i - 1))
            i = j
        if len(out) > limit:
            return None
        pos = b
    _zeros(out, REGISTERS - pos)
    return None if len(out) > limit else bytes(out)


class Sketch:
    """One HLL value decoded: its registers, the encoding it was read in, its header's
    cache bytes."""

    __slots__ = ("regs", "encoding", "card")

    regs: bytearray | None

    def __init__(self, regs: bytearray | None, encoding: int, card: bytes) -> None:
        self.regs = regs
        self.encoding = encoding
        self.card = card

    @classmethod
    def new(cls) -> Sketch:
        return cls(bytearray(REGISTERS), SPARSE, bytes(8))

    @classmethod
    def parse(cls, value: bytes) -> Sketch:
        """The sketch of a stored value; WRONGTYPE when it is no HLL (Redis'
        isHLLObjectOrReply), INVALIDOBJ when its sparse runs are corrupt."""
        if len(value) < HEADER or value[:4] != MAGIC or value[4] > 1:
            raise NOT_HLL
        encoding = value[4]
        body = value[HEADER:]
        regs: bytearray | None
        if encoding == DENSE:
            if len(body) != DENSE_BYTES:
                raise NOT_HLL
            regs = _decode_dense(body)
        else:
            # None when corrupt: PFCOUNT still answers a valid cached count, as Redis.
            regs = _decode_sparse(body)
        return cls(regs, encoding, value[8:16])

    def registers(self) -> bytearray:
        """The registers; INVALIDOBJ when the sparse runs were corrupt."""
        if self.regs is None:
            raise CommandError(CORRUPT, "INVALIDOBJ")
        return self.regs

    def encode(self) -> bytes:
        """The value: sparse while it was sparse and still fits, dense otherwise."""
        regs = self.registers()
        if self.encoding == SPARSE:
            body = _encode_sparse(regs)
            if body is not None:
                return MAGIC + bytes((SPARSE, 0, 0, 0)) + self.card + body
            self.encoding = DENSE
        return MAGIC + bytes((DENSE, 0, 0, 0)) + self.card + _encode_dense(regs)

    def add(self, elements: Iterable[bytes]) -> bool:
        changed = False
        regs = self.registers()
        for element in elements:
            index, run = pattern(element)
            if regs[index] < run:
                regs[index] = run
                changed = True
        if changed:
            self.invalidate()
        return changed

    def invalidate(self) -> None:
        self.card = self.card[:7] + bytes((self.card[7] | 0x80,))

    def cached(self) -> int | None:
        return None if self.card[7] & 0x80 else int.from_bytes(self.card, "little")


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_prime = z
        z += x * y
        y += y
        if z_prime == z:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1 - x
    while True:
        x = math.sqrt(x)
        z_prime = z
        y *= 0.5
        z -= (1 - x) ** 2 * y
        if z_prime == z:
            return z / 3


def _max(a: bytearray, b: bytearray) -> bytearray:
    """Register-wise maximum (a Python loop only over the registers ``b`` raises)."""
    if not any(b):
        return a
    out = bytearray(a)
    for i, v in enumerate(b):
        if v > out[i]:
            out[i] = v
    return out


def cardinality(regs: bytearray) -> int:
    """Redis 7's hllCount: Ertl's estimator over the register histogram."""
    histo = [regs.count(v) for v in range(64)]
    m = float(REGISTERS)
    z = m * _tau((m - histo[Q + 1]) / m)
    for j in range(Q, 0, -1):
        z += histo[j]
        z *= 0.5
    z += m * _sigma(histo[0] / m)
    e = _ALPHA_INF * m * m / z
    return int(math.floor(e + 0.5))  # llroundl: half away from zero (e >= 0)


def _read(ctx: Context, key: bytes) -> tuple[Any, Sketch] | None:
    e = ctx.txn.get(ctx.db, key)
    if e is None:
        return None
    if e.length > HEADER + DENSE_BYTES:  # not read whole to find that out
        raise NOT_HLL
    return e, Sketch.parse(e.value)


@command("pfadd", -2, "write denyoom fast", "write hyperloglog fast", (1, 1, 1))
def pfadd(ctx: Context, argv: list[bytes]) -> Any:
    """PFADD key [element ...] -> 1 when a register changed (or the key was created)"""
    found = _read(ctx, argv[1])
    if found is None:
        sketch, expire, created = Sketch.new(), 0, True
    else:
        sketch, expire, created = found[1], found[0].expire_ms, False
    changed = sketch.add(argv[2:])
    if not (changed or created):
        return 0
    ctx.txn.set(ctx.db, argv[1], sketch.encode(), expire)
    ctx.txn.notify(ev.STRING, b"pfadd", argv[1], ctx.db)
    return 1


@command("pfcount", -2, "readonly", "read hyperloglog slow", (1, -1, 1))
def pfcount(ctx: Context, argv: list[bytes]) -> Any:
    """PFCOUNT key [key ...] -> the estimated cardinality of the union"""
    if len(argv) == 2:
        found = _read(ctx, argv[1])
        if found is None:
            return 0
        e, sketch = found
        count = sketch.cached()
        if count is None:
            if sketch.regs is None:
                raise CommandError(CORRUPT, "INVALIDOBJ")
            count = cardinality(sketch.registers())
            # Redis stores the count in the header (a write, though PFCOUNT is read-only).
            sketch.card = count.to_bytes(8, "little")
            ctx.txn.set(ctx.db, argv[1], sketch.encode(), e.expire_ms)
        return count
    union = bytearray(REGISTERS)
    for key in argv[1:]:
        found = _read(ctx, key)
        if found is None:
            continue
        union = _max(union, found[1].registers())
    return cardinality(union)


@command("pfmerge", -2, "write denyoom", "write hyperloglog slow", (1, -1, 1))
def pfmerge(ctx: Context, argv: list[bytes]) -> Any:
    """PFMERGE destkey [sourcekey ...]: destkey = the union (destkey included)"""
    union = bytearray(REGISTERS)
    dense = False
    dest: Any = None
    for i, key in enumerate(argv[1:]):
        found = _read(ctx, key)
        if found is None:
            continue
        if i == 0:
            dest = found
        dense = dense or found[1].encoding == DENSE
        union = _max(union, found[1].registers())
    if dest is None:
        sketch, expire = Sketch.new(), 0
    else:
        sketch, expire = dest[1], dest[0].expire_ms
    sketch.regs = union
    if dense:
        sketch.encoding = DENSE
    sketch.invalidate()
    ctx.txn.set(ctx.db, argv[1], sketch.encode(), expire)
    ctx.txn.notify(ev.STRING, b"pfadd", argv[1], ctx.db)
    return OK
