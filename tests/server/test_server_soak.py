"""Server crash loop (``make soak``, not part of ``make test``): kill -9 ``shaledb serve``
again and again while clients overwrite keys, count, write atomic pairs (MULTI/EXEC and
KBATCH), push and pop lists, update hashes and sorted sets, append to streams, run Lua
scripts that write two keys, and flush a database; after every restart the data must match
what was acknowledged.

Each client owns its keys, so its model is exact: a key holds its last acknowledged value,
or the value of the one request that was in flight when the server died (its outcome is
unknown). Pairs written atomically must be equal. In database 1 a flusher writes keys
tagged with a generation and runs FLUSHDB between generations: no key of a generation older
than the last acknowledged flush may come back. The model then adopts what the restarted
server holds, and the loop goes on with the same directory.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._server_support import HOST, free_port, run_server_process

ITERATIONS = int(os.environ.get("SHALEDB_SERVER_SOAK_ITERATIONS", "40"))
WORKERS = 3
#: Workers on lists, hashes, sorted sets, streams and scripts (database 2).
TYPES_WORKERS = 2
KEYS = 50


@dataclass
class Model:
    """What one worker knows: acknowledged values and the request in flight."""

    values: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    counter: int = 0
    counter_pending: bool = False
    ops: int = 0


@dataclass
class FlushModel:
    """The flusher of database 1: the generation after the last acknowledged FLUSHDB."""

    generation: int = 0
    pending_flush: bool = False
    written: set[str] = field(default_factory=set)  # acknowledged in ``generation``


def _client(port: int, db: int = 0) -> redis.Redis:
    # No retries: a retried INCR after a lost reply would count twice.
    return redis.Redis(host=HOST, port=port, db=db, socket_timeout=10,
                       socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))


DIED = (redis.ConnectionError, redis.TimeoutError, OSError)


def _worker(port: int, w: int, model: Model, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    c = _client(port)
    try:
        while not stop.is_set():
            n = rng.randrange(10**9)
            op = rng.random()
            if op < 0.5:
                key = f"w{w}:k{rng.randrange(KEYS)}"
                model.pending = {key: n}
                c.set(key, n)
                model.values[key] = n
            elif op < 0.65:
                model.counter_pending = True
                model.counter = int(c.incr(f"w{w}:counter"))
                model.counter_pending = False
            elif op < 0.8:
                a, b = f"w{w}:pa", f"w{w}:pb"
                model.pending = {a: n, b: n}
                pipe = c.pipeline(transaction=True)
                pipe.set(a, n).set(b, n)
                pipe.execute()
                model.values.update({a: n, b: n})
            else:
                keys = [f"w{w}:b{i}" for i in range(3)]
                model.pending = dict.fromkeys(keys, n)
                c.execute_command("KBATCH", *(x for k in keys for x in ("SET", k, n)))
                model.values.update(dict.fromkeys(keys, n))
            model.pending = {}
            model.ops += 1
    except DIED:
        pass  # the server died under us: the request in flight has no known outcome
    finally:
        c.close()


def _flusher(port: int, fm: FlushModel, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    c = _client(port, db=1)
    try:
        while not stop.is_set():
            if rng.random() < 0.1:
                fm.pending_flush = True
                c.flushdb()
                fm.generation += 1
                fm.written = set()
                fm.pending_flush = False
            else:
                key = f"g{fm.generation}:{rng.randrange(10**6)}"
                c.set(key, "x")
                fm.written.add(key)
    except DIED:
        pass
    finally:
        c.close()


def _check_and_adopt(port: int, models: list[Model], fm: FlushModel) -> None:
    c = _client(port)
    try:
        for w, m in enumerate(models):
            keys = sorted(set(m.values) | set(m.pending))
            got = dict(zip(keys, c.mget(keys), strict=True)) if keys else {}
            for k in keys:
                allowed = {m.values.get(k), m.pending.get(k)} - {None}
                value = None if got[k] is None else int(got[k])
                if k in m.values:
                    assert value in allowed, (w, k, value, allowed)
                else:  # only ever written by the request in flight
                    assert value is None or value in allowed, (w, k, value, allowed)
                if value is not None:
                    m.values[k] = value
            pairs = [(f"w{w}:pa", f"w{w}:pb"), (f"w{w}:b0", f"w{w}:b1", f"w{w}:b2")]
            for group in pairs:
                vals = c.mget(group)
                assert len(set(vals)) == 1, (w, group, vals)  # atomic: all or none
            counter = int(c.get(f"w{w}:counter") or 0)
            expected = (m.counter, m.counter + 1) if m.counter_pending else (m.counter,)
            assert counter in expected, (w, counter, expected)
            m.counter, m.counter_pending, m.pending = counter, False, {}
    finally:
        c.close()
    c = _client(port, db=1)
    try:
        present = {k.decode() for k in c.keys("*")}
        gens = {int(k.split(":")[0][1:]) for k in present}
        floor = fm.generation
        # Nothing written before the last acknowledged flush comes back.
        assert not gens or min(gens) >= floor, (sorted(gens), floor)
        if not fm.pending_flush:
            assert fm.written <= present, sorted(fm.written - present)[:5]
        fm.generation = max(gens | {floor})
        fm.written = {k for k in present if k.startswith(f"g{fm.generation}:")}
        fm.pending_flush = False
    finally:
        c.close()


#: A script that writes two keys: both move together or neither (scripts are atomic).
_SCRIPT = ("local n = redis.call('INCR', KEYS[1]) "
           "redis.call('HSET', KEYS[2], 'c', n) return n")


def _empty_types() -> dict[str, Any]:
    return {"list": [], "hash": {}, "zset": {}, "stream": [], "script": 0}


@dataclass
class TypesModel:
    """One types worker's acknowledged collections (list, hash, sorted set, stream, script
    counter) and the operation in flight, as a function from a state to the state it makes
    (its outcome is unknown after a kill)."""

    state: dict[str, Any] = field(default_factory=_empty_types)
    pending: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    pending_xadd: bool = False
    ops: int = 0


def _with(state: dict[str, Any], kind: str, value: Any) -> dict[str, Any]:
    return {**state, kind: value}


def _types_worker(port: int, w: int, model: TypesModel, stop: threading.Event,
                  seed: int) -> None:
    rng = random.Random(seed)
    c = _client(port, db=2)
    script = c.register_script(_SCRIPT)
    lk, hk, zk, xk, sk, shk = (f"w{w}:{x}" for x in ("list", "hash", "zset", "stream", "sc",
                                                      "sh"))
    try:
        while not stop.is_set():
            st = model.state
            n = rng.randrange(10**6)
            op = rng.random()
            if op < 0.2:
                model.pending = lambda s, n=n: _with(s, "list", [*s["list"], n])
                c.rpush(lk, n)
            elif op < 0.35:
                model.pending = lambda s: _with(s, "list", s["list"][1:])
                got = c.lpop(lk)
                want = st["list"][0] if st["list"] else None
                assert (None if got is None else int(got)) == want, (w, got, want)
            elif op < 0.5:
                f = f"f{rng.randrange(10)}"
                model.pending = lambda s, f=f, n=n: _with(s, "hash", {**s["hash"], f: n})
                c.hset(hk, f, n)
            elif op < 0.55:
                f = f"f{rng.randrange(10)}"
                model.pending = lambda s, f=f: _with(
                    s, "hash", {k: v for k, v in s["hash"].items() if k != f})
                c.hdel(hk, f)
            elif op < 0.7:
                m = f"m{rng.randrange(20)}"
                model.pending = lambda s, m=m, n=n: _with(s, "zset", {**s["zset"], m: n})
                c.zadd(zk, {m: n})
            elif op < 0.75:
                m = f"m{rng.randrange(20)}"
                model.pending = lambda s, m=m: _with(
                    s, "zset", {k: v for k, v in s["zset"].items() if k != m})
                c.zrem(zk, m)
            elif op < 0.85:
                model.pending, model.pending_xadd = None, True
                sid = c.xadd(xk, {"n": n}, maxlen=50, approximate=False).decode()
                ids = [*st["stream"], sid][-50:]
                model.state = _with(st, "stream", ids)
                model.pending_xadd = False
                model.ops += 1
                continue
            else:
                model.pending = lambda s: _with(s, "script", s["script"] + 1)
                assert int(script(keys=[sk, shk])) == st["script"] + 1
            assert model.pending is not None
            model.state = model.pending(st)
            model.pending = None
            model.ops += 1
    except DIED:
        pass  # the server died under us: the request in flight has no known outcome
    finally:
        c.close()


def _check_and_adopt_types(port: int, models: list[TypesModel]) -> None:
    c = _client(port, db=2)
    try:
        for w, m in enumerate(models):
            lk, hk, zk, xk, sk, shk = (f"w{w}:{x}" for x in ("list", "hash", "zset",
                                                              "stream", "sc", "sh"))
            script = int(c.get(sk) or 0)
            mirrored = c.hget(shk, "c")
            assert script == int(mirrored or 0), (w, script, mirrored)  # atomic script
            ids = [sid.decode() for sid, _ in c.xrange(xk)]
            actual = {
                "list": [int(x) for x in c.lrange(lk, 0, -1)],
                "hash": {k.decode(): int(v) for k, v in c.hgetall(hk).items()},
                "zset": {k.decode(): int(v) for k, v in c.zrange(zk, 0, -1, withscores=True)},
                "stream": ids,
                "script": script,
            }
            allowed = [m.state]
            if m.pending is not None:
                allowed.append(m.pending(m.state))
            if m.pending_xadd:  # one more entry, after every acknowledged one
                acked = m.state["stream"]
                extra = ids[-1:] if ids and ids[-1] not in acked else []
                if extra and (not acked or extra[0] > acked[-1]):
                    allowed.append(_with(m.state, "stream", [*acked, *extra][-50:]))
            assert actual in allowed, (w, actual, allowed)
            m.state, m.pending, m.pending_xadd = actual, None, False
    finally:
        c.close()


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["everysec", "always"])
def test_server_crash_loop_soak(tmp_path: Path, mode: str) -> None:
    seed = int(os.environ.get("SHALEDB_SOAK_SEED", str(random.randrange(1 << 30))))
    print(f"server soak seed {seed}")
    rng = random.Random(seed)
    data = tmp_path / "db"
    port = free_port()
    models = [Model() for _ in range(WORKERS)]
    types = [TypesModel() for _ in range(TYPES_WORKERS)]
    fm = FlushModel()
    total_ops = 0
    for iteration in range(ITERATIONS):
        proc = run_server_process(data, port, "--appendfsync", mode)
        try:
            if iteration:
                _check_and_adopt(port, models, fm)
                _check_and_adopt_types(port, types)
            stop = threading.Event()
            threads = [threading.Thread(target=_worker,
                                        args=(port, w, models[w], stop, rng.random()))
                       for w in range(WORKERS)]
            threads.append(threading.Thread(target=_flusher,
                                            args=(port, fm, stop, rng.random())))
            threads += [threading.Thread(target=_types_worker,
                                         args=(port, w, types[w], stop, rng.random()))
                        for w in range(TYPES_WORKERS)]
            before = sum(m.ops for m in models) + sum(m.ops for m in types)
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.2, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
        total_ops += sum(m.ops for m in models) + sum(m.ops for m in types) - before
    proc = run_server_process(data, port, "--appendfsync", mode)
    try:
        _check_and_adopt(port, models, fm)
        _check_and_adopt_types(port, types)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert total_ops > ITERATIONS * 20, f"only {total_ops} operations: proves little"
    print(f"{ITERATIONS} kills, {total_ops} acknowledged operations, "
          f"{fm.generation} flush generations")
