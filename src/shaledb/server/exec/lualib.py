"""The Python halves of the libraries Redis gives Lua scripts: ``bit``, ``cjson``,
``cmsgpack`` and ``struct`` (lupa's Lua 5.1 ships none of them). Each function is called from
the Lua wrappers in ``lua_sandbox.lua`` and answers ``(True, value...)`` or ``(False,
message)``: the wrapper raises the message as a Lua error, so a Python exception never
crosses into Lua.

Values cross as lupa converts them: Lua strings are ``bytes`` (the runtime has no encoding),
numbers ``int`` or ``float``, tables :class:`lupa.lua51.LuaTable`; a Python list handed to
Lua would be a userdata, so every table is built with ``runtime.table_from``. Each converter
bounds its nesting depth (a table that holds itself would otherwise recurse forever) and
cjson/cmsgpack output is bounded by the Lua state's memory limit on the way back.
"""

from __future__ import annotations

import json
import math
import re
import struct as pystruct
from collections.abc import Callable
from typing import Any, Final

import msgpack

#: Deepest nesting cjson encodes or decodes (Redis' cjson stops at 1000).
MAX_DEPTH: Final = 1000
#: Deepest nesting cmsgpack encodes (lua_cmsgpack's LUACMSGPACK_MAX_NESTING): deeper
#: values, as a table that holds itself, are encoded as nil.
MSGPACK_MAX_NESTING: Final = 16

Result = tuple[Any, ...]


def _lua_type(value: Any) -> str | None:
    from lupa.lua51 import lua_type

    return lua_type(value)  # type: ignore[no-any-return]


#: The key only Python asks cjson.null for (lua_sandbox.lua): identifies it.
NULL_KEY: Final = b"\0shaledb.cjson.null"


def is_null(value: Any) -> bool:
    """Whether the Lua table ``value`` is cjson.null."""
    return value[NULL_KEY] is True


def _number_text(value: float) -> bytes:
    """A Lua number as Lua 5.1 prints it (``%.14g``)."""
    if value == int(value) and abs(value) < 1e15:
        return b"%d" % int(value)
    return (b"%.14g" % value)


# -- bit -------------------------------------------------------------------------------------


def _tobit(x: Any) -> int:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        raise ValueError("bad argument (number expected)")
    if isinstance(x, float):
        if not math.isfinite(x):
            return 0
        x = math.floor(x + 0.5)
    n = int(x) & 0xFFFFFFFF
    return n - (1 << 32) if n & 0x80000000 else n


def bit_op(name: bytes, *args: Any) -> Result:
    """LuaBitOp's functions on 32-bit signed integers."""
    try:
        op = name.decode()
        xs = [_tobit(a) for a in args]
        if not xs:
            return False, f"bad argument #1 to '{op}' (number expected, got no value)"
        x = xs[0]
        u = x & 0xFFFFFFFF
        n = (xs[1] & 31) if len(xs) > 1 else 0
        if op == "tobit":
            r = x
        elif op == "tohex":
            digits = xs[1] if len(xs) > 1 else 8
            upper = digits < 0
            digits = min(abs(digits), 8)
            text = format(u & ((1 << (4 * digits)) - 1), f"0{digits}{'X' if upper else 'x'}")
            return True, text.encode()
        elif op == "bnot":
            r = ~x
        elif op == "band":
            r = -1
            for v in xs:
                r &= v
        elif op == "bor":
            r = 0
            for v in xs:
                r |= v
        elif op == "bxor":
            r = 0
            for v in xs:
                r ^= v
        elif op == "lshift":
            r = u << n
        elif op == "rshift":
            r = u >> n
        elif op == "arshift":
            r = x >> n
        elif op == "rol":
            r = (u << n) | (u >> (32 - n)) if n else u
        elif op == "ror":
            r = (u >> n) | (u << (32 - n)) if n else u
        elif op == "bswap":
            r = int.from_bytes(u.to_bytes(4, "little"), "big")
        else:
            return False, f"unknown bit operation {op}"
        return True, _tobit(r)
    except ValueError as exc:
        return False, str(exc)


# -- cjson -----------------------------------------------------------------------------------

_JSON_ESCAPES: Final = {i: b"\\u%04x" % i for i in range(32)}
_JSON_ESCAPES.update({8: b"\\b", 9: b"\\t", 10: b"\\n", 12: b"\\f", 13: b"\\r",
                      34: b'\\"', 92: b"\\\\", 47: b"\\/"})


