"""Pipelined writes share one write batch: fewer WAL records, and the same answers as if
each command ran alone (errors, WATCH, HELLO in the middle, a failed commit)."""

from __future__ import annotations

import contextlib
import time

import shaledb
from shaledb.server import ServerConfig
from shaledb.testing import FaultInjectionFS

from ._server_support import HOST, ServerThread, raw_connect, read_reply


def _cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_a_pipeline_of_writes_is_one_batch(server) -> None:
    before = server.call(lambda: server.server.db.stats()["wal_records"])
    s = raw_connect(server.port)
    n = 1000
    s.sendall(b"".join(_cmd(b"SET", b"k%d" % i, b"v") for i in range(n)))
    assert read_reply(s, 5 * n) == b"+OK\r\n" * n
    records = server.call(lambda: server.server.db.stats()["wal_records"]) - before
    assert 1 <= records <= 20  # one per read of the socket, not one per command
    c = server.client()
    assert c.dbsize() == n
    c.close()
    s.close()


def test_errors_in_a_write_pipeline_leave_no_trace(server) -> None:
    s = raw_connect(server.port)
    s.sendall(_cmd(b"SET", b"s", b"text") + _cmd(b"SET", b"a", b"1") + _cmd(b"INCR", b"s")
              + _cmd(b"MSET", b"x", b"1", b"k" * 70_000, b"2") + _cmd(b"SET", b"b", b"2")
              + _cmd(b"MGET", b"a", b"b", b"x", b"s"))
    got = read_reply(s, 1)
    while got.count(b"\r\n") < 9:
        got += s.recv(65536)
    assert got.startswith(b"+OK\r\n+OK\r\n-ERR value is not an integer or out of range\r\n"
                          b"-ERR key of 70000 bytes exceeds")
    assert got.endswith(b"+OK\r\n*4\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$4\r\ntext\r\n")
    s.close()


def test_watch_own_write_in_the_same_pipeline(server) -> None:
    s = raw_connect(server.port)
    s.sendall(_cmd(b"WATCH", b"k") + _cmd(b"SET", b"k", b"1") + _cmd(b"MULTI")
              + _cmd(b"SET", b"k", b"2") + _cmd(b"EXEC") + _cmd(b"GET", b"k"))
    expected = b"+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n$1\r\n1\r\n"
    assert read_reply(s, len(expected)) == expected
    s.close()


def test_hello_in_the_middle_of_a_pipeline(server) -> None:
    s = raw_connect(server.port)
    s.sendall(_cmd(b"GET", b"nope") + _cmd(b"HELLO", b"3") + _cmd(b"GET", b"nope"))
    data = b""
    while not data.endswith(b"_\r\n"):
        data += s.recv(65536)
    assert data.startswith(b"$-1\r\n%7\r\n")
    s.close()


def test_a_failed_commit_answers_errors_for_exactly_its_writes(tmp_path) -> None:
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=path), db)
    try:
        s = raw_connect(st.port)
        s.sendall(_cmd(b"SET", b"before", b"1"))
        assert read_reply(s, 5) == b"+OK\r\n"
        fs.inject("write", ".log", count=None)
        s.sendall(_cmd(b"SET", b"a", b"1") + _cmd(b"INCR", b"n") + _cmd(b"GET", b"before")
                  + _cmd(b"SET", b"c", b"3"))
        data = b""
        while data.count(b"\r\n") < 5:
            data += s.recv(65536)
        lines = data.split(b"\r\n")
        assert lines[0].startswith(b"-MISCONF") and lines[1].startswith(b"-MISCONF")
        assert lines[2:4] == [b"$1", b"1"]  # the read in between was answered
        assert lines[4].startswith(b"-MISCONF")
        s.close()
    finally:
        st.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()


def _hold_loop(st: ServerThread, seconds: float) -> None:
    """Block the server's event loop for ``seconds`` (requests sent meanwhile wait in the
    sockets and are all served by the next turn)."""
    assert st.loop is not None
    st.loop.call_soon_threadsafe(time.sleep, seconds)
    time.sleep(0.05)  # the loop is inside the sleep now


