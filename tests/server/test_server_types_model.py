"""Model-based test of hashes, sets, lists, sorted sets and strings (issue 13 section 1):
random commands against a real server and a Python model side by side, with DEL, EXPIRE,
RENAME, COPY, MOVE, the set algebra, MULTI/EXEC and restarts of the server in between.
Every reply is compared, the whole keyspace is compared after every step and after each
restart, and at the end the directory is audited: every member record belongs to a live
collection whose header counts it, a sorted set has exactly one score index record per
member (with its score), no garbage is left once the purger ran, and the key counts are
exact."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from ._server_support import ServerThread, wait_until

KEYS = [f"k{i}" for i in range(6)]
FIELDS = [f"f{i}" for i in range(8)]
WRONG = "WRONGTYPE"

Model = dict[str, tuple[str, Any]]
#: A model step that expects an error reply (None is a reply: LPOP of a missing key).
_ERROR = object()


def _wait(cond: Callable[[], Any], timeout: float = 30.0) -> None:
    wait_until(cond, timeout, "condition", 0.02)


class Checker:
    """Runs one random operation on the server and on the model; returns what both said."""

    def __init__(self, rng: random.Random, model: list[Model]) -> None:
        self.rng = rng
        self.model = model  # one dict per database (0 and 1)

    def op(self) -> tuple[list[Any], Callable[[Model, Model], Any]]:
        """A command (argv) and the model's version of it (which returns the reply)."""
        rng = self.rng
        k, k2 = rng.choice(KEYS), rng.choice(KEYS)
        fields = rng.sample(FIELDS, rng.randint(1, 3))
        choice = rng.randrange(34)
        if choice >= 22:
            return self.op_zset_or_list(k, k2, choice - 22)
        if choice >= 20:  # SPOP: which member is random; checked against the model after
            def spop(m: Model, _: Model) -> Any:
                return _get(m, k, "set")  # the candidates (WRONGTYPE on another type)
            return ["SPOP", k], spop

        if choice < 4:
            pairs = [(f, str(rng.randrange(100))) for f in fields]

            def hset(m: Model, _: Model) -> Any:
                h = _get(m, k, "hash")
                new = {} if h is None else dict(h)
                added = sum(f not in new for f, _ in pairs)
                new.update(pairs)
                m[k] = ("hash", new)
                return added
            return ["HSET", k, *[x for p in pairs for x in p]], hset
        if choice < 6:
            def hdel(m: Model, _: Model) -> Any:
                h = _get(m, k, "hash")
                if h is None:
                    return 0
                new = {f: v for f, v in h.items() if f not in fields}
                n = len(h) - len(new)
                _store(m, k, "hash", new)
                return n
            return ["HDEL", k, *fields], hdel
        if choice < 7:
            f, n = fields[0], rng.randrange(-5, 6)

            def hincrby(m: Model, _: Model) -> Any:
                h = _get(m, k, "hash")
                new = {} if h is None else dict(h)
                old = new.get(f, "0")
                if not old.lstrip("-").isdigit():
                    raise ValueError("hash value is not an integer")
                new[f] = str(int(old) + n)
                m[k] = ("hash", new)
                return int(new[f])
            return ["HINCRBY", k, f, n], hincrby
        if choice < 10:
            members = [f"m{rng.randrange(10)}" for _ in range(rng.randint(1, 3))]

            def sadd(m: Model, _: Model) -> Any:
                s = _get(m, k, "set")
                new = set() if s is None else set(s)
                added = len(set(members) - new)
                m[k] = ("set", new | set(members))
                return added
            return ["SADD", k, *members], sadd
        if choice < 11:
            members = [f"m{rng.randrange(10)}" for _ in range(rng.randint(1, 3))]

            def srem(m: Model, _: Model) -> Any:
                s = _get(m, k, "set")
                if s is None:
                    return 0
                _store(m, k, "set", s - set(members))
                return len(s & set(members))
            return ["SREM", k, *members], srem
        if choice < 12:
            member = f"m{rng.randrange(10)}"

            def smove(m: Model, _: Model) -> Any:
                if k not in m:
                    return 0  # Redis answers 0 before looking at the destination's type
                src, dst = _get(m, k, "set"), _get(m, k2, "set")
                if src is None or member not in src:
                    return 0
                if k != k2:
                    _store(m, k, "set", src - {member})
                    m[k2] = ("set", (dst or set()) | {member})
                return 1
            return ["SMOVE", k, k2, member], smove
        if choice < 13:
            def sunionstore(m: Model, _: Model) -> Any:
                a, b = _get(m, k, "set"), _get(m, k2, "set")
                result = (a or set()) | (b or set())
                m.pop("dst", None)
                _store(m, "dst", "set", result)
                return len(result)
            return ["SUNIONSTORE", "dst", k, k2], sunionstore
        if choice < 14:
            def delete(m: Model, _: Model) -> Any:
                return int(m.pop(k, None) is not None)
            return ["DEL", k], delete
        if choice < 15:
            value = f"s{rng.randrange(100)}"

            def set_(m: Model, _: Model) -> Any:
                m[k] = ("string", value)
                return True
            return ["SET", k, value], set_
        if choice < 16:
            def expire_now(m: Model, _: Model) -> Any:
                return int(m.pop(k, None) is not None)
            return ["PEXPIREAT", k, 1], expire_now
        if choice < 17:
            def rename(m: Model, _: Model) -> Any:
                if k not in m:
                    raise ValueError("no such key")
                m[k2] = m.pop(k)
                return True
            return ["RENAME", k, k2], rename
        if choice < 18:
            def copy(m: Model, _: Model) -> Any:
                if k not in m or k == k2:
                    if k == k2:
                        raise ValueError("source and destination objects are the same")
                    return 0
                kind, v = m[k]
                m[k2] = (kind, v.copy() if hasattr(v, "copy") else v)
                return 1
            return ["COPY", k, k2, "REPLACE"], copy
        if choice < 19:
            def move(m: Model, m1: Model) -> Any:
                if k not in m or k in m1:
                    return 0
                m1[k] = m.pop(k)
                return 1
            return ["MOVE", k, 1], move

        def expire_later(m: Model, _: Model) -> Any:
            return int(k in m)
        return ["EXPIRE", k, 1000], expire_later

    def op_zset_or_list(self, k: str, k2: str, choice: int
                        ) -> tuple[list[Any], Callable[[Model, Model], Any]]:
        """Sorted set and list commands (``choice`` 0-11)."""
        rng = self.rng
        members = [f"m{rng.randrange(8)}" for _ in range(rng.randint(1, 3))]
        if choice < 3:
            opts = rng.choice([[], [], ["NX"], ["XX"], ["GT"], ["LT"], ["CH"], ["XX", "GT"],
                               ["LT", "CH"]])
            pairs = [(rng.choice([rng.randrange(-5, 6), rng.randrange(-5, 6), "inf", "-inf",
                                  "1.5"]), mem) for mem in members]

            def zadd(m: Model, _: Model) -> Any:
                z = _get(m, k, "zset")
                new = {} if z is None else dict(z)
                added = changed = 0
                for sc, mem in pairs:
                    score = float(sc)
                    cur = new.get(mem)
                    if cur is None:
                        if "XX" in opts:
                            continue
                        new[mem] = score
                        added += 1
                    elif "NX" in opts or ("GT" in opts and score <= cur) or (
                            "LT" in opts and score >= cur):
                        continue
                    elif score != cur:
                        new[mem] = score
                        changed += 1
                _store(m, k, "zset", new)
                return added + changed if "CH" in opts else added
            return ["ZADD", k, *opts, *[x for p in pairs for x in p]], zadd
        if choice < 4:
            n = rng.randrange(-3, 4)

            def zincrby(m: Model, _: Model) -> Any:
                z = _get(m, k, "zset")
                new = {} if z is None else dict(z)
                score = new.get(members[0], 0.0) + n
                if math.isnan(score):
                    raise ValueError("resulting score is not a number (NaN)")
                new[members[0]] = score
                m[k] = ("zset", new)
                return score  # redis-py's float
            return ["ZINCRBY", k, n, members[0]], zincrby
        if choice < 5:
            def zrem(m: Model, _: Model) -> Any:
                z = _get(m, k, "zset")
                if z is None:
                    return 0
                new = {mem: sc for mem, sc in z.items() if mem not in members}
                _store(m, k, "zset", new)
                return len(z) - len(new)
            return ["ZREM", k, *members], zrem
        if choice < 7:
            top = choice == 6
            count = rng.randint(1, 3)

            def zpop(m: Model, _: Model) -> Any:
                z = _get(m, k, "zset")
                if z is None:
                    return []
                order = sorted(z.items(), key=lambda item: (item[1], item[0]), reverse=top)
                got = order[:count]
                _store(m, k, "zset", dict(order[count:]))
                return [(mem, sc) for mem, sc in got]  # redis-py's pairs
            return ["ZPOPMAX" if top else "ZPOPMIN", k, count], zpop
        if choice < 8:
            lo, hi = sorted((rng.randrange(-5, 6), rng.randrange(-5, 6)))

            def zremrangebyscore(m: Model, _: Model) -> Any:
                z = _get(m, k, "zset")
                if z is None:
                    return 0
                new = {mem: sc for mem, sc in z.items() if not lo <= sc <= hi}
                _store(m, k, "zset", new)
                return len(z) - len(new)
            return ["ZREMRANGEBYSCORE", k, lo, hi], zremrangebyscore
        if choice < 9:
            def zunionstore(m: Model, _: Model) -> Any:
                result: dict[str, float] = {}
                for key in (k, k2):
                    got = m.get(key)
                    if got is not None and got[0] not in ("zset", "set"):
                        raise TypeError(WRONG)
                for key in (k, k2):
                    got = m.get(key)
                    if got is None:
                        continue
                    items = got[1].items() if got[0] == "zset" else ((x, 1.0) for x in got[1])
                    for mem, sc in items:
                        total = result.get(mem, 0.0) + sc
                        result[mem] = 0.0 if math.isnan(total) else total
                m.pop("dst", None)
                _store(m, "dst", "zset", result)
                return len(result)
            return ["ZUNIONSTORE", "dst", 2, k, k2], zunionstore
        if choice < 11:
            left = choice == 9

            def push(m: Model, _: Model) -> Any:
                lst = _get(m, k, "list")
                new = [] if lst is None else list(lst)
                for mem in members:
                    if left:
                        new.insert(0, mem)
                    else:
                        new.append(mem)
                m[k] = ("list", new)
                return len(new)
            return ["LPUSH" if left else "RPUSH", k, *members], push
        count = rng.randint(1, 3)
        left = rng.random() < 0.5

        def pop(m: Model, _: Model) -> Any:
            lst = _get(m, k, "list")
            if lst is None:
                return None
            got = lst[:count] if left else lst[::-1][:count]
            _store(m, k, "list", lst[count:] if left else lst[:len(lst) - count])
            return got
        return ["LPOP" if left else "RPOP", k, count], pop


