"""RESP: reading requests (hiredis' C reader plus inline commands) and encoding replies.

Requests. A client sends either a *multibulk* request, ``*<n>\\r\\n`` followed by ``n`` bulk
strings ``$<len>\\r\\n<bytes>\\r\\n``, or an *inline* command, one line of space-separated
words (what a person types into telnet). Multibulk frames are parsed by hiredis; inline lines
are split here with the quoting rules of Redis' ``sdssplitargs``. A new request is inline when
its first byte is not ``*``.

To know where one request ends and the next begins without copying the input, the reader
counts the bytes fed to hiredis and subtracts the encoded size of each request it returns.
hiredis only accepts canonical lengths, so that size is exact for every frame made of bulk
strings. Frames with integer, null, nested or RESP3 elements are refused and close the
connection. A simple-string element (``+x``) cannot be told from a bulk string in hiredis'
output, so such a frame is accepted, and the bytes after it are then read from a wrong offset:
they fail as unknown commands or as a protocol error (no real client sends such frames).

Limits (all enforced here, before a request reaches a command):

- ``max_query_buffer``: bytes of a request not yet complete. Past it the connection is closed:
  a client can never make the server buffer more than this per connection (plus up to one
  read of 64 KiB).
- ``max_bulk_len``: the length of one argument (``proto-max-bulk-len``).
- ``MAX_INLINE``: the length of an inline line (64 KiB, as in Redis).

Replies. :func:`encode` turns Python values into RESP2 or RESP3: ``bytes``/``str`` -> bulk
string, ``int`` -> integer, ``None`` -> null, ``list``/``tuple`` -> array, ``dict`` -> map
(flat array in RESP2), ``set``/``frozenset`` -> set (array in RESP2), ``float`` -> double
(bulk string in RESP2), :class:`Status` -> simple string, :class:`CommandError` -> error,
``NULL_ARRAY`` -> null array (``*-1`` in RESP2).
"""

from __future__ import annotations

import math
from typing import Any, Final

import hiredis

from .errors import CommandError, ProtocolError

#: Longest inline command line accepted, in bytes (Redis' PROTO_INLINE_MAX_SIZE).
MAX_INLINE: Final = 64 * 1024


class Status(bytes):
    """A RESP simple string reply (``+OK``)."""

    __slots__ = ()


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


def _frame_size(request: list[Any]) -> int:
    """Bytes of ``request`` encoded canonically as a multibulk frame; raises ProtocolError
    for an element that is not a bulk string."""
    size = 3 + len(str(len(request)))
    for arg in request:
        if type(arg) is not bytes:
            raise ProtocolError(f"expected '$', got a {type(arg).__name__} element")
        n = len(arg)
        size += 5 + len(str(n)) + n
    return size


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


