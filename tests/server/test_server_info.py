"""INFO sections and fields, command/error/latency statistics, and SLOWLOG, against a real
server with redis-py (RESP2 and RESP3) and raw sockets."""

from __future__ import annotations

import os
import time

import pytest
import redis

from shaledb.errors import InvalidArgument
from shaledb.server import ServerConfig
from shaledb.server.admin.info import keyspace_fields, select_sections
from shaledb.server.admin.slowlog import redact, truncate
from shaledb.server.admin.stats import BUCKET_BOUNDS_NS, CommandStats, ServerStats

from ._server_support import RawClient, raw_connect


def _info_raw(port: int, *args: bytes, hello3: bool = False) -> bytes:
    """The raw bytes of the INFO reply (sent after HELLO 3 when asked)."""
    req = [b"INFO", *args]
    frame = b"*%d\r\n" % len(req) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in req)
    hello = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n" if hello3 else b""
    marker = b"\r\n=" if hello3 else b""
    s = raw_connect(port)
    try:
        s.sendall(hello + frame + b"*1\r\n$4\r\nPING\r\n")
        data = b""
        while not data.endswith(b"PONG\r\n"):
            chunk = s.recv(65536)
            assert chunk, "server closed the connection"
            data += chunk
    finally:
        s.close()
    start = data.index(marker) + len(marker) - 1 if hello3 else 0
    size = int(data[start + 1:data.index(b"\r\n", start)])
    body_at = data.index(b"\r\n", start) + 2
    return data[start:body_at + size + 2]


# -- INFO -----------------------------------------------------------------------------------


def test_info_default_sections_parse_with_redis_py(server, r) -> None:
    info = r.info()
    assert info["redis_version"] == "7.2.0"
    assert info["shaledb_version"]
    assert info["process_id"] == os.getpid()  # the server runs in this process
    assert info["tcp_port"] == server.port
    assert info["uptime_in_days"] == 0 and info["uptime_in_seconds"] >= 0
    assert info["arch_bits"] in (32, 64) and info["os"] and info["executable"]
    assert len(info["run_id"]) == 40 and info["role"] == "master"
    assert info["connected_slaves"] == 0
    assert info["connected_clients"] == 1 and info["maxclients"] == 10_000
    assert info["blocked_clients"] == 0
    assert info["used_memory"] > 0 and info["used_memory_rss"] > 0
    assert info["used_cpu_user"] > 0
    assert info["aof_enabled"] == 1 and info["appendfsync"] == "everysec"
    # LASTSAVE starts at the server's start time, as in Redis (see checkpoint.py).
    assert info["rdb_last_save_time"] > 0 and info["rdb_bgsave_in_progress"] == 0
    assert info["cluster_enabled"] == 0
    assert "memtable_bytes" in info and "level0" in info  # the shaledb section
    # commandstats and latencystats are not in the default set, as in Redis.
    assert not any(k.startswith(("cmdstat_", "latency_percentiles")) for k in info)
    assert set(r.info("default")) == set(info)


def test_info_section_selection_all_everything_and_unknown(r) -> None:
    r.get("k")
    server_only = r.info("server")
    assert "redis_version" in server_only and "connected_clients" not in server_only
    two = r.execute_command("INFO", "server", "CLIENTS")
    assert "redis_version" in two and "connected_clients" in two and "used_memory" not in two
    for name in ("all", "everything"):
        everything = r.info(name)
        assert "cmdstat_get" in everything and "latency_percentiles_usec_get" in everything
        assert "redis_version" in everything and "db0" not in everything  # empty keyspace
    assert r.info("nosuchsection") == {}
    assert select_sections(["all"])[-1] == "shaledb"
    assert select_sections([]) == select_sections(["default"])


