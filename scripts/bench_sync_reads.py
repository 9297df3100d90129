"""Reads and writes on a sync-mode primary (``--sync-replicas 1``, one replica): what
holding reads to the acknowledged state costs (docs/design.md, "Reads in sync mode").

Starts a primary and a replica as ``shaledb serve`` subprocesses on loopback and runs
redis-benchmark (50 clients, pipelines of 16, 100-byte values, random keys) ``--runs``
times each: SET alone, GET alone, and GET while a SET benchmark runs at the same time (the
case where reads meet unacknowledged writes). Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start(data: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port", str(port),
           "--dir", str(data), "--log-level", "warning", "--metrics-port", "off", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server on {port} did not start")


def benchmark(port: int, test: str, requests: int) -> subprocess.Popen[str]:
    return subprocess.Popen(["redis-benchmark", "-h", HOST, "-p", str(port), "-t", test,
                             "-n", str(requests), "-c", "50", "-d", "100", "-r", "100000",
                             "-P", "16", "--csv"], stdout=subprocess.PIPE, text=True)


def rate(proc: subprocess.Popen[str], test: str) -> float:
    out, _ = proc.communicate()
    line = [x for x in out.splitlines() if x.startswith(f'"{test.upper()}"')][0]
    return float(line.split(",")[1].strip('"'))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pport, rport = free_port(), free_port()
        primary = start(Path(tmp) / "p", pport, "--sync-replicas", "1")
        replica = start(Path(tmp) / "r", rport, "--replicaof", HOST, str(pport))
        try:
            pc = redis.Redis(host=HOST, port=pport)
            deadline = time.monotonic() + 60
            while pc.info("replication").get("shaledb_good_replicas", 0) < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not connect")
                time.sleep(0.1)
            results: dict[str, list[float]] = {"SET": [], "GET": [], "GET during SET": []}
            for i in range(args.runs):
                results["SET"].append(rate(benchmark(pport, "set", args.requests), "set"))
                results["GET"].append(rate(benchmark(pport, "get", args.requests), "get"))
                writer = benchmark(pport, "set", args.requests)
                results["GET during SET"].append(
                    rate(benchmark(pport, "get", args.requests * 2), "get"))
                rate(writer, "set")
                print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s"
                                                    for k, v in results.items()), flush=True)
            info = pc.info("replication")
            print("medians: " + ", ".join(f"{k} {statistics.median(v):,.0f}/s"
                                          for k, v in results.items()))
            print(f"view reads {info.get('shaledb_sync_view_reads')}, held reads "
                  f"{info.get('shaledb_sync_held_reads')}")
        finally:
            for proc in (replica, primary):
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
