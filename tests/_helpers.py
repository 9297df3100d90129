"""Shared code of the durability tests (test_crash, test_faults, test_corruption,
test_permissions): a deterministic workload with its model, and helpers that find and damage
records and blocks in the on-disk files.

The file-format parsing here is written from docs (record framing, table footer) and is
deliberately independent of the engine's own readers, so that a bug in those readers cannot
hide itself.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack
import pytest

import shaledb

KiB = 1024
MiB = 1024 * KiB

#: Small sizes so that flushes and compactions happen after a few hundred KiB of writes.
SMALL: dict[str, Any] = {
    "memtable_size": 64 * KiB,
    "target_file_size": 64 * KiB,
    "max_bytes_for_level_base": 128 * KiB,
    "block_size": 1024,
    "l0_compaction_trigger": 2,
}

# ---------------------------------------------------------------------------------------------
# Deterministic workload

Op = tuple[str, Any]  # ("put", (k, v)) | ("delete", k) | ("batch", [(kind, k, v|None), ...])


def key(i: int) -> bytes:
    return b"key%08d" % i


def value(i: int, j: int = 0, size: int | None = None) -> bytes:
    """Value written by operation ``i`` (sub-op ``j``); self-describing so a wrong value
    names where it came from."""
    head = b"v%d.%d:" % (i, j)
    if size is None:
        size = 16 + (i * 7919 + j * 104729) % 700
    return (head * (size // len(head) + 1))[:max(size, len(head))]


def make_op(seed: int, i: int, keyspace: int | None = None) -> Op:
    """Operation number ``i`` of the workload ``seed`` (independent of every other op).

    Keys are ``key(i)`` (a new key) or an earlier one; with ``keyspace`` the key numbers wrap
    around, so that a long run overwrites instead of growing without bound.
    """
    rng = random.Random(seed * 1_000_003 + i)
    ks = keyspace or (1 << 62)

    def earlier() -> bytes:
        return key(rng.randrange(max(i, 1)) % ks)

    r = rng.random()
    if r < 0.55 or i < 4:
        # mostly new keys, sometimes an overwrite of an earlier key
        k = key(i % ks) if rng.random() < 0.7 else earlier()
        return ("put", (k, value(i)))
    if r < 0.80:
        ops = []
        for j in range(rng.randint(1, 6)):
            if rng.random() < 0.75:
                k = key(i % ks) if j == 0 else earlier()
                ops.append(("put", k, value(i, j)))
            else:
                ops.append(("delete", earlier(), None))
        return ("batch", ops)
    return ("delete", earlier())


def apply_op(model: dict[bytes, bytes], op: Op) -> None:
    kind, arg = op
    if kind == "put":
        model[arg[0]] = arg[1]
    elif kind == "delete":
        model.pop(arg, None)
    else:
        for k2, kk, vv in arg:
            if k2 == "put":
                model[kk] = vv
            else:
                model.pop(kk, None)


def do_op(db: Any, op: Op, *, sync: bool) -> None:
    kind, arg = op
    if kind == "put":
        db.put(arg[0], arg[1], sync=sync)
    elif kind == "delete":
        db.delete(arg, sync=sync)
    elif len(arg) % 2:
        with db.batch(sync=sync) as b:
            for k2, kk, vv in arg:
                if k2 == "put":
                    b.put(kk, vv)
                else:
                    b.delete(kk)
    else:  # the explicit WriteBatch API for half of the batches
        wb = shaledb.WriteBatch()
        for k2, kk, vv in arg:
            if k2 == "put":
                wb.put(kk, vv)
            else:
                wb.delete(kk)
        db.write(wb, sync=sync)


def model_after(seed: int, n: int, keyspace: int | None = None) -> dict[bytes, bytes]:
    model: dict[bytes, bytes] = {}
    for i in range(n):
        apply_op(model, make_op(seed, i, keyspace))
    return model


def scan(db: Any) -> dict[bytes, bytes]:
    """The whole database as a dict (also checks that the scan is strictly ascending)."""
    out: dict[bytes, bytes] = {}
    last = None
    for k, v in db.range():
        assert last is None or k > last, f"range() not strictly ascending at {k!r}"
        last = k
        out[k] = v
    return out


def diff(actual: dict[bytes, bytes], expected: dict[bytes, bytes], limit: int = 8) -> str:
    """A short human description of how two states differ."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(k for k in set(actual) & set(expected) if actual[k] != expected[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:limit]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[:limit]})")
    if wrong:
        parts.append(f"{len(wrong)} wrong values (e.g. "
                     f"{[(k, actual[k][:24], expected[k][:24]) for k in wrong[:limit]]})")
    return "; ".join(parts) or "equal"


