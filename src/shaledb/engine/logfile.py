"""Record framing shared by the WAL and the MANIFEST: a log is a sequence of records.

Layout of one record (little-endian)::

    magic   2 bytes  b"\\xdb\\x5a"   lets recovery find record starts after damage
    type    1 byte   RECORD_FULL (1); other values are reserved
    length  4 bytes  payload length
    crc     4 bytes  CRC32C of type + length + payload
    payload length bytes

A record is written with one ``write()`` call. After a crash the last record may be torn
(cut short, or partly zeros). The reader tells a torn tail (nothing valid follows the damage)
from corruption in the middle (a valid record follows the damage) by scanning forward for
the next magic that starts a record with a good checksum.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import crc32c as _crc32c

from ..errors import CorruptionError
from .vfs import AppendFile, FileSystem

MAGIC = b"\xdb\x5a"
RECORD_FULL = 1
_HEADER = struct.Struct("<2sBII")  # magic, type, length, crc
HEADER_SIZE = _HEADER.size  # 11
_TYPE_LEN = struct.Struct("<BI")

crc32c = _crc32c.crc32c


def encode_record(payload: bytes, rtype: int = RECORD_FULL) -> bytes:
    """Frame ``payload`` as one record."""
    head = _TYPE_LEN.pack(rtype, len(payload))
    crc = crc32c(payload, crc32c(head))
    return b"".join((MAGIC, head, crc.to_bytes(4, "little"), payload))


class LogWriter:
    """Appends framed records to an append-only file."""

    def __init__(self, file: AppendFile) -> None:
        self.file = file

    @property
    def size(self) -> int:
        """Bytes written to the log file."""
        return self.file.size

    def add(self, payload: bytes) -> None:
        """Append one record (one write call)."""
        self.file.append(encode_record(payload))

    def sync(self) -> None:
        """fsync the log file."""
        self.file.sync()

    def close(self) -> None:
        """Close the file (without syncing)."""
        self.file.close()


def _valid_record_at(data: bytes, pos: int) -> int:
    """Return the end offset of a valid record starting at ``pos``, or -1."""
    if pos + HEADER_SIZE > len(data):
        return -1
    magic, rtype, length, crc = _HEADER.unpack_from(data, pos)
    end: int = pos + HEADER_SIZE + length
    if magic != MAGIC or rtype != RECORD_FULL or end > len(data):
        return -1
    if crc32c(data[pos + HEADER_SIZE:end], crc32c(data[pos + 2:pos + 7])) != crc:
        return -1
    return end


class LogReadResult:
    """What reading a log found: the good records and where (if anywhere) damage began."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.good_end = 0  # offset just past the last good record
        self.damaged = False  # damage found at good_end
        self.torn_tail = False  # the damage is a torn tail (no valid record follows)
        # The damaged record is cut short: its header or payload runs past the end of the
        # file, or everything from it on is zeros (never written). A complete record with a
        # wrong checksum is not cut short.
        self.cut_short = False


def read_log(data: bytes) -> LogReadResult:
    """Parse all records in ``data`` (the whole log file), stopping at the first damage."""
    result = LogReadResult()
    pos = 0
    n = len(data)
    while pos < n:
        end = _valid_record_at(data, pos)
        if end < 0:
            result.damaged = True
            result.torn_tail = not _any_valid_record_after(data, pos)
            result.cut_short = _cut_short(data, pos)
            break
        result.records.append(data[pos + HEADER_SIZE:end])
        pos = end
    result.good_end = pos
    return result


def _cut_short(data: bytes, pos: int) -> bool:
    if pos + HEADER_SIZE > len(data) or not data[pos:].strip(b"\0"):
        return True
    _, _, length, _ = _HEADER.unpack_from(data, pos)
    return bool(pos + HEADER_SIZE + length > len(data))


def _any_valid_record_after(data: bytes, pos: int) -> bool:
    search = pos + 1
    while True:
        search = data.find(MAGIC, search)
        if search < 0:
            return False
        if _valid_record_at(data, search) >= 0:
            return True
        search += 1


def iter_records(fs: FileSystem, path: str, *, allow_cut_tail: bool) -> Iterator[bytes]:
    """Yield every record of the log at ``path``; damage raises CorruptionError, except, when
    ``allow_cut_tail``, a last record cut short by the end of the file (an append that a crash
    interrupted). A complete last record with a bad checksum is always corruption."""
    result = read_log(fs.read_file(path))
    yield from result.records
    if result.damaged and not (allow_cut_tail and result.torn_tail and result.cut_short):
        raise CorruptionError(
            f"log {path!r} is damaged at offset {result.good_end}"
            + (" (a valid record follows, so this is not a torn write)" if not result.torn_tail
               else "")
        )
