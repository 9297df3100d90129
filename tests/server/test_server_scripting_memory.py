"""A script at the Lua state's memory limit (lua-max-memory) while it calls back into Python.

lupa converts values between Python and Lua in C code that holds the GIL outside any
protected call: an allocation refused there by the memory limit longjmps past lupa's GIL
release, and the next GIL take on the Lua thread waits for itself, with every other thread
waiting behind it (the hang of Redis' TCL scripting group). The server runs in a subprocess
here: a deadlocked in-process server would hang pytest itself."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ._server_support import HOST, free_port, run_server_process

#: Fill the Lua state up to its limit (the pcall keeps the script going), then call redis
#: many times: every reply is converted into the full state.
FILL_THEN_CALL = ("local t = {} "
                  "pcall(function() for i = 1, 1e8 do t[i] = {i} end end) "
                  "for i = 1, 20000 do redis.call(ARGV[1], ARGV[2]) end "
                  "return #t")


@pytest.fixture
def proc_server(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = run_server_process(tmp_path / "db", port)
    try:
        yield port
    finally:
        proc.kill()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


@pytest.mark.parametrize("command", [("ping", "x"), ("set", "k"), ("get", "k"),
                                     ("echo", "x")])
def test_redis_calls_at_the_memory_limit_do_not_hang(proc_server: int,
                                                     command: tuple[str, str]) -> None:
    c = redis.Redis(host=HOST, port=proc_server, socket_timeout=30)
    c.config_set("lua-max-memory", 2 << 20)
    c.set("k", "v" * 100)
    args = command if command[0] != "set" else ("set", "k")
    body = FILL_THEN_CALL if args[0] != "set" else FILL_THEN_CALL.replace(
        "redis.call(ARGV[1], ARGV[2])", "redis.call(ARGV[1], ARGV[2], 'v')")
    for _ in range(3):
        try:
            c.eval(body, 0, *args)
        except redis.ResponseError as exc:  # the script may fail; the server must answer
            assert "not enough memory" in str(exc)
        assert c.ping()
    other = redis.Redis(host=HOST, port=proc_server, socket_timeout=10)
    assert other.ping()
    # The state is usable after: its garbage is collected, later scripts run.
    assert c.eval("return redis.call('echo', 'after')", 0) == b"after"


def test_python_helpers_at_the_memory_limit_do_not_hang(proc_server: int) -> None:
    """cjson, cmsgpack, struct and redis.sha1hex return values into the full state too."""
    c = redis.Redis(host=HOST, port=proc_server, socket_timeout=30)
    c.config_set("lua-max-memory", 2 << 20)
    body = ("local t = {} "
            "pcall(function() for i = 1, 1e8 do t[i] = {i} end end) "
            "for i = 1, 5000 do cjson.encode({1, 2}) cjson.decode('[1,2,{\"a\":1}]') "
            "cmsgpack.unpack(cmsgpack.pack({1, 2})) struct.pack('>I', i) "
            "redis.sha1hex('x') pcall(redis.call, 'nosuchcommand') end "
            "return #t")
    for _ in range(2):
        try:
            c.eval(body, 0)
        except redis.ResponseError as exc:
            assert "not enough memory" in str(exc)
        assert c.ping()
    assert c.eval("return cjson.encode({1})", 0) == b"[1]"
