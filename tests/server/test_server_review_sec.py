"""Defects found by an adversarial review of the server's authentication and access control,
each shown on a real server over a socket on 127.0.0.1 (remote peers are only played, by
replacing ``connection.peer_address``; no traffic leaves the loopback interface)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from shaledb.server.admin.slowlog import REDACTED
from shaledb.server.net import connection as connection_module
from shaledb.server.net.security import UNAUTHENTICATED_MAX_ARGS, UNAUTHENTICATED_MAX_BULK

from ._server_support import RawClient, raw_connect, read_until_closed, wait_until


def _wait(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    wait_until(cond, timeout, "condition", 0.01)


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def _request(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


# -- 1. HELLO passwords reached the slow log ------------------------------------------------

def test_slowlog_redacts_every_hello_auth_whatever_comes_before_it(server_factory) -> None:
    # The redactor took the first argument spelled AUTH as the option: a client *named*
    # "AUTH" (HELLO 3 SETNAME AUTH AUTH user pass) shifted it onto the user name, and a second
    # AUTH option (the handler uses the last one) was never looked at. Both passwords were
    # stored in clear and shown by SLOWLOG GET.
    st = server_factory(requirepass="secret-one", slowlog_log_slower_than=0)
    c = RawClient(st.port)
    hello = c("HELLO", "3", "SETNAME", "AUTH", "AUTH", "default", "secret-one")
    assert hello[b"proto"] == 3
    assert str(c("HELLO", "2", "AUTH", "default", "wrong", "AUTH", "default",
                 "secret-two")).startswith("WRONGPASS")
    entries = c("SLOWLOG", "GET", "-1")
    logged = [e[3] for e in entries]
    assert "secret-one" not in repr(entries) and "secret-two" not in repr(entries)
    assert [b"HELLO", b"3", b"SETNAME", b"AUTH", b"AUTH", REDACTED, REDACTED] in logged
    assert [b"HELLO", b"2", b"AUTH", REDACTED, REDACTED, b"AUTH", REDACTED, REDACTED] in logged
    c.close()


# -- 2. an unauthenticated client could make the server buffer a whole request -------------

def _buffered(st) -> list[int]:
    return st.call(lambda: [conn.reader.buffered for conn in st.server.connections.values()])


def test_unauthenticated_client_cannot_send_a_large_argument(server_factory) -> None:
    # Before logging in, a client could announce a 32 MiB argument (proto-max-bulk-len) and
    # the server buffered it up to client-query-buffer-limit (64 MiB) per connection. Redis
    # refuses a bulk over 16384 bytes, or more than 10 arguments, from a client that still
    # has to authenticate (CVE-2021-32675).
    st = server_factory(requirepass="pw")
    s = raw_connect(st.port)
    s.sendall(b"*3\r\n" + _bulk(b"SET") + _bulk(b"k")
              + b"$%d\r\n" % (UNAUTHENTICATED_MAX_BULK + 1) + b"x" * 8192)
    assert read_until_closed(s) == b"-ERR Protocol error: unauthenticated bulk length\r\n"
    s.close()
    s = raw_connect(st.port)
    s.sendall(b"*%d\r\n" % (UNAUTHENTICATED_MAX_ARGS + 1) + _bulk(b"SET") + _bulk(b"k"))
    assert read_until_closed(s) == b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    s.close()
    # Within the limits the client is answered, not disconnected.
    c = RawClient(st.port)
    assert str(c("SET", "k", "v" * UNAUTHENTICATED_MAX_BULK)).startswith("NOAUTH")
    assert c("AUTH", "pw") == b"OK"
    assert c("SET", "k", "v" * (1 << 20)) == b"OK"  # logged in: the usual limits
    c.close()
    _wait(lambda: _buffered(st) == [])


def test_a_large_request_pipelined_right_after_auth_is_served(server_factory) -> None:
    # The limit applies to the request still being read once the requests before it ran,
    # as in Redis, which runs AUTH before it parses what follows it.
    st = server_factory(requirepass="pw")
    value = b"v" * (4 * UNAUTHENTICATED_MAX_BULK)
    s = raw_connect(st.port)
    s.sendall(_request(b"AUTH", b"pw") + _request(b"SET", b"big", value)
              + _request(b"STRLEN", b"big"))
    expected = b"+OK\r\n+OK\r\n:%d\r\n" % len(value)
    data = b""
    while len(data) < len(expected):
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    assert data == expected
    s.close()


def test_no_unauthenticated_limit_without_a_password(server_factory) -> None:
    st = server_factory()  # default user without password: logged in from the start
    c = RawClient(st.port)
    assert c("SET", "k", "v" * (1 << 20)) == b"OK"
    assert c("MSET", *[f"k{i}" for i in range(2 * UNAUTHENTICATED_MAX_ARGS)]) == b"OK"
    c.close()


# -- 3. the failed-AUTH limit could be dodged by changing IPv6 address ---------------------

def test_failed_auth_limit_covers_an_ipv6_slash_64(server_factory, monkeypatch) -> None:
    # The limiter was keyed by the exact address. An IPv6 host routinely owns a whole /64
    # (2**64 addresses): a fresh address per connection got a fresh burst of guesses, and
    # enough of them evicted every other bucket. IPv6 clients are now counted per /64;
    # IPv4 addresses, also mapped into IPv6, stay per address.
    st = server_factory(requirepass="pw", auth_fail_burst=2, auth_fail_rate=0.001)
    peer = ["2001:db8:1:2::1"]
    monkeypatch.setattr(connection_module, "peer_address", lambda t: (peer[0], 40000))

    def attempt(host: str, password: str = "bad") -> str:
        peer[0] = host
        c = RawClient(st.port)
        try:
            reply = c("AUTH", password)
            return reply.decode() if isinstance(reply, bytes) else str(reply)
        finally:
            c.close()

    assert attempt("2001:db8:1:2::1").startswith("WRONGPASS")
    assert attempt("2001:db8:1:2::2").startswith("WRONGPASS")
    assert attempt("2001:db8:1:2:ffff:ffff:ffff:ffff", "pw").startswith(
        "ERR too many failed")  # the same /64: the same bucket, even for the right password
    assert attempt("2001:db8:1:3::1", "pw") == "OK"  # another /64
    for host in ("::ffff:192.0.2.1", "192.0.2.1"):  # one IPv4 host, however it is written
        assert attempt(host).startswith("WRONGPASS")
    assert attempt("::ffff:192.0.2.1", "pw").startswith("ERR too many failed")
    assert attempt("::ffff:192.0.2.2", "pw") == "OK"  # IPv4 hosts are not lumped together
    assert st.call(lambda: st.server.stats["auth_rate_limited"]) == 2


# -- 4. a user deleted by its own connection kept its rights inside EXEC --------------------

def test_deleting_your_own_user_inside_exec_revokes_the_rest(server_factory) -> None:
    # ACL DELUSER of the caller's own user only marked the connection to close after the
    # reply; the commands queued after it in the same EXEC still ran with the deleted user's
    # permissions. As in Redis, the connection now falls back to the default user, logged
    # out, at once.
    st = server_factory()
    admin = st.client(decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "default", "resetpass", ">adminpw")
    admin.execute_command("ACL", "SETUSER", "d", "on", ">pw", "~*", "+@all")
    c = RawClient(st.port)
    assert c("AUTH", "d", "pw") == b"OK"
    assert c("MULTI") == b"OK"
    assert c("ACL", "DELUSER", "d") == b"QUEUED"
    assert c("SET", "after", "x") == b"QUEUED"
    replies = c("EXEC")
    assert replies[0] == 1 and str(replies[1]).startswith("NOAUTH")
    with pytest.raises(ConnectionError):
        c("PING")  # and the connection is closed after the reply
    c.close()
    assert admin.get("after") is None
    admin.execute_command("ACL", "SETUSER", "e", "on", ">pw", "~*", "+@all")
    e = RawClient(st.port)
    assert e("AUTH", "e", "pw") == b"OK"
    e.send("ACL", "DELUSER", "e")  # pipelined: nothing after the DELUSER runs
    e.send("SET", "after", "y")
    assert e.read() == 1
    with pytest.raises((ConnectionError, socket.timeout)):
        e.read()
    e.close()
    assert admin.get("after") is None
    admin.close()


# -- 5. protected mode was lifted by turning the password-less default user off -------------

def test_protected_mode_holds_while_the_default_user_has_no_password(server_factory,
                                                                     monkeypatch) -> None:
    # Protected mode asked whether the default user was *enabled* and password-less. With
    # `ACL SETUSER default off` (no password) remote clients were admitted, and could then
    # log in as any other password-less user. Redis refuses them while the default user is
    # `nopass`, enabled or not; a password on it is what lifts protected mode.
    st = server_factory()
    admin = st.client(decode_responses=True)
    admin.execute_command("ACL", "SETUSER", "guest", "on", "nopass", "~*", "+@all")
    admin.execute_command("ACL", "SETUSER", "default", "off")
    monkeypatch.setattr(connection_module, "peer_address", lambda t: ("203.0.113.9", 40000))
    refused = RawClient(st.port)
    assert str(refused.read()).startswith("DENIED")
    with pytest.raises(ConnectionError):
        refused("AUTH", "guest", "anything")
    refused.close()
    admin.execute_command("ACL", "SETUSER", "default", ">pw")  # a password: admitted
    remote = RawClient(st.port)
    assert str(remote("PING")).startswith("NOAUTH")  # default is still off
    assert remote("AUTH", "guest", "anything") == b"OK"
    remote.close()
    monkeypatch.undo()
    admin.close()
