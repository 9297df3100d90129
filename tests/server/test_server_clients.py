"""Real clients other than redis-py's sync API: redis-cli (Debian redis-tools) and
redis-py's asyncio client."""

from __future__ import annotations

import asyncio
import subprocess

import redis.asyncio

from ._server_support import HOST, redis_cli


def cli(port: int, *args: str, stdin: bytes | None = None, raw: bool = True) -> str:
    cmd = [redis_cli(), "-h", HOST, "-p", str(port)]
    cmd.append("--raw" if raw else "--no-raw")
    proc = subprocess.run([*cmd, *args], input=stdin, capture_output=True, timeout=30,
                          check=True)
    return proc.stdout.decode()


def test_redis_cli_basic_commands(server) -> None:
    p = server.port
    assert cli(p, "PING") == "PONG\n"
    assert cli(p, "SET", "greeting", "hello world") == "OK\n"
    assert cli(p, "GET", "greeting") == "hello world\n"
    assert cli(p, "INCRBY", "n", "41") == "41\n"
    assert cli(p, "MGET", "greeting", "nope", raw=False) == \
        '1) "hello world"\n2) (nil)\n'
    assert cli(p, "NOSUCH", "x", raw=False).startswith(
        "(error) ERR unknown command 'NOSUCH', with args beginning with: 'x'")
    assert cli(p, "-n", "3", "SET", "in3", "x") == "OK\n"
    assert cli(p, "-n", "3", "DBSIZE") == "1\n"
    assert cli(p, "DBSIZE") == "2\n"


def test_redis_cli_resp3_and_hello(server) -> None:
    out = cli(server.port, "-3", "HELLO", "3", raw=False)
    assert '"proto"' in out and "(integer) 3" in out
    assert cli(server.port, "-3", "GET", "missing", raw=False) == "(nil)\n"


def test_redis_cli_krange_and_scan(server) -> None:
    p = server.port
    for k in ("b", "a", "c"):
        cli(p, "SET", f"key:{k}", k.upper())
    assert cli(p, "KRANGE", "[key:a", "[key:b") == "key:a\nA\nkey:b\nB\n"
    assert cli(p, "KRANGE", "-", "+", "LIMIT", "1", "REV") == "key:c\nC\n"
    assert sorted(cli(p, "--scan", "--pattern", "key:*").split()) == [
        "key:a", "key:b", "key:c"]


def test_redis_cli_stdin_and_pipe_mode(server) -> None:
    p = server.port
    assert cli(p, stdin=b"SET a 1\nINCR a\nGET a\n") == "OK\n2\n2\n"
    frames = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\nk%d\r\n$1\r\nv\r\n" % (len(b"k%d" % i), i)
                      for i in range(5000))
    out = cli(p, "--pipe", stdin=frames)
    assert "errors: 0, replies: 5000" in out
    assert cli(p, "DBSIZE") == "5001\n"


async def _asyncio_work(port: int) -> None:
    r = redis.asyncio.Redis(host=HOST, port=port)
    try:
        assert await r.ping() is True
        await r.set("a", "1")
        assert await r.get("a") == b"1"
        results = await asyncio.gather(*(r.incr("counter") for _ in range(50)))
        assert sorted(results) == list(range(1, 51))
        async with r.pipeline(transaction=True) as pipe:
            pipe.set("x", "1").incr("x").get("x")
            assert await pipe.execute() == [True, 2, b"2"]
        await r.set("t", "v", px=100_000)
        assert 99_000 < await r.pttl("t") <= 100_000
        keys = [k async for k in r.scan_iter(match="*")]
        assert sorted(keys) == [b"a", b"counter", b"t", b"x"]
    finally:
        await r.aclose()
    r3 = redis.asyncio.Redis(host=HOST, port=port, protocol=3)
    try:
        assert await r3.get("a") == b"1"
        assert await r3.mget("a", "zz") == [b"1", None]
    finally:
        await r3.aclose()


def test_redis_py_asyncio_client(server) -> None:
    asyncio.run(_asyncio_work(server.port))
