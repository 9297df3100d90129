"""Operations and histories of a Jepsen-style test.

An :class:`Op` is one client operation on one key: a read, a write or a compare-and-set of a
register, or an ``add`` of a unique element to a set (Jepsen's set workload: an add can
never be hidden by a later one, so every lost acknowledged add shows in the final set),
with the time it was invoked and completed (monotonic seconds) and its outcome:

- ``ok``: it took effect (a write was acknowledged; a read returned ``output``);
- ``fail``: it certainly did not take effect (the server refused it before any write);
- ``info``: unknown (a timeout, a broken connection): it may have taken effect, at any time
  after its invocation, or never. Its completion time is treated as infinity.

:class:`History` records operations from many client threads.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Final

READ: Final = "read"
WRITE: Final = "write"
CAS: Final = "cas"
ADD: Final = "add"
OK: Final = "ok"
FAIL: Final = "fail"
INFO: Final = "info"

#: A register's value: None is "no value" (the key does not exist).
Value = Hashable


@dataclasses.dataclass(frozen=True)
class Op:
    """One operation. ``value`` is what a write writes, or (expected, new) for a cas;
    ``output`` what a read returned, or whether a cas swapped."""

    process: int
    kind: str
    key: str
    value: Value
    invoke: float
    complete: float | None
    status: str
    output: Value = None
    id: int = 0

    def __post_init__(self) -> None:
        if self.kind not in (READ, WRITE, CAS, ADD):
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.status not in (OK, FAIL, INFO):
            raise ValueError(f"unknown op status {self.status!r}")
        if self.status != INFO and (self.complete is None or self.complete < self.invoke):
            raise ValueError("an ok/fail op needs a completion time after its invocation")

    @property
    def end(self) -> float:
        return float("inf") if self.status == INFO or self.complete is None else self.complete


class History:
    """A thread-safe record of operations (ids in invocation order)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def record(self, process: int, kind: str, key: str, value: Value, invoke: float,
               status: str, output: Value = None) -> Op:
        complete = None if status == INFO else self.clock()
        with self._lock:
            op = Op(process, kind, key, value, invoke, complete, status, output,
                    next(self._ids))
            self._ops.append(op)
        return op

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            k = f"{op.kind}:{op.status}"
            out[k] = out.get(k, 0) + 1
        return out
