"""Model-based (stateful property) test: ShaleDB must behave like a plain Python dict.

A hypothesis ``RuleBasedStateMachine`` applies random puts (with and without TTL), deletes,
batches, transactions, snapshots, clock advances, flushes, compactions and close/reopen to a
real database and to a model ``dict key -> (value, expire_at_ms)``, and compares *every* read
(get, ``in``, ttl, range and prefix in both directions with limits, snapshot reads,
transaction reads). Keys come from a tiny alphabet so that keys collide, prefix each other
and sort next to 0x00/0xff edges; tiny option sizes make flushes and compactions really run.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import shaledb
from conftest import SMALL_OPTS, FakeClock

# A dozen keys: they collide often, prefix each other and sit on the 0x00 / 0xff edges.
KEYS = [b"", b"\x00", b"a", b"a\x00", b"aa", b"aa\x00", b"a\xff", b"a\xff\x00", b"b",
        b"\xff", b"\xff\xff", b"\xff\xff\xff"]
keys = st.sampled_from(KEYS)
# range bounds: keys, None, and a few strings between keys
bounds = st.none() | keys | st.sampled_from([b"a\x00\x00", b"ab", b"\xfe", b"\xff\x00"])
# mostly small values; a few big ones fill the 64 KiB memtable quickly
sizes = st.sampled_from([0, 1, 8, 8, 40, 40, 1500, 12000])
ttls = st.sampled_from([None, None, None, 0.5, 1, 2, 3, 30])
limits = st.none() | st.integers(min_value=0, max_value=6)
advances = st.sampled_from([0.25, 0.5, 0.5, 1, 1, 2, 40])

# ops of a batch: ("put", key, size, ttl) or ("delete", key)
batch_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, sizes, ttls),
        st.tuples(st.just("delete"), keys),
    ),
    min_size=1,
    max_size=8,
)
# ops of a transaction: get/put/delete/range
txn_ops = st.lists(
    st.one_of(
        st.tuples(st.just("get"), keys),
        st.tuples(st.just("put"), keys, sizes),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("range"), bounds, bounds, st.booleans()),
        st.tuples(st.just("prefix"), keys, st.booleans()),
    ),
    min_size=1,
    max_size=8,
)


# No background WAL syncer: durability is not modelled here, and it keeps open/close cheap so
# more examples fit in the time budget.
OPTS = {**SMALL_OPTS, "fsync_interval": None}


def expire_at(now: float, ttl: float | None) -> int:
    """The spec's expiry: absolute ms, ceil'ed; 0 = never."""
    if ttl is None:
        return 0
    return max(1, math.ceil((now + ttl) * 1000))


class ShaleDBModel(RuleBasedStateMachine):
    #: The options of every open (the encrypted variant adds its key).
    OPEN_OPTS: dict = OPTS

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="shaledb-model-")
        self.path = os.path.join(self.tmp, "db")
        self.clock = FakeClock()
        self.db = shaledb.open(self.path, **self.OPEN_OPTS, clock=self.clock)
        self.model: dict[bytes, tuple[bytes, int]] = {}
        self.snaps: list[tuple[shaledb.Snapshot, dict[bytes, tuple[bytes, int]]]] = []
        self.counter = 0

    # -- model helpers ---------------------------------------------------------------------------
    def value(self, size: int) -> bytes:
        """A value unique to this write, so a stale version can never compare equal."""
        self.counter += 1
        return b"v%d:" % self.counter + b"x" * size

    def live(self, entry: tuple[bytes, int] | None) -> bool:
        return entry is not None and (entry[1] == 0 or self.clock.now * 1000 < entry[1])

    def m_get(self, model: dict, key: bytes) -> bytes | None:
        e = model.get(key)
        return e[0] if self.live(e) else None

    def m_ttl(self, model: dict, key: bytes) -> float | None:
        e = model.get(key)
        if not self.live(e) or e[1] == 0:
            return None
        return e[1] / 1000 - self.clock.now

    def m_range(self, model: dict, start, stop, reverse, limit):
        ks = sorted(
            k for k, e in model.items()
            if self.live(e) and (start is None or k >= start) and (stop is None or k < stop)
        )
        if reverse:
            ks.reverse()
        if limit is not None:
            ks = ks[:limit]
        return [(k, model[k][0]) for k in ks]

    def m_prefix(self, model: dict, p, reverse, limit):
        ks = sorted(k for k, e in model.items() if self.live(e) and k.startswith(p))
        if reverse:
            ks.reverse()
        if limit is not None:
            ks = ks[:limit]
        return [(k, model[k][0]) for k in ks]

    def check_ttl(self, got, exp, what):
        if exp is None:
            assert got is None, what
        else:
            assert got is not None and abs(got - exp) < 2e-3, (what, got, exp)

    # -- writes ----------------------------------------------------------------------------------
    @rule(key=keys, size=sizes, ttl=ttls)
    def put(self, key, size, ttl):
        v = self.value(size)
        self.db.put(key, v, ttl=ttl)
        self.model[key] = (v, expire_at(self.clock.now, ttl))

    @rule(key=keys)
    def delete(self, key):
        self.db.delete(key)
        self.model.pop(key, None)

    @rule(ops=batch_ops, explicit=st.booleans(), fail=st.booleans())
    def batch(self, ops, explicit, fail):
        staged: list[tuple[bytes, tuple[bytes, int] | None]] = []
        if explicit:
            # An explicit WriteBatch is not bound to the DB's clock (covered separately in
            # test_api.test_writebatch_ttl_uses_db_clock), so no TTLs here.
            wb = shaledb.WriteBatch()
            for op in ops:
                if op[0] == "put":
                    v = self.value(op[2])
                    wb.put(op[1], v)
                    staged.append((op[1], (v, 0)))
                else:
                    wb.delete(op[1])
                    staged.append((op[1], None))
            if fail:
                return  # never written
            self.db.write(wb)
        else:

            class Abort(Exception):
                pass

            try:
                with self.db.batch() as b:
                    for op in ops:
                        if op[0] == "put":
                            v = self.value(op[2])
                            b.put(op[1], v, ttl=op[3])
                            staged.append((op[1], (v, expire_at(self.clock.now, op[3]))))
                        else:
                            b.delete(op[1])
                            staged.append((op[1], None))
                    if fail:
                        raise Abort
            except Abort:
                return
        for k, e in staged:
            if e is None:
                self.model.pop(k, None)
            else:
                self.model[k] = e

    @rule(dt=advances)
    def advance_clock(self, dt):
        self.clock.advance(dt)

    # -- reads -----------------------------------------------------------------------------------
    @rule(key=keys)
    def get(self, key):
        assert self.db.get(key) == self.m_get(self.model, key), key
        assert (key in self.db) == (self.m_get(self.model, key) is not None), key
        self.check_ttl(self.db.ttl(key), self.m_ttl(self.model, key), key)

    @rule()
    def check_everything(self):
        """Every key's get/in/ttl and the full scan in both directions match the model."""
        for key in KEYS:
            self.get(key)
        for reverse in (False, True):
            assert list(self.db.range(reverse=reverse)) == self.m_range(
                self.model, None, None, reverse, None)

    @rule(start=bounds, stop=bounds, reverse=st.booleans(), limit=limits)
    def range(self, start, stop, reverse, limit):
        got = list(self.db.range(start, stop, reverse=reverse, limit=limit))
        assert got == self.m_range(self.model, start, stop, reverse, limit), (
            start, stop, reverse, limit)

    @rule(p=keys, reverse=st.booleans(), limit=limits)
    def prefix(self, p, reverse, limit):
        got = list(self.db.prefix(p, reverse=reverse, limit=limit))
        assert got == self.m_prefix(self.model, p, reverse, limit), (p, reverse, limit)

    # -- snapshots -------------------------------------------------------------------------------
    @precondition(lambda self: len(self.snaps) < 4)
    @rule()
    def take_snapshot(self):
        self.snaps.append((self.db.snapshot(), dict(self.model)))

    @precondition(lambda self: self.snaps)
    @rule(i=st.integers(min_value=0, max_value=3), key=keys, start=bounds, stop=bounds,
          reverse=st.booleans(), limit=limits)
    def read_snapshot(self, i, key, start, stop, reverse, limit):
        snap, model = self.snaps[i % len(self.snaps)]
        for k in KEYS:
            assert snap.get(k) == self.m_get(model, k), k
            self.check_ttl(snap.ttl(k), self.m_ttl(model, k), k)
        got = list(snap.range(start, stop, reverse=reverse, limit=limit))
        assert got == self.m_range(model, start, stop, reverse, limit), (
            start, stop, reverse, limit)
        got = list(snap.prefix(key, reverse=reverse))
        assert got == self.m_prefix(model, key, reverse, None), key

    @precondition(lambda self: self.snaps)
    @rule(i=st.integers(min_value=0, max_value=3))
    def release_snapshot(self, i):
        snap, _ = self.snaps.pop(i % len(self.snaps))
        snap.close()

    # -- transactions ----------------------------------------------------------------------------
    @rule(ops=txn_ops, explicit_commit=st.booleans())
    def transaction(self, ops, explicit_commit):
        overlay = dict(self.model)  # what the transaction should see
        writes: list[tuple[bytes, tuple[bytes, int] | None]] = []
        txn = self.db.transaction()
        try:
            for op in ops:
                kind = op[0]
                if kind == "get":
                    assert txn.get(op[1]) == self.m_get(overlay, op[1]), op
                elif kind == "put":
                    v = self.value(op[2])
                    txn.put(op[1], v)
                    overlay[op[1]] = (v, 0)
                    writes.append((op[1], (v, 0)))
                elif kind == "delete":
                    txn.delete(op[1])
                    overlay.pop(op[1], None)
                    writes.append((op[1], None))
                elif kind == "range":
                    got = list(txn.range(op[1], op[2], reverse=op[3]))
                    assert got == self.m_range(overlay, op[1], op[2], op[3], None), op
                else:
                    got = list(txn.prefix(op[1], reverse=op[2]))
                    assert got == self.m_prefix(overlay, op[1], op[2], None), op
            txn.commit()
        except BaseException:
            txn.rollback()
            raise
        for k, e in writes:
            if e is None:
                self.model.pop(k, None)
            else:
                self.model[k] = e

    @rule(rkey=keys, wkey=keys, size=sizes)
    def conflicting_transaction(self, rkey, wkey, size):
        """txn reads rkey, someone else writes rkey, txn writes wkey: commit must fail and
        only the other writer's put is applied."""
        txn = self.db.transaction()
        assert txn.get(rkey) == self.m_get(self.model, rkey)
        other = self.value(1)
        self.db.put(rkey, other)
        self.model[rkey] = (other, 0)
        txn.put(wkey, self.value(size))
        with pytest.raises(shaledb.TransactionConflict):
            txn.commit()
        txn.rollback()

    # -- maintenance -----------------------------------------------------------------------------
    @rule(compact=st.booleans())
    def flush(self, compact):
        self.db.flush()
        if compact:
            self.db.compact_range()

    @rule(start=bounds, stop=bounds)
    def compact_range(self, start, stop):
        self.db.compact_range(start, stop)

    @rule()
    def reopen(self):
        for snap, _ in self.snaps:
            snap.close()
        self.snaps.clear()
        self.db.close()
        self.db = shaledb.open(self.path, **self.OPEN_OPTS, clock=self.clock)

    @invariant()
    def healthy(self):
        assert self.db.stats()["background_error"] is None

    def teardown(self):
        try:
            for snap, _ in self.snaps:
                snap.close()
            self.db.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class EncryptedShaleDBModel(ShaleDBModel):
    """The same machine on an encrypted database; at the end no value's bytes (every value
    holds ``x`` * size, sizes up to 12,000) appear in any file."""

    OPEN_OPTS = {**OPTS, "encryption_key": bytes(range(32))}

    def teardown(self):
        try:
            for snap, _ in self.snaps:
                snap.close()
            self.snaps.clear()
            self.db.close()
            for root, _, names in os.walk(self.path):
                for n in names:
                    with open(os.path.join(root, n), "rb") as f:
                        assert b"x" * 8 not in f.read(), f"plaintext in {n}"
        finally:
            super().teardown()


TestShaleDBModel = ShaleDBModel.TestCase
TestShaleDBModel.settings = settings(
    max_examples=int(os.environ.get("SHALEDB_MODEL_EXAMPLES", "500")),
    stateful_step_count=int(os.environ.get("SHALEDB_MODEL_STEPS", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestEncryptedShaleDBModel = EncryptedShaleDBModel.TestCase
TestEncryptedShaleDBModel.settings = settings(
    max_examples=int(os.environ.get("SHALEDB_MODEL_EXAMPLES_ENCRYPTED", "100")),
    stateful_step_count=int(os.environ.get("SHALEDB_MODEL_STEPS", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
