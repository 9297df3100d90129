"""The clock the server gives the engine: wall time, which the event loop can turn back.

The engine hides an entry from every read once its expiry has passed, judged by its
``clock`` option, and an iterator reads the clock once, when it is created. The server's
background work must see those hidden entries too: the active-expiry sweeper deletes them,
and the purger and the check for empty physical databases must not miss them. So the server
opens the engine with a :class:`ServerClock`; :meth:`ServerClock.all_versions` makes it read
0.0 (the epoch, before every expiry) for the calling thread only, while one iterator is
created. The engine's own threads (compaction, flush) never see the turned-back clock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class ServerClock:
    """``time.time``, except for the thread inside :meth:`all_versions`, which reads 0.0."""

    __slots__ = ("_thread",)

    def __init__(self) -> None:
        self._thread: int | None = None

    def __call__(self) -> float:
        if self._thread is not None and self._thread == threading.get_ident():
            return 0.0
        return time.time()

    @contextlib.contextmanager
    def all_versions(self) -> Iterator[None]:
        """Within the block, reads on this thread treat no entry as expired (an iterator
        created here keeps that view for its whole life)."""
        previous, self._thread = self._thread, threading.get_ident()
        try:
            yield
        finally:
            self._thread = previous

    def __repr__(self) -> str:
        return "<ServerClock>"


__all__ = ["ServerClock"]