def _get(m: Model, key: str, kind: str) -> Any:
    got = m.get(key)
    if got is None:
        return None
    if got[0] != kind:
        raise TypeError(WRONG)
    return got[1]


def _store(m: Model, key: str, kind: str, value: Any) -> None:
    if value:
        m[key] = (kind, value)
    else:
        m.pop(key, None)  # no empty hash or set


def _norm(reply: Any) -> Any:
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [_norm(x) for x in reply]
    if isinstance(reply, tuple):
        return tuple(_norm(x) for x in reply)
    return reply


def _spop(r: redis.Redis, argv: list[Any], fn: Callable[[Model, Model], Any],
          model: list[Model]) -> None:
    key = argv[1]
    try:
        candidates = fn(model[0], model[1])
    except TypeError:
        with pytest.raises(redis.ResponseError, match=WRONG):
            r.execute_command(*argv)
        return
    got = _norm(r.execute_command(*argv))
    if candidates is None:
        assert got is None
        return
    assert got in candidates, (argv, got, candidates)
    _store(model[0], key, "set", candidates - {got})


def _run(r: redis.Redis, argv: list[Any], fn: Callable[[Model, Model], Any],
         model: list[Model]) -> None:
    if argv[0] == "SPOP":
        _spop(r, argv, fn, model)
        return
    try:
        want: Any = fn(model[0], model[1])
        want_error = None
    except TypeError:
        want, want_error = None, WRONG
    except ValueError as exc:
        want, want_error = None, str(exc)
    try:
        got = _norm(r.execute_command(*argv))
    except redis.ResponseError as exc:
        assert want_error is not None and want_error in str(exc), (argv, str(exc), want)
        return
    assert want_error is None, (argv, got, want_error)
    if want is True:
        assert got in (True, b"OK", "OK"), (argv, got)
    else:
        assert got == want, (argv, got, want)


