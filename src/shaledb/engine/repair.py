"""Salvaging a damaged database into a new one (``shaledb repair PATH DEST``).

Anchors: LevelDB's ``RepairDB`` (scan every table and log, keep what reads), RocksDB's
``ldb repair``, SQLite's ``.recover``. Unlike RepairDB, which rewrites the damaged directory
in place, this never writes under the source: it reads it and writes a fresh database at
DEST through the public API, so a failed or unwanted repair costs nothing.

What is read, and what is trusted:

- The manifest, when every edit of it reads (torn last edit aside): its table list is
  authoritative. Tables it does not list are left over from interrupted flushes or
  compactions and may hold versions a later compaction deleted on purpose, so they are
  ignored (and reported). When the manifest is damaged or missing, every table in the
  directory is read, and the report warns that keys deleted earlier may reappear.
- Every data block of every table that passes its checksum and decodes; a damaged block loses
  only its own entries (reported with its key range: from the previous block's last key,
  exclusive, to its own last key). When the footer or the index block is damaged, blocks are
  found without the index: block after block, from the start of the file, by the checksum
  in each block's trailer (the damaged index, when it still decodes, is used as hints to
  jump past a damaged block).
- Every intact record of the WAL segments at or above the manifest's log number (all
  segments when the manifest is not used), resynchronizing at the next intact record after
  damage (reported with the sequence numbers lost). Except past a crash cut (database format
  4): when a segment that may hold torn writes (``may_hold_torn_writes``: never sealed, no
  later segment vouches) ends torn, or the next one starts after a sequence gap, the later
  segments hold writes never confirmed durable, made after the lost ones: like open, repair
  drops them (a notice), so that DEST holds a prefix of the writes.

An encrypted database needs its key (as for an open); DEST is then encrypted with the same
master key (fresh data keys). A block or record whose checksum passes but which fails
authentication is lost like a damaged one (reported as such); a table whose header (salt and
data key id) is damaged cannot be decrypted and is lost whole.

Everything is merged by (key, sequence) with ``heapq.merge`` over sorted streams (tables
block by block, the WAL sorted in memory: it is bounded by about two memtables), so the
newest version of each key wins, and a key whose newest version is a deletion or has
expired stays deleted. The survivors are written to DEST in batches of
:data:`BATCH_BYTES` with their absolute expiry. Memory: one block per table stream, the
WAL's entries, one table file while its blocks are searched without an index, one batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import os
import re
import time
from collections.abc import Callable, Iterator
from itertools import chain
from operator import lt, neg
from typing import Any

import msgpack

from ..errors import CorruptionError, InvalidArgument, ShaleError, StorageError
from ..options import Options
from .batch import WriteBatch, decode_batch
from .crypto import (
    DATA_BLOCK,
    INDEX_BLOCK,
    PROPERTIES_BLOCK,
    TABLE_FILE,
    WAL_FILE,
    FileCipher,
    Keyring,
    Unauthentic,
)
from .db import Engine
from .dbformat import PUT, Entry
from .filenames import parse
from .sstable.block import decode_data_block, decode_index_block
from .sstable.format import (
    ENCRYPTED_FORMAT_VERSION,
    FOOTER,
    FOOTER_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    TRAILER_SIZE,
    FileMeta,
    Footer,
    crc32c,
    decode_block,
    decode_header,
)
from .sstable.format import MAGIC as TABLE_MAGIC
from .verify import (
    KeyRange,
    ProblemKind,
    ProgressFn,
    check_database_dir,
    describe,
    key_text,
    load_keyring,
    lock_for_reading,
    log_format_of,
    may_hold_torn_writes,
    num_levels_of,
    read_async_seal_since,
    read_log_since,
    read_manifest,
    read_options,
    scan_log,
)
from .vfs import FileSystem, ReadFile, absolute, default_fs, fs_inside, join, resolved

#: Bytes of keys and values per write batch into DEST.
BATCH_BYTES = 1 << 20
#: With more table streams than this, each stream reopens its file for every block instead
#: of holding a file descriptor for the whole merge.
MAX_OPEN_STREAMS = 256
#: Possible block trailer type bytes (0 none, 1 lz4, 2 zstd).
_TRAILER_TYPE = re.compile(rb"[\x00-\x02]")


@dataclasses.dataclass
class Loss:
    """Something repair could not salvage."""

    kind: ProblemKind
    file: str
    message: str
    offset: int | None = None
    length: int | None = None
    keys: KeyRange | None = None  # user keys whose newest version may be missing or older
    seqs: tuple[int, int] | None = None  # sequence numbers of writes lost (WAL)
    entries: int | None = None  # entries lost, when known

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "file": self.file, "offset": self.offset,
                "length": self.length, "keys": None if self.keys is None else self.keys.to_json(),
                "seqs": None if self.seqs is None else list(self.seqs),
                "entries": self.entries, "message": self.message}

    def __str__(self) -> str:
        return describe("LOST   ", self.file, self.offset, self.kind.value, self.keys,
                        self.seqs, self.message,
                        *(() if self.entries is None else (f"{self.entries} entries",)))


@dataclasses.dataclass
class RepairReport:
    """What :func:`repair` read, wrote and lost."""

    source: str
    dest: str
    manifest_used: bool = False
    files_read: int = 0
    bytes_read: int = 0
    tables_read: int = 0
    blocks_read: int = 0
    blocks_lost: int = 0
    wal_segments: int = 0
    wal_records: int = 0
    wal_records_lost: int = 0
    entries_read: int = 0  # versions salvaged from tables and WAL (before merging)
    keys_written: int = 0  # keys written to DEST
    deleted: int = 0  # keys whose newest version is a deletion (not written)
    expired: int = 0  # keys whose newest version had expired (not written)
    seconds: float = 0.0
    losses: list[Loss] = dataclasses.field(default_factory=list)
    notices: list[str] = dataclasses.field(default_factory=list)

    @property
    def lossless(self) -> bool:
        """Nothing readable was lost."""
        return not self.losses

    @property
    def damaged_files(self) -> list[str]:
        """Files with at least one loss, in order of appearance."""
        return list(dict.fromkeys(loss.file for loss in self.losses))

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("losses", "notices")}
        d["seconds"] = round(self.seconds, 3)
        d["lossless"] = self.lossless
        d["damaged_files"] = self.damaged_files
        d["losses"] = [loss.to_json() for loss in self.losses]
        d["notices"] = list(self.notices)
        return d

    def __str__(self) -> str:
        head = (f"{self.source} -> {self.dest}: "
                f"{'nothing lost' if self.lossless else f'{len(self.losses)} losses'}; "
                f"{self.keys_written:,} keys written from {self.entries_read:,} versions read "
                f"({self.tables_read} tables, {self.wal_records} WAL records) in "
                f"{self.seconds:.2f} s")
        return "\n".join([head, *map(str, self.losses), *(f"NOTICE  {n}" for n in self.notices)])


# ---------------------------------------------------------------------------------------------
# Tables


@dataclasses.dataclass
class _Block:
    offset: int
    size: int  # payload bytes (the trailer follows)
    keys: KeyRange | None


@dataclasses.dataclass
class _TablePlan:
    number: int
    name: str
    path: str
    version: int  # table format version (the current one when the footer is unreadable)
    blocks: list[_Block]
    level: int | None
    entries: int | None  # the properties block's entry count, when readable
    bytes: int
    cipher: FileCipher | None = None  # an encrypted table's


class _Salvager:
    def __init__(self, fs: FileSystem, src: str, report: RepairReport,
                 progress: ProgressFn | None) -> None:
        self.fs = fs
        self.src = src
        self.log_since: int | None = None  # log_format_2_from of OPTIONS (None: unknown)
        self.keyring: Keyring | None = None  # the data keys of an encrypted source
        self.async_since: int | None = None  # wal_async_seal_from of OPTIONS (None: unknown)
        self.r = report
        self._progress = progress
        self._total = 0
        self._done = 0
        self._next_progress = 0

    def lose(self, loss: Loss) -> None:
        self.r.losses.append(loss)

    def advance(self, n: int) -> None:
        self._done += n
        if self._progress is not None and self._done >= self._next_progress:
            self._next_progress = self._done + (4 << 20)
            self._progress(min(self._done, self._total), self._total)

    # -- planning: where the data blocks of a table are ------------------------------------
    def plan_table(self, number: int, meta: FileMeta | None, level: int | None
                   ) -> _TablePlan | None:
        name = f"{number:06d}.sst"
        path = join(self.src, name)
        whole = None if meta is None else KeyRange(meta.smallest, meta.largest)
        try:
            f = self.fs.open_read(path)
        except StorageError as exc:
            missing = not self.fs.exists(path)
            self.lose(Loss(ProblemKind.MISSING_FILE if missing else ProblemKind.IO_ERROR, name,
                           "the manifest lists this table but it " +
                           ("does not exist" if missing else f"cannot be opened ({exc})"),
                           keys=whole, entries=None if meta is None else meta.entries))
            return None
        try:
            return self._plan_open_table(f, number, name, path, meta, level, whole)
        finally:
            f.close()

    def _plan_open_table(self, f: ReadFile, number: int, name: str, path: str,
                         meta: FileMeta | None, level: int | None, whole: KeyRange | None
                         ) -> _TablePlan | None:
        size = f.size
        footer: Footer | None = None
        if size >= FOOTER_SIZE:
            raw = f.pread(FOOTER_SIZE, size - FOOTER_SIZE)
            fields = FOOTER.unpack(raw)
            if fields[-1] == TABLE_MAGIC and crc32c(raw[:52]) == fields[-2]:
                try:
                    footer = Footer.decode(raw, path, size)
                except ShaleError:
                    footer = None
        cipher: FileCipher | None = None
        if self.keyring is not None or (footer is not None and
                                         footer.format_version == ENCRYPTED_FORMAT_VERSION):
            try:
                if self.keyring is None:
                    raise CorruptionError("an encrypted table in a plain database")
                if footer is not None and footer.format_version != ENCRYPTED_FORMAT_VERSION:
                    raise CorruptionError("a plain table in an encrypted database")
                key_id, salt = decode_header(f.pread(HEADER_SIZE, 0), path, number)
                cipher = self.keyring.reader(TABLE_FILE, number, key_id, salt)
            except CorruptionError as exc:
                self.lose(Loss(ProblemKind.MALFORMED, name, f"{exc}: its blocks cannot be "
                               "decrypted, all of its entries are lost", keys=whole,
                               entries=None if meta is None else meta.entries))
                return None
        version = footer.format_version if footer is not None else (
            ENCRYPTED_FORMAT_VERSION if cipher is not None else FORMAT_VERSION)
        entries: int | None = None
        hints: list[tuple[int, int]] = []
        if footer is not None:
            props = self._meta_block(f, *footer.props_handle, cipher)
            if props is not None:
                try:
                    p = msgpack.unpackb(props, raw=False)
                    if isinstance(p, dict) and isinstance(p.get("entries"), int):
                        entries = p["entries"]
                except (ValueError, TypeError, msgpack.UnpackException):
                    pass
            data_end = footer.filter_handle[0]
            index, damaged_index = self._index(f, *footer.index_handle, cipher)
            if index is not None and not damaged_index:
                last_keys, offsets, sizes = index
                if all(o + s + TRAILER_SIZE <= data_end for o, s in zip(offsets, sizes,
                                                                         strict=True)):
                    blocks = []
                    prev: bytes | None = None
                    for last, o, s in zip(last_keys, offsets, sizes, strict=True):
                        keys = (KeyRange(prev, last, True) if prev is not None
                                else KeyRange(None if meta is None else meta.smallest, last))
                        blocks.append(_Block(o, s, keys))
                        prev = last
                    return _TablePlan(number, name, path, version, blocks, level, entries,
                                      data_end, cipher)
            if index is not None:
                hints = list(zip(index[1], index[2], strict=True))
            self.r.notices.append(f"{name}: the index block is damaged; data blocks were "
                                  "found by their checksums instead")
        else:
            data_end = max(0, size - FOOTER_SIZE)
            self.r.notices.append(f"{name}: the footer is damaged; data blocks were found by "
                                  "their checksums instead")
        data = f.pread(data_end, 0)
        blocks = self._scan_blocks(data, name, version, hints, footer is not None, whole,
                                   cipher)
        self.advance(0)
        return _TablePlan(number, name, path, version, blocks, level, entries, data_end,
                          cipher)

    def _meta_block(self, f: ReadFile, offset: int, size: int,
                    cipher: FileCipher | None = None) -> bytes | None:
        try:
            return decode_block(f.pread(size + TRAILER_SIZE, offset), f.path, offset, cipher,
                                PROPERTIES_BLOCK)
        except ShaleError:
            return None

    def _index(self, f: ReadFile, offset: int, size: int, cipher: FileCipher | None = None
               ) -> tuple[tuple[list[bytes], list[int], list[int]] | None, bool]:
        """The decoded index and whether it is damaged (a damaged index that still decodes
        is returned too: its handles serve as hints; not in an encrypted table, whose
        damaged index is ciphertext)."""
        raw = f.pread(size + TRAILER_SIZE, offset)
        damaged = False
        try:
            payload = decode_block(raw, f.path, offset, cipher, INDEX_BLOCK)
        except ShaleError:
            if cipher is not None:
                return None, True
            damaged = True
            payload = raw[:-TRAILER_SIZE]
        try:
            index = decode_index_block(payload, f.path)
            if not (all(type(x) is int for x in index[1])
                    and all(type(x) is int for x in index[2])
                    and all(type(k) is bytes for k in index[0])):
                return None, True
        except CorruptionError:
            return None, True
        return index, damaged

    def _scan_blocks(self, data: bytes, name: str, version: int, hints: list[tuple[int, int]],
                     data_only: bool, whole: KeyRange | None,
                     cipher: FileCipher | None = None) -> list[_Block]:
        """Find the data blocks of ``data`` (a table's data region, or the whole file before
        its footer when ``data_only`` is False) block after block by their trailers (after
        the header of an encrypted table)."""
        view = memoryview(data)
        end = len(data)
        hint_size = dict(hints)
        hint_offsets = sorted(hint_size)
        found: list[tuple[int, int, bytes | None, bytes | None]] = []  # offset, size, keys
        lost: list[tuple[int, int]] = []
        pos = 0 if cipher is None else HEADER_SIZE
        while pos < end:
            size = hint_size.get(pos)
            if size is None or not _trailer_ok(data, view, pos, size):
                size = _find_trailer(data, view, pos)
            if size is None:
                nxt = next((h for h in hint_offsets if h > pos), end)
                lost.append((pos, nxt))
                pos = nxt
                continue
            first, last = _block_keys(view[pos:pos + size + TRAILER_SIZE].tobytes(), name,
                                      version, cipher, pos)
            found.append((pos, size, first, last))
            pos += size + TRAILER_SIZE
        data_found = [b for b in found if b[2] is not None]
        last_data = data_found[-1][0] if data_found else -1
        blocks: list[_Block] = []
        prev: bytes | None = whole.start if whole is not None else None
        prev_exclusive = False
        # Losses: unreadable stretches, and blocks that are not data blocks, unless they come
        # after the last data block of a file whose metadata region is scanned too.
        events = sorted([(o, "lost", e - o) for o, e in lost]
                        + [(o, "block", i) for i, (o, _, _, _) in enumerate(found)])
        pending: tuple[int, int] | None = None
        for offset, what, arg in events:
            if what == "block":
                _, size, first, last = found[arg]
                if first is None or last is None:
                    if offset < last_data or data_only:
                        pending = (pending or (offset, 0))[0], offset + size + TRAILER_SIZE
                    continue
                if pending is not None:
                    self._lost_bytes(name, pending, KeyRange(prev, first, prev_exclusive))
                    pending = None
                blocks.append(_Block(offset, size, KeyRange(prev, last, prev_exclusive)))
                prev, prev_exclusive = last, True
            elif offset < last_data or data_only:
                pending = (pending or (offset, 0))[0], offset + arg
        if pending is not None:
            self._lost_bytes(name, pending,
                             KeyRange(prev, None if whole is None else whole.end,
                                      prev_exclusive))
        return blocks

    def _lost_bytes(self, name: str, span: tuple[int, int], keys: KeyRange) -> None:
        self.r.blocks_lost += 1
        self.lose(Loss(ProblemKind.CHECKSUM, name,
                       "bytes of the data region that no intact block covers (found without "
                       "the index): their entries are lost", offset=span[0],
                       length=span[1] - span[0], keys=keys))

    # -- reading: the entries of a table, block by block ------------------------------------
    def table_entries(self, plan: _TablePlan, keep_open: bool) -> Iterator[Entry]:
        r = self.r
        f: ReadFile | None = None
        last: tuple[bytes, int] | None = None
        salvaged = 0
        first_loss = len(r.losses)
        r.tables_read += 1
        r.files_read += 1
        try:
            for b in plan.blocks:
                try:
                    if f is None:
                        f = self.fs.open_read(plan.path)
                    raw = f.pread(b.size + TRAILER_SIZE, b.offset)
                finally:
                    if f is not None and not keep_open:
                        f.close()
                        f = None
                r.bytes_read += len(raw)
                self.advance(len(raw))
                r.blocks_read += 1
                try:
                    block = decode_data_block(decode_block(raw, plan.path, b.offset,
                                                           plan.cipher), plan.path,
                                              plan.version)
                    keys, seqs, kinds, expires, values = block.columns(0, block.n)
                    negseqs = list(map(neg, seqs))
                except Exception as exc:  # noqa: BLE001 - any decoding failure loses the block
                    r.blocks_lost += 1
                    checksum = crc32c(memoryview(raw)[:-4]) != int.from_bytes(raw[-4:], "little")
                    unauthentic = isinstance(exc, Unauthentic)
                    self.lose(Loss(ProblemKind.CHECKSUM if checksum else
                                   ProblemKind.AUTHENTICATION if unauthentic else
                                   ProblemKind.MALFORMED,
                                   plan.name, "data block " + (
                                       "fails its checksum" if checksum else
                                       "fails authentication" if unauthentic
                                       else f"does not decode ({exc})")
                                   + ": its entries are lost; older versions of its keys from "
                                   "other tables, if any, show through", offset=b.offset,
                                   length=b.size + TRAILER_SIZE, keys=b.keys))
                    continue
                entries: list[Entry] = list(zip(keys, negseqs, kinds, expires, values,
                                                strict=True))
                pairs = list(zip(keys, negseqs, strict=True))
                if not all(map(lt, pairs, pairs[1:])):
                    entries.sort()
                if last is not None and entries and (entries[0][0], entries[0][1]) <= last:
                    r.blocks_lost += 1
                    self.lose(Loss(ProblemKind.KEY_ORDER, plan.name,
                                   f"data block starts at {key_text(entries[0][0])}, not after "
                                   "the previous block: it cannot be merged in order; its "
                                   "entries are lost", offset=b.offset, keys=b.keys,
                                   entries=len(entries)))
                    continue
                if entries:
                    last = (entries[-1][0], entries[-1][1])
                salvaged += len(entries)
                r.entries_read += len(entries)
                yield from entries
        finally:
            if f is not None:
                f.close()
        table_losses = r.losses[first_loss:]
        if (plan.entries is not None and len(table_losses) == 1
                and table_losses[0].file == plan.name and table_losses[0].entries is None):
            table_losses[0].entries = max(0, plan.entries - salvaged)

    # -- WAL -------------------------------------------------------------------------------
    def wal_entries(self, numbers: list[int]) -> list[Entry]:
        r = self.r
        out: list[Entry] = []
        last_end: int | None = None  # last sequence of the previous segment's records
        prev_sealed = True
        for idx, number in enumerate(numbers):
            name = f"{number:06d}.log"
            try:
                data = self.fs.read_file(join(self.src, name))
            except StorageError as exc:
                self.lose(Loss(ProblemKind.IO_ERROR, name, f"cannot read the WAL segment: {exc}"))
                continue
            r.files_read += 1
            r.wal_segments += 1
            r.bytes_read += len(data)
            self.advance(len(data))
            scan = scan_log(data, log_format_of(self.log_since, name, self.keyring is not None),
                            self.keyring, WAL_FILE, number)
            events: list[tuple[int, int, Any]] = sorted(
                [(o, 1, p) for o, p in scan.records] + [(s, 0, e) for s, e in scan.gaps],
                key=lambda x: x[0])
            prev_end: int | None = None
            gap: tuple[int, int] | None = None
            for offset, what, item in events:
                if what == 0:
                    gap = (offset, item)
                    continue
                try:
                    first, ops = decode_batch(item)
                except CorruptionError as exc:
                    r.wal_records_lost += 1
                    self.lose(Loss(ProblemKind.MALFORMED, name,
                                   f"WAL record does not decode ({exc}); its writes are lost",
                                   offset=offset))
                    prev_end = None
                    continue
                if (prev_end is None and gap is None and last_end is not None
                        and first > last_end + 1 and not prev_sealed
                        and may_hold_torn_writes(self.fs, self.src, numbers, idx - 1,
                                                 self.log_since, self.async_since,
                                                 self.keyring is not None)):
                    # The segment before was never sealed and its last writes did not reach
                    # the disk: like open, keep the writes before them (a prefix), not these.
                    r.notices.append(
                        f"{numbers[idx - 1]:06d}.log: never sealed, and its last writes "
                        f"(sequences {last_end + 1}-{first - 1}) did not reach the disk "
                        "before a crash; like open, repair keeps the writes before them and "
                        f"drops {name} and any later segment (never confirmed durable)")
                    return self._sorted(out)
                r.wal_records += 1
                if gap is not None:
                    self._wal_gap(name, gap, prev_end, first)
                    gap = None
                count = len(ops) // 4
                out.extend(zip(ops[1::4], range(-first, -first - count, -1), ops[0::4],
                               ops[2::4], ops[3::4], strict=True))
                r.entries_read += count
                prev_end = first + count - 1
            if gap is not None:
                self._wal_gap(name, gap, prev_end, None)
            if scan.tail is not None:
                if scan.tail not in scan.vouched and may_hold_torn_writes(
                        self.fs, self.src, numbers, idx, self.log_since, self.async_since,
                        self.keyring is not None):
                    r.notices.append(f"{name}: the WAL segment (the newest, or one never "
                                     "sealed) ends in a record torn by a crash at offset "
                                     f"{scan.tail} ({len(data) - scan.tail} bytes); like open, "
                                     "repair drops it")
                    if idx < len(numbers) - 1:
                        r.notices.append(
                            f"{name}: the WAL segments after it hold writes made after the "
                            "torn ones, never confirmed durable; like open, repair drops "
                            "them (keeping a prefix of the writes)")
                        return self._sorted(out)
                else:
                    r.wal_records_lost += 1
                    self.lose(Loss(ProblemKind.CHECKSUM, name,
                                   "WAL bytes that had been synced are damaged (an older "
                                   "segment's end, a durable header, or damage a later "
                                   "record vouches for); their writes are lost",
                                   offset=scan.tail,
                                   length=len(data) - scan.tail,
                                   seqs=None if prev_end is None else (prev_end + 1,
                                                                       prev_end + 1)))
            if prev_end is not None:
                last_end = prev_end
            prev_sealed = scan.sealed
        return self._sorted(out)

    @staticmethod
    def _sorted(out: list[Entry]) -> list[Entry]:
        out.sort()
        return out

    def _wal_gap(self, name: str, gap: tuple[int, int], prev_end: int | None,
                 next_first: int | None) -> None:
        self.r.wal_records_lost += 1
        seqs = None
        if prev_end is not None and next_first is not None and next_first > prev_end + 1:
            seqs = (prev_end + 1, next_first - 1)
        self.lose(Loss(ProblemKind.CHECKSUM, name,
                       "damaged WAL bytes between intact records: the writes they held are "
                       "lost (records after them were salvaged)", offset=gap[0],
                       length=gap[1] - gap[0], seqs=seqs,
                       entries=None if seqs is None else seqs[1] - seqs[0] + 1))


def _trailer_ok(data: bytes, view: memoryview, offset: int, size: int) -> bool:
    t = offset + size
    return (t + TRAILER_SIZE <= len(data) and data[t] <= 2
            and crc32c(view[offset:t + 1]) == int.from_bytes(data[t + 1:t + 5], "little"))


def _find_trailer(data: bytes, view: memoryview, start: int) -> int | None:
    """The payload size of the block at ``start``: the first position whose trailer's
    checksum covers ``data[start:p]`` plus the type byte (the CRC is extended incrementally,
    so the search is linear in the bytes scanned)."""
    crc = 0
    last = start
    for m in _TRAILER_TYPE.finditer(data, start, len(data) - 4):
        p = m.start()
        crc = crc32c(view[last:p + 1], crc)
        last = p + 1
        if crc == int.from_bytes(data[p + 1:p + 5], "little"):
            return p - start
    return None


def _block_keys(raw: bytes, name: str, version: int, cipher: FileCipher | None = None,
                offset: int = 0) -> tuple[bytes | None, bytes | None]:
    """First and last key of a raw block (at ``offset``) when it is a data block, else
    (None, None)."""
    if cipher is not None:
        try:
            payload = decode_block(raw, name, offset, cipher, DATA_BLOCK)
        except ShaleError:  # not a data block (or damaged): it does not authenticate as one
            return None, None
    for v in (version, 1) if version == 2 else (version,):
        try:
            block = decode_data_block(payload if cipher is not None
                                      else decode_block(raw, name, 0), name, v)
            keys = block.columns(0, block.n)[0]
            if block.n > 0:
                return keys[0], keys[-1]
        except Exception:  # noqa: BLE001,S112 - not a data block (of this version)
            continue
    return None, None


# ---------------------------------------------------------------------------------------------
# Entry point


def _dest_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The source's recorded options that make sense for DEST (its shape and compression)."""
    if not options:
        return {}
    known = {f.name for f in dataclasses.fields(Options)} - {
        "clock", "fs", "create_if_missing", "error_if_exists", "read_only"}
    opts = {k: v for k, v in options.items() if k in known}
    try:
        Options.from_kwargs(**opts)
    except (InvalidArgument, TypeError):
        return {}
    return opts


