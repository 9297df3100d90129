"""The Wing-Gong/Lowe linearizability checker and the lost-write checker on known
histories (no servers involved)."""

from __future__ import annotations

import random

import pytest

from shaledb.testing.jepsen.history import (
    ADD,
    CAS,
    FAIL,
    INFO,
    OK,
    READ,
    WRITE,
    History,
    Op,
)
from shaledb.testing.jepsen.linearizability import (
    LINEARIZABLE,
    NOT_LINEARIZABLE,
    UNKNOWN,
    check,
    check_key,
)
from shaledb.testing.jepsen.lostwrites import check_lost_adds, check_lost_writes

_ids = iter(range(1_000_000))


def w(p: int, v: object, t0: float, t1: float | None, status: str = OK,
      key: str = "x") -> Op:
    return Op(p, WRITE, key, v, t0, t1, status, None, next(_ids))


def r(p: int, out: object, t0: float, t1: float | None, status: str = OK,
      key: str = "x") -> Op:
    return Op(p, READ, key, None, t0, t1, status, out, next(_ids))


def cas(p: int, old: object, new: object, swapped: bool, t0: float, t1: float | None,
        status: str = OK, key: str = "x") -> Op:
    return Op(p, CAS, key, (old, new), t0, t1, status, swapped, next(_ids))


def lin(*ops: Op) -> str:
    return check(ops).result


def test_sequential_and_concurrent_histories() -> None:
    assert lin() == LINEARIZABLE
    assert lin(w(0, 1, 0, 1), r(1, 1, 2, 3), w(0, 2, 4, 5), r(1, 2, 6, 7)) == LINEARIZABLE
    assert lin(r(0, None, 0, 1)) == LINEARIZABLE  # the initial state
    # A read concurrent with a write may see either value.
    assert lin(w(0, 1, 0, 10), r(1, None, 1, 2)) == LINEARIZABLE
    assert lin(w(0, 1, 0, 10), r(1, 1, 1, 2)) == LINEARIZABLE
    # Two concurrent writes, later reads agree on either order.
    assert lin(w(0, 1, 0, 5), w(1, 2, 0, 5), r(2, 1, 6, 7), r(2, 1, 8, 9)) == LINEARIZABLE
    assert lin(w(0, 1, 0, 5), w(1, 2, 0, 5), r(2, 2, 6, 7)) == LINEARIZABLE


def test_stale_read_is_not_linearizable() -> None:
    res = check([w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5)])
    assert res.result == NOT_LINEARIZABLE
    assert res.failures[0].key == "x" and res.failures[0].stuck_at is not None


def test_read_of_a_value_never_written() -> None:
    assert lin(w(0, 1, 0, 1), r(1, 7, 2, 3)) == NOT_LINEARIZABLE


def test_new_then_old_reads_during_one_write() -> None:
    # The classic: a write spans both reads; once a read saw the new value, a read that
    # starts later may not see the old one.
    assert lin(w(0, 1, 0, 10), r(1, 1, 1, 2), r(2, None, 3, 4)) == NOT_LINEARIZABLE
    # Overlapping reads may (each could linearise on either side of the write).
    assert lin(w(0, 1, 0, 10), r(1, 1, 1, 4), r(2, None, 3, 5)) == LINEARIZABLE


def test_two_readers_disagree_on_the_order_of_two_writes() -> None:
    hist = [w(0, 1, 0, 10), w(1, 2, 0, 10),
            r(2, 1, 11, 12), r(2, 2, 13, 14),   # 1 then 2 ...
            r(3, 2, 11, 12), r(3, 1, 13, 14)]   # ... and 2 then 1: impossible
    assert lin(*hist) == NOT_LINEARIZABLE
    assert lin(*hist[:4]) == NOT_LINEARIZABLE  # 1 then 2 after both ended: 2 must stay
    assert lin(w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 1, 1, 2), r(2, 2, 3, 4)) == LINEARIZABLE


