"""A short redis-benchmark run against a real server: the standard Redis load tool works
unchanged (its handshake, pipelines, random keys) and every request is answered."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess

import pytest

from ._server_support import HOST, ServerThread


def _redis_benchmark() -> str:
    path = shutil.which("redis-benchmark")
    if path is None:
        pytest.skip("redis-benchmark is not installed (Debian package redis-tools; "
                    "`make test` installs it when run as root)")
    return path


@pytest.mark.parametrize("pipeline", [1, 16])
def test_redis_benchmark_smoke(server: ServerThread, pipeline: int) -> None:
    tool = _redis_benchmark()
    n, keyspace = 2000, 500
    out = subprocess.run(
        [tool, "-h", HOST, "-p", str(server.port), "-t", "set,get,incr,mset", "-n", str(n),
         "-c", "10", "-d", "100", "-r", str(keyspace), "-P", str(pipeline), "--csv"],
        capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    rows = {row[0]: row for row in csv.reader(io.StringIO(out.stdout.decode()))
            if row and row[0] != "test"}
    # redis-benchmark names MSET by its key count.
    assert {"SET", "GET", "INCR"} <= rows.keys(), out.stdout.decode()
    assert any(name.startswith("MSET") for name in rows), out.stdout.decode()
    for name, row in rows.items():
        assert float(row[1]) > 0, (name, row)
    # The load really reached the keyspace: every INCR was counted once, and the random
    # keys SET and MSET wrote hold values of the requested size.
    r = server.client()
    counters = r.keys("counter:*")
    assert counters and sum(int(r.get(k)) for k in counters) == n
    keys = r.keys("key:*")
    assert 0 < len(keys) <= keyspace
    assert {len(v) for v in r.mget(keys)} == {100}
