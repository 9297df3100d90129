"""Self-tests of the fault injector (shaledb.testing.FaultInjectionFS): a harness with a bug
hides engine bugs, so its power-loss model is checked here against hand-worked outcomes."""

from __future__ import annotations

import os
from pathlib import Path

from shaledb.testing import FaultInjectionFS


def _write(fs: FaultInjectionFS, path: str, data: bytes, *, sync: bool = True) -> None:
    f = fs.create(path)
    try:
        f.append(data)
        if sync:
            f.sync()
    finally:
        f.close()


def test_crash_brings_back_the_target_of_a_lost_rename(tmp_path: Path) -> None:
    """Rename A over an existing, durable B without a directory fsync: the rename is not
    durable, so after the crash B is back with its OLD content (a bug once deleted B)."""
    d = str(tmp_path)
    a, b = os.path.join(d, "A"), os.path.join(d, "B")
    fs = FaultInjectionFS()
    _write(fs, b, b"old content of B")
    fs.sync_dir(d)
    _write(fs, a, b"new content")
    fs.rename(a, b)
    fs.crash()
    assert os.path.exists(b), "the target of a lost rename-over-existing was deleted"
    assert Path(b).read_bytes() == b"old content of B"
