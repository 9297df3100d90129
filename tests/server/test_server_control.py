"""Control commands: CONFIG, CLIENT LIST/INFO/KILL, SAVE/BGSAVE/LASTSAVE, SHUTDOWN, and the
``shaledb cli`` wrapper of redis-cli. Real servers on loopback, redis-py and raw sockets."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import shaledb
from shaledb.cli import REDISCLI_AUTH, redis_cli_command
from shaledb.server import ServerConfig

from ._server_support import (
    HOST,
    RawClient,
    free_port,
    raw_connect,
    read_until_closed,
    redis_cli,
    run_server_process,
    wait_until,
)


def _wait(cond: Callable[[], Any], timeout: float = 10.0) -> None:
    wait_until(cond, timeout, "condition", 0.01)


# -- CONFIG ----------------------------------------------------------------------------------

def test_config_get_patterns_and_fixed_values(server) -> None:
    r = server.client(decode_responses=True)
    assert r.config_get("maxclients") == {"maxclients": "10000"}
    assert r.config_get("MAXCLIENTS") == {"maxclients": "10000"}  # case-insensitive
    got = r.config_get("*max*")
    assert {"maxclients", "proto-max-bulk-len", "krange-max-limit"} <= set(got)
    assert all("max" in name for name in got)
    both = r.execute_command("CONFIG", "GET", "timeout", "appendfsync")
    assert both == {"timeout": "0", "appendfsync": "everysec"}  # 0 as in Redis (issue 10)
    fixed = r.config_get("save")
    fixed.update(r.config_get("appendonly"))
    fixed.update(r.config_get("databases"))
    assert fixed == {"save": "", "appendonly": "yes", "databases": "16"}
    assert r.config_get("port") == {"port": str(server.port)}  # the port really listened on
    assert r.config_get("dir")["dir"] == os.path.abspath(server.config.dir)
    assert r.config_get("client-output-buffer-limit") == {
        "client-output-buffer-limit":
            f"normal {256 * 1024 * 1024} 0 0 pubsub {32 * 1024 * 1024} {8 * 1024 * 1024} 60"}
    assert r.config_get("no-such-thing") == {}
    # RESP3 gets a map, RESP2 a flat array (redis-py turns both into a dict).
    r3 = server.client(protocol=3, decode_responses=True)
    assert r3.config_get("maxclients") == {"maxclients": "10000"}
    raw = RawClient(server.port)
    assert raw("CONFIG", "GET", "maxclients") == [b"maxclients", b"10000"]
    raw.close()


def test_config_set_applies_and_is_atomic(server) -> None:
    r = server.client(decode_responses=True)
    assert r.config_set("maxclients", 500) is True
    assert r.config_get("maxclients") == {"maxclients": "500"}
    assert server.call(lambda: server.server.config.maxclients) == 500
    # Several pairs: all or nothing (the bad timeout leaves maxclients alone).
    with pytest.raises(redis.ResponseError, match=r"CONFIG SET failed \(possibly related to "
                                                  r"argument 'timeout'\)"):
        r.execute_command("CONFIG", "SET", "maxclients", "42", "timeout", "soon")
    assert r.config_get("maxclients") == {"maxclients": "500"}
    # A rule between settings is checked on the whole new config.
    with pytest.raises(redis.ResponseError, match="client_query_buffer_limit must exceed"):
        r.execute_command("CONFIG", "SET", "maxclients", "42",
                          "client-query-buffer-limit", "1mb", "proto-max-bulk-len", "2mb")
    assert r.config_get("maxclients") == {"maxclients": "500"}
    assert r.execute_command("CONFIG", "SET", "maxclients", "42", "max-multi-bytes", "1mb",
                             "protected-mode", "no") == "OK"
    assert r.config_get("maxclients") == {"maxclients": "42"}
    assert r.config_get("max-multi-bytes") == {"max-multi-bytes": str(1 << 20)}
    assert r.config_get("protected-mode") == {"protected-mode": "no"}
    with pytest.raises(redis.ResponseError, match="duplicate parameter"):
        r.execute_command("CONFIG", "SET", "maxclients", "1", "MAXCLIENTS", "2")
    with pytest.raises(redis.ResponseError, match="argument must be between 1 and"):
        r.config_set("maxclients", 0)


def test_config_set_errors_match_redis(server) -> None:
    raw = RawClient(server.port)
    for name, value in (("port", "7000"), ("bind", "0.0.0.0"), ("dir", "/tmp"),
                        ("databases", "32"), ("save", "60 1"), ("tls-port", "1")):
        assert str(raw("CONFIG", "SET", name, value)) == (
            f"ERR CONFIG SET failed (possibly related to argument '{name}') - can't set "
            f"immutable config")
    assert str(raw("CONFIG", "SET", "nope", "1")) == (
        "ERR Unknown option or number of arguments for CONFIG SET - 'nope'")
    assert "wrong number of arguments for 'config|set'" in str(
        raw("CONFIG", "SET", "maxclients"))
    assert "Try CONFIG HELP" in str(raw("CONFIG", "FROB"))
    assert "CONFIG REWRITE is not supported" in str(raw("CONFIG", "REWRITE"))
    helptext = raw("CONFIG", "HELP")
    assert helptext[0].startswith(b"CONFIG <subcommand>")
    raw.close()


def test_config_set_timeout_and_maxclients_take_effect(server) -> None:
    r = server.client(single_connection_client=True)
    r.config_set("timeout", 1)
    idle = raw_connect(server.port)
    idle.settimeout(10)
    t0 = time.monotonic()
    assert read_until_closed(idle) == b""  # closed by the idle sweeper
    assert time.monotonic() - t0 < 9
    idle.close()
    r.close()  # idle too: closed as well
    r = server.client(single_connection_client=True)
    r.config_set("timeout", 0)
    r.config_set("maxclients", 2)
    second = raw_connect(server.port)
    second.sendall(b"PING\r\n")
    assert second.recv(100) == b"+PONG\r\n"
    third = raw_connect(server.port)
    assert read_until_closed(third) == b"-ERR max number of clients reached\r\n"
    for s in (second, third):
        s.close()


def test_config_set_proto_max_bulk_len_applies_to_open_connections(server) -> None:
    raw = RawClient(server.port)
    assert raw("SET", "k", b"x" * 5000) == b"OK"
    admin = server.client()
    admin.config_set("proto-max-bulk-len", "4kb")
    raw.send("SET", "k", b"x" * 5000)
    with pytest.raises(ConnectionError):  # the protocol error, then the close
        while True:
            reply = raw.read()
            assert "invalid bulk length" in str(reply)
    raw.close()


def test_config_requirepass_is_settable_and_never_shown(server) -> None:
    r = server.client(decode_responses=True)
    assert r.config_get("requirepass") == {"requirepass": ""}
    r.config_set("requirepass", "n3w-secret")
    shown = r.config_get("requirepass")["requirepass"]
    assert "n3w-secret" not in shown
    assert shown == "#" + hashlib.sha256(b"n3w-secret").hexdigest()  # as ACL GETUSER shows it
    assert server.call(lambda: server.server.config.requirepass) is None  # no clear text kept
    assert r.ping()  # connections already logged in stay logged in, as in Redis
    with pytest.raises(redis.AuthenticationError):
        server.client().get("k")
    assert server.client(password="n3w-secret").ping()
    r.config_set("requirepass", "")
    assert server.client().ping()


def test_config_appendfsync_switches_live(server) -> None:
    r = server.client()
    srv = server.server
    assert server.call(lambda: srv.sync_group) is None
    r.config_set("appendfsync", "always")
    group = server.call(lambda: srv.sync_group)
    assert group is not None
    for i in range(20):
        assert r.set(f"k{i}", i)
    assert group.syncs >= 1  # replies waited for fsyncs
    r.config_set("appendfsync", "no")
    assert server.call(lambda: srv.sync_group) is None
    assert r.set("after", 1)
    r.config_set("appendfsync", "everysec")
    assert r.config_get("appendfsync") in ({b"appendfsync": b"everysec"},
                                           {"appendfsync": "everysec"})
    with pytest.raises(redis.ResponseError, match="must be one of the following"):
        r.config_set("appendfsync", "sometimes")


def test_config_appendfsync_everysec_after_no_runs_a_sync_task(server_factory) -> None:
    st = server_factory(appendfsync="no")
    r = st.client()
    r.set("a", 1)
    before = st.call(lambda: st.server.db.stats()["wal_syncs"])
    r.config_set("appendfsync", "everysec")  # the engine was opened without a sync thread
    r.set("b", 2)
    _wait(lambda: st.call(lambda: st.server.db.stats()["wal_syncs"]) > before, timeout=5)


def test_config_resetstat_and_admin_category(server) -> None:
    r = server.client(decode_responses=True)
    r.ping()
    assert server.call(lambda: server.server.stats["total_commands_processed"]) > 0
    r.get("missing")
    assert r.info("stats")["keyspace_misses"] >= 1
    assert r.config_resetstat() is True
    # CONFIG RESETSTAT itself is counted after the reset.
    assert server.call(lambda: server.server.stats["total_commands_processed"]) <= 1
    assert r.info("stats")["keyspace_misses"] == 0
    assert "cmdstat_get" not in r.info("commandstats")
    r.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@admin")
    app = server.client(username="app", password="pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.config_get("maxclients")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.config_set("maxclients", 1)
    assert app.execute_command("CONFIG", "HELP")  # config|help is not @admin, as in Redis


# -- CLIENT ----------------------------------------------------------------------------------

FIELDS = ["id", "addr", "laddr", "fd", "name", "age", "idle", "flags", "db", "sub", "psub",
          "ssub", "multi", "qbuf", "qbuf-free", "argv-mem", "multi-mem", "obl", "oll", "omem",
          "tot-mem", "events", "cmd", "user", "redir", "resp", "lib-name", "lib-ver"]


def test_client_list_fields_parse_with_redis_py(server) -> None:
    r = server.client(decode_responses=True, single_connection_client=True)
    r.client_setname("main")
    other = RawClient(server.port)
    other("CLIENT", "SETNAME", "worker")
    other("SELECT", "3")
    other("MULTI")
    other("SET", "a", "1")
    other("SET", "b", "2")
    clients = {c["name"]: c for c in r.client_list()}
    assert set(clients) == {"main", "worker"}
    assert list(clients["main"]) == FIELDS
    main, worker = clients["main"], clients["worker"]
    assert main["cmd"] == "client|list" and main["multi"] == "-1" and main["flags"] == "N"
    assert main["lib-name"] == "redis-py" and main["user"] == "default"
    assert worker["db"] == "3" and worker["multi"] == "2" and worker["flags"] == "x"
    assert worker["cmd"] == "set" and worker["resp"] == "2"
    assert int(worker["multi-mem"]) > 0
    assert worker["laddr"] == f"{HOST}:{server.port}"
    assert int(worker["fd"]) > 0 and worker["addr"].startswith(HOST + ":")
    # TYPE and ID filters.
    assert len(r.client_list(_type="normal")) == 2
    assert r.client_list(_type="pubsub") == []
    only = r.client_list(client_id=[worker["id"]])
    assert [c["name"] for c in only] == ["worker"]
    with pytest.raises(redis.ResponseError, match="Invalid client ID"):
        r.execute_command("CLIENT", "LIST", "ID", "x")
    with pytest.raises(redis.ResponseError, match="Unknown client type"):
        r.execute_command("CLIENT", "LIST", "TYPE", "robots")
    info = r.client_info()
    assert info["name"] == "main" and info["cmd"] == "client|info"
    other.close()


def test_client_list_shows_query_and_output_buffers(server) -> None:
    r = server.client(single_connection_client=True)
    r.set("big", b"v" * (16 << 20))
    partial = raw_connect(server.port)
    partial.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n" + b"x" * 50_000)
    reader = raw_connect(server.port)
    reader.sendall(b"CLIENT SETNAME slowreader\r\n" + b"GET big\r\n" * 4)  # never read

    def fields(name: str) -> dict[str, str]:
        for c in r.client_list():
            if c.get("name") == name:
                return c
        return {}  # its CLIENT SETNAME has not run yet

    def partial_qbuf() -> bool:
        return any(int(c["qbuf"]) >= 50_000 for c in r.client_list())

    _wait(partial_qbuf)
    _wait(lambda: int(fields("slowreader").get("omem", 0)) > 0)
    slow = fields("slowreader")
    assert "w" in slow["events"]
    assert int(slow["tot-mem"]) >= int(slow["omem"])
    for s in (partial, reader):
        s.close()


def test_client_kill_forms_and_filters(server) -> None:
    admin = server.client(decode_responses=True, single_connection_client=True)
    admin.client_setname("admin")

    def named(name: str) -> RawClient:
        c = RawClient(server.port)
        assert c("CLIENT", "SETNAME", name) == b"OK"
        return c

    def names() -> set[str]:
        return {c["name"] for c in admin.client_list()}

    a, b, c, d = named("a"), named("b"), named("c"), named("d")
    listing = {x["name"]: x for x in admin.client_list()}
    # The old form: by address.
    assert admin.client_kill(listing["a"]["addr"]) is True
    with pytest.raises(ConnectionError):
        a("PING")
    with pytest.raises(redis.ResponseError, match="No such client"):
        admin.client_kill("1.2.3.4:5")
    # Filters (redis-py's client_kill_filter).
    assert admin.client_kill_filter(_id=listing["b"]["id"]) == 1
    assert admin.client_kill_filter(addr=listing["c"]["addr"]) == 1
    admin.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "~*", "+@all")
    bob = RawClient(server.port)
    assert bob("AUTH", "bob", "pw") == b"OK"
    assert bob("CLIENT", "SETNAME", "bob") == b"OK"
    _wait(lambda: names() == {"admin", "d", "bob"})
    assert admin.client_kill_filter(user="bob") == 1
    with pytest.raises(redis.ResponseError, match="No such user"):
        admin.client_kill_filter(user="nobody")
    with pytest.raises(redis.ResponseError, match="client-id should be greater than 0"):
        admin.execute_command("CLIENT", "KILL", "ID", "0")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        admin.execute_command("CLIENT", "KILL", "ID", "1", "SKIPME")
    # LADDR matches every client of this listener; SKIPME yes (the default) spares the
    # caller.
    assert admin.client_kill_filter(laddr=f"{HOST}:{server.port}") == 1  # d
    _wait(lambda: names() == {"admin"})
    e = named("e")
    time.sleep(1.1)
    f = named("f")
    assert admin.client_kill_filter(maxage=1) == 1  # e is at least 1 s old, f is not
    _wait(lambda: names() == {"admin", "f"})
    # SKIPME no: the caller is killed too, after its reply.
    assert admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no") == 2
    with pytest.raises(redis.ConnectionError):
        admin.ping()
    for x in (b, c, d, e, f, bob):
        x.close()


def test_client_small_subcommands(server) -> None:
    raw = RawClient(server.port)
    assert raw("CLIENT", "NO-EVICT", "on") == b"OK"
    assert raw("CLIENT", "NO-TOUCH", "off") == b"OK"
    assert "syntax error" in str(raw("CLIENT", "NO-EVICT", "maybe"))
    assert "unknown subcommand 'PAUSE'" in str(raw("CLIENT", "PAUSE", "100"))
    assert raw("CLIENT", "HELP")[0].startswith(b"CLIENT <subcommand>")
    assert raw("CLIENT", "ID") > 0
    r = server.client()
    r.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@admin")
    app = server.client(username="app", password="pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.client_list()
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.client_kill_filter(_id=1)
    assert app.client_info()["user"] == "app"  # client|info is not @admin
    raw.close()


# -- SAVE / BGSAVE / LASTSAVE --------------------------------------------------------------

def test_save_checkpoints_and_updates_lastsave(server) -> None:
    r = server.client()
    srv = server.server
    first = r.lastsave()
    flushes = server.call(lambda: srv.db.stats()["flushes"])
    raw = RawClient(server.port)
    raw.send("SET", "a", "1")
    raw.send("SAVE")
    raw.send("GET", "a")  # runs after SAVE's reply, in order
    assert [raw.read() for _ in range(3)] == [b"OK", b"OK", b"1"]
    stats = server.call(lambda: srv.db.stats())
    assert stats["flushes"] == flushes + 1 and stats["memtable_entries"] == 0
    assert r.lastsave() >= first
    assert server.call(lambda: srv.last_save_time) == int(r.lastsave().timestamp())
    assert "not allowed inside a transaction" in str(raw("MULTI") and raw("SAVE"))
    assert "EXECABORT" in str(raw("EXEC"))
    raw.close()


def test_bgsave_runs_in_background_once_at_a_time(server_factory, tmp_path) -> None:
    # BGSAVE takes a backup (docs/operations.md): it needs a repository.
    server = server_factory(backup_repo=str(tmp_path / "repo"))
    srv = server.server
    raw = RawClient(server.port)
    raw("SET", "k", "v")
    # Pipelined: the second BGSAVE is read before the first can finish.
    for args in (("BGSAVE",), ("BGSAVE",), ("BGSAVE", "SCHEDULE"), ("SAVE",)):
        raw.send(*args)
    replies = [raw.read() for _ in range(4)]
    assert replies[0] == b"Background saving started"
    assert str(replies[1]) == "ERR Background save already in progress"
    assert replies[2] == b"Background saving scheduled"
    assert str(replies[3]) == "ERR Background save already in progress"
    _wait(lambda: server.call(lambda: (not srv.bgsave_in_progress
                                       and srv.backups.status().results["ok"] == 2)))
    assert "syntax error" in str(raw("BGSAVE", "NOW"))
    raw.close()


# -- SHUTDOWN ---------------------------------------------------------------------------------

def test_shutdown_save_from_a_client_exits_zero_and_keeps_writes(tmp_path) -> None:
    data = tmp_path / "db"
    port = free_port()
    proc = run_server_process(data, port)
    try:
        r = redis.Redis(host=HOST, port=port, socket_timeout=10)
        for i in range(200):
            r.set(f"k{i}", i)
        r.execute_command("ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@admin")
        app = redis.Redis(host=HOST, port=port, username="app", password="pw")
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.shutdown()
        with pytest.raises(redis.ResponseError, match="No shutdown in progress"):
            r.execute_command("SHUTDOWN", "ABORT")
        with pytest.raises(redis.ResponseError, match="syntax error"):
            r.execute_command("SHUTDOWN", "SAVE", "NOSAVE")
        with pytest.raises(redis.ConnectionError):
            r.execute_command("SHUTDOWN", "SAVE")  # no reply: the connection closes
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with shaledb.open(str(data)) as db:
        # SAVE flushed the memtable: the keys are in a table, the WAL replay is empty.
        assert db.stats()["total_table_bytes"] > 0
    proc2 = run_server_process(data, port)
    try:
        r = redis.Redis(host=HOST, port=port, socket_timeout=10)
        assert [r.get(f"k{i}") for i in range(200)] == [b"%d" % i for i in range(200)]
        r.shutdown(nosave=True)  # redis-py's helper: no reply expected
        assert proc2.wait(20) == 0
    finally:
        if proc2.poll() is None:
            proc2.kill()
            proc2.wait()


def test_shutdown_in_process_server_stops_it(server_factory) -> None:
    st = server_factory()
    raw = RawClient(st.port)
    raw("SET", "k", "v")
    raw.send("SHUTDOWN")
    with pytest.raises(ConnectionError):
        raw.read()
    assert st.server is not None
    _wait(lambda: st.server._stopped.is_set())
    raw.close()


def test_a_second_shutdown_waits_for_the_first_and_returns(tmp_path) -> None:
    """SHUTDOWN from a client and a second stop (SIGTERM, the test fixture) both ran the
    whole shutdown: the second one's run_in_executor met the executor the first had shut
    down (RuntimeError, seen as a teardown error of test_shutdown_in_process_server_stops_it).
    Now later calls wait for the first to finish, concurrent or after it."""
    import asyncio

    from shaledb.server import Server

    async def main() -> None:
        server = Server(ServerConfig(host="127.0.0.1", port=0, dir=str(tmp_path / "db"),
                                     metrics_port=None))
        await server.start()
        await asyncio.gather(server.shutdown(), server.shutdown())
        await server.shutdown()
        assert server._stopped.is_set()

    asyncio.run(main())


# -- shaledb cli ------------------------------------------------------------------------------

def _shaledb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shaledb.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_cli_passes_the_password_in_the_environment_only() -> None:
    config = ServerConfig(port=7001, requirepass="pw-in-env", host="0.0.0.0")
    argv, env = redis_cli_command(config, "/usr/bin/redis-cli", tls=False, user=None,
                                  cacert=None, cert=None, key=None, args=("get", "k"))
    assert argv == ["/usr/bin/redis-cli", "-h", "127.0.0.1", "-p", "7001", "get", "k"]
    assert env[REDISCLI_AUTH] == "pw-in-env"
    assert not any("pw-in-env" in a for a in argv)


def test_cli_runs_redis_cli_against_the_server(server_factory, tmp_path) -> None:
    redis_cli()  # skips when redis-cli is missing
    st = server_factory(requirepass="s3cret")
    st.client(password="s3cret").set("greeting", "hello")
    env = {**os.environ, "SHALEDB_REQUIREPASS": "s3cret", "PYTHONPATH": os.pathsep.join(
        p for p in (os.path.abspath("src"), os.environ.get("PYTHONPATH")) if p)}
    done = _shaledb("cli", "--port", str(st.port), "get", "greeting", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello"
    config = tmp_path / "shaledb.toml"
    config.write_text(f'[server]\nport = {st.port}\nrequirepass = "s3cret"\n')
    env.pop("SHALEDB_REQUIREPASS")
    done = _shaledb("cli", "--config", str(config), "ping", env=env)
    assert done.stdout.strip() == "PONG", done.stderr


def test_cli_without_redis_cli_says_what_to_install(tmp_path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no redis-cli
    done = _shaledb("cli", "ping", env=env)
    assert done.returncode == 1
    assert "redis-cli is not installed" in done.stderr and "redis-tools" in done.stderr