def test_info_reply_is_crlf_text_bulk_in_resp2_and_verbatim_in_resp3(server) -> None:
    resp2 = _info_raw(server.port, b"server", b"clients")
    assert resp2.startswith(b"$")
    body = resp2[resp2.index(b"\r\n") + 2:-2]
    assert body.startswith(b"# Server\r\nredis_version:7.2.0\r\n")
    assert b"\r\n\r\n# Clients\r\n" in body and body.endswith(b"\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")
    resp3 = _info_raw(server.port, b"server", hello3=True)
    assert resp3.startswith(b"=")
    assert resp3[resp3.index(b"\r\n") + 2:].startswith(b"txt:# Server\r\n")
    r3 = server.client(protocol=3)
    try:
        info = r3.info()
        assert info["redis_version"] == "7.2.0" and info["connected_clients"] >= 1
        assert r3.info("server")["tcp_port"] == server.port
    finally:
        r3.close()


def test_commandstats_errorstats_and_subcommands(server) -> None:
    r = server.client(single_connection_client=True)
    r.ping()  # redis-py's handshake sends a CLIENT subcommand we do not know: an error
    base_errors = r.info("errorstats")["errorstat_ERR"]["count"]
    base_total = r.info("stats")["total_error_replies"]
    r.set("n", "abc")
    for _ in range(3):
        r.get("n")
    with pytest.raises(redis.ResponseError):
        r.execute_command("GET")  # arity: rejected
    with pytest.raises(redis.ResponseError):
        r.execute_command("INCR", "n")  # runs and fails
    with pytest.raises(redis.ResponseError):
        r.execute_command("NOSUCHCMD", "x")  # unknown: only errorstats
    r.execute_command("CLIENT", "ID")
    r.execute_command("SLOWLOG", "LEN")
    r.execute_command("ACL", "SETUSER", "reader", "on", "nopass", "~*", "+get")
    reader = RawClient(server.port)
    assert reader("AUTH", "reader", "x") == b"OK"
    assert str(reader("SET", "n", "1")).startswith("NOPERM")  # ACL: rejected
    reader.close()

    stats = r.info("commandstats")
    assert stats["cmdstat_get"]["calls"] == 3 and stats["cmdstat_get"]["rejected_calls"] == 1
    assert stats["cmdstat_get"]["failed_calls"] == 0
    assert stats["cmdstat_get"]["usec"] >= 0
    assert stats["cmdstat_incr"] == {**stats["cmdstat_incr"], "calls": 1, "failed_calls": 1}
    assert stats["cmdstat_set"]["calls"] == 1 and stats["cmdstat_set"]["rejected_calls"] == 1
    assert stats["cmdstat_client|id"]["calls"] == 1
    assert stats["cmdstat_slowlog|len"]["calls"] == 1
    assert stats["cmdstat_acl|setuser"]["calls"] == 1
    assert not any("nosuchcmd" in k for k in stats)
    per_call = stats["cmdstat_get"]["usec_per_call"]
    assert per_call == pytest.approx(stats["cmdstat_get"]["usec"] / 3, abs=0.01)

    errors = r.info("errorstats")
    assert errors["errorstat_ERR"]["count"] - base_errors == 3  # arity, INCR, unknown
    assert errors["errorstat_NOPERM"]["count"] == 1
    assert r.info("stats")["total_error_replies"] - base_total == 4
    r.close()


def test_commands_inside_exec_are_counted_and_slowlogged(server_factory) -> None:
    st = server_factory(slowlog_log_slower_than=0)
    r = st.client(single_connection_client=True)
    pipe = r.pipeline(transaction=True)
    pipe.set("a", "1").incr("a").get("a")  # redis-py sends INCRBY a 1
    assert pipe.execute() == [True, 2, b"2"]
    stats = r.info("commandstats")
    assert stats["cmdstat_exec"]["calls"] == 1 and stats["cmdstat_incrby"]["calls"] == 1
    assert stats["cmdstat_multi"]["calls"] == 1
    logged = [e["command"] for e in r.slowlog_get(-1)]
    assert b"INCRBY a 1" in logged and b"EXEC" not in logged  # EXEC is skip-slowlog in Redis
    r.close()


def test_latencystats_percentiles(r) -> None:
    for i in range(50):
        r.set(f"k{i}", "v")
    lat = r.info("latencystats")["latency_percentiles_usec_set"]
    assert set(lat) == {"p50", "p99", "p99.9"}
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"]