def _check_dest(fs: FileSystem, src: str, dest: str, what: str = "repair") -> None:
    # Compare where the paths really lead: a symbolic link or a bind mount must not route
    # DEST into PATH (the same directory, by device and inode, anywhere above DEST).
    real_src, real_dest = resolved(src), resolved(dest)
    if (real_dest == real_src or real_dest.startswith(real_src.rstrip("/") + "/")
            or fs_inside(real_dest, real_src)):
        raise InvalidArgument(f"DEST {dest!r} must be outside the database read by {what} "
                              f"({src!r}): {what} never writes there")
    if fs.exists(dest):
        if not fs.is_dir(dest):
            raise InvalidArgument(f"DEST {dest!r} exists and is not a directory")
        if fs.listdir(dest):
            raise InvalidArgument(f"DEST {dest!r} is not empty: {what} writes a new database "
                                  "into a new or empty directory")
    staging = _staging(dest)
    if fs.exists(staging):
        raise InvalidArgument(f"{staging!r} exists: an earlier {what} into {dest!r} was "
                              "interrupted before it finished; remove that directory (it is "
                              "not a complete database) and run again")


def _staging(dest: str) -> str:
    """Where a new database for ``dest`` is written before it is complete."""
    return dest.rstrip("/") + ".incomplete"


