"""Work per command that must not grow with what the same transaction did before it
(issue 14): pops pipelined or queued in MULTI share one keyspace transaction, and each must
cost about what it costs alone. The bounds compare two workloads timed side by side on the
same server, so a slow or busy machine slows both."""

from __future__ import annotations

import time

import redis


def _exec_seconds(r: redis.Redis, commands: list[tuple[bytes, ...]]) -> tuple[float, list]:
    pipe = r.pipeline(transaction=True)
    for c in commands:
        pipe.execute_command(*c)
    start = time.perf_counter()
    replies = pipe.execute()
    return time.perf_counter() - start, replies


def test_pops_in_one_transaction_do_not_rewalk_what_it_popped(r: redis.Redis) -> None:
    """3,000 ZPOPMIN in one EXEC (one shared transaction, as a pipelined turn): each pop
    used to walk past every entry the transaction had already popped, and past every
    record it had buffered, so the EXEC took seconds (quadratic). Now it costs about as
    much as 3,000 ZSCOREs of the same set."""
    n = 3000
    for i in range(0, n, 500):
        r.zadd("z", {b"m%05d" % j: j for j in range(i, i + 500)})
    reads, scores = _exec_seconds(r, [(b"ZSCORE", b"z", b"m%05d" % j) for j in range(n)])
    assert scores == [float(j) for j in range(n)]
    pops, popped = _exec_seconds(r, [(b"ZPOPMIN", b"z")] * n)
    assert popped == [[b"m%05d" % j, float(j)] for j in range(n)]
    assert r.exists("z") == 0
    assert pops < 4 * reads + 0.5, (pops, reads)


def test_pops_from_the_high_end_and_readds_in_one_transaction(r: redis.Redis) -> None:
    """The walk that skips what the transaction popped must still see a member the same
    transaction adds back below (or above) that point, and nothing it popped."""
    r.zadd("z", {b"a": 1, b"b": 2, b"c": 3, b"d": 4, b"e": 5})
    pipe = r.pipeline(transaction=True)
    pipe.zpopmin("z")
    pipe.zpopmin("z")
    pipe.zadd("z", {b"a": 1})           # back below the skipped entries
    pipe.zpopmin("z")
    pipe.zpopmax("z")
    pipe.zpopmax("z")
    pipe.zadd("z", {b"z": 9})           # back above the ones popped from the top
    pipe.zpopmax("z")
    pipe.zrange("z", 0, -1, withscores=True)
    assert pipe.execute() == [
        [(b"a", 1.0)], [(b"b", 2.0)], 1, [(b"a", 1.0)], [(b"e", 5.0)], [(b"d", 4.0)], 1,
        [(b"z", 9.0)], [(b"c", 3.0)]]


def test_pops_around_a_failing_script_in_one_pipeline(r: redis.Redis) -> None:
    """A script that pops and then fails keeps its pop (as in Redis: no rollback); the
    pops after it in the same turn go on from there."""
    r.zadd("z", {b"a": 1, b"b": 2, b"c": 3, b"d": 4})
    r.set("s", "text")
    pipe = r.pipeline(transaction=False)
    pipe.zpopmin("z")
    pipe.eval("redis.call('ZPOPMIN', KEYS[1]); return redis.call('INCR', KEYS[2])", 2,
              "z", "s")
    pipe.zpopmin("z")
    pipe.zrange("z", 0, -1)
    replies = pipe.execute(raise_on_error=False)
    assert replies[0] == [(b"a", 1.0)]
    assert isinstance(replies[1], redis.ResponseError)
    assert replies[2:] == [[(b"c", 3.0)], [b"d"]]


def test_lrange_reads_the_committed_range_or_the_transactions_own(r: redis.Redis) -> None:
    """LRANGE walks the committed elements in one bounded engine range, or, inside a
    transaction that changed the list, the merged walk; both give Redis' answers."""
    r.rpush("l", *[b"v%03d" % i for i in range(300)])
    assert r.lrange("l", 0, 99) == [b"v%03d" % i for i in range(100)]
    assert r.lrange("l", 250, 1000) == [b"v%03d" % i for i in range(250, 300)]
    assert r.lrange("l", -3, -1) == [b"v297", b"v298", b"v299"]
    pipe = r.pipeline(transaction=True)
    pipe.lpop("l", 2)
    pipe.lpush("l", b"new")
    pipe.rpop("l")
    pipe.lrange("l", 0, 3)
    pipe.lrange("l", -2, -1)
    assert pipe.execute() == [[b"v000", b"v001"], 299, b"v299",
                              [b"new", b"v002", b"v003", b"v004"], [b"v297", b"v298"]]
    assert r.lrange("l", 0, 2) == [b"new", b"v002", b"v003"]
    big = b"x" * 70_000  # over SPLIT_BULK: encoded apart, not joined
    r.rpush("b", b"a", big, b"c")
    assert r.lrange("b", 0, -1) == [b"a", big, b"c"]
