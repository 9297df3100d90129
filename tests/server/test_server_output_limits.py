"""The client output buffer limit and the command rate limits, each hit on purpose."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from shaledb.errors import InvalidArgument
from shaledb.server import ServerConfig
from shaledb.server.net.ratelimit import CommandRateLimits

from ._server_support import RawClient, raw_connect, read_until_closed, wait_until

KiB = 1024


def _wait(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    wait_until(cond, timeout, "condition", 0.01)


def _stat(st, name: str) -> int:
    return int(st.call(lambda: st.server.stats[name]))


# -- client_output_buffer_limit ---------------------------------------------------------------

def test_pipelined_gets_past_the_limit_disconnect_a_client_that_never_reads(
        server_factory, caplog) -> None:
    st = server_factory(client_output_buffer_limit=256 * KiB)
    r = st.client()
    r.set("big", b"v" * (100 * KiB))
    greedy = raw_connect(st.port, timeout=10)
    greedy.sendall(b"GET big\r\n" * 50)  # 5 MB of replies; the client reads none of them
    _wait(lambda: _stat(st, "client_output_buffer_limit_disconnections") == 1)
    # The replies queued at once (one batch of 3 GETs, 300 KiB) passed the limit: the
    # connection is closed and what it had pending is dropped, not sent.
    assert read_until_closed(greedy) == b""
    greedy.close()
    assert any("output buffer limit" in rec.getMessage() for rec in caplog.records)
    assert r.info("stats")["client_output_buffer_limit_disconnections"] == 1
    assert r.get("big") == b"v" * (100 * KiB)  # everyone else is served as before
    assert len(r.client_list()) == 1


def test_one_huge_reply_disconnects_even_a_reading_client(server_factory) -> None:
    st = server_factory(client_output_buffer_limit=1024 * KiB)
    r = st.client()
    r.set("big", b"v" * (100 * KiB))
    raw = RawClient(st.port)
    raw.send("MGET", *(["big"] * 20))  # one 2 MB reply
    with pytest.raises(ConnectionError):
        raw.read()
    assert _stat(st, "client_output_buffer_limit_disconnections") == 1
    raw.close()


def test_backpressure_keeps_pipelines_under_the_limit(server_factory) -> None:
    st = server_factory(client_output_buffer_limit=1024 * KiB)
    r = st.client()
    value = b"v" * (100 * KiB)
    r.set("big", value)
    # A reading client pipelines 5 MB of replies: they come in batches, never all queued.
    reader = RawClient(st.port)
    for _ in range(50):
        reader.send("GET", "big")
    assert all(reader.read() == value for _ in range(50))
    # A client that never reads is paused (no more requests run), not disconnected: what
    # the server holds for it stays under the limit.
    stalled = raw_connect(st.port)
    stalled.sendall(b"CLIENT SETNAME stalled\r\n" + b"GET big\r\n" * 200)

    def omem() -> int:
        # 0 until the connection has run its CLIENT SETNAME.
        return next((int(c["omem"]) for c in r.client_list() if c["name"] == "stalled"), 0)

    _wait(lambda: omem() > 0)
    time.sleep(0.3)
    assert omem() <= 1024 * KiB
    assert _stat(st, "client_output_buffer_limit_disconnections") == 0
    reader.close()
    stalled.close()


def test_keys_stops_building_its_reply_at_the_limit(server_factory) -> None:
    st = server_factory(client_output_buffer_limit=64 * KiB)
    r = st.client()
    with r.pipeline(transaction=False) as p:
        for i in range(5000):
            p.set(f"key:{i:06d}", "x")
        p.execute()
    assert len(r.keys("key:0000*")) == 100  # small replies are fine
    raw = RawClient(st.port)
    raw.send("KEYS", "*")  # 5000 keys of 10 bytes: ~130 KB of reply
    with pytest.raises(ConnectionError):
        raw.read()
    raw.close()
    assert _stat(st, "client_output_buffer_limit_disconnections") == 1
    # CONFIG SET raises the limit at run time (Redis' syntax for the normal class works).
    r.config_set("client-output-buffer-limit", "normal 1mb 0 0")
    assert len(r.keys("*")) == 5000
    r.config_set("client-output-buffer-limit", "0")  # 0: no limit
    pubsub = f"pubsub {32 * 1024 * 1024} {8 * 1024 * 1024} 60"
    assert r.config_get("client-output-buffer-limit") == {
        b"client-output-buffer-limit": f"normal 0 0 0 {pubsub}".encode()} or r.config_get(
        "client-output-buffer-limit") == {"client-output-buffer-limit": f"normal 0 0 0 {pubsub}"}


def test_output_limit_setting_is_validated() -> None:
    with pytest.raises(InvalidArgument, match="client_output_buffer_limit"):
        ServerConfig(client_output_buffer_limit=10)
    assert ServerConfig(client_output_buffer_limit=0).client_output_buffer_limit == 0


# -- command rate limits ----------------------------------------------------------------------

def test_per_ip_rate_limit_slows_a_client_down_without_errors(server_factory) -> None:
    st = server_factory(rate_limit_per_ip=20)
    raw = RawClient(st.port)
    t0 = time.monotonic()
    for i in range(60):
        raw.send("PING", str(i))
    replies = [raw.read() for _ in range(60)]
    elapsed = time.monotonic() - t0
    assert replies == [str(i).encode() for i in range(60)]  # no error, in order
    # A full bucket of 20, then 20/s: the last 40 commands cannot run before ~2 s.
    assert elapsed >= 1.5
    assert _stat(st, "rate_limited_waits") > 0
    raw.close()


def test_per_user_rate_limit_applies_to_that_user_only(server_factory) -> None:
    st = server_factory(rate_limit_users={"slow": 10})
    admin = st.client()
    admin.execute_command("ACL", "SETUSER", "slow", "on", ">pw", "~*", "+@all")
    fast = RawClient(st.port)
    for _ in range(50):
        fast.send("PING")
    assert [fast.read() for _ in range(50)] == [b"PONG"] * 50
    assert _stat(st, "rate_limited_waits") == 0  # the default user is not limited
    slow = RawClient(st.port)
    assert slow("AUTH", "slow", "pw") == b"OK"
    t0 = time.monotonic()
    for _ in range(30):
        slow.send("PING")
    assert [slow.read() for _ in range(30)] == [b"PONG"] * 30
    assert time.monotonic() - t0 >= 1.5  # 10 at once, then 10/s
    assert _stat(st, "rate_limited_waits") > 0
    fast.close()
    slow.close()


def test_rate_limits_are_settable_at_run_time(server_factory) -> None:
    st = server_factory()
    r = st.client(decode_responses=True)
    assert r.config_get("rate-limit-per-ip") == {"rate-limit-per-ip": ""}
    r.config_set("rate-limit-per-ip", 5)
    r.execute_command("CONFIG", "SET", "rate-limit-users", "alice 100 bob 2.5")
    assert r.config_get("rate-limit-users") == {"rate-limit-users": "alice 100 bob 2.5"}
    raw = RawClient(st.port)
    for _ in range(15):
        raw.send("PING")
    assert [raw.read() for _ in range(15)] == [b"PONG"] * 15
    assert _stat(st, "rate_limited_waits") > 0
    r.config_set("rate-limit-per-ip", "")  # off again
    assert r.config_get("rate-limit-per-ip") == {"rate-limit-per-ip": ""}
    with pytest.raises(Exception, match="pairs of user name"):
        r.execute_command("CONFIG", "SET", "rate-limit-users", "alice")
    raw.close()


def test_rate_limit_buckets_are_bounded_and_refund_the_ip_token() -> None:
    now = [0.0]
    limits = CommandRateLimits(2.0, {"u": 1.0}, max_hosts=2, clock=lambda: now[0])
    user = SimpleNamespace(name=b"u")
    other = SimpleNamespace(name=b"default")

    def client(host: str, who: SimpleNamespace = other) -> SimpleNamespace:
        return SimpleNamespace(host=host, user=who)

    assert limits.wait(client("a", user)) == 0.0  # u's single token
    assert limits.wait(client("a", user)) > 0  # u is empty ...
    assert limits.wait(client("a")) == 0.0  # ... and a's IP token was given back
    assert limits.wait(client("a")) > 0  # a: 2 tokens used
    limits.wait(client("b"))
    limits.wait(client("c"))  # a third IP: the least recently used ("a") is forgotten
    assert limits.ip is not None and len(limits.ip) == 2
    assert limits.wait(client("a")) == 0.0
    now[0] = 1.0
    assert limits.wait(client("a", user)) == 0.0  # refilled


def test_rate_limit_settings_load_from_toml(tmp_path) -> None:
    path = tmp_path / "shaledb.toml"
    path.write_text("[server]\nrate-limit-per-ip = 1000\n\n"
                    "[server.rate-limit-users]\nreports = 50\n")
    config = ServerConfig.load(str(path))
    assert config.rate_limit_per_ip == 1000 and config.rate_limit_users == {"reports": 50}
    with pytest.raises(InvalidArgument, match="rate_limit_users"):
        ServerConfig(rate_limit_users={"x": 0})
    with pytest.raises(InvalidArgument, match="rate_limit_per_ip"):
        ServerConfig(rate_limit_per_ip=-1)