def _snapshot(r: redis.Redis) -> Model:
    out: Model = {}
    for raw in r.keys("*"):
        key = raw.decode()
        kind = r.type(key).decode()
        if kind == "hash":
            out[key] = ("hash", {f.decode(): v.decode() for f, v in r.hgetall(key).items()})
        elif kind == "set":
            out[key] = ("set", {m.decode() for m in r.smembers(key)})
        elif kind == "list":
            out[key] = ("list", [v.decode() for v in r.lrange(key, 0, -1)])
        elif kind == "zset":
            items = [(m.decode(), s) for m, s in r.zrange(key, 0, -1, withscores=True)]
            # ZRANGE's order is Redis' (score, then member bytes).
            assert items == sorted(items, key=lambda item: (item[1], item[0].encode()))
            out[key] = ("zset", dict(items))
        else:
            out[key] = ("string", r.get(key).decode())  # type: ignore[union-attr]
    assert r.dbsize() == len(out)
    return out


def _audit(st: ServerThread) -> None:
    """Member records belong to live collections, exactly as many as their headers say."""
    from shaledb.server.keyspace.values import (
        TAG_ZSET,
        coll_ref_of,
        id_of,
        score_key,
        unpack_score,
    )

    def walk() -> tuple[dict[int, int], dict[int, int], int, set[bytes], set[bytes]]:
        ks = st.server.keyspace  # type: ignore[union-attr]
        sizes: dict[int, int] = {}
        zsets: set[int] = set()
        for phys in ks.map:
            for _, raw in ks.raw_range(bytes((phys,)), bytes((phys + 1,))):
                ref = coll_ref_of(raw)
                if ref is not None:
                    assert ref.id not in sizes, "two headers name one collection"
                    sizes[ref.id] = ref.size
                    if ref.kind == TAG_ZSET:
                        zsets.add(ref.id)
        present: dict[int, int] = {}
        expected_index: set[bytes] = set()
        for mk, value in ks.raw_range(b"\xf2", b"\xf3"):
            cid = id_of(mk)
            present[cid] = present.get(cid, 0) + 1
            if cid in zsets:
                expected_index.add(score_key(cid, unpack_score(value), mk[9:]))
        garbage = sum(1 for _ in ks.raw_range(b"\xf3", b"\xf4"))
        index = {k for k, _ in ks.raw_range(b"\xf4", b"\xf5")}
        return sizes, present, garbage, expected_index, index

    sizes, present, garbage, expected_index, index = st.call(walk)
    assert present == sizes and garbage == 0
    assert index == expected_index, "the score index and the member records disagree"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_commands_match_the_model_across_restarts(
        seed: int, server_factory: Callable[..., ServerThread], tmp_path: Path) -> None:
    rng = random.Random(seed)
    path = tmp_path / "db"
    model: list[Model] = [{}, {}]
    checker = Checker(rng, model)
    st = server_factory(dir=str(path))
    for round_ in range(4):
        r = st.client(decode_responses=False)
        r1 = st.client(db=1)
        for step in range(150):
            if rng.random() < 0.08:  # a MULTI/EXEC of a few commands, one batch
                ops = [op for op in (checker.op() for _ in range(rng.randint(2, 4)))
                       if op[0][0] != "SPOP"]
                pipe = r.pipeline(transaction=True)
                wants = []
                for argv, fn in ops:
                    try:
                        wants.append(fn(model[0], model[1]))
                    except (TypeError, ValueError):
                        wants.append(_ERROR)  # checked below as an error reply
                    pipe.execute_command(*argv)
                results = pipe.execute(raise_on_error=False)
                for (argv, _), got, want in zip(ops, results, wants, strict=True):
                    if want is _ERROR:
                        assert isinstance(got, redis.ResponseError), (argv, got)
                    elif want is True:
                        assert got in (True, b"OK"), (argv, got)
                    else:
                        assert _norm(got) == want, (argv, got, want)
            else:
                argv, fn = checker.op()
                _run(r, argv, fn, model)
            if step % 10 == 0:
                assert _snapshot(r) == model[0], f"round {round_} step {step}"
                assert _snapshot(r1) == model[1]
        assert _snapshot(r) == model[0] and _snapshot(r1) == model[1]
        st.stop()
        st = server_factory(dir=str(path))  # reopen: everything acknowledged is there
        assert _snapshot(st.client()) == model[0] and _snapshot(st.client(db=1)) == model[1]
    r = st.client()
    _wait(lambda: r.info("shaledb")["member_garbage_pending"] == 0)
    _audit(st)
