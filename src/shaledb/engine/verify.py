"""Checking a database: every file, every checksum, every cross-reference (``shaledb verify``).

What is checked, file by file (docs/format.md describes the bytes):

- ``CURRENT`` names a manifest that exists; every manifest record has a good checksum and
  decodes as a version edit; the edits replay into a version (levels within range, no table
  listed twice).
- Every table the version lists exists and has the size the manifest recorded; its footer,
  index, filter and properties blocks pass their checksums and decode; the index covers the
  data region block after block; every data block passes its checksum, decompresses and
  decodes; keys ascend (and one key's versions descend by sequence) inside a block, across the
  blocks of a table, and the index names each block's last key; the filter answers "may
  contain" for every key; entry counts, key range and sequence range agree with the
  properties block and with the manifest.
- Levels 1 and deeper are sorted and their tables do not overlap; overlapping level-0 tables
  hold newer data in higher-numbered tables (reads take level 0 newest number first); no table
  holds a sequence number past the manifest's last sequence.
- WAL segments at or above the manifest's log number: every record passes its checksum and
  decodes as a write batch, and sequence numbers run on without a gap from the tables' last
  sequence through every segment. A torn last record in the newest segment is what a crash
  leaves (open drops it): a notice, not damage. Zeros at the end of a segment are space
  allocated ahead, not damage.
- ``OPTIONS`` is present and parses. Notices (not damage): tables no manifest lists (deleted
  on the next open), WAL segments below the log number and manifests other than the current
  one (leftovers, deleted on the next open), ``*.tmp`` files, and files in ``lost/`` (bytes
  that recovery cut from a damaged log; a person should look at them).

Invariants:

- Reads go through the :class:`~shaledb.engine.vfs.FileSystem` seam only, and nothing is ever
  written: not even the ``LOCK`` file is created (:func:`verify` locks an existing one
  without writing to it).
- Damage never stops the check: each problem becomes a :class:`Problem` naming the file, the
  offset and the key range (or sequence range) it affects, and the check goes on with the
  next block, table or file.
- Memory is bounded: one table's index and filter, one chunk of data blocks (at most
  :data:`READ_CHUNK` bytes or one block) and one WAL segment or manifest at a time.
- The WAL and manifest framing is read only through :func:`scan_log`, the one adapter onto
  ``logfile``.
- A check can be paced and stopped (a server's background scrub): every read asks one
  :class:`ReadBudget` first, a token bucket of ``rate`` bytes per second shared by the whole
  pass, which also asks ``should_stop`` before each read and while it waits (every
  :data:`STOP_POLL` seconds); a stop ends the check with :class:`VerifyStopped`, which
  carries what the part read so far found. Paced, data blocks are read in runs of about an
  eighth of a second's worth, at most :data:`MAX_PACED_CHUNK` (:meth:`ReadBudget.chunk`), and
  WAL segments in such runs too.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, compress
from operator import eq, lt, neg
from typing import Any

import msgpack

from ..errors import (
    CorruptionError,
    EncryptionError,
    IncompatibleFormatError,
    InvalidArgument,
    ShaleError,
    StorageError,
)
from ..options import Options
from .batch import decode_batch
from .crypto import (
    DATA_BLOCK,
    FILTER_BLOCK,
    INDEX_BLOCK,
    MANIFEST_FILE,
    PROPERTIES_BLOCK,
    TABLE_FILE,
    WAL_FILE,
    FileCipher,
    Keyring,
    Unauthentic,
    keyring_info,
    master_key,
    open_keyring,
)
from .filenames import CURRENT, KEYRING, LOCK, OPTIONS, parse, parse_prepared
from .logfile import (
    MAGIC,
    RECORD_FULL,
    RECORD_SEAL,
    Salvage,
    content_end,
    file_header_size,
    salvage_log,
)
from .manifest import Version, VersionEdit, decode_current
from .optionsfile import (
    decode_options,
    expected_log_format,
    is_encrypted,
    log_format_2_from,
    wal_async_seal_from,
)
from .sstable.block import decode_data_block, decode_index_block
from .sstable.filter import KeyFilter
from .sstable.format import (
    ENCRYPTED_FORMAT_VERSION,
    FOOTER,
    FOOTER_SIZE,
    HEADER_SIZE,
    TRAILER_SIZE,
    FileMeta,
    Footer,
    crc32c,
    decode_block,
    decode_header,
)
from .sstable.format import MAGIC as TABLE_MAGIC
from .vfs import FileSystem, Lock, ReadFile, default_fs, join

#: Data blocks are read in runs of about this many bytes (one ``pread`` per run).
READ_CHUNK = 4 << 20
#: The progress callback is called at most once per this many bytes read (and per file).
PROGRESS_STEP = 4 << 20
#: Name of the directory recovery saves bytes it cuts from a damaged log into.
LOST_DIR = "lost"
#: Smallest and largest run of a rate-limited check's reads (one block is always read
#: whole). Small runs keep each stretch of checking short (256 KiB is about a millisecond of
#: CPU), so a thread sharing the GIL with the check (a server's event loop) waits at most
#: about that long before the check sleeps off its rate again.
MIN_PACED_CHUNK = 64 << 10
MAX_PACED_CHUNK = 256 << 10
#: Longest a paced check sleeps before it asks ``should_stop`` again, in seconds.
STOP_POLL = 0.05

#: ``progress(bytes_done, bytes_total)``.
ProgressFn = Callable[[int, int], None]
#: A read rate in bytes per second: a number, or a callable read before every read (so a
#: running check follows a changed setting); None or 0: unlimited.
ReadRate = int | Callable[[], int | None] | None


def key_text(key: bytes) -> str:
    """``key`` as printable text when it is printable UTF-8 (not starting with ``0x``), else
    ``0x`` + hex: unambiguous, and what the CLI's ``--hex``-less arguments accept."""
    try:
        text = key.decode("utf-8")
        if text.isprintable() and not text.startswith("0x"):
            return text
    except UnicodeDecodeError:
        pass
    return "0x" + key.hex()


# ---------------------------------------------------------------------------------------------
# Results


class Severity(enum.StrEnum):
    """DAMAGE: data is (or may be) unreadable or wrong. NOTICE: worth a look, not damage."""

    DAMAGE = "damage"
    NOTICE = "notice"


class ProblemKind(enum.StrEnum):
    """What is wrong (the ``kind`` of a :class:`Problem`)."""

    CHECKSUM = "checksum"  # bytes do not match their CRC
    MALFORMED = "malformed"  # passes its checksum (or has none) but does not decode
    TRUNCATED = "truncated"  # shorter than its structure says
    MISSING_FILE = "missing_file"  # referenced but absent
    SIZE_MISMATCH = "size_mismatch"  # table size differs from the manifest's
    KEY_ORDER = "key_order"  # keys out of order in a table (or its index)
    LEVEL_OVERLAP = "level_overlap"  # tables of a level >= 1 overlap or are unsorted
    SEQUENCE = "sequence"  # sequence numbers out of range, out of order or with a gap
    METADATA = "metadata_mismatch"  # properties block or manifest disagree with the data
    FILTER = "filter"  # the filter denies a key the table holds
    INCOMPATIBLE = "incompatible_format"  # written by a newer format version
    IO_ERROR = "io_error"  # the operating system failed a read
    UNREFERENCED_FILE = "unreferenced_file"  # a table no manifest lists (notice)
    LEFTOVER_FILE = "leftover_file"  # obsolete log, manifest or temp file (notice)
    TORN_TAIL = "torn_tail"  # the newest log ends in a record cut short by a crash (notice)
    LOST_FILE = "lost_file"  # a file in lost/ (notice)
    MISSING_OPTIONS = "missing_options"  # no OPTIONS file (notice)
    #: checksums pass but authentication fails (encrypted databases): changed on purpose,
    #: moved from another place or file, or sealed with another key
    AUTHENTICATION = "authentication"
    KEYRING = "keyring"  # KEYRING missing or damaged: nothing can be decrypted


