"""Every limit of the server, hit on purpose: the client gets a clear error or a closed
connection, the server keeps serving everyone else and buffers no more than the limit."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from shaledb.errors import InvalidArgument
from shaledb.server import ServerConfig

from ._server_support import RawClient, raw_connect, read_reply, read_until_closed


def _alive(st) -> None:
    c = RawClient(st.port)
    assert c("PING") == b"PONG"
    c.close()


def test_maxclients(server_factory) -> None:
    st = server_factory(maxclients=3)
    clients = [RawClient(st.port) for _ in range(3)]
    for c in clients:
        assert c("PING") == b"PONG"
    extra = raw_connect(st.port)
    assert read_until_closed(extra) == b"-ERR max number of clients reached\r\n"
    extra.close()
    clients.pop().close()
    deadline = time.monotonic() + 5
    while st.call(lambda: len(st.server.connections)) > 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    late = RawClient(st.port)
    assert late("PING") == b"PONG"
    assert st.call(lambda: st.server.stats["rejected_connections"]) == 1
    for c in [*clients, late]:
        c.close()


def test_bulk_length_limit(server_factory) -> None:
    st = server_factory(proto_max_bulk_len=1024, client_query_buffer_limit=8192)
    c = RawClient(st.port)
    assert c("SET", "k", b"x" * 1024) == b"OK"
    c.send("SET", "k", b"x" * 1025)
    assert read_until_closed(c.sock) == b"-ERR Protocol error: invalid bulk length\r\n"
    c.close()
    s = raw_connect(st.port)
    s.sendall(b"SET k " + b"y" * 1100 + b"\r\n")
    assert read_until_closed(s) == b"-ERR Protocol error: invalid bulk length\r\n"
    s.close()
    _alive(st)


def test_strings_built_by_commands_obey_the_bulk_limit(server_factory) -> None:
    st = server_factory(proto_max_bulk_len=1024, client_query_buffer_limit=8192)
    c = st.client()
    c.set("k", b"x" * 1000)
    with pytest.raises(redis.ResponseError, match="string exceeds maximum allowed size"):
        c.append("k", b"y" * 100)
    with pytest.raises(redis.ResponseError, match="string exceeds maximum allowed size"):
        c.setrange("k", 1020, b"zzzzzzzz")
    assert c.strlen("k") == 1000
    c.close()


def _stream_until_closed(port: int, head: bytes, filler: bytes, most: int) -> tuple[int, bytes]:
    """Send ``head`` then ``filler`` repeatedly until the server closes the connection or
    ``most`` bytes went out; returns (bytes sent, what the server answered)."""
    s = raw_connect(port)
    s.sendall(head)
    sent = len(head)
    try:
        while sent < most:
            s.sendall(filler)
            sent += len(filler)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.settimeout(5)
    answer = read_until_closed(s)
    s.close()
    return sent, answer


def test_oversized_headers_are_refused_before_any_data(server_factory) -> None:
    """A length announced past a limit is refused when its header line arrives."""
    st = server_factory(proto_max_bulk_len=1024, client_query_buffer_limit=4096)
    for head, error in ((b"*2\r\n$3\r\nGET\r\n$100000000\r\n", b"invalid bulk length"),
                        (b"*2000000000\r\n", b"invalid multibulk length"),
                        (b"*1\r\n*1\r\n", b"expected '$', got '*'"),
                        (b"*1\r\n$" + b"9" * 40, b"invalid bulk length")):
        s = raw_connect(st.port)
        s.sendall(head)
        assert read_until_closed(s) == b"-ERR Protocol error: " + error + b"\r\n"
        s.close()
    _alive(st)


def test_query_buffer_limit_on_a_big_request(server_factory) -> None:
    """Arguments each within proto-max-bulk-len, together past the query buffer limit."""
    st = server_factory(proto_max_bulk_len=1024, client_query_buffer_limit=4096)
    sent, answer = _stream_until_closed(
        st.port, b"*100000\r\n", b"$1000\r\n" + b"z" * 1000 + b"\r\n", 50 * 1024 * 1024)
    assert answer.startswith(b"-ERR Protocol error: client query buffer of ")
    assert sent < 50 * 1024 * 1024  # closed long before the request was complete
    _alive(st)


def test_inline_line_limit(server) -> None:
    sent, answer = _stream_until_closed(server.port, b"SET k ", b"v" * 4096, 1024 * 1024)
    assert answer == b"-ERR Protocol error: too big inline request\r\n"
    _alive(server)


def test_long_pipelines_are_not_mistaken_for_a_big_request(server_factory) -> None:
    """Many small requests streamed back to back never count against the query buffer."""
    st = server_factory(proto_max_bulk_len=1024, client_query_buffer_limit=4096)
    s = raw_connect(st.port)
    frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"
    n = 20_000  # ~700 KB, far above the 4 KiB limit, cut at arbitrary points
    s.sendall(frame * n)
    assert read_reply(s, 5 * n) == b"+OK\r\n" * n
    s.close()


def test_idle_timeout(server_factory) -> None:
    st = server_factory(timeout=1)
    idle = raw_connect(st.port)
    busy = RawClient(st.port)
    start = time.monotonic()
    for _ in range(8):
        assert busy("PING") == b"PONG"
        time.sleep(0.25)
    idle.settimeout(5)
    assert read_until_closed(idle) == b""
    assert time.monotonic() - start < 4
    assert busy("PING") == b"PONG"
    assert st.call(lambda: st.server.stats["idle_timeouts"]) >= 1
    idle.close()
    busy.close()


def test_watched_keys_limit(server_factory) -> None:
    st = server_factory(max_watched_keys=3)
    c = RawClient(st.port)
    assert c("WATCH", "a", "b") == b"OK"
    assert c("WATCH", "a", "c") == b"OK"   # a repeat does not count twice
    assert str(c("WATCH", "d")).startswith("ERR too many watched keys")
    assert c("UNWATCH") == b"OK"
    assert c("WATCH", "d", "e", "f") == b"OK"
    c.close()


def test_multi_queue_limit(server_factory) -> None:
    st = server_factory(max_multi_bytes=1000)
    c = RawClient(st.port)
    c("MULTI")
    assert c("SET", "k", b"x" * 400) == b"QUEUED"
    assert str(c("SET", "k", b"x" * 700)).startswith("ERR MULTI queue exceeds max-multi-bytes")
    assert str(c("EXEC")).startswith("EXECABORT")
    assert c("GET", "k") is None
    c.close()


def test_scan_cursor_table_is_bounded(server_factory) -> None:
    st = server_factory(max_scan_cursors=2)
    c = st.client()
    c.mset({f"k{i}": "v" for i in range(20)})
    cursors = [c.scan(0, count=2)[0] for _ in range(3)]
    assert all(cursors)
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        c.scan(cursors[0], count=2)
    assert c.scan(cursors[2], count=2)[1]
    assert st.call(lambda: len(st.server.scan_cursors)) == 2
    c.close()


def test_client_that_does_not_read_is_paused(server) -> None:
    """A client pipelining requests for big replies without reading them makes the server
    stop reading from it, instead of buffering every reply."""
    c = server.client()
    c.set("big", b"b" * (256 * 1024))
    c.close()
    s = raw_connect(server.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    n = 2000  # 500 MB of replies if the server buffered them all
    request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    payload = request * n
    while sent < len(payload) and time.monotonic() < deadline:
        try:
            sent += s.send(payload[sent:])
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.5)
    processed = server.call(lambda: server.server.stats["total_commands_processed"])
    assert processed < n  # the server stopped reading
    s.setblocking(True)
    s.settimeout(10)
    s.sendall(payload[sent:])
    reply_size = len(b"$262144\r\n") + 256 * 1024 + 2
    got = 0
    while got < reply_size * n:
        chunk = s.recv(1 << 20)
        assert chunk
        got += len(chunk)
    assert got == reply_size * n
    s.close()


def test_config_validation() -> None:
    with pytest.raises(InvalidArgument, match="maxclients"):
        ServerConfig(maxclients=0)
    with pytest.raises(InvalidArgument, match="client_query_buffer_limit must exceed"):
        ServerConfig(proto_max_bulk_len=4096, client_query_buffer_limit=4096)
    with pytest.raises(InvalidArgument, match="appendfsync"):
        ServerConfig(appendfsync="sometimes")
    with pytest.raises(InvalidArgument, match="timeout"):
        ServerConfig(timeout=-1)
    with pytest.raises(InvalidArgument, match="port"):
        ServerConfig(port=70000)
    with pytest.raises(InvalidArgument, match="unknown server setting"):
        ServerConfig.from_mapping({"maxclient": 5})


def test_engine_settings_reach_the_database(server_factory) -> None:
    st = server_factory(memtable_size=256 * 1024, appendfsync="no")
    opts = st.call(lambda: st.server.db.options)
    assert opts.memtable_size == 256 * 1024
    assert opts.fsync_interval is None  # appendfsync no: no background fsync
    assert st.call(lambda: st.server.sync_group) is None
    default = server_factory()
    assert default.call(lambda: default.server.db.options.fsync_interval) == 1.0


def test_config_file_and_password_env(tmp_path, monkeypatch) -> None:
    path = tmp_path / "shaledb.toml"
    path.write_text('[server]\nport = 7000\nmaxclients = 50\nproto-max-bulk-len = 2048\n')
    monkeypatch.setenv("SHALEDB_REQUIREPASS", "from-env")
    cfg = ServerConfig.load(str(path), {"port": 7001, "host": None})
    assert (cfg.port, cfg.maxclients, cfg.proto_max_bulk_len, cfg.host) == (
        7001, 50, 2048, "127.0.0.1")
    assert cfg.requirepass == "from-env"
    assert "from-env" not in repr(cfg)
    path.write_text("port = [")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        ServerConfig.load(str(path))


def test_shutdown_answers_a_paused_backlog(server_factory) -> None:
    """Requests read but not yet run (the client was slow to read) are still answered by a
    graceful shutdown before the connection closes."""
    st = server_factory()
    c = st.client()
    c.set("big", b"b" * (256 * 1024))
    c.close()
    s = raw_connect(st.port)
    n = 200
    s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * n)
    time.sleep(0.3)
    assert st.call(lambda: st.server.stats["total_commands_processed"]) < n + 1
    stopper = threading.Thread(target=st.stop)
    stopper.start()
    time.sleep(0.2)
    reply_size = len(b"$262144\r\n") + 256 * 1024 + 2
    s.settimeout(10)
    got = 0
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    stopper.join(30)
    assert got == reply_size * n
    s.close()
