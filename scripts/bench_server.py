"""`make bench-server`: redis-benchmark against `shaledb serve` and a real redis-server in the
same run, on loopback ports, printing requests/s and the ShaleDB/Redis ratio.

Workload (issue 4): SET and GET, 50 clients, 100-byte values, random keys from 100,000,
one request per round trip and pipelines of 16. Redis runs with AOF and
`appendfsync everysec`, ShaleDB with its default `appendfsync everysec`: the same durability.
Then (issue 13) the data-type tests of redis-benchmark's default list, same clients and
values: INCR, LPUSH, RPUSH, LPOP, RPOP, SADD, HSET, SPOP, ZADD, ZPOPMIN, MSET (10 keys) and
LRANGE_100 / LRANGE_300 (the first 100 / 300 elements of a list its LPUSH filled), with fewer
requests (``--type-requests``, ``--lrange-requests``) since they are slower.
Then SET again with `appendfsync always` on both (every reply waits for an fsync; both
servers share one fsync among the writes of an event-loop iteration).
Both servers get fresh data directories in a temporary folder and are stopped at the end.
Needs redis-benchmark (redis-tools) and redis-server: installed with apt-get when run as
root, else the script says what is missing.

Each (test, pipeline) pair runs ``--repeat`` times, alternating ShaleDB and Redis so that both
see the same drift of a shared machine; the medians and their ratio are printed, written to
``bench-results/server.json`` and, unless ``--no-docs``, into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench-results", "server.json")


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
            sys.exit(f"bench-server: a server exited early ({proc.args!r})")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench-server: nothing listens on {HOST}:{port}")


# (tests, requests) per redis-benchmark run; the data-type tests are slower, so fewer requests.
Group = tuple[str, int]


def bench(tool: str, port: int, tests: str, requests: int, pipeline: int) -> dict[str, float]:
    """requests/s of each test, by its short name ("MSET (10 keys)" -> "MSET"); the LPUSH
    that only fills the list of the LRANGE tests is left out."""
    out = subprocess.run(
        [tool, "-h", HOST, "-p", str(port), "-t", tests, "-n", str(requests), "-c", "50",
         "-d", "100", "-r", "100000", "-P", str(pipeline), "--csv"],
        capture_output=True, check=True, timeout=600).stdout.decode()
    rows = csv.reader(io.StringIO(out))
    result: dict[str, float] = {}
    for row in rows:
        if len(row) < 2 or row[0] == "test" or "needed to benchmark" in row[0]:
            continue
        result[row[0].split(" (")[0]] = float(row[1])
    missing = {t.upper() for t in tests.split(",")} - result.keys()
    if missing:
        sys.exit(f"bench-server: redis-benchmark reported no {sorted(missing)} on port {port}")
    return result


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).stdout.decode().strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def run_mode(benchmark: str, redis_server: str, mode: str, groups: list[Group],
             repeat: int) -> list[dict[str, object]]:
    """Start ShaleDB and Redis with ``appendfsync mode`` on fresh directories, run each
    redis-benchmark group of ``(tests, requests)`` against both (alternating, ``repeat``
    times, pipelines of 1 and 16), stop them; one row per (test, pipeline) with the
    medians."""
    tmp = tempfile.mkdtemp(prefix="bench-server-")
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, object]] = []
    try:
        shale_port, redis_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "shaledb.cli", "serve", "--host", HOST, "--port",
             str(shale_port), "--dir", os.path.join(tmp, "shaledb"), "--log-level", "warning",
             "--metrics-port", "off", "--appendfsync", mode]))
        os.makedirs(os.path.join(tmp, "redis"))
        procs.append(subprocess.Popen(
            [redis_server, "--bind", HOST, "--port", str(redis_port), "--dir",
             os.path.join(tmp, "redis"), "--appendonly", "yes", "--appendfsync", mode,
             "--save", "", "--protected-mode", "yes", "--logfile", ""],
            stdout=subprocess.DEVNULL))
        wait_port(shale_port, procs[0])
        wait_port(redis_port, procs[1])
        for (tests, requests), pipeline in [(g, p) for g in groups for p in (1, 16)]:
            runs: dict[str, dict[str, list[float]]] = {"shaledb": {}, "redis": {}}
            for _ in range(repeat):
                for name, port in (("shaledb", shale_port), ("redis", redis_port)):
                    for test, rate in bench(benchmark, port, tests, requests,
                                            pipeline).items():
                        runs[name].setdefault(test, []).append(rate)
            for test in runs["shaledb"]:
                shale = statistics.median(runs["shaledb"][test])
                redis = statistics.median(runs["redis"][test])
                ratio = shale / redis if redis else float("nan")
                print(f"{test:<10} {pipeline:>8} {mode:>11} {requests:>8} {shale:>14,.0f} "
                      f"{redis:>12,.0f} {ratio:>6.2f}", flush=True)
                rows.append({"test": test, "pipeline": pipeline, "appendfsync": mode,
                             "requests": requests, "shaledb": shale, "redis": redis,
                             "ratio": ratio, "shaledb_runs": runs["shaledb"][test],
                             "redis_runs": runs["redis"][test]})
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
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000,
                        help="requests per test (default 100000)")
    parser.add_argument("--type-requests", type=int, default=20_000,
                        help="requests per data-type test: INCR, LPUSH, RPUSH, LPOP, RPOP, "
                             "SADD, HSET, SPOP, ZADD, ZPOPMIN, MSET (default 20000; 0 skips "
                             "them)")
    parser.add_argument("--lrange-requests", type=int, default=2_000,
                        help="requests per LRANGE_100 / LRANGE_300 test (default 2000; 0 "
                             "skips them)")
    parser.add_argument("--always-requests", type=int, default=20_000,
                        help="requests per SET test with appendfsync always (default 20000; "
                             "0 skips those tests)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each test per server; medians are reported (default 3)")
    parser.add_argument("--json", default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not regenerate docs/benchmarks.md")
    args = parser.parse_args()
    benchmark = ensure("redis-benchmark", "redis-tools")
    redis_server = ensure("redis-server", "redis-server")
    print(f"redis-benchmark -c 50 -d 100 -r 100000, loopback, {os.cpu_count()} cores; "
          f"ShaleDB and redis-server {redis_server} (AOF) with the same appendfsync; "
          f"medians of {args.repeat} runs")
    print(f"{'test':<10} {'pipeline':>8} {'appendfsync':>11} {'requests':>8} "
          f"{'ShaleDB req/s':>14} {'Redis req/s':>12} {'ratio':>6}")
    groups: list[Group] = [("set,get", args.requests)]
    if args.type_requests:
        groups.append(("incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,zpopmin,mset",
                       args.type_requests))
    if args.lrange_requests:
        groups.append(("lrange_100,lrange_300", args.lrange_requests))
    rows = run_mode(benchmark, redis_server, "everysec", groups, args.repeat)
    if args.always_requests:
        rows += run_mode(benchmark, redis_server, "always", [("set", args.always_requests)],
                         args.repeat)
    data = {
        "meta": {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["scripts/bench_server.py", *sys.argv[1:]]),
            "requests": args.requests, "repeat": args.repeat, "clients": 50,
            "value_size": 100, "keyspace": 100_000, "cores": os.cpu_count(),
            "cpu": _cpu_model(), "python": platform.python_version(),
            "redis_server": _version([redis_server, "--version"]).split(" sha=")[0],
            "redis_benchmark": _version([benchmark, "--version"]),
            "shaledb_commit": _version(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
            "durability": "both servers run with the same appendfsync: everysec (the log is "
                          "appended before the reply, fsync every second) or always (the "
                          "reply waits for the fsync)",
        },
        "results": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(data, f, indent=1)
    print(f"bench-server: results in {args.json}", file=sys.stderr)
    if not args.no_docs:
        sys.path.insert(0, ROOT)
        from bench import report
        results = os.path.join(ROOT, "bench-results")
        md = report.write_docs(
            Path(results, "latest.json"), Path(results, "scale.json"),
            report.ROOT / "docs", server_json=Path(args.json))
        print(f"bench-server: wrote {md}", file=sys.stderr)


if __name__ == "__main__":
    main()
