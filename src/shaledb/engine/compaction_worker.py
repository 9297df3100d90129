"""Compaction in a worker process, so that merging runs on another core, outside the GIL.

The worker is a fresh interpreter (``python -m shaledb.engine._worker_main``, never a
fork of a process that has database files and threads open, and never a
``multiprocessing`` spawn, which would re-run the user's main module). It holds no directory
lock, reads only the tables a job names and writes only the file numbers the job gives it;
the parent alone decides what is installed in the manifest. It exits when its stdin closes
(the parent closed it or died), when its parent dies (PR_SET_PDEATHSIG on Linux, the worker
being started from a dedicated spawner thread; and a watchdog thread) or when its parent pid
changes mid-job, so a SIGKILLed database leaves nothing behind that blocks a reopen.

Messages on the worker's stdin and stdout are ``length (4 bytes LE) + pickle``. Both ends are
this package, so pickle is safe here; nothing from a data file is ever unpickled. A job is
``(MergeJob, fs.worker_state(), keys)``: the worker rebuilds the engine's file system from
the state (:func:`~shaledb.engine.vfs.worker_fs`; the plain POSIX one for None), so a test's
fault injector governs the worker's I/O too. ``keys`` are the data keys of an encrypted
database (None for a plain one): they travel only over this pipe, never on the worker's
command line or in its environment, and the worker zeroes its copy after each job.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from ..errors import CorruptionError, DescriptorsExhaustedError, StorageError
from . import vfs
from .compaction import CompactionAborted, MergeJob, merge_writer, run_merge
from .crypto import Keyring
from .filenames import table_name
from .sstable import FileMeta, TableReader
from .vfs import FileSystem, worker_fs

_LEN = struct.Struct("<I")
#: How often the worker's watchdog checks that its parent is alive.
_WATCHDOG_SECONDS = 0.25

MergeResult = tuple[list[FileMeta], list[int], int]  # outputs, created numbers, bytes


def _send(f: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_LEN.pack(len(data)) + data)
    f.flush()


def _recv(f: IO[bytes]) -> Any:
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("compaction worker pipe closed")
    (n,) = _LEN.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("compaction worker pipe closed")
    return pickle.loads(data)


_SpawnRequest = tuple[list[str], dict[str, str], list[Any], threading.Event]


def _spawn_loop(requests: queue.SimpleQueue[_SpawnRequest | None]) -> None:
    """The spawner thread: starts worker processes until told to stop (None).

    On Linux the worker's PR_SET_PDEATHSIG fires when the *thread* that forked it exits, not
    the process: workers are therefore started from this thread, which lives as long as the
    :class:`CompactionWorker`, never from a caller's thread that may end any time."""
    while True:
        request = requests.get()
        if request is None:
            return
        argv, env, box, done = request
        try:
            box.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, close_fds=True))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.append(exc)
        finally:
            done.set()


