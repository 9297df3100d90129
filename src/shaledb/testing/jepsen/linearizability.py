"""A linearizability checker for registers: Wing & Gong's search with Lowe's memoisation
("just-in-time linearisation" plus a cache of (linearised set, state) already explored, as
Porcupine does), split per key first (P-compositionality: a history of independent registers
is linearizable iff each key's sub-history is).

The search walks the history's call/return events in time order. At a call it tries to
linearise that operation now (the register model must accept its outcome in the current
state); at a return whose operation is not yet linearised it backtracks. A configuration
(set of operations linearised, register state) seen before is never explored twice, which
makes typical histories fast; the worst case is still exponential, hence the ``max_steps``
and ``deadline`` budgets: past them the answer is UNKNOWN, never a guess.

Outcomes (history.py): ``fail`` operations never took effect and are dropped; ``info``
operations may take effect at any point after their call or never -- their return is at
infinity, so the search may place them last, where they change no observed value; ``info``
reads observed nothing and are dropped.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Final

from .history import ADD, CAS, FAIL, INFO, READ, WRITE, Op, Value

LINEARIZABLE: Final = "ok"
NOT_LINEARIZABLE: Final = "fail"
UNKNOWN: Final = "unknown"

DEFAULT_MAX_STEPS: Final = 2_000_000


@dataclasses.dataclass(frozen=True)
class KeyResult:
    key: str
    result: str
    ops: int
    steps: int
    #: For NOT_LINEARIZABLE: the ids of the largest set of operations that could be
    #: linearised, and the first operation that could not be placed after them.
    longest_prefix: tuple[int, ...] = ()
    stuck_at: int | None = None


@dataclasses.dataclass(frozen=True)
class CheckResult:
    result: str
    keys: tuple[KeyResult, ...]
    seconds: float

    @property
    def failures(self) -> list[KeyResult]:
        return [k for k in self.keys if k.result == NOT_LINEARIZABLE]

    @property
    def unknown(self) -> list[KeyResult]:
        return [k for k in self.keys if k.result == UNKNOWN]


def step(state: Value, op: Op) -> tuple[bool, Value]:
    """The register model: whether ``op`` with its outcome is possible in ``state``, and
    the state after it."""
    if op.kind == READ:
        return op.output == state, state
    if op.kind == WRITE:
        return True, op.value
    # cas: value is (expected, new)
    assert isinstance(op.value, tuple) and len(op.value) == 2
    expected, new = op.value
    if op.status == INFO:  # unknown outcome: whatever the state makes it do
        return True, new if state == expected else state
    if op.output:
        return state == expected, new
    return state != expected, state


class _Entry:
    """A call or return event in the doubly linked event list."""

    __slots__ = ("op", "is_call", "match", "prev", "next", "index")

    def __init__(self, op: Op | None, is_call: bool, index: int) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None
        self.index = index


def _written(op: Op) -> Value:
    if op.kind == CAS:
        assert isinstance(op.value, tuple)
        new: Value = op.value[1]
        return new
    return op.value


def _relevant(ops: Iterable[Op]) -> list[Op]:
    """The operations the search needs. Dropped: ``fail`` ops; ``info`` reads; and
    ``info`` writes/cas whose value nobody observed (no ok read returned it, no cas
    expected it). With unique written values the last is sound: such a write can always be
    placed last (its return is at infinity), and removing it from any linearization leaves
    one (no read sat between it and the next write). Without it, every timed-out write
    would stay concurrent with the rest of the history and the search would explode."""
    kept = [op for op in ops if op.status != FAIL and not (op.kind == READ
                                                          and op.status == INFO)]
    observed: set[Value] = set()
    for op in kept:
        if op.kind == READ:
            observed.add(op.output)
        elif op.kind == CAS:
            assert isinstance(op.value, tuple)
            observed.add(op.value[0])
    return [op for op in kept if op.status != INFO or op.kind == READ
            or _written(op) in observed]


def check_key(ops: list[Op], initial: Value = None, max_steps: int = DEFAULT_MAX_STEPS,
              deadline: float | None = None, key: str = "") -> KeyResult:
    """Whether one register's history is linearizable (see the module docstring)."""
    ops = _relevant(ops)
    n = len(ops)
    if n == 0:
        return KeyResult(key, LINEARIZABLE, 0, 0)
    # Events in time order; at equal times calls first (overlap: the permissive reading).
    events: list[tuple[float, int, int, bool]] = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i, True))
        events.append((op.end, 1, i, False))
    events.sort()
    head = _Entry(None, False, -1)
    prev = head
    calls: dict[int, _Entry] = {}
    for _, _, i, is_call in events:
        e = _Entry(ops[i], is_call, i)
        if is_call:
            calls[i] = e
        else:
            calls[i].match = e
        prev.next = e
        e.prev = prev
        prev = e

    def lift(e: _Entry) -> None:
        assert e.prev is not None and e.match is not None and e.match.prev is not None
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev
        m = e.match
        assert m.prev is not None
        m.prev.next = m.next
        if m.next is not None:
            m.next.prev = m.prev

    def unlift(e: _Entry) -> None:
        m = e.match
        assert m is not None and m.prev is not None and e.prev is not None
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e

    state: Value = initial
    linearized = 0
    cache: set[tuple[int, Value]] = set()
    stack: list[tuple[_Entry, Value]] = []
    best: tuple[int, ...] = ()
    stuck: int | None = None
    steps = 0
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > max_steps or (deadline is not None and steps % 1024 == 0
                                 and time.monotonic() > deadline):
            return KeyResult(key, UNKNOWN, n, steps)
        assert entry is not None
        if entry.is_call:
            assert entry.op is not None
            ok, new_state = step(state, entry.op)
            if ok:
                bit = linearized | (1 << entry.index)
                if (bit, new_state) not in cache:
                    cache.add((bit, new_state))
                    stack.append((entry, state))
                    state = new_state
                    linearized = bit
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if len(stack) > len(best):
                best = tuple(ops[e.index].id for e, _ in stack)
                stuck = entry.op.id if entry.op is not None else None
            if not stack:
                return KeyResult(key, NOT_LINEARIZABLE, n, steps, best, stuck)
            top, state = stack.pop()
            linearized &= ~(1 << top.index)
            unlift(top)
            entry = top.next
    return KeyResult(key, LINEARIZABLE, n, steps)


def check(ops: Iterable[Op], initial: Value = None, max_steps: int = DEFAULT_MAX_STEPS,
          timeout: float | None = None) -> CheckResult:
    """Check the register operations of a multi-key history, key by key (set ``add``
    operations are the lost-write check's). ``max_steps`` bounds each key's search;
    ``timeout`` (seconds) the whole check."""
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind == ADD:
            continue
        if op.kind not in (READ, WRITE, CAS):
            raise ValueError(f"unknown op kind {op.kind!r}")
        by_key[op.key].append(op)
    results = tuple(check_key(kops, initial, max_steps, deadline, key)
                    for key, kops in sorted(by_key.items()))
    if any(r.result == NOT_LINEARIZABLE for r in results):
        overall = NOT_LINEARIZABLE
    elif any(r.result == UNKNOWN for r in results):
        overall = UNKNOWN
    else:
        overall = LINEARIZABLE
    return CheckResult(overall, results, time.monotonic() - start)