class RequestReader:
    """Turns the bytes a client sends into requests (lists of bytes arguments).

    Feed every chunk read from the socket to :meth:`feed`; it appends the requests completed
    by that chunk, in order. Any malformed input or broken limit raises
    :class:`~shaledb.server.errors.ProtocolError`; the caller then answers with it and closes
    the connection (the reader's state is undefined afterwards).
    """

    __slots__ = ("_reader", "_pending", "_inline", "max_bulk_len", "max_query_buffer")

    def __init__(self, max_bulk_len: int, max_query_buffer: int) -> None:
        self._reader = hiredis.Reader()
        #: Bytes fed to hiredis that no returned request accounts for yet.
        self._pending = 0
        #: The start of an inline line whose end has not arrived.
        self._inline = bytearray()
        self.max_bulk_len = max_bulk_len
        self.max_query_buffer = max_query_buffer

    @property
    def buffered(self) -> int:
        """Bytes of incomplete requests held (the client's query buffer)."""
        return self._pending + len(self._inline)

    def feed(self, data: bytes, out: list[list[bytes]]) -> None:
        """Append the requests completed by ``data`` to ``out`` (an empty request is skipped,
        as in Redis). On a ProtocolError, ``out`` holds the valid requests before it."""
        view = memoryview(data)
        while len(view):
            if self._inline or (self._pending == 0 and view[0] != 42):  # 42 = '*'
                view = self._feed_inline(view, out)
            else:
                view = self._feed_multibulk(view, out)
        if self.buffered > self.max_query_buffer:
            raise ProtocolError(
                f"client query buffer of {self.buffered} bytes exceeds the limit of "
                f"{self.max_query_buffer} bytes")

    def _feed_inline(self, view: memoryview, out: list[list[bytes]]) -> memoryview:
        nl = bytes(view[:MAX_INLINE + 1]).find(b"\n")
        if nl < 0:
            if len(self._inline) + len(view) > MAX_INLINE:
                raise ProtocolError("too big inline request")
            self._inline += view
            return view[len(view):]
        line = bytes(self._inline) + bytes(view[:nl])
        self._inline.clear()
        if len(line) > MAX_INLINE:
            raise ProtocolError("too big inline request")
        args = split_inline(line)
        for arg in args:
            if len(arg) > self.max_bulk_len:
                raise ProtocolError("invalid bulk length")
        if args:
            out.append(args)
        return view[nl + 1:]

    def _feed_multibulk(self, view: memoryview, out: list[list[bytes]]) -> memoryview:
        reader = self._reader
        reader.feed(view)  # type: ignore[arg-type]  # hiredis takes any buffer
        self._pending += len(view)
        max_bulk = self.max_bulk_len
        while True:
            try:
                request = reader.gets()
            except hiredis.ProtocolError as exc:
                raise ProtocolError(str(exc)) from None
            if request is False:
                return view[len(view):]
            if request is None:  # "*-1\r\n": a null array, ignored like Redis does
                self._pending -= 5
            elif type(request) is not list:
                raise ProtocolError(f"expected '*', got a {type(request).__name__}")
            else:
                self._pending -= _frame_size(request)
                for arg in request:
                    if len(arg) > max_bulk:
                        raise ProtocolError("invalid bulk length")
                if request:
                    out.append(request)
            if self._pending < 0:
                raise ProtocolError("malformed multibulk frame")
            if self._pending == 0:
                if reader.has_data():
                    raise ProtocolError("malformed multibulk frame")
                return view[len(view):]
            if self._pending <= len(view) and view[len(view) - self._pending] != 42:
                # The rest of this chunk starts an inline command: take it back from hiredis.
                rest = view[len(view) - self._pending:]
                self._reader = reader = hiredis.Reader()
                self._pending = 0
                return rest


# -- replies ---------------------------------------------------------------------------------

_CRLF: Final = b"\r\n"
_NULL2: Final = b"$-1\r\n"
_NULL3: Final = b"_\r\n"
_SMALL_INTS: Final = [b":%d\r\n" % i for i in range(1024)]


def format_double(value: float) -> bytes:
    """A double the way Redis prints it in replies (``inf``, ``-inf``, ``nan``, shortest
    round-trip digits otherwise)."""
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    if math.isnan(value):
        return b"nan"
    return repr(value).encode()


def encode(value: Any, resp: int, out: list[bytes]) -> None:
    """Append the RESP ``resp`` (2 or 3) encoding of ``value`` to ``out``."""
    t = type(value)
    if t is bytes:
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif t is Status:
        out.append(b"+%s\r\n" % value)
    elif t is int:
        out.append(_SMALL_INTS[value] if 0 <= value < 1024 else b":%d\r\n" % value)
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
    elif t is set or t is frozenset:
        out.append(b"%c%d\r\n" % (126 if resp == 3 else 42, len(value)))
        for item in value:
            encode(item, resp, out)
    elif t is float:
        text = format_double(value)
        out.append(b",%s\r\n" % text if resp == 3 else b"$%d\r\n%s\r\n" % (len(text), text))
    elif isinstance(value, CommandError):
        out.append(value.reply())
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
    "MAX_INLINE",
    "NULL_ARRAY",
    "OK",
    "PONG",
    "QUEUED",
    "RequestReader",
    "Status",
    "encode",
    "encode_one",
    "format_double",
    "split_inline",
]