@dataclasses.dataclass(frozen=True)
class KeyRange:
    """User keys from ``start`` to ``end`` (``None``: unbounded); ``end`` is inclusive and
    ``start`` is exclusive when ``start_exclusive`` (a data block's range starts just after the
    previous block's last key)."""

    start: bytes | None
    end: bytes | None
    start_exclusive: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"start": None if self.start is None else key_text(self.start),
                "start_inclusive": not self.start_exclusive and self.start is not None,
                "end": None if self.end is None else key_text(self.end),
                "end_inclusive": self.end is not None}

    def contains(self, key: bytes) -> bool:
        """Whether ``key`` lies in the range."""
        if self.start is not None and (key <= self.start if self.start_exclusive
                                       else key < self.start):
            return False
        return self.end is None or key <= self.end

    def __str__(self) -> str:
        lo = "-inf" if self.start is None else key_text(self.start)
        hi = "+inf" if self.end is None else key_text(self.end)
        return f"{'(' if self.start_exclusive or self.start is None else '['}{lo}, {hi}" \
               f"{']' if self.end is not None else ')'}"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing found wrong (or worth a look) in one file."""

    severity: Severity
    kind: ProblemKind
    file: str  # name relative to the database directory ("" for the directory itself)
    message: str  # what is wrong, what it means for reads, and what to do
    offset: int | None = None  # byte offset in ``file`` where the problem starts
    length: int | None = None  # bytes affected from ``offset``
    level: int | None = None  # the table's level, when the manifest lists it
    keys: KeyRange | None = None  # user keys whose data is affected
    seqs: tuple[int, int] | None = None  # sequence numbers affected (inclusive)

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity.value, "kind": self.kind.value, "file": self.file,
                "offset": self.offset, "length": self.length, "level": self.level,
                "keys": None if self.keys is None else self.keys.to_json(),
                "seqs": None if self.seqs is None else list(self.seqs),
                "message": self.message}

    def __str__(self) -> str:
        return describe(f"{self.severity.value.upper():7}", self.file, self.offset,
                        self.kind.value, self.keys, self.seqs, self.message)


def describe(head: str, file: str, offset: int | None, kind: str, keys: KeyRange | None,
             seqs: tuple[int, int] | None, message: str, *extra: str) -> str:
    """One line of a report (verify's problems, repair's losses)."""
    parts = [head, (file or ".") + ("" if offset is None else f" @ {offset}"), kind]
    if keys is not None:
        parts.append(f"keys {keys}")
    if seqs is not None:
        parts.append(f"seqs {seqs[0]}..{seqs[1]}")
    parts.extend(extra)
    return "  ".join(parts) + f": {message}"


@dataclasses.dataclass
class Totals:
    """What was read."""

    files: int = 0
    bytes: int = 0
    tables: int = 0
    blocks: int = 0
    entries: int = 0
    wal_segments: int = 0
    wal_records: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        """Bytes read per second, in MB (10^6 bytes)."""
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = dataclasses.asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["mb_per_s"] = round(self.mb_per_s, 1)
        return d


@dataclasses.dataclass
class VerifyReport:
    """The result of :func:`verify` (a closed database) or ``DB.verify()`` (an open one)."""

    path: str
    live: bool  # checked while open (the pinned version; the WAL up to the moment of the pin)
    problems: list[Problem]
    totals: Totals

    @property
    def damage(self) -> list[Problem]:
        """Problems of severity DAMAGE."""
        return [p for p in self.problems if p.severity is Severity.DAMAGE]

    @property
    def notices(self) -> list[Problem]:
        """Problems of severity NOTICE."""
        return [p for p in self.problems if p.severity is Severity.NOTICE]

    @property
    def ok(self) -> bool:
        """No damage found (notices allowed)."""
        return not self.damage

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "live": self.live,
                "damage": len(self.damage), "notices": len(self.notices),
                "totals": self.totals.to_json(),
                "problems": [p.to_json() for p in self.problems]}

    def __str__(self) -> str:
        t = self.totals
        head = (f"{self.path}: {'OK' if self.ok else 'DAMAGED'} ({len(self.damage)} damage, "
                f"{len(self.notices)} notices; {t.files} files, {t.bytes:,} bytes, "
                f"{t.tables} tables, {t.blocks} blocks, {t.entries:,} entries in "
                f"{t.seconds:.2f} s)")
        return "\n".join([head, *map(str, self.problems)])


# ---------------------------------------------------------------------------------------------
# Pacing and stopping


class VerifyStopped(ShaleError):
    """A check ended early because its ``should_stop`` said so. ``report`` holds what the part
    read before the stop found: its problems are real, but its ``ok`` says nothing about the
    files it did not reach."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__(f"verify of {report.path} stopped after {report.totals.bytes:,} "
                         f"bytes ({len(report.damage)} damage found so far)")
        self.report = report


class _Stop(Exception):
    """Raised inside the checker when ``should_stop`` answers true (never a ShaleError, so no
    handler of read errors can swallow it); the entry points turn it into VerifyStopped."""


