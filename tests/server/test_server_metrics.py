"""The HTTP endpoint (GET /metrics in the Prometheus text format, GET /health), its limits,
and JSON logs and the observability flags of ``shaledb serve`` in a real process. Requests go
through urllib and raw sockets to 127.0.0.1 only."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import shaledb
from shaledb.server import ServerConfig
from shaledb.server.admin.httpendpoint import MAX_CONNECTIONS, MAX_REQUEST_BYTES

from ._server_support import HOST, ServerThread, free_port, raw_connect, run_server_process

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by metric name, then by sorted labels, checking the text format on the way:
    every sample belongs to a family announced by HELP and TYPE lines just before it."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    families: dict[str, str] = {}
    current: str | None = None
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split(" ", 3)[2]
            assert current not in families, f"family {current} announced twice"
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == current and kind in ("counter", "gauge", "histogram")
            families[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            name, _, labels, value = m.groups()
            assert current is not None and name.startswith(current), line
            if families[current] == "counter":
                assert name.endswith("_total"), line
            parsed = tuple(sorted(_LABEL.findall(labels or "")))
            samples.setdefault(name, {})[parsed] = float(value)
    return samples


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    status, headers, body = _get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert headers["Connection"] == "close"
    return parse_exposition(body.decode())


def _raw_http(port: int, request: bytes) -> bytes:
    s = raw_connect(port)
    try:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    finally:
        s.close()


def test_metrics_counters_rise_with_commands(server_factory) -> None:
    st = server_factory(metrics_port=0)
    port = st.server.metrics_port
    assert port and port != 9380
    r = st.client(single_connection_client=True)
    r.set("k", "v")
    before = _scrape(port)
    cmd_set = (("cmd", "set"),)
    for i in range(20):
        r.set(f"k{i}", "v")
    r.get("k")
    r.get("missing")
    after = _scrape(port)
    assert after["shaledb_commands_total"][cmd_set] - before["shaledb_commands_total"][
        cmd_set] == 20
    for name in ("shaledb_net_input_bytes_total", "shaledb_net_output_bytes_total",
                 "shaledb_commands_processed_total"):
        assert after[name][()] > before[name][()]
    assert after["shaledb_keyspace_hits_total"][()] - before[
        "shaledb_keyspace_hits_total"][()] >= 1
    assert after["shaledb_keyspace_misses_total"][()] > before[
        "shaledb_keyspace_misses_total"][()]
    assert after["shaledb_connected_clients"][()] == 1
    assert after["shaledb_connections_total"][()] == 1
    # The histogram: cumulative buckets, +Inf == _count == calls.
    buckets = sorted(((float(dict(k)["le"]), v) for k, v in
                      after["shaledb_command_duration_seconds_bucket"].items()
                      if dict(k)["cmd"] == "set"))
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")
    assert buckets[-1][1] == after["shaledb_command_duration_seconds_count"][cmd_set] == 21
    assert after["shaledb_command_duration_seconds_sum"][cmd_set] > 0
    # Engine metrics.
    assert after["shaledb_engine_memtable_bytes"][()] > 0
    levels = after["shaledb_engine_level_tables"]
    assert sorted(int(dict(k)["level"]) for k in levels) == list(range(7))
    assert "shaledb_engine_compactions_total" in after
    assert "shaledb_engine_wal_syncs_total" in after
    assert "shaledb_engine_stall_seconds_total" in after
    assert 0 <= after["shaledb_engine_block_cache_hit_ratio"][()] <= 1
    assert after["shaledb_engine_read_only"][()] == 0
    assert after["process_resident_memory_bytes"][()] > 0
    info = r.info("server")
    assert info["metrics_port"] == port
    r.close()


def test_error_replies_and_label_escaping(server_factory) -> None:
    st = server_factory(metrics_port=0)
    r = st.client(single_connection_client=True)
    r.set("n", "x")
    with pytest.raises(Exception, match="not an integer"):
        r.execute_command("INCR", "n")
    m = _scrape(st.server.metrics_port)
    assert m["shaledb_commands_failed_total"][(("cmd", "incr"),)] == 1
    assert m["shaledb_error_replies_total"][(("prefix", "ERR"),)] >= 1
    from shaledb.server.admin.metrics import escape_label
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    r.close()


def test_health_and_http_errors(server_factory) -> None:
    st = server_factory(metrics_port=0)
    port = st.server.metrics_port
    status, headers, body = _get(port, "/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["status"] == "ok" and health["uptime_seconds"] >= 0
    status, headers, body = _get(port, "/health", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert _get(port, "/metrics?name=x")[0] == 200
    assert _get(port, "/nope")[0] == 404
    status, headers, _ = _get(port, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert _raw_http(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_request_head_limits(server_factory) -> None:
    st = server_factory(metrics_port=0, metrics_header_timeout=0.5)
    port = st.server.metrics_port
    big = b"GET /metrics HTTP/1.1\r\nX-Fill: " + b"a" * MAX_REQUEST_BYTES + b"\r\n\r\n"
    assert _raw_http(port, big).startswith(b"HTTP/1.1 431 ")
    started = time.monotonic()
    slow = _raw_http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
    assert slow.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= 0.4
    assert _get(port, "/health")[0] == 200  # the endpoint still serves


def test_concurrent_request_limit(server_factory) -> None:
    st = server_factory(metrics_port=0, metrics_header_timeout=30)
    port = st.server.metrics_port
    idle = [raw_connect(port) for _ in range(MAX_CONNECTIONS)]
    try:
        idle[-1].sendall(b"G")  # make sure every connection was accepted
        deadline = time.monotonic() + 10
        while (st.call(lambda: len(st.server.metrics._active)) < MAX_CONNECTIONS
               and time.monotonic() < deadline):
            time.sleep(0.01)
        # Full of idle connections: the oldest makes room for the probe (issue 10, item 8:
        # this answered 503, so idle connections could hold /health down).
        assert _raw_http(port, b"GET /health HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 200 ")
        assert st.call(lambda: len(st.server.metrics._active)) <= MAX_CONNECTIONS
        assert st.call(lambda: st.server.metrics.evicted) == 1
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while _get(port, "/health")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _get(port, "/health")[0] == 200


def test_health_is_503_when_the_engine_refuses_writes(tmp_path) -> None:
    path = str(tmp_path / "db")
    shaledb.open(path).close()
    db = shaledb.open(path, read_only=True)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=path, metrics_port=0), db)
    try:
        status, _, body = _get(st.server.metrics_port, "/health")
        assert status == 503
        health = json.loads(body)
        assert health["status"] == "read_only" and "read-only" in health["reason"]
        assert _scrape(st.server.metrics_port)["shaledb_engine_read_only"][()] == 1
    finally:
        st.stop()
        db.close()


def test_metrics_off_and_port_in_use(server_factory, tmp_path) -> None:
    st = server_factory(metrics_port=None)
    assert st.server.metrics is None and st.server.metrics_port is None
    r = st.client(single_connection_client=True)
    assert r.info("server")["metrics_port"] == 0
    r.close()
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(OSError, match="metrics endpoint"):
            ServerThread(ServerConfig(port=0, host=HOST, dir=str(tmp_path / "b"),
                                      metrics_port=busy))
    # The failed start released the database: it opens again.
    shaledb.open(str(tmp_path / "b")).close()


def test_serve_json_logs_flags_and_config_file(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "shaledb.toml"
    config.write_text(f'[server]\nlog_format = "json"\nmetrics_port = {metrics_port}\n'
                      'slowlog-max-len = 3\n')
    proc = run_server_process(tmp_path / "db", port, "--config", str(config),
                              "--metrics-port", str(metrics_port), "--log-level", "info",
                              "--slowlog-log-slower-than", "0")
    try:
        import redis
        r = redis.Redis(host=HOST, port=port, socket_timeout=10)
        for i in range(5):
            r.set(f"k{i}", "v")
        assert r.slowlog_len() == 3  # from the file
        assert r.info("server")["config_file"] == str(config)
        assert r.info("server")["metrics_port"] == metrics_port
        r.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                metrics = _scrape(metrics_port)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert metrics["shaledb_commands_total"][(("cmd", "set"),)] == 5
        bad = raw_connect(port)
        bad.sendall(b"*1\r\n$x\r\n")  # a protocol error: logged with the client's address
        assert bad.recv(100).startswith(b"-ERR Protocol error")
        client_addr = "{}:{}".format(*bad.getsockname())
        bad.close()
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", x["ts"]) for x in lines)
    assert any(f"metrics port {metrics_port}" in x["msg"] for x in lines)
    closing = [x for x in lines if x["msg"].startswith("closing client")]
    assert closing and closing[0]["client"] == client_addr and closing[0]["level"] == "info"
    assert closing[0]["logger"] == "shaledb.server"


def test_serve_rejects_bad_observability_flags(tmp_path: Path) -> None:
    import subprocess
    import sys
    base = [sys.executable, "-m", "shaledb.cli", "serve", "--port", str(free_port()),
            "--dir", str(tmp_path / "db")]
    for extra, message in ((["--metrics-port", "banana"], "metrics_port"),
                           (["--log-format", "xml"], "xml"),
                           (["--slowlog-log-slower-than", "-5"], "slowlog")):
        done = subprocess.run(base + extra, capture_output=True, timeout=60)
        assert done.returncode != 0
        assert message in done.stderr.decode(), done.stderr
