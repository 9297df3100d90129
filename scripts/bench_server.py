"""`make bench-server`: redis-benchmark against `shaledb serve` and a real redis-server in the
same run, on loopback ports, printing requests/s and the ShaleDB/Redis ratio.

Workload (issue 4): SET and GET, 50 clients, 100-byte values, random keys from 100,000,
one request per round trip and pipelines of 16. Redis runs with AOF and
`appendfsync everysec`, ShaleDB with its default `appendfsync everysec`: the same durability.
Both servers get fresh data directories in a temporary folder and are stopped at the end.
Needs redis-benchmark (redis-tools) and redis-server: installed with apt-get when run as
root, else the script says what is missing.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"


def ensure(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                          capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                           capture_output=True)
        path = shutil.which(tool)
    if path is None:
        sys.exit(f"bench-server: {tool} not found; install the Debian package {package}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench-server: a server exited early ({proc.args})")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench-server: nothing listens on {HOST}:{port}")


def bench(tool: str, port: int, requests: int, pipeline: int) -> dict[str, float]:
    out = subprocess.run(
        [tool, "-h", HOST, "-p", str(port), "-t", "set,get", "-n", str(requests), "-c", "50",
         "-d", "100", "-r", "100000", "-P", str(pipeline), "--csv"],
        capture_output=True, check=True, timeout=600).stdout.decode()
    rows = csv.reader(io.StringIO(out))
    result: dict[str, float] = {}
    for row in rows:
        if len(row) >= 2 and row[0] in ("SET", "GET"):
            result[row[0]] = float(row[1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000,
                        help="requests per test (default 100000)")
    args = parser.parse_args()
    benchmark = ensure("redis-benchmark", "redis-tools")
    redis_server = ensure("redis-server", "redis-server")
    tmp = tempfile.mkdtemp(prefix="bench-server-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        shale_port, redis_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port",
             str(shale_port), "--dir", os.path.join(tmp, "shaledb"), "--log-level", "warning"]))
        os.makedirs(os.path.join(tmp, "redis"))
        procs.append(subprocess.Popen(
            [redis_server, "--bind", HOST, "--port", str(redis_port), "--dir",
             os.path.join(tmp, "redis"), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--protected-mode", "yes", "--logfile", ""],
            stdout=subprocess.DEVNULL))
        wait_port(shale_port, procs[0])
        wait_port(redis_port, procs[1])
        print(f"redis-benchmark -c 50 -d 100 -r 100000 -n {args.requests}, loopback, "
              f"{os.cpu_count()} cores; ShaleDB and redis-server {redis_server} "
              "(AOF, appendfsync everysec)")
        print(f"{'test':<6} {'pipeline':>8} {'ShaleDB req/s':>14} {'Redis req/s':>12} "
              f"{'ratio':>6}")
        for pipeline in (1, 16):
            shale = bench(benchmark, shale_port, args.requests, pipeline)
            redis = bench(benchmark, redis_port, args.requests, pipeline)
            for test in ("SET", "GET"):
                ratio = shale[test] / redis[test] if redis.get(test) else float("nan")
                print(f"{test:<6} {pipeline:>8} {shale[test]:>14,.0f} {redis[test]:>12,.0f} "
                      f"{ratio:>6.2f}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