def test_info_writes_may_or_may_not_take_effect() -> None:
    # Unknown outcome: later reads may see it, or not ...
    assert lin(w(0, 1, 0, None, INFO), r(1, 1, 5, 6)) == LINEARIZABLE
    assert lin(w(0, 1, 0, None, INFO), r(1, None, 5, 6)) == LINEARIZABLE
    # ... but once seen, it stays (it took effect then).
    assert lin(w(0, 1, 0, None, INFO), r(1, 1, 5, 6), r(1, None, 7, 8)) == NOT_LINEARIZABLE
    # It cannot take effect before it was invoked.
    assert lin(r(1, 1, 0, 1), w(0, 1, 2, None, INFO)) == NOT_LINEARIZABLE
    # A failed write never took effect.
    assert lin(w(0, 1, 0, 1, FAIL), r(1, 1, 2, 3)) == NOT_LINEARIZABLE
    assert lin(w(0, 1, 0, 1, FAIL), r(1, None, 2, 3)) == LINEARIZABLE
    # Unknown reads observed nothing.
    assert lin(w(0, 1, 0, 1), r(1, 99, 2, None, INFO)) == LINEARIZABLE


def test_unobserved_info_writes_do_not_blow_up_the_search() -> None:
    # 200 timed-out writes, never read: each stays "concurrent" with everything after it.
    ops = [w(p % 7, f"lost{p}", p, None, INFO) for p in range(200)]
    ops += [w(9, f"v{i}", 1000 + 2 * i, 1001 + 2 * i) for i in range(50)]
    ops += [r(8, f"v{i}", 1001.5 + 2 * i, 1001.6 + 2 * i) for i in range(50)]
    res = check_key(ops, max_steps=100_000)
    assert res.result == LINEARIZABLE
    # One of them observed: kept, and placed where it was seen.
    ops.append(r(8, "lost7", 5000, 5001))
    assert check_key(ops, max_steps=100_000).result == LINEARIZABLE
    ops.append(r(8, "v3", 5002, 5003))  # an older value after it: impossible
    assert check_key(ops, max_steps=1_000_000).result == NOT_LINEARIZABLE


def test_cas() -> None:
    assert lin(w(0, 1, 0, 1), cas(1, 1, 2, True, 2, 3), r(0, 2, 4, 5)) == LINEARIZABLE
    assert lin(w(0, 1, 0, 1), cas(1, 5, 2, False, 2, 3), r(0, 1, 4, 5)) == LINEARIZABLE
    assert lin(w(0, 1, 0, 1), cas(1, 5, 2, True, 2, 3)) == NOT_LINEARIZABLE
    assert lin(w(0, 1, 0, 1), cas(1, 1, 2, False, 2, 3)) == NOT_LINEARIZABLE
    # Two cas from the same value, both "succeeded": one must have failed.
    assert lin(w(0, 0, 0, 1), cas(1, 0, 1, True, 2, 5),
               cas(2, 0, 2, True, 2, 5)) == NOT_LINEARIZABLE
    # An unknown cas: it swapped if it found its value, whenever it ran.
    assert lin(w(0, 0, 0, 1), cas(1, 0, 7, False, 2, None, INFO), r(2, 7, 3, 4)) \
        == LINEARIZABLE
    assert lin(w(0, 3, 0, 1), cas(1, 0, 7, False, 2, None, INFO), r(2, 7, 3, 4)) \
        == NOT_LINEARIZABLE


def test_keys_are_checked_independently() -> None:
    hist = [w(0, 1, 0, 1, key="a"), w(0, 1, 0, 1, key="b"), r(1, 1, 2, 3, key="a"),
            r(1, None, 2, 3, key="b")]
    res = check(hist)
    assert res.result == NOT_LINEARIZABLE
    assert [k.key for k in res.failures] == ["b"]
    assert [k.result for k in res.keys] == [LINEARIZABLE, NOT_LINEARIZABLE]


def _random_linearizable_history(rng: random.Random, n: int, procs: int) -> list[Op]:
    """Run a real register with random overlapping operations: linearizable by
    construction (each op takes effect at a random point inside its interval)."""
    events: list[tuple[float, Op]] = []
    t = 0.0
    value: object = None
    counter = 0
    for _ in range(n):
        t += rng.random()
        p = rng.randrange(procs)
        invoke = t - rng.random() * 3
        complete = t + rng.random() * 3
        kind = rng.choice([READ, WRITE, WRITE, CAS])
        status = OK if rng.random() > 0.1 else INFO
        if kind == READ:
            op = Op(p, READ, "x", None, invoke, complete, status, value, next(_ids))
        elif kind == WRITE:
            counter += 1
            value = counter
            op = Op(p, WRITE, "x", counter, invoke, complete, status, None, next(_ids))
        else:
            counter += 1
            expected = value if rng.random() < 0.5 else -1
            swapped = value == expected
            if swapped:
                value = counter
            op = Op(p, CAS, "x", (expected, counter), invoke, complete, status, swapped,
                    next(_ids))
        events.append((t, op))
    return [op for _, op in events]


