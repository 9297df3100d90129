"""RESP: reading requests (multibulk and inline) and encoding replies.

Requests. A client sends either a *multibulk* request, ``*<n>\r\n`` followed by ``n`` bulk
strings ``$<len>\r\n<bytes>\r\n``, or an *inline* command, one line of space-separated
words (what a person types into telnet), split with the quoting rules of Redis'
``sdssplitargs``. A new request is inline when its first byte is not ``*``. The reader is a
small state machine like Redis' ``processMultibulkBuffer``: it checks every header as soon as
its line is complete, before buffering what the header announces, so a bad or oversized
length is refused at once.

Why not hiredis' C reader here: it is a reply parser. It accepts any RESP type inside a
request (integers, nested arrays, maps) and allocates an array of the announced element count
before any element arrives: ``*2000000000\r\n`` costs it 16 GB of address space and seconds of
CPU to free, and a nested array header cannot be refused before hiredis allocates it. Parsing
requests in Python (about 0.07 us per argument compiled, 0.8 us as pure Python) keeps every
limit enforceable. Clients still parse *replies* with hiredis (redis-py uses it when
installed).

Limits (all enforced here, before a request reaches a command):

- ``max_query_buffer``: bytes of a request not yet complete. Past it the connection is closed:
  a client can never make the server buffer more than this per connection (plus one read).
- ``max_bulk_len``: the length of one argument (``proto-max-bulk-len``), checked when its
  ``$<len>`` header arrives.
- ``MAX_MULTIBULK``: arguments per request (1,048,576), checked when ``*<n>`` arrives.
- ``MAX_INLINE``: the length of an inline line (64 KiB, as in Redis).

Replies. :func:`encode` turns Python values into RESP2 or RESP3: ``bytes``/``str`` -> bulk
string, ``int`` -> integer, ``None`` -> null, ``list``/``tuple`` -> array, ``dict`` -> map
(flat array in RESP2), ``set``/``frozenset`` -> set (array in RESP2), ``float`` -> double
(bulk string in RESP2), :class:`Status` -> simple string, :class:`CommandError` -> error,
``NULL_ARRAY`` -> null array (``*-1`` in RESP2), :class:`Verbatim` -> verbatim string
(bulk string in RESP2), :class:`SetReply` -> set in its own order (array in RESP2),
:class:`Push` -> push (array in RESP2), :class:`Encoded` -> itself (a reply encoded as it
was built, by an :class:`ArrayBuilder` charging it to the client's output budget).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import MutableSequence
from typing import Any, Final

from ..errors import CommandError, ProtocolError
from .replytypes import Push, SetReply, Status, Verbatim

#: Longest inline command line accepted, in bytes (Redis' PROTO_INLINE_MAX_SIZE).
MAX_INLINE: Final = 64 * 1024
#: Most arguments in one multibulk request.
MAX_MULTIBULK: Final = 1024 * 1024
#: Longest ``*<n>`` or ``$<len>`` header line.
_MAX_HEADER: Final = 32


class _NullArray:
    """The null array reply: ``*-1`` in RESP2, ``_`` in RESP3 (EXEC of an aborted MULTI)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


OK: Final = Status(b"OK")
QUEUED: Final = Status(b"QUEUED")
PONG: Final = Status(b"PONG")
NULL_ARRAY: Final = _NullArray()


# -- requests --------------------------------------------------------------------------------


def _number(line: bytes | bytearray, what: str) -> int:
    """A header's decimal number: digits only, no leading zero, an optional leading minus."""
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit() or len(digits) > 18 or (digits[0] == 48 and len(digits) > 1):
        raise ProtocolError(f"invalid {what}")
    return int(line)


#: A request header and a bulk header in canonical form (no sign, no leading zero), for
#: the fast path of :meth:`RequestReader._parse`; MAX_MULTIBULK has 7 digits.
_REQUEST_HEADER: Final = re.compile(rb"\*([1-9][0-9]{0,6})\r\n")
_BULK_HEADER: Final = re.compile(rb"\$(0|[1-9][0-9]{0,17})\r\n")

