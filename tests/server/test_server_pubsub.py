"""Pub/sub and monitoring over the network (issue 13 section 3): redis-py PubSub, the RESP2
subscribed mode and RESP3 pushes, pattern matching, slow subscribers disconnected by the
pubsub output-limit class, ACL channel permissions, keyspace notifications (published only
after a successful commit) and MONITOR with its redactions. Reply bytes checked here were
compared with a real redis-server 7.0.15 on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

import shaledb
from shaledb.server import ServerConfig
from shaledb.testing import FaultInjectionFS

from ._server_support import HOST, RawClient, ServerThread, raw_connect, wait_until

KiB = 1024
MiB = 1024 * KiB


def _messages(p: redis.client.PubSub, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``n`` messages (not subscribe confirmations) of ``p``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = p.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if m is not None:
            out.append(m)
    return out


def _quiet(p: redis.client.PubSub, wait: float = 0.3) -> list[dict[str, Any]]:
    """Whatever else arrives within ``wait`` seconds (expected: nothing)."""
    return _messages(p, 1000, wait)


def _cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _stat(r: redis.Redis, name: str) -> int:
    return int(r.info("stats")[name])


# -- channels, patterns, PUBSUB ------------------------------------------------------------

def test_redis_py_pubsub_round_trip_and_introspection(server: ServerThread) -> None:
    r = server.client()
    p = r.pubsub()
    p.subscribe("news", "sport")
    p.psubscribe("w*")
    assert [p.get_message(timeout=2)["type"] for _ in range(3)] == \
        ["subscribe", "subscribe", "psubscribe"]
    assert r.publish("news", "hello") == 1
    assert r.publish("weather", "rain") == 1
    assert r.publish("nobody", "x") == 0
    got = _messages(p, 2)
    assert [(m["type"], m["channel"], m["data"]) for m in got] == [
        ("message", b"news", b"hello"), ("pmessage", b"weather", b"rain")]
    assert got[1]["pattern"] == b"w*"
    assert sorted(r.pubsub_channels()) == [b"news", b"sport"]
    assert r.pubsub_channels("n*") == [b"news"]
    assert r.pubsub_numsub("news", "nobody") == [(b"news", 1), (b"nobody", 0)]
    assert r.pubsub_numpat() == 1
    info = r.info()
    assert (info["pubsub_channels"], info["pubsub_patterns"], info["pubsub_clients"]) == \
        (2, 1, 1)
    line = [c for c in r.client_list() if int(c["sub"]) == 2][0]
    assert (line["psub"], line["flags"]) == ("1", "P")
    assert [c["sub"] for c in r.client_list(_type="pubsub")] == ["2"]
    p.unsubscribe("news")
    p.punsubscribe()
    wait_until(lambda: r.pubsub_numpat() == 0 and r.publish("news", "x") == 0,
               5, "the unsubscriptions")
    assert r.publish("sport", "goal") == 1
    assert [m["data"] for m in _messages(p, 1)] == [b"goal"]
    p.close()
    wait_until(lambda: r.pubsub_channels() == [], 5, "the subscriber's disconnect")


def test_resp2_subscribed_mode_allows_only_subscription_commands(server: ServerThread) -> None:
    s = raw_connect(server.port)
    s.sendall(_cmd(b"SUBSCRIBE", b"a", b"b") + _cmd(b"PING") + _cmd(b"PING", b"x")
              + _cmd(b"GET", b"k") + _cmd(b"UNSUBSCRIBE") + _cmd(b"UNSUBSCRIBE")
              + _cmd(b"PING"))
    want = (b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n*2\r\n$4\r\npong\r\n$1\r\nx\r\n"
            b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT "
            b"/ RESET are allowed in this context\r\n"
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n"
            b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n"
            b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n+PONG\r\n")
    data = b""
    while len(data) < len(want):
        data += s.recv(65536)
    assert data == want
    # RESET leaves subscribed mode (and drops the subscriptions).
    s.sendall(_cmd(b"PSUBSCRIBE", b"x*") + _cmd(b"RESET") + _cmd(b"GET", b"k"))
    want = b"*3\r\n$10\r\npsubscribe\r\n$2\r\nx*\r\n:1\r\n+RESET\r\n$-1\r\n"
    data = b""
    while len(data) < len(want):
        data += s.recv(65536)
    assert data == want
    s.close()


def test_resp3_pushes_while_running_other_commands(server: ServerThread) -> None:
    c = RawClient(server.port)
    assert c("HELLO", "3")[b"proto"] == 3
    c.send("SUBSCRIBE", "ch")
    assert c.read() == [b"subscribe", b"ch", 1]
    assert c("SET", "k", "v") == b"OK"  # any command, while subscribed
    r = server.client()
    assert r.publish("ch", "one") == 1
    assert c.read() == [b"message", b"ch", b"one"]
    # Publishing to itself: after the replies before it, before its own reply (Redis 7.0).
    c.send("GET", "k")
    c.send("PUBLISH", "ch", "self")
    assert [c.read(), c.read(), c.read()] == [b"v", [b"message", b"ch", b"self"], 1]
    raw = raw_connect(server.port)
    raw.sendall(_cmd(b"HELLO", b"3") + _cmd(b"SUBSCRIBE", b"z") + _cmd(b"PING"))
    data = b""
    while not data.endswith(b"+PONG\r\n"):
        data += raw.recv(65536)
    assert data.endswith(b">3\r\n$9\r\nsubscribe\r\n$1\r\nz\r\n:1\r\n+PONG\r\n")
    raw.close()
    # redis-py's own RESP3 PubSub.
    r3 = server.client(protocol=3)
    p = r3.pubsub()
    p.subscribe("ch")
    assert p.get_message(timeout=2)["type"] == "subscribe"
    assert r.publish("ch", "two") == 2
    assert [m["data"] for m in _messages(p, 1)] == [b"two"]
    assert c.read() == [b"message", b"ch", b"two"]
    p.close()
    c.close()


def test_shard_channels_are_their_own_namespace(server: ServerThread) -> None:
    c = RawClient(server.port)
    assert c("SSUBSCRIBE", "s1", "s2") == [b"ssubscribe", b"s1", 1]
    assert c.read() == [b"ssubscribe", b"s2", 2]
    r = server.client()
    assert r.publish("s1", "plain") == 0  # a plain channel of the same name: nobody
    assert r.execute_command("SPUBLISH", "s1", "m") == 1
    assert c.read() == [b"smessage", b"s1", b"m"]
    assert r.execute_command("PUBSUB", "SHARDCHANNELS") == [b"s1", b"s2"] or \
        sorted(r.execute_command("PUBSUB", "SHARDCHANNELS")) == [b"s1", b"s2"]
    assert r.execute_command("PUBSUB", "SHARDNUMSUB", "s1", "x") == [b"s1", 1, b"x", 0]
    assert r.pubsub_channels() == []
    assert c("SUNSUBSCRIBE") == [b"sunsubscribe", b"s1", 1]
    assert c.read() == [b"sunsubscribe", b"s2", 0]
    c.close()


@pytest.mark.parametrize(("pattern", "hits", "misses"), [
    ("h?llo", ["hello", "hallo", "hxllo"], ["hllo", "heello"]),
    ("h*llo", ["hllo", "heeeello"], ["hell", "xhllo"]),
    ("h[ae]llo", ["hello", "hallo"], ["hillo"]),
    ("h[^e]llo", ["hallo", "hbllo"], ["hello"]),
    ("h[a-b]llo", ["hallo", "hbllo"], ["hcllo"]),
    ("h\\*llo", ["h*llo"], ["hello"]),
    ("*", ["anything", ""], []),
])
def test_pattern_matching_is_redis_glob(server: ServerThread, pattern: str, hits: list[str],
                                        misses: list[str]) -> None:
    r = server.client()
    p = r.pubsub()
    p.psubscribe(pattern)
    assert p.get_message(timeout=2)["type"] == "psubscribe"
    for channel in hits + misses:
        r.publish(channel, "m")
    got = _messages(p, len(hits))
    assert [m["channel"].decode() for m in got] == hits
    assert all(m["pattern"] == pattern.encode() for m in got)
    assert _quiet(p) == []
    p.close()


# -- bounded output per subscriber -----------------------------------------------------------

def _stalled_subscriber(port: int, channel: bytes) -> socket.socket:
    """A subscriber that never reads again (small receive buffer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, port))
    s.sendall(_cmd(b"SUBSCRIBE", channel))
    got = b""
    while not got.endswith(b":1\r\n"):
        got += s.recv(100)
    return s


