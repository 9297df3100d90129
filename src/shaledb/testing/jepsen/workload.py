"""The client workload and the nemesis of the Jepsen-style harness, and the run that ties
them to the checkers.

Clients find the primary as any Redis application would: redis-py's ``Sentinel`` asked
through the nodes' proxies. Register keys ``k<i>``: every write sets a unique value; set keys
``s<i>``: every add (SADD) a unique element; every read is a *fenced read*
(``MULTI; GET k; SET __jepsen_fence__ p; EXEC``): its reply comes only if the node could
commit a write at that moment -- it held the lease (and, in sync mode, the write reached its
replicas), so a deposed primary cannot answer a stale read. Outcomes: a reply is ``ok``;
``-READONLY`` (the fence refused the commit; nothing was written) is ``fail``; anything
else (timeouts, broken connections, other errors) is ``info``.

The nemesis forces failovers one after another: SIGKILL of the primary (restarted after a
new leader is elected), SIGSTOP longer than the lease (SIGCONT after), or isolating the
primary behind its proxies (healed after). Each waits for a leader of a newer term.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from typing import Any

import redis

# redis-py's sentinel module is untyped: its two calls here carry type: ignore.
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .cluster import Cluster, ClusterConfig
from .history import ADD, FAIL, INFO, OK, READ, WRITE, History, Value
from .linearizability import check
from .lostwrites import check_lost_adds, check_lost_writes

FENCE_KEY = "__jepsen_fence__"
NEMESES = ("kill", "pause", "partition")


@dataclasses.dataclass
class RunConfig:
    cluster: ClusterConfig
    failovers: int = 5
    nemeses: tuple[str, ...] = NEMESES
    clients: int = 4
    keys: int = 4
    seed: int = 0
    #: Seconds of normal operation between two faults.
    settle: float = 1.0
    #: Seconds a client waits for one reply.
    op_timeout: float = 1.0
    #: Linearizability check budget (seconds, whole history).
    check_timeout: float = 120.0
    #: Seconds to wait for another node to take over before the fault is undone (None:
    #: three TTLs plus 5 s).
    takeover_wait: float | None = None
    #: Faults in random order, or cycling through ``nemeses`` in order.
    cycle: bool = False


@dataclasses.dataclass
class NemesisEvent:
    kind: str
    node: str
    old_term: int
    new_term: int | None
    new_leader: str | None
    seconds_to_leader: float | None


@dataclasses.dataclass
class Report:
    ops: dict[str, int]
    events: list[NemesisEvent]
    failovers: int
    linearizable: str
    acknowledged_writes: int
    lost_writes: list[dict[str, Any]]
    acknowledged_adds: int
    lost_adds: list[dict[str, Any]]
    final: dict[str, Value]
    seconds: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)


def _decode(v: Any) -> Value:
    return v.decode() if isinstance(v, bytes) else v


class Client(threading.Thread):
    def __init__(self, index: int, run: JepsenRun) -> None:
        super().__init__(name=f"jepsen-client-{index}", daemon=True)
        self.index = index
        self.run_ = run
        self.rng = random.Random(run.config.seed * 1000 + index)
        self.counter = 0
        self.conn: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        if self.conn is None:
            self.conn = self.run_.sentinel.master_for(  # type: ignore[no-untyped-call]
                self.run_.config.cluster.group, socket_timeout=self.run_.config.op_timeout,
                socket_connect_timeout=self.run_.config.op_timeout,
                retry=Retry(NoBackoff(), 0))
        return self.conn

    def run(self) -> None:
        hist = self.run_.history
        cfg = self.run_.config
        while not self.run_.stop.is_set():
            roll = self.rng.random()
            kind = READ if roll < 0.4 else WRITE if roll < 0.8 else ADD
            key = f"{'s' if kind == ADD else 'k'}{self.rng.randrange(cfg.keys)}"
            self.counter += 1
            value = f"{self.index}-{self.counter}" if kind != READ else None
            invoke = hist.clock()
            try:
                r = self._redis()
                if kind == ADD:
                    assert value is not None
                    r.sadd(key, value)
                    hist.record(self.index, ADD, key, value, invoke, OK)
                elif kind == WRITE:
                    assert value is not None
                    r.set(key, value)
                    hist.record(self.index, WRITE, key, value, invoke, OK)
                else:
                    pipe = r.pipeline(transaction=True)
                    pipe.get(key)
                    pipe.set(FENCE_KEY, self.index)
                    got, _ = pipe.execute()
                    hist.record(self.index, READ, key, None, invoke, OK, _decode(got))
            except redis.ReadOnlyError:
                hist.record(self.index, kind, key, value, invoke, FAIL)
                self._reset()
                time.sleep(0.05)
            except (redis.RedisError, OSError):
                hist.record(self.index, kind, key, value, invoke, INFO)
                self._reset()
                time.sleep(0.05)
        self._reset()

    def _reset(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - a broken connection is expected here
                pass
            self.conn = None


class JepsenRun:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.history = History()
        self.stop = threading.Event()
        self.cluster = Cluster(config.cluster)
        self.sentinel: Sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [], socket_timeout=config.op_timeout)
        self.events: list[NemesisEvent] = []
        self.rng = random.Random(config.seed)
        self.final_sets: dict[str, set[Value]] = {}

    def _fault(self, kind: str) -> NemesisEvent:
        cl = self.cluster
        st = cl.wait_leader(0, 60)
        if st is None or st.leader is None:
            raise RuntimeError("no leader before the fault")
        old = st.leader
        node = cl.node(old.node)
        t0 = time.monotonic()
        if kind == "kill":
            node.kill()
        elif kind == "pause":
            node.pause()
        elif kind == "partition":
            node.isolate()
        else:
            raise ValueError(f"unknown nemesis {kind!r}")
        if kind == "pause":
            # Longer than the lease: the node must fence itself meanwhile.
            time.sleep(cl.config.ttl * 1.5)
        # Another node should take over within a few TTLs; when none can (a group of one,
        # or sync mode without an eligible replica), the fault is undone and the node
        # itself must come back under a newer term.
        wait = self.config.takeover_wait
        new = cl.wait_leader(old.term, cl.config.ttl * 3 + 5 if wait is None else wait)
        if kind == "kill":
            node.start()
        elif kind == "pause":
            node.resume()
        else:
            node.heal()
        if new is None:
            new = cl.wait_leader(old.term, 60)
        took = time.monotonic() - t0 if new is not None else None
        lead = new.leader if new is not None else None
        return NemesisEvent(kind, old.node, old.term, lead.term if lead else None,
                            lead.node if lead else None, took)

    def _final_state(self) -> dict[str, Value]:
        cl = self.cluster
        deadline = time.monotonic() + 60
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                r = self.sentinel.master_for(  # type: ignore[no-untyped-call]
                    cl.config.group, socket_timeout=5,
                                             retry=Retry(NoBackoff(), 0))
                n = self.config.keys
                pipe = r.pipeline(transaction=True)
                for i in range(n):
                    pipe.get(f"k{i}")
                for i in range(n):
                    pipe.smembers(f"s{i}")
                pipe.set(FENCE_KEY, "final")
                got = pipe.execute()
                r.close()
                regs = {f"k{i}": _decode(got[i]) for i in range(n) if got[i] is not None}
                self.final_sets = {f"s{i}": {_decode(m) for m in got[n + i]}
                                   for i in range(n)}
                return regs
            except (redis.RedisError, OSError) as exc:
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"could not read the final state: {last}")

    def run(self) -> Report:
        start = time.monotonic()
        cl = self.cluster
        cl.start()
        try:
            self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
                [n.address for n in cl.nodes], socket_timeout=self.config.op_timeout)
            if cl.wait_leader(0, 60) is None:
                raise RuntimeError("no leader elected")
            clients = [Client(i, self) for i in range(self.config.clients)]
            for c in clients:
                c.start()
            try:
                nem = self.config.nemeses
                for i in range(self.config.failovers):
                    time.sleep(self.config.settle)
                    kind = nem[i % len(nem)] if self.config.cycle else self.rng.choice(nem)
                    self.events.append(self._fault(kind))
                time.sleep(self.config.settle)
            finally:
                self.stop.set()
                for c in clients:
                    c.join(30)
            final = self._final_state()
        finally:
            cl.close()
        ops = self.history.ops
        lin = check(ops, timeout=self.config.check_timeout)
        lost = check_lost_writes(ops, final)
        lost_adds = check_lost_adds(ops, self.final_sets)
        return Report(self.history.counts(), self.events,
                      sum(1 for e in self.events if e.new_term is not None), lin.result,
                      lost.acknowledged, [dataclasses.asdict(op) for op in lost.lost],
                      lost_adds.acknowledged,
                      [dataclasses.asdict(op) for op in lost_adds.lost],
                      final, time.monotonic() - start)


def run(config: RunConfig) -> Report:
    """One harness run: start the group, run the workload under the nemesis, check."""
    return JepsenRun(config).run()
