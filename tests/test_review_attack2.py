"""Adversarial review, round two (branch ``review2``): one test per defect found, each
failing on the code it was written against (main at e3cc4c1). Nothing here is marked xfail:
a test that passes means its defect is fixed. Round one's findings are in
tests/test_review_attack.py and are not repeated here.

Thread-timing hooks (a file-system subclass that pauses one named thread at one operation)
only make a real interleaving deterministic; each test says which interleaving it forces.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shaledb
from _helpers import close_quietly, key, value
from shaledb.testing import FaultInjectionFS

pytestmark = pytest.mark.timeout(120)


def _newest_log(path: str) -> str:
    return sorted(glob.glob(os.path.join(path, "*.log")))[-1]


def _synced_then_closed(path: str, n: int = 200) -> dict[bytes, bytes]:
    """``n`` writes acknowledged with sync=True, then a clean close (the segment is sealed
    and fsynced; its writes are in no table yet)."""
    model = {}
    db = shaledb.open(path, fsync_interval=None)
    for i in range(n):
        db.put(key(i), value(i), sync=True)
        model[key(i)] = value(i)
    db.close()
    return model


# ---------------------------------------------------------------------------------------------
# 1. A zeroed WAL file header (a lost or zeroed first sector) drops every synced write.


@pytest.mark.parametrize("zeroed", [1, 8, 512, 4096],
                         ids=["first-byte", "magic", "sector", "page"])
def test_zeroed_header_of_a_sealed_wal_segment_silently_drops_its_synced_writes(
        tmp_path: Path, zeroed: int) -> None:
    """Round one fixed a *flipped* bit in the 32-byte log file header ("a damaged log file
    header with data after it counts as durable damage"), but not *zeroed* bytes at the start
    of the file, the most common shape of storage damage (a lost or misdirected write, a
    zeroed sector or page, a leading run of zeros):

    - the first sector or page zeroed: scan_log sees an all-zero header and takes it for
      "file header never written" (a crash right after creation), Damage(0, vouched=False);
    - only the first byte or the magic zeroed (the salt and the records intact): the file
      does not start with the format-2 magic and its first byte is 0, so scan_log and
      salvage_log take it for a log-format-1 file: "zeros in the log" at offset 0, nothing
      vouching, no record found (they are looked for without the salt, as format 1).

    Either way _recover_wal calls it unsynced damage in the newest segment: the strict open
    cuts the whole segment and succeeds without any of the writes acknowledged with
    sync=True (logged at INFO as "unsynced writes a crash tore"); verify says ok (a NOTICE,
    "never confirmed durable"); and repair writes none of them and reports "nothing lost"
    (exit status 0), even where the salt and every record are intact (first byte, magic).
    A crash cannot produce this once the segment has been fsynced (its header is then
    durable); a new segment's header is simply never fsynced on its own, so the reader has
    nothing to tell the two apart."""
    path = str(tmp_path / "db")
    model = _synced_then_closed(path)
    seg = _newest_log(path)
    with open(seg, "r+b") as f:
        f.write(bytes(zeroed))
    report = shaledb.verify(path)
    repaired = shaledb.repair(path, str(tmp_path / "repaired"))
    with shaledb.open(str(tmp_path / "repaired")) as rdb:
        salvaged = len(list(rdb.range()))
    try:
        db = shaledb.open(path)  # wal_recovery="strict"
    except shaledb.CorruptionError:
        db = None
    failures = []
    if db is not None:
        try:
            got = dict(db.range())
            cut = db.stats()["wal_recovery"]["cut"]
        finally:
            db.close()
        missing = sum(got.get(k) != v for k, v in model.items())
        if missing:
            failures.append(f"strict open accepted damage to synced data: {missing} of "
                            f"{len(model)} writes acknowledged with sync=True are gone "
                            f"(cut: {cut[0]['reason']!r}, synced={cut[0]['synced']})")
    if report.ok:
        failures.append("verify says ok (" + "; ".join(
            f"{p.severity} {p.kind}" for p in report.problems) + ")")
    if repaired.lossless and salvaged < len(model):
        failures.append(f"repair says nothing was lost but salvaged {salvaged} of "
                        f"{len(model)} keys")
    assert not failures, "; ".join(failures)


# ---------------------------------------------------------------------------------------------
# 2. After a failed WAL fsync, db.sync() and an empty durable batch retry it and succeed.


class _FsyncgateFS(FaultInjectionFS):
    """After a failed fsync the kernel may have dropped the dirty pages, yet they stay
    readable from the page cache and a later fsync of the same file succeeds: the bytes
    unsynced at the failure never count as durable, whatever fsync follows (the model of
    tests/test_review_engine.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.poisoned: dict[str, int] = {}

    def _sync(self, path: str, do: Any) -> None:
        try:
            super()._sync(path, do)
        except shaledb.StorageError:
            with self._cv:
                self.poisoned.setdefault(path, self._locked_known(path).durable_end)
            raise

    def _locked_apply(self, r: tuple[Any, ...]) -> None:
        super()._locked_apply(r)
        if r[0] == "fsync" and r[1] in self.poisoned:
            from shaledb.testing.faultfs import SECTOR

            ino = self._locked_known(r[1])
            start = self.poisoned[r[1]]
            ino.durable_end = min(ino.durable_end, start)
            for sector in range(start // SECTOR, -(-ino.data_end // SECTOR)):
                ino.dirty[sector] = 1 << 62


@pytest.mark.parametrize("how", ["db.sync", "empty-durable-batch"])
def test_sync_after_a_failed_wal_fsync_reports_success_for_lost_writes(
        tmp_path: Path, how: str) -> None:
    """Ten writes without sync; db.sync() fails with EIO (the database turns read-only, as
    documented: "after a failed WAL sync the DB refuses writes ... retrying a failed fsync in
    place is unsafe"). The caller asks again, with db.sync() or with the round-one fix "an
    empty durable batch syncs" (db.write(WriteBatch(), sync=True)): Engine.sync_wal checks
    only that the database is open, not the background error, and fsyncs the same segment
    again; the kernel reports success (fsyncgate: the pages were dropped and marked clean),
    and the call returns normally, telling the caller that "every write so far survives
    power loss" (DB.sync's docstring). A put(sync=True) at the same moment raises
    ReadOnlyError. The power then fails and the ten writes are gone."""
    path = str(tmp_path / "db")
    fs = _FsyncgateFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None)
    try:
        db.put(b"base", b"1", sync=True)
        for i in range(10):
            db.put(key(i), value(i))
        fs.inject("fsync", path=".log", errno=errno.EIO)
        with pytest.raises(shaledb.StorageError):
            db.sync()
        with pytest.raises(shaledb.ReadOnlyError):
            db.put(b"x", b"y", sync=True)
        acknowledged = True
        try:
            if how == "db.sync":
                db.sync()
            else:
                db.write(shaledb.WriteBatch(), sync=True)
        except shaledb.ShaleError:
            acknowledged = False
    finally:
        fs.crash()
        close_quietly(db)
    if not acknowledged:
        return
    with shaledb.open(path) as db:
        survived = [db.get(key(i)) is not None for i in range(10)]
    assert all(survived), (
        f"{how} returned success after the WAL fsync had failed (the database was already "
        f"read-only); after a power loss {survived.count(False)} of the 10 writes it "
        f"vouched for are gone")


class _HeldFailingFsyncFS(_FsyncgateFS):
    """The first WAL fsync after :meth:`arm` waits for ``gate``, then fails with EIO (and
    poisons the pages it should have written, as above)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.arrived = threading.Event()
        self.gate = threading.Event()

    def arm(self) -> None:
        self.armed = True

    def _sync(self, path: str, do: Any) -> None:
        if self.armed and path.endswith(".log"):
            self.armed = False
            self.arrived.set()
            self.gate.wait(20)
            self.inject("fsync", ".log", errno.EIO)
        super()._sync(path, do)


def test_appendfsync_always_acknowledges_a_write_whose_fsync_failed(tmp_path: Path) -> None:
    """The server's strongest mode. With ``appendfsync always`` a SET is written without
    fsync and its +OK waits for the next group fsync (SyncGroup: one db.sync() in a worker
    thread). Client A's SET starts a group fsync, which fails with EIO; client B's SET,
    written to the WAL while that fsync ran, waits for the next one. SyncGroup._done hands
    A the error and starts that next db.sync() at once; Engine.sync_wal does not look at the
    background error the first failure set, fsyncs the same segment again, the kernel says
    yes (fsyncgate), and B gets +OK. The power fails: B's acknowledged write is gone.

    Forced interleaving: the first fsync is held (inside the file system) until B's SET was
    applied and is waiting for its fsync."""
    from server._server_support import HOST, ServerThread
    from shaledb.server import ServerConfig

    path = str(tmp_path / "db")
    fs = _HeldFailingFsyncFS()
    db = shaledb.open(path, fs=fs, fsync_interval=None)
    st = ServerThread(ServerConfig(port=0, host=HOST, dir=path, appendfsync="always"), db)
    a = b = None
    replies: dict[str, Any] = {}
    try:
        a, b = st.client(), st.client()
        a.set("before", "1")
        fs.arm()

        def set_a() -> None:
            try:
                replies["a"] = a.set("a", "1")
            except Exception as exc:  # noqa: BLE001 - recorded
                replies["a"] = exc

        ta = threading.Thread(target=set_a, daemon=True)
        ta.start()
        assert fs.arrived.wait(10), "A's fsync never started"

        def set_b() -> None:
            try:
                replies["b"] = b.set("b", "2")
            except Exception as exc:  # noqa: BLE001 - recorded
                replies["b"] = exc

        tb = threading.Thread(target=set_b, daemon=True)
        tb.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and st.call(
                lambda: st.server.db.get(b"\x00b")) is None:
            time.sleep(0.01)
        time.sleep(0.1)  # B's reply is held for the next fsync
        fs.gate.set()
        ta.join(10)
        tb.join(10)
    finally:
        fs.gate.set()
        fs.crash()
        for c in (a, b):
            if c is not None:
                c.close()
        with contextlib.suppress(Exception):
            st.stop()
        close_quietly(db)
    assert isinstance(replies.get("a"), Exception), replies
    with shaledb.open(path) as db2:
        b_after = db2.get(b"\x00b")
    shown = {k: f"{type(v).__name__}: {v}" for k, v in replies.items()}
    assert replies.get("b") is not True or b_after is not None, (
        f"client B got +OK for SET b (replies: {shown}) after the first group fsync had "
        "failed; after the power loss its write is gone")


# ---------------------------------------------------------------------------------------------
# 4. A long scrub-interval kills the scrub thread and makes /health report degraded.


def _health(st: Any) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{st.server.metrics_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("how", ["config-set", "at-start"])
def test_a_long_scrub_interval_kills_the_scrub_thread_and_degrades_health(
        tmp_path: Path, how: str) -> None:
    """scrub-interval accepts any finite number >= 0 (settings.number; ServerConfig checks
    the same). An operator who wants "practically never, SCRUB NOW from cron" sets
    1e10 seconds: Scrubber._main then calls self._wake.wait(due - now) with ~1e10 s, above
    threading.TIMEOUT_MAX (~9.2e9 on Linux), and Event.wait raises OverflowError
    ("timestamp out of range for platform time_t"). The thread records it as
    thread_error and ends: /health answers 503 "degraded" (the scrub thread stopped) on a
    healthy server, and SCRUB NOW is refused until the server restarts."""
    from server._server_support import HOST, ServerThread
    from shaledb.server import ServerConfig

    settings: dict[str, Any] = {"port": 0, "host": HOST, "dir": str(tmp_path / "db"),
                                "metrics_port": 0}
    if how == "at-start":
        settings["scrub_interval"] = 1e10
    st = ServerThread(ServerConfig(**settings))
    try:
        r = st.client()
        if how == "config-set":
            assert r.config_set("scrub-interval", "10000000000")
        time.sleep(0.3)
        code, body = _health(st)
        error = r.info("scrub")["scrub_thread_error"]
        r.close()
    finally:
        st.stop()
    assert code == 200 and not error, (
        f"scrub-interval 1e10: /health {code} {body.get('reason')!r}; INFO "
        f"scrub_thread_error={error!r}")


# ---------------------------------------------------------------------------------------------
# 5. A read-only open of a directory without LOCK takes no lock: a writer opens beside it.


def test_read_only_open_without_a_lock_file_lets_a_writer_open_beside_it(
        tmp_path: Path) -> None:
    """Round one's fix for "a read-only open writes LOCK": with no LOCK file (a backup or
    restore copied without it) the read-only open now takes no lock at all, so the README's
    "a second shaledb.open of the same path, in this process or another, raises LockedError"
    no longer holds: a writable open next to it succeeds (creating LOCK), recovers, compacts
    and deletes the tables the read-only handle's version lists; the read-only handle's
    reads then fail (StorageError: No such file or directory). With a LOCK file present the
    same two opens raise LockedError, so whether the guarantee holds depends on a file the
    documentation says "carries no data the engine relies on"."""
    path = str(tmp_path / "db")
    with shaledb.open(path, fsync_interval=None) as db:
        for i in range(100):
            db.put(key(i), value(i))
        db.flush()
        for i in range(100):
            db.put(key(i), b"new")
        db.flush()
    os.remove(os.path.join(path, "LOCK"))
    ro = shaledb.open(path, read_only=True)
    writer = None
    try:
        try:
            writer = shaledb.open(path, fsync_interval=None)
        except shaledb.LockedError:
            return
        writer.compact_range()
        try:
            got = ro.get(key(1))
            outcome = f"it reads {got!r}"
        except shaledb.ShaleError as exc:
            outcome = f"its reads fail: {type(exc).__name__}: {exc}"
        pytest.fail("a writable open succeeded while a read-only handle was open (no "
                    f"LockedError); after the writer's compaction {outcome}")
    finally:
        close_quietly(writer)
        close_quietly(ro)


# ---------------------------------------------------------------------------------------------
# 6. verify says ok for a WAL segment copied under another number; open refuses.


def test_verify_says_ok_for_a_wal_segment_whose_header_names_another_number(
        tmp_path: Path) -> None:
    """Round one made verify mirror open for a manifest whose header names another number,
    not for WAL segments. A WAL segment copied into the database under a higher number (here
    the empty, sealed segment of the last session: a clean close after an open with no
    writes): open refuses the database ("its header says it is segment 6 (a file copied or
    renamed into the database?) ... corruption, not a crash"); verify (and the server's
    scrub, db.verify) never compares the header's number with the name: ok=True, exit 0."""
    import shutil

    path = str(tmp_path / "db")
    _synced_then_closed(path, 10)
    shaledb.open(path).close()  # the writes go to a table; the new segment stays empty
    seg = _newest_log(path)
    n = int(os.path.basename(seg)[:-4])
    shutil.copy(seg, os.path.join(path, f"{n + 50:06d}.log"))
    with pytest.raises(shaledb.CorruptionError):
        shaledb.open(path).close()
    report = shaledb.verify(path)
    assert not report.ok, "verify says ok for a database whose WAL open refuses"