def test_writes_of_many_clients_in_one_turn_are_one_batch(server) -> None:
    n = 20
    socks = [raw_connect(server.port) for _ in range(n)]
    for s in socks:  # handshake-free: make sure every connection is registered
        s.sendall(_cmd(b"PING"))
        assert read_reply(s, 7) == b"+PONG\r\n"
    stats = server.call(lambda: server.server.db.stats())
    commits = server.call(lambda: server.server.turn.commits)
    _hold_loop(server, 0.5)
    for i, s in enumerate(socks):
        s.sendall(_cmd(b"SET", b"k%d" % i, b"v%d" % i) + _cmd(b"INCR", b"counter"))
    for s in socks:
        got = read_reply(s, 8)
        while got.count(b"\r\n") < 2:
            got += s.recv(100)
        assert got.startswith(b"+OK\r\n:")
    after = server.call(lambda: server.server.db.stats())
    # One epoll turn saw all twenty clients: their writes went out as one WAL record.
    assert server.call(lambda: server.server.turn.commits) - commits == 1
    assert after["wal_records"] - stats["wal_records"] == 1
    c = server.client()
    assert int(c.get("counter")) == n
    assert c.mget([f"k{i}" for i in range(n)]) == [b"v%d" % i for i in range(n)]
    c.close()
    for s in socks:
        s.close()


def test_a_read_in_the_same_turn_sees_the_writes_before_it(server) -> None:
    writer, reader = raw_connect(server.port), raw_connect(server.port)
    for s in (writer, reader):
        s.sendall(_cmd(b"PING"))
        assert read_reply(s, 7) == b"+PONG\r\n"
    for round_ in range(20):
        _hold_loop(server, 0.1)
        key = b"k%d" % round_
        writer.sendall(_cmd(b"SET", key, b"v"))
        reader.sendall(_cmd(b"GET", key))
        assert read_reply(writer, 5) == b"+OK\r\n"
        got = read_reply(reader, 1)
        while not got.endswith(b"\r\n") or got.startswith(b"$1") and not got.endswith(b"v\r\n"):
            got += reader.recv(100)
        # Whichever socket the turn served first, the reader sees either nothing or the
        # committed value -- never a torn or lost state -- and the value stays.
        assert got in (b"$-1\r\n", b"$1\r\nv\r\n")
    c = server.client()
    assert c.mget([f"k{i}" for i in range(20)]) == [b"v"] * 20
    c.close()


def test_a_failed_turn_commit_answers_errors_to_every_client_in_it(tmp_path) -> None:
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=path), db)
    try:
        socks = [raw_connect(st.port) for _ in range(5)]
        for s in socks:
            s.sendall(_cmd(b"PING"))
            assert read_reply(s, 7) == b"+PONG\r\n"
        fs.inject("write", ".log", count=None)
        _hold_loop(st, 0.3)
        for i, s in enumerate(socks):
            s.sendall(_cmd(b"SET", b"k%d" % i, b"1"))
        for s in socks:
            data = b""
            while not data.endswith(b"\r\n"):
                data += s.recv(65536)
            assert data.startswith(b"-MISCONF"), data
            s.close()
    finally:
        st.stop()
        with contextlib.suppress(shaledb.ShaleError):
            db.close()


def test_a_pipeline_with_megabytes_of_replies_is_answered_in_order(server) -> None:
    # Replies are parked until the end of a turn, at most OUTPUT_BATCH bytes of them per
    # connection; the rest of the pipeline runs after they are sent, in order.
    value = b"x" * 1000
    s = raw_connect(server.port)
    s.sendall(_cmd(b"SET", b"v", value))
    assert read_reply(s, 5) == b"+OK\r\n"
    n = 3000
    s.sendall(b"".join(_cmd(b"GET", b"v") + _cmd(b"INCR", b"n") for _ in range(n)))
    one = b"$1000\r\n" + value + b"\r\n"
    expected = b"".join(one + b":%d\r\n" % (i + 1) for i in range(n))
    assert len(expected) > 3 * 256 * 1024
    assert read_reply(s, len(expected)) == expected
    s.close()