_ESCAPES: Final = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX: Final = b"0123456789abcdefABCDEF"


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command line into arguments, with the quoting of Redis'
    ``sdssplitargs``: ``"..."`` understands ``\\n \\r \\t \\b \\a \\xHH`` and escaped
    characters, ``'...'`` only ``\\'``; a closing quote must be followed by a space or the
    end of the line. Raises ProtocolError("unbalanced quotes in request")."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\v\f":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if (c == 92 and i + 3 < n and line[i + 1] in b"xX"
                        and line[i + 2] in _HEX and line[i + 3] in _HEX):
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            elif in_single:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in b" \t\r\n\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in b" \t\r\n\v\f":
                    break
                if c == 34:
                    in_double = True
                elif c == 39:
                    in_single = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


#: ``_BULK_HEADER_LINE(n)`` is the canonical header line of an n-byte argument, without its CRLF.
_BULK_HEADER_LINE: Final = b"$%d".__mod__


def parse_requests(data: bytes, out: MutableSequence[list[bytes]], max_count: int,
                   max_bulk: int) -> int:
    """The fast path of :class:`RequestReader`: append the whole, well-formed multibulk
    requests at the start of ``data`` to ``out``, with at most ``max_count`` arguments of
    at most ``max_bulk`` bytes each, headers in canonical form (digits, no sign, no
    leading zero); return where the first other one starts (an incomplete, inline,
    malformed or oversized request, or ``*0``), which the byte-by-byte reader then
    handles -- and explains.

    One pass over the header bytes, their digits summed as they are read, and one slice
    per argument: compiled (mypyc) the loops run on unboxed integers, 0.2 us a pipelined
    SET where splitting the read into lines (one string per header too, compared with the
    canonical headers built again) took 2.7 us; as pure Python it costs about what the
    split did. A header is canonical when it has 1-7 (``*``) or 1-18 (``$``) digits and no
    leading zero (``$0`` is the empty argument)."""
    n = len(data)
    pos = 0
    while pos < n and data[pos] == 42:  # '*'
        p = pos + 1
        count = 0
        while p < n:
            c = data[p]
            if c < 48 or c > 57:
                break
            count = count * 10 + (c - 48)
            p += 1
        digits = p - pos - 1
        # (Each test before an index guards it: p + 1 < n before data[p] and data[p + 1].)
        if digits == 0 or digits > 7 or data[pos + 1] == 48 or p + 1 >= n \
                or data[p] != 13 or data[p + 1] != 10 or count > max_count:
            return pos
        p += 2
        args: list[bytes] = []
        while count:
            if p >= n or data[p] != 36:  # '$'
                return pos
            q = p + 1
            size = 0
            while q < n:
                c = data[q]
                if c < 48 or c > 57:
                    break
                size = size * 10 + (c - 48)
                q += 1
            digits = q - p - 1
            if digits == 0 or digits > 18 or (digits > 1 and data[p + 1] == 48) \
                    or size > max_bulk:
                return pos
            start = q + 2
            end = start + size
            # end + 2 <= n first: it also guarantees q + 1 < n.
            if end + 2 > n or data[q] != 13 or data[q + 1] != 10 or data[end] != 13 \
                    or data[end + 1] != 10:
                return pos
            args.append(data[start:end])
            p = end + 2
            count -= 1
        out.append(args)
        pos = p
    return pos


