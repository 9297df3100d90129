"""Helpers of the server tests: the in-process server thread, subprocess servers, raw
sockets, redis-cli. All traffic stays on 127.0.0.1."""


from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import shaledb
from shaledb.server import Server, ServerConfig
from shaledb.server.admin.config import DEFAULT_METRICS_PORT

HOST = "127.0.0.1"


class ServerThread:
    """A server running on its own event loop in a daemon thread."""

    def __init__(self, config: ServerConfig, db: shaledb.DB | None = None) -> None:
        if config.metrics_port == DEFAULT_METRICS_PORT:
            # Tests run servers side by side: none may take the fixed metrics port. A test
            # of the endpoint asks for port 0.
            config = dataclasses.replace(config, metrics_port=None)
        self.config = config
        self.db = db
        self.server: Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("server did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        async def main() -> None:
            try:
                self.server = Server(self.config, self.db)
                await self.server.start()
                self.loop = asyncio.get_running_loop()
            except BaseException as exc:  # reported to the starting thread
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self.server.wait_stopped()

        asyncio.run(main())

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client of this server."""
        kwargs.setdefault("socket_timeout", 10)
        # No silent retries: a test must see the server's first answer.
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def stop(self) -> None:
        if self.server is not None and self.loop is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(30)
        self._thread.join(30)


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
               interval: float = 0.02) -> None:
    """Poll ``cond`` every ``interval`` seconds until it is true; AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None,
                  timeout: float = 30.0) -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def run_server_process(data_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """``shaledb serve`` in a subprocess (with uvloop when installed), listening on ``port``.
    The metrics endpoint is off unless ``extra`` turns it on (the last flag wins)."""
    cmd = [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port", str(port),
           "--dir", str(data_dir), "--log-level", "warning", "--metrics-port", "off", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_port(port, proc)
    except BaseException:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"server failed: {err.decode(errors='replace')}") from None
    return proc


def redis_cli() -> str:
    """Path of redis-cli, or skip the test (scripts/ensure-redis-tools.sh installs it)."""
    path = shutil.which("redis-cli")
    if path is None:
        pytest.skip("redis-cli is not installed (Debian package redis-tools; `make test` "
                    "installs it when run as root)")
    return path


def raw_connect(port: int, timeout: float = 5.0) -> socket.socket:
    """A plain TCP connection to the server."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    return s


def read_until_closed(s: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while len(data) < limit:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_reply(s: socket.socket, expected: int) -> bytes:
    """Read until at least ``expected`` bytes arrived (or the peer closed)."""
    data = b""
    while len(data) < expected:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class RawClient:
    """A bare RESP client over one socket: sends requests, returns replies parsed by
    hiredis without any client-side interpretation (errors come back as values)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        import hiredis

        self.sock = raw_connect(port, timeout)
        self.reader = hiredis.Reader()

    def send(self, *args: bytes | str | int) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(parts))

    def read(self) -> Any:
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.reader.feed(chunk)

    def __call__(self, *args: bytes | str | int) -> Any:
        self.send(*args)
        return self.read()

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def redis_server(tmp_path: Path) -> Iterator[int]:
    """A real redis-server (7, no persistence, its own directory under ``tmp_path``) on a
    free loopback port, for comparisons: its port. Skips the test when it is not
    installed."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not installed (Debian package redis-server): the "
                    "reference run of this test needs it")
    port = free_port()
    home = tmp_path / f"redis-{port}"
    home.mkdir()
    proc = subprocess.Popen([path, "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--protected-mode", "yes", "--logfile",
                             "", "--dir", str(home)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def real_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A client of :func:`redis_server` (one connection, 60 s socket timeout)."""
    with redis_server(tmp_path) as port:
        client = redis.Redis(host=HOST, port=port, socket_timeout=60,
                             single_connection_client=True)
        try:
            yield client
        finally:
            client.close()


def keyevents(r: redis.Redis, run: Callable[[redis.Redis], Any]) -> list[tuple[str, str]]:
    """The keyspace events (``__keyevent@0__:<event>``, key) ``run(r)`` raises, in order
    (notify-keyspace-events KEA)."""
    r.config_set("notify-keyspace-events", "KEA")
    p = r.pubsub()
    p.psubscribe("__keyevent@0__:*")
    assert p.get_message(timeout=5)["type"] == "psubscribe"
    run(r)
    got = []
    while (m := p.get_message(timeout=1)) is not None:
        got.append((m["channel"].split(b":", 1)[1].decode(), m["data"].decode()))
    p.close()
    return got
