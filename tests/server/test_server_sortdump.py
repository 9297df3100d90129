"""Keys across types for sorted sets and streams (issue 13 section 1): SORT / SORT_RO of a
sorted set, DUMP/RESTORE of sorted sets and streams in Redis' RDB format (checked both ways
against a real redis-server 7 when installed), OBJECT ENCODING of both. Every test talks to
a server over a socket."""

from __future__ import annotations

from pathlib import Path

import redis

from ._server_support import real_redis

_SORTS = [
    [],
    ["ALPHA"],
    ["DESC"],
    ["ALPHA", "DESC", "LIMIT", "1", "2"],
    ["BY", "nosort"],
    ["BY", "nosort", "DESC"],
    ["BY", "nosort", "LIMIT", "1", "2"],
    ["BY", "nosort", "DESC", "LIMIT", "1", "2"],
    ["BY", "nosort", "LIMIT", "0", "10"],
    ["BY", "nosort", "LIMIT", "9", "2"],
    ["BY", "nosort", "DESC", "LIMIT", "-5", "3"],
    ["BY", "w_*", "GET", "#", "GET", "w_*"],
    ["BY", "nosort", "GET", "w_*", "DESC"],
]


def _fill_sortable(c: redis.Redis) -> None:
    c.zadd("z", {"7": 3, "10": 1, "2": 2, "30": 10, "5": -1})
    c.rpush("l", "7", "10", "2", "30", "5")
    for i, m in enumerate(["7", "10", "2", "30", "5"]):
        c.set(f"w_{m}", 100 - i)


def test_sort_of_a_sorted_set_and_of_a_list_without_sorting_is_redis(
        r: redis.Redis, tmp_path: Path) -> None:
    """SORT sorts a sorted set's members as a set's; with BY and no ``*`` it gives them in
    score order (DESC: from the highest), reading only the LIMIT range, and a list in its
    order reversed by DESC: the same replies as a real Redis 7, SORT_RO and STORE too."""
    with real_redis(tmp_path) as real:
        _fill_sortable(real)
        _fill_sortable(r)
        for key in ("z", "l"):
            for args in _SORTS:
                want = real.execute_command("SORT", key, *args)
                assert r.execute_command("SORT", key, *args) == want, (key, args)
                assert r.execute_command("SORT_RO", key, *args) == want, (key, args)
                n = real.execute_command("SORT", key, *args, "STORE", "dst")
                assert r.execute_command("SORT", key, *args, "STORE", "dst") == n
                assert r.lrange("dst", 0, -1) == real.lrange("dst", 0, -1), (key, args)
    r.xadd("st", {"a": "1"})
    try:
        r.sort("st")
        raise AssertionError("SORT of a stream must fail")
    except redis.ResponseError as exc:
        assert str(exc).startswith("WRONGTYPE")
