"""The wire protocol over raw sockets: inline commands, pipelining, RESP2/RESP3 via HELLO,
error prefixes, AUTH, connection commands, COMMAND."""

from __future__ import annotations

import time

import pytest
import redis

from ._server_support import RawClient, raw_connect, read_reply, read_until_closed


def test_inline_commands_and_quoting(server) -> None:
    s = raw_connect(server.port)
    s.sendall(b"PING\r\nSET k \"a b\\x41\\n\"\r\nGET k\nECHO 'it\\'s'\r\n")
    expected = b"+PONG\r\n+OK\r\n$5\r\na bA\n\r\n$4\r\nit's\r\n"
    assert read_reply(s, len(expected)) == expected
    s.sendall(b"set x 'unbalanced\r\nPING\r\n")
    assert read_until_closed(s) == b"-ERR Protocol error: unbalanced quotes in request\r\n"
    s.close()


def test_inline_and_multibulk_mixed_in_one_packet(server) -> None:
    s = raw_connect(server.port)
    s.sendall(b"*1\r\n$4\r\nPING\r\nECHO hi\r\n*2\r\n$4\r\nECHO\r\n$2\r\nyo\r\n\r\nPING\r\n")
    expected = b"+PONG\r\n$2\r\nhi\r\n$2\r\nyo\r\n+PONG\r\n"
    assert read_reply(s, len(expected)) == expected
    s.close()


def test_requests_split_across_packets(server) -> None:
    s = raw_connect(server.port)
    frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    for i in range(len(frame)):
        s.sendall(frame[i:i + 1])
        time.sleep(0.001)
    expected = b"+OK\r\n$10\r\n0123456789\r\n"
    assert read_reply(s, len(expected)) == expected
    s.close()


def test_pipelining_keeps_order(server) -> None:
    s = raw_connect(server.port)
    n = 2000
    s.sendall(b"".join(b"*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n" for _ in range(n)))
    expected = b"".join(b":%d\r\n" % i for i in range(1, n + 1))
    assert read_reply(s, len(expected)) == expected
    s.close()


def test_redis_py_pipeline_without_transaction(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"k{i}", i)
        pipe.get(f"k{i}")
    results = pipe.execute()
    assert results[1::2] == [str(i).encode() for i in range(500)]


def test_error_prefixes_and_unknown_command(server) -> None:
    c = RawClient(server.port)
    err = c("NOSUCHCMD", "a", "b")
    assert isinstance(err, Exception)
    assert str(err) == "ERR unknown command 'NOSUCHCMD', with args beginning with: 'a' 'b' "
    assert str(c("GET")) == "ERR wrong number of arguments for 'get' command"
    assert str(c("HELLO", "4")) == "NOPROTO unsupported protocol version"
    c.close()


def test_empty_and_null_requests_are_ignored(server) -> None:
    s = raw_connect(server.port)
    s.sendall(b"*0\r\n*-1\r\n\r\n  \r\nPING\r\n")
    assert read_reply(s, 7) == b"+PONG\r\n"
    s.close()


