"""Record framing shared by the WAL and the MANIFEST: a log is a header and a run of records.

Log format 2 (database format 3; docs/format.md has every byte)::

    file header (32 bytes, once)
        magic    8  b"SHALElog"
        version  4  2
        number   8  the file number (WAL segment or manifest)
        salt     8  random, chosen when the file is created
        crc      4  CRC32C of the 28 bytes before it
    record (23-byte header + payload, each written with one append)
        magic    2  b"\\xdb\\x5a"
        type     1  1 = a full record; 2 = a seal (empty: the log was closed cleanly);
                    3 = a sync mark (empty: everything before it was just fsynced)
        length   4  payload length
        synced   8  bytes of this file known durable when the record was written
        hcrc     4  CRC32C of salt + type + length + synced
        crc      4  CRC32C of salt + type + length + synced + payload (continues hcrc)

Why the salt: recovery looks for valid records after damage to tell what the damage was, and
a checksum any writer can compute would let bytes inside a client's value pass for a record.
Nobody outside the file knows its salt, so a record found there was written as a record. The
header has a checksum of its own so that searching damaged bytes costs O(1) per candidate
position: a value full of fake headers claiming long lengths cannot make recovery quadratic.

Why ``synced``: a record vouches that everything before ``synced`` had been fsynced when it was
written, and a seal or a sync mark vouches for everything before it. Damage that a valid
record after it vouches for hit data that was synced: real corruption, not a crash. Damage no
later record vouches for lies in writes that were never confirmed durable: what a crash tears
(a power loss that kept some pages and not others, a process killed in the middle of a copy
into the mapped file), whatever the torn bytes look like. The rules that decide what recovery
keeps are in :mod:`shaledb.engine.wal` and the manifest.

Log format 1 (no file header, 11-byte record headers without salt or ``synced``, CRC of type +
length + payload) is still read, so that databases written before format 3 open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import crc32c as _crc32c

from ..errors import CorruptionError, IncompatibleFormatError, InvalidArgument
from .vfs import AppendFile, FileSystem

FILE_MAGIC = b"SHALElog"
LOG_VERSION = 2
FILE_HEADER = struct.Struct("<8sIQ8sI")  # magic, version, number, salt, crc
FILE_HEADER_SIZE = FILE_HEADER.size  # 32

MAGIC = b"\xdb\x5a"
RECORD_FULL = 1
RECORD_SEAL = 2
RECORD_SYNC = 3
#: Largest payload a record frames (its length field is 4 bytes).
MAX_RECORD = 0xFFFFFFFF
_TYPES = (RECORD_FULL, RECORD_SEAL, RECORD_SYNC)
_HEADER = struct.Struct("<2sBIQII")  # magic, type, length, synced, hcrc, crc
HEADER_SIZE = _HEADER.size  # 23
_TYPE_LEN_SYNCED = struct.Struct("<BIQ")

_HEADER_V1 = struct.Struct("<2sBII")  # magic, type, length, crc
HEADER_SIZE_V1 = _HEADER_V1.size  # 11
_TYPE_LEN_V1 = struct.Struct("<BI")

crc32c = _crc32c.crc32c


def new_salt() -> bytes:
    """A fresh random salt for a new log file."""
    return os.urandom(8)


def encode_file_header(number: int, salt: bytes) -> bytes:
    """The 32-byte header of log file ``number``."""
    head = FILE_HEADER.pack(FILE_MAGIC, LOG_VERSION, number, salt, 0)[:28]
    return head + crc32c(head).to_bytes(4, "little")


def encode_record_v2(payload: bytes, salt: bytes, synced: int,
                     rtype: int = RECORD_FULL) -> bytes:
    """Frame ``payload`` as one format-2 record of a log whose salt is ``salt``."""
    if len(payload) > MAX_RECORD:
        raise InvalidArgument(f"a write group of {len(payload)} bytes is larger than a log "
                              f"record can hold ({MAX_RECORD} bytes): write smaller batches")
    head = _TYPE_LEN_SYNCED.pack(rtype, len(payload), synced)
    hcrc = crc32c(head, crc32c(salt))
    return b"".join((MAGIC, head, hcrc.to_bytes(4, "little"),
                     crc32c(payload, hcrc).to_bytes(4, "little"), payload))


def encode_record(payload: bytes) -> bytes:
    """Frame ``payload`` as one format-1 record (legacy logs; tests)."""
    head = _TYPE_LEN_V1.pack(RECORD_FULL, len(payload))
    crc = crc32c(payload, crc32c(head))
    return b"".join((MAGIC, head, crc.to_bytes(4, "little"), payload))


class LogWriter:
    """Appends format-2 records to a new log file (writing its header first)."""

    def __init__(self, file: AppendFile, number: int, salt: bytes | None = None) -> None:
        self.file = file
        self.salt = new_salt() if salt is None else salt
        #: Bytes known durable (set by :meth:`sync`); records written later vouch for them.
        self.synced = 0
        #: What the last sync mark claimed (-1: none yet).
        self.marked = -1
        file.append(encode_file_header(number, self.salt))

    @property
    def size(self) -> int:
        """Bytes written to the log file."""
        return self.file.size

    def add(self, payload: bytes, synced: int | None = None) -> None:
        """Append one record (one append call). ``synced`` is the durable size it vouches for
        (default: what the last :meth:`sync` made durable)."""
        self.file.append(encode_record_v2(payload, self.salt,
                                          self.synced if synced is None else synced))

    def seal(self) -> None:
        """Make everything durable, then append a seal saying so (the log is complete: a
        clean close) and make the seal durable too. The order matters: a seal written before
        the fsync that makes its claim true could reach the disk without the records it
        vouches for, and turn a crash into "corruption"."""
        self.sync(mark=False)
        self.file.append(encode_record_v2(b"", self.salt, self.synced, RECORD_SEAL))
        self.sync(mark=False)

    def sync(self, mark: bool = True) -> None:
        """fsync the log file; then, with ``mark``, append a sync mark (not itself synced)
        that vouches for what the fsync made durable, should a later record never come."""
        size = self.file.size
        self.file.sync()
        self.synced = size
        if mark:
            self.mark()

    def mark(self) -> None:
        """Append a sync mark claiming what the last :meth:`sync` made durable."""
        self.file.append(encode_record_v2(b"", self.salt, self.synced, RECORD_SYNC))
        self.marked = self.synced

    def close(self) -> None:
        """Close the file (without syncing)."""
        self.file.close()


class Damage:
    """Where a log stops being readable, and what can be said about it."""

    __slots__ = ("offset", "reason", "vouched", "resumes_at")

    def __init__(self, offset: int, reason: str, vouched: bool,
                 resumes_at: int | None) -> None:
        self.offset = offset
        self.reason = reason
        #: A valid record after the damage says the damaged bytes had been synced (its
        #: ``synced`` claim, a sync mark or a seal): the damage hit durable data.
        self.vouched = vouched
        #: Offset of the first valid record after the damage, if any (format 2 only: only
        #: there can a record found by searching be trusted).
        self.resumes_at = resumes_at

    def __repr__(self) -> str:
        return (f"Damage(offset={self.offset}, {self.reason!r}, vouched={self.vouched}, "
                f"resumes_at={self.resumes_at})")


class LogScan:
    """What reading a whole log found."""

    __slots__ = ("version", "number", "records", "offsets", "good_end", "end", "sealed",
                 "vouches_prior", "damage")

    def __init__(self, version: int, number: int | None) -> None:
        self.version = version
        self.number = number
        self.records: list[bytes] = []  # full records before any damage, in order
        self.offsets: list[int] = []  # their offsets
        self.good_end = 0  # offset just past the last good record (or the file header)
        self.end = 0  # offset past the last non-zero byte of the file
        self.sealed = False  # a seal record was read before any damage
        #: A valid record says this file was fsynced past its header (a ``synced`` claim, a
        #: sync mark, a seal). A WAL segment is fsynced only after the one before it is
        #: sealed, so this vouches for every older segment as a whole.
        self.vouches_prior = False
        self.damage: Damage | None = None

    @property
    def cut_bytes(self) -> int:
        """Bytes between the last good record and the end of the non-zero data."""
        return max(0, self.end - self.good_end)


def _nonzero_end(data: bytes | memoryview, start: int) -> int:
    """Offset past the last non-zero byte at or after ``start`` (``start`` if none)."""
    end = len(data)
    view = memoryview(data)
    while end > start:
        chunk = max(start, end - 65536)
        piece = bytes(view[chunk:end]).rstrip(b"\0")
        if piece:
            return chunk + len(piece)
        end = chunk
    return start


def _record_at(data: bytes, pos: int, salt: bytes) -> tuple[int, int, int]:
    """``(end, type, synced)`` of a valid format-2 record at ``pos``, or ``(-1, 0, 0)``."""
    if pos + HEADER_SIZE > len(data):
        return -1, 0, 0
    magic, rtype, length, synced, hcrc, crc = _HEADER.unpack_from(data, pos)
    end: int = pos + HEADER_SIZE + length
    if magic != MAGIC or rtype not in _TYPES or end > len(data):
        return -1, 0, 0
    if crc32c(memoryview(data)[pos + 2:pos + 15], crc32c(salt)) != hcrc:
        return -1, 0, 0  # O(1): only a real header makes us read the payload
    if crc32c(memoryview(data)[pos + HEADER_SIZE:end], hcrc) != crc:
        return -1, 0, 0
    return end, rtype, synced


def _record_at_v1(data: bytes, pos: int) -> int:
    if pos + HEADER_SIZE_V1 > len(data):
        return -1
    magic, rtype, length, crc = _HEADER_V1.unpack_from(data, pos)
    end: int = pos + HEADER_SIZE_V1 + length
    if magic != MAGIC or rtype != RECORD_FULL or end > len(data):
        return -1
    if crc32c(memoryview(data)[pos + HEADER_SIZE_V1:end], crc32c(data[pos + 2:pos + 7])) != crc:
        return -1
    return end


def _reason(data: bytes, pos: int, header: struct.Struct) -> str:
    """Words for what is wrong with the record at ``pos`` (for messages)."""
    if data[pos:pos + 2] != MAGIC:
        return "bad record header" if data[pos:pos + 2].strip(b"\0") else "zeros in the log"
    if pos + header.size > len(data):
        return "record cut short by the end of the file"
    length: int = struct.unpack_from("<I", data, pos + 3)[0]
    if pos + header.size + length > len(data):
        return "record cut short by the end of the file"
    return "checksum mismatch"


def scan_log(data: bytes, path: str = "", *, legacy_resync: bool = False,
             expect: int | None = None) -> LogScan:
    """Read a whole log file (format 1 or 2), stopping the good records at the first damage
    and describing that damage (never raises for damage; see :class:`Damage`).

    ``legacy_resync``: in a format-1 log, a valid record found after the damage vouches for
    it (the only evidence format 1 has). Right for a MANIFEST, whose edits were each fsynced
    before the next was written (dropping later edits would lose tables they added); wrong
    for a WAL, where out-of-order write-back and bytes inside values fake that evidence.

    ``expect``: the log format the database says the file has (``log_format_2_from`` in
    OPTIONS), None when unknown (then the first bytes decide). A file expected in format 2
    that does not start with a valid header has a damaged header, never "log format 1"."""
    if expect == 1:
        return _scan_v1(data, legacy_resync)
    if data[:len(FILE_MAGIC)] == FILE_MAGIC:
        return _scan_v2(data, path)
    if expect == LOG_VERSION:
        if _nonzero_end(data, 0) == 0:
            return LogScan(LOG_VERSION, None)  # created, nothing ever written back
        return _damaged_start(data)
    if data[:2] not in (MAGIC, b"", b"\0\0", b"\0") and data[:1] != b"\0":
        # Neither a format-2 header nor a format-1 record nor never-written space: the
        # start of the file is damaged (a flipped bit in the magic, say).
        return _damaged_start(data)
    if len(data) >= len(FILE_MAGIC) and not data[:FILE_HEADER_SIZE].strip(b"\0"):
        # A format-2 file whose header never reached the disk (zeros): empty, or a crash
        # right after creation.
        scan = LogScan(LOG_VERSION, None)
        scan.good_end = 0
        scan.end = _nonzero_end(data, 0)
        if scan.end:
            scan.damage = Damage(0, "file header never written", False, None)
        return scan
    return _scan_v1(data, legacy_resync)


def _scan_v2(data: bytes, path: str) -> LogScan:
    magic, version, number, salt, crc = FILE_HEADER.unpack_from(data, 0) if len(
        data) >= FILE_HEADER_SIZE else (b"", 0, 0, b"", 0)
    scan = LogScan(LOG_VERSION, None)
    if len(data) < FILE_HEADER_SIZE or crc32c(data[:28]) != crc:
        return _damaged_start(data)
    if version > LOG_VERSION:
        raise IncompatibleFormatError(
            f"log {path!r} has log format version {version}; this ShaleDB reads up to "
            f"{LOG_VERSION}: upgrade ShaleDB")
    if version != LOG_VERSION:
        raise CorruptionError(f"log {path!r}: its file header says log format version "
                              f"{version}, but only version 2 logs have a file header")
    scan.number = number
    pos = FILE_HEADER_SIZE
    n = len(data)
    records = scan.records
    offsets = scan.offsets
    synced_max = 0
    while pos < n:
        end, rtype, synced = _record_at(data, pos, salt)
        if end < 0:
            break
        if rtype == RECORD_FULL:
            records.append(data[pos + HEADER_SIZE:end])
            offsets.append(pos)
            synced_max = max(synced_max, synced)
        else:  # a seal or a sync mark: written only after an fsync
            scan.vouches_prior = True
            if rtype == RECORD_SEAL:
                scan.sealed = True
        pos = end
    if synced_max > FILE_HEADER_SIZE:
        scan.vouches_prior = True
    scan.good_end = pos
    scan.end = _nonzero_end(data, pos)
    if scan.end == pos:
        return scan  # zeros from here on: space allocated, never written
    # Damage at ``pos``. Look for valid records after it: their ``synced`` claims, sync marks
    # and seals say whether the damaged bytes had been made durable.
    vouched = False
    resumes_at = None
    search = pos + 1
    while True:
        search = data.find(MAGIC, search, scan.end)
        if search < 0:
            break
        end, rtype, synced = _record_at(data, search, salt)
        if end >= 0:
            if resumes_at is None:
                resumes_at = search
            if rtype != RECORD_FULL or synced > FILE_HEADER_SIZE:
                scan.vouches_prior = True
            if synced > pos:  # a record, mark or seal written after ``pos`` was durable
                vouched = True
                break
            search = end
        else:
            search += 1
    scan.damage = Damage(pos, _reason(data, pos, _HEADER), vouched, resumes_at)
    return scan


def _damaged_start(data: bytes) -> LogScan:
    """A log whose first bytes (the file header) are damaged (flipped, or zeroed). The header
    is the first thing written to a new log, in one copy, and fsynced before any record is
    written; a crash can leave it torn only when nothing follows it. So with anything after
    it, the damage hit durable bytes (a bit flip, a bad sector): vouched for."""
    scan = LogScan(LOG_VERSION, None)
    scan.end = _nonzero_end(data, 0)
    after = _nonzero_end(data, FILE_HEADER_SIZE) > FILE_HEADER_SIZE
    scan.damage = Damage(0, "damaged file header", after, None)
    # The salt may have survived: records that pass their checksums with it are genuine, and
    # say (as in an intact file) whether the file was fsynced past its header, which vouches
    # for the WAL segments before it (verify and repair read them the same way: salvage_log).
    salt = data[20:FILE_HEADER_SIZE - 4]
    pos = data.find(MAGIC, FILE_HEADER_SIZE, scan.end) if len(salt) == 8 else -1
    while pos >= 0:
        end, rtype, synced = _record_at(data, pos, salt)
        if end >= 0 and (rtype != RECORD_FULL or synced > FILE_HEADER_SIZE):
            scan.vouches_prior = True
            break
        pos = data.find(MAGIC, end if end >= 0 else pos + 1, scan.end)
    return scan


def _scan_v1(data: bytes, resync: bool = False) -> LogScan:
    scan = LogScan(1, None)
    pos = 0
    n = len(data)
    while pos < n:
        end = _record_at_v1(data, pos)
        if end < 0:
            break
        scan.records.append(data[pos + HEADER_SIZE_V1:end])
        scan.offsets.append(pos)
        pos = end
    scan.good_end = pos
    scan.end = _nonzero_end(data, pos)
    if scan.end == pos:
        return scan
    resumes_at = None
    if resync:
        search = data.find(MAGIC, pos + 1, scan.end)
        while search >= 0 and _record_at_v1(data, search) < 0:
            search = data.find(MAGIC, search + 1, scan.end)
        resumes_at = None if search < 0 else search
    scan.damage = Damage(pos, _reason(data, pos, _HEADER_V1), resumes_at is not None,
                         resumes_at)
    return scan


class Salvage:
    """Everything readable in a damaged log (for ``verify`` and ``repair``): every valid
    record, including those after damage, and the damaged ranges between them."""

    __slots__ = ("version", "header_size", "records", "damaged", "zeros_from",
                 "header_damaged", "number")

    def __init__(self, version: int, header_size: int) -> None:
        self.version = version
        self.header_size = header_size  # of one record: 23 (format 2) or 11 (format 1)
        #: (offset, type, synced, payload) of every valid record, in file order; ``synced``
        #: is None in format 1.
        self.records: list[tuple[int, int, int | None, bytes]] = []
        #: [start, end) of each damaged range: up to the next valid record, or to the last
        #: non-zero byte.
        self.damaged: list[tuple[int, int]] = []
        self.zeros_from: int | None = None  # zeros from here to the end (allocated space)
        #: The file header is damaged and bytes follow it (so it had been durable).
        self.header_damaged = False
        #: The file number the (intact) header names, None otherwise.
        self.number: int | None = None

    def vouched(self, start: int) -> bool:
        """Whether a valid record after ``start`` says the bytes at ``start`` were synced."""
        if self.header_damaged:
            return True  # the header was durable: nothing after it can be told unsynced
        return any(off > start and synced is not None and synced > start
                   for off, rtype, synced, _ in self.records)


def salvage_log(data: bytes, expect: int | None = None) -> Salvage:
    """Read every valid record of a log file, resynchronizing after damage at the next valid
    record (format 2: by the salted checksum, which bytes inside values cannot pass; format 1:
    by magic and checksum, best effort)."""
    n = len(data)
    damaged_start = expect == LOG_VERSION or (
        data[:len(FILE_MAGIC)] != FILE_MAGIC and data[:1] not in (b"", b"\0")
        and data[:2] != MAGIC)
    if expect != 1 and (data[:len(FILE_MAGIC)] == FILE_MAGIC or damaged_start or (
            n >= len(FILE_MAGIC) and not data[:FILE_HEADER_SIZE].strip(b"\0"))):
        out = Salvage(LOG_VERSION, HEADER_SIZE)
        end = _nonzero_end(data, 0)
        if end == 0:
            out.zeros_from = 0
            return out
        if n < FILE_HEADER_SIZE or crc32c(data[:28]) != int.from_bytes(data[28:32], "little"):
            # The header is damaged; its salt may not be: records that pass their checksums
            # with it are genuine. The damage is durable when anything follows the header.
            out.damaged.append((0, FILE_HEADER_SIZE))
            out.header_damaged = _nonzero_end(data, FILE_HEADER_SIZE) > FILE_HEADER_SIZE
        else:
            out.number = int.from_bytes(data[12:20], "little")
        salt = data[20:28]

        def at(pos: int) -> tuple[int, int, int | None]:
            return _record_at(data, pos, salt)
        pos = FILE_HEADER_SIZE
    else:
        out = Salvage(1, HEADER_SIZE_V1)

        def at(pos: int) -> tuple[int, int, int | None]:
            return _record_at_v1(data, pos), RECORD_FULL, None
        pos = 0
    hsize = out.header_size
    end_data = _nonzero_end(data, pos)
    while pos < n:
        end, rtype, synced = at(pos)
        if end >= 0:
            out.records.append((pos, rtype, synced, data[pos + hsize:end]))
            pos = end
            continue
        stop = _nonzero_end(data, pos)
        if stop == pos:
            out.zeros_from = pos
            break
        nxt = data.find(MAGIC, pos + 1, end_data)
        while nxt >= 0 and at(nxt)[0] < 0:
            nxt = data.find(MAGIC, nxt + 1, end_data)
        if nxt < 0:
            out.damaged.append((pos, stop))
            out.zeros_from = stop if stop < n else None
            break
        out.damaged.append((pos, nxt))
        pos = nxt
    return out


def content_end(data: bytes, expect: int | None = None) -> int:
    """Where a log's content ends: past its last non-zero byte, or past its last valid record
    when that ends in zeros (a value's own zero bytes are content, not allocated space)."""
    end = _nonzero_end(data, 0)
    sal = salvage_log(data, expect)
    if sal.records:
        off, _, _, payload = sal.records[-1]
        end = max(end, off + sal.header_size + len(payload))
    return end


def iter_records(fs: FileSystem, path: str) -> Iterator[bytes]:
    """Yield every record of a log that must be intact; any damage raises CorruptionError."""
    scan = scan_log(fs.read_file(path), path)
    yield from scan.records
    if scan.damage is not None:
        raise CorruptionError(f"log {path!r} is damaged at offset {scan.damage.offset} "
                              f"({scan.damage.reason})")