def test_slow_subscriber_is_disconnected_at_the_pubsub_hard_limit(server: ServerThread) -> None:
    r = server.client()
    # The pubsub class only: normal clients keep their own (much larger) limit.
    r.config_set("client-output-buffer-limit", "pubsub 256kb 0 0")
    assert r.config_get("client-output-buffer-limit")["client-output-buffer-limit"] == \
        f"normal {256 * MiB} 0 0 pubsub {256 * KiB} 0 0"
    s = _stalled_subscriber(server.port, b"firehose")
    message = b"x" * (64 * KiB)
    sent = 0
    while r.publish("firehose", message) == 1:
        sent += len(message)
        assert sent < 256 * MiB, "the stalled subscriber was never disconnected"
    assert _stat(r, "client_output_buffer_limit_disconnections") == 1
    assert r.pubsub_numsub("firehose") == [(b"firehose", 0)]
    # What the server held for it was bounded by the limit plus the kernel's buffers.
    assert sent < 64 * MiB
    s.close()
    # A normal client may still get a reply far over the pubsub limit.
    r.set("big", b"y" * MiB)
    assert len(r.get("big")) == MiB


def test_slow_subscriber_is_disconnected_after_the_soft_limit_seconds(
        server: ServerThread) -> None:
    r = server.client()
    r.config_set("client-output-buffer-limit", "pubsub 0 128kb 1")
    s = _stalled_subscriber(server.port, b"drip")
    message = b"x" * (64 * KiB)
    sent = 0
    # Over the soft limit (no hard one): still connected until a second has passed.
    while _stat(r, "client_output_buffer_limit_disconnections") == 0:
        assert r.publish("drip", message) in (0, 1)
        sent += len(message)
        if sent > 32 * MiB:
            time.sleep(0.1)  # well over the soft limit: wait for its seconds
        assert sent < 200 * MiB
    assert r.pubsub_numsub("drip") == [(b"drip", 0)]
    s.close()