# ---------------------------------------------------------------------------------------------
# 7. repair writes under PATH when DEST reaches it through a bind mount.


def test_repair_writes_into_the_source_through_a_bind_mount(tmp_path: Path) -> None:
    """Round one made _check_dest compare os.path.realpath of PATH and DEST (a symlink no
    longer routes DEST into PATH). A bind mount of the database directory (a container
    volume mounted twice, /data and /mnt/data) is not a symlink: realpath leaves it alone,
    the path strings differ, the check passes, and repair creates its new database inside
    the directory it salvages, against README's "It never writes under PATH". Comparing
    (st_dev, st_ino) of DEST's existing ancestors with PATH would catch it.

    Needs root (mount --bind); skipped where the sandbox forbids mounting."""
    import subprocess

    src = tmp_path / "db"
    with shaledb.open(str(src)) as db:
        for i in range(10):
            db.put(key(i), value(i))
    alias = tmp_path / "alias"
    alias.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(src), str(alias)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("mount --bind is not permitted here")
    before = sorted(os.listdir(src))
    try:
        try:
            shaledb.repair(str(src), str(alias / "salvaged"))
        except shaledb.ShaleError:
            pass  # refusing is fine
        after = sorted(os.listdir(src))
    finally:
        subprocess.run(["umount", str(alias)], check=False)
    assert after == before, f"repair wrote {sorted(set(after) - set(before))} under PATH"