def test_hello_switches_to_resp3(server) -> None:
    c = RawClient(server.port)
    c.send("HELLO", "3")
    s = c.sock
    data = b""
    while b"modules" not in data or not data.endswith(b"*0\r\n"):
        data += s.recv(65536)
    assert data.startswith(b"%7\r\n")
    assert b"$5\r\nproto\r\n:3\r\n" in data
    s.sendall(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n")
    assert read_reply(s, 3) == b"_\r\n"
    s.sendall(b"*1\r\n$4\r\nEXEC\r\n")
    assert read_reply(s, 10).startswith(b"-ERR EXEC without MULTI")
    s.sendall(b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n")
    data = b""
    while not data.endswith(b"*0\r\n"):
        data += s.recv(65536)
    assert data.startswith(b"*14\r\n")
    s.sendall(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n")
    assert read_reply(s, 5) == b"$-1\r\n"
    c.close()


def test_redis_py_resp3_client(server) -> None:
    c = server.client(protocol=3)
    assert c.ping() is True
    c.set("k", "v", ex=100)
    assert c.get("k") == b"v"
    assert c.mget("k", "nope") == [b"v", None]
    assert 99 <= c.ttl("k") <= 100
    pipe = c.pipeline()
    pipe.incr("n").incr("n")
    assert pipe.execute() == [1, 2]
    assert c.execute_command("KRANGE", "-", "+") == [b"k", b"v", b"n", b"2"]
    c.close()


def test_null_array_exec_in_both_protocols(server) -> None:
    for proto, expected in ((2, b"*-1\r\n"), (3, b"_\r\n")):
        c = RawClient(server.port)
        if proto == 3:
            c("HELLO", "3")
        c("WATCH", "w")
        c("SET", "w", "1")
        c("MULTI")
        c("PING")
        c.sock.sendall(b"*1\r\n$4\r\nEXEC\r\n")
        assert read_reply(c.sock, len(expected)) == expected
        c.close()


def test_connection_commands(server) -> None:
    c = RawClient(server.port)
    assert c("PING") == b"PONG"
    assert c("PING", "hey") == b"hey"
    assert c("ECHO", "x\x00y") == b"x\x00y"
    assert isinstance(c("CLIENT", "ID"), int)
    assert c("CLIENT", "GETNAME") is None
    assert c("CLIENT", "SETNAME", "worker-1") == b"OK"
    assert c("CLIENT", "GETNAME") == b"worker-1"
    assert str(c("CLIENT", "SETNAME", "has space")).startswith("ERR Client names cannot")
    assert c("CLIENT", "SETINFO", "LIB-NAME", "mylib") == b"OK"
    assert str(c("CLIENT", "NOPE")).startswith("ERR unknown subcommand 'NOPE'")
    seconds, micros = c("TIME")
    assert abs(int(seconds) - time.time()) < 5 and 0 <= int(micros) < 1_000_000
    assert c("SELECT", "2") == b"OK"
    c("SET", "in2", "x")
    assert c("RESET") == b"RESET"
    assert c("GET", "in2") is None  # back in db 0
    assert c("QUIT") == b"OK"
    assert c.sock.recv(10) == b""
    c.close()


def test_command_introspection(server) -> None:
    c = RawClient(server.port)
    count = c("COMMAND", "COUNT")
    names = c("COMMAND", "LIST")
    # As Redis 7: COUNT counts commands, LIST also names their subcommands (cmd|sub).
    assert count == len([n for n in names if b"|" not in n]) and count >= 55
    assert b"client|list" in names
    for name in (b"get", b"set", b"krange", b"multi", b"hello", b"scan"):
        assert name in names
    (info,) = c("COMMAND", "INFO", "set")
    assert info[0] == b"set" and info[1] == -3 and info[3:6] == [1, 1, 1]
    assert b"write" in info[2] and b"@string" in info[6]
    (mset_info,) = c("COMMAND", "INFO", "mset")
    assert mset_info[3:6] == [1, -1, 2]
    assert c("COMMAND", "INFO", "nosuch") == [None]
    docs = c("COMMAND", "DOCS", "get")
    assert docs == [b"get", []]
    c.close()


def test_dbsize_and_command_work_for_redis_py_helpers(r: redis.Redis) -> None:
    r.set("a", 1)
    assert r.dbsize() == 1
    assert r.command_count() >= 55


def test_requirepass_and_auth(server_factory) -> None:
    st = server_factory(requirepass="s3cret")
    c = RawClient(st.port)
    assert str(c("GET", "k")) == "NOAUTH Authentication required."
    assert str(c("HELLO", "3")).startswith("NOAUTH HELLO must be called")
    assert str(c("AUTH", "wrong")).startswith("WRONGPASS")
    assert str(c("AUTH", "bob", "s3cret")).startswith("WRONGPASS")
    assert c("AUTH", "s3cret") == b"OK"
    assert c("SET", "k", "v") == b"OK"
    c.close()
    c2 = RawClient(st.port)
    hello = c2("HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me")
    assert hello[b"proto"] == 3
    assert c2("CLIENT", "GETNAME") == b"me"
    assert c2("RESET") == b"RESET"
    assert str(c2("GET", "k")).startswith("NOAUTH")
    c2.close()
    good = st.client(password="s3cret")
    assert good.get("k") == b"v"
    good.close()
    with pytest.raises(redis.AuthenticationError):
        st.client(password="nope").ping()
    with pytest.raises(redis.AuthenticationError):
        st.client().get("k")


def test_auth_without_password_configured(server) -> None:
    c = RawClient(server.port)
    assert str(c("AUTH", "x")).startswith("ERR AUTH <password> called without any password")
    assert c("AUTH", "default", "anything") == b"OK"
    hello = c("HELLO", "2", "AUTH", "default", "x")  # RESP2: the map as a flat array
    assert hello[hello.index(b"proto") + 1] == 2
    c.close()