def test_monitor_that_stops_reading_is_disconnected(server: ServerThread) -> None:
    r = server.client()
    r.config_set("client-output-buffer-limit", "normal 256kb 0 0")
    m = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    m.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    m.connect((HOST, server.port))
    m.sendall(_cmd(b"MONITOR"))
    assert m.recv(5) == b"+OK\r\n"
    value = b"v" * (16 * KiB)
    for i in range(100_000):
        r.set("k", value)
        if i % 100 == 0 and _stat(r, "client_output_buffer_limit_disconnections"):
            break
    assert _stat(r, "client_output_buffer_limit_disconnections") == 1
    m.close()


# -- ACL channel permissions -----------------------------------------------------------------

def test_acl_channel_permissions(server: ServerThread) -> None:
    admin = server.client()
    admin.acl_setuser("alice", enabled=True, passwords=["+pw"], commands=["+@all"],
                      keys=["*"], channels=["news.*"])
    alice = server.client(username="alice", password="pw")
    noperm = "this user has no permissions to access one of the channels used as arguments"
    with pytest.raises(redis.exceptions.NoPermissionError, match=noperm):
        alice.publish("other", "x")
    assert alice.publish("news.today", "x") == 0
    c = RawClient(server.port)
    assert c("AUTH", "alice", "pw") == b"OK"
    assert c("SUBSCRIBE", "news.a") == [b"subscribe", b"news.a", 1]
    # A pattern must be one of the user's patterns, literally (Redis 7).
    err = c("PSUBSCRIBE", "news.a*")
    assert isinstance(err, redis.exceptions.ResponseError) or str(err).startswith("NOPERM")
    assert c("PSUBSCRIBE", "news.*") == [b"psubscribe", b"news.*", 2]
    entry = admin.acl_log(count=1)[0]
    assert (entry["reason"], entry["object"], entry["username"]) == \
        ("channel", "news.a*", "alice")
    # Redis 7's acl-pubsub-default: a new user has no channel at all.
    assert admin.config_get("acl-pubsub-default") == {"acl-pubsub-default": "resetchannels"}
    admin.acl_setuser("bob", enabled=True, passwords=["+pw"], commands=["+@all"], keys=["*"])
    bob = server.client(username="bob", password="pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        bob.publish("news.x", "m")
    with pytest.raises(redis.exceptions.ResponseError, match="allchannels"):
        admin.execute_command("ACL", "SETUSER", "bob", "allchannels", "&x")
    # Taking the channels away disconnects alice's subscriber, as Redis 7 does.
    assert admin.publish("news.a", "m") == 2
    admin.execute_command("ACL", "SETUSER", "alice", "resetchannels")
    with pytest.raises(ConnectionError):
        while True:
            c.read()
    wait_until(lambda: admin.publish("news.a", "m") == 0, 5, "alice's subscriber to go")
    c.close()


# -- keyspace notifications ------------------------------------------------------------------

def _events(p: redis.client.PubSub, n: int) -> list[tuple[bytes, bytes]]:
    return [(m["channel"], m["data"]) for m in _messages(p, n)]


def test_keyspace_notifications_config_and_events(server: ServerThread) -> None:
    r = server.client()
    assert r.config_get("notify-keyspace-events") == {"notify-keyspace-events": ""}
    r.config_set("notify-keyspace-events", "KEA")
    assert r.config_get("notify-keyspace-events") == {"notify-keyspace-events": "AKE"}
    r.config_set("notify-keyspace-events", "$lshzxeKE")
    assert r.config_get("notify-keyspace-events") == {"notify-keyspace-events": "$lshzxeKE"}
    with pytest.raises(redis.exceptions.ResponseError, match="Invalid event class"):
        r.config_set("notify-keyspace-events", "KQ")
    r.config_set("notify-keyspace-events", "KEA")
    p = r.pubsub()
    p.psubscribe("__key*__:*")
    p.get_message(timeout=2)
    r.set("s", "1", ex=100)
    r.lpush("l", "a")
    r.hset("h", "f", "v")
    r.sadd("z", "m")
    r.delete("s")
    r.execute_command("SELECT", "0")
    assert _events(p, 12) == [
        (b"__keyspace@0__:s", b"set"), (b"__keyevent@0__:set", b"s"),
        (b"__keyspace@0__:s", b"expire"), (b"__keyevent@0__:expire", b"s"),
        (b"__keyspace@0__:l", b"lpush"), (b"__keyevent@0__:lpush", b"l"),
        (b"__keyspace@0__:h", b"hset"), (b"__keyevent@0__:hset", b"h"),
        (b"__keyspace@0__:z", b"sadd"), (b"__keyevent@0__:sadd", b"z"),
        (b"__keyspace@0__:s", b"del"), (b"__keyevent@0__:del", b"s")]
    # Masks: only list events, keyevent channel only; then new keys.
    r.config_set("notify-keyspace-events", "El")
    r.set("s2", "x")
    r.rpop("l")
    # The list is gone, but "del" is a generic (g) event: masked out.
    assert _events(p, 1) == [(b"__keyevent@0__:rpop", b"l")]
    r.config_set("notify-keyspace-events", "En")
    r.set("fresh", "1")
    r.set("fresh", "2")
    assert _events(p, 1) == [(b"__keyevent@0__:new", b"fresh")]
    # Expiry: at the access that finds the key expired, and from the sweeper.
    r.config_set("notify-keyspace-events", "Ex")
    r.set("gone1", "1", px=50)
    r.set("gone2", "1", px=50)
    time.sleep(0.1)
    assert r.get("gone1") is None
    got = _events(p, 2)
    assert sorted(got) == [(b"__keyevent@0__:expired", b"gone1"),
                           (b"__keyevent@0__:expired", b"gone2")]
    assert got[0] == (b"__keyevent@0__:expired", b"gone1")
    assert _quiet(p) == []
    p.close()


def test_notifications_only_for_writes_that_committed(server: ServerThread) -> None:
    r = server.client()
    r.config_set("notify-keyspace-events", "KA")
    p = r.pubsub()
    p.psubscribe("__keyspace@0__:*")
    p.get_message(timeout=2)
    # A discarded EXEC (a WATCHed key changed) and a DISCARD publish nothing.
    w = server.client(single_connection_client=True)
    w.execute_command("WATCH", "watched")
    r.set("watched", "changed-by-another")
    assert _events(p, 1) == [(b"__keyspace@0__:watched", b"set")]
    w.execute_command("MULTI")
    w.execute_command("SET", "in-exec", "1")
    assert w.execute_command("EXEC") is None
    w.execute_command("MULTI")
    w.execute_command("SET", "discarded", "1")
    w.execute_command("DISCARD")
    # A refused command publishes nothing (SET ... GET on a list).
    r.rpush("alist", "x")
    assert _events(p, 1) == [(b"__keyspace@0__:alist", b"rpush")]
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        r.set("alist", "v", get=True)
    r.set("marker", "1")
    assert _events(p, 1) == [(b"__keyspace@0__:marker", b"set")]
    assert _quiet(p) == []
    p.close()
    w.close()


def test_no_notification_when_the_commit_fails(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=path), db)
    try:
        r = st.client()
        r.config_set("notify-keyspace-events", "KA")
        p = r.pubsub()
        p.psubscribe("__keyspace@0__:*")
        p.get_message(timeout=2)
        r.set("before", "1")
        assert _events(p, 1) == [(b"__keyspace@0__:before", b"set")]
        fs.inject("write", ".log", count=None)
        with pytest.raises(redis.exceptions.ResponseError, match="MISCONF"):
            r.set("lost", "1")
        assert _quiet(p, 0.5) == []
        p.close()
    finally:
        st.stop()
        db.close()