def test_stats_section_counters(server_factory) -> None:
    st = server_factory(maxclients=2)
    r = st.client(single_connection_client=True)
    r.set("present", "1")
    before = r.info("stats")
    assert r.get("present") == b"1" and r.get("absent") is None
    after = r.info("stats")
    assert after["keyspace_hits"] - before["keyspace_hits"] == 1
    assert after["keyspace_misses"] - before["keyspace_misses"] == 1
    assert after["total_commands_processed"] - before["total_commands_processed"] == 3
    # GET present is 30 bytes on the wire; GET absent and INFO stats add more.
    assert after["total_net_input_bytes"] - before["total_net_input_bytes"] > 60
    assert after["total_net_output_bytes"] > before["total_net_output_bytes"]
    assert isinstance(after["instantaneous_ops_per_sec"], (int, float))
    assert after["expired_keys"] == 0 and after["evicted_keys"] == 0
    other = st.client(single_connection_client=True)
    other.ping()
    third = raw_connect(st.port)
    assert third.recv(100) == b"-ERR max number of clients reached\r\n"
    third.close()
    final = r.info()
    assert final["rejected_connections"] == 1
    assert final["total_connections_received"] == 2 and final["connected_clients"] == 2
    other.close()
    r.close()


def test_ops_per_sec_window() -> None:
    stats = ServerStats()
    assert stats.ops_per_sec(0, now=100.0) == 0.0
    for second in range(5):
        stats.sample(1000 * second, now=100.0 + second)
    # Five samples a second apart, 1000 commands each second, and 500 since the last one.
    assert stats.ops_per_sec(4500, now=104.5) == 1000.0
    stats.sample(9000, now=105.0)  # the oldest sample leaves the window
    assert stats.ops_per_sec(9000, now=105.0) == pytest.approx(8000 / 4)


def test_histogram_percentiles_interpolate_inside_buckets() -> None:
    c = CommandStats("get")
    assert c.percentile(50) == 0.0
    bucket = 10
    c.buckets[bucket] = 100
    lo, hi = BUCKET_BOUNDS_NS[bucket - 1] / 1000, BUCKET_BOUNDS_NS[bucket] / 1000
    assert lo < c.percentile(50) < hi
    assert c.percentile(100) == pytest.approx(hi)
    c.buckets[-1] = 1  # slower than the last bound
    assert c.percentile(100) >= BUCKET_BOUNDS_NS[-1] / 1000


def test_keyspace_section(server, r) -> None:
    r.set("a", "1")
    r.set("b", "2", ex=100)
    r.execute_command("SELECT", 3)
    r.set("c", "3")
    # The counts are those of the active-expiry sweeper's last full pass: wait for one
    # that started after the writes.
    passes = int(r.info("shaledb")["expire_sweep_passes"])
    deadline = time.monotonic() + 10
    while int(r.info("shaledb")["expire_sweep_passes"]) < passes + 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    info = r.info("keyspace")
    assert info["db0"] == {"keys": 2, "expires": 1, "avg_ttl": 0}
    assert info["db3"] == {"keys": 1, "expires": 0, "avg_ttl": 0}
    assert "db1" not in info
    # The formatting alone.
    assert keyspace_fields({0: (5, 2), 2: (0, 0), 7: (1, 1)}) == [
        ("db0", "keys=5,expires=2,avg_ttl=0"), ("db7", "keys=1,expires=1,avg_ttl=0")]


def test_keyspace_section_is_exact_at_once_for_a_small_keyspace(server, r) -> None:
    # No waiting for the sweeper: up to EXACT_COUNT_LIMIT keys are counted on the spot.
    r.mset({f"k{i}": "v" for i in range(7)})
    r.set("t", "v", px=60_000)
    assert r.info("keyspace")["db0"] == {"keys": 8, "expires": 1, "avg_ttl": 0}
    r.delete("k0")
    assert r.info("keyspace")["db0"]["keys"] == 7 == r.dbsize()


