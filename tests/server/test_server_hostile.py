"""Hostile clients against ``shaledb serve`` (issue 10, "Server hardening"): the mix of
:mod:`bench.hostile` -- reset storms, slowloris (plain, TLS handshake, /health), MGET and
pipeline amplification, APPEND and CLIENT SETNAME with big arguments, big values written and
deleted, KEYS/SCAN pattern bombs, a SCAN-cursor flood, fd floods past maxclients (plain and
TLS handshakes never started), unauthenticated oversized requests -- against a real server
process, while a well-behaved client and PING and /health probes measure.

The server gets small limits so that the memory bound means something: maxclients 200,
client-output-buffer-limit 8 MiB, proto-max-bulk-len 4 MiB, client-query-buffer-limit
8 MiB, a 2 MiB memtable, an open files limit of 1024 (:class:`bench.hostile.Limits`).
Asserted (:func:`bench.hostile.verdict`): the process is alive and a fresh client can write
at the end; peak RSS (VmHWM) <= :func:`bench.hostile.rss_bound` (the RSS after the warm-up +
the engine's block cache and two memtables + 64 KiB per client slot + a full query and
output buffer, twice, for each of the 7 attack connections that move big data: ~380 MiB,
where one unbounded MGET alone builds gigabytes); worst PING latency <= 500 ms and p99 <=
200 ms, on a persistent and on new connections; the well-behaved client saw only right
values and no error (a refusal at maxclients while reconnecting is the one documented
error); every GET /health answered 200; every unauthenticated oversized request was refused;
every MGET amplification was cut off by the output limit; and every attack really ran.

``test_hostile_mix_short`` (``make test``) runs the mix for SHALEDB_HOSTILE_SHORT_SECONDS
(20); ``test_hostile_mix_soak`` (``make soak``) for SHALEDB_HOSTILE_SOAK_SECONDS (300).
``python -m bench.hostile --target both`` runs the same mix against Redis 7 for comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bench.hostile import (
    MAX_PING_MS,
    P99_PING_MS,
    Limits,
    Report,
    run_mix,
    start_shaledb,
    table,
    verdict,
)

# Latency and wall-clock bounds: `make test` runs these alone, after the parallel run.
pytestmark = pytest.mark.timing

SHORT_SECONDS = float(os.environ.get("SHALEDB_HOSTILE_SHORT_SECONDS", "20"))
SOAK_SECONDS = float(os.environ.get("SHALEDB_HOSTILE_SOAK_SECONDS", "300"))
MAX_PING = float(os.environ.get("SHALEDB_HOSTILE_MAX_PING_MS", str(MAX_PING_MS)))
P99_PING = float(os.environ.get("SHALEDB_HOSTILE_P99_PING_MS", str(P99_PING_MS)))


def _run(tmp_path: Path, seconds: float) -> Report:
    target = start_shaledb(tmp_path / "shaledb", Limits())
    try:
        report = run_mix(target, seconds)
    finally:
        status = target.stop()
    print(table([report]))
    problems = verdict(report, MAX_PING, P99_PING)
    if report.alive and status != 0:
        problems.append(f"SIGTERM after the mix: exit status {status}")
    assert not problems, "\n".join(
        ["the server failed under the hostile mix:", *(f"- {p}" for p in problems), "",
         table([report]), "", "server log (tail):", report.server_log_tail])
    return report


def test_hostile_mix_short(tmp_path: Path) -> None:
    _run(tmp_path, SHORT_SECONDS)


@pytest.mark.soak
def test_hostile_mix_soak(tmp_path: Path) -> None:
    _run(tmp_path, SOAK_SECONDS)
