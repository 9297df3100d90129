"""Replication throughput: writes/s a replica applies, against writes/s of a single node.

Starts `shaledb serve` subprocesses on loopback ports in a temporary directory:
1. a single node: redis-benchmark SET (random keys, 100-byte values, 50 clients, pipelines
   of ``--pipeline``) for ``--requests`` requests: the node's write rate;
2. a primary and one replica (asynchronous): the same benchmark against the primary, then
   the time until the replica's offset reaches the primary's: the replica's apply rate is
   requests / (time from the benchmark's start until the replica caught up);
3. the same with ``--sync-replicas 1``: the primary's write rate when every reply waits
   for the replica's durable acknowledgement.

Prints one line per run and writes bench-results/replication.json. Needs redis-benchmark.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
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
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server on {port} did not start")


def bench(port: int, requests: int, pipeline: int) -> float:
    out = subprocess.run(["redis-benchmark", "-h", HOST, "-p", str(port), "-t", "set",
                          "-n", str(requests), "-c", "50", "-d", "100", "-r", "100000",
                          "-P", str(pipeline), "--csv"], capture_output=True, text=True,
                         check=True).stdout
    line = [x for x in out.splitlines() if x.startswith('"SET"')][0]
    return float(line.split(",")[1].strip('"'))


def offset(port: int, field: str) -> int:
    return int(redis.Redis(host=HOST, port=port).info("replication")[field])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--pipeline", type=int, default=16)
    args = ap.parse_args()
    if shutil.which("redis-benchmark") is None:
        sys.exit("redis-benchmark is not installed (Debian package redis-tools)")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        single = start(root / "single", port)
        try:
            results["single_node_sets_per_s"] = bench(port, args.requests, args.pipeline)
        finally:
            single.terminate()
            single.wait(30)
        for mode, extra in (("async", ()), ("sync", ("--sync-replicas", "1"))):
            pport, rport = free_port(), free_port()
            primary = start(root / f"p-{mode}", pport, *extra)
            replica = start(root / f"r-{mode}", rport, "--replicaof", HOST, str(pport))
            try:
                deadline = time.monotonic() + 30
                while redis.Redis(host=HOST, port=rport).info("replication").get(
                        "master_link_status") != "up":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the replica did not connect")
                    time.sleep(0.05)
                if mode == "sync":
                    time.sleep(1.5)  # a first ACK: the replica counts as good
                t0 = time.monotonic()
                rate = bench(pport, args.requests, args.pipeline)
                target = offset(pport, "master_repl_offset")
                while offset(rport, "slave_repl_offset") < target:
                    time.sleep(0.005)
                caught = time.monotonic() - t0
                results[f"{mode}_primary_sets_per_s"] = rate
                results[f"{mode}_replica_applied_sets_per_s"] = args.requests / caught
            finally:
                for proc in (replica, primary):
                    proc.terminate()
                    proc.wait(30)
    for k, v in results.items():
        print(f"{k:36} {v:10.0f}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "replication.json").write_text(json.dumps(
        {"requests": args.requests, "pipeline": args.pipeline, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
