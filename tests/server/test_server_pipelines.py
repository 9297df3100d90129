"""Pipelined writes share one write batch: fewer WAL records, and the same answers as if
each command ran alone (errors, WATCH, HELLO in the middle, a failed commit)."""

from __future__ import annotations

import contextlib

import shaledb
from shaledb.engine.fs import FaultInjectionFS
from shaledb.server import ServerConfig

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
