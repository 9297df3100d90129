"""Measure what one amplifying request costs a server: peak RSS, time, and the latency another
client sees meanwhile.

The request is ``MGET big big ... big`` (``--copies`` times) of one ``--value-mib`` MiB value:
about 2 KB sent, ``copies x value`` bytes of reply asked for. The script starts a fresh
server (``shaledb serve`` in a subprocess, or ``redis-server`` with ``--redis``) on a
loopback port with ``client-output-buffer-limit`` set to ``--limit-mib`` (Redis: the
``normal`` class's hard limit), sends the request from a client that does not read its
reply, and reports:

- the server's peak RSS (VmHWM from /proc) before and after the request;
- how long the request kept the server busy (until the connection was closed, or the reply
  was complete);
- the worst PING round trip of a second client during that time.

    .venv/bin/python scripts/reply_memory.py                  # ShaleDB
    .venv/bin/python scripts/reply_memory.py --redis          # redis-server, same request
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read() if proc.stderr else ''!r}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def vm_hwm(pid: int) -> int:
    """Peak resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def roundtrip(s: socket.socket, request: bytes, expect: bytes) -> None:
    s.sendall(request)
    data = b""
    while not data.endswith(expect):
        chunk = s.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk


def start(use_redis: bool, port: int, limit: int, workdir: Path) -> subprocess.Popen[bytes]:
    if use_redis:
        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("redis-server is not installed")
        cmd = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
               "--dir", str(workdir), "--client-output-buffer-limit",
               f"normal {limit} 0 0"]
    else:
        cfg = workdir / "shaledb.toml"
        cfg.write_text(f"client-output-buffer-limit = {limit}\n")
        cmd = [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port",
               str(port), "--dir", str(workdir / "db"), "--config", str(cfg),
               "--log-level", "error", "--metrics-port", "off"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port, proc)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis", action="store_true", help="measure redis-server instead")
    ap.add_argument("--value-mib", type=float, default=4)
    ap.add_argument("--copies", type=int, default=200)
    ap.add_argument("--limit-mib", type=float, default=256,
                    help="client-output-buffer-limit (default 256, ShaleDB's default)")
    args = ap.parse_args()
    port = free_port()
    limit = int(args.limit_mib * (1 << 20))
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(args.redis, port, limit, Path(tmp))
        try:
            setup = socket.create_connection((HOST, port))
            value = os.urandom(int(args.value_mib * (1 << 20)))
            roundtrip(setup, command(b"SET", b"big", value), b"+OK\r\n")
            roundtrip(setup, command(b"PING"), b"+PONG\r\n")
            before = vm_hwm(proc.pid)
            pinger = socket.create_connection((HOST, port))
            worst = [0.0]
            done = threading.Event()

            def ping() -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    roundtrip(pinger, command(b"PING"), b"+PONG\r\n")
                    worst[0] = max(worst[0], time.perf_counter() - t)
                    time.sleep(0.01)

            thread = threading.Thread(target=ping, daemon=True)
            thread.start()
            s = socket.create_connection((HOST, port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            request = command(b"MGET", *([b"big"] * args.copies))
            t0 = time.perf_counter()
            s.sendall(request)
            # Do not read: wait until the server closes the connection or has produced its
            # whole reply (its RSS stops growing), at most 60 s.
            s.settimeout(0.2)
            last, stable = -1, 0
            closed = False
            while time.perf_counter() - t0 < 60 and stable < 10:
                try:
                    # A closed connection reads as EOF/RST once its buffered bytes are gone.
                    peek = s.recv(1, socket.MSG_PEEK)
                    if peek == b"":
                        closed = True
                        break
                except (TimeoutError, BlockingIOError):
                    pass
                except ConnectionResetError:
                    closed = True
                    break
                now = vm_hwm(proc.pid)
                stable = stable + 1 if now == last else 0
                last = now
                time.sleep(0.05)
            busy = time.perf_counter() - t0
            time.sleep(0.3)
            done.set()
            thread.join(5)
            after = vm_hwm(proc.pid)
            s.close()
            name = "redis-server" if args.redis else "shaledb"
            print(f"{name}: MGET of a {args.value_mib:g} MiB value x{args.copies} "
                  f"({len(request)} bytes sent), client-output-buffer-limit "
                  f"{args.limit_mib:g} MiB")
            print(f"  peak RSS before {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB "
                  f"(+{(after - before) / 2**20:.0f} MiB)")
            print(f"  connection {'closed by the server' if closed else 'still open'} after "
                  f"{busy:.2f} s; worst PING of another client {worst[0] * 1000:.0f} ms")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