# -- MONITOR ---------------------------------------------------------------------------------

def _monitor_lines(m: socket.socket, n: int) -> list[bytes]:
    data = b""
    while data.count(b"\r\n") < n:
        chunk = m.recv(65536)
        assert chunk, "the monitor was disconnected"
        data += chunk
    return data.split(b"\r\n")[:n]


def test_monitor_format_and_redaction(server_factory: Callable[..., ServerThread]) -> None:
    st = server_factory(requirepass="s3cret")
    m = raw_connect(st.port)
    m.sendall(_cmd(b"AUTH", b"s3cret") + _cmd(b"MONITOR"))
    assert m.recv(10) == b"+OK\r\n+OK\r\n"
    c = raw_connect(st.port)
    c.sendall(_cmd(b"AUTH", b"default", b"s3cret") + _cmd(b"SELECT", b"3")
              + _cmd(b"SET", b"k", b"a \"b\"\n\x01\xff")
              + _cmd(b"HELLO", b"2", b"AUTH", b"default", b"s3cret", b"SETNAME", b"me")
              + _cmd(b"ACL", b"SETUSER", b"eve", b">hidden")
              + _cmd(b"CONFIG", b"SET", b"requirepass", b"s3cret")
              + _cmd(b"MULTI") + _cmd(b"INCR", b"n") + _cmd(b"EXEC"))
    lines = _monitor_lines(m, 7)
    port = c.getsockname()[1]
    prefix = rb"\+\d{10}\.\d{6} \[(\d+) 127\.0\.0\.1:" + str(port).encode() + rb"\] "
    import re
    parsed = []
    for line in lines:
        match = re.match(prefix + rb"(.*)", line)
        assert match is not None, line
        parsed.append((int(match.group(1)), match.group(2)))
    assert parsed == [
        (0, b'"AUTH" "(redacted)" "(redacted)"'),
        (3, b'"SELECT" "3"'),
        (3, b'"SET" "k" "a \\"b\\"\\n\\x01\\xff"'),
        (3, b'"HELLO" "2" "AUTH" "(redacted)" "(redacted)" "SETNAME" "me"'),
        # ACL and CONFIG are admin commands: Redis shows them to no monitor.
        (3, b'"MULTI"'),
        (3, b'"INCR" "n"'),
        (3, b'"EXEC"'),
    ]
    assert b"s3cret" not in b"".join(lines) and b"hidden" not in b"".join(lines)
    client = [x for x in st.client(password="s3cret").client_list() if "O" in x["flags"]]
    assert len(client) == 1
    m.close()
    c.close()