class CompactionWorker:
    """The parent's handle on the worker process (started on first use, restarted if it
    dies). One job at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._spawner: threading.Thread | None = None
        self._requests: queue.SimpleQueue[_SpawnRequest | None] = queue.SimpleQueue()
        self.jobs = 0
        self.restarts = 0

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is not None:
            self.restarts += 1
        env = dict(os.environ)
        # The worker must import this very package, wherever it was imported from.
        pkg_root = vfs.parent(vfs.parent(vfs.parent(vfs.absolute(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_root, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "shaledb.engine._worker_main", str(os.getpid())]
        if self._spawner is None or not self._spawner.is_alive():
            self._spawner = threading.Thread(target=_spawn_loop, args=(self._requests,),
                                             name="shaledb-worker-spawner", daemon=True)
            self._spawner.start()
        box: list[Any] = []
        done = threading.Event()
        self._requests.put((argv, env, box, done))
        done.wait()
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        proc: subprocess.Popen[bytes] = result
        self._proc = proc
        return proc

    def run(self, job: MergeJob, closing: Callable[[], bool], fs: FileSystem,
            keyring: Keyring | None = None) -> MergeResult:
        """Run ``job`` in the worker on the file system ``fs.worker_state()`` describes (the
        engine's own: a test's fault injector applies its rules in the worker too); raises
        what the merge raised (CompactionAborted when ``closing()`` turned true, StorageError
        with op "worker" if the process died). ``fs.adopt_worker_report`` takes in what the
        worker did before anything else happens, also when the job failed. ``keyring``: the
        database's data keys, sent with the job (encrypted databases)."""
        with self._lock:
            state = fs.worker_state()
            proc = self._proc
            if proc is None or proc.poll() is not None:
                try:
                    proc = self._start()
                except OSError as exc:
                    raise StorageError(f"cannot start the compaction worker: {exc}",
                                       exc.errno, "worker") from exc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, (dataclasses.astuple(job), state,
                                       None if keyring is None else keyring.export()))
                aborted = False
                while not select.select([proc.stdout], [], [], 0.05)[0]:
                    if not aborted and closing():
                        _send(proc.stdin, "abort")
                        aborted = True
                    if proc.poll() is not None:
                        raise EOFError("compaction worker exited")
                status, payload = _recv(proc.stdout)
            except (EOFError, OSError) as exc:
                self._kill()
                fs.adopt_worker_report(state)
                raise StorageError(f"compaction worker process failed: {exc}", None,
                                   "worker") from exc
            fs.adopt_worker_report(state)
            self.jobs += 1
        if status == "ok":
            metas, created, nbytes = payload
            return [FileMeta.from_list(m) for m in metas], created, nbytes
        if status == "aborted":
            raise CompactionAborted()
        kind, message, errno, op = payload
        if kind == "CorruptionError":
            raise CorruptionError(message)
        if errno in (errno_mod.EMFILE, errno_mod.ENFILE):  # retryable, as in this process
            raise DescriptorsExhaustedError(message, errno, op)
        raise StorageError(message, errno, op)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Ask the worker to exit and wait for it (killing it if it does not); stop the
        spawner thread."""
        with self._lock:
            proc, self._proc = self._proc, None
            spawner, self._spawner = self._spawner, None
            if spawner is not None:
                self._requests.put(None)
        if spawner is not None:
            spawner.join()
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


def _run_job(job: MergeJob, fs: FileSystem, stdin: IO[bytes], parent_pid: int,
             keyring: Keyring | None = None) -> tuple[str, Any]:
    """Run one merge in the worker; returns the reply for the parent."""
    readers: dict[int, TableReader] = {}
    metas = {int(m[0]): FileMeta.from_list(list(m)) for m in job.inputs}

    def open_table(n: int) -> TableReader:
        r = readers.get(n)
        if r is None:
            r = readers[n] = TableReader(fs, table_name(job.dirpath, n), n, None, keyring)
            if n in metas:
                r.check_identity(metas[n])
        return r

    def should_stop() -> bool:
        if os.getppid() != parent_pid:
            os._exit(0)  # the database process is gone: leave at once
        if select.select([stdin], [], [], 0)[0]:
            try:
                return bool(_recv(stdin) == "abort")
            except EOFError:
                os._exit(0)
        return False

    numbers = iter(job.numbers or ())
    writer = merge_writer(job, fs, lambda: next(numbers), keyring)
    try:
        run_merge(job, open_table, writer, should_stop)
        return "ok", ([m.to_list() for m in writer.outputs], writer.created,
                      writer.bytes_written)
    except CompactionAborted:
        return "aborted", None
    except StorageError as exc:
        return "error", ("StorageError", str(exc), exc.errno, exc.op)
    except CorruptionError as exc:
        return "error", ("CorruptionError", str(exc), None, None)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        return "error", ("StorageError", f"compaction worker failed: {exc!r}", None, "worker")
    finally:
        for r in readers.values():
            r.close()


def _watch_parent(parent_pid: int) -> None:
    """The backstop of PR_SET_PDEATHSIG (and its stand-in elsewhere): exit as soon as the
    parent is gone, even between jobs."""
    while True:
        time.sleep(_WATCHDOG_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process the moment its parent dies (PR_SET_PDEATHSIG; the
    parent starts workers from a thread that lives as long as the database's handle on them,
    as the signal follows the spawning thread), so an orphan never writes another byte; a
    watchdog thread polling the parent pid is the backstop, and each job checks it too."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watchdog",
                     daemon=True).start()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the request took effect


def _serve(parent_pid: int) -> None:
    """The worker's loop: one job at a time until stdin closes."""
    _die_with_parent(parent_pid)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    while True:
        try:
            message = _recv(stdin)
        except EOFError:
            return
        if not isinstance(message, tuple):
            continue  # a late "abort" for a job that already finished
        # The job travels as a plain tuple: a compiled (mypyc) frozen dataclass cannot be
        # unpickled, and plain data is all the worker needs.
        fields, state, keys = message
        job = MergeJob(*fields)
        keyring = None if keys is None else Keyring.imported(keys)
        del keys, message
        try:
            fs = worker_fs(state)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            reply: tuple[str, Any] = (
                "error", ("StorageError", f"compaction worker: no file system: {exc!r}", None,
                          "worker"))
        else:
            reply = _run_job(job, fs, stdin, parent_pid, keyring)
        finally:
            if keyring is not None:
                keyring.close()
        try:
            _send(stdout, reply)
        except OSError:
            return