def check_gets(db: Any, expected: dict[bytes, bytes], absent: Iterable[bytes] = ()) -> None:
    """Point lookups agree with ``expected`` (the get path differs from the scan path)."""
    for k, v in expected.items():
        got = db.get(k)
        assert got == v, f"get({k!r}) -> {None if got is None else got[:32]!r}, expected {v[:32]!r}"
    for k in absent:
        if k not in expected:
            assert db.get(k) is None, f"get({k!r}) returned a deleted/unwritten key"


def close_quietly(db: Any) -> None:
    """Release a (possibly broken) database: errors of a failed DB are expected here."""
    if db is not None:
        with contextlib.suppress(shaledb.ShaleError):
            db.close()


def wait_for(pred: Any, timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


# ---------------------------------------------------------------------------------------------
# On-disk files

LOG_MAGIC = b"\xdb\x5a"
LOG_FILE_MAGIC = b"SHALElog"
LOG_FILE_HEADER_SIZE = 32  # magic(8) version(4) number(8) salt(8) crc32c(4)
LOG_HEADER = struct.Struct("<2sBIQII")  # magic, type, length, synced, hcrc, crc (log format 2)
LOG_HEADER_V1 = struct.Struct("<2sBII")  # magic, type, length, crc32c (log format 1)
SST_FOOTER = struct.Struct("<QIQIQII12xI8s")
SST_FOOTER_SIZE = 64
SST_TRAILER = 5  # 1-byte compression type + 4-byte crc32c


def files(path: str | os.PathLike[str], suffix: str = "", prefix: str = "") -> list[str]:
    """Sorted full paths of the files in ``path`` named ``prefix*suffix``."""
    p = os.fspath(path)
    return sorted(os.path.join(p, n) for n in os.listdir(p)
                  if n.endswith(suffix) and n.startswith(prefix) and not n.endswith(".tmp"))


def log_records(path: str, *, seals: bool = False) -> list[tuple[int, int]]:
    """``(offset, total_size)`` of every well-framed full record (and seal, with ``seals``)
    of a WAL segment or manifest, in log format 2 (or 1, for files without a header)."""
    with open(path, "rb") as fh:
        data = fh.read()
    out = []
    header = LOG_HEADER
    pos = 0
    if data.startswith(LOG_FILE_MAGIC):
        pos = LOG_FILE_HEADER_SIZE
    else:
        header = LOG_HEADER_V1
    while pos + header.size <= len(data):
        magic, rtype, length = header.unpack_from(data, pos)[:3]
        if magic != LOG_MAGIC or pos + header.size + length > len(data):
            break
        if rtype == 1 or seals:
            out.append((pos, header.size + length))
        pos += header.size + length
    return out


def append_log_record(path: str, payload: bytes, rtype: int = 1) -> None:
    """Append a valid log-format-2 record to the log at ``path`` (written from docs/format.md:
    the salt is in the file header), vouching that everything before it was synced."""
    import crc32c

    with open(path, "r+b") as fh:
        data = fh.read()
        assert data.startswith(LOG_FILE_MAGIC), "not a log format 2 file"
        salt = data[20:28]
        head = struct.pack("<BIQ", rtype, len(payload), len(data))
        hcrc = crc32c.crc32c(head, crc32c.crc32c(salt))
        crc = crc32c.crc32c(payload, hcrc)
        fh.write(LOG_MAGIC + head + hcrc.to_bytes(4, "little") + crc.to_bytes(4, "little")
                 + payload)
        fh.flush()
        os.fsync(fh.fileno())


def two_live_segments(path: str) -> tuple[list[str], list[dict[bytes, bytes]]]:
    """A database with two live WAL segments: the memtable was switched (the older segment
    sealed), then the flush of the frozen memtable failed, so both segments stay live. The
    first 20 puts are in the older segment; returns the segments and the model after each
    put."""
    from shaledb.testing import FaultInjectionFS

    fs = FaultInjectionFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None)
    models: list[dict[bytes, bytes]] = [{}]
    try:
        fs.inject("create", path=".sst", count=None)
        for i in range(20):
            db.put(key(i), value(i, size=200))
            models.append({**models[-1], key(i): value(i, size=200)})
        try:
            db.flush()  # switches the memtable; its flush then fails
        except shaledb.ReadOnlyError:
            pass
        else:
            raise AssertionError("the flush was expected to fail")
    finally:
        db.close()
    segs = files(path, ".log")
    assert len(segs) == 2, segs
    return segs, models