def test_monitor_redacts_migrate_passwords(server_factory: Callable[..., ServerThread]) -> None:
    # Review: MONITOR printed MIGRATE's AUTH / AUTH2 passwords in clear (the command always
    # fails here, but its arguments are shown); Redis 7 shows "(redacted)", as SLOWLOG did.
    st = server_factory()
    m = raw_connect(st.port)
    m.sendall(_cmd(b"MONITOR"))
    assert m.recv(5) == b"+OK\r\n"
    c = raw_connect(st.port)
    c.sendall(_cmd(b"MIGRATE", b"127.0.0.1", b"1", b"k", b"0", b"1", b"AUTH", b"pw-one")
              + _cmd(b"MIGRATE", b"127.0.0.1", b"1", b"k", b"0", b"1", b"AUTH2", b"user",
                     b"pw-two"))
    lines = _monitor_lines(m, 2)
    assert lines[0].endswith(b'"AUTH" "(redacted)"'), lines[0]
    assert lines[1].endswith(b'"AUTH2" "(redacted)" "(redacted)"'), lines[1]
    m.close()
    c.close()


def test_client_reply_off_and_skip_keep_pubsub_messages(server: ServerThread) -> None:
    c = RawClient(server.port)
    c.send("CLIENT", "REPLY", "OFF")
    c.send("SET", "k", "v")  # no reply
    c.send("SUBSCRIBE", "ch")  # its message is sent all the same (Redis 7)
    assert c.read() == [b"subscribe", b"ch", 1]
    r = server.client()
    assert r.publish("ch", "m") == 1
    assert c.read() == [b"message", b"ch", b"m"]
    c.send("RESET")  # RESET turns replies back on (and unsubscribes)
    assert c.read() == b"RESET"
    c.send("CLIENT", "REPLY", "SKIP")
    c.send("GET", "k")  # skipped
    assert c("GET", "k") == b"v"
    assert c("CLIENT", "REPLY", "ON") == b"OK"
    c.close()


