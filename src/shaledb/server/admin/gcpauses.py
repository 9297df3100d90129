"""How long the cyclic garbage collector stops the serving process (INFO ``gc_*`` fields).

Every collection runs on the thread that allocated, usually the event loop's, so a
collection's length is a stall of every client. ``shaledb serve`` installs :data:`PAUSES` as
a ``gc.callbacks`` hook (server.tune_gc); a server started inside another program leaves
that program's collector alone and reports zeros.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final


class GcPauses:
    """Counts and times collections per generation: the longest and the total, in ms."""

    def __init__(self) -> None:
        self.started = 0.0
        self.collections = [0, 0, 0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.total_ms = 0.0
        self.installed = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took = (time.perf_counter() - self.started) * 1000.0
        generation = info["generation"]
        self.collections[generation] += 1
        self.total_ms += took
        if took > self.max_ms[generation]:
            self.max_ms[generation] = took

    def install(self) -> None:
        if not self.installed:
            gc.callbacks.append(self)
            self.installed = True

    def fields(self) -> list[tuple[str, Any]]:
        """INFO fields: collections and the longest pause per generation, the total."""
        out: list[tuple[str, Any]] = []
        for gen in range(3):
            out.append((f"gc_gen{gen}_collections", self.collections[gen]))
            out.append((f"gc_gen{gen}_max_pause_ms", f"{self.max_ms[gen]:.2f}"))
        out.append(("gc_pause_total_ms", f"{self.total_ms:.2f}"))
        return out


#: The process's one instance (the collector is process-wide).
PAUSES: Final = GcPauses()
