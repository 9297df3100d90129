"""Measure what a background scrub pass costs a running server: CPU, and GET latency.

Creates a database at PATH first when PATH holds none (``--mib`` MiB of 200-byte values
under keys ``k000000000123``, compacted), then starts ``shaledb serve`` on it and measures,
with the scrub idle and then with a pass running at ``--rate`` bytes/s:

- the server process's CPU use (utime + stime from /proc, while no client is connected);
- the latency of GETs of random existing keys from one client, one request per round trip
  (p50, p99, p99.9 over ``--seconds`` seconds), and the GETs per second.

The page cache is left warm (the scrub re-reads what the OS caches). The data is not part of
the repository: put PATH outside it.

    .venv/bin/python scripts/scrub_cost.py /tmp/shaledb-scrub --mib 300 --rate 32mb
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time

import redis

import shaledb

BATCH = 1000


def build(path: str, mib: float) -> int:
    n = int(mib * (1 << 20)) // 216
    rng = random.Random(1)
    pool = rng.randbytes(1 << 20)
    with shaledb.open(path) as db:
        for start in range(0, n, BATCH):
            wb = shaledb.WriteBatch()
            for i in range(start, min(n, start + BATCH)):
                off = (i * 104_729) % ((1 << 20) - 200)
                # The server's keyspace: physical db byte, then the key; value: type tag 0.
                wb.put(b"\x00k%012d" % i, b"\x00" + pool[off:off + 200])
            db.write(wb)
        db.flush()
        db.compact_range()
    return n


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latencies(r: redis.Redis, n_keys: int, seconds: float) -> list[float]:
    rng = random.Random(2)
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        key = b"k%012d" % rng.randrange(n_keys)
        t0 = time.perf_counter()
        assert r.get(key) is not None
        out.append(time.perf_counter() - t0)
    return out


def show(label: str, lat: list[float], seconds: float) -> None:
    q = statistics.quantiles(lat, n=1000)
    print(f"{label:>14}: {len(lat) / seconds:8.0f} GET/s  p50 {q[499] * 1e6:6.0f} us  "
          f"p99 {q[989] * 1e6:6.0f} us  p99.9 {q[998] * 1e6:6.0f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--mib", type=float, default=300.0)
    ap.add_argument("--rate", default="32mb", help="scrub-rate (Redis units)")
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.path, "CURRENT")):
        t0 = time.perf_counter()
        build(args.path, args.mib)
        print(f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    n_keys = int(args.mib * (1 << 20)) // 216
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "shaledb.cli", "serve", "--port", str(port),
                             "--dir", args.path, "--metrics-port", "off", "--log-level",
                             "warning", "--scrub-rate", args.rate])
    try:
        r = redis.Redis(port=port)
        deadline = time.monotonic() + 60
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        latencies(r, n_keys, 2.0)  # warm up
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        idle_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        show("scrub idle", latencies(r, n_keys, args.seconds), args.seconds)
        r.execute_command("SCRUB", "NOW")
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.seconds)
        busy_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        info = r.info("scrub")
        assert info["scrub_in_progress"] == 1, "the pass ended: use a larger database"
        show("scrub running", latencies(r, n_keys, args.seconds), args.seconds)
        assert r.info("scrub")["scrub_in_progress"] == 1, "the pass ended too soon"
        done = r.info("scrub")["scrub_current_bytes"]
        print(f"server CPU: {idle_cpu:.1%} of a core idle, {busy_cpu:.1%} with the scrub "
              f"({args.rate}); the pass read {done / 1e6:.0f} MB so far")
        r.execute_command("SCRUB", "STOP")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
