"""File descriptors: clients may never take those the engine needs.

Every client connection holds a descriptor, and so does every table the engine keeps open
(up to ``max_open_files``), its WAL, its manifest and the files a flush or a compaction
creates. If clients use the last descriptor, the engine's next file fails with EMFILE and the
engine fail-stops: every later write is refused until a restart. So, as Redis does at
start (``adjustOpenFilesLimit``), the server raises the soft ``RLIMIT_NOFILE`` to
``maxclients`` + the engine's files + RESERVED_FDS when the hard limit allows, and otherwise
lowers ``maxclients`` to what fits (logged). CONFIG SET maxclients is refused past that.
"""

from __future__ import annotations

import resource
from typing import Final

#: Descriptors kept for everything but clients and open tables: the listeners, requests of
#: the metrics endpoint (16 at most), the WAL, the manifest, files being written by flushes
#: and compactions, the compaction worker's pipes, logs.
RESERVED_FDS: Final = 64


def fit_maxclients(maxclients: int, engine_files: int) -> int:
    """How many clients fit next to ``engine_files`` open tables and RESERVED_FDS, after
    raising the soft open files limit toward that total as far as the hard limit allows
    (at least 1, so a misconfigured host still answers its operator)."""
    need = maxclients + engine_files + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return maxclients
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass  # not allowed: fit the clients into the current limit instead
    return max(1, min(maxclients, soft - engine_files - RESERVED_FDS))


__all__ = ["RESERVED_FDS", "fit_maxclients"]
