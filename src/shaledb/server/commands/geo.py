"""Geo commands (Redis' geo.c): GEOADD GEODIST GEOHASH GEOPOS GEORADIUS GEORADIUS_RO
GEORADIUSBYMEMBER GEORADIUSBYMEMBER_RO GEOSEARCH GEOSEARCHSTORE.

As in Redis, a geo set is a sorted set (docs/format.md, "Sorted sets"): each point is a
member whose score is its 52-bit geohash, longitude and latitude bits interleaved (26
each, latitude limited to Web Mercator's +-85.05112878 degrees), so GEOADD is a ZADD and
every sorted set command works on a geo set. The math is Redis 7.0's, rewritten here
(geohash.c, geohash_helper.c): the same encoding and decoding, the same estimate of the
cell size for a radius, the same 9 cells (the centre's and its 8 neighbours, the useless
ones dropped), each searched as one score range [min, max) of the score index, the same
haversine with Redis' earth radius, distances rounded to 4 decimals as Redis rounds them
(:func:`fmt_distance`) and the same coordinates (``%.17Lf``, trailing zeros cut), so replies
equal Redis' byte for byte.

Work of a search: one score index walk per cell (at most 9), so at most the members in
the cells, each decoded once (ANY stops at COUNT found). Without COUNT the points found
are charged to the client's output budget as they are collected, and the search stops (the
client is disconnected, as by any reply past ``client-output-buffer-limit``) once they are
over it; with COUNT only the COUNT best are kept (a heap), so memory follows the reply, not
the set. The STORE variants buffer the set they write, as every write does until its
commit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

from ..errors import CommandError
from ..keyspace.keyspace import KeyspaceTxn
from ..keyspace.values import CollRef, score_bytes, score_of_bytes
from ..net.protocol import NULL_ARRAY, Encoded
from . import SYNTAX, CommandFamily, Context, parse_float, parse_int
from .zsets import _coll, _score_of, _store, _zadd, _zset

FAMILY = CommandFamily()
command = FAMILY.command

# -- Redis' constants (geohash.h, geohash_helper.c) -------------------------------------

STEP_MAX: Final = 26  # bits per coordinate: 52 in all, exact in a double score
LONG_MIN: Final = -180.0
LONG_MAX: Final = 180.0
LAT_MIN: Final = -85.05112878
LAT_MAX: Final = 85.05112878
EARTH_RADIUS_M: Final = 6372797.560856
MERCATOR_MAX: Final = 20037726.37
_D_R: Final = math.pi / 180.0
_M64: Final = (1 << 64) - 1
_M32: Final = (1 << 32) - 1
_EVEN: Final = 0x5555555555555555  # latitude bits
_ODD: Final = 0xAAAAAAAAAAAAAAAA  # longitude bits
_ALPHABET: Final = b"0123456789bcdefghjkmnpqrstuvwxyz"
#: meters per unit
UNITS: Final = {b"m": 1.0, b"km": 1000.0, b"ft": 0.3048, b"mi": 1609.34}
#: Bytes charged to the output budget per point found besides its member (the array
#: headers, a distance, a hash and two coordinates).
POINT_COST: Final = 96


# -- geohash -----------------------------------------------------------------------------

def _interleave(x: int, y: int) -> int:
    """The bits of ``x`` (< 2**32) in the even positions, those of ``y`` in the odd."""
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF),
                        (4, 0x0F0F0F0F0F0F0F0F), (2, 0x3333333333333333), (1, _EVEN)):
        x = (x | (x << shift)) & mask
        y = (y | (y << shift)) & mask
    return x | (y << 1)


def _split_byte(v: int) -> int:
    """The 4 even bits of byte ``v`` packed in bits 0-3, its 4 odd bits in bits 32-35."""
    even = sum(((v >> (2 * i)) & 1) << i for i in range(4))
    odd = sum(((v >> (2 * i + 1)) & 1) << i for i in range(4))
    return even | (odd << 32)


#: _split_byte of every byte: a search decodes every member of its cells, and 8 lookups
#: are 3-4 times faster than the 12 mask-and-shift steps of Redis' deinterleave64.
_SPLIT: Final = tuple(_split_byte(v) for v in range(256))


def _deinterleave(bits: int) -> tuple[int, int]:
    """(even bits, odd bits) of 64-bit ``bits``, each packed into 32 bits."""
    t = _SPLIT
    acc = (t[bits & 0xFF] | t[(bits >> 8) & 0xFF] << 4 | t[(bits >> 16) & 0xFF] << 8
           | t[(bits >> 24) & 0xFF] << 12 | t[(bits >> 32) & 0xFF] << 16
           | t[(bits >> 40) & 0xFF] << 20 | t[(bits >> 48) & 0xFF] << 24
           | t[(bits >> 56) & 0xFF] << 28)
    return acc & _M32, acc >> 32


def encode(lon: float, lat: float, step: int = STEP_MAX,
           lat_range: tuple[float, float] = (LAT_MIN, LAT_MAX)) -> int:
    """The ``2 * step`` bit geohash of a point (0 outside the ranges, as Redis')."""
    if lon > LONG_MAX or lon < LONG_MIN or lat > LAT_MAX or lat < LAT_MIN:
        return 0
    lo, hi = lat_range
    if lat < lo or lat > hi:
        return 0
    lat_off = (lat - lo) / (hi - lo) * float(1 << step)
    lon_off = (lon - LONG_MIN) / (LONG_MAX - LONG_MIN) * float(1 << step)
    # C converts the offsets to uint32_t: truncation
    return _interleave(int(lat_off) & _M32, int(lon_off) & _M32)


class Area(NamedTuple):
    lon_min: float
    lon_max: float
    lat_min: float
    lat_max: float


def decode_area(bits: int, step: int) -> Area:
    """The cell of geohash ``bits`` of ``step`` bits per coordinate."""
    ilat, ilon = _deinterleave(bits & _M64)
    d = float(1 << step)
    lat_scale = LAT_MAX - LAT_MIN
    lon_scale = LONG_MAX - LONG_MIN
    return Area(LONG_MIN + (ilon * 1.0 / d) * lon_scale,
                LONG_MIN + (((ilon + 1) & _M32) * 1.0 / d) * lon_scale,
                LAT_MIN + (ilat * 1.0 / d) * lat_scale,
                LAT_MIN + (((ilat + 1) & _M32) * 1.0 / d) * lat_scale)


def _score_bits(score: float) -> int:
    """``(uint64_t)score`` as x86-64 computes it (a score that no GEOADD wrote may be
    anything)."""
    if math.isnan(score):
        return 1 << 63
    if score >= 2.0**63:
        return 0 if score >= 2.0**64 else int(score)
    if score <= -(2.0**63) - 1:
        return 1 << 63
    return int(score) & _M64


def decode(score: float) -> tuple[float, float]:
    """(longitude, latitude) of a member's score: its cell's centre, clamped to the
    ranges (Redis' decodeGeohash)."""
    # decode_area's arithmetic inline (every member of a searched cell comes here)
    bits = int(score) if 0.0 <= score < 9.2e18 else _score_bits(score)
    ilat, ilon = _deinterleave(bits)
    lon = ((LONG_MIN + (ilon * 1.0 / _CELLS) * _LON_SCALE)
           + (LONG_MIN + (((ilon + 1) & _M32) * 1.0 / _CELLS) * _LON_SCALE)) / 2
    lat = ((LAT_MIN + (ilat * 1.0 / _CELLS) * _LAT_SCALE)
           + (LAT_MIN + (((ilat + 1) & _M32) * 1.0 / _CELLS) * _LAT_SCALE)) / 2
    if lon > LONG_MAX:
        lon = LONG_MAX
    elif lon < LONG_MIN:
        lon = LONG_MIN
    if lat > LAT_MAX:
        lat = LAT_MAX
    elif lat < LAT_MIN:
        lat = LAT_MIN
    return lon, lat


_CELLS: Final = float(1 << STEP_MAX)
_LON_SCALE: Final = LONG_MAX - LONG_MIN
_LAT_SCALE: Final = LAT_MAX - LAT_MIN


def geohash_string(score: float) -> bytes:
    """The standard 11 character geohash of a member's score (re-encoded with latitudes
    -90..90; the 11th character stands for bits Redis does not have: '0')."""
    lon, lat = decode(score)
    bits = encode(lon, lat, STEP_MAX, (-90.0, 90.0))
    return bytes(_ALPHABET[(bits >> (52 - (i + 1) * 5)) & 0x1F] for i in range(10)) + b"0"


def _move(bits: int, step: int, d: int, lon: bool) -> int:
    """The neighbour cell ``d`` (+1 / -1) cells east (``lon``) or north."""
    keep, move = (_EVEN, _ODD) if lon else (_ODD, _EVEN)
    x, y = bits & move, bits & keep
    zz = keep >> (64 - step * 2)
    if d > 0:
        x = x + (zz + 1)
    else:
        x = (x | zz) - (zz + 1)
    x &= move >> (64 - step * 2)
    return (x | y) & _M64


def _rad(deg: float) -> float:
    return deg * _D_R


def _cos(x: float) -> float:
    """C's cos: NaN for an infinity (math.cos raises; an infinite radius or box is valid
    and makes the bounding box NaN, which every comparison of the cell choice then
    ignores, as in Redis)."""
    return math.cos(x) if math.isfinite(x) else math.nan


def distance(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Meters between two points: haversine on Redis' sphere (geohashGetDistance)."""
    lat1r, lon1r, lat2r, lon2r = _rad(lat1), _rad(lon1), _rad(lat2), _rad(lon2)
    u = math.sin((lat2r - lat1r) / 2)
    v = math.sin((lon2r - lon1r) / 2)
    a = math.sqrt(u * u + math.cos(lat1r) * math.cos(lat2r) * v * v)
    # Rounding can take a just past 1 for nearly antipodal points: C's asin answers NaN
    # where math.asin raises.
    return 2.0 * EARTH_RADIUS_M * (math.asin(a) if a <= 1.0 else math.nan)


def estimate_steps(range_m: float, lat: float) -> int:
    """Bits per coordinate of cells about as large as ``range_m``."""
    if range_m == 0:
        return 26
    step = 1
    while range_m < MERCATOR_MAX:
        range_m *= 2
        step += 1
    step -= 2
    if lat > 66 or lat < -66:
        step -= 1
        if lat > 80 or lat < -80:
            step -= 1
    return min(max(step, 1), 26)


class Shape:
    """A search area: centre, and a radius or a width and height, in ``unit`` (meters per
    unit in :attr:`conversion`)."""

    __slots__ = ("lon", "lat", "radius", "width", "height", "conversion", "box")

    def __init__(self) -> None:
        self.lon = self.lat = 0.0
        self.radius = self.width = self.height = 0.0
        self.conversion = 1.0
        self.box = False

    def bounds(self) -> tuple[float, float, float, float]:
        """(min lon, min lat, max lon, max lat) around the area (geohashBoundingBox)."""
        height = self.conversion * (self.height / 2 if self.box else self.radius)
        width = self.conversion * (self.width / 2 if self.box else self.radius)
        lat_delta = height / EARTH_RADIUS_M / _D_R
        top = width / EARTH_RADIUS_M / _cos(_rad(self.lat + lat_delta)) / _D_R
        bottom = width / EARTH_RADIUS_M / _cos(_rad(self.lat - lat_delta)) / _D_R
        delta = bottom if self.lat < 0 else top
        return (self.lon - delta, self.lat - lat_delta, self.lon + delta,
                self.lat + lat_delta)

    def contains(self, lon: float, lat: float) -> float | None:
        """The distance in meters from the centre to a point inside the area, else None."""
        if self.box:
            w = self.width * self.conversion
            h = self.height * self.conversion
            if (distance(lon, lat, self.lon, lat) > w / 2
                    or distance(lon, lat, lon, self.lat) > h / 2):
                return None
            return distance(self.lon, self.lat, lon, lat)
        d = distance(self.lon, self.lat, lon, lat)
        return None if d > self.radius * self.conversion else d

    def cells(self) -> list[tuple[int, int]]:
        """The 9 cells (geohash bits, step) to search, centre first, then N S E W NE NW SE
        SW; a cell that cannot hold a point of the area is (0, 0)
        (geohashCalculateAreasByShapeWGS84)."""
        min_lon, min_lat, max_lon, max_lat = self.bounds()
        if self.box:
            # Products, not `** 2`: a huge box overflows to inf as in C's pow, where
            # float.__pow__ raises OverflowError.
            half_w, half_h = self.width / 2, self.height / 2
            r = math.sqrt(half_w * half_w + half_h * half_h)
        else:
            r = self.radius
        steps = estimate_steps(r * self.conversion, self.lat)

        def around(step: int) -> tuple[int, dict[str, int], Area]:
            h = encode(self.lon, self.lat, step)
            n = {"n": _move(h, step, 1, False), "s": _move(h, step, -1, False),
                 "e": _move(h, step, 1, True), "w": _move(h, step, -1, True)}
            n["ne"] = _move(n["n"], step, 1, True)
            n["nw"] = _move(n["n"], step, -1, True)
            n["se"] = _move(n["s"], step, 1, True)
            n["sw"] = _move(n["s"], step, -1, True)
            return h, n, decode_area(h, step)

        h, n, area = around(steps)
        # The estimate can be one step too fine near a cell's edge: the area then reaches
        # past the neighbours.
        if steps > 1 and (decode_area(n["n"], steps).lat_max < max_lat
                          or decode_area(n["s"], steps).lat_min > min_lat
                          or decode_area(n["e"], steps).lon_max < max_lon
                          or decode_area(n["w"], steps).lon_min > min_lon):
            steps -= 1
            h, n, area = around(steps)
        dropped: set[str] = set()
        if steps >= 2:
            if area.lat_min < min_lat:
                dropped |= {"s", "sw", "se"}
            if area.lat_max > max_lat:
                dropped |= {"n", "ne", "nw"}
            if area.lon_min < min_lon:
                dropped |= {"w", "sw", "nw"}
            if area.lon_max > max_lon:
                dropped |= {"e", "se", "ne"}
        out = [(h, steps)]
        for name in ("n", "s", "e", "w", "ne", "nw", "se", "sw"):
            out.append((0, 0) if name in dropped else (n[name], steps))
        return out


class Point(NamedTuple):
    member: bytes
    score: float
    lon: float
    lat: float
    dist: float  # meters


def points(txn: KeyspaceTxn, coll: CollRef, shape: Shape, limit: int = 0) -> Iterator[Point]:
    """The members of geo set ``coll`` inside ``shape``, cell by cell in Redis' order
    (each cell in score order); at most ``limit`` (0: all)."""
    cells = shape.cells()
    found = 0
    last = 0
    for i, (bits, step) in enumerate(cells):
        if bits == 0 and step == 0:
            continue
        # A huge radius can make neighbours the same cell: skip a repeat of the last
        # cell searched (Redis compares with the last one only, never with the centre).
        if last and cells[last] == (bits, step):
            continue
        if limit and found >= limit:
            return
        shift = 52 - step * 2
        lo = score_bytes(float(bits << shift))
        hi = score_bytes(float(((bits + 1) & _M64) << shift))
        for entry in txn.score_walk(coll, lo, hi):
            score = score_of_bytes(entry)
            lon, lat = decode(score)
            d = shape.contains(lon, lat)
            if d is not None:
                found += 1
                yield Point(entry[8:], score, lon, lat, d)
            if limit and found >= limit:
                break
        last = i


# -- replies -----------------------------------------------------------------------------

def fmt_distance(d: float) -> bytes:
    """A distance as Redis 7.0's fixedpoint_d2string(d, 4): ``llrint(d * 10000)`` (the
    product rounded to an even neighbour on a tie), then the point put back. Not
    ``%.4f``, which rounds d's exact decimal value: they differ on about one distance in
    a few thousand (1809786.8014 ft here and in Redis, 1809786.8013 by ``%.4f``)."""
    if d == 0:
        return b"0.0000"
    x = d * 10000.0
    # llrint's answer for NaN, infinities and overflows on x86-64: LLONG_MIN
    v = round(x) if math.isfinite(x) and abs(x) < 2.0**63 else -(2**63)
    digits = b"%05d" % abs(v)
    return (b"-" if v < 0 else b"") + digits[:-4] + b"." + digits[-4:]


def _human(ctx: Context, d: float) -> Any:
    """A coordinate as Redis' addReplyHumanLongDouble: ``%.17Lf`` with trailing zeros cut;
    a bulk string in RESP2, a double in RESP3."""
    text = b"%.17f" % d
    if b"." in text:
        text = text.rstrip(b"0").rstrip(b".")
    if text == b"-0":
        text = b"0"
    if ctx.client.resp == 3:
        return Encoded([b",%s\r\n" % text], len(text) + 3)
    return text


def _double(arg: bytes, message: str) -> float:
    """A double as Redis' getDoubleFromObject reads it: an overflow (``1e400``) is refused,
    not infinite."""
    try:
        v = parse_float(arg)
    except CommandError:
        raise CommandError(message) from None
    if math.isinf(v) and b"inf" not in arg.lower():
        raise CommandError(message)
    return v


def _lonlat(lon_arg: bytes, lat_arg: bytes) -> tuple[float, float]:
    lon = _double(lon_arg, "value is not a valid float")
    lat = _double(lat_arg, "value is not a valid float")
    if lon < LONG_MIN or lon > LONG_MAX or lat < LAT_MIN or lat > LAT_MAX:
        raise CommandError(f"invalid longitude,latitude pair {lon:f},{lat:f}")
    return lon, lat


def _unit(arg: bytes) -> float:
    u = UNITS.get(arg.lower())
    if u is None:
        raise CommandError("unsupported unit provided. please use M, KM, FT, MI")
    return u


def _radius(arg: bytes, unit: bytes, shape: Shape) -> None:
    r = _double(arg, "need numeric radius")
    if r < 0:
        raise CommandError("radius cannot be negative")
    shape.radius = r
    shape.conversion = _unit(unit)
    shape.box = False


def _box(w_arg: bytes, h_arg: bytes, unit: bytes, shape: Shape) -> None:
    w = _double(w_arg, "need numeric width")
    h = _double(h_arg, "need numeric height")
    if h < 0 or w < 0:
        raise CommandError("height or width cannot be negative")
    shape.width, shape.height = w, h
    shape.conversion = _unit(unit)
    shape.box = True


def _member_lonlat(ctx: Context, coll: CollRef, member: bytes) -> tuple[float, float]:
    s = _score_of(ctx.txn, coll, member)
    if s is None:
        raise CommandError("could not decode requested zset member")
    return decode(s)


# -- GEOADD GEODIST GEOHASH GEOPOS --------------------------------------------------------

@command("geoadd", -5, "write denyoom", "write geo slow", (1, 1, 1))
def geoadd(ctx: Context, argv: list[bytes]) -> Any:
    """GEOADD key [NX|XX] [CH] longitude latitude member [...] -> members added (or
    changed, with CH)"""
    nx = xx = ch = False
    i = 2
    while i < len(argv):
        opt = argv[i].lower()
        if opt == b"nx":
            nx = True
        elif opt == b"xx":
            xx = True
        elif opt == b"ch":
            ch = True
        else:
            break
        i += 1
    rest = argv[i:]
    if len(rest) % 3 or not rest or (nx and xx):
        raise CommandError(SYNTAX)
    pairs = []
    for j in range(0, len(rest), 3):
        lon, lat = _lonlat(rest[j], rest[j + 1])
        pairs.append((float(encode(lon, lat)), rest[j + 2]))
    added, updated, _ = _zadd(ctx, argv[1], pairs, nx, xx, False, False, False)
    return added + updated if ch else added


@command("geodist", -4, "readonly", "read geo slow", (1, 1, 1))
def geodist(ctx: Context, argv: list[bytes]) -> Any:
    """GEODIST key member1 member2 [M|KM|FT|MI] -> the distance, or nil"""
    to_meter = 1.0
    if len(argv) == 5:
        to_meter = _unit(argv[4])
    elif len(argv) > 5:
        raise CommandError(SYNTAX)
    coll = _coll(_zset(ctx.txn, ctx.db, argv[1]))
    if coll is None:
        return None
    s1 = _score_of(ctx.txn, coll, argv[2])
    s2 = _score_of(ctx.txn, coll, argv[3])
    if s1 is None or s2 is None:
        return None
    (lon1, lat1), (lon2, lat2) = decode(s1), decode(s2)
    return fmt_distance(distance(lon1, lat1, lon2, lat2) / to_meter)


@command("geohash", -2, "readonly", "read geo slow", (1, 1, 1))
def geohash(ctx: Context, argv: list[bytes]) -> Any:
    """GEOHASH key [member ...] -> the 11 character geohash of each, or nil"""
    coll = _coll(_zset(ctx.txn, ctx.db, argv[1]))
    out = ctx.array()
    for m in argv[2:]:
        s = None if coll is None else _score_of(ctx.txn, coll, m)
        if not out.add(None if s is None else geohash_string(s)):
            return ctx.overflow()
    return out.done()


@command("geopos", -2, "readonly", "read geo slow", (1, 1, 1))
def geopos(ctx: Context, argv: list[bytes]) -> Any:
    """GEOPOS key [member ...] -> [longitude, latitude] of each, or a null array"""
    coll = _coll(_zset(ctx.txn, ctx.db, argv[1]))
    out = ctx.array()
    for m in argv[2:]:
        s = None if coll is None else _score_of(ctx.txn, coll, m)
        if s is None:
            item: Any = NULL_ARRAY
        else:
            lon, lat = decode(s)
            item = [_human(ctx, lon), _human(ctx, lat)]
        if not out.add(item):
            return ctx.overflow()
    return out.done()


# -- GEORADIUS, GEOSEARCH and their variants --------------------------------------------

COORDS, MEMBER, SEARCH = "coords", "member", "search"


def _search(ctx: Context, argv: list[bytes], src: int, kind: str, nostore: bool = False,
            store_into: bytes | None = None) -> Any:
    """Redis' georadiusGeneric: the source key is ``argv[src]``; ``kind`` says how the
    centre is given (GEORADIUS: coordinates, GEORADIUSBYMEMBER: a member, GEOSEARCH:
    options); ``store_into``: GEOSEARCHSTORE's destination."""
    txn = ctx.txn
    coll = _coll(_zset(txn, ctx.db, argv[src]))
    shape = Shape()
    if kind == COORDS:
        base = 6
        shape.lon, shape.lat = _lonlat(argv[2], argv[3])
        _radius(argv[4], argv[5], shape)
    elif kind == MEMBER:
        base = 5
        if coll is not None:
            shape.lon, shape.lat = _member_lonlat(ctx, coll, argv[2])
            _radius(argv[3], argv[4], shape)
    else:
        base = 3 if store_into is not None else 2
    search = kind == SEARCH
    store = store_into
    storedist = False
    withdist = withhash = withcoord = anyflag = False
    frommember = fromloc = byradius = bybox = False
    sort = 0  # 0 none, 1 asc, -1 desc
    count = 0
    i = base
    n = len(argv)
    while i < n:
        opt = argv[i].lower()
        left = n - i - 1
        if opt == b"withdist":
            withdist = True
        elif opt == b"withhash":
            withhash = True
        elif opt == b"withcoord":
            withcoord = True
        elif opt == b"any":
            anyflag = True
        elif opt == b"asc":
            sort = 1
        elif opt == b"desc":
            sort = -1
        elif opt == b"count" and left >= 1:
            count = parse_int(argv[i + 1])
            if count <= 0:
                raise CommandError("COUNT must be > 0")
            i += 1
        elif opt in (b"store", b"storedist") and left >= 1 and not nostore and not search:
            store = argv[i + 1]
            storedist = opt == b"storedist"
            i += 1
        elif opt == b"storedist" and search and store_into is not None:
            storedist = True
        elif opt == b"frommember" and left >= 1 and search and not fromloc:
            if coll is not None:
                shape.lon, shape.lat = _member_lonlat(ctx, coll, argv[i + 1])
            frommember = True
            i += 1
        elif opt == b"fromlonlat" and left >= 2 and search and not frommember:
            shape.lon, shape.lat = _lonlat(argv[i + 1], argv[i + 2])
            fromloc = True
            i += 2
        elif opt == b"byradius" and left >= 2 and search and not bybox:
            _radius(argv[i + 1], argv[i + 2], shape)
            byradius = True
            i += 2
        elif opt == b"bybox" and left >= 3 and search and not byradius:
            _box(argv[i + 1], argv[i + 2], argv[i + 3], shape)
            bybox = True
            i += 3
        else:
            raise CommandError(SYNTAX)
        i += 1
    name = argv[0].decode("utf-8", "replace")  # as the client spelt it, as Redis
    if store is not None and (withdist or withhash or withcoord):
        what = "GEOSEARCHSTORE" if store_into is not None else "STORE option in GEORADIUS"
        raise CommandError(f"{what} is not compatible with WITHDIST, WITHHASH and WITHCOORD "
                           "options")
    if search and not (frommember or fromloc):
        raise CommandError(f"exactly one of FROMMEMBER or FROMLONLAT can be specified for "
                           f"{name}")
    if search and not (byradius or bybox):
        raise CommandError(f"exactly one of BYRADIUS and BYBOX can be specified for {name}")
    if anyflag and not count:
        raise CommandError("the ANY argument requires COUNT argument")
    if coll is None:
        if store is not None:
            txn.delete(ctx.db, store)
            return 0
        return ctx.array().done()
    if count and not sort and not anyflag:
        sort = 1  # the COUNT nearest
    over = False

    def charged(found: Iterator[Point]) -> Iterator[Point]:
        # What a reply will hold is charged to the output budget as it is found: the
        # first COUNT points (all without COUNT); with COUNT the rest replace kept ones.
        nonlocal over
        budget = ctx.client.output_budget
        for seq, p in enumerate(found):
            if store is None and (not count or seq < count):
                budget -= len(p.member) + POINT_COST
                if budget < 0:
                    over = True
                    return
            yield p

    found = charged(points(txn, coll, shape, count if anyflag else 0))
    result: list[Point]
    if sort and count:
        # Only the COUNT best are kept; ties stay in the order found (a stable sort).
        keyed = ((p.dist * sort, seq, p) for seq, p in enumerate(found))
        result = [p for _, _, p in heapq.nsmallest(count, keyed)]
    else:
        result = list(found)
        if sort:
            result.sort(key=lambda p: p.dist, reverse=sort < 0)
        if count:
            del result[count:]
    if over:
        return ctx.overflow()
    conv = shape.conversion
    if store is not None:
        return _store(ctx, store, [(p.member, p.dist / conv if storedist else p.score)
                                   for p in result],
                      b"geosearchstore" if kind == SEARCH else b"georadiusstore")
    out = ctx.array()
    options = withdist or withhash or withcoord
    for p in result:
        if options:
            item: list[Any] = [p.member]
            if withdist:
                item.append(fmt_distance(p.dist / conv))
            if withhash:
                item.append(int(p.score))
            if withcoord:
                item.append([_human(ctx, p.lon), _human(ctx, p.lat)])
            ok = out.add(item)
        else:
            ok = out.add(p.member)
        if not ok:
            return ctx.overflow()
    return out.done()


def _radius_keys(base: int) -> Any:
    """The source key and a STORE / STOREDIST key (Redis' "movablekeys")."""
    def keys(argv: list[bytes]) -> list[bytes]:
        found = argv[1:2]
        for j in range(base, len(argv) - 1):
            if argv[j].lower() in (b"store", b"storedist"):
                found.append(argv[j + 1])
        return found
    return keys


@command("georadius", -6, "write denyoom movablekeys", "write geo slow", (1, 1, 1),
         key_finder=_radius_keys(6))
def georadius(ctx: Context, argv: list[bytes]) -> Any:
    """GEORADIUS key longitude latitude radius M|KM|FT|MI [WITHCOORD] [WITHDIST]
    [WITHHASH] [COUNT count [ANY]] [ASC|DESC] [STORE key | STOREDIST key]"""
    return _search(ctx, argv, 1, COORDS)


@command("georadius_ro", -6, "readonly", "read geo slow", (1, 1, 1))
def georadius_ro(ctx: Context, argv: list[bytes]) -> Any:
    """GEORADIUS_RO: GEORADIUS without STORE"""
    return _search(ctx, argv, 1, COORDS, nostore=True)


@command("georadiusbymember", -5, "write denyoom movablekeys", "write geo slow", (1, 1, 1),
         key_finder=_radius_keys(5))
def georadiusbymember(ctx: Context, argv: list[bytes]) -> Any:
    """GEORADIUSBYMEMBER key member radius M|KM|FT|MI [options as GEORADIUS]"""
    return _search(ctx, argv, 1, MEMBER)


@command("georadiusbymember_ro", -5, "readonly", "read geo slow", (1, 1, 1))
def georadiusbymember_ro(ctx: Context, argv: list[bytes]) -> Any:
    """GEORADIUSBYMEMBER_RO: GEORADIUSBYMEMBER without STORE"""
    return _search(ctx, argv, 1, MEMBER, nostore=True)


@command("geosearch", -7, "readonly", "read geo slow", (1, 1, 1))
def geosearch(ctx: Context, argv: list[bytes]) -> Any:
    """GEOSEARCH key FROMMEMBER member | FROMLONLAT longitude latitude
    BYRADIUS radius unit | BYBOX width height unit [ASC|DESC] [COUNT count [ANY]]
    [WITHCOORD] [WITHDIST] [WITHHASH]"""
    return _search(ctx, argv, 1, SEARCH)


@command("geosearchstore", -8, "write denyoom", "write geo slow", (1, 2, 1))
def geosearchstore(ctx: Context, argv: list[bytes]) -> Any:
    """GEOSEARCHSTORE destination source (as GEOSEARCH) [STOREDIST] -> members stored"""
    return _search(ctx, argv, 2, SEARCH, store_into=argv[1])


__all__ = ["FAMILY", "decode", "distance", "encode", "geohash_string"]
