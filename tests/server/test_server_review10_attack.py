"""Issue 10, "Server hardening", reviewed again: attacks on the fixes of items 1-13, as a
hostile client and a careless operator would make them, over real sockets against the real
server (loopback only). Each test says what it breaks; each failed before its fix."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import pure_only
from shaledb.errors import InvalidArgument
from shaledb.server import ServerConfig

from ._server_support import HOST
from .test_server_review10_bounds import Pinger, server_process, timed

# Latency and wall-clock bounds: `make test` runs these alone, after the parallel run.
pytestmark = pytest.mark.timing

KiB = 1024


def _idle_then_ping(port: int, idle: float) -> bytes:
    """PING, stay idle ``idle`` seconds, PING again on the same connection: the second
    answer, or b'' when the server closed the connection meanwhile."""
    s = socket.create_connection((HOST, port), timeout=5)
    try:
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
        time.sleep(idle)
        try:
            s.sendall(b"PING\r\n")
            return s.recv(64)
        except OSError:
            return b""
    finally:
        s.close()


@pytest.mark.parametrize("name", ["timeout", "auth-timeout"])
def test_a_tiny_idle_or_auth_timeout_is_refused(server_factory: Any, name: str) -> None:
    """BREAKS item 7's audit of numeric CONFIG ranges: `CONFIG SET timeout 1e-300` (and
    0.0000001, or auth-timeout alike) was accepted, and the idle sweeper (every 10 ms) then
    closed every connection as soon as it was idle: of 10 raw connections, 10 were closed
    between two PINGs 0.15 s apart -- pooled clients, redis-cli, replicas of the admin's
    session all dropped (Redis' timeout is whole seconds). A nonzero timeout below the
    floor is refused now, by CONFIG SET and in the config file."""
    st = server_factory(requirepass="pw" if name == "auth-timeout" else None)
    r = st.client(password="pw" if name == "auth-timeout" else None)
    for value in ("1e-300", "0.0000001", "0.01"):
        with pytest.raises(redis.ResponseError, match="at least"):
            r.config_set(name, value)
    if name == "timeout":
        assert _idle_then_ping(st.port, 0.2) == b"+PONG\r\n"
    else:  # a client gets time to send its AUTH
        s = socket.create_connection((HOST, st.port), timeout=5)
        time.sleep(0.2)
        s.sendall(b"AUTH pw\r\n")
        assert s.recv(64) == b"+OK\r\n"
        s.close()
    assert r.config_set(name, "0")
    assert r.config_set(name, "1")
    attr = name.replace("-", "_")
    with pytest.raises(InvalidArgument, match="at least"):
        ServerConfig(**{attr: 1e-300})
    r.close()


def test_exec_of_many_scans_shares_one_time_budget(tmp_path: Path) -> None:
    """BREAKS the 50 ms bounds of SCAN and of a client's turn: each SCAN stops after 50 ms
    of work, but EXEC runs any number of them back to back in one command: MULTI, 100 x
    `SCAN 0 MATCH nomatch*x COUNT 1000000000`, EXEC over 200,000 keys held the event loop
    5.0 s (another client's PING waited 5.01 s); max-multi-bytes lets one client queue a
    million of them. The SCANs of one EXEC now share one 50 ms budget: past it each walks
    a single key (COUNT is a hint; the cursor goes on)."""
    with server_process(tmp_path) as (port, _):
        r = redis.Redis(host=HOST, port=port, socket_timeout=120)
        # Enough keys that one SCAN alone cannot walk them all in its 50 ms: 100,000 did on
        # a fast machine with the compiled build (CI saw a SCAN of the EXEC answer cursor 0).
        # Keys are added until a lone SCAN stops early twice in a row, then doubled for margin.
        total, stopped_early, margin = 0, 0, False
        while not margin:
            margin = stopped_early == 2  # the round after the one that first stopped early
            assert margin or total < 1_600_000, \
                f"a lone SCAN walked {total:,} keys within its 50 ms budget"
            more = max(total, 100_000)
            p = r.pipeline(transaction=False)
            for i in range(total, total + more, 1000):
                p.mset({b"key:%08d" % j: b"v" for j in range(i, i + 1000)})
            p.execute()
            total += more
            stopped_early = sum(r.scan(0, match=b"nomatch*x", count=10**9)[0] != 0
                                for _ in range(2))
        pinger = Pinger(port)
        tx = r.pipeline(transaction=True)
        for _ in range(60):
            tx.scan(0, match=b"nomatch*x", count=10**9)
        replies, took = timed(tx.execute)
        worst = pinger.stop()
        assert isinstance(replies, list) and len(replies) == 60
        assert all(cursor != 0 for cursor, _ in replies)  # every SCAN stopped early...
        # ... and its cursor goes on: the walk from the last one still finds every key.
        cursor, seen = replies[-1][0], 0
        while cursor:
            cursor, keys = r.scan(cursor, count=10**9)
            seen += len(keys)
        assert 0 < seen < total
        assert took < 1.0, f"EXEC of 60 SCANs took {took:.2f} s"
        assert worst < 0.5, f"another client waited {worst:.2f} s"
        r.close()


def test_one_key_matched_against_the_heaviest_accepted_pattern_stays_short(
        tmp_path: Path) -> None:
    """BREAKS item 2's per-key bound: a pattern is accepted with up to 1024 key bytes of
    `?`/`[...]` between two stars, and the docs promise ~0.1 s for matching a 64 KiB key;
    but a class is 10-20 times slower per regex step than `?`: `*[ba]...[ba]c*` (1023
    classes, a 4 KiB pattern) took 0.4-1.1 s per 64 KiB key (in-process), and KEYS with it
    over three such keys kept another client's PING waiting 1.26 s (KEYS and SCAN only look
    at the clock between keys). A `[...]` now counts 16 bytes of the 1,024: at most ~63 sets
    between two stars, ~0.02 s per 64 KiB key."""
    with server_process(tmp_path) as (port, _):
        r = redis.Redis(host=HOST, port=port, socket_timeout=120)
        for i in range(3):
            r.set(b"a" * (64 * KiB - 4) + b"%03d" % i, "v")
        pattern = b"*" + b"[ba]" * 1023 + b"c*"
        pinger = Pinger(port)
        reply, took = timed(lambda: r.keys(pattern))
        worst = pinger.stop()
        assert reply == [] or isinstance(reply, redis.ResponseError)
        assert worst < 0.5, f"another client waited {worst:.2f} s (KEYS took {took:.2f} s)"
        # The heaviest pattern of sets still accepted: fast enough per key.
        heaviest = b"*" + b"[ba]" * 63 + b"c*"
        pinger = Pinger(port)
        reply, took = timed(lambda: r.keys(heaviest))
        worst = pinger.stop()
        assert reply == []
        assert worst < 0.5, f"another client waited {worst:.2f} s (KEYS took {took:.2f} s)"
        assert took < 1.0, took
        r.close()



def test_numeric_settings_take_only_plain_decimal_numbers(server_factory: Any) -> None:
    """Python's float() spellings that Redis refuses (``1_0``, `` 5``, ``nan``, ``inf``,
    ``0x10``) were accepted by CONFIG SET for timeout, rate-limit-per-ip, auth-fail-rate and
    scrub-interval; plain decimals with an optional exponent still are."""
    st = server_factory()
    r = st.client()
    for name in ("timeout", "rate-limit-per-ip", "auth-fail-rate", "scrub-interval"):
        for bad in ("1_0", " 5", "5 ", "nan", "inf", "0x10", "+-1", "", "1e", "."):
            if bad == "" and name == "rate-limit-per-ip":
                continue  # "" means no limit there
            with pytest.raises(redis.ResponseError):
                r.config_set(name, bad)
        for good in ("10", "10.5", "1e1", ".5e2", "25."):
            assert r.config_set(name, good)
    r.close()


def test_acl_key_patterns_are_bounded_like_keys_patterns(server_factory: Any) -> None:
    """An ACL key pattern is matched against every key its user touches, on the event loop;
    unbounded, a 64 KiB pattern cost 3.4 s per 64 KiB key (review10). Now ACL SETUSER
    refuses the patterns KEYS refuses, with the same reason, and changes nothing."""
    st = server_factory()
    r = st.client()
    heavy = b"*" + b"[ab]" * 1023 + b"c*"
    for pattern in (b"a" * (64 * 1024 + 1), heavy):
        with pytest.raises(redis.ResponseError, match="pattern"):
            r.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "+@all", b"~" + pattern)
        with pytest.raises(redis.ResponseError, match="pattern"):
            r.execute_command("KEYS", pattern)
    assert r.execute_command("ACL", "GETUSER", "bob") is None
    assert r.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "+@all", "~user:*?[0-9]")
    r.close()


def test_a_flood_of_bad_clients_cannot_flood_the_log(server_factory: Any, caplog: Any) -> None:
    """Every protocol error, refusal, TLS failure and output-limit closure was logged, one
    line per connection: the hostile soak's 20 s made 100,000 log lines (formatted on the
    event loop). Now each kind logs at most LogBudget.burst lines a second and then says how
    many it left out."""
    import logging

    from shaledb.server.admin.logs import CLIENT_LOG

    caplog.set_level(logging.INFO, logger="shaledb.server")
    st = server_factory()
    before = CLIENT_LOG.suppressed
    t0 = time.monotonic()
    for _ in range(200):
        with socket.create_connection((HOST, st.port), timeout=10) as s:
            s.sendall(b"*1\r\nx")
            s.recv(256)
    elapsed = time.monotonic() - t0
    time.sleep(0.2)
    lines = [r for r in caplog.records if "Protocol error" in r.getMessage()]
    allowed = CLIENT_LOG.burst * (int(elapsed / CLIENT_LOG.interval) + 2)
    assert len(lines) <= allowed, (len(lines), elapsed)
    assert CLIENT_LOG.suppressed - before >= 200 - allowed
    time.sleep(CLIENT_LOG.interval)
    with socket.create_connection((HOST, st.port), timeout=10) as s:
        s.sendall(b"*1\r\nx")
        s.recv(256)
    time.sleep(0.2)
    assert "similar lines left out" in caplog.records[-1].getMessage()


def test_evicted_metrics_connections_end_quietly(server_factory: Any, caplog: Any) -> None:
    """Making room on the metrics endpoint cancelled the oldest idle connection's task, and
    asyncio's stream callback logged a traceback for each (6,504 in the hostile soak's
    20 s): now an evicted connection ends without a log line."""
    import logging

    from shaledb.server.admin.httpendpoint import MAX_CONNECTIONS

    caplog.set_level(logging.INFO)
    st = server_factory(metrics_port=0, metrics_header_timeout=60)
    port = st.server.metrics_port
    idle = []
    try:
        for _ in range(3 * MAX_CONNECTIONS):
            idle.append(socket.create_connection((HOST, port), timeout=10))
            time.sleep(0.002)
        deadline = time.monotonic() + 10
        while st.call(lambda: st.server.metrics.evicted) < 2 * MAX_CONNECTIONS - 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        for s in idle:
            s.close()
    noisy = [r for r in caplog.records if r.exc_info or "Exception in callback" in r.getMessage()]
    assert not noisy, noisy[0].getMessage()


def test_a_burst_of_connections_waits_in_the_backlog_not_in_syn_retries(tmp_path: Path) -> None:
    """With the listen backlog at 511 (Redis' default), a reset storm that arrived while the
    event loop was busy overflowed the accept queue (TcpExtListenOverflows rose by ~100 in
    the hostile mix's 20 s) and a probe's new connection waited a 1-2 s SYN retransmission.
    tcp-backlog defaults to 4096 (the kernel caps it at somaxconn): 1,500 connections made
    while the server cannot accept (SIGSTOP) all complete at once."""
    import os
    import signal

    with open("/proc/sys/net/core/somaxconn") as fh:
        if int(fh.read()) < 2048:
            pytest.skip("net.core.somaxconn caps the backlog below 2048 on this machine")
    with contextlib.ExitStack() as stack:
        port, pid = stack.enter_context(server_process(tmp_path))
        r = redis.Redis(HOST, port)
        assert r.config_get("tcp-backlog") == {"tcp-backlog": "4096"}
        r.close()
        os.kill(pid, signal.SIGSTOP)
        socks: list[socket.socket] = []
        try:
            t0 = time.monotonic()
            for _ in range(1500):
                s = socket.socket()
                socks.append(s)
                s.settimeout(5)
                s.connect((HOST, port))
            elapsed = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
            for s in socks:
                s.close()
        assert elapsed < 0.9, f"1,500 connects took {elapsed:.2f} s (SYNs dropped)"
        assert ping_new_connection(port) == b"+PONG\r\n"


def ping_new_connection(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64)


@pure_only
def test_an_unexpected_error_in_the_turns_commit_still_answers_every_client(
        server_factory: Any, monkeypatch: Any, caplog: Any) -> None:
    """Found by the encryption branch: the turn's commit caught only ShaleError, so any
    other exception (a bug) left every client of that turn without a reply, forever. Now
    they get an error, the writes are not applied later with another turn's, and the
    server goes on."""
    from shaledb.server.keyspace import keyspace

    st = server_factory()
    c = st.client()
    assert c.set("before", "1")
    real = keyspace.KeyspaceTxn.commit
    calls = {"n": 0}

    def once(self: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated bug")
        real(self)

    monkeypatch.setattr(keyspace.KeyspaceTxn, "commit", once)
    c.connection_pool.connection_kwargs["socket_timeout"] = 5
    with pytest.raises(redis.ResponseError, match="internal error while committing"):
        c.set("lost", "x")
    assert c.set("after", "2")
    assert c.get("lost") is None and c.get("after") == b"2" and c.get("before") == b"1"
    assert any("internal error committing" in r.getMessage() for r in caplog.records)