#: The most cjson.encode writes (the text must fit in the Lua state anyway, whose default
#: lua-max-memory is as much): the encoder runs outside the Lua memory limit, where a script
#: could otherwise build hundreds of MB of Python objects out of one string referenced 50
#: times, and SCRIPT KILL reaches it only when it returns.
JSON_MAX_OUTPUT: Final = 64 * 1024 * 1024
_JSON_SPECIAL: Final = re.compile(rb'[\x00-\x1f"\\/]')


def _json_string(data: bytes, out: list[bytes]) -> None:
    out.append(b'"')
    # The bytes between escapes are found and copied by the regex engine, not byte by byte.
    out.append(_JSON_SPECIAL.sub(lambda m: _JSON_ESCAPES[m.group()[0]], data))
    out.append(b'"')


def _table_items(table: Any) -> tuple[bool, list[tuple[Any, Any]]]:
    """(is an array, items): an array when every key is a positive integer and the table
    is not sparse (cjson's rule; the empty table is an object)."""
    items = list(table.items())
    keys = [k for k, _ in items]
    if items and all(isinstance(k, (int, float)) and not isinstance(k, bool) and k >= 1
                     and k == int(k) for k in keys):
        top = int(max(keys))
        if top <= 2 * len(items) + 10:  # cjson's encode_sparse_array default (ratio 2, safe 10)
            return True, items
        raise ValueError("Cannot serialise table: excessively sparse array")
    return False, items


def json_encode(value: Any, null: Any, max_depth: Any = MAX_DEPTH,
                invalid_numbers: Any = False) -> Result:
    """cjson.encode (``max_depth``: cjson.encode_max_depth; ``invalid_numbers``: NaN and
    infinities allowed)."""
    out: list[bytes] = []
    limit = min(int(max_depth), MAX_DEPTH) if isinstance(max_depth, (int, float)) else MAX_DEPTH
    used = 0

    def enc(v: Any, depth: int) -> None:
        nonlocal used
        if depth > limit:
            raise ValueError(f"Cannot serialise, excessive nesting ({depth})")
        used += len(v) + 2 if isinstance(v, bytes) else 8
        if used > JSON_MAX_OUTPUT:
            raise ValueError(f"not enough memory: the encoded text would exceed "
                             f"{JSON_MAX_OUTPUT} bytes")
        if v is None:
            out.append(b"null")
        elif v is True:
            out.append(b"true")
        elif v is False:
            out.append(b"false")
        elif isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                if not invalid_numbers:
                    raise ValueError("Cannot serialise number: must not be NaN or Inf")
                out.append(b"nan" if v != v else b"inf" if v > 0 else b"-inf")
                return
            out.append(_number_text(v))
        elif isinstance(v, bytes):
            _json_string(v, out)
        elif _lua_type(v) == "table":
            if is_null(v):
                out.append(b"null")
                return
            is_array, items = _table_items(v)
            if is_array:
                by_index = dict(items)
                out.append(b"[")
                for i in range(1, int(max(by_index)) + 1):
                    if i > 1:
                        out.append(b",")
                    enc(by_index.get(i), depth + 1)
                out.append(b"]")
            else:
                out.append(b"{")
                for n, (k, item) in enumerate(items):
                    if n:
                        out.append(b",")
                    if isinstance(k, bytes):
                        _json_string(k, out)
                    elif isinstance(k, (int, float)) and not isinstance(k, bool):
                        _json_string(_number_text(k), out)
                    else:
                        raise ValueError("Cannot serialise table: table key must be a number "
                                         "or string")
                    out.append(b":")
                    enc(item, depth + 1)
                out.append(b"}")
        else:
            kind = _lua_type(v) or type(v).__name__
            raise ValueError(f"Cannot serialise {kind}: type not supported")

    try:
        enc(value, 1)
    except ValueError as exc:
        return False, str(exc)
    return True, b"".join(out)