def test_blocked_pop_served_by_a_push_announces_both_in_order(server: ServerThread) -> None:
    r = server.client()
    r.config_set("notify-keyspace-events", "El")
    p = r.pubsub()
    p.psubscribe("__keyevent@0__:*")
    p.get_message(timeout=2)
    b = RawClient(server.port)
    b.send("BLPOP", "q", "5")
    wait_until(lambda: int(r.info("clients")["blocked_clients"]) == 1, 5, "BLPOP to block")
    r.rpush("q", "job")
    assert b.read() == [b"q", b"job"]
    assert _events(p, 2) == [(b"__keyevent@0__:rpush", b"q"), (b"__keyevent@0__:lpop", b"q")]
    p.close()
    b.close()


def test_subscriptions_per_client_are_bounded(server: ServerThread) -> None:
    r = server.client()
    r.config_set("max-subscriptions", "3")
    c = RawClient(server.port)
    c.send("SUBSCRIBE", "a", "b")
    assert [c.read(), c.read()] == [[b"subscribe", b"a", 1], [b"subscribe", b"b", 2]]
    err = c("PSUBSCRIBE", "x*", "y*")  # 4 > 3: refused, nothing subscribed
    assert isinstance(err, Exception) and "max-subscriptions (3)" in str(err)
    assert r.pubsub_numpat() == 0
    c.send("SUBSCRIBE", "a", "b", "c")  # already subscribed ones do not count twice
    assert [c.read()[2] for _ in range(3)] == [2, 2, 3]
    err = c("SSUBSCRIBE", "s")
    assert isinstance(err, Exception) and "max-subscriptions" in str(err)
    # A pattern too complex to match cheaply refuses the whole PSUBSCRIBE.
    c2 = RawClient(server.port)
    err = c2("PSUBSCRIBE", "ok*", "?" * 5000)
    assert isinstance(err, Exception) and "pattern" in str(err)
    assert r.pubsub_numpat() == 0
    c.close()
    c2.close()


def test_client_kill_type_pubsub(server: ServerThread) -> None:
    r = server.client()
    sub = RawClient(server.port)
    assert sub("SUBSCRIBE", "ch") == [b"subscribe", b"ch", 1]
    other = RawClient(server.port)
    assert other("PING") == b"PONG"
    assert r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") == 1  # other
    assert r.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
    with pytest.raises(ConnectionError):
        sub.read()
    wait_until(lambda: r.pubsub_channels() == [], 5, "the subscriber to go")
    sub.close()
    other.close()


def _hold_loop(st: ServerThread, seconds: float) -> None:
    """Block the server's event loop (requests sent meanwhile are served by one turn)."""
    assert st.loop is not None
    st.loop.call_soon_threadsafe(time.sleep, seconds)
    time.sleep(0.05)


def test_messages_queued_behind_a_subscribers_own_reply_are_charged_at_once(
        server: ServerThread) -> None:
    """A subscriber that ran a command in the same turn as a publisher's pipeline: its
    messages wait behind that reply until the turn ends, and used to be charged to the
    output limit only then (a whole turn of them was held, whatever the limit)."""
    r = server.client()
    r.config_set("client-output-buffer-limit", "pubsub 256kb 0 0")
    sub = _stalled_subscriber(server.port, b"burst")
    publisher = RawClient(server.port)
    message = b"m" * (64 * KiB)
    assert publisher("MULTI") == b"OK"
    for _ in range(100):
        assert publisher("PUBLISH", "burst", message) == b"QUEUED"
    # One turn: the subscriber's PING parks its reply, then EXEC publishes 100 messages
    # (6.4 MB) behind it.
    _hold_loop(server, 0.5)
    sub.sendall(_cmd(b"PING"))
    time.sleep(0.05)
    publisher.send("EXEC")
    counts = publisher.read()
    assert len(counts) == 100
    assert sum(counts) <= 8, f"{sum(counts)} messages of 64 KiB taken past a 256 KiB limit"
    assert _stat(r, "client_output_buffer_limit_disconnections") == 1
    sub.close()
    publisher.close()
