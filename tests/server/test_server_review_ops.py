"""Defects found by a review of the server's operational parts (CONFIG, SLOWLOG, INFO, the
metrics endpoint, glob patterns), each shown on a real server over a socket on 127.0.0.1."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

import shaledb
from shaledb.server import ServerConfig
from shaledb.server.admin.slowlog import SLOWLOG_MAX_STRING
from shaledb.server.commands.connection import MAX_CLIENT_NAME

from ._server_support import HOST, RawClient, ServerThread, free_port, wait_for_port, wait_until


def _wait(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    wait_until(cond, timeout, "condition", 0.01)


def _held_replies(admin: redis.Redis, client_id: int) -> int:
    for c in admin.client_list():
        if int(c["id"]) == client_id:
            return int(c["oll"])
    raise AssertionError(f"client {client_id} is gone")


def test_leaving_appendfsync_always_keeps_replies_in_order(tmp_path: Path) -> None:
    # A reply held for an fsync under `always` must still go out before the replies of
    # later commands after CONFIG SET appendfsync everysec removed the fsync group: they
    # used to be written at once, ahead of it, so the client read them as the answers of
    # the wrong commands.
    db = shaledb.open(str(tmp_path / "db"))
    fsync_may_finish = threading.Event()
    real_sync = db.sync

    def slow_sync() -> None:  # a slow disk: the fsync ends when the test says so
        fsync_may_finish.wait(10)
        real_sync()

    db.sync = slow_sync  # type: ignore[method-assign]
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=str(tmp_path / "db"),
                                   appendfsync="always"), db=db)
    try:
        admin = st.client(decode_responses=True)
        a = RawClient(st.port)
        a_id = a("CLIENT", "ID")
        a.send("SET", "k", "v", "GET")  # answered nil once its fsync is done
        _wait(lambda: _held_replies(admin, a_id) == 1)
        assert admin.config_set("appendfsync", "everysec")
        a.send("PING")
        time.sleep(0.2)  # the PING has run (its reply must still wait behind the SET's)
        fsync_may_finish.set()
        assert a.read() is None  # SET ... GET of a new key
        assert a.read() == b"PONG"
        assert a("GET", "k") == b"v"
        a.close()
    finally:
        fsync_may_finish.set()
        st.stop()
        db.close()


def test_slowlog_entries_stay_small_whatever_the_client_name(server_factory) -> None:
    # An entry keeps at most 32 arguments of at most 128 bytes each, but it kept the client
    # name whole: a client renaming itself to a new 32 MiB name before each slow command
    # made every entry (128 by default, 100,000 at most) hold one.
    # (Names are now at most MAX_CLIENT_NAME bytes, issue 10: the longest one is cut.)
    st = server_factory(slowlog_log_slower_than=0)
    r = st.client(single_connection_client=True)
    assert MAX_CLIENT_NAME > SLOWLOG_MAX_STRING
    r.client_setname("n" * MAX_CLIENT_NAME)
    r.ping()
    entry = r.slowlog_get(1)[0]
    assert entry["command"] == b"PING"
    name = entry["client_name"]
    assert len(name) <= SLOWLOG_MAX_STRING + 32
    assert name.startswith(b"n" * SLOWLOG_MAX_STRING)
    assert name.endswith(b"... (%d more bytes)" % (MAX_CLIENT_NAME - SLOWLOG_MAX_STRING))
    # A name within the limit is kept as it is.
    r.client_setname("worker-1")
    r.ping()
    assert r.slowlog_get(1)[0]["client_name"] == b"worker-1"


def test_scan_match_pattern_cannot_hang_the_server(server_factory) -> None:
    # Glob patterns were translated to a backtracking regex: `*a*a*...*b` against a long
    # key took exponential time (Redis' CVE-2022-36021), so one SCAN MATCH -- open to any
    # user who may read -- froze the event loop and every client with it.
    st = server_factory()
    r = st.client(socket_timeout=20)
    r.set("a" * 400, "x")
    r.set("ab", "y")
    r.set("a" * 20 + "b", "z")
    pattern = "*a" * 20 + "*b"
    cursor, keys = r.scan(0, match=pattern, count=100)
    assert cursor == 0 and keys == [b"a" * 20 + b"b"]
    assert r.keys(pattern) == [b"a" * 20 + b"b"]
    # The semantics are unchanged (every form of the syntax, anchored at both ends).
    for pat, want in [("a*", True), ("*a", False), ("*b", True), ("a?", True), ("?", False),
                      ("a[ab]", True), ("a[^b]", False), ("[a-b]b", True), ("a\\*", False),
                      ("*", True), ("**b", True), ("a*b*", True), ("*a*b", True),
                      ("*[b]", True), ("?*?", True), ("???", False), ("a*a*b", False)]:
        assert (b"ab" in r.keys(pat)) is want, pat
    assert r.keys("a\\*") == []
    r.set("a*", "z")
    assert r.keys("a\\*") == [b"a*"]


def test_resetstat_keeps_instantaneous_ops_per_sec_non_negative(server_factory) -> None:
    # RESETSTAT zeroed total_commands_processed but kept the once-a-second samples the ops/s
    # window is computed from, so INFO showed a negative instantaneous_ops_per_sec for up to
    # five seconds.
    st = server_factory()
    r = st.client(single_connection_client=True)
    pipe = r.pipeline(transaction=False)
    for _ in range(3000):
        pipe.ping()
    pipe.execute()
    time.sleep(5.5)  # every sample of the 5-second window now counts the 3,000 PINGs
    r.config_resetstat()
    assert r.info("stats")["instantaneous_ops_per_sec"] >= 0


def _http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_metrics_endpoint_answers_500_when_building_a_page_fails(server_factory) -> None:
    # An exception while building the page (here: the engine's stats call) used to escape
    # the request handler: the scraper's connection was dropped without any response and
    # asyncio logged an unhandled exception; now it gets a 500 and the endpoint goes on.
    st = server_factory(metrics_port=0)
    assert st.server is not None
    port = st.server.metrics_port
    assert port
    db = st.server.db
    real_stats = db.stats

    def broken_stats() -> dict:
        raise RuntimeError("stats are unavailable")

    db.stats = broken_stats  # type: ignore[method-assign]
    try:
        for path in ("/metrics", "/health"):
            status, body = _http_get(port, path)
            assert status == 500, path
            assert b"internal error" in body and b"unavailable" not in body
    finally:
        db.stats = real_stats  # type: ignore[method-assign]
    assert _http_get(port, "/metrics")[0] == 200
    assert _http_get(port, "/health")[0] == 200


def test_a_connection_flood_cannot_starve_the_engine_of_file_descriptors(tmp_path: Path) -> None:
    # maxclients (10,000) was not fitted to the open files limit: with `ulimit -n 700`, a
    # few hundred bare TCP connections (no AUTH needed) used every descriptor, the engine's
    # next WAL or table file failed with EMFILE, and the engine refused every write from
    # then on (MISCONF) until a restart. As Redis does, the server now raises the soft limit
    # when it may, else lowers maxclients so the engine keeps its descriptors.
    port = free_port()
    limit = 700

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port", str(port),
         "--dir", str(tmp_path / "db"), "--metrics-port", "off", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=low_fd_limit,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    socks: list[socket.socket] = []
    try:
        wait_for_port(port, proc)
        r = redis.Redis(host=HOST, port=port, socket_timeout=10)
        fitted = int(r.config_get("maxclients")["maxclients"])
        assert 1 <= fitted <= limit - 512  # the engine keeps max_open_files (512) and more
        for i in range(2000):
            r.set(f"k{i}", "v" * 100)
        refused = 0
        for _ in range(limit):
            s = socket.create_connection((HOST, port), timeout=10)
            socks.append(s)
        for s in socks:  # each got its answer once accepted: nothing, or refused
            s.sendall(b"PING\r\n")
            reply = s.recv(100)
            refused += reply.startswith(b"-ERR max number of clients reached")
        assert refused >= limit - fitted
        for s in socks:
            s.close()
        socks.clear()
        _wait(lambda: r.info("clients")["connected_clients"] == 1)
        assert r.execute_command("SAVE") is True  # a new WAL and a new table: files open
        assert r.set("after", "flood") and r.get("after") == b"flood"
        assert r.info("shaledb")["read_only"] == 0
        # CONFIG SET cannot raise maxclients past what the descriptors allow.
        try:
            r.config_set("maxclients", 100_000)
        except redis.ResponseError as exc:
            assert "not able to handle the specified number of clients" in str(exc)
        else:
            raise AssertionError("CONFIG SET maxclients 100000 was accepted")
        assert int(r.config_get("maxclients")["maxclients"]) == fitted
        r.close()
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert b"maxclients" in err  # the lowered limit is logged


def test_info_hz_is_the_configured_hz(server_factory) -> None:
    # INFO said hz:1 (from before the active-expiry sweeper existed) while CONFIG GET hz and
    # the sweeper use the `hz` setting.
    st = server_factory(hz=25)
    r = st.client(decode_responses=True)
    info = r.info("server")
    assert r.config_get("hz") == {"hz": "25"}
    assert info["hz"] == 25 and info["configured_hz"] == 25