def copy_db(src: str, tmp_path: str | os.PathLike[str]) -> tuple[str, str]:
    """Copy database ``src`` to ``tmp_path/db``; returns it and its (first) table."""
    import shutil

    dst = os.path.join(tmp_path, "db")
    shutil.copytree(src, dst)
    return dst, files(dst, ".sst")[0]


def current_manifest(path: str | os.PathLike[str]) -> str:
    """Path of the manifest CURRENT names (its first line)."""
    with open(os.path.join(path, "CURRENT"), "rb") as fh:
        name = fh.read().split(b"\n", 1)[0].decode()
    return os.path.join(path, name)


def flip(path: str, offset: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``offset`` of ``path`` with ``mask`` (in place, fsynced)."""
    assert mask & 0xFF
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        assert len(b) == 1, f"offset {offset} is past the end of {path}"
        fh.seek(offset)
        fh.write(bytes([b[0] ^ mask]))
        fh.flush()
        os.fsync(fh.fileno())


def truncate(path: str, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        fh.flush()
        os.fsync(fh.fileno())


class SstLayout:
    """Where the parts of a table are (block handles count the payload only)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as fh:
            data = fh.read()
        self.size = len(data)
        fo, fs, io, isz, po, ps, self.version, _crc, self.magic = SST_FOOTER.unpack(
            data[-SST_FOOTER_SIZE:])
        self.footer_offset = len(data) - SST_FOOTER_SIZE
        self.filter = (fo, fs)
        self.index = (io, isz)
        self.props = (po, ps)
        raw_index = data[io:io + isz]
        ctype = data[io + isz]
        assert ctype == 0, "index block is expected to be stored uncompressed"
        last_keys, offsets, sizes = msgpack.unpackb(raw_index, raw=True)
        #: (last_key, offset, payload size) of every data block
        self.data_blocks: list[tuple[bytes, int, int]] = list(
            zip(last_keys, offsets, sizes, strict=True))

    def block_keys(self, i: int, all_keys: Iterable[bytes]) -> list[bytes]:
        """The keys of ``all_keys`` that belong in data block ``i`` (by the index bounds)."""
        hi = self.data_blocks[i][0]
        lo = self.data_blocks[i - 1][0] if i else None
        return sorted(k for k in all_keys if (lo is None or k > lo) and k <= hi)


def iter_child_lines(path: str) -> Iterator[str]:
    with open(path, encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.endswith("\n"):
                yield line.rstrip("\n")


# ---------------------------------------------------------------------------------------------
# WAL segments at a memtable switch (database format 4: test_wal_async_seal, test_review_wal4,
# server/test_server_review_wal4)

def wal_logs(path: Any) -> list[str]:
    """Names of the WAL segments in ``path`` (not the prepared ``.log.new`` one)."""
    return sorted(n for n in os.listdir(path) if n.endswith(".log"))


def in_thread(fn: Any) -> tuple[Any, list[Any]]:
    """Run ``fn`` in a daemon thread; returns the thread and a list that gets its result
    (or the exception it raised)."""
    import threading

    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def hold_seal(monkeypatch: Any) -> tuple[Any, Any]:
    """Hold the flush thread at the start of its seal of the retired WAL segments: returns
    (gate, entered): set ``gate`` to let it go on; ``entered`` is set once it got there.
    It patches the engine, so a test that uses it runs in the pure build only."""
    import threading

    from conftest import compiled_build

    if compiled_build():
        pytest.skip("holds the seal by patching compiled code; runs in the pure build "
                    "(make test-pure)")

    from shaledb.engine.db import Engine

    gate, entered = threading.Event(), threading.Event()
    real = Engine._seal_retired_wals

    def held(self: Engine) -> None:
        entered.set()
        gate.wait(30)
        real(self)

    monkeypatch.setattr(Engine, "_seal_retired_wals", held)
    return gate, entered


def dir_emfile_fs() -> Any:
    """A FaultInjectionFS whose next ``fail_dirs`` directory fsyncs fail with EMFILE, as the
    real one does when no descriptor is left to open the directory with."""
    import errno

    from shaledb.engine.vfs import _storage_error
    from shaledb.testing import FaultInjectionFS

    class DirEmfileFS(FaultInjectionFS):
        fail_dirs = 0

        def sync_dir(self, path: str) -> None:
            if self.fail_dirs > 0:
                self.fail_dirs -= 1
                exc = OSError(errno.EMFILE, os.strerror(errno.EMFILE), path)
                raise _storage_error("fsync directory", path, exc) from exc
            super().sync_dir(path)

    return DirEmfileFS()