class RequestReader:
    """Turns the bytes a client sends into requests (lists of bytes arguments).

    Feed every chunk read from the socket to :meth:`feed`; it appends the requests completed
    by that chunk, in order. Malformed input or a broken limit raises
    :class:`~shaledb.server.errors.ProtocolError` after the valid requests before it were
    appended; the caller answers them, then the error, and closes the connection.
    """

    __slots__ = ("_buf", "_args", "_left", "_bulk", "_partial", "max_bulk_len",
                 "max_query_buffer", "unauthenticated", "held")

    def __init__(self, max_bulk_len: int, max_query_buffer: int) -> None:
        #: Bytes received and not yet consumed.
        self._buf = bytearray()
        #: Arguments of the multibulk request being read (None between requests).
        self._args: list[bytes] | None = None
        #: Arguments still to read, and the length of the next one (-1: header not read).
        self._left = 0
        self._bulk = -1
        #: Bytes held in ``_args``.
        self._partial = 0
        self.max_bulk_len = max_bulk_len
        self.max_query_buffer = max_query_buffer
        #: (most arguments, longest argument) while the client has not authenticated, set by
        #: the connection before each feed; None: only the limits above. Checked at each
        #: ``*<n>`` and ``$<len>`` header, complete request or not.
        self.unauthenticated: tuple[int, int] | None = None
        #: Parsing stopped at a header over the ``unauthenticated`` limits because requests
        #: before it are still to run (one may be an AUTH): feed again (``b""`` will do)
        #: once they ran, with the limits that then apply.
        self.held = False

    @property
    def buffered(self) -> int:
        """Bytes of incomplete requests held (the client's query buffer)."""
        return len(self._buf) + self._partial

    def feed(self, data: bytes, out: MutableSequence[list[bytes]]) -> None:
        """Append the requests completed by ``data`` to ``out`` (an empty request is skipped,
        as in Redis)."""
        buf = self._buf
        self.held = False
        if not buf and self._args is None:
            # Nothing held from before (the usual case): whole requests are cut straight
            # out of ``data``, one copy per argument; only what is left is buffered.
            guest = self.unauthenticated
            pos = parse_requests(data, out, MAX_MULTIBULK if guest is None else guest[0],
                                 self.max_bulk_len if guest is None
                                 else min(self.max_bulk_len, guest[1]))
            if pos == len(data):
                return
            buf += memoryview(data)[pos:]
        else:
            buf += data
        pos = 0
        try:
            pos = self._parse(buf, out)
        finally:
            del buf[:pos]
        if self.buffered > self.max_query_buffer:
            raise ProtocolError(
                f"client query buffer of {self.buffered} bytes exceeds the limit of "
                f"{self.max_query_buffer} bytes")

    def _parse(self, buf: bytearray, out: MutableSequence[list[bytes]]) -> int:
        """Consume complete requests and headers from ``buf``; returns the bytes consumed."""
        pos, n = 0, len(buf)
        max_bulk = self.max_bulk_len
        guest = self.unauthenticated
        max_count, fast_bulk = MAX_MULTIBULK, max_bulk
        if guest is not None:
            max_count, fast_bulk = guest[0], min(max_bulk, guest[1])
        request, bulk = _REQUEST_HEADER.match, _BULK_HEADER.match
        while pos < n:
            args = self._args
            if args is None:
                # Fast path: a whole, well-formed request already in the buffer, headers
                # matched in C. Anything else (incomplete, malformed, over a limit) falls
                # through to the byte-by-byte reader below, which says what is wrong.
                m = request(buf, pos)
                if m is not None and int(m[1]) <= max_count:
                    count = int(m[1])
                    p = m.end()
                    fast: list[bytes] = []
                    while count:
                        h = bulk(buf, p)
                        if h is None:
                            break
                        start = h.end()
                        end = start + int(h[1])
                        if end + 2 > n or buf[end] != 13 or buf[end + 1] != 10 \
                                or end - start > fast_bulk:
                            break
                        fast.append(bytes(buf[start:end]))
                        p = end + 2
                        count -= 1
                    if not count:
                        out.append(fast)
                        pos = p
                        continue
                if buf[pos] != 42:  # not '*': an inline command
                    nl = buf.find(b"\n", pos, pos + MAX_INLINE + 1)
                    if nl < 0:
                        if n - pos > MAX_INLINE:
                            raise ProtocolError("too big inline request")
                        return pos
                    words = split_inline(bytes(buf[pos:nl]))
                    for w in words:
                        if len(w) > max_bulk:
                            raise ProtocolError("invalid bulk length")
                    if guest is not None and words and (
                            len(words) > guest[0] or max(map(len, words)) > guest[1]):
                        if out:
                            self.held = True
                            return pos
                        raise ProtocolError("unauthenticated multibulk length"
                                            if len(words) > guest[0]
                                            else "unauthenticated bulk length")
                    pos = nl + 1
                    if words:
                        out.append(words)
                    continue
                nl = buf.find(b"\r\n", pos, pos + _MAX_HEADER)
                if nl < 0:
                    if n - pos >= _MAX_HEADER:
                        raise ProtocolError("invalid multibulk length")
                    return pos
                count = _number(buf[pos + 1:nl], "multibulk length")
                if count > MAX_MULTIBULK:
                    raise ProtocolError("invalid multibulk length")
                if guest is not None and count > guest[0]:
                    if out:  # the requests before it run first: one may log in
                        self.held = True
                        return pos
                    raise ProtocolError("unauthenticated multibulk length")
                pos = nl + 2
                if count <= 0:
                    continue  # "*0" and "*-1" are ignored, as in Redis
                args = self._args = []
                self._left = count
            while self._left:
                if self._bulk < 0:
                    if pos >= n:
                        return pos
                    if buf[pos] != 36:  # '$'
                        raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
                    nl = buf.find(b"\r\n", pos, pos + _MAX_HEADER)
                    if nl < 0:
                        if n - pos >= _MAX_HEADER:
                            raise ProtocolError("invalid bulk length")
                        return pos
                    size = _number(buf[pos + 1:nl], "bulk length")
                    if size < 0 or size > max_bulk:
                        raise ProtocolError("invalid bulk length")
                    if guest is not None and size > guest[1]:
                        if out:
                            self.held = True
                            return pos
                        raise ProtocolError("unauthenticated bulk length")
                    self._bulk = size
                    pos = nl + 2
                size = self._bulk
                if n - pos < size + 2:
                    return pos
                if buf[pos + size:pos + size + 2] != b"\r\n":
                    raise ProtocolError("bulk string not terminated by CRLF")
                args.append(bytes(buf[pos:pos + size]))
                self._partial += size
                pos += size + 2
                self._bulk = -1
                self._left -= 1
            out.append(args)
            self._args = None
            self._partial = 0
        return pos


