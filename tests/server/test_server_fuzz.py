"""Hostile input: random bytes and malformed RESP frames (hypothesis). The server must answer
every complete request, reply with an error or close that connection on garbage, never crash,
keep serving other clients, and never buffer more than its query-buffer limit."""

from __future__ import annotations

import socket

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shaledb.server.errors import ProtocolError
from shaledb.server.net.protocol import RequestReader

from ._server_support import RawClient, raw_connect

LIMIT_BULK = 4096
LIMIT_QUERY = 16384

_tokens = st.sampled_from([
    b"*", b"$", b"\r\n", b"\r", b"\n", b"-1", b"0", b"1", b"2", b"3", b"999999999999",
    b"2147483648", b"PING", b"SET", b"GET", b"k", b"MULTI", b"EXEC", b"+OK", b":1", b"%1",
    b"~2", b"_", b"#t", b",1.5", b"'", b'"', b"\\x4", b" ", b"\x00", b"\xff", b"QUIT",
])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Mostly well-formed multibulk frames with random damage, plus token soup."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return b"".join(draw(st.lists(_tokens, max_size=40)))
    args = draw(st.lists(st.binary(max_size=20), min_size=1, max_size=6))
    frame = bytearray(b"*%d\r\n" % len(args))
    for a in args:
        frame += b"$%d\r\n%s\r\n" % (len(a), a)
    for _ in range(draw(st.integers(0, 3))):
        if not frame:
            break
        i = draw(st.integers(0, len(frame) - 1))
        op = draw(st.integers(0, 2))
        if op == 0:
            frame[i] = draw(st.integers(0, 255))
        elif op == 1:
            del frame[i]
        else:
            frame[i:i] = draw(_tokens)
    return bytes(frame)


def _valid_replies(data: bytes) -> int:
    """Number of replies in ``data``; fails if the server sent anything but whole replies."""
    reader = hiredis.Reader()
    reader.feed(data)
    count = 0
    while (reply := reader.gets()) is not False:
        count += 1
        del reply
    assert not reader.has_data(), data
    return count


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from shaledb.server import ServerConfig

    from ._server_support import ServerThread

    st_ = ServerThread(ServerConfig(port=0, host="127.0.0.1",
                                    dir=str(tmp_path_factory.mktemp("fuzz") / "db"),
                                    proto_max_bulk_len=LIMIT_BULK,
                                    client_query_buffer_limit=LIMIT_QUERY))
    yield st_
    st_.stop()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(frames(), min_size=1, max_size=4))
def test_fuzzed_input_never_hurts_the_server(fuzz_server, chunks: list[bytes]) -> None:
    bystander = RawClient(fuzz_server.port)
    s = raw_connect(fuzz_server.port)
    s.settimeout(10)
    try:
        for chunk in chunks:
            s.sendall(chunk)
        try:
            s.shutdown(socket.SHUT_WR)  # end of input: the server must answer and close
        except OSError:
            pass  # the server already closed (QUIT, protocol error)
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
    except (BrokenPipeError, ConnectionResetError):
        data = b""  # closed while we were still sending: fine
    finally:
        s.close()
    _valid_replies(data)
    assert bystander("PING") == b"PONG"
    assert bystander("SET", "bystander", "ok") == b"OK"
    bystander.close()
    buffered = fuzz_server.call(
        lambda: max((c.reader.buffered for c in fuzz_server.server.connections.values()),
                    default=0))
    assert buffered <= LIMIT_QUERY


@settings(max_examples=300, deadline=None)
@given(data=st.lists(frames(), min_size=1, max_size=5), cut=st.integers(1, 50))
def test_reader_same_requests_whatever_the_chunking(data: list[bytes], cut: int) -> None:
    """The reader gives the same requests (or the same error) however the bytes are split."""
    stream = b"".join(data)

    def parse(chunks: list[bytes]) -> tuple[list[list[bytes]], str | None]:
        reader = RequestReader(LIMIT_BULK, LIMIT_QUERY)
        out: list[list[bytes]] = []
        try:
            for c in chunks:
                reader.feed(c, out)
        except Exception as exc:  # noqa: BLE001 - compared below
            return out, str(exc)
        return out, None

    whole = parse([stream])
    pieces = parse([stream[i:i + cut] for i in range(0, len(stream), cut)])
    if whole[1] is None and pieces[1] is None:
        assert whole == pieces
    else:
        # An error may be noticed at a different point; the requests before it agree.
        n = min(len(whole[0]), len(pieces[0]))
        assert whole[0][:n] == pieces[0][:n]
        assert (whole[1] is None) == (pieces[1] is None) or "too big" in str(whole[1]) + str(
            pieces[1]) or "buffer" in str(whole[1]) + str(pieces[1])


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6),
                         min_size=1, max_size=8))
def test_fast_and_byte_by_byte_parsing_agree(requests: list[list[bytes]]) -> None:
    """Whole requests in the buffer take the reader's fast path (regex headers); fed one
    byte at a time they take the incremental one: both give the same requests, values with
    CR LF inside included."""
    stream = b"".join(b"*%d\r\n" % len(r) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in r)
                      for r in requests)
    whole: list[list[bytes]] = []
    RequestReader(LIMIT_BULK, LIMIT_QUERY).feed(stream, whole)
    reader, single = RequestReader(LIMIT_BULK, LIMIT_QUERY), []
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1], single)
    assert whole == single == requests


@pytest.mark.parametrize("frame", [
    b"*1\r\n$03\r\nabc\r\n",          # a leading zero in a bulk length
    b"*01\r\n$3\r\nabc\r\n",          # ... and in a request header
    b"*1\r\n$+3\r\nabc\r\n",
    b"*1\r\n$3\r\nabcd\r\n",          # longer than announced
    b"*1\r\n$5000\r\n" + b"x" * 5000 + b"\r\n",  # over proto-max-bulk-len
    b"*2000000\r\n$1\r\na\r\n",       # over the argument limit
])
def test_malformed_frames_are_refused_whole_and_in_pieces(frame: bytes) -> None:
    for chunks in ([frame], [frame[i:i + 1] for i in range(len(frame))]):
        reader, out = RequestReader(LIMIT_BULK, LIMIT_QUERY), []
        with pytest.raises(ProtocolError):
            for c in chunks:
                reader.feed(c, out)
        assert out == []