def test_keyspace_section_of_a_large_keyspace_is_exact_at_once(server, r) -> None:
    # Replaces the test of the sweeper-counted keyspace section: INFO and DBSIZE read the
    # count records every write batch keeps, so a large keyspace is exact at once too.
    with r.pipeline(transaction=False) as p:
        for i in range(0, 30_000, 1000):
            p.mset({f"k{j}": "v" for j in range(i, i + 1000)})
        p.execute()
    r.set("t", "v", px=60_000)
    assert r.info("keyspace")["db0"] == {"keys": 30_001, "expires": 1, "avg_ttl": 0}
    r.delete("k0", "t", "missing")
    assert r.info("keyspace")["db0"] == {"keys": 29_999, "expires": 0, "avg_ttl": 0}
    assert r.dbsize() == 29_999


def test_persistence_and_memory_sections_follow_the_server(server, r) -> None:
    assert server.server is not None
    server.call(lambda: setattr(server.server, "last_save_time", 1_700_000_000))
    server.call(lambda: setattr(server.server, "bgsave_in_progress", True))
    info = r.info("persistence")
    assert info["rdb_last_save_time"] == 1_700_000_000 and info["rdb_bgsave_in_progress"] == 1
    before = r.info("memory")["shaledb_memtable_bytes"]
    r.set("big", "x" * 10_000)
    memory = r.info("memory")
    assert memory["shaledb_memtable_bytes"] >= before + 10_000
    assert memory["used_memory_human"].endswith(("K", "M", "G"))
    engine = r.info("shaledb")
    assert engine["l0_tables"] == 0 and engine["wal_records"] >= 1 and engine["read_only"] == 0


# -- SLOWLOG --------------------------------------------------------------------------------


def test_slowlog_get_len_reset_help_and_entry_shape(server_factory) -> None:
    st = server_factory(slowlog_log_slower_than=0, slowlog_max_len=5)
    raw = RawClient(st.port)
    try:
        assert raw("CLIENT", "SETNAME", "logger") == b"OK"
        raw("SET", "k", "v")
        entries = raw("SLOWLOG", "GET")
        newest = entries[0]
        assert len(newest) == 6
        entry_id, ts, micros, argv, addr, name = newest
        assert argv == [b"SET", b"k", b"v"] and name == b"logger"
        assert isinstance(ts, int) and ts > 1_600_000_000 and micros >= 0
        assert addr.startswith(b"127.0.0.1:")
        assert entries[1][3] == [b"CLIENT", b"SETNAME", b"logger"]
        assert entries[1][0] == entry_id - 1
        for i in range(10):
            raw("ECHO", str(i))
        assert raw("SLOWLOG", "LEN") == 5  # slowlog_max_len
        got = raw("SLOWLOG", "GET", "2")
        assert [e[3] for e in got] == [[b"SLOWLOG", b"LEN"], [b"ECHO", b"9"]]
        assert len(raw("SLOWLOG", "GET", "-1")) == 5
        assert str(raw("SLOWLOG", "GET", "-2")) == (
            "ERR count should be greater than or equal to -1")
        assert "not an integer" in str(raw("SLOWLOG", "GET", "x"))
        assert "wrong number of arguments for 'slowlog|len'" in str(raw("SLOWLOG", "LEN", "1"))
        assert "unknown subcommand 'NOPE'" in str(raw("SLOWLOG", "NOPE"))
        assert raw("SLOWLOG", "HELP")[0].startswith(b"SLOWLOG <subcommand>")
        assert raw("SLOWLOG", "RESET") == b"OK"
        assert raw("SLOWLOG", "LEN") in (0, 1)  # the RESET itself may be logged after it
        next_id = raw("SLOWLOG", "GET")[0][0]
        assert next_id > entry_id  # ids keep growing across RESET
    finally:
        raw.close()


def test_slowlog_truncates_long_requests() -> None:
    argv = [b"MSET"] + [b"a%d" % i for i in range(39)] + [b"x" * 200]
    out = truncate(argv)
    assert len(out) == 32
    assert out[-1] == b"... (10 more arguments)"  # 41 arguments: 31 kept
    assert out[:31] == argv[:31]
    long_arg = truncate([b"SET", b"k", b"y" * 200])
    assert long_arg[2] == b"y" * 128 + b"... (72 more bytes)"


