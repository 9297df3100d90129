"""Crash loops: a child process writes, the parent SIGKILLs it at a random moment, reopens the
database and checks that every acknowledged write survived and that the state is exactly the
state after some prefix of the issued operations (no lost, reordered or half-applied writes).

The child appends "I n" before it issues operation n and "A n" once the call returned, with a
raw ``os.write`` to a file: those bytes are in the kernel when the child is killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import shaledb
from _helpers import (
    SMALL,
    MiB,
    apply_op,
    check_gets,
    diff,
    make_op,
    model_after,
    scan,
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(shaledb.__file__)))

# Every compaction runs in a worker process, so kills also land while workers run.
CRASH_OPTS: dict[str, Any] = {**SMALL, "compaction_process_threshold": 0}
KEYSPACE = 20_000

CHILD = r"""
import json, os, sys, time
db_path, seed, start, sync, out_path, opts, keyspace = sys.argv[1:8]
seed, start, sync, keyspace = int(seed), int(start), sync == "1", int(keyspace)
opts = json.loads(opts)
fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
def emit(s):
    os.write(fd, (s + "\n").encode())
emit("START")
import shaledb
from _helpers import do_op, make_op
db = shaledb.open(db_path, **opts)
emit("OPEN")
i = start
while True:
    op = make_op(seed, i, keyspace)
    emit(f"I {i}")
    do_op(db, op, sync=sync)
    emit(f"A {i}")
    i += 1
"""

FILL_CHILD = r"""
import json, os, sys
db_path, out_path, opts = sys.argv[1:4]
opts = json.loads(opts)
fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
import shaledb
from _helpers import key, value
db = shaledb.open(db_path, **opts)
recovery_flushes = db.stats()["flushes"]  # what the open wrote from the WAL it replayed
limit = int(opts["memtable_size"] * 0.9)
i = 0
while True:
    db.put(key(i), value(i), sync=False)
    i += 1
    if i % 64 == 0:
        st = db.stats()
        assert st["flushes"] == recovery_flushes and st["immutable_memtables"] == 0, st
        if st["memtable_bytes"] >= limit:
            break
os.write(fd, f"FULL {i} {st['memtable_bytes']}\n".encode())
while True:
    os.write(fd, b"WAIT\n")
    import time; time.sleep(0.05)
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    parts = [PKG_PARENT, TESTS_DIR]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def read_lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text("ascii", errors="replace")
    # The last line may be cut by the kill: keep complete lines only.
    return text.split("\n")[:-1]


