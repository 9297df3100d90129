"""The "no acknowledged write lost" check.

Every write carries a unique value. An acknowledged (``ok``) write ``w`` of key ``k`` is
*kept* when the final value of ``k`` is ``w``'s value, or the value of another write of
``k`` that may have come after ``w``: one that was not completed before ``w`` was invoked
(``ok`` or ``info``: an unknown write may have taken effect). Otherwise ``w`` is lost: a
later state shows neither it nor anything that could have overwritten it.

A register's later writes hide most losses (the final state only shows the last write), so
the harness also runs Jepsen's set workload: each ``add`` puts a unique element into a set,
and every acknowledged add must be in the final set (:func:`check_lost_adds`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping

from .history import ADD, CAS, FAIL, OK, WRITE, Op, Value


@dataclasses.dataclass(frozen=True)
class LostWrites:
    acknowledged: int
    lost: tuple[Op, ...]

    @property
    def ok(self) -> bool:
        return not self.lost


def _written(op: Op) -> Value:
    if op.kind == CAS:
        assert isinstance(op.value, tuple)
        new: Value = op.value[1]
        return new
    return op.value


def check_lost_writes(ops: Iterable[Op], final: Mapping[str, Value]) -> LostWrites:
    """Acknowledged writes (and swapped cas) that the final state ``final`` (key -> value,
    a missing key is None) neither holds nor could have overwritten."""
    writes: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.status == FAIL:
            continue
        if op.kind == WRITE or (op.kind == CAS and (op.status != OK or op.output)):
            writes[op.key].append(op)
    lost: list[Op] = []
    acked = 0
    for key, ws in writes.items():
        value = final.get(key)
        holders = [w for w in ws if _written(w) == value]
        for w in ws:
            if w.status != OK:
                continue
            acked += 1
            if any(h is w or h.end >= w.invoke for h in holders):
                continue
            lost.append(w)
    return LostWrites(acked, tuple(sorted(lost, key=lambda o: o.id)))


def check_lost_adds(ops: Iterable[Op], final: Mapping[str, set[Value]]) -> LostWrites:
    """Acknowledged adds whose element is missing from the final set of their key."""
    lost: list[Op] = []
    acked = 0
    for op in ops:
        if op.kind != ADD or op.status != OK:
            continue
        acked += 1
        if op.value not in final.get(op.key, set()):
            lost.append(op)
    return LostWrites(acked, tuple(sorted(lost, key=lambda o: o.id)))