def test_slowlog_truncation_over_the_wire(server_factory) -> None:
    st = server_factory(slowlog_log_slower_than=0)
    r = st.client(single_connection_client=True)
    r.execute_command("MSET", *[x for i in range(20) for x in (f"k{i}", "v" * 300)])
    entry = r.slowlog_get(1)[0]
    # 41 arguments: 31 kept, then a marker for the 10 left out.
    assert entry["command"].endswith(b" ... (10 more arguments)")
    assert entry["command"].startswith(b"MSET k0 ")
    assert b"v" * 128 + b"... (172 more bytes)" in entry["command"]
    r.close()


def test_slowlog_threshold_is_read_at_each_command(server_factory) -> None:
    st = server_factory(slowlog_log_slower_than=-1)
    r = st.client(single_connection_client=True)
    for _ in range(5):
        r.set("k", "v")
    assert r.slowlog_len() == 0  # -1 disables the slow log
    # CONFIG SET replaces the frozen config; the next command sees it.
    assert r.config_set("slowlog-log-slower-than", 0)
    r.set("k", "w")
    assert r.slowlog_get(1)[0]["command"] == b"SET k w"
    assert r.config_set("slowlog-max-len", 0)
    r.get("k")
    assert r.slowlog_len() == 0
    r.close()


def test_slowlog_never_holds_passwords(server_factory) -> None:
    st = server_factory(slowlog_log_slower_than=0, requirepass="hunter2-top-secret")
    r = st.client(single_connection_client=True, password="hunter2-top-secret")
    r.ping()
    r.execute_command("AUTH", "default", "hunter2-top-secret")
    with pytest.raises(redis.AuthenticationError):
        r.execute_command("AUTH", "wrong-guess-secret")
    r.execute_command("HELLO", "2", "AUTH", "default", "hunter2-top-secret", "SETNAME", "me")
    r.execute_command("ACL", "SETUSER", "bob", "on", ">bobs-secret-pw", "~*", "+@all")
    entries = r.slowlog_get(-1)
    text = b"\n".join(e["command"] for e in entries)
    assert b"secret" not in text and b"hunter2" not in text
    assert b"AUTH (redacted) (redacted)" in text
    assert b"AUTH (redacted)" in text
    assert b"HELLO 2 AUTH (redacted) (redacted) SETNAME me" in text
    assert b"ACL SETUSER (redacted) (redacted) (redacted) (redacted) (redacted)" in text
    r.close()


def test_redaction_rules() -> None:
    assert redact([b"GET", b"k"]) == [b"GET", b"k"]
    assert redact([b"config", b"set", b"maxclients", b"5", b"requirepass", b"pw"]) == [
        b"config", b"set", b"maxclients", b"5", b"requirepass", b"(redacted)"]
    assert redact([b"MIGRATE", b"h", b"1", b"k", b"0", b"5", b"AUTH2", b"u", b"p"])[-2:] == [
        b"(redacted)", b"(redacted)"]


def test_observability_settings_are_validated() -> None:
    with pytest.raises(InvalidArgument, match="slowlog_log_slower_than"):
        ServerConfig(slowlog_log_slower_than=-2)
    with pytest.raises(InvalidArgument, match="slowlog_max_len"):
        ServerConfig(slowlog_max_len=100_001)
    with pytest.raises(InvalidArgument, match="log_format"):
        ServerConfig(log_format="xml")
    with pytest.raises(InvalidArgument, match="log_level"):
        ServerConfig(log_level="loud")
    with pytest.raises(InvalidArgument, match="metrics_port"):
        ServerConfig(metrics_port=70_000)
    with pytest.raises(InvalidArgument, match="metrics_port"):
        ServerConfig.from_mapping({"metrics_port": "sometimes"})
    with pytest.raises(InvalidArgument, match="metrics_header_timeout"):
        ServerConfig(metrics_header_timeout=0)
    for off in ("off", -1, "-1", "OFF"):
        assert ServerConfig.from_mapping({"metrics-port": off}).metrics_port is None
    assert ServerConfig.from_mapping({"metrics_port": "0"}).metrics_port == 0
    assert ServerConfig().metrics_port == 9380 and ServerConfig().slowlog_max_len == 128
    assert ServerConfig().slowlog_log_slower_than == 10_000
