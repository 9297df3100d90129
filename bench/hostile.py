"""Hostile-client soak: one server on loopback under a mix of abusive clients, measured.

``python -m bench.hostile --target both --duration 300`` starts ``shaledb serve`` and then a
real ``redis-server`` (7.x) with the same limits (:class:`Limits`: maxclients 200, output
buffer limit 8 MiB, proto-max-bulk-len 4 MiB, a password, TLS, open files limit 1024), runs
the same mix against each for ``--duration`` seconds and prints a table (and JSON with
``--json``). ``tests/server/test_server_hostile.py`` runs it against ``shaledb serve`` with
assertions (``make soak`` for minutes, ``make test`` for 20 s).

The mix, all at once (an attack process with asyncio, see :func:`attack_main`):

* reset storms: connect, send AUTH/SET/GET or a pipeline of big GETs, close with SO_LINGER 0
  (an RST) without reading; and connect-then-RST before the server can accept;
* slowloris: connections that send one byte of a request every 2 s, on the plain port, as
  an unfinished TLS ClientHello on the TLS port, and as an unfinished HTTP request head on
  the metrics port (ShaleDB's /metrics and /health);
* amplification: MGET of one 4 MiB value 200 times; pipelines of GETs of 4 MiB values that
  are never read; APPEND of small chunks to a value growing to proto-max-bulk-len; CLIENT
  SETNAME with a proto-max-bulk-len name; 4 MiB values written and deleted again (a big
  deleted value that key walks pass over);
* pattern bombs: KEYS and SCAN MATCH with ``*a*a*a...*b`` patterns and 1 MiB patterns;
* a SCAN-cursor flood (SCAN 0 COUNT 1 in bursts of pipelines);
* fd floods: cycles that open maxclients + 50 plain connections and 800 TCP connections to
  the TLS port that never start the handshake, hold them 4 s, and close them;
* unauthenticated oversized requests: 11 arguments, a 20 KiB argument (both complete, in
  one write) and an announced 1 MiB argument, each of which must be refused with
  ``-ERR Protocol error: unauthenticated ...`` and a closed connection.

Meanwhile the driver's process measures (threads, see :func:`run_mix`): a PING every 50 ms on
a persistent connection and on a new connection (connect + AUTH + PING), GET /health every
200 ms (ShaleDB), a well-behaved client (SET/GET/INCR/MGET checked against its own model;
full SCANs paced like a slow consumer, which must see all of its keys), and the server's
VmRSS every 20 ms and VmHWM. At the end: the server still runs and a fresh client can write.

Safety on a shared machine: the server is killed (and the run fails) when its RSS passes
``--safety-rss`` (3 GiB) or its directory ``--safety-disk`` (8 GiB); every attack loop is
bounded in rate and stops at the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parent.parent


# -- configuration ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Limits:
    """The limits both servers get: small, so that memory bounds derived from them mean
    something (see :func:`rss_bound`)."""

    maxclients: int = 200
    output_limit: int = 8 * MiB  # client-output-buffer-limit (Redis: normal 8mb 0 0)
    proto_max_bulk_len: int = 4 * MiB
    query_limit: int = 8 * MiB  # client-query-buffer-limit
    timeout: int = 30  # idle clients closed after this many seconds
    memtable_size: int = 2 * MiB  # ShaleDB only: small, so the engine opens files often
    nofile: int = 1024  # RLIMIT_NOFILE of the server process
    appendfsync: str = "everysec"


@dataclasses.dataclass(frozen=True)
class Mix:
    """Sizes and rates of the hostile mix (defaults: the soak's)."""

    big_value: int = 4 * MiB  # the values amplified (at most proto_max_bulk_len)
    big_keys: int = 3
    mget_repeat: int = 200
    pipeline_gets: int = 64
    reset_rate: float = 60.0  # reset-storm connections per second
    slowloris: int = 30  # per listener
    metrics_slowloris: int = 24
    flood_extra: int = 50  # plain connections past maxclients
    tls_flood: int = 800  # TCP connections to the TLS port that never handshake
    flood_hold: float = 4.0
    flood_pause: float = 4.0
    append_chunk: int = 4 * KiB
    append_interval: float = 0.02
    pattern_len: int = 1 * MiB
    cursor_burst: int = 500
    cursor_interval: float = 0.15
    unauth_interval: float = 0.3
    good_keys: int = 2000
    walk_keys: int = 2000


#: The database of the big values the amplifiers read (and of the APPEND churn): key walks
#: of database 0 (the pattern bombs, the cursor flood, the well-behaved SCANs) never pass
#: over them, except the 4 MiB values written and deleted again there on purpose.
BIG_DB = 1
#: Attack connections of the mix that may hold big buffers at the same time: the MGET
#: amplifier, the unread GET pipeline, the APPEND writer, the SETNAME bomb, the big
#: write-and-delete churn, the pattern bomb and one reset-storm connection sending a
#: pipeline of big GETs. Each can hold at most a query buffer and an output buffer
#: (:func:`rss_bound`).
BIG_BUFFER_CONNECTIONS = 7
#: Memory allowed per connected client (protocol objects, transport, read buffers).
PER_CLIENT_BYTES = 64 * KiB
#: The engine's own memory past what it held at the baseline: its block cache (64 MiB by
#: default, may fill during the mix) plus two memtables (one being flushed).
ENGINE_BLOCK_CACHE = 64 * MiB


def rss_bound(baseline: int, limits: Limits) -> int:
    """Most resident memory a server that enforces ``limits`` may use under the mix:
    what it used after the warm-up, plus its engine filling its block cache and a second
    memtable, plus PER_CLIENT_BYTES for each of ``maxclients`` clients, plus, for each of
    the BIG_BUFFER_CONNECTIONS attack connections that can fill buffers at once, a full
    query buffer and a full output buffer, counted twice (a reply or request is copied
    once while it is built or parsed). ``maxclients`` x (query + output limit) would be
    1.6 GiB for 200 clients and prove nothing: only a few connections of the mix send or
    ask for big data, and every other one is bounded by its small requests."""
    engine = ENGINE_BLOCK_CACHE + 2 * limits.memtable_size
    clients = limits.maxclients * PER_CLIENT_BYTES
    buffers = BIG_BUFFER_CONNECTIONS * 2 * (limits.query_limit + limits.output_limit)
    return baseline + engine + clients + buffers


# -- servers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _make_cert(directory: Path) -> tuple[Path, Path] | None:
    """A self-signed certificate for 127.0.0.1 and its key, or None without
    ``cryptography`` (the mix then runs without TLS)."""
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile-soak")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@dataclasses.dataclass
class Target:
    """A running server of the mix."""

    kind: str  # "shaledb" or "redis"
    proc: subprocess.Popen[bytes]
    port: int
    tls_port: int | None
    metrics_port: int | None
    password: str
    data_dir: Path
    log_path: Path
    limits: Limits

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _limit_files(nofile: int) -> Any:
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return apply


def _wait_port(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def start_shaledb(workdir: Path, limits: Limits, tls: bool = True) -> Target:
    """``shaledb serve`` (this checkout, uvloop when installed) with ``limits``."""
    workdir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    port, metrics_port = free_port(), free_port()
    cert = _make_cert(workdir) if tls else None
    tls_port = free_port() if cert else None
    lines = ["[server]", f'host = "{HOST}"', f"port = {port}",
             f'dir = "{workdir / "db"}"', f'requirepass = "{password}"',
             f"maxclients = {limits.maxclients}", f"timeout = {limits.timeout}",
             f"proto-max-bulk-len = {limits.proto_max_bulk_len}",
             f"client-query-buffer-limit = {limits.query_limit}",
             f"client-output-buffer-limit = {limits.output_limit}",
             f"memtable-size = {limits.memtable_size}",
             f'appendfsync = "{limits.appendfsync}"', f'metrics-host = "{HOST}"',
             f"metrics-port = {metrics_port}", 'log-level = "warning"']
    if cert is not None:
        lines += [f"tls-port = {tls_port}", f'tls-cert-file = "{cert[0]}"',
                  f'tls-key-file = "{cert[1]}"', 'tls-auth-clients = "no"']
    config = workdir / "shaledb.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    log_path = workdir / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SHALEDB_REQUIREPASS", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shaledb.cli", "serve", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_limit_files(limits.nofile))
    _wait_port(port, proc, log_path)
    return Target("shaledb", proc, port, tls_port, metrics_port, password, workdir / "db",
                  log_path, limits)


def start_redis(workdir: Path, limits: Limits, tls: bool = True,
                binary: str | None = None) -> Target:
    """A real ``redis-server`` with the same limits, AOF on (the WAL's counterpart)."""
    path = binary or shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server not found: install the Debian package redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    port = free_port()
    cert = _make_cert(workdir) if tls else None
    tls_port = free_port() if cert else None
    data = workdir / "db"
    data.mkdir(exist_ok=True)
    log_path = workdir / "server.log"
    lines = [f"bind {HOST}", f"port {port}", "protected-mode yes", f"requirepass {password}",
             f"maxclients {limits.maxclients}", f"timeout {limits.timeout}",
             f"proto-max-bulk-len {limits.proto_max_bulk_len}",
             f"client-query-buffer-limit {limits.query_limit}",
             f"client-output-buffer-limit normal {limits.output_limit} 0 0",
             "appendonly yes", f"appendfsync {limits.appendfsync}", 'save ""',
             "auto-aof-rewrite-percentage 0", f"dir {data}", f"logfile {log_path}",
             "daemonize no", "loglevel warning"]
    if cert is not None:
        lines += [f"tls-port {tls_port}", f"tls-cert-file {cert[0]}",
                  f"tls-key-file {cert[1]}", f"tls-ca-cert-file {cert[0]}",
                  "tls-auth-clients no"]
    config = workdir / "redis.conf"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    proc = subprocess.Popen([path, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_limit_files(limits.nofile))
    _wait_port(port, proc, log_path)
    return Target("redis", proc, port, tls_port, None, password, data, log_path, limits)


# -- RESP over raw sockets --------------------------------------------------------------------
def resp(*args: bytes | str | int) -> bytes:
    """One request in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class SyncClient:
    """A blocking RESP client on one socket (hiredis parses), errors returned as values."""

    def __init__(self, port: int, password: str | None, timeout: float = 30.0) -> None:
        import hiredis

        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        if password is not None:
            reply = self.call("AUTH", password)
            if reply != b"OK":
                self.close()
                raise ConnectionError(f"AUTH: {reply!r}")

    def read(self) -> Any:
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.reader.feed(chunk)

    def call(self, *args: bytes | str | int) -> Any:
        self.sock.sendall(resp(*args))
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- the attack process -----------------------------------------------------------------------
class Attacks:
    """Every hostile client of the mix, on one asyncio loop in its own process."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.p = params
        self.mix = Mix(**params["mix"])
        self.limits = Limits(**params["limits"])
        self.port: int = params["port"]
        self.tls_port: int | None = params["tls_port"]
        self.metrics_port: int | None = params["metrics_port"]
        self.password: str = params["password"]
        self.deadline = time.monotonic() + params["duration"]
        self.enabled: set[str] = set(params["attacks"])
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.auth = resp("AUTH", self.password)
        #: AUTH, then SELECT the database of the big values (one reply each).
        self.auth_big = self.auth + resp("SELECT", BIG_DB)
        self._parsers: weakref.WeakKeyDictionary[asyncio.StreamReader, Any] = \
            weakref.WeakKeyDictionary()

    def note(self, event: str, example: str | None = None) -> None:
        self.counts[event] += 1
        if example is not None and event not in self.examples:
            self.examples[event] = example[:300]

    def over(self) -> bool:
        return time.monotonic() >= self.deadline

    async def nap(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))

    async def connect(self, port: int, timeout: float = 5.0
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 << 20),
                                      timeout)

    @staticmethod
    def rst(writer: asyncio.StreamWriter) -> None:
        """Close with an RST (SO_LINGER 0), dropping whatever is unsent or unread."""
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def read_reply(self, reader: asyncio.StreamReader, timeout: float = 60.0) -> Any:
        """The next reply on ``reader`` (one parser per connection keeps what a chunk held
        past the reply)."""
        import hiredis

        parser = self._parsers.get(reader)
        if parser is None:
            parser = self._parsers[reader] = hiredis.Reader()
        end = time.monotonic() + timeout
        while True:
            reply = parser.gets()
            if reply is not False:
                return reply
            chunk = await asyncio.wait_for(reader.read(1 << 20), max(0.1, end - time.monotonic()))
            if not chunk:
                raise ConnectionError("closed")
            parser.feed(chunk)

    async def drain_until_closed(self, reader: asyncio.StreamReader, cap: int,
                                 timeout: float) -> tuple[int, bool]:
        """Read up to ``cap`` bytes; (bytes read, whether the server closed or answered an
        error instead: either way the reply was cut off)."""
        got = 0
        end = time.monotonic() + timeout
        try:
            while got < cap:
                chunk = await asyncio.wait_for(reader.read(1 << 20),
                                               max(0.1, end - time.monotonic()))
                if not chunk:
                    return got, True
                if got == 0 and chunk.startswith(b"-"):
                    self.note("mget.error_reply", chunk[:120].decode("latin-1"))
                    return len(chunk), True
                got += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return got, True  # an abort with our bytes unread: an RST
        except (TimeoutError, ConnectionError, OSError):
            return got, False
        return got, False

    def guarded(self, name: str, fn: Any) -> Any:
        async def loop() -> None:
            while not self.over():
                try:
                    await fn()
                except asyncio.CancelledError:
                    raise
                except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError) \
                        as exc:
                    self.note(f"{name}.conn_error", f"{type(exc).__name__}: {exc}")
                    await self.nap(0.2)
                except Exception as exc:  # noqa: BLE001 - an attacker never stops the mix
                    self.note(f"{name}.bug", f"{type(exc).__name__}: {exc}")
                    await self.nap(0.5)
        return loop()

    # reset storms
    async def reset_storm(self) -> None:
        kind = random.random()
        if kind < 0.3:  # RST before the server can accept
            sock = socket.socket()
            sock.setblocking(False)
            try:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
                    sock, (HOST, self.port)), 5)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.note("reset.before_accept")
            finally:
                sock.close()
        else:
            reader, writer = await self.connect(self.port)
            if kind < 0.8:
                writer.write(self.auth + resp("SET", f"reset:{random.randrange(1000)}", "x")
                             + resp("GET", "good:1"))
                self.note("reset.commands")
            else:  # a pipeline of big GETs, then RST without reading
                writer.write(self.auth_big + resp("GET", "big:0") * 16)
                self.note("reset.big_pipeline")
            await writer.drain()
            if random.random() < 0.5:
                await asyncio.sleep(random.uniform(0, 0.05))
            self.rst(writer)
        await asyncio.sleep(random.expovariate(self.mix.reset_rate / 4))

    # slowloris
    async def slowloris(self, port: int, opening: bytes, tag: str) -> None:
        reader, writer = await self.connect(port)
        self.note(f"{tag}.opened")
        sent = 0
        try:
            while not self.over():
                if sent < len(opening):
                    writer.write(opening[sent:sent + 1])
                    sent += 1
                else:
                    writer.write(b"x")
                await writer.drain()
                try:
                    chunk = await asyncio.wait_for(reader.read(4096), 2.0)
                except TimeoutError:
                    continue
                if not chunk:
                    self.note(f"{tag}.closed_by_server")
                    return
                self.note(f"{tag}.answered", chunk[:80].decode("latin-1"))
                if b"503" in chunk[:16]:
                    self.note(f"{tag}.http_503")
                return
        finally:
            writer.transport.abort()

    async def enter_big_db(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        """AUTH and SELECT the database of the big values, reading both replies."""
        writer.write(self.auth_big)
        await self.read_reply(reader)
        await self.read_reply(reader)

    # amplification
    async def mget_amplifier(self) -> None:
        reader, writer = await self.connect(self.port)
        try:
            await self.enter_big_db(reader, writer)
            keys = ["big:0"] * self.mix.mget_repeat
            writer.write(resp("MGET", *keys))
            await writer.drain()
            self.note("mget.sent")
            got, closed = await self.drain_until_closed(
                reader, self.mix.big_value * self.mix.mget_repeat + 4096, 60)
            self.note("mget.disconnected" if closed else "mget.not_disconnected")
            self.counts["mget.bytes_received"] += got
        finally:
            writer.transport.abort()
        await self.nap(1.0)

    async def pipeline_amplifier(self) -> None:
        reader, writer = await self.connect(self.port)
        try:
            writer.write(self.auth_big + b"".join(
                resp("GET", f"big:{i % self.mix.big_keys}")
                for i in range(self.mix.pipeline_gets)))
            await writer.drain()
            self.note("pipeline.sent")
            await self.nap(2.0)  # never reads
        finally:
            self.rst(writer)

    async def append_amplifier(self) -> None:
        reader, writer = await self.connect(self.port)
        chunk = b"a" * self.mix.append_chunk
        key = f"append:{random.randrange(1 << 30)}"
        try:
            await self.enter_big_db(reader, writer)
            length = 0
            while not self.over() and length + len(chunk) <= self.limits.proto_max_bulk_len:
                writer.write(resp("APPEND", key, chunk))
                reply = await self.read_reply(reader)
                if not isinstance(reply, int):
                    self.note("append.error", repr(reply))
                    break
                length = reply
                self.note("append.ok")
                await asyncio.sleep(self.mix.append_interval)
            writer.write(resp("DEL", key))
            await self.read_reply(reader)
        finally:
            writer.transport.abort()

    async def setname_bomb(self) -> None:
        reader, writer = await self.connect(self.port)
        try:
            writer.write(self.auth)
            await self.read_reply(reader)
            name = b"n" * self.limits.proto_max_bulk_len
            writer.write(resp("CLIENT", "SETNAME", name))
            reply = await self.read_reply(reader)
            self.note("setname.ok" if reply == b"OK" else "setname.refused", repr(reply)[:120])
            await self.nap(2.0)
        finally:
            writer.transport.abort()

    async def big_delete_churn(self) -> None:
        reader, writer = await self.connect(self.port)
        value = os.urandom(self.mix.big_value)
        try:
            writer.write(self.auth)
            await self.read_reply(reader)
            while not self.over():
                key = f"bigdel:{random.randrange(1 << 30)}"
                writer.write(resp("SET", key, value))
                set_reply = await self.read_reply(reader)
                writer.write(resp("DEL", key))
                del_reply = await self.read_reply(reader)
                self.note("bigdel.ok" if (set_reply, del_reply) == (b"OK", 1)
                          else "bigdel.error", repr((set_reply, del_reply))[:120])
                await self.nap(1.0)
        finally:
            writer.transport.abort()

    # pattern bombs
    def patterns(self) -> list[bytes]:
        n = self.mix.pattern_len
        return [b"*a" * 40 + b"*b",  # exponential for a backtracking matcher
                b"*a" * 2000 + b"*b",
                (b"*a" * (n // 2))[:n - 2] + b"*b",  # 1 MiB
                b"?" * n,
                b"x" * n,
                b"[" + b"a-z" * ((n - 2) // 3) + b"]",
                b"walk:*" + b"a*" * 5000 + b"b"]

    async def pattern_bomb(self) -> None:
        reader, writer = await self.connect(self.port)
        try:
            writer.write(self.auth)
            await self.read_reply(reader)
            for index, pattern in enumerate(self.patterns()):
                if self.over():
                    break
                for args in (("KEYS", pattern), ("SCAN", 0, "MATCH", pattern, "COUNT", 1000)):
                    writer.write(resp(*args))
                    started = time.monotonic()
                    reply = await self.read_reply(reader, timeout=120)
                    took = time.monotonic() - started
                    self.note(f"pattern.{args[0].lower()}")
                    for slot in ("pattern.max_ms", f"pattern.max_ms.{index}.{args[0]}"):
                        self.counts[slot] = max(self.counts[slot], int(took * 1000))
                    if isinstance(reply, Exception):
                        self.note("pattern.error", repr(reply)[:120])
                    await self.nap(0.5)
        finally:
            writer.transport.abort()

    async def cursor_flood(self) -> None:
        reader, writer = await self.connect(self.port)
        try:
            writer.write(self.auth)
            await self.read_reply(reader)
            burst = resp("SCAN", 0, "COUNT", 1) * self.mix.cursor_burst
            while not self.over():
                writer.write(burst)
                for _ in range(self.mix.cursor_burst):
                    await self.read_reply(reader)
                self.counts["cursor.scans"] += self.mix.cursor_burst
                await self.nap(self.mix.cursor_interval)
        finally:
            writer.transport.abort()

    # fd floods
    async def fd_flood(self) -> None:
        opened: list[asyncio.StreamWriter] = []
        watchers: list[asyncio.Task[None]] = []

        async def watch(reader: asyncio.StreamReader, tag: str) -> None:
            # Refused connections get an error line (plain) or nothing, then EOF.
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(4096):
                    pass
                self.note(f"{tag}.closed_by_server")

        async def one(port: int, tag: str) -> None:
            try:
                reader, writer = await self.connect(port, timeout=5.0)
            except (OSError, TimeoutError) as exc:
                self.note(f"{tag}.connect_failed", f"{type(exc).__name__}: {exc}")
                return
            opened.append(writer)
            watchers.append(asyncio.ensure_future(watch(reader, tag)))
            self.note(f"{tag}.opened")

        sem = asyncio.Semaphore(100)

        async def bounded(port: int, tag: str) -> None:
            async with sem:
                await one(port, tag)

        try:
            jobs = [bounded(self.port, "flood")
                    for _ in range(self.limits.maxclients + self.mix.flood_extra)]
            if self.tls_port is not None:
                jobs += [bounded(self.tls_port, "tlsflood") for _ in range(self.mix.tls_flood)]
            await asyncio.gather(*jobs)
            self.counts["flood.max_open"] = max(self.counts["flood.max_open"], len(opened))
            await self.nap(self.mix.flood_hold)
        finally:
            for w in opened:
                w.transport.abort()
            for t in watchers:
                t.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        await self.nap(self.mix.flood_pause)

    # unauthenticated oversized requests
    async def unauth_oversized(self) -> None:
        cases = {
            "args": resp(*(["SET"] + ["x"] * 10)),  # 11 arguments, complete
            "bulk": resp("SET", "k", b"v" * (20 * KiB)),  # a 20 KiB argument, complete
            "announced": b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\n" + b"v" * 4096,
        }
        for case, data in cases.items():
            reader, writer = await self.connect(self.port)
            try:
                writer.write(data)
                await writer.drain()
                got = b""
                closed = False
                try:
                    while len(got) < 4096:
                        chunk = await asyncio.wait_for(reader.read(4096), 5.0)
                        if not chunk:
                            closed = True
                            break
                        got += chunk
                except (ConnectionError, OSError):
                    closed = True  # an RST: the server closed with our bytes unread
                except TimeoutError:
                    pass
                if b"max number of clients" in got:
                    self.note(f"unauth.{case}.maxclients")
                elif closed and (b"unauthenticated" in got or not got):
                    # Closed with the error, or with an RST that dropped it (our bytes
                    # were unread): the request never ran.
                    self.note(f"unauth.{case}.refused")
                else:  # answered as a command (NOAUTH), or left open
                    self.note(f"unauth.{case}.accepted",
                              f"reply {got[:120]!r}, closed={closed}")
            finally:
                writer.transport.abort()
        await self.nap(self.mix.unauth_interval)

    async def run(self) -> None:
        mix = self.mix
        jobs: list[Any] = []

        def add(name: str, count: int, fn: Any) -> None:
            if name in self.enabled:
                jobs.extend(self.guarded(name, fn) for _ in range(count))

        add("reset", 4, self.reset_storm)
        # No AUTH in it: failed logins from 127.0.0.1 would use up the failed-AUTH budget
        # that every local client shares, and the probes could not log in.
        plain_opening = resp("SET", "slowloris", "x" * 200)
        add("slowloris", mix.slowloris,
            lambda: self.slowloris(self.port, plain_opening, "slowloris"))
        if self.tls_port is not None:
            # A TLS record header (handshake, 512 bytes) and the start of a ClientHello.
            hello = bytes.fromhex("160301020001") + os.urandom(200)
            add("slowloris", mix.slowloris,
                lambda: self.slowloris(self.tls_port or 0, hello, "tlsloris"))
        if self.metrics_port is not None:
            head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 4000
            add("slowloris", mix.metrics_slowloris,
                lambda: self.slowloris(self.metrics_port or 0, head, "httploris"))
        add("amplify", 1, self.mget_amplifier)
        add("amplify", 1, self.pipeline_amplifier)
        add("amplify", 1, self.append_amplifier)
        add("amplify", 1, self.setname_bomb)
        add("amplify", 1, self.big_delete_churn)
        add("pattern", 1, self.pattern_bomb)
        add("cursor", 1, self.cursor_flood)
        add("flood", 1, self.fd_flood)
        add("unauth", 1, self.unauth_oversized)
        tasks = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(max(0.0, self.deadline - time.monotonic()))
        await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def attack_main(params: dict[str, Any]) -> dict[str, Any]:
    """Run the attacks described by ``params`` until their deadline; their counters."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    attacks = Attacks(params)
    asyncio.run(attacks.run())
    return {"counts": dict(attacks.counts), "examples": attacks.examples}


# -- measuring --------------------------------------------------------------------------------
def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes ({} once it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * KiB
    except OSError:
        pass
    return out


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@dataclasses.dataclass
class Report:
    """What one run measured (JSON-able)."""

    target: str
    duration: float
    attacks: list[str]
    alive: bool = True
    writable: bool = True
    writable_error: str = ""
    killed_for_safety: str = ""
    baseline_rss: int = 0
    peak_rss: int = 0  # VmHWM
    max_sampled_rss: int = 0
    rss_bound: int = 0
    ping_persistent: dict[str, float] = dataclasses.field(default_factory=dict)
    ping_new: dict[str, float] = dataclasses.field(default_factory=dict)
    ping_new_refused: int = 0  # maxclients reached: documented
    health: dict[str, Any] = dataclasses.field(default_factory=dict)
    good_ops: int = 0
    good_errors: list[str] = dataclasses.field(default_factory=list)
    good_refusals: int = 0
    scans_completed: int = 0
    # ShaleDB only: INFO's gc_* fields at the end (each collection stops every client).
    server_gc: dict[str, Any] = dataclasses.field(default_factory=dict)
    attack_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    attack_examples: dict[str, str] = dataclasses.field(default_factory=dict)
    server_log_tail: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def latency_summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"count": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(p99 * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2)}


#: Errors the well-behaved client may see: only when (re)connecting while a flood holds
#: every slot (Redis' and ShaleDB's refusal at maxclients).
DOCUMENTED_ERRORS = ("max number of clients reached",)


#: Seconds the well-behaved SCAN waits between pages, as a consumer that works on each page
#: would: the cursor flood creates ~2,500 cursors a second meanwhile, enough to push
#: a cursor out of a table of 10,000 (max-scan-cursors) that evicts the oldest first.
SCAN_PAGE_PAUSE = 8.0


class Probes:
    """The measuring threads of one run."""

    def __init__(self, target: Target, mix: Mix, deadline: float, safety_rss: int,
                 safety_disk: int) -> None:
        self.t = target
        self.mix = mix
        self.deadline = deadline
        self.stop = threading.Event()
        self.safety_rss = safety_rss
        self.safety_disk = safety_disk
        self.killed = ""
        self.max_rss = 0
        self.ping_persistent: list[float] = []
        self.ping_new: list[float] = []
        self.ping_new_refused = 0
        self.health: Counter[str] = Counter()
        self.health_latency: list[float] = []
        self.health_examples: dict[str, str] = {}
        self.good_ops = 0
        self.good_errors: list[str] = []
        self.good_refusals = 0
        self.scans = 0
        self.lock = threading.Lock()

    def error(self, message: str) -> None:
        with self.lock:
            if len(self.good_errors) < 50:
                self.good_errors.append(message[:300])

    def sampler(self) -> None:
        last_disk = 0.0
        while not self.stop.is_set():
            rss = read_status(self.t.pid).get("VmRSS", 0)
            self.max_rss = max(self.max_rss, rss)
            if rss > self.safety_rss and not self.killed:
                self.killed = f"RSS {rss >> 20} MiB over the safety limit"
                self.t.proc.kill()
            now = time.monotonic()
            if now - last_disk > 2.0:
                last_disk = now
                size = dir_size(self.t.data_dir)
                if size > self.safety_disk and not self.killed:
                    self.killed = f"data directory {size >> 20} MiB over the safety limit"
                    self.t.proc.kill()
            time.sleep(0.02)

    def _connect(self) -> SyncClient:
        return SyncClient(self.t.port, self.t.password)

    def ping_persistent_loop(self) -> None:
        client: SyncClient | None = None
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                if client is None:
                    client = self._connect()
                    started = time.perf_counter()
                reply = client.call("PING")
                took = time.perf_counter() - started
                if reply != b"PONG":
                    self.error(f"persistent PING: {reply!r}")
                self.ping_persistent.append(took)
            except (OSError, ConnectionError) as exc:
                self.ping_persistent.append(time.perf_counter() - started)
                self.error(f"persistent PING connection: {type(exc).__name__}: {exc}")
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.2)
            time.sleep(0.05)
        if client is not None:
            client.close()

    def ping_new_loop(self) -> None:
        import hiredis

        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with socket.create_connection((HOST, self.t.port), timeout=30) as s:
                    s.sendall(resp("AUTH", self.t.password) + resp("PING"))
                    reader = hiredis.Reader()
                    replies: list[Any] = []
                    while len(replies) < 2:
                        reply = reader.gets()
                        if reply is not False:
                            replies.append(reply)
                            if isinstance(reply, Exception):
                                break
                            continue
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        reader.feed(chunk)
                took = time.perf_counter() - started
                if replies and isinstance(replies[0], Exception) and \
                        "max number of clients" in str(replies[0]):
                    self.ping_new_refused += 1
                elif replies == [b"OK", b"PONG"]:
                    self.ping_new.append(took)
                elif not replies:
                    # Closed without a word: a refusal at maxclients under TLS-free load,
                    # or accept() failing (EMFILE). Counted with the refusals.
                    self.ping_new_refused += 1
                else:
                    self.ping_new.append(took)
                    self.error(f"new-connection PING: {replies!r}")
            except (OSError, ConnectionError) as exc:
                self.ping_new.append(time.perf_counter() - started)
                self.error(f"new-connection PING: {type(exc).__name__}: {exc}")
            time.sleep(0.05)

    def health_loop(self) -> None:
        port = self.t.metrics_port
        if port is None:
            return
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with socket.create_connection((HOST, port), timeout=5) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    data = b""
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") \
                    else "garbled"
                self.health_latency.append(time.perf_counter() - started)
            except (OSError, ConnectionError) as exc:
                status = f"no answer ({type(exc).__name__})"
                data = b""
            self.health[status] += 1
            if status != "200" and status not in self.health_examples:
                self.health_examples[status] = data[-300:].decode("latin-1")
            time.sleep(0.2)

    def good_loop(self) -> None:
        """SET/GET/INCR/MGET on keys only this client writes, checked against its model."""
        rng = random.Random()
        model: dict[str, bytes] = {f"good:{i}": b"v%d" % i for i in range(self.mix.good_keys)}
        maybe: dict[str, bytes] = {}  # a write whose reply was lost
        counter = 0
        counter_pending = False
        client: SyncClient | None = None
        while not self.stop.is_set():
            try:
                if client is None:
                    client = self._connect()
                    if counter_pending:
                        counter = int(client.call("GET", "good:counter") or 0)
                        counter_pending = False
                    for key, value in list(maybe.items()):
                        now = client.call("GET", key)
                        if now not in (model[key], value):
                            self.error(f"{key} holds {now!r}, neither the acknowledged "
                                       f"{model[key]!r} nor the one in flight")
                        model[key] = now
                    maybe.clear()
                op = rng.random()
                key = f"good:{rng.randrange(self.mix.good_keys)}"
                if op < 0.35:
                    value = b"%d:%d" % (rng.randrange(10**9), self.good_ops)
                    maybe[key] = value
                    reply = client.call("SET", key, value)
                    del maybe[key]
                    if reply != b"OK":
                        self.error(f"SET {key}: {reply!r}")
                    else:
                        model[key] = value
                elif op < 0.7:
                    reply = client.call("GET", key)
                    if reply != model[key]:
                        self.error(f"GET {key}: {reply!r}, expected {model[key]!r}")
                elif op < 0.85:
                    counter_pending = True
                    reply = client.call("INCR", "good:counter")
                    counter_pending = False
                    if reply != counter + 1:
                        self.error(f"INCR: {reply!r}, expected {counter + 1}")
                    counter = reply if isinstance(reply, int) else counter
                else:
                    keys = [f"good:{rng.randrange(self.mix.good_keys)}" for _ in range(10)]
                    reply = client.call("MGET", *keys)
                    if reply != [model[k] for k in keys]:
                        self.error(f"MGET {keys[:2]}...: wrong values")
                self.good_ops += 1
            except (OSError, ConnectionError) as exc:
                self._lost(exc)
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.2)
            time.sleep(0.003)
        if client is not None:
            client.close()

    def _lost(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if any(d in text for d in DOCUMENTED_ERRORS):
            self.good_refusals += 1
        else:
            self.error(f"well-behaved client lost its connection: {text}")

    def scan_loop(self) -> None:
        """Full SCANs of the good keys, one page every SCAN_PAGE_PAUSE seconds (a slow
        consumer): every page must come back and every key be seen."""
        client: SyncClient | None = None
        expected = {b"good:%d" % i for i in range(self.mix.good_keys)}
        while not self.stop.is_set():
            try:
                if client is None:
                    client = self._connect()
                cursor: bytes | int = 0
                seen: set[bytes] = set()
                while not self.stop.is_set():
                    reply = client.call("SCAN", cursor, "MATCH", "good:*", "COUNT", 1000)
                    if isinstance(reply, Exception):
                        self.error(f"SCAN {cursor!r}: {reply}")
                        break
                    cursor, keys = reply
                    seen.update(keys)
                    if cursor in (b"0", 0):
                        missing = expected - seen
                        if missing:
                            self.error(f"SCAN missed {len(missing)} keys, e.g. "
                                       f"{sorted(missing)[:3]!r}")
                        self.scans += 1
                        break
                    self.stop.wait(SCAN_PAGE_PAUSE)
            except (OSError, ConnectionError) as exc:
                self._lost(exc)
                if client is not None:
                    client.close()
                client = None
                time.sleep(0.2)
        if client is not None:
            client.close()


def prepare(target: Target, mix: Mix) -> None:
    """The data the mix reads: big values, the good keys, keys for the pattern walks."""
    c = SyncClient(target.port, target.password, timeout=120)
    try:
        rng = random.Random(7)
        assert c.call("SELECT", BIG_DB) == b"OK"
        for i in range(mix.big_keys):
            assert c.call("SET", f"big:{i}", rng.randbytes(mix.big_value)) == b"OK"
        assert c.call("SELECT", 0) == b"OK"
        for start in range(0, mix.good_keys, 500):
            args: list[bytes | str] = []
            for i in range(start, min(mix.good_keys, start + 500)):
                args += [f"good:{i}", b"v%d" % i]
            assert c.call("MSET", *args) == b"OK"
        c.call("SET", "good:counter", 0)
        for start in range(0, mix.walk_keys, 500):
            args = []
            for i in range(start, min(mix.walk_keys, start + 500)):
                args += [f"walk:{'a' * 60}{i}", "w"]
            assert c.call("MSET", *args) == b"OK"
    finally:
        c.close()


def check_writable(target: Target, wait: float = 15.0) -> str:
    """'' when a fresh client can write and read back a key, else why not."""
    deadline = time.monotonic() + wait
    last = "never tried"
    while time.monotonic() < deadline:
        if not target.alive():
            return f"server exited with status {target.proc.returncode}"
        try:
            c = SyncClient(target.port, target.password, timeout=10)
        except (OSError, ConnectionError) as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
            continue
        try:
            value = secrets.token_hex(8)
            reply = c.call("SET", "hostile:canary", value)
            if reply != b"OK":
                return f"SET answered {reply!r}"
            back = c.call("GET", "hostile:canary")
            return "" if back == value.encode() else f"GET answered {back!r}"
        except (OSError, ConnectionError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            c.close()
        time.sleep(0.5)
    return last


ALL_ATTACKS = ("reset", "slowloris", "amplify", "pattern", "cursor", "flood", "unauth")


def server_gc(target: Target) -> dict[str, Any]:
    """The garbage collector's INFO fields of a ShaleDB target ({} if INFO fails)."""
    try:
        client = SyncClient(target.port, target.password, timeout=10)
        try:
            text = client.call("INFO", "shaledb")
        finally:
            client.close()
    except (OSError, ValueError):
        return {}
    if not isinstance(text, bytes):
        return {}
    fields = dict(line.split(":", 1) for line in text.decode().splitlines() if ":" in line)
    return {k: v for k, v in fields.items() if k.startswith("gc_")}


def run_mix(target: Target, duration: float, mix: Mix | None = None,
            attacks: tuple[str, ...] = ALL_ATTACKS, safety_rss: int = 3 << 30,
            safety_disk: int = 8 << 30) -> Report:
    """Warm ``target`` up, run the mix against it for ``duration`` seconds, measure."""
    mix = mix or Mix()
    report = Report(target.kind, duration, list(attacks))
    prepare(target, mix)
    time.sleep(1.0)
    report.baseline_rss = read_status(target.pid).get("VmRSS", 0)
    report.rss_bound = rss_bound(report.baseline_rss, target.limits)
    deadline = time.monotonic() + duration
    probes = Probes(target, mix, deadline, safety_rss, safety_disk)
    threads = [threading.Thread(target=fn, name=fn.__name__, daemon=True) for fn in (
        probes.sampler, probes.ping_persistent_loop, probes.ping_new_loop, probes.health_loop,
        probes.good_loop, probes.scan_loop)]
    for th in threads:
        th.start()
    time.sleep(0.5)  # the well-behaved clients connect before the floods
    params = {"port": target.port, "tls_port": target.tls_port,
              "metrics_port": target.metrics_port, "password": target.password,
              "duration": duration, "attacks": list(attacks),
              "mix": dataclasses.asdict(mix), "limits": dataclasses.asdict(target.limits)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    attacker = subprocess.Popen([sys.executable, "-m", "bench.hostile", "--attack-process"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=str(ROOT), env=env)
    try:
        out, err = attacker.communicate(json.dumps(params).encode(), timeout=duration + 180)
    except subprocess.TimeoutExpired:
        attacker.kill()
        out, err = attacker.communicate()
    try:
        result = json.loads(out.decode() or "{}")
    except ValueError:
        result = {}
    if attacker.returncode != 0 or not result:
        report.attack_examples["attack_process"] = err.decode(errors="replace")[-2000:]
    report.attack_counts = result.get("counts", {})
    report.attack_examples.update(result.get("examples", {}))
    # Measure the quiet after the storm too (the server must recover at once).
    time.sleep(1.0)
    probes.stop.set()
    for th in threads:
        th.join(60)
    report.killed_for_safety = probes.killed
    report.alive = target.alive()
    report.writable_error = check_writable(target) if report.alive else "server died"
    report.writable = report.writable_error == ""
    if report.alive and target.kind == "shaledb":
        report.server_gc = server_gc(target)
    status = read_status(target.pid)
    report.peak_rss = status.get("VmHWM", probes.max_rss)
    report.max_sampled_rss = probes.max_rss
    report.ping_persistent = latency_summary(probes.ping_persistent)
    report.ping_new = latency_summary(probes.ping_new)
    report.ping_new_refused = probes.ping_new_refused
    report.health = {"statuses": dict(probes.health),
                     "latency": latency_summary(probes.health_latency),
                     "examples": probes.health_examples}
    report.good_ops = probes.good_ops
    report.good_errors = probes.good_errors
    report.good_refusals = probes.good_refusals
    report.scans_completed = probes.scans
    report.server_log_tail = target.log_tail(30)
    return report


#: Bounds of :func:`verdict` (the test's; environment variables override them).
MAX_PING_MS = 500.0
P99_PING_MS = 200.0


def verdict(r: Report, max_ping_ms: float = MAX_PING_MS,
            p99_ping_ms: float = P99_PING_MS) -> list[str]:
    """What ``r`` shows the server got wrong under the mix (empty: nothing). Also checks
    that the mix really ran, so that a broken attacker cannot make a run pass."""
    bad: list[str] = []
    counts = r.attack_counts
    if r.killed_for_safety:
        bad.append(f"killed by the driver: {r.killed_for_safety}")
    if not r.alive:
        bad.append("the server died")
    elif not r.writable:
        bad.append(f"not writable at the end: {r.writable_error}")
    if r.peak_rss > r.rss_bound:
        bad.append(f"peak RSS {r.peak_rss / MiB:.0f} MiB over the bound "
                   f"{r.rss_bound / MiB:.0f} MiB (baseline {r.baseline_rss / MiB:.0f} MiB)")
    for name, lat in (("persistent", r.ping_persistent), ("new-connection", r.ping_new)):
        if lat.get("max_ms", 0) > max_ping_ms:
            bad.append(f"worst {name} PING {lat['max_ms']:.0f} ms > {max_ping_ms:.0f} ms")
        if lat.get("p99_ms", 0) > p99_ping_ms:
            bad.append(f"p99 {name} PING {lat['p99_ms']:.0f} ms > {p99_ping_ms:.0f} ms")
    expected_pings = r.duration / 0.1 * 0.5  # one every ~50 ms plus the round trip
    if r.ping_persistent.get("count", 0) < expected_pings:
        bad.append(f"only {r.ping_persistent.get('count', 0)} persistent PINGs answered")
    # The flood holds every slot about half of the time; new connections get in otherwise.
    if r.ping_new.get("count", 0) < expected_pings * 0.2:
        bad.append(f"only {r.ping_new.get('count', 0)} new-connection PINGs answered "
                   f"({r.ping_new_refused} refused at maxclients)")
    if r.good_errors:
        bad.append(f"{len(r.good_errors)} errors of the well-behaved clients, first: "
                   f"{r.good_errors[0]}")
    if r.good_ops < r.duration * 20:
        bad.append(f"the well-behaved client did only {r.good_ops} operations")
    statuses = r.health.get("statuses", {})
    if r.target == "shaledb":
        wrong = {k: v for k, v in statuses.items() if k != "200"}
        if wrong:
            bad.append(f"/health answered {wrong} besides {statuses.get('200', 0)} x 200 "
                       f"(e.g. {next(iter(r.health.get('examples', {}).values()), '')!r})")
        if statuses.get("200", 0) < r.duration / 0.2 * 0.3:
            bad.append(f"only {statuses.get('200', 0)} /health probes answered 200")
    accepted = {k: v for k, v in counts.items() if k.startswith("unauth.")
                and k.endswith(".accepted")}
    if "unauth" in r.attacks:
        if accepted:
            bad.append(f"unauthenticated oversized requests not refused: {accepted}, e.g. "
                       f"{r.attack_examples.get(next(iter(accepted)), '')}")
        if not any(k.endswith(".refused") for k in counts if k.startswith("unauth.")):
            bad.append("no unauthenticated oversized request was refused")
    if "amplify" in r.attacks:
        if counts.get("mget.not_disconnected", 0):
            bad.append(f"{counts['mget.not_disconnected']} MGETs of "
                       f"{Mix().mget_repeat} x 4 MiB were not cut off by the output limit")
        if not counts.get("mget.disconnected", 0):
            bad.append("no MGET amplification completed")
    ran = {"reset": "reset.commands", "slowloris": "slowloris.opened", "amplify": "mget.sent",
           "pattern": "pattern.keys", "cursor": "cursor.scans", "flood": "flood.opened",
           "unauth": None}
    for attack in r.attacks:
        key = ran.get(attack)
        if key is not None and not counts.get(key, 0):
            bad.append(f"the {attack} attack did not run ({key} = 0)")
    bugs = {k: v for k, v in counts.items() if k.endswith(".bug")}
    if bugs or "attack_process" in r.attack_examples:
        bad.append(f"the attack process failed: {bugs} "
                   f"{r.attack_examples.get('attack_process', '')[-500:]}")
    return bad


def table(reports: list[Report]) -> str:
    """A short comparison table of ``reports``."""
    rows = [("", *(r.target for r in reports)),
            ("alive / writable at the end",
             *(f"{'yes' if r.alive else 'NO'} / {'yes' if r.writable else 'NO'}"
               for r in reports)),
            ("killed for safety", *(r.killed_for_safety or "-" for r in reports)),
            ("RSS baseline (MiB)", *(f"{r.baseline_rss / MiB:.0f}" for r in reports)),
            ("RSS peak VmHWM (MiB)", *(f"{r.peak_rss / MiB:.0f}" for r in reports)),
            ("RSS bound (MiB)", *(f"{r.rss_bound / MiB:.0f}" for r in reports)),
            ("PING persistent p50/p99/max (ms)",
             *(f"{r.ping_persistent.get('p50_ms', 0):.1f} / "
               f"{r.ping_persistent.get('p99_ms', 0):.1f} / "
               f"{r.ping_persistent.get('max_ms', 0):.0f}" for r in reports)),
            ("PING new conn p50/p99/max (ms)",
             *(f"{r.ping_new.get('p50_ms', 0):.1f} / {r.ping_new.get('p99_ms', 0):.1f} / "
               f"{r.ping_new.get('max_ms', 0):.0f}" for r in reports)),
            ("new conn refused at maxclients", *(str(r.ping_new_refused) for r in reports)),
            ("/health answers", *(json.dumps(r.health.get("statuses", {})) or "-"
                                  for r in reports)),
            ("well-behaved ops / errors",
             *(f"{r.good_ops} / {len(r.good_errors)}" for r in reports)),
            ("full SCANs completed", *(str(r.scans_completed) for r in reports)),
            ("unauth oversized accepted",
             *(str(sum(v for k, v in r.attack_counts.items()
                       if k.startswith("unauth.") and k.endswith(".accepted")))
               for r in reports)),
            ("MGET amplifier disconnected/sent",
             *(f"{r.attack_counts.get('mget.disconnected', 0)}/"
               f"{r.attack_counts.get('mget.sent', 0)}" for r in reports)),
            ("slowest KEYS/SCAN pattern (ms)",
             *(str(r.attack_counts.get("pattern.max_ms", 0)) for r in reports)),
            ("GC collections gen0/1/2", *(
                "/".join(str(r.server_gc.get(f"gc_gen{g}_collections", "-")) for g in range(3))
                for r in reports)),
            ("GC longest pause gen0/1/2 (ms)", *(
                "/".join(str(r.server_gc.get(f"gc_gen{g}_max_pause_ms", "-")) for g in range(3))
                for r in reports))]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True))
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=["shaledb", "redis", "both"], default="both")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of the mix")
    ap.add_argument("--attacks", default=",".join(ALL_ATTACKS),
                    help=f"comma-separated subset of {','.join(ALL_ATTACKS)}")
    ap.add_argument("--no-tls", action="store_true", help="run without the TLS listener")
    ap.add_argument("--json", type=Path, default=None, help="write the reports here")
    ap.add_argument("--safety-rss", type=int, default=3 << 30,
                    help="kill the server past this many bytes of RSS (default 3 GiB)")
    ap.add_argument("--safety-disk", type=int, default=8 << 30,
                    help="kill the server when its directory passes this (default 8 GiB)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--attack-process", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attack_process:  # the child run_mix starts: parameters on stdin
        result = attack_main(json.loads(sys.stdin.read()))
        sys.stdout.write(json.dumps(result))
        return 0
    attacks = tuple(a for a in args.attacks.split(",") if a)
    unknown = set(attacks) - set(ALL_ATTACKS)
    if unknown:
        ap.error(f"unknown attacks {sorted(unknown)}; known: {', '.join(ALL_ATTACKS)}")
    kinds = ["shaledb", "redis"] if args.target == "both" else [args.target]
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="hostile-", dir=args.workdir) as tmp:
        for kind in kinds:
            if kind == "redis" and shutil.which("redis-server") is None:
                print("redis: skipped, redis-server is not installed (Debian package "
                      "redis-server; `make bench-hostile` installs it as root)")
                continue
            work = Path(tmp) / kind
            start = start_shaledb if kind == "shaledb" else start_redis
            target = start(work, Limits(), tls=not args.no_tls)
            try:
                print(f"{kind}: pid {target.pid}, port {target.port}, TLS {target.tls_port}, "
                      f"mix of {args.duration:.0f} s ...", flush=True)
                reports.append(run_mix(target, args.duration, attacks=attacks,
                                       safety_rss=args.safety_rss,
                                       safety_disk=args.safety_disk))
            finally:
                target.stop()
    print(table(reports))
    for r in reports:
        problems = verdict(r)
        print(f"{r.target}: " + ("passes the soak's checks" if not problems else
                                 "fails the soak's checks:"))
        for problem in problems:
            print(f"  - {problem}")
        patterns = {k: v for k, v in r.attack_counts.items()
                    if k.startswith("pattern.max_ms.")}
        if patterns:
            print(f"  slowest KEYS/SCAN per pattern (ms): {patterns}")
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=2))
        print(f"reports written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