# -- replies ---------------------------------------------------------------------------------

_CRLF: Final = b"\r\n"
_NULL2: Final = b"$-1\r\n"
_NULL3: Final = b"_\r\n"
#: The integer replies 0-1023, encoded once.
SMALL_INTS: Final = tuple(b":%d\r\n" % i for i in range(1024))


def format_double(value: float) -> bytes:
    """A double the way Redis prints it in replies (``inf``, ``-inf``, ``nan``, shortest
    round-trip digits otherwise)."""
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    if math.isnan(value):
        return b"nan"
    return repr(value).encode()


#: Bulk strings at least this long are encoded as three parts (header, the value itself,
#: CRLF) instead of being copied into one: the value is then copied only once, when the
#: batch of replies is joined for the transport.
SPLIT_BULK: Final = 16 * 1024


#: Bytes of small elements an ArrayBuilder packs into one part (and hands to
#: :meth:`ArrayBuilder.extend` at a time).
CHUNK: Final = 64 * 1024
_CHUNK: Final = CHUNK


class Encoded:
    """A reply already encoded in RESP (:class:`ArrayBuilder`): its byte strings in order,
    and their total size."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes], size: int) -> None:
        self.parts = parts
        self.size = size

    def __repr__(self) -> str:
        return f"<Encoded {self.size} bytes>"


class ArrayBuilder:
    """An array reply encoded element by element and charged to a byte budget as it grows
    (MGET, KRANGE, KEYS, SCAN, EXEC). :meth:`add` returns False once the array passed
    ``budget``; the caller then stops -- the client is past its output buffer limit and is
    disconnected -- so a reply never grows far beyond the limit, whatever the request asked
    for (a 2 KB MGET asked for 800 MB and used to build it, three times over, first).

    Small elements are packed into chunks of about _CHUNK bytes (a million keys are a few
    hundred byte strings, not a million); big values stay parts of their own, uncopied."""

    __slots__ = ("resp", "budget", "parts", "size", "count", "_buf")

    def __init__(self, resp: int, budget: int) -> None:
        self.resp = resp
        self.budget = budget
        self.parts: list[bytes] = [b""]  # [0]: the header, once the count is known
        self.size = 0
        self.count = 0
        self._buf = bytearray()

    def add(self, value: Any) -> bool:
        """Append one element; False when the array is now over its budget."""
        buf = self._buf
        before = len(buf)
        if type(value) is bytes and len(value) < SPLIT_BULK:
            buf += b"$%d\r\n" % len(value)
            buf += value
            buf += _CRLF
            self.size += len(buf) - before
        elif type(value) is Encoded:
            self._flush()
            self.parts += value.parts
            self.size += value.size
        else:
            tmp: list[bytes] = []
            encode(value, self.resp, tmp)
            for part in tmp:
                self.size += len(part)
                if len(part) < SPLIT_BULK:
                    buf += part
                else:
                    self._flush()
                    self.parts.append(part)
        if len(buf) >= _CHUNK:
            self._flush()
        self.count += 1
        return self.size <= self.budget

    def extend(self, values: list[bytes]) -> bool:
        """Append byte strings, encoded together in C (LRANGE); False when the array is
        now over its budget. The caller hands over at most about _CHUNK bytes at a time,
        so the budget is checked as often as :meth:`add` would for small values."""
        if not values:
            return self.size <= self.budget
        if max(map(len, values)) >= SPLIT_BULK:
            return all(self.add(value) for value in values)  # stops at the first False
        data = b"\r\n".join(itertools.chain.from_iterable(
            zip(map(_BULK_HEADER_LINE, map(len, values)), values, strict=True)))
        buf = self._buf
        buf += data
        buf += _CRLF
        self.size += len(data) + 2
        self.count += len(values)
        if len(buf) >= _CHUNK:
            self._flush()
        return self.size <= self.budget

    def _flush(self) -> None:
        if self._buf:
            self.parts.append(bytes(self._buf))
            self._buf.clear()

    def done(self, kind: str = "array") -> Encoded:
        """The encoded aggregate: an array, or (``kind``) a ``map`` of the pairs added
        (key, value, key, value ...) or a ``set``, which RESP3 marks as such (``%``,
        ``~``) and RESP2 sends as a flat array (HGETALL, SMEMBERS)."""
        self._flush()
        if self.resp == 3 and kind == "map":
            header = b"%%%d\r\n" % (self.count // 2)
        elif self.resp == 3 and kind == "set":
            header = b"~%d\r\n" % self.count
        else:
            header = b"*%d\r\n" % self.count
        self.parts[0] = header
        return Encoded(self.parts, self.size + len(header))


def encode(value: Any, resp: int, out: list[bytes]) -> None:
    """Append the RESP ``resp`` (2 or 3) encoding of ``value`` to ``out``."""
    t = type(value)
    if t is bytes:
        if len(value) < SPLIT_BULK:
            out.append(b"$%d\r\n%s\r\n" % (len(value), value))
        else:
            out += (b"$%d\r\n" % len(value), value, _CRLF)
    elif t is Encoded:
        out += value.parts
    elif t is Status:
        out.append(b"+%s\r\n" % value)
    elif t is int:
        out.append(SMALL_INTS[value] if 0 <= value < 1024 else b":%d\r\n" % value)
    elif value is None:
        out.append(_NULL3 if resp == 3 else _NULL2)
    elif t is list or t is tuple:
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            encode(item, resp, out)
    elif t is str:
        data = value.encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif t is bool:
        if resp == 3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(b":1\r\n" if value else b":0\r\n")
    elif t is dict:
        out.append(b"%c%d\r\n" % ((37, len(value)) if resp == 3 else (42, 2 * len(value))))
        for k, v in value.items():
            encode(k, resp, out)
            encode(v, resp, out)
    elif t is Push:
        out.append(b"%c%d\r\n" % (62 if resp == 3 else 42, len(value)))
        for item in value:
            encode(item, resp, out)
    elif t is set or t is frozenset or t is SetReply:
        out.append(b"%c%d\r\n" % (126 if resp == 3 else 42, len(value)))
        for item in value:
            encode(item, resp, out)
    elif t is float:
        text = format_double(value)
        out.append(b",%s\r\n" % text if resp == 3 else b"$%d\r\n%s\r\n" % (len(text), text))
    elif isinstance(value, CommandError):
        out.append(value.reply())
    elif t is Verbatim:
        if resp == 3:
            out.append(b"=%d\r\ntxt:%s\r\n" % (len(value) + 4, value))
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif value is NULL_ARRAY:
        out.append(_NULL3 if resp == 3 else b"*-1\r\n")
    else:
        raise TypeError(f"cannot encode a {t.__name__} as a RESP reply")


def encode_one(value: Any, resp: int) -> bytes:
    """The RESP encoding of one reply."""
    out: list[bytes] = []
    encode(value, resp, out)
    return out[0] if len(out) == 1 else b"".join(out)


__all__ = [
    "SMALL_INTS",
    "SPLIT_BULK",
    "ArrayBuilder",
    "Encoded",
    "MAX_INLINE",
    "NULL_ARRAY",
    "OK",
    "PONG",
    "Push",
    "QUEUED",
    "RequestReader",
    "SetReply",
    "Status",
    "Verbatim",
    "encode",
    "encode_one",
    "format_double",
    "parse_requests",
    "split_inline",
]