@contextlib.contextmanager
def _staged(fs: FileSystem, dest: str) -> Iterator[str]:
    """Write a new database into ``DEST.incomplete`` and rename it to ``dest`` (a new or
    empty directory) only once it is complete: an interrupted repair or conversion never
    leaves something at ``dest`` that opens like a whole database. On failure the staging
    directory stays (the next run names it; it is never deleted for the user)."""
    staging = _staging(dest)
    yield staging
    fs.rename(staging, dest)  # over an empty DEST too (rename(2) replaces an empty directory)
    fs.sync_dir(os.path.dirname(dest) or ".")


def repair(path: str, dest: str, *, progress: ProgressFn | None = None,
           fs: FileSystem | None = None, now: Callable[[], float] = time.time,
           encryption_key: bytes | bytearray | None = None,
           encryption_key_file: str | None = None) -> RepairReport:
    """Salvage every readable record of the database at ``path`` into a new database at
    ``dest`` (which must not exist or be empty), never writing under ``path``. Returns what
    was read, written and lost (see the module docstring for what is trusted). ``now`` is
    the clock expiry is judged by. An encrypted database needs its key (``encryption_key``
    or ``encryption_key_file``; EncryptionError without it or with another one); DEST is
    encrypted with the same key."""
    fs = fs or default_fs()
    src = absolute(path)
    dest = absolute(dest)
    check_database_dir(fs, src)
    _check_dest(fs, src, dest)
    start = time.perf_counter()
    report = RepairReport(src, dest)
    lock = lock_for_reading(fs, src)
    keyring: Keyring | None = None
    try:
        keyring, keyring_problem = load_keyring(fs, src, encryption_key, encryption_key_file)
        if keyring_problem is not None:
            raise CorruptionError(f"cannot repair {src!r}: {keyring_problem}")
        s = _Salvager(fs, src, report, progress)
        s.keyring = keyring
        problems: list[Any] = []
        options = read_options(fs, src, problems.append)
        since = read_log_since(fs, src)
        s.log_since = since
        s.async_since = read_async_seal_since(fs, src)
        manifest = read_manifest(fs, src, num_levels_of(options), problems.append,
                                 since=since, keyring=keyring)
        names = fs.listdir(src)
        tables = sorted(n for kind, n in filter(None, map(parse, names)) if kind == "sst")
        logs = sorted(n for kind, n in filter(None, map(parse, names)) if kind == "log")
        plans: list[list[_TablePlan]] = []  # each inner list: disjoint tables, in key order
        if manifest.intact and manifest.levels is not None:
            report.manifest_used = True
            listed = {f.number for lvl in manifest.levels for f in lvl}
            for n in sorted(set(tables) - listed):
                report.notices.append(f"{n:06d}.sst: not listed by the manifest (left by an "
                                      "interrupted flush or compaction): ignored")
            log_number = manifest.log_number or 0
            for n in logs:
                if n < log_number:
                    report.notices.append(f"{n:06d}.log: below the manifest's log number "
                                          f"{log_number} (already in tables): ignored")
            logs = [n for n in logs if n >= log_number]
            s._total = sum(f.size for lvl in manifest.levels for f in lvl)
            for lvl, files in enumerate(manifest.levels):
                level_plans = [p for p in (s.plan_table(f.number, f, lvl) for f in files)
                               if p is not None]
                disjoint = lvl > 0 and all(a.largest < b.smallest
                                           for a, b in zip(files, files[1:], strict=False))
                if disjoint:
                    plans.append(level_plans)
                else:
                    plans.extend([p] for p in level_plans)
        else:
            report.notices.append("the manifest is damaged or missing: every table in the "
                                  "directory was read, so keys deleted earlier (whose "
                                  "tombstones compaction had dropped) may reappear if an "
                                  "obsolete table still held them")
            for p in problems:
                if getattr(p, "file", "").startswith(("MANIFEST", "CURRENT")):
                    report.notices.append(f"{p.file}: {p.message}")
            for n in tables:
                plan = s.plan_table(n, None, None)
                if plan is not None:
                    plans.append([plan])
        s._total = sum(p.bytes for group in plans for p in group)
        for n in logs:
            try:
                s._total += fs.file_size(join(src, f"{n:06d}.log"))
            except StorageError:
                pass
        wal = s.wal_entries(logs)
        keep_open = len(plans) <= MAX_OPEN_STREAMS
        streams: list[Iterator[Entry]] = [
            chain.from_iterable(s.table_entries(p, keep_open) for p in group)
            for group in plans]
        streams.append(iter(wal))
        # The engine itself writes DEST (the engine layer never calls up into shaledb.DB),
        # encrypted with the source's master key when the source is encrypted.
        dest_options = _dest_options(options)
        if keyring is not None:
            dest_options.update(encryption_key=encryption_key,
                                encryption_key_file=encryption_key_file)
        with _staged(fs, dest) as staging:
            db = Engine(staging, Options.from_kwargs(**dest_options))
            try:
                _write_merged(db, heapq.merge(*streams), report, int(now() * 1000))
                db.flush()
            finally:
                db.close()
    finally:
        if keyring is not None:
            keyring.close()
        if lock is not None:
            lock.release()
    if progress is not None:
        progress(s._total, s._total)
    report.seconds = time.perf_counter() - start
    return report


def _write_merged(db: Engine, entries: Iterator[Entry], report: RepairReport,
                  now_ms: int) -> None:
    batch = WriteBatch()
    nbytes = 0
    last: bytes | None = None
    written = deleted = expired = 0
    for key, _negseq, kind, expire, value in entries:
        if key == last:
            continue  # an older version of a key already decided
        last = key
        if kind != PUT:
            deleted += 1
            continue
        if expire and expire <= now_ms:
            expired += 1
            continue
        batch.put(key, value, expire_at_ms=expire or None)
        written += 1
        nbytes += len(key) + len(value)
        if nbytes >= BATCH_BYTES:
            db.write(batch.resolved_ops(db.options.clock), batch.approximate_size, False)
            batch = WriteBatch()
            nbytes = 0
    if len(batch):
        db.write(batch.resolved_ops(db.options.clock), batch.approximate_size, False)
    db.sync_wal()
    report.keys_written += written
    report.deleted += deleted
    report.expired += expired


__all__ = ["Loss", "RepairReport", "repair"]