def json_decode(runtime: Any, data: bytes, null: Any, max_depth: Any = MAX_DEPTH) -> Result:
    """cjson.decode: objects and arrays become tables, null becomes cjson.null."""
    limit = min(int(max_depth), MAX_DEPTH) if isinstance(max_depth, (int, float)) else MAX_DEPTH

    def conv(v: Any, depth: int) -> Any:
        if isinstance(v, (list, dict)) and depth > limit:
            raise ValueError(f"Found too many nested data structures ({depth})")
        if v is None:
            return null
        if isinstance(v, str):
            return v.encode("utf-8", "surrogatepass")
        if isinstance(v, list):
            return runtime.table_from([conv(x, depth + 1) for x in v])
        if isinstance(v, dict):
            return runtime.table_from({k.encode("utf-8", "surrogatepass"): conv(x, depth + 1)
                                       for k, x in v.items()})
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**53:
            return float(v)
        return v

    try:
        parsed = json.loads(data.decode("utf-8", "surrogateescape"))
        return True, conv(parsed, 1)
    except (ValueError, RecursionError) as exc:
        return False, f"Expected value but found invalid token ({exc})"


# -- cmsgpack --------------------------------------------------------------------------------


def msgpack_pack(null: Any, *values: Any) -> Result:
    """cmsgpack.pack(v1, v2 ...): the concatenated encodings."""
    if not values:
        return False, "MessagePack pack needs input."

    def conv(v: Any, depth: int) -> Any:
        if depth > MSGPACK_MAX_NESTING or v is None:
            return None
        if isinstance(v, (bool, int, bytes)):
            return v
        if isinstance(v, float):
            return int(v) if v == int(v) and math.isfinite(v) and abs(v) < 2**63 else v
        if _lua_type(v) == "table":
            if is_null(v):
                return None
            items = list(v.items())
            keys = [k for k, _ in items]
            if all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys) \
                    and sorted(keys) == list(range(1, len(keys) + 1)):
                return [conv(v[i], depth + 1) for i in range(1, len(keys) + 1)]
            return {conv(k, depth + 1): conv(x, depth + 1) for k, x in items}
        return None

    packer = msgpack.Packer(use_bin_type=False)
    return True, b"".join(packer.pack(conv(v, 1)) for v in values)


def msgpack_unpack(runtime: Any, data: bytes, null: Any, offset: Any = 0, limit: Any = 0,
                   with_offset: Any = False) -> Result:
    """cmsgpack.unpack(s): every object in ``s``, as Lua values; with ``with_offset``
    (unpack_one, unpack_limit) at most ``limit`` objects (0: all) from ``offset``, the
    offset after them first (-1 once ``s`` is consumed)."""

    def conv(v: Any) -> Any:
        if v is None:
            return null
        if isinstance(v, str):
            return v.encode("utf-8", "surrogatepass")
        if isinstance(v, (list, tuple)):
            return runtime.table_from([conv(x) for x in v])
        if isinstance(v, dict):
            return runtime.table_from({conv(k): conv(x) for k, x in v.items()})
        return v

    try:
        start = int(offset)
        if start < 0 or start > len(data):
            return False, "Start offset greater than input length"
        count = int(limit)
        unpacker = msgpack.Unpacker(raw=True, strict_map_key=False,
                                    max_buffer_size=len(data) + 1)
        unpacker.feed(data[start:])
        values = []
        for v in unpacker:
            values.append(conv(v))
            if 0 < count <= len(values):
                break
        if not with_offset:
            return (True, *values)
        end = start + unpacker.tell()
        return (True, -1 if end >= len(data) else end, *values)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        return False, f"Bad data format in input ({exc})"


# -- struct ----------------------------------------------------------------------------------

#: Roberto Ierusalimschy's struct library formats (as Redis embeds it) -> Python struct codes.
_STRUCT_CODES: Final = {"b": "b", "B": "B", "h": "h", "H": "H", "l": "q", "L": "Q",
                        "T": "Q", "f": "f", "d": "d", "n": "d"}
_INT_SIZES: Final = {1: "b", 2: "h", 4: "i", 8: "q"}


def _struct_items(fmt: bytes) -> list[tuple[str, int]]:
    """The items of a struct format: (code, size-or-count)."""
    text = fmt.decode("latin-1")
    items: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        c = text[i]
        i += 1
        j = i
        while j < len(text) and text[j].isdigit():
            j += 1
        num = int(text[i:j]) if j > i else None
        i = j
        if c in " \t\n":
            continue
        if c in "<>=!":
            items.append((c, num or 0))
        elif c in _STRUCT_CODES or c == "x" or c == "s":
            items.append((c, 0))
        elif c in "iI":
            size = num if num is not None else 4
            if size not in _INT_SIZES:
                raise ValueError(f"integral size {size} is not supported")
            items.append((c, size))
        elif c == "c":
            items.append((c, num if num is not None else 1))
        else:
            raise ValueError(f"invalid format option '{c}'")
    return items