class CrashLoop:
    """Runs child writers on one directory and checks the state after every kill."""

    def __init__(self, tmp: Path, seed: int, opts: dict[str, Any], keyspace: int = KEYSPACE):
        self.tmp = tmp
        self.db_path = str(tmp / "db")
        self.seed = seed
        self.opts = opts
        self.keyspace = keyspace
        self.prefix = 0  # the state on disk is the model after this many operations
        self.model: dict[bytes, bytes] = {}
        self.rng = random.Random(seed)
        self.iteration = 0
        self.total_acked = 0
        self.kills_before_open = 0
        self.after_open_share = 0.75

    def _wait_for_open(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        deadline = time.monotonic() + 90
        while "OPEN" not in read_lines(out):
            if proc.poll() is not None:
                pytest.fail(f"child exited by itself with {proc.returncode}:\n"
                            f"{err.read_text(errors='replace')[-4000:]}")
            assert time.monotonic() < deadline, "the child never finished opening the database"
            time.sleep(0.01)

    def run_child(self, sync: bool, min_sleep: float, max_sleep: float) -> tuple[int, int]:
        """One child life; returns (acked, issued) as operation counts from the start."""
        self.iteration += 1
        out = self.tmp / f"child-{self.iteration}.out"
        err = self.tmp / f"child-{self.iteration}.err"
        with open(err, "wb") as errf:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, self.db_path, str(self.seed), str(self.prefix),
                 "1" if sync else "0", str(out), json.dumps(self.opts), str(self.keyspace)],
                env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=errf)
            try:
                # Most lives are timed from the end of the open, so a loaded machine (a slow
                # interpreter start or key derivation) cannot turn every kill into a kill during
                # open; the rest are timed from the start and also land inside recovery.
                if self.rng.random() < self.after_open_share:
                    self._wait_for_open(proc, out, err)
                time.sleep(self.rng.uniform(min_sleep, max_sleep))
                if proc.poll() is not None:
                    pytest.fail(f"child exited by itself with {proc.returncode}:\n"
                                f"{err.read_text(errors='replace')[-4000:]}")
                os.kill(proc.pid, signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, err.read_text(errors="replace")[-4000:]
        lines = read_lines(out)
        if "OPEN" not in lines:
            self.kills_before_open += 1
        issued = [int(x[2:]) for x in lines if x.startswith("I ")]
        acked = [int(x[2:]) for x in lines if x.startswith("A ")]
        assert acked == list(range(self.prefix, self.prefix + len(acked))), "child log garbled"
        n_acked = self.prefix + len(acked)
        n_issued = max(issued) + 1 if issued else self.prefix
        assert n_issued - n_acked in (0, 1)
        return n_acked, n_issued

    def verify(self, n_acked: int, n_issued: int) -> None:
        """Reopen, find the prefix the state corresponds to, check it covers every ack."""
        t0 = time.perf_counter()
        db = shaledb.open(self.db_path, **self.opts)
        reopen = time.perf_counter() - t0
        try:
            assert db.stats()["background_error"] is None
            state = scan(db)
            # Advance the model to the acknowledged prefix (ops [prefix, n_acked) were acked).
            touched: set[bytes] = set()
            for i in range(self.prefix, n_acked):
                op = make_op(self.seed, i, self.keyspace)
                apply_op(self.model, op)
                touched.update(_op_keys(op))
            matched = state == self.model
            if not matched and n_issued > n_acked:
                # The operation in flight when the child died may or may not have landed.
                candidate = dict(self.model)
                op = make_op(self.seed, n_acked, self.keyspace)
                apply_op(candidate, op)
                if state == candidate:
                    matched = True
                    self.model = candidate
                    touched.update(_op_keys(op))
                    n_acked += 1
            assert matched, (
                f"iteration {self.iteration}: after SIGKILL the database is not the state after "
                f"{n_acked} (acknowledged) or {n_issued} (issued) operations: "
                f"{diff(state, self.model)}")
            self.total_acked += n_acked - self.prefix
            self.prefix = n_acked
            # The point-lookup path (filters, index, memtable) agrees as well.
            sample_keys = sorted(self.model)
            sample = set(self.rng.sample(sample_keys, min(500, len(sample_keys))))
            sample.update(k for k in touched if k in self.model)
            check_gets(db, {k: self.model[k] for k in sample},
                       absent=[k for k in touched if k not in self.model])
        finally:
            db.close()
        self.last_reopen_seconds = reopen


def _op_keys(op: Any) -> list[bytes]:
    kind, arg = op
    if kind == "put":
        return [arg[0]]
    if kind == "delete":
        return [arg]
    return [kk for _, kk, _ in arg]


def _crash_loop(tmp: Path, seed: int, iterations: int, sync_mode: str,
                min_sleep: float = 0.1, max_sleep: float = 1.6,
                opts: dict[str, Any] | None = None) -> CrashLoop:
    loop = CrashLoop(tmp, seed, CRASH_OPTS if opts is None else opts)
    for _ in range(iterations):
        if sync_mode == "mixed":
            sync = loop.rng.random() < 0.5
        else:
            sync = sync_mode == "sync"
        n_acked, n_issued = loop.run_child(sync, min_sleep, max_sleep)
        loop.verify(n_acked, n_issued)
    return loop


def _assert_exercised(loop: CrashLoop) -> None:
    db = shaledb.open(loop.db_path, **loop.opts)
    try:
        st = db.stats()
    finally:
        db.close()
    print(f"crash loop: {loop.iteration} kills, {loop.total_acked} acknowledged ops, "
          f"{loop.kills_before_open} kills before open finished, levels="
          f"{[(x['level'], x['files']) for x in st['levels'] if x['files']]}")
    assert loop.total_acked > 0, "the children never acknowledged a write"
    assert any(x["files"] for x in st["levels"]), "no table was ever written (no flush ran)"


@pytest.mark.timeout(120)
def test_crash_loop_sync_writes(tmp_path: Path) -> None:
    """sync=True: every acknowledged write survives SIGKILL; state is a prefix."""
    loop = _crash_loop(tmp_path, seed=1, iterations=5, sync_mode="sync")
    _assert_exercised(loop)


@pytest.mark.timeout(120)
def test_crash_loop_async_writes(tmp_path: Path) -> None:
    """sync=False: a process crash (not power loss) must not lose acknowledged writes either,
    because they were handed to the OS before the call returned."""
    loop = _crash_loop(tmp_path, seed=2, iterations=5, sync_mode="async")
    _assert_exercised(loop)
    # Deeper levels must have been reached for the loop to have exercised compaction.


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_crash_loop_soak(tmp_path: Path) -> None:
    """Hundreds of kills on one directory, sync and async writes mixed, short and long lives
    (some kills land during open/recovery)."""
    iterations = int(os.environ.get("SHALEDB_SOAK_ITERATIONS", "300"))
    seed = int(os.environ.get("SHALEDB_SOAK_SEED", str(random.randrange(1 << 30))))
    print(f"soak seed {seed}")
    loop = _crash_loop(tmp_path, seed=seed, iterations=iterations, sync_mode="mixed",
                       min_sleep=0.05, max_sleep=1.5)
    _assert_exercised(loop)


def _encrypted_opts(tmp: Path) -> dict[str, Any]:
    """CRASH_OPTS on an encrypted database: the key reaches the children in a key file
    (0600), never on their command line."""
    key_file = tmp / "key"
    key_file.write_text(bytes(range(7, 39)).hex())
    key_file.chmod(0o600)
    return {**CRASH_OPTS, "encryption_key_file": str(key_file)}


@pytest.mark.timeout(120)
def test_crash_loop_encrypted(tmp_path: Path) -> None:
    """The crash loop with encryption on (sync and async writes mixed): every acknowledged
    write survives SIGKILL and the state is a prefix, through recovery copies of encrypted
    WAL records and compactions in the worker with keys sent over its pipe."""
    loop = _crash_loop(tmp_path, seed=4, iterations=5, sync_mode="mixed",
                       opts=_encrypted_opts(tmp_path))
    _assert_exercised(loop)
    with shaledb.open(loop.db_path, **loop.opts) as db:
        assert db.encrypted


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_crash_loop_soak_encrypted(tmp_path: Path) -> None:
    """The soak crash loop on an encrypted database."""
    iterations = int(os.environ.get("SHALEDB_SOAK_ITERATIONS", "300")) // 2
    seed = int(os.environ.get("SHALEDB_SOAK_SEED", str(random.randrange(1 << 30))))
    print(f"soak seed {seed} (encrypted)")
    loop = _crash_loop(tmp_path, seed=seed, iterations=iterations, sync_mode="mixed",
                       min_sleep=0.05, max_sleep=1.5, opts=_encrypted_opts(tmp_path))
    _assert_exercised(loop)


@pytest.mark.timeout(180)
def test_kill_with_full_memtable_recovers(tmp_path: Path) -> None:
    """SIGKILL with a ~4 MiB memtable that lives only in the WAL: reopen replays it all."""
    opts = {"memtable_size": 4 * MiB}
    db_path = str(tmp_path / "db")
    out = tmp_path / "fill.out"
    err = tmp_path / "fill.err"
    with open(err, "wb") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-c", FILL_CHILD, db_path, str(out), json.dumps(opts)],
            env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf)
        try:
            deadline = time.monotonic() + 120
            full = None
            while full is None:
                assert proc.poll() is None, err.read_text(errors="replace")[-4000:]
                assert time.monotonic() < deadline, "child never filled its memtable"
                full = next((x for x in read_lines(out) if x.startswith("FULL ")), None)
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    n = int(full.split()[1])
    t0 = time.perf_counter()
    db = shaledb.open(db_path, **opts)
    seconds = time.perf_counter() - t0
    try:
        st = db.stats()
        print(f"reopen after SIGKILL with a full memtable ({full.split()[2]} bytes, {n} keys): "
              f"{seconds:.3f} s (engine recovery_seconds={st.get('recovery_seconds')})")
        from _helpers import key, value
        expected = {key(i): value(i) for i in range(n)}
        state = scan(db)
        assert state == expected, diff(state, expected)
        check_gets(db, {k: expected[k] for k in list(expected)[:: max(1, n // 500)]})
    finally:
        db.close()


def test_model_prefix_helper_is_consistent() -> None:
    """The incremental model in CrashLoop and model_after agree (guards the test itself)."""
    m: dict[bytes, bytes] = {}
    for i in range(300):
        apply_op(m, make_op(7, i, 50))
    assert m == model_after(7, 300, 50)


def _fill_and_kill(db_path: str, out: Path, opts: dict[str, Any]) -> int:
    """Run FILL_CHILD until its memtable is ~90% full, SIGKILL it; returns its key count."""
    err = out.with_suffix(".err")
    with open(err, "wb") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-c", FILL_CHILD, db_path, str(out), json.dumps(opts)],
            env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf)
        try:
            deadline = time.monotonic() + 120
            full = None
            while full is None:
                assert proc.poll() is None, err.read_text(errors="replace")[-4000:]
                assert time.monotonic() < deadline, "child never filled its memtable"
                full = next((x for x in read_lines(out) if x.startswith("FULL ")), None)
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return int(full.split()[1])


def test_killed_twice_wal_segments_with_zero_tails_replay(tmp_path: Path) -> None:
    """A WAL segment open at a SIGKILL keeps its allocated, never-written zero tail. Strict
    recovery reads it as complete (zeros are not damage), copies what it replayed into a new
    segment and retires the old one; after a second kill the same holds, and nothing is
    lost."""
    from _helpers import key, value

    opts = {"memtable_size": 2 * MiB}
    db_path = str(tmp_path / "db")
    n1 = _fill_and_kill(db_path, tmp_path / "a.out", opts)
    logs = sorted(Path(db_path).glob("*.log"))
    assert logs and logs[-1].read_bytes().endswith(b"\0" * 64)  # the zero tail is there
    first = logs[-1]
    first_size = len(first.read_bytes().rstrip(b"\0"))
    n2 = _fill_and_kill(db_path, tmp_path / "b.out", opts)  # replays, writes, killed again
    logs = sorted(Path(db_path).glob("*.log"))
    assert first not in logs, "the replayed segment was not retired"
    assert len(logs) == 1 and logs[0].read_bytes().endswith(b"\0" * 64)
    # The new segment holds the copies of the first life's writes and the second life's.
    assert logs[0].stat().st_size >= first_size
    with shaledb.open(db_path, wal_recovery="strict", **opts) as db:
        expected = {key(i): value(i) for i in range(max(n1, n2))}
        state = scan(db)
        assert state == expected, diff(state, expected)