# ---------------------------------------------------------------------------------------------
# 8. After a zeroed first byte, repair salvages a record forged inside a client's value.


def _forged_v1_record(first_seq: int, key_: bytes, value_: bytes) -> bytes:
    """A log-format-1 record (no salt: anyone can frame one) holding one PUT, written from
    docs/format.md ("Log format 1" and "WAL payload")."""
    import struct

    import crc32c
    import msgpack

    payload = struct.pack("<QI", first_seq, 1) + msgpack.packb([1, key_, 0, value_],
                                                               use_bin_type=True)
    head = struct.pack("<BI", 1, len(payload))
    crc = crc32c.crc32c(payload, crc32c.crc32c(head))
    return b"\xdb\x5a" + head + crc.to_bytes(4, "little") + payload


def test_repair_of_a_wal_segment_with_a_zeroed_first_byte_salvages_a_forged_record(
        tmp_path: Path) -> None:
    """The salt exists so that "bytes inside a client's value can never pass for a log
    record" (README). A client writes a value that is a log-format-1 record (unsalted CRC)
    putting key b"victim" with sequence number 2^62. The first byte of the WAL segment is
    then zeroed (any damage that zeroes the leading bytes). salvage_log, seeing a first byte
    of 0 and not 32 zero bytes, reads the segment as log format 1 and resynchronises on
    magic + unsalted CRC: the genuine format-2 records all fail, the forged one passes.
    shaledb repair then writes b"victim" = b"pwned" into the repaired database (its
    sequence number beats every real version), and drops every genuine write of the
    segment."""
    path = str(tmp_path / "db")
    db = shaledb.open(path, fsync_interval=None)
    db.put(b"victim", b"real", sync=True)
    db.flush()  # the real value is in a table: repair reads it from there
    db.put(b"attacker", _forged_v1_record(1 << 62, b"victim", b"pwned"), sync=True)
    for i in range(20):
        db.put(key(i), value(i), sync=True)
    db.close()
    seg = _newest_log(path)
    with open(seg, "r+b") as f:
        f.write(b"\0")
    report = shaledb.repair(path, str(tmp_path / "repaired"))
    with shaledb.open(str(tmp_path / "repaired")) as rdb:
        victim = rdb.get(b"victim")
        genuine = sum(rdb.get(key(i)) is not None for i in range(20))
    assert victim == b"real", (
        f"repair wrote the value forged inside a client's value: victim = {victim!r} "
        f"(genuine writes of the segment salvaged: {genuine} of 20; lossless="
        f"{report.lossless})")
