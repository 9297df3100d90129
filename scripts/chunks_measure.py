"""Measure what chunked large strings (issue 10, items 5 and 6) change, against a baseline.

Runs `shaledb serve` from this checkout and, with ``--baseline SRC`` (a ``src`` directory of
another checkout, e.g. one made with ``git archive``), from that one too, on fresh loopback
servers, alternating them, and prints for each:

- ``append``: WAL bytes written (INFO ``wal_bytes_written``) and loop time of 50 one-byte
  APPENDs to an 8 MiB + 40,000-byte value (its last 64 KiB chunk is partial);
- ``walks``: with a live and a deleted 32 MiB value (the deleted one flushed to a table
  before its DEL, so the engine still holds its bytes until compaction), 1,000 small keys
  and 100 keys with a one-hour TTL (so the expiry sweeper works): p50/p99 of RANDOMKEY,
  SCAN 0 COUNT 100, DBSIZE and PING (one client, 1 ms apart), and the server's idle CPU
  over 5 s;
- ``bench``: redis-benchmark SET/GET, -c 50, with -d 100 (-r 100000; SET twice: first
  mostly new keys, then mostly overwrites) and -d 100000 (-r 1000), requests/s.

    .venv/bin/python scripts/chunks_measure.py --baseline /tmp/base/src --repeat 3

Numbers from a shared 2-core VM are noisy: compare the two servers of the same run only.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import redis

HOST = "127.0.0.1"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Served:
    """One `shaledb serve` subprocess on a fresh directory."""

    def __init__(self, src: str | None, tmp: str, name: str) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = src
        data = os.path.join(tmp, name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port",
             str(self.port), "--dir", data, "--log-level", "warning", "--metrics-port", "off"],
            env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: server did not start") from None
                time.sleep(0.05)
        self.r = redis.Redis(host=HOST, port=self.port, socket_timeout=120)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.r.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wal_written(r: redis.Redis) -> int:
    return int(r.info("shaledb")["wal_bytes_written"])


def measure_append(s: Served) -> dict[str, float]:
    r = s.r
    size = 8 * MiB + 40_000
    r.set("big", b"v" * size)
    before = wal_written(r)
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        r.append("big", b"x")
        times.append(time.perf_counter() - t0)
    after = wal_written(r)
    assert r.strlen("big") == size + 50
    return {"wal_mib": (after - before) / MiB, "append_ms_p50": 1000 * statistics.median(times),
            "append_ms_max": 1000 * max(times)}


def _latencies(fn: Callable[[], Any], n: int, pause: float = 0.001) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        time.sleep(pause)
    times.sort()
    return 1000 * times[len(times) // 2], 1000 * times[int(len(times) * 0.99) - 1]


def measure_walks(s: Served) -> dict[str, float]:
    r = s.r
    r.mset({f"k{i:05d}": b"v" * 100 for i in range(1000)})
    with r.pipeline(transaction=False) as p:
        for i in range(100):
            p.set(f"t{i:03d}", b"v", ex=3600)
        p.execute()
    r.set("live", b"L" * (32 * MiB))
    r.set("dead", b"D" * (32 * MiB))
    r.execute_command("SAVE")  # both big values now sit in a table
    r.delete("dead")
    time.sleep(1.0)
    out: dict[str, float] = {}
    for name, fn, n in (("randomkey", r.randomkey, 100),
                        ("scan", lambda: r.scan(0, count=100), 100),
                        ("dbsize", r.dbsize, 100),
                        ("ping", r.ping, 2000)):
        p50, p99 = _latencies(fn, n)
        out[f"{name}_ms_p50"], out[f"{name}_ms_p99"] = p50, p99
    c0, t0 = s.cpu_seconds(), time.monotonic()
    time.sleep(5.0)
    out["idle_cpu_pct"] = 100 * (s.cpu_seconds() - c0) / (time.monotonic() - t0)
    return out


def settle(r: redis.Redis) -> None:
    """Let background work of the SETs finish before a GET run: the purger's garbage
    (current build only) and a few seconds of flushes and compactions (both)."""
    deadline = time.monotonic() + 120
    while int(r.info("shaledb").get("chunk_garbage_pending", 0)) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)


def redis_benchmark(port: int, test: str, size: int, keys: int, n: int) -> float:
    out = subprocess.run(
        ["redis-benchmark", "-h", HOST, "-p", str(port), "-t", test, "-n", str(n), "-c", "50",
         "-d", str(size), "-r", str(keys), "--csv"],
        capture_output=True, check=True, timeout=900).stdout.decode()
    for row in csv.reader(io.StringIO(out)):
        if len(row) >= 2 and row[0] == test.upper():
            return float(row[1])
    raise RuntimeError(f"no result in {out!r}")


def bench_run(s: Served, rows: dict[str, float], name: str, test: str, size: int, keys: int,
              count: int) -> None:
    """One redis-benchmark run: requests/s, and the server's CPU time per request (steadier
    than throughput on a shared machine)."""
    cpu = s.cpu_seconds()
    rows[name] = redis_benchmark(s.port, test, size, keys, count)
    rows[name + "_cpu_us"] = 1e6 * (s.cpu_seconds() - cpu) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="src directory of the baseline checkout")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="append,walks,bench")
    parser.add_argument("--requests", type=int, default=30_000,
                        help="redis-benchmark requests for -d 100 (a tenth for -d 100000)")
    args = parser.parse_args()
    builds: list[tuple[str, str | None]] = [("current", None)]
    if args.baseline:
        builds.insert(0, ("baseline", args.baseline))
    only = set(args.only.split(","))
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _ in builds}
    for i in range(args.repeat):
        # Alternate which build runs first, so both see the same drift of a shared machine.
        for name, src in builds if i % 2 == 0 else builds[::-1]:
            tmp = tempfile.mkdtemp(prefix="chunks-measure-")
            try:
                rows: dict[str, float] = {}
                if "append" in only:
                    s = Served(src, tmp, f"a{i}")
                    try:
                        rows.update(measure_append(s))
                    finally:
                        s.stop()
                if "walks" in only:
                    s = Served(src, tmp, f"w{i}")
                    try:
                        rows.update(measure_walks(s))
                    finally:
                        s.stop()
                if "bench" in only:
                    s = Served(src, tmp, f"b{i}")
                    try:
                        n, n_large = args.requests, max(args.requests // 10, 100)
                        # The first SET run mostly creates keys, the second overwrites.
                        bench_run(s, rows, "set_d100", "set", 100, 100_000, n)
                        bench_run(s, rows, "set_d100_again", "set", 100, 100_000, n)
                        settle(s.r)
                        bench_run(s, rows, "get_d100", "get", 100, 100_000, n)
                        bench_run(s, rows, "set_d100000", "set", 100_000, 1_000, n_large)
                        settle(s.r)
                        bench_run(s, rows, "get_d100000", "get", 100_000, 1_000, n_large)
                    finally:
                        s.stop()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            for key, value in rows.items():
                results[name].setdefault(key, []).append(value)
            print(f"run {i} {name}: " + ", ".join(f"{k}={v:.3f}" for k, v in rows.items()),
                  flush=True)
    print("\nmedians:")
    keys = list(results[builds[-1][0]])
    print(f"{'':<18}" + "".join(f"{name:>14}" for name, _ in builds))
    for key in keys:
        print(f"{key:<18}" + "".join(
            f"{statistics.median(results[name][key]):>14.3f}" for name, _ in builds))


if __name__ == "__main__":
    main()