@pytest.mark.parametrize("seed", range(20))
def test_random_linearizable_histories_pass(seed: int) -> None:
    rng = random.Random(seed)
    hist = _random_linearizable_history(rng, 60, 5)
    assert check(hist).result == LINEARIZABLE


@pytest.mark.parametrize("seed", range(10))
def test_corrupted_read_is_found(seed: int) -> None:
    rng = random.Random(1000 + seed)
    hist = _random_linearizable_history(rng, 40, 4)
    # A read of a value no write ever wrote, after everything: never linearizable.
    end = max(op.end for op in hist if op.status == OK) + 1
    hist.append(Op(9, READ, "x", None, end, end + 1, OK, "never-written", next(_ids)))
    assert check(hist).result == NOT_LINEARIZABLE


def test_budget_reports_unknown_instead_of_running_forever() -> None:
    # Many concurrent writes and reads that cannot all fit: an exponential search.
    ops = [w(p, p, 0, 100) for p in range(18)]
    ops += [r(50 + i, i % 18, 1, 99) for i in range(18)]
    ops.append(r(99, 12345, 101, 102))
    res = check_key(ops, max_steps=5_000)
    assert res.result == UNKNOWN and res.steps > 5_000
    assert check(ops, max_steps=5_000).result == UNKNOWN
    assert check(ops, timeout=0.0, max_steps=10**12).result in (UNKNOWN, NOT_LINEARIZABLE)


def test_history_recorder() -> None:
    h = History()
    op = h.record(1, WRITE, "k", 5, h.clock(), OK)
    assert op.complete is not None and op.id == 0
    assert h.record(2, WRITE, "k", 6, h.clock(), INFO).complete is None
    assert h.counts() == {"write:ok": 1, "write:info": 1}
    with pytest.raises(ValueError):
        Op(1, "delete", "k", None, 0, 1, OK)
    with pytest.raises(ValueError):
        Op(1, READ, "k", None, 2, 1, OK)


def test_lost_writes() -> None:
    a = w(0, "a", 0, 1)
    b = w(1, "b", 2, 3)
    assert check_lost_writes([a, b], {"x": "b"}).ok
    lost = check_lost_writes([a, b], {"x": "a"})  # b acknowledged after a, but a is final
    assert not lost.ok and lost.lost == (b,) and lost.acknowledged == 2
    assert check_lost_writes([a, b], {}).lost == (a, b)
    # Concurrent writes: either may be final.
    c = w(0, "c", 10, 20)
    d = w(1, "d", 11, 19)
    assert check_lost_writes([c, d], {"x": "c"}).ok
    assert check_lost_writes([c, d], {"x": "d"}).ok
    # An unknown write may have overwritten an acknowledged one.
    e = w(2, "e", 21, None, INFO)
    f = w(0, "f", 22, 23)
    assert check_lost_writes([e, f], {"x": "e"}).ok
    # A failed write did not.
    g = w(2, "g", 30, 31, FAIL)
    h = w(0, "h", 32, 33, key="y")
    assert check_lost_writes([g, h], {"x": "g", "y": "h"}).ok
    assert check_lost_writes([g, h], {"x": "g"}).lost == (h,)


def test_lost_adds() -> None:
    a = Op(0, ADD, "s", "a", 0, 1, OK, None, next(_ids))
    b = Op(1, ADD, "s", "b", 0, 1, OK, None, next(_ids))
    c = Op(1, ADD, "s", "c", 2, None, INFO, None, next(_ids))
    d = Op(1, ADD, "s", "d", 2, 3, FAIL, None, next(_ids))
    assert check_lost_adds([a, b, c, d], {"s": {"a", "b"}}).ok
    res = check_lost_adds([a, b, c, d], {"s": {"b", "c"}})
    assert res.lost == (a,) and res.acknowledged == 2
    assert check_lost_adds([a], {}).lost == (a,)
    # Set adds are not register operations: the linearizability check leaves them out.
    assert check([a, b, w(0, 1, 0, 1), r(1, 1, 2, 3)]).result == LINEARIZABLE
