"""Crash safety of hashes, sets, sorted sets and lists (issue 13 section 1): a server killed
with SIGKILL in the middle of multi-field HSETs, SADDs, multi-member ZADDs (every member
re-scored: member records and score index rewritten), RPUSHes, LPOPs and DELs of whole
collections keeps every acknowledged write, never shows half of a command (all fields of
one HSET, all members of one ZADD, carry the same value), and, once restarted, its purger
leaves no member or score index record that no live collection names."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import redis

import shaledb

from ._server_support import HOST, free_port, run_server_process

HASHES = [f"h{i}" for i in range(5)]
SETS = [f"s{i}" for i in range(5)]
ZSETS = [f"z{i}" for i in range(4)]
LISTS = [f"l{i}" for i in range(3)]
WIDTH = 40  # fields per HSET: one command, one batch


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=30)


def _apply(state: dict[str, Any], op: tuple[str, str, int]) -> None:
    kind, key, n = op
    if kind == "hset":
        state[key] = n
    elif kind == "sadd":
        state[key] = state.get(key, frozenset()) | {str(n)}
    elif kind == "zadd":
        state[key] = n
    elif kind == "rpush":
        state[key] = (*state.get(key, ()), str(n))
    elif kind == "lpop":
        rest = state.get(key, ())[1:]
        if rest:
            state[key] = rest
        else:
            state.pop(key, None)
    else:  # del
        state.pop(key, None)


def _audit_offline(path: Path) -> None:
    from shaledb.server.keyspace.dbmap import MAP_KEY, decode_map
    from shaledb.server.keyspace.values import (
        TAG_ZSET,
        coll_ref_of,
        id_of,
        score_key,
        unpack_score,
    )

    with shaledb.open(path) as db:
        sizes: dict[int, int] = {}
        zsets: set[int] = set()
        for phys in decode_map(db.get(MAP_KEY)):
            for _, raw in db.range(bytes((phys,)), bytes((phys + 1,))):
                ref = coll_ref_of(raw)
                if ref is not None:
                    sizes[ref.id] = ref.size
                    if ref.kind == TAG_ZSET:
                        zsets.add(ref.id)
        present: dict[int, int] = {}
        expected_index: set[bytes] = set()
        for mk, value in db.range(b"\xf2", b"\xf3"):
            present[id_of(mk)] = present.get(id_of(mk), 0) + 1
            if id_of(mk) in zsets:
                expected_index.add(score_key(id_of(mk), unpack_score(value), mk[9:]))
        assert present == sizes, "member records leaked or missing"
        assert next(db.range(b"\xf3", b"\xf4"), None) is None, "member garbage left"
        index = {k for k, _ in db.range(b"\xf4", b"\xf5")}
        assert index == expected_index, "score index records leaked, missing or stale"


def test_sigkill_keeps_acknowledged_collection_writes_whole(tmp_path: Path) -> None:
    data = tmp_path / "db"
    port = free_port()
    proc = run_server_process(data, port)
    acked: dict[str, Any] = {}
    inflight: list[tuple[str, str, int] | None] = [None]
    stop = threading.Event()
    errors: list[BaseException] = []
    counter = [0]

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        c = _client(port)
        try:
            while not stop.is_set():
                counter[0] += 1
                n = counter[0]
                r = rng.random()
                if r < 0.35:
                    key = rng.choice(HASHES)
                    op = ("hset", key, n)
                    inflight[0] = op
                    c.hset(key, mapping={f"f{i:02d}": n for i in range(WIDTH)})
                elif r < 0.55:
                    key = rng.choice(SETS)
                    op = ("sadd", key, n)
                    inflight[0] = op
                    c.sadd(key, str(n))
                elif r < 0.72:
                    key = rng.choice(ZSETS)
                    op = ("zadd", key, n)
                    inflight[0] = op
                    c.zadd(key, {f"f{i:02d}": n for i in range(WIDTH)})
                elif r < 0.82:
                    key = rng.choice(LISTS)
                    op = ("rpush", key, n)
                    inflight[0] = op
                    c.rpush(key, str(n))
                elif r < 0.9:
                    key = rng.choice(LISTS)
                    op = ("lpop", key, n)
                    inflight[0] = op
                    c.lpop(key)
                else:
                    key = rng.choice(HASHES + SETS + ZSETS + LISTS)
                    op = ("del", key, n)
                    inflight[0] = op
                    c.delete(key)
                _apply(acked, op)  # acknowledged
                inflight[0] = None
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
            pass  # the SIGKILL
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        for cycle in range(3):
            stop.clear()
            t = threading.Thread(target=churn, args=(cycle,))
            t.start()
            time.sleep(0.6 + 0.4 * cycle)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            stop.set()
            t.join(30)
            assert errors == []
            proc = run_server_process(data, port)
            c = _client(port)
            # Every acknowledged write is there, the one in flight wholly or not at all.
            possible = [dict(acked)]
            if inflight[0] is not None:
                after = dict(acked)
                _apply(after, inflight[0])
                possible.append(after)
            seen: dict[str, Any] = {}
            for key in HASHES:
                fields = c.hgetall(key)
                if fields:
                    values = set(fields.values())
                    assert len(fields) == WIDTH and len(values) == 1, (
                        f"{key} holds half of an HSET: {sorted(values)[:5]}")
                    seen[key] = int(values.pop())
            for key in SETS:
                members = c.smembers(key)
                if members:
                    seen[key] = frozenset(m.decode() for m in members)
            for key in ZSETS:
                items = c.zrange(key, 0, -1, withscores=True)
                if items:
                    scores = {sc for _, sc in items}
                    assert len(items) == WIDTH and len(scores) == 1, (
                        f"{key} holds half of a ZADD: {sorted(scores)[:5]}")
                    score = scores.pop()
                    # The score index agrees with the member records.
                    assert c.zcount(key, score, score) == WIDTH
                    assert [m for m, _ in items] == [b"f%02d" % i for i in range(WIDTH)]
                    seen[key] = int(score)
            for key in LISTS:
                values = c.lrange(key, 0, -1)
                if values:
                    seen[key] = tuple(v.decode() for v in values)
            assert seen in possible, (cycle, inflight[0])
            if inflight[0] is not None and seen == possible[-1]:
                _apply(acked, inflight[0])
            inflight[0] = None
            assert c.dbsize() == len(seen)
        c = _client(port)
        deadline = time.monotonic() + 30
        while c.info("shaledb")["member_garbage_pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _audit_offline(data)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
