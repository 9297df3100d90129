"""The server's ``mmap_reads`` setting reaches the engine (tables mapped or read with pread)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import redis

from ._server_support import ServerThread


def _mapped_tables(path: str) -> set[str]:
    """Tables of ``path`` that this process (the server runs in a thread here) has mapped."""
    real = os.path.realpath(path)
    out = set()
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].strip().endswith(".sst"):
                name = os.path.realpath(parts[5].strip())
                if os.path.dirname(name) == real:
                    out.add(name)
    return out


@pytest.mark.parametrize("mmap_reads", [True, False])
def test_mmap_reads_setting_reaches_the_engine(server_factory: Callable[..., ServerThread],
                                               mmap_reads: bool) -> None:
    st = server_factory(mmap_reads=mmap_reads, memtable_size=64 * 1024)
    r = st.client()
    for i in range(2000):  # a few memtables: tables to read
        r.set(f"k{i}", b"x" * 100)
    info: Any = r.info("shaledb")
    path = st.config.dir
    tables = [n for n in os.listdir(path) if n.endswith(".sst")]
    assert tables, info
    assert all(r.get(f"k{i}") == b"x" * 100 for i in range(0, 2000, 7))
    assert bool(_mapped_tables(path)) is mmap_reads
    assert r.config_get("mmap-reads") == {"mmap-reads": "yes" if mmap_reads else "no"}
    # used_memory leaves out the pages of mapped files (the tables', the libraries'): page
    # cache, not the server's memory; used_memory_rss is all of it.
    memory: Any = r.info("memory")
    assert 0 < memory["used_memory"] < memory["used_memory_rss"]
    with pytest.raises(redis.ResponseError):
        r.config_set("mmap-reads", "no" if mmap_reads else "yes")
