"""Crash safety of hashes, sets, sorted sets, lists and streams (issue 13 section 1): a
server killed with SIGKILL in the middle of multi-field HSETs, SADDs, multi-member ZADDs
(every member re-scored: member records and score index rewritten), RPUSHes, LPOPs and DELs
of whole collections, or of XADDs, XREADGROUPs and XACKs, keeps every acknowledged write,
never shows half of a command (all fields of one HSET, all members of one ZADD, carry the
same value), and, once restarted, its purger leaves no member, score index or stream group
record that no live key names."""

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


# -- streams (XADD, XREADGROUP, XACK) -----------------------------------------------------------

STREAMS = [f"x{i}" for i in range(3)]


def _audit_streams_offline(path: Path) -> None:
    """Every entry record belongs to a live stream and their number is its length; every
    group-range record belongs to a live stream, which has its anchor; no garbage left."""
    from shaledb.server.keyspace.dbmap import MAP_KEY, decode_map
    from shaledb.server.keyspace.values import TAG_STREAM, coll_ref_of, id_of

    with shaledb.open(path) as db:
        sizes: dict[int, int] = {}
        streams: set[int] = set()
        for phys in decode_map(db.get(MAP_KEY)):
            for _, raw in db.range(bytes((phys,)), bytes((phys + 1,))):
                ref = coll_ref_of(raw)
                if ref is not None:
                    sizes[ref.id] = ref.size
                    if ref.kind == TAG_STREAM:
                        streams.add(ref.id)
        present = dict.fromkeys(sizes, 0)
        for mk, _ in db.range(b"\xf2", b"\xf3"):
            assert id_of(mk) in present, f"entry record of no live stream {mk.hex()}"
            present[id_of(mk)] += 1
        assert present == sizes, "entry records leaked or missing"
        anchors = set()
        for gk, _ in db.range(b"\xf5", b"\xf6"):
            assert id_of(gk) in streams, f"group record of no live stream {gk.hex()}"
            if gk[9:] == b"\x00":
                anchors.add(id_of(gk))
        assert anchors == streams, "a live stream without its anchor record"
        assert next(db.range(b"\xf3", b"\xf4"), None) is None, "member garbage left"


def test_sigkill_keeps_acknowledged_xadds_and_xacks(tmp_path: Path) -> None:
    """XADD, XREADGROUP and XACK under SIGKILL: every acknowledged XADD is there with its
    fields, every entry delivered and not acknowledged is pending, every acknowledged XACK
    stays acknowledged; only the one command in flight may or may not have happened."""
    data = tmp_path / "db"
    port = free_port()
    proc = run_server_process(data, port)
    c0 = _client(port)
    for key in STREAMS:
        c0.xgroup_create(key, "g", id="$", mkstream=True)
    added: dict[str, dict[bytes, bytes]] = {k: {} for k in STREAMS}  # id -> value
    pending: dict[str, set[bytes]] = {k: set() for k in STREAMS}
    acked: dict[str, set[bytes]] = {k: set() for k in STREAMS}
    inflight: list[tuple[str, str, Any] | None] = [None]
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
                key = rng.choice(STREAMS)
                r = rng.random()
                if r < 0.6:
                    inflight[0] = ("xadd", key, n)
                    sid = c.xadd(key, {"n": n, "pad": "p" * 50})
                    added[key][sid] = b"%d" % n
                elif r < 0.8:
                    inflight[0] = ("read", key, None)
                    got = c.xreadgroup("g", "worker", {key: ">"}, count=5)
                    for _, entries in got:
                        pending[key].update(sid for sid, _ in entries)
                elif pending[key]:
                    ids = rng.sample(sorted(pending[key]), min(3, len(pending[key])))
                    inflight[0] = ("xack", key, ids)
                    assert c.xack(key, "g", *ids) == len(ids)
                    pending[key].difference_update(ids)
                    acked[key].update(ids)
                inflight[0] = None
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
            pass  # the SIGKILL
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    try:
        for cycle in range(2):
            stop.clear()
            t = threading.Thread(target=churn, args=(100 + cycle,))
            t.start()
            time.sleep(0.8 + 0.4 * cycle)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            stop.set()
            t.join(30)
            assert errors == []
            proc = run_server_process(data, port)
            c = _client(port)
            op = inflight[0]
            for key in STREAMS:
                entries = dict(c.xrange(key))
                extra = set(entries) - set(added[key])
                assert set(added[key]) <= set(entries), f"{key}: an acknowledged XADD is lost"
                for sid, value in added[key].items():
                    assert entries[sid] == {b"n": value, b"pad": b"p" * 50}
                if extra:  # only the XADD in flight may have happened
                    assert op is not None and op[:2] == ("xadd", key) and len(extra) == 1
                    sid = extra.pop()
                    assert entries[sid][b"n"] == b"%d" % op[2]
                    added[key][sid] = b"%d" % op[2]
                pel = {p["message_id"]
                       for p in c.xpending_range(key, "g", "-", "+", 100_000)}
                maybe_acked = set(op[2]) if op is not None and op[:2] == ("xack", key) \
                    else set()
                assert pending[key] - maybe_acked <= pel, f"{key}: a pending entry is lost"
                assert not (acked[key] & pel), f"{key}: an acknowledged XACK came back"
                unexplained = pel - pending[key]
                if unexplained:  # only the XREADGROUP in flight may have delivered them
                    assert op is not None and op[:2] == ("read", key), unexplained
                pending[key] = pel
                acked[key] |= maybe_acked - pel
                assert c.xlen(key) == len(entries)
            inflight[0] = None
        c = _client(port)
        c.delete(STREAMS[0])  # a dropped stream's entries and groups are reclaimed too
        deadline = time.monotonic() + 30
        while c.info("shaledb")["member_garbage_pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _audit_streams_offline(data)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