def _code(c: str, size: int) -> str:
    if c in "iI":
        code = _INT_SIZES[size]
        return code.upper() if c == "I" else code
    return _STRUCT_CODES[c]


def struct_pack(fmt: bytes, *args: Any) -> Result:
    """struct.pack(fmt, ...)."""
    try:
        order = "<"
        out: list[bytes] = []
        values = list(args)
        pos = 0
        for c, n in _struct_items(fmt):
            if c in "<>=!":
                order = {"<": "<", ">": ">", "=": "<", "!": order}[c]
                continue
            if c == "x":
                out.append(b"\0")
                continue
            if pos >= len(values):
                return False, f"bad argument #{pos + 2} to 'pack' (value expected)"
            v = values[pos]
            pos += 1
            if c == "c":
                data = v if isinstance(v, bytes) else _number_text(v)
                size = n if n else len(data)
                out.append(data[:size].ljust(size, b"\0"))
            elif c == "s":
                data = v if isinstance(v, bytes) else _number_text(v)
                out.append(data + b"\0")
            else:
                code = _code(c, n)
                if code in "fd":
                    out.append(pystruct.pack(order + code, float(v)))
                else:
                    bits = pystruct.calcsize(code) * 8
                    iv = int(v) & ((1 << bits) - 1)
                    out.append(iv.to_bytes(bits // 8, "big" if order == ">" else "little"))
        return True, b"".join(out)
    except (ValueError, TypeError, pystruct.error, OverflowError) as exc:
        return False, str(exc)


def struct_unpack(fmt: bytes, data: bytes, init: Any = None) -> Result:
    """struct.unpack(fmt, s [, pos]) -> values..., next position."""
    try:
        order = "<"
        pos = int(init) - 1 if init is not None else 0
        if pos < 0:
            return False, "offset must be 1 or greater"
        values: list[Any] = []
        for c, n in _struct_items(fmt):
            if c in "<>=!":
                order = {"<": "<", ">": ">", "=": "<", "!": order}[c]
                continue
            if c == "x":
                pos += 1
                continue
            if c == "c":
                size = n
                if size == 0:
                    if not values or not isinstance(values[-1], int):
                        return False, "format 'c0' needs a previous size"
                    size = values.pop()
                if pos + size > len(data):
                    return False, "data string too short"
                values.append(data[pos:pos + size])
                pos += size
            elif c == "s":
                end = data.find(b"\0", pos)
                if end < 0:
                    return False, "unfinished string in data"
                values.append(data[pos:end])
                pos = end + 1
            else:
                code = _code(c, n)
                size = pystruct.calcsize(code)
                if pos + size > len(data):
                    return False, "data string too short"
                (v,) = pystruct.unpack_from(order + code, data, pos)
                values.append(v)
                pos += size
        return (True, *values, pos + 1)
    except (ValueError, TypeError, pystruct.error) as exc:
        return False, str(exc)


def struct_size(fmt: bytes) -> Result:
    """struct.size(fmt)."""
    try:
        total = 0
        for c, n in _struct_items(fmt):
            if c in "<>=!":
                continue
            if c == "x":
                total += 1
            elif c == "c":
                total += n
            elif c == "s":
                return False, "options 's' and 'c0' have no fixed size"
            else:
                total += pystruct.calcsize(_code(c, n))
        return True, total
    except ValueError as exc:
        return False, str(exc)


def bound(fn: Callable[..., Result], first: Any) -> Callable[..., Result]:
    """``fn`` with its first argument (the runtime) bound."""
    return lambda *args: fn(first, *args)


def for_lua(fn: Callable[..., Result]) -> Callable[..., Result]:
    """``fn`` with its error message as bytes: a Python str would reach Lua as a userdata
    (the runtime has no encoding), not a string."""

    def call(*args: Any) -> Result:
        result = fn(*args)
        if result[0] is False and isinstance(result[1], str):
            return (False, result[1].encode("utf-8", "replace"))
        return result

    return call


__all__ = ["MAX_DEPTH", "bit_op", "bound", "json_decode", "json_encode", "msgpack_pack",
           "msgpack_unpack", "for_lua", "struct_pack", "struct_size", "struct_unpack"]