class ReadBudget:
    """The reads of one check: a token bucket of ``rate`` bytes per second shared by every
    read of the pass (None or 0: unlimited), and the stop check.

    The bucket starts empty and holds at most one second's worth, so a pass over N bytes takes
    at least N / rate seconds and never reads more than ``rate`` bytes in any second plus one
    second's burst after a pause (CPU-bound work on big blocks). Reads are charged before they
    are made; a debt is slept off in slices of :data:`STOP_POLL` seconds, asking
    ``should_stop`` after each and re-reading ``rate`` (a callable rate may change while a
    pass runs). Used by one thread at a time."""

    def __init__(self, rate: ReadRate = None, should_stop: Callable[[], bool] | None = None,
                 *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate is not None and not callable(rate) and rate < 0:
            raise InvalidArgument(f"rate must be >= 0 bytes per second, got {rate}")
        self._rate = rate
        self._should_stop = should_stop
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()
        #: Seconds spent waiting for the rate, and bytes charged.
        self.waited = 0.0
        self.charged = 0

    @property
    def rate(self) -> int | None:
        """The rate now (None: unlimited)."""
        rate = self._rate() if callable(self._rate) else self._rate
        return rate if rate else None

    @property
    def paced(self) -> bool:
        """Whether reads are rate-limited or stoppable (then they are made in chunks)."""
        return self._rate is not None or self._should_stop is not None

    def chunk(self) -> int:
        """Bytes to read at once: READ_CHUNK, or with a rate an eighth of a second's worth
        within [MIN_PACED_CHUNK, MAX_PACED_CHUNK]."""
        rate = self.rate
        if rate is None:
            return READ_CHUNK
        return max(MIN_PACED_CHUNK, min(MAX_PACED_CHUNK, rate // 8))

    def check(self) -> None:
        """Raise _Stop when ``should_stop`` answers true."""
        if self._should_stop is not None and self._should_stop():
            raise _Stop

    def charge(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be read: wait until the bucket covers them."""
        self.check()
        self.charged += nbytes
        rate = self.rate
        if rate is None:
            return
        self._refill(rate)
        self._tokens -= nbytes
        while self._tokens < -0.5:  # (half a byte: float rounding must not loop forever)
            wait = min(-self._tokens / rate, STOP_POLL)
            self._sleep(wait)
            self.waited += wait
            self.check()
            rate = self.rate
            if rate is None:  # the limit was lifted meanwhile
                self._tokens = 0.0
                return
            self._refill(rate)

    def _refill(self, rate: int) -> None:
        now = self._clock()
        self._tokens = min(float(rate), self._tokens + (now - self._last) * rate)
        self._last = now


class _PacedFile:
    """A table file whose reads are charged to a :class:`ReadBudget` first."""

    def __init__(self, f: ReadFile, budget: ReadBudget) -> None:
        self._f = f
        self._budget = budget
        self.path = f.path
        self.size = f.size

    def pread(self, length: int, offset: int) -> bytes:
        self._budget.charge(max(0, min(length, self.size - offset)))
        return self._f.pread(length, offset)

    def readahead(self, offset: int, length: int) -> None:
        self._f.readahead(offset, length)

    def close(self) -> None:
        self._f.close()


# ---------------------------------------------------------------------------------------------
# The log adapter: the one place that reads WAL and manifest framing


@dataclasses.dataclass
class LogScan:
    """Every intact record of a log file, and where it is damaged."""

    records: list[tuple[int, bytes]]  # (offset, payload) of the full records
    #: Damaged byte ranges ``[start, end)`` followed by an intact record.
    gaps: list[tuple[int, int]]
    #: Offset where a damaged tail starts that no intact record follows, or None.
    tail: int | None
    #: Offsets of damage (gap or tail starts) that a later record vouches for: it says the
    #: damaged bytes had been synced (docs/format.md, "WAL recovery").
    vouched: set[int]
    #: Offset from which the file holds only zeros (allocated ahead), or None.
    zeros_from: int | None
    #: Size of one record header (23 in log format 2, 11 in format 1).
    header_size: int
    #: Log format (1, 2 or 3), and the file number an intact format-2 or 3 header names.
    version: int = 2
    number: int | None = None
    #: Starts of damaged ranges that pass their checksums but fail authentication.
    unauthentic: frozenset[int] = frozenset()
    #: An intact seal record was read.
    sealed: bool = False
    #: An intact record says the file was fsynced past its header (a ``synced`` claim, a sync
    #: mark, a seal): every older WAL segment had been sealed.
    vouches_prior: bool = False


def scan_log(data: bytes, expect: int | None = None, keyring: Keyring | None = None,
             file_kind: int = WAL_FILE, number: int | None = None) -> LogScan:
    """Read ``data`` (a whole WAL segment or manifest; ``expect``: its log format when the
    database says, see :func:`log_format_of`), resynchronizing after damage at the next
    intact record. The only reader of log framing in this module (and repair's). Encrypted
    logs are decrypted with ``keyring`` (the key of file ``file_kind``, ``number``)."""
    sal = salvage_log(data, expect, keyring, file_kind, number)
    records = [(off, payload) for off, rtype, _, payload in sal.records if rtype == 1]
    gaps: list[tuple[int, int]] = []
    tail = None
    vouched = set()
    last = sal.records[-1][0] if sal.records else -1
    for start, end in sal.damaged:
        if start < last:
            gaps.append((start, end))
        elif tail is None:
            tail = start  # damage no valid record follows: from here to the end
        if sal.vouched(start):
            vouched.add(start)
    sealed = any(rtype == RECORD_SEAL for _, rtype, _, _ in sal.records)
    vouches = _vouches_prior(sal)
    return LogScan(records, gaps, tail, vouched, sal.zeros_from, sal.header_size,
                   sal.version, sal.number, frozenset(sal.unauthentic), sealed, vouches)


def _vouches_prior(sal: Salvage) -> bool:
    """:attr:`LogScan.vouches_prior` of what :func:`salvage_log` read."""
    header = file_header_size(sal.version)
    return any(rtype != RECORD_FULL or (synced or 0) > header
               for _, rtype, synced, _ in sal.records if synced is not None)


# ---------------------------------------------------------------------------------------------
# What an open database hands the checker


@dataclasses.dataclass(frozen=True)
class LiveState:
    """What ``Engine.verify`` pinned: the current version's levels (its tables are not deleted
    while pinned), the manifest bytes read under the manifest lock (they describe exactly that
    version) and the WAL position at the moment of the pin."""

    levels: list[list[FileMeta]]
    manifest_number: int
    manifest: bytes
    log_number: int
    wal_number: int | None  # the segment being written, read only up to ``wal_size``
    wal_size: int


@dataclasses.dataclass
class ManifestState:
    """What the manifest says, and whether it could be read completely."""

    name: str | None = None
    levels: list[list[FileMeta]] | None = None
    log_number: int | None = None
    last_seq: int | None = None
    intact: bool = False


def read_log_since(fs: FileSystem, path: str) -> int | None:
    """``log_format_2_from`` of the database's OPTIONS (None when it cannot be read; then
    each log's first bytes decide its format). Problems with OPTIONS are reported by
    :func:`read_options`."""
    try:
        return log_format_2_from(decode_options(fs.read_file(join(path, OPTIONS)), path))
    except ShaleError:
        return None


def read_async_seal_since(fs: FileSystem, path: str) -> int | None:
    """``wal_async_seal_from`` of the database's OPTIONS (None when it cannot be read: then
    every older segment is taken to have been sealed, the stricter judgement)."""
    try:
        return wal_async_seal_from(decode_options(fs.read_file(join(path, OPTIONS)), path))
    except ShaleError:
        return None


def may_hold_torn_writes(fs: FileSystem, path: str, numbers: list[int], idx: int,
                         log_since: int | None, async_since: int | None,
                         encrypted: bool = False) -> bool:
    """Whether WAL segment ``numbers[idx]`` (of the live ones, ascending) may hold writes a
    crash tore: the newest one, or (formats 4 and 5) an older one no later segment vouches
    for (nothing in a later segment is fsynced before its predecessors are sealed). The open's
    recovery judges the same way. ``async_since`` None (OPTIONS unreadable): the stricter
    judgement of format 3. What a segment says about its fsyncs is framing (checksummed, not
    sealed), so an encrypted one is judged without its key."""
    if idx == len(numbers) - 1:
        return True
    later = numbers[idx + 1:]
    if async_since is None or later[0] < async_since:
        return False
    for n in later:
        try:
            data = fs.read_file(join(path, f"{n:06d}.log"))
        except StorageError:
            return False
        if _vouches_prior(salvage_log(data, expected_log_format(log_since, n, encrypted),
                                      raw=True)):
            return False
    return True


def log_format_of(since: int | None, name: str, encrypted: bool = False) -> int | None:
    """The log format of the WAL segment or manifest ``name`` (None: unknown)."""
    parsed = parse(name)
    return None if parsed is None else expected_log_format(since, parsed[1], encrypted)


def _read_or_report(fs: FileSystem, path: str, name: str, report: Callable[[Problem], None],
                    message: str) -> bytes | None:
    """The bytes of ``name``; None after reporting it missing or unreadable (``message``
    with ``{exc}`` replaced by the error)."""
    try:
        return fs.read_file(join(path, name))
    except StorageError as exc:
        missing = not fs.exists(join(path, name))
        report(Problem(Severity.DAMAGE,
                       ProblemKind.MISSING_FILE if missing else ProblemKind.IO_ERROR,
                       name, message.replace("{exc}", str(exc))))
        return None


def read_manifest(fs: FileSystem, path: str, num_levels: int, report: Callable[[Problem], None],
                  data: bytes | None = None, name: str | None = None,
                  since: int | None = None, keyring: Keyring | None = None) -> ManifestState:
    """CURRENT -> MANIFEST -> the version it describes. Damage is reported, never raised;
    ``intact`` says whether every edit was read (only then is the table list authoritative)."""
    state = ManifestState()
    checksummed = True
    if name is None:
        raw = _read_or_report(fs, path, CURRENT, report, "cannot read CURRENT ({exc}): the "
                              "database cannot be opened; `shaledb repair` rebuilds it from "
                              "the tables and logs")
        if raw is None:
            return state
        try:
            name, checksummed = decode_current(raw)
        except CorruptionError as exc:
            report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED, CURRENT,
                           f"{exc}: the database cannot be opened; `shaledb repair` rebuilds "
                           "it from the tables and logs", offset=0))
            return state
    state.name = name
    if data is None:
        data = _read_or_report(fs, path, name, report, f"CURRENT names {name}, which cannot "
                               "be read ({exc}): the database cannot be opened; `shaledb "
                               "repair` rebuilds it")
        if data is None:
            return state
    number = int(name.split("-", 1)[1])
    scan = scan_log(data, log_format_of(since, name, keyring is not None), keyring,
                    MANIFEST_FILE, number)
    if scan.version >= 2 and not checksummed:
        report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED, CURRENT,
                       "CURRENT lacks its checksum line but names a manifest of database "
                       "format 3: it is damaged, and open refuses the database; `shaledb "
                       "repair` rebuilds it from the tables and logs", offset=0))
        return state
    if scan.number is not None and scan.number != number:
        report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED, name,
                       f"its header says it is MANIFEST-{scan.number:06d} (copied or renamed "
                       "into the database?): open refuses the database; restore it from a "
                       "backup, or `shaledb repair` rebuilds it from the tables and logs",
                       offset=0))
        return state
    intact = True
    version = Version([[] for _ in range(num_levels)])
    seen: dict[int, int] = {}
    for gap_start, gap_end in scan.gaps:
        intact = False
        report(Problem(Severity.DAMAGE, _log_damage_kind(data, gap_start, scan), name,
                       "manifest record damaged (intact records follow): the database cannot "
                       "be opened, and the tables it lists are unknown; `shaledb repair` "
                       "salvages every table", offset=gap_start, length=gap_end - gap_start))
    if scan.tail is not None:
        if scan.tail not in scan.vouched:
            report(Problem(Severity.NOTICE, ProblemKind.TORN_TAIL, name,
                           "the last manifest edit was torn by a crash before its fsync "
                           "returned; open ignores it (nothing acted on it) and keeps its "
                           "bytes under lost/", offset=scan.tail, length=len(data) - scan.tail))
        else:
            intact = False
            report(Problem(Severity.DAMAGE, _log_damage_kind(data, scan.tail, scan), name,
                           "the last manifest edit fails its checksum, and the sync mark after "
                           "it says it was durable: it may have been acted on, so open refuses "
                           "the database; `shaledb repair` salvages every table",
                           offset=scan.tail, length=len(data) - scan.tail))
    edits = 0
    for offset, payload in scan.records:
        try:
            edit = VersionEdit.decode(payload, name)
        except (CorruptionError, IncompatibleFormatError) as exc:
            intact = False
            report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED if isinstance(
                exc, CorruptionError) else ProblemKind.INCOMPATIBLE, name,
                f"manifest record does not decode ({exc}); the database cannot be opened",
                offset=offset, length=scan.header_size + len(payload)))
            continue
        edits += 1
        bad_levels = [(lvl, f) for lvl, f in edit.added if not 0 <= lvl < num_levels]
        if bad_levels:
            intact = False
            report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED, name,
                           f"manifest edit names level {bad_levels[0][0]} but the database has "
                           f"{num_levels} levels; the database cannot be opened",
                           offset=offset))
            edit.added = [(lvl, f) for lvl, f in edit.added if 0 <= lvl < num_levels]
        version = version.apply(edit)
        if edit.log_number is not None:
            state.log_number = edit.log_number
        if edit.last_seq is not None:
            state.last_seq = max(state.last_seq or 0, edit.last_seq)
    if not edits:
        intact = False
        report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED, name,
                       "the manifest holds no readable edit; the database cannot be opened"))
    for lvl, f in version.files():
        if f.number in seen:
            intact = False
            report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED, name,
                           f"the manifest lists table {f.number:06d}.sst twice (levels "
                           f"{seen[f.number]} and {lvl}); the database cannot be opened",
                           level=lvl))
        seen[f.number] = lvl
    state.levels = version.levels
    state.intact = intact
    return state


def _log_damage_kind(data: bytes, offset: int, scan: LogScan) -> ProblemKind:
    """CHECKSUM when a record header is there (magic, and a length that fits), else
    MALFORMED (the header itself is damaged); AUTHENTICATION when the checksums pass but the
    record does not authenticate."""
    if offset in scan.unauthentic:
        return ProblemKind.AUTHENTICATION
    if data[offset:offset + 2] != MAGIC:
        return ProblemKind.MALFORMED
    end = offset + scan.header_size + int.from_bytes(data[offset + 3:offset + 7], "little")
    if end > len(data):
        return ProblemKind.TRUNCATED
    return ProblemKind.CHECKSUM


def read_options(fs: FileSystem, path: str, report: Callable[[Problem], None]
                 ) -> dict[str, Any] | None:
    """The options the OPTIONS file records (None when it is missing or damaged: reported)."""
    p = join(path, OPTIONS)
    if not fs.exists(p):
        report(Problem(Severity.DAMAGE, ProblemKind.MISSING_OPTIONS, OPTIONS,
                       "no OPTIONS file (it is written before CURRENT when a database is "
                       "created): open refuses the database; restore it from a backup or run "
                       "`shaledb repair`"))
        return None
    try:
        info = decode_options(fs.read_file(p), path)
        options = info.get("options", {})
        if not isinstance(options, dict):
            raise CorruptionError("options is not an object")
    except StorageError as exc:
        report(Problem(Severity.DAMAGE, ProblemKind.IO_ERROR, OPTIONS, f"cannot read: {exc}"))
        return None
    except IncompatibleFormatError as exc:
        report(Problem(Severity.DAMAGE, ProblemKind.INCOMPATIBLE, OPTIONS, str(exc)))
        return None
    except CorruptionError as exc:
        report(Problem(Severity.DAMAGE, ProblemKind.MALFORMED, OPTIONS,
                       f"{exc} (open refuses the database)"))
        return None
    return options


def num_levels_of(options: dict[str, Any] | None) -> int:
    """The number of levels the database was created with (the default when unknown)."""
    default = Options.num_levels
    if options is None:
        return default
    n = options.get("num_levels", default)
    return n if isinstance(n, int) and 2 <= n <= 16 else default


# ---------------------------------------------------------------------------------------------
# The checker


class _Progress:
    def __init__(self, fn: ProgressFn | None, total: int) -> None:
        self.fn = fn
        self.total = total
        self.done = 0
        self._next = 0

    def add(self, n: int) -> None:
        self.done += n
        if self.fn is not None and self.done >= self._next:
            self._next = self.done + PROGRESS_STEP
            self.fn(min(self.done, self.total), self.total)

    def finish(self) -> None:
        if self.fn is not None:
            self.fn(self.total, self.total)


class _TableFacts:
    """What one table holds, as found (for the cross-checks after the blocks)."""

    __slots__ = ("entries", "deletions", "user_keys", "smallest", "largest", "min_seq",
                 "max_seq", "intact")

    def __init__(self) -> None:
        self.entries = 0
        self.deletions = 0
        self.user_keys = 0
        self.smallest: bytes | None = None
        self.largest: bytes | None = None
        self.min_seq = 1 << 64
        self.max_seq = -1
        self.intact = True


class Checker:
    """Checks the files of one database directory; collects :class:`Problem` objects."""

    def __init__(self, fs: FileSystem, path: str, progress: ProgressFn | None = None, *,
                 rate: ReadRate = None, should_stop: Callable[[], bool] | None = None,
                 keyring: Keyring | None = None) -> None:
        self.fs = fs
        #: The data keys of an encrypted database (None: plain, or the check cannot decrypt).
        self.keyring = keyring
        #: Why an encrypted database cannot be checked (KEYRING missing or damaged).
        self.keyring_problem: str | None = None
        self.path = path
        self.problems: list[Problem] = []
        self.totals = Totals()
        self._progress_fn = progress
        self._progress = _Progress(None, 0)
        self.budget = ReadBudget(rate, should_stop)
        #: ``log_format_2_from`` of OPTIONS (None: unknown), set when the check starts.
        self.log_since: int | None = None
        #: ``wal_async_seal_from`` of OPTIONS (None: unknown), set when the check starts.
        self.async_since: int | None = None

    def report(self, problem: Problem) -> None:
        self.problems.append(problem)

    def _damage(self, kind: ProblemKind, file: str, message: str, **kw: Any) -> None:
        self.problems.append(Problem(Severity.DAMAGE, kind, file, message, **kw))

    def _notice(self, kind: ProblemKind, file: str, message: str, **kw: Any) -> None:
        self.problems.append(Problem(Severity.NOTICE, kind, file, message, **kw))

    def _size(self, name: str) -> int:
        try:
            return self.fs.file_size(join(self.path, name))
        except StorageError:
            return 0

    # -- whole database ----------------------------------------------------------------------
    def run_closed(self) -> VerifyReport:
        """Check a database no process has open."""
        return self._run(False, self._check_closed)

    def run_live(self, state: LiveState) -> VerifyReport:
        """Check an open database: the pinned version, the manifest bytes read with it, and
        the WAL up to the position at the pin. Tables nobody lists are the engine's to delete
        and are not reported."""
        return self._run(True, lambda: self._check_live(state))

    def _run(self, live: bool, body: Callable[[], None]) -> VerifyReport:
        """Run ``body``; VerifyStopped (with the report so far) when asked to stop."""
        start = time.perf_counter()
        try:
            self.budget.check()
            body()
        except _Stop:
            self.totals.seconds = time.perf_counter() - start
            raise VerifyStopped(VerifyReport(self.path, live, self.problems,
                                             self.totals)) from None
        self._progress.finish()
        self.totals.seconds = time.perf_counter() - start
        return VerifyReport(self.path, live, self.problems, self.totals)

    def _check_closed(self) -> None:
        names = self.fs.listdir(self.path)
        if CURRENT not in names and not any(
                (parse(n) or ("", 0))[0] in ("sst", "log") for n in names):
            # What a first open that failed before CURRENT was durable leaves (OPTIONS, a
            # MANIFEST, temporary files): the next open clears it and creates the database.
            self._notice(ProblemKind.LEFTOVER_FILE, ".",
                         "no CURRENT and no data: a creation interrupted before the database "
                         "existed; the next open removes the leftovers and creates it")
            return
        options = read_options(self.fs, self.path, self.report)
        if self.keyring_problem is not None:
            self._damage(ProblemKind.KEYRING, KEYRING, self.keyring_problem)
            return
        num_levels = num_levels_of(options)
        self.log_since = read_log_since(self.fs, self.path)
        self.async_since = read_async_seal_since(self.fs, self.path)
        manifest = read_manifest(self.fs, self.path, num_levels, self.report,
                                 since=self.log_since, keyring=self.keyring)
        if manifest.name is not None:
            self.budget.charge(self._size(manifest.name))  # read already: paid afterwards
        tables: dict[int, str] = {}
        logs: dict[int, str] = {}
        for name in names:
            parsed = parse(name)
            if parsed is None:
                if name.endswith(".tmp"):
                    self._notice(ProblemKind.LEFTOVER_FILE, name,
                                 "a file an interrupted atomic replace left behind; harmless "
                                 "(delete it while the database is closed)")
                prepared = parse_prepared(name)
                if prepared is not None:
                    self.check_prepared(name, prepared)
                continue
            kind, number = parsed
            if kind == "sst":
                tables[number] = name
            elif kind == "log":
                logs[number] = name
            elif name != manifest.name:
                self._notice(ProblemKind.LEFTOVER_FILE, name,
                             "a manifest CURRENT does not name (left by an interrupted "
                             "switch); deleted on the next open")
        listed = {f.number for lvl in manifest.levels or [] for f in lvl}
        unlisted = sorted(set(tables) - listed)
        # With an incomplete manifest, a table it does not list may well be live: read it.
        read_unlisted = not manifest.intact
        log_number = manifest.log_number if manifest.intact else None
        live_logs = sorted(n for n in logs if log_number is None or n >= log_number)
        total = sum(self._size(tables[n]) for n in listed if n in tables)
        total += sum(self._size(logs[n]) for n in live_logs)
        if manifest.name is not None:
            total += self._size(manifest.name)
        if read_unlisted:
            total += sum(self._size(tables[n]) for n in unlisted)
        self._progress = _Progress(self._progress_fn, total)
        if manifest.name is not None:
            self.totals.files += 1
            self.totals.bytes += self._size(manifest.name)
            self._progress.add(self._size(manifest.name))
        if manifest.levels is not None:
            self.check_levels(manifest.levels)
            for lvl, files in enumerate(manifest.levels):
                for meta in files:
                    self.check_table(meta.number, meta, lvl,
                                     manifest.last_seq if manifest.intact else None)
        for number in unlisted:
            name = tables[number]
            if manifest.intact:
                self._notice(ProblemKind.UNREFERENCED_FILE, name,
                             "a table no manifest lists (left by an interrupted flush or "
                             "compaction); it is deleted on the next open, not read",
                             length=self._size(name))
            else:
                self._notice(ProblemKind.UNREFERENCED_FILE, name,
                             "a table the readable part of the manifest does not list; it may "
                             "be live (the manifest is damaged): checked below; `shaledb "
                             "repair` salvages it", length=self._size(name))
                self.check_table(number, None, None, None)
        if log_number is not None and log_number not in logs:
            if live_logs:  # newer segments exist, so this one was created and is now gone
                self._damage(ProblemKind.MISSING_FILE, f"{log_number:06d}.log",
                             f"the manifest's log number is {log_number}, but that WAL segment "
                             "is gone while newer ones exist: the writes it held since the "
                             "last flush are lost; `shaledb repair` keeps the rest")
            else:
                self._notice(ProblemKind.MISSING_FILE, f"{log_number:06d}.log",
                             f"no WAL segment at the manifest's log number {log_number}: "
                             "normal only if a crash came right after the manifest was "
                             "written, before the first write")
        for number in sorted(set(logs) - set(live_logs)):
            self._notice(ProblemKind.LEFTOVER_FILE, logs[number],
                         f"a WAL segment below the manifest's log number {log_number}: its "
                         "writes are all in tables; deleted on the next open",
                         length=self._size(logs[number]))
        self.check_wal(live_logs, manifest.last_seq if manifest.intact else None,
                       log_number, live_limit=None)
        self.check_lost()

    def _check_live(self, state: LiveState) -> None:
        self.budget.charge(len(state.manifest))  # read by Engine.verify: paid afterwards
        options = read_options(self.fs, self.path, self.report)
        num_levels = max(num_levels_of(options), len(state.levels))
        self.log_since = read_log_since(self.fs, self.path)
        self.async_since = read_async_seal_since(self.fs, self.path)
        name = f"MANIFEST-{state.manifest_number:06d}"
        manifest = read_manifest(self.fs, self.path, num_levels, self.report,
                                 data=state.manifest, name=name, since=self.log_since,
                                 keyring=self.keyring)
        self.totals.files += 1
        self.totals.bytes += len(state.manifest)
        if manifest.levels is not None and manifest.intact:
            on_disk = {(lvl, f) for lvl, files in enumerate(manifest.levels) for f in files}
            in_memory = {(lvl, f) for lvl, files in enumerate(state.levels) for f in files}
            for lvl, f in sorted(in_memory ^ on_disk, key=lambda x: (x[0], x[1].number)):
                where = "memory only" if (lvl, f) in in_memory else "manifest only"
                self._damage(ProblemKind.METADATA, name,
                             f"table {f.number:06d}.sst at level {lvl} is in the {where}: the "
                             "manifest on disk does not describe the open version; reopening "
                             "would lose or resurrect it", level=lvl)
        logs = sorted(n for kind, n in filter(None, map(parse, self.fs.listdir(self.path)))
                      if kind == "log" and n >= state.log_number
                      and (state.wal_number is None or n <= state.wal_number))
        total = sum(f.size for lvl in state.levels for f in lvl)
        total += sum(self._size(f"{n:06d}.log") for n in logs)
        self._progress = _Progress(self._progress_fn, total)
        self.check_levels(state.levels)
        for lvl, files in enumerate(state.levels):
            for meta in files:
                self.check_table(meta.number, meta, lvl, manifest.last_seq)
        self.check_wal(logs, manifest.last_seq if manifest.intact else None,
                       state.log_number, live_limit=(state.wal_number, state.wal_size))
        self.check_lost()

    # -- levels ------------------------------------------------------------------------------
    def check_levels(self, levels: Sequence[Sequence[FileMeta]]) -> None:
        """Levels >= 1 sorted and disjoint; overlapping L0 tables ordered by number; each
        table's own key and sequence ranges well-formed."""
        for lvl, files in enumerate(levels):
            for f in files:
                name = f"{f.number:06d}.sst"
                if f.smallest > f.largest or f.smallest_seq > f.largest_seq:
                    self._damage(ProblemKind.METADATA, name,
                                 f"the manifest records an inverted range (keys "
                                 f"{key_text(f.smallest)}..{key_text(f.largest)}, seqs "
                                 f"{f.smallest_seq}..{f.largest_seq}); reads of this table "
                                 "may miss keys", level=lvl)
        for lvl, files in enumerate(levels):
            if lvl == 0:
                by_number = sorted(files, key=lambda f: f.number)
                for i, older in enumerate(by_number):
                    for newer in by_number[i + 1:]:
                        if (older.smallest <= newer.largest and newer.smallest <= older.largest
                                and (newer.largest_seq < older.largest_seq
                                     or newer.smallest_seq < older.smallest_seq)):
                            self._damage(
                                ProblemKind.SEQUENCE, f"{newer.number:06d}.sst",
                                f"level-0 table {newer.number:06d}.sst holds older data "
                                f"(seqs {newer.smallest_seq}..{newer.largest_seq}) than the "
                                f"lower-numbered {older.number:06d}.sst (seqs "
                                f"{older.smallest_seq}..{older.largest_seq}) whose keys it "
                                "overlaps; reads take level 0 by number and may return an "
                                "old value: run `shaledb repair`", level=0,
                                keys=KeyRange(max(older.smallest, newer.smallest),
                                              min(older.largest, newer.largest)))
                continue
            for a, b in zip(files, files[1:], strict=False):
                if a.largest >= b.smallest:
                    self._damage(
                        ProblemKind.LEVEL_OVERLAP, f"{b.number:06d}.sst",
                        f"level {lvl}: {a.number:06d}.sst (keys {key_text(a.smallest)}.."
                        f"{key_text(a.largest)}) and {b.number:06d}.sst (keys "
                        f"{key_text(b.smallest)}..{key_text(b.largest)}) overlap or are out of "
                        "order; reads look in one table per level and may miss keys or "
                        "return old values: run `shaledb repair`", level=lvl,
                        keys=KeyRange(b.smallest, min(a.largest, b.largest)))

    # -- one table ---------------------------------------------------------------------------
    def check_table(self, number: int, meta: FileMeta | None, level: int | None,
                    last_seq: int | None) -> None:
        """Every block of table ``number`` and its agreement with ``meta`` (the manifest's
        record, None for a table no manifest lists)."""
        name = f"{number:06d}.sst"
        whole = None if meta is None else KeyRange(meta.smallest, meta.largest)
        self.budget.check()
        try:
            f: ReadFile = self.fs.open_read(join(self.path, name))
        except StorageError as exc:
            if not self.fs.exists(join(self.path, name)):
                self._damage(ProblemKind.MISSING_FILE, name,
                             "the manifest lists this table but it does not exist: its keys "
                             "are lost (reads of them fail); restore it from a backup, or run "
                             "`shaledb repair` to rebuild a database without it",
                             level=level, keys=whole)
            else:
                self._damage(ProblemKind.IO_ERROR, name, f"cannot open: {exc}", level=level,
                             keys=whole)
            return
        self.totals.files += 1
        self.totals.tables += 1
        if self.budget.paced:
            f = _PacedFile(f, self.budget)
        try:
            size = f.size
            self.totals.bytes += size
            _TableCheck(self, f, name, size, meta, level, last_seq).run()
        finally:
            f.close()

    # -- WAL ---------------------------------------------------------------------------------
    def check_wal(self, numbers: list[int], last_seq: int | None, log_number: int | None,
                  live_limit: tuple[int | None, int] | None) -> None:
        """Segments ``numbers`` (ascending): records intact and decodable, sequences running
        on from ``last_seq`` (the manifest's) without a gap. ``live_limit`` = (segment being
        written, bytes of it written at the pin) on an open database, whose older segments
        may also vanish (a flush made them obsolete) while they are read."""
        expected: int | None = None  # the next sequence number the WAL should hold
        # Whether the first record read must continue the tables' sequence: only when the
        # segment at the manifest's log number is the first one read.
        check_start = last_seq is not None and (live_limit is None or (
            bool(numbers) and numbers[0] == log_number))
        first_record = True
        prev_sealed = True  # the segment before this one ended in a seal
        for idx, number in enumerate(numbers):
            name = f"{number:06d}.log"
            p = join(self.path, name)
            self.budget.check()
            try:
                if self.budget.paced:
                    data = self._read_paced(p, live_limit[1] if live_limit is not None
                                            and number == live_limit[0] else None)
                elif live_limit is not None and number == live_limit[0]:
                    f = self.fs.open_read(p)
                    try:
                        data = f.pread(live_limit[1], 0)
                    finally:
                        f.close()
                else:
                    data = self.fs.read_file(p)
            except StorageError as exc:
                if live_limit is not None and not self.fs.exists(p):
                    check_start = False  # flushed and deleted meanwhile
                    expected = None
                    continue
                self._damage(ProblemKind.IO_ERROR, name, f"cannot read: {exc}")
                expected = None
                continue
            self.totals.files += 1
            self.totals.wal_segments += 1
            self.totals.bytes += len(data)
            self._progress.add(len(data))
            scan = scan_log(data, expected_log_format(self.log_since, number,
                                                      self.keyring is not None),
                            self.keyring, WAL_FILE, number)
            if scan.number is not None and scan.number != number:
                self._damage(ProblemKind.MALFORMED, name,
                             f"its header says it is segment {scan.number} (copied or renamed "
                             "into the database?): open refuses the database; remove it if "
                             "it does not belong here", offset=0)
                expected = None
                continue
            events: list[tuple[int, int, Any]] = sorted(
                [(off, 1, payload) for off, payload in scan.records]
                + [(start, 0, end) for start, end in scan.gaps], key=lambda e: e[0])
            prev_end: int | None = None  # last sequence of the previous intact record
            pending_gap: tuple[int, int] | None = None
            segment_start = True
            for offset, what, item in events:
                if what == 0:
                    pending_gap = (offset, item)
                    continue
                self.totals.wal_records += 1
                try:
                    first, ops = decode_batch(item)
                except CorruptionError as exc:
                    self._damage(ProblemKind.MALFORMED, name,
                                 f"WAL record passes its checksum but does not decode ({exc}); "
                                 "open fails: run `shaledb repair`", offset=offset,
                                 length=scan.header_size + len(item))
                    expected = prev_end = None
                    continue
                end = first + len(ops) // 4 - 1
                if pending_gap is not None:
                    self._wal_gap(name, data, scan, pending_gap, prev_end, first,
                                  self._may_be_torn(numbers, idx))
                    pending_gap = None
                elif first_record:
                    if check_start and last_seq is not None and first > last_seq + 1:
                        self._damage(ProblemKind.SEQUENCE, name,
                                     f"the WAL starts at sequence {first} but the tables end at "
                                     f"{last_seq}: the writes between are missing (a segment "
                                     "was lost?)", offset=offset, seqs=(last_seq + 1, first - 1))
                elif (segment_start and expected is not None and first > expected
                      and not prev_sealed and self._may_be_torn(numbers, idx - 1)):
                    self._notice(ProblemKind.TORN_TAIL, f"{numbers[idx - 1]:06d}.log",
                                 "the WAL segment before "
                                 f"{name} was never sealed and its last writes (sequences "
                                 f"{expected}-{first - 1}) did not reach the disk before a "
                                 "crash; none of them was confirmed durable: open keeps the "
                                 "writes before them and saves the rest under lost/",
                                 seqs=(expected, first - 1))
                elif expected is not None and first != expected:
                    self._damage(ProblemKind.SEQUENCE, name,
                                 f"WAL record starts at sequence {first}, expected {expected} "
                                 + ("(writes are missing)" if first > expected else
                                    "(sequence numbers repeat: reads may see the wrong "
                                    "version)"), offset=offset,
                                 seqs=(expected, first - 1) if first > expected
                                 else (first, expected - 1))
                first_record = False
                segment_start = False
                expected = end + 1
                prev_end = end
            if pending_gap is not None:
                self._wal_gap(name, data, scan, pending_gap, prev_end, None,
                              self._may_be_torn(numbers, idx))
            prev_sealed = scan.sealed
            if scan.tail is not None:
                tail_len = len(data) - scan.tail
                if self._may_be_torn(numbers, idx) and scan.tail not in scan.vouched:
                    self._notice(ProblemKind.TORN_TAIL, name,
                                 "the WAL segment (the newest, or one never sealed) ends in "
                                 f"writes torn by a crash ({tail_len} bytes) that were never "
                                 "confirmed durable; open cuts them and keeps the bytes under "
                                 "lost/",
                                 offset=scan.tail, length=tail_len)
                else:
                    self._damage(_log_damage_kind(data, scan.tail, scan), name,
                                 "damaged WAL record in data that had been synced (a later "
                                 "segment, a sync mark or a seal vouches for it): corruption, "
                                 "not a crash; open raises CorruptionError "
                                 "(wal_recovery='point_in_time' keeps the writes before it); "
                                 "`shaledb repair` salvages the rest",
                                 offset=scan.tail, length=tail_len)
                    expected = None

    def _read_paced(self, p: str, limit: int | None) -> bytes:
        """The first ``limit`` bytes of file ``p`` (all of it when None), read in chunks
        charged to the budget."""
        f = self.fs.open_read(p)
        try:
            size = f.size if limit is None else limit
            parts: list[bytes] = []
            offset = 0
            while offset < size:
                n = min(self.budget.chunk(), size - offset)
                self.budget.charge(n)
                part = f.pread(n, offset)
                parts.append(part)
                offset += len(part)
                if len(part) < n:
                    break
            return b"".join(parts)
        finally:
            f.close()

    def check_prepared(self, name: str, number: int) -> None:
        """A WAL segment prepared ahead of a memtable switch (``NNNNNN.log.new``) that a crash
        left: writes in it (from its first record, or its first damage) are what the open
        cuts, saves under lost/ and removes with the file; an empty one is removed quietly."""
        try:
            data = self.fs.read_file(join(self.path, name))
        except StorageError as exc:
            self._damage(ProblemKind.IO_ERROR, name, f"cannot read: {exc}")
            return
        # (Encrypted: by the framing alone, as the open judges it.)
        expect = expected_log_format(self.log_since, number, self.keyring is not None)
        sal = salvage_log(data, expect, raw=True)
        starts = [off for off, rtype, _, _ in sal.records if rtype == RECORD_FULL]
        starts += [start for start, _ in sal.damaged]
        end = content_end(data, expect)
        start = min(starts, default=end)
        if end > start:
            self._notice(ProblemKind.TORN_TAIL, name,
                         "a WAL segment prepared ahead of a memtable switch whose rename a "
                         f"crash lost holds {end - start} bytes of writes never confirmed "
                         "durable (nothing in a segment is fsynced before its name is): the "
                         "next open saves them under lost/ and removes the file",
                         offset=start, length=end - start)

    def _may_be_torn(self, numbers: list[int], idx: int) -> bool:
        return may_hold_torn_writes(self.fs, self.path, numbers, idx, self.log_since,
                                    self.async_since, self.keyring is not None)

    def _wal_gap(self, name: str, data: bytes, scan: LogScan, gap: tuple[int, int],
                 prev_end: int | None, next_first: int | None, may_be_torn: bool) -> None:
        seqs = None
        if prev_end is not None and next_first is not None and next_first > prev_end + 1:
            seqs = (prev_end + 1, next_first - 1)
        if may_be_torn and gap[0] not in scan.vouched:
            self._notice(ProblemKind.TORN_TAIL, name,
                         "a hole in a WAL segment's unsynced writes (the newest, or one never "
                         "sealed: a power loss kept some pages and not others): none of it was "
                         "confirmed durable; "
                         "open cuts the segment here, keeping the rest of it under lost/",
                         offset=gap[0], length=gap[1] - gap[0], seqs=seqs)
            return
        self._damage(_log_damage_kind(data, gap[0], scan), name,
                     "WAL record damaged in data that had been synced, and intact records "
                     "follow: open raises CorruptionError (wal_recovery='point_in_time' keeps "
                     "only the writes before it); `shaledb repair` salvages the records on "
                     "both sides" + ("" if seqs is None else "; the writes with these "
                                     "sequence numbers are lost"),
                     offset=gap[0], length=gap[1] - gap[0], seqs=seqs)

    # -- lost/ -------------------------------------------------------------------------------
    def check_lost(self) -> None:
        """Report each file in ``lost/``."""
        lost = join(self.path, LOST_DIR)
        if not self.fs.is_dir(lost):
            return
        try:
            names = sorted(self.fs.listdir(lost))
        except StorageError as exc:
            self._damage(ProblemKind.IO_ERROR, LOST_DIR, f"cannot list: {exc}")
            return
        for n in names:
            rel = f"{LOST_DIR}/{n}"
            try:
                size: int | None = self.fs.file_size(join(lost, n))
            except StorageError:
                size = None
            if n.startswith("replication-discarded-"):
                # Written by the server's replication (server/exec/replication.py).
                self._notice(ProblemKind.LOST_FILE, rel,
                             "the entries a full resync from a primary replaced (this node "
                             "had data of its own): inspect them, then delete the file",
                             length=size)
                continue
            self._notice(ProblemKind.LOST_FILE, rel,
                         "bytes recovery cut from a damaged log and saved here; they may hold "
                         "writes that were not replayed: inspect them, then delete the file",
                         length=size)


class _TableCheck:
    """The checks of one open table file."""

    def __init__(self, checker: Checker, f: ReadFile, name: str, size: int,
                 meta: FileMeta | None, level: int | None, last_seq: int | None) -> None:
        self.c = checker
        self.f = f
        self.name = name
        self.size = size
        self.meta = meta
        self.level = level
        self.last_seq = last_seq
        self.whole = None if meta is None else KeyRange(meta.smallest, meta.largest)
        self.cipher: FileCipher | None = None
        self.number = int(name.split(".", 1)[0])

    def damage(self, kind: ProblemKind, message: str, *, offset: int | None = None,
               length: int | None = None, keys: KeyRange | None = None,
               whole: bool = False) -> None:
        self.c._damage(kind, self.name, message, offset=offset, length=length, level=self.level,
                       keys=self.whole if whole else keys)

    def run(self) -> None:
        meta = self.meta
        size = self.size
        if meta is not None and size != meta.size:
            self.damage(ProblemKind.SIZE_MISMATCH,
                        f"the file has {size} bytes but the manifest recorded {meta.size}: it "
                        "was cut or extended after it was written" +
                        (" (the bytes past the recorded size are ignored by nothing: the "
                         "footer is read at the end)" if size > meta.size else ""),
                        offset=min(size, meta.size), length=abs(size - meta.size), whole=True)
        footer = self.footer()
        if footer is None or not self.encryption(footer):
            self.c._progress.add(size)
            return
        props = self.properties(footer)
        kf = self.filter(footer)
        index = self.index(footer)
        if index is None:
            self.c._progress.add(size)
            return
        facts = self.data_blocks(footer, index, kf)
        if facts.intact:
            self.cross_check(facts, props, len(index[0]))
        elif props is not None and meta is not None:
            self.compare_meta_props(props)
        if self.last_seq is not None and facts.max_seq > self.last_seq:
            self.damage(ProblemKind.SEQUENCE,
                        f"the table holds sequence {facts.max_seq}, past the manifest's last "
                        f"sequence {self.last_seq}: new writes after a reopen would reuse "
                        "its sequence numbers and be hidden by it", whole=True)
        self.c._progress.add(max(0, size - footer.filter_handle[0]))

    # -- fixed parts -------------------------------------------------------------------------
    def footer(self) -> Footer | None:
        size = self.size
        if size < FOOTER_SIZE:
            self.damage(ProblemKind.TRUNCATED,
                        f"{size} bytes: too short to hold a table footer; the table is "
                        "unreadable (every read of its keys fails): run `shaledb repair`",
                        offset=0, length=size, whole=True)
            return None
        at = size - FOOTER_SIZE
        try:
            raw = self.f.pread(FOOTER_SIZE, at)
        except StorageError as exc:
            self.damage(ProblemKind.IO_ERROR, f"cannot read the footer: {exc}", offset=at,
                        whole=True)
            return None
        fields = FOOTER.unpack(raw)
        unreadable = ("; the table is unreadable (every read of its keys fails): run "
                      "`shaledb repair` to salvage its data blocks")
        if fields[-1] != TABLE_MAGIC:
            self.damage(ProblemKind.MALFORMED,
                        "bad magic number at the end: not a table, or its end was cut or "
                        "overwritten" + unreadable, offset=at, length=FOOTER_SIZE, whole=True)
            return None
        if crc32c(raw[:52]) != fields[-2]:
            self.damage(ProblemKind.CHECKSUM, "footer checksum mismatch" + unreadable,
                        offset=at, length=FOOTER_SIZE, whole=True)
            return None
        try:
            return Footer.decode(raw, self.f.path, size)
        except IncompatibleFormatError as exc:
            self.damage(ProblemKind.INCOMPATIBLE, f"{exc}", offset=at, whole=True)
        except CorruptionError as exc:
            self.damage(ProblemKind.MALFORMED, f"{exc}" + unreadable, offset=at,
                        length=FOOTER_SIZE, whole=True)
        return None

    def encryption(self, footer: Footer) -> bool:
        """Set up the table's cipher (encrypted databases); False after reporting why the
        table cannot be read (a plain table in an encrypted database or the reverse, a
        damaged table header, a data key KEYRING does not hold)."""
        keyring = self.c.keyring
        encrypted = footer.format_version == ENCRYPTED_FORMAT_VERSION
        unreadable = ("; the table cannot be read (every read of its keys fails): restore it "
                      "from a backup, or run `shaledb repair`")
        if keyring is None:
            if encrypted:
                self.damage(ProblemKind.MALFORMED, "an encrypted table in a plain database (a "
                            "table from another database?)" + unreadable, whole=True)
                return False
            return True
        if not encrypted:
            self.damage(ProblemKind.MALFORMED, "a plain table in an encrypted database (from "
                        "another database, or its footer was changed)" + unreadable,
                        whole=True)
            return False
        try:
            key_id, salt = decode_header(self.f.pread(HEADER_SIZE, 0), self.f.path,
                                         self.number)
            self.cipher = keyring.reader(TABLE_FILE, self.number, key_id, salt)
        except CorruptionError as exc:
            self.damage(ProblemKind.MALFORMED, f"{_strip_path(exc)}" + unreadable, offset=0,
                        length=HEADER_SIZE, whole=True)
            return False
        except StorageError as exc:
            self.damage(ProblemKind.IO_ERROR, f"cannot read the table header: {exc}",
                        offset=0, whole=True)
            return False
        return True

    def read_block(self, offset: int, size: int, what: str,
                   kind: int = DATA_BLOCK) -> bytes | None:
        """The verified payload of the block at ``offset`` (None: reported)."""
        try:
            raw = self.f.pread(size + TRAILER_SIZE, offset)
        except StorageError as exc:
            self.damage(ProblemKind.IO_ERROR, f"cannot read the {what} block: {exc}",
                        offset=offset, whole=True)
            return None
        consequence = ("; the table cannot be opened, so every read of its keys fails: run "
                       "`shaledb repair` to salvage its data blocks")
        if len(raw) != size + TRAILER_SIZE:
            self.damage(ProblemKind.TRUNCATED, f"the {what} block is cut short" + consequence,
                        offset=offset, length=size + TRAILER_SIZE, whole=True)
            return None
        try:
            return decode_block(raw, self.f.path, offset, self.cipher, kind)
        except CorruptionError as exc:
            problem = (ProblemKind.AUTHENTICATION if isinstance(exc, Unauthentic) else
                       ProblemKind.CHECKSUM if crc32c(memoryview(raw)[:-4])
                       != int.from_bytes(raw[-4:], "little") else ProblemKind.MALFORMED)
            self.damage(problem, f"{what} block: {_strip_path(exc)}" + consequence,
                        offset=offset, length=size + TRAILER_SIZE, whole=True)
        except ShaleError as exc:  # zstd missing
            self.damage(ProblemKind.INCOMPATIBLE, f"{what} block: {exc}", offset=offset,
                        whole=True)
        return None

    def properties(self, footer: Footer) -> dict[str, Any] | None:
        off, size = footer.props_handle
        payload = self.read_block(off, size, "properties", PROPERTIES_BLOCK)
        if payload is None:
            return None
        try:
            props = msgpack.unpackb(payload, raw=False)
            if not isinstance(props, dict):
                raise ValueError("not a map")
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self.damage(ProblemKind.MALFORMED,
                        f"properties block does not decode ({exc}); the table cannot be "
                        "opened: run `shaledb repair`", offset=off, whole=True)
            return None
        return props

    def filter(self, footer: Footer) -> KeyFilter | None:
        off, size = footer.filter_handle
        payload = self.read_block(off, size, "filter", FILTER_BLOCK)
        if payload is None:
            return None
        try:
            return KeyFilter(payload, footer.format_version, self.f.path)
        except CorruptionError as exc:
            self.damage(ProblemKind.MALFORMED,
                        f"filter block: {_strip_path(exc)}; the table cannot be opened: run "
                        "`shaledb repair`", offset=off, whole=True)
            return None

    def index(self, footer: Footer) -> tuple[list[bytes], list[int], list[int]] | None:
        off, size = footer.index_handle
        payload = self.read_block(off, size, "index", INDEX_BLOCK)
        if payload is None:
            return None
        try:
            last_keys, offsets, sizes = decode_index_block(payload, self.f.path)
            if not (all(type(k) is bytes for k in last_keys)
                    and all(type(x) is int and x >= 0 for x in offsets)
                    and all(type(x) is int and x >= 0 for x in sizes)):
                raise CorruptionError("index entries of the wrong type")
        except CorruptionError as exc:
            self.damage(ProblemKind.MALFORMED,
                        f"index block: {_strip_path(exc)}; the table cannot be opened: run "
                        "`shaledb repair` (it finds the data blocks without the index)",
                        offset=off, whole=True)
            return None
        data_end = footer.filter_handle[0]
        if not last_keys:
            self.damage(ProblemKind.MALFORMED, "the index lists no data block", offset=off,
                        whole=True)
            return None
        first = HEADER_SIZE if self.cipher is not None else 0
        ends = list(accumulate((s + TRAILER_SIZE for s in sizes), initial=first))[1:]
        if offsets != [first, *ends[:-1]] or ends[-1] != data_end:
            self.damage(ProblemKind.MALFORMED,
                        "the index does not describe the data region block after block (a "
                        "handle overlaps another or leaves a hole); blocks are checked by "
                        "their handles", offset=off, whole=True)
        if not all(map(lt, last_keys, last_keys[1:])):
            j = next(i for i, ok in enumerate(map(lt, last_keys, last_keys[1:])) if not ok)
            self.damage(ProblemKind.KEY_ORDER,
                        f"index keys out of order at block {j + 1} ({key_text(last_keys[j])} "
                        f"then {key_text(last_keys[j + 1])}): lookups search the wrong block",
                        offset=off, whole=True)
        return last_keys, offsets, sizes

    # -- data blocks -------------------------------------------------------------------------
    def _runs(self, offsets: list[int], sizes: list[int]) -> Iterator[tuple[int, bytes | None]]:
        """(block number, raw block or None when unreadable) for every block, reading
        consecutive blocks in runs of about READ_CHUNK bytes (less when paced)."""
        n = len(offsets)
        i = 0
        budget = self.c.budget
        while i < n:
            start = offsets[i]
            j = i
            end = start + sizes[i] + TRAILER_SIZE
            limit = budget.chunk()
            while (j + 1 < n and offsets[j + 1] == end
                   and end + sizes[j + 1] + TRAILER_SIZE - start <= limit):
                j += 1
                end += sizes[j] + TRAILER_SIZE
            try:
                chunk = self.f.pread(end - start, start)
            except StorageError as exc:
                for k in range(i, j + 1):
                    self.damage(ProblemKind.IO_ERROR, f"cannot read data block {k}: {exc}",
                                offset=offsets[k])
                    yield k, None
                i = j + 1
                continue
            self.c._progress.add(len(chunk))
            for k in range(i, j + 1):
                a = offsets[k] - start
                yield k, chunk[a:a + sizes[k] + TRAILER_SIZE]
            i = j + 1

    def data_blocks(self, footer: Footer, index: tuple[list[bytes], list[int], list[int]],
                    kf: KeyFilter | None) -> _TableFacts:
        last_keys, offsets, sizes = index
        facts = _TableFacts()
        totals = self.c.totals
        path = self.f.path
        version = footer.format_version
        meta_smallest = None if self.meta is None else self.meta.smallest
        prev_last: bytes | None = None  # last key of the previous block, by the index
        prev_key: bytes | None = None  # last key actually read from the previous block
        may_contain = kf.may_contain if kf is not None else None
        for i, raw in self._runs(offsets, sizes):
            offset, last = offsets[i], last_keys[i]
            keys_range = (KeyRange(prev_last, last, True) if prev_last is not None
                          else KeyRange(meta_smallest, last))
            prev_last = last
            totals.blocks += 1
            if raw is None:
                facts.intact = False
                continue
            if len(raw) < sizes[i] + TRAILER_SIZE:
                self.damage(ProblemKind.TRUNCATED,
                            f"data block {i} is cut short" + _block_lost(keys_range),
                            offset=offset, length=sizes[i] + TRAILER_SIZE, keys=keys_range)
                facts.intact = False
                prev_key = None
                continue
            try:
                block = decode_data_block(decode_block(raw, path, offset, self.cipher),
                                          path, version)
                keys, seqs, kinds, _expires, _values = block.columns(0, block.n)
            except Exception as exc:  # noqa: BLE001 - any decoding failure is damage here
                if crc32c(memoryview(raw)[:-4]) != int.from_bytes(raw[-4:], "little"):
                    kind, what = ProblemKind.CHECKSUM, "checksum mismatch"
                elif isinstance(exc, Unauthentic):
                    kind, what = ProblemKind.AUTHENTICATION, (
                        "fails authentication (its checksum passes: changed on purpose, or "
                        "moved from another place or table)")
                else:
                    kind, what = ProblemKind.MALFORMED, f"does not decode ({_strip_path(exc)})"
                self.damage(kind, f"data block {i}: {what}" + _block_lost(keys_range),
                            offset=offset,
                            length=sizes[i] + TRAILER_SIZE, keys=keys_range)
                facts.intact = False
                prev_key = None
                continue
            n = len(keys)
            if n == 0:
                self.damage(ProblemKind.MALFORMED, f"data block {i} is empty", offset=offset,
                            keys=keys_range)
                facts.intact = False
                continue
            totals.entries += n
            facts.entries += n
            if isinstance(kinds, bytes):
                bad_kinds = list(kinds.translate(None, b"\x00\x01"))
                facts.deletions += kinds.count(0)
            else:
                bad_kinds = [k for k in kinds if k not in (0, 1)]
                facts.deletions += list(kinds).count(0)
            if bad_kinds:
                self.damage(ProblemKind.MALFORMED,
                            f"data block {i} holds an entry of unknown kind {bad_kinds[0]}",
                            offset=offset, keys=keys_range)
            lo, hi = min(seqs), max(seqs)
            if lo < facts.min_seq:
                facts.min_seq = lo
            if hi > facts.max_seq:
                facts.max_seq = hi
            if all(map(lt, keys, keys[1:])):
                facts.user_keys += n
            else:
                facts.user_keys += n - sum(map(eq, keys, keys[1:]))
                pairs = list(zip(keys, map(neg, seqs), strict=True))
                if not all(map(lt, pairs, pairs[1:])):
                    j = next(k for k, ok in enumerate(map(lt, pairs, pairs[1:])) if not ok)
                    what = ("keys out of order" if keys[j] != keys[j + 1] else
                            f"versions of one key out of order (seq {-pairs[j][1]} then "
                            f"{-pairs[j + 1][1]})")
                    self.damage(ProblemKind.KEY_ORDER,
                                f"data block {i}: {what} at entry {j + 1} "
                                f"({key_text(keys[j])} then {key_text(keys[j + 1])}); "
                                "lookups may miss keys or return old versions: run `shaledb "
                                "repair`", offset=offset, keys=keys_range)
                    facts.intact = False
            first_key, last_key = keys[0], keys[-1]
            if prev_key is not None and first_key <= prev_key:
                self.damage(ProblemKind.KEY_ORDER,
                            f"data block {i} starts with {key_text(first_key)}, not after the "
                            f"previous block's last key {key_text(prev_key)}; lookups may miss "
                            "keys: run `shaledb repair`", offset=offset, keys=keys_range)
                facts.intact = False
            if last_key != last:
                self.damage(ProblemKind.KEY_ORDER,
                            f"the index says data block {i} ends with {key_text(last)}, but it "
                            f"ends with {key_text(last_key)}: lookups of keys near it search "
                            "the wrong block", offset=offset, keys=keys_range)
                facts.intact = False
            prev_key = last_key
            if facts.smallest is None and i == 0:
                facts.smallest = first_key
            facts.largest = last_key
            if may_contain is not None and not all(map(may_contain, keys)):
                missing = next(compress(keys, (not x for x in map(may_contain, keys))))
                self.damage(ProblemKind.FILTER,
                            f"the filter says the table cannot hold {key_text(missing)}, which "
                            f"data block {i} holds: point reads of it skip this table and "
                            "return an older value or nothing: run `shaledb repair`",
                            offset=footer.filter_handle[0], keys=KeyRange(missing, missing))
        return facts

    # -- agreement ---------------------------------------------------------------------------
    def cross_check(self, facts: _TableFacts, props: dict[str, Any] | None,
                    nblocks: int) -> None:
        found: dict[str, Any] = {
            "entries": facts.entries, "deletions": facts.deletions,
            "data_blocks": nblocks, "user_keys": facts.user_keys,
            "smallest_key": facts.smallest, "largest_key": facts.largest,
            "smallest_seq": facts.min_seq, "largest_seq": facts.max_seq}
        if props is not None:
            wrong = [f"{k} {_show(props.get(k))} (holds {_show(v)})" for k, v in found.items()
                     if k in props and props[k] != v]
            if wrong:
                self.damage(ProblemKind.METADATA,
                            "the properties block disagrees with the data: " + ", ".join(wrong)
                            + "; reads are unaffected, statistics are wrong",
                            whole=True)
        meta = self.meta
        if meta is not None:
            recorded = {"entries": meta.entries, "smallest_key": meta.smallest,
                        "largest_key": meta.largest, "smallest_seq": meta.smallest_seq,
                        "largest_seq": meta.largest_seq}
            wrong = [f"{k} {_show(v)} (holds {_show(found[k])})" for k, v in recorded.items()
                     if found[k] != v]
            if wrong:
                self.damage(ProblemKind.METADATA,
                            "the manifest's record of this table disagrees with its data: "
                            + ", ".join(wrong) + "; reads choose tables by the manifest's key "
                            "range and may miss keys: run `shaledb repair`", whole=True)

    def compare_meta_props(self, props: dict[str, Any]) -> None:
        meta = self.meta
        assert meta is not None
        recorded = {"entries": meta.entries, "smallest_key": meta.smallest,
                    "largest_key": meta.largest, "smallest_seq": meta.smallest_seq,
                    "largest_seq": meta.largest_seq}
        wrong = [f"{k} {_show(v)} (properties: {_show(props[k])})"
                 for k, v in recorded.items() if k in props and props[k] != v]
        if wrong:
            self.damage(ProblemKind.METADATA,
                        "the manifest's record of this table disagrees with its properties "
                        "block: " + ", ".join(wrong), whole=True)


def _block_lost(keys: KeyRange) -> str:
    return (f"; reads of the keys in {keys} fail: restore the table from a backup, or run "
            "`shaledb repair` (which loses this block's entries)")


def _show(v: Any) -> str:
    return key_text(v) if isinstance(v, bytes) else repr(v)


def _strip_path(exc: BaseException) -> str:
    """An engine error message without its ``table '/long/path':`` prefix (the problem
    already names the file)."""
    text = str(exc)
    if text.startswith("table '") and "': " in text:
        return text.split("': ", 1)[1]
    return text


# ---------------------------------------------------------------------------------------------
# Entry points


def lock_for_reading(fs: FileSystem, path: str) -> Lock | None:
    """Lock the database without creating or writing anything: an existing LOCK file (a
    writer holds it), else the directory itself (every open, read-only ones too, holds it);
    LockedError when a process has the database open."""
    lock_path = join(path, LOCK)
    if not fs.exists(lock_path):
        return fs.lock_dir(path)  # still excludes a read-only open (it locks the directory)
    return fs.lock(lock_path, readonly=True)


def check_database_dir(fs: FileSystem, path: str) -> None:
    """InvalidArgument unless ``path`` is a directory holding database files."""
    if not fs.exists(path):
        raise InvalidArgument(f"{path!r} does not exist")
    if not fs.is_dir(path):
        raise InvalidArgument(f"{path!r} is not a directory")
    if not fs.exists(join(path, CURRENT)) and not any(map(parse, fs.listdir(path))):
        raise InvalidArgument(f"{path!r} holds no database (no CURRENT, manifest, table or "
                              "log file)")


def load_keyring(fs: FileSystem, path: str, encryption_key: bytes | bytearray | None,
                 encryption_key_file: str | None) -> tuple[Keyring | None, str | None]:
    """The data keys a tool (verify, repair) needs to read the database at ``path``, and why
    none could be had from a damaged or missing KEYRING (reported, not raised). Raises
    EncryptionError as an open does: an encrypted database without its key or with another
    one, a plain database with a key. Decides by OPTIONS, or by KEYRING when OPTIONS cannot
    be read."""
    master = master_key(encryption_key, encryption_key_file)
    try:
        try:
            info: dict[str, Any] | None = decode_options(fs.read_file(join(path, OPTIONS)),
                                                         path)
        except ShaleError:
            info = None
        has_keyring = fs.exists(join(path, KEYRING))
        encrypted = is_encrypted(info) if info is not None else has_keyring
        if not encrypted:
            if master is not None:
                raise EncryptionError(f"database {path!r} is not encrypted, but a key was "
                                      "given: check it without one")
            return None, None
        if not has_keyring:
            return None, ("the database is encrypted but KEYRING is missing: nothing in it "
                          "can be decrypted or checked; restore KEYRING from a backup")
        try:
            raw = fs.read_file(join(path, KEYRING))
            if master is None:
                raise EncryptionError(
                    f"database {path!r} is encrypted (key id {keyring_info(raw, path)['key_id']}"
                    "): give its key (--encryption-key-file)")
            return open_keyring(raw, master, path), None
        except (CorruptionError, StorageError) as exc:
            return None, f"{exc}; nothing else was checked"
    finally:
        if master is not None:
            master.close()


def verify(path: str, *, progress: ProgressFn | None = None,
           fs: FileSystem | None = None, rate: ReadRate = None,
           should_stop: Callable[[], bool] | None = None,
           encryption_key: bytes | bytearray | None = None,
           encryption_key_file: str | None = None) -> VerifyReport:
    """Check the closed database at ``path`` (see the module docstring for what is checked).

    Takes the directory lock (LockedError when a process has the database open: call
    ``DB.verify()`` in that process instead) and writes nothing. Damage is reported in the
    result, never raised. ``progress(done, total)`` is called as bytes are read. ``rate``
    limits the reads to that many bytes per second (see :class:`ReadBudget`);
    ``should_stop()`` is asked before every read, and a true answer ends the check with
    :class:`VerifyStopped`. An encrypted database needs its key (``encryption_key`` or
    ``encryption_key_file``): without it, or with another one, EncryptionError says so."""
    from .vfs import absolute

    fs = fs or default_fs()
    path = absolute(path)
    check_database_dir(fs, path)
    lock = lock_for_reading(fs, path)
    try:
        keyring, problem = load_keyring(fs, path, encryption_key, encryption_key_file)
        try:
            checker = Checker(fs, path, progress, rate=rate, should_stop=should_stop,
                              keyring=keyring)
            checker.keyring_problem = problem
            return checker.run_closed()
        finally:
            if keyring is not None:
                keyring.close()
    finally:
        if lock is not None:
            lock.release()


def verify_live(fs: FileSystem, path: str, state: LiveState,
                progress: ProgressFn | None = None, *, keyring: Keyring | None = None,
                rate: ReadRate = None,
                should_stop: Callable[[], bool] | None = None) -> VerifyReport:
    """Check an open database from what ``Engine.verify`` pinned (no engine lock is held);
    ``keyring``: the engine's data keys (encrypted databases); ``rate`` and ``should_stop``
    as for :func:`verify`."""
    return Checker(fs, path, progress, rate=rate, should_stop=should_stop,
                   keyring=keyring).run_live(state)


__all__ = [
    "Checker",
    "KeyRange",
    "LiveState",
    "LogScan",
    "Problem",
    "ProblemKind",
    "ReadBudget",
    "ReadRate",
    "Severity",
    "Totals",
    "VerifyReport",
    "VerifyStopped",
    "key_text",
    "read_manifest",
    "scan_log",
    "verify",
    "verify_live",
]
