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

Log format 3 (encrypted databases, database format 5) is log format 2 with a 48-byte file
header (a 16-byte salt and the id of the data key the file's key derives from; see
:mod:`shaledb.engine.crypto`) and the payload of every full record sealed with AES-256-GCM
(ciphertext + 16-byte tag) under the file's key, at the record's offset. The checksums cover
the sealed bytes, so framing, torn tails and vouching work as in format 2 without the key; a
record whose checksums pass but which fails authentication was changed on purpose (or moved)
and is damage that nothing can excuse as a crash (vouched for).

Log format 1 (no file header, 11-byte record headers without salt or ``synced``, CRC of type +
length + payload) is still read, so that databases written before format 3 open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator

import crc32c as _crc32c

from ..errors import CorruptionError, EncryptionError, IncompatibleFormatError, InvalidArgument
from . import crypto
from .crypto import TAG_SIZE, WAL_FILE, FileCipher, Keyring, Unauthentic, nonce_reuse
from .vfs import AppendFile, FileSystem

FILE_MAGIC = b"SHALElog"
LOG_VERSION = 2
#: Log format of encrypted databases (database format 5).
ENCRYPTED_LOG_VERSION = 3
FILE_HEADER = struct.Struct("<8sIQ8sI")  # magic, version, number, salt, crc
FILE_HEADER_SIZE = FILE_HEADER.size  # 32
FILE_HEADER_V3 = struct.Struct("<8sIQ16sI4xI")  # magic, version, number, salt, key id, crc
FILE_HEADER_SIZE_V3 = FILE_HEADER_V3.size  # 48

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


def random_salt() -> bytes:
    """A fresh random salt for a new log file."""
    return os.urandom(8)


#: Where new log files get their salt. A variable, not a function that a script replaces:
#: scripts/make_golden.py sets it for reproducible files, and compiled code (mypyc) binds
#: calls to functions at build time but reads module variables at run time.
new_salt: Callable[[], bytes] = random_salt
#: Module attributes tests and scripts may replace in the compiled build (tests/conftest.py).
__test_seams__ = ("new_salt",)


def encode_file_header(number: int, salt: bytes) -> bytes:
    """The 32-byte header of log file ``number``."""
    head = FILE_HEADER.pack(FILE_MAGIC, LOG_VERSION, number, salt, 0)[:28]
    return head + crc32c(head).to_bytes(4, "little")


def encode_file_header_v3(number: int, salt: bytes, key_id: int) -> bytes:
    """The 48-byte header of encrypted log file ``number`` (log format 3)."""
    head = FILE_HEADER_V3.pack(FILE_MAGIC, ENCRYPTED_LOG_VERSION, number, salt, key_id, 0)[:44]
    return head + crc32c(head).to_bytes(4, "little")


def file_header_size(version: int | None) -> int:
    """Size of the file header of a log of format ``version`` (0 for format 1)."""
    return FILE_HEADER_SIZE_V3 if version == ENCRYPTED_LOG_VERSION else (
        0 if version == 1 else FILE_HEADER_SIZE)


def _too_large(n: int) -> InvalidArgument:
    return InvalidArgument(f"a write group of {n} bytes is larger than a log record can hold "
                           f"({MAX_RECORD} bytes): write smaller batches")


def encode_record_v2(payload: bytes, salt: bytes, synced: int,
                     rtype: int = RECORD_FULL) -> bytes:
    """Frame ``payload`` as one format-2 record of a log whose salt is ``salt``."""
    if len(payload) > MAX_RECORD:
        raise _too_large(len(payload))
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
    """Appends format-2 records to a new log file (writing its header first); with a
    ``cipher``, format-3 records (encrypted payloads) after a format-3 header."""

    def __init__(self, file: AppendFile, number: int, salt: bytes | None = None,
                 cipher: FileCipher | None = None) -> None:
        self.file = file
        self.cipher = cipher
        #: Bytes known durable (set by :meth:`sync`); records written later vouch for them.
        self.synced = 0
        #: What the last sync mark claimed (-1: none yet).
        self.marked = -1
        if cipher is None:
            self.salt = new_salt() if salt is None else salt
            file.append(encode_file_header(number, self.salt))
        else:
            self.salt = cipher.salt
            file.append(encode_file_header_v3(number, cipher.salt, cipher.key_id))

    def frame(self, payload: bytes, synced: int | None = None) -> bytes:
        """``payload`` framed (and sealed, when encrypted) as the next record of this log,
        which starts where the file ends now: append it before anything else is appended.
        InvalidArgument when it is too large (nothing is sealed or written then)."""
        if self.cipher is not None:
            if len(payload) > MAX_RECORD - TAG_SIZE:
                raise _too_large(len(payload) + TAG_SIZE)
            payload = self.cipher.seal_record(payload, self.file.size)
        return encode_record_v2(payload, self.salt, self.synced if synced is None else synced)

    def sealed_framer(self) -> Callable[[bytes], bytes]:
        """:meth:`frame` of an encrypted log, with the default ``synced``, as one closure:
        the same bytes for the WAL's write path (one call per write group) with a third
        less Python work (the salt's CRC is computed once, no method or property lookups).
        Like :meth:`frame`, it seals the record for the offset where the file ends now."""
        cipher = self.cipher
        assert cipher is not None, "sealed_framer of a plain log"
        # FileCipher.seal_record inlined (its nonce guard and observer hook included): a
        # call frame less per put, ~3% of an encrypted put.
        encrypt, file, salt_crc = cipher.encrypt_record, self.file, crc32c(self.salt)
        limit, pack, join = MAX_RECORD - TAG_SIZE, _TYPE_LEN_SYNCED.pack, b"".join

        def frame(payload: bytes) -> bytes:
            if len(payload) > limit:
                raise _too_large(len(payload) + TAG_SIZE)  # nothing sealed
            offset = file.size
            if offset < cipher.next_offset:
                raise nonce_reuse(cipher, offset)
            cipher.next_offset = offset + 1
            nonce = offset.to_bytes(12, "little")
            if crypto.nonce_observer is not None:
                crypto.nonce_observer(cipher.fingerprint, nonce)
            sealed: bytes = encrypt(nonce, payload, None)
            head = pack(RECORD_FULL, len(sealed), self.synced)
            hcrc = crc32c(head, salt_crc)  # = crc32c(salt + head), as encode_record_v2
            return join((MAGIC, head, hcrc.to_bytes(4, "little"),
                         crc32c(sealed, hcrc).to_bytes(4, "little"), sealed))

        return frame

    @property
    def size(self) -> int:
        """Bytes written to the log file."""
        return self.file.size

    def add(self, payload: bytes, synced: int | None = None) -> None:
        """Append one record (one append call). ``synced`` is the durable size it vouches for
        (default: what the last :meth:`sync` made durable)."""
        self.file.append(self.frame(payload, synced))

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


def _header_version(data: bytes) -> int:
    """The version field of a log file header (unchecked: the header CRC covers it)."""
    return int.from_bytes(data[8:12], "little") if len(data) >= 12 else 0


def _file_cipher(keyring: Keyring | None, file_kind: int, number: int, key_id: int,
                 salt: bytes, path: str) -> FileCipher:
    if keyring is None:
        raise EncryptionError(f"log {path!r} is encrypted: open the database with its key "
                              "(encryption_key_file / --encryption-key-file)")
    return keyring.reader(file_kind, number, key_id, salt)


def scan_log(data: bytes, path: str = "", *, legacy_resync: bool = False,
             expect: int | None = None, keyring: Keyring | None = None,
             file_kind: int = WAL_FILE, framing_only: bool = False) -> LogScan:
    """Read a whole log file (format 1, 2 or 3), stopping the good records at the first damage
    and describing that damage (never raises for damage; see :class:`Damage`).

    ``legacy_resync``: in a format-1 log, a valid record found after the damage vouches for
    it (the only evidence format 1 has). Right for a MANIFEST, whose edits were each fsynced
    before the next was written (dropping later edits would lose tables they added); wrong
    for a WAL, where out-of-order write-back and bytes inside values fake that evidence.

    ``expect``: the log format the database says the file has (``log_format_2_from`` in
    OPTIONS, and 3 in an encrypted database), None when unknown (then the first bytes decide).
    A file expected in format 2 or 3 that does not start with a valid header has a damaged
    header, never "log format 1"; a valid header of the other of the two is damage too (a
    plain log in an encrypted database, or the reverse).

    Format 3 needs ``keyring`` (EncryptionError without it) and ``file_kind`` (whose key):
    the records it returns are decrypted. With ``framing_only``, format-3 records are read by
    their framing alone and returned sealed (no key needed): enough to tell where the records
    are and what they say about fsyncs (``sealed``, ``vouches_prior``)."""
    if expect == 1:
        return _scan_v1(data, legacy_resync)
    if data[:len(FILE_MAGIC)] == FILE_MAGIC:
        return _scan_v2(data, path, expect, keyring, file_kind, framing_only)
    if expect in (LOG_VERSION, ENCRYPTED_LOG_VERSION):
        if _nonzero_end(data, 0) == 0:
            return LogScan(expect, None)  # created, nothing ever written back
        return _damaged_start(data, file_header_size(expect), expect)
    if data[:2] not in (MAGIC, b"", b"\0\0", b"\0") and data[:1] != b"\0":
        # Neither a format-2 header nor a format-1 record nor never-written space: the
        # start of the file is damaged (a flipped bit in the magic, say).
        return _damaged_start(data, FILE_HEADER_SIZE, LOG_VERSION)
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


def _scan_v2(data: bytes, path: str, expect: int | None = None,
             keyring: Keyring | None = None, file_kind: int = WAL_FILE,
             framing_only: bool = False) -> LogScan:
    version = _header_version(data)
    encrypted = version == ENCRYPTED_LOG_VERSION
    header = FILE_HEADER_V3 if encrypted else FILE_HEADER
    hsize = header.size
    if len(data) < hsize or crc32c(data[:hsize - 4]) != int.from_bytes(
            data[hsize - 4:hsize], "little"):
        return _damaged_start(data, file_header_size(expect or version), expect or LOG_VERSION)
    if version > ENCRYPTED_LOG_VERSION:
        raise IncompatibleFormatError(
            f"log {path!r} has log format version {version}; this ShaleDB reads up to "
            f"{ENCRYPTED_LOG_VERSION}: upgrade ShaleDB")
    if version not in (LOG_VERSION, ENCRYPTED_LOG_VERSION):
        raise CorruptionError(f"log {path!r}: its file header says log format version "
                              f"{version}, but only versions 2 and 3 have a file header")
    fields = header.unpack_from(data, 0)
    number, salt = fields[2], fields[3]
    scan = LogScan(version, number)
    if expect in (LOG_VERSION, ENCRYPTED_LOG_VERSION) and version != expect:
        scan.good_end = 0
        scan.end = _nonzero_end(data, 0)
        scan.damage = Damage(0, "an encrypted log in a plain database" if encrypted else
                             "a plain log in an encrypted database", True, None)
        return scan
    cipher = None
    if encrypted and not framing_only:
        cipher = _file_cipher(keyring, file_kind, number, fields[4], salt, path)
    pos = hsize
    n = len(data)
    records = scan.records
    offsets = scan.offsets
    synced_max = 0
    while pos < n:
        end, rtype, synced = _record_at(data, pos, salt)
        if end < 0:
            break
        if rtype == RECORD_FULL:
            payload = data[pos + HEADER_SIZE:end]
            if cipher is not None:
                try:
                    payload = cipher.open_record(payload, pos)
                except Unauthentic:
                    # Checksums right, authentication wrong: changed on purpose (or moved),
                    # never what a crash leaves.
                    scan.good_end = pos
                    scan.end = _nonzero_end(data, pos)
                    scan.damage = Damage(pos, "record fails authentication (changed after "
                                         "it was written, or moved from elsewhere)", True, None)
                    # What the file says about its fsyncs is framing (checksummed, not
                    # sealed): read it on, as a reader without the key would.
                    scan.vouches_prior = (scan.vouches_prior or synced_max > hsize
                                          or _framing_vouches_prior(data, pos, salt, hsize))
                    return scan
            records.append(payload)
            offsets.append(pos)
            synced_max = max(synced_max, synced)
        else:  # a seal or a sync mark: written only after an fsync
            scan.vouches_prior = True
            if rtype == RECORD_SEAL:
                scan.sealed = True
        pos = end
    if synced_max > hsize:
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
            if rtype != RECORD_FULL or synced > hsize:
                scan.vouches_prior = True
            if synced > pos:  # a record, mark or seal written after ``pos`` was durable
                vouched = True
                break
            search = end
        else:
            search += 1
    scan.damage = Damage(pos, _reason(data, pos, _HEADER), vouched, resumes_at)
    return scan


def _framing_vouches_prior(data: bytes, pos: int, salt: bytes, hsize: int) -> bool:
    """Whether a valid record at or after ``pos`` (by its salted checksums alone) says the
    file was fsynced past its ``hsize``-byte header: :attr:`LogScan.vouches_prior`."""
    end_data = _nonzero_end(data, pos)
    while pos < end_data:
        pos = data.find(MAGIC, pos, end_data)
        if pos < 0:
            break
        end, rtype, synced = _record_at(data, pos, salt)
        if end < 0:
            pos += 1
            continue
        if rtype != RECORD_FULL or synced > hsize:
            return True
        pos = end
    return False


def _damaged_start(data: bytes, header_size: int = FILE_HEADER_SIZE,
                   version: int = LOG_VERSION) -> LogScan:
    """A log whose first bytes (the file header) are damaged (flipped, or zeroed). The header
    is the first thing written to a new log, in one copy, and fsynced before any record is
    written; a crash can leave it torn only when nothing follows it. So with anything after
    it, the damage hit durable bytes (a bit flip, a bad sector): vouched for."""
    scan = LogScan(version, None)
    scan.end = _nonzero_end(data, 0)
    after = _nonzero_end(data, header_size) > header_size
    scan.damage = Damage(0, "damaged file header", after, None)
    # The salt may have survived: records that pass their checksums with it are genuine, and
    # say (as in an intact file) whether the file was fsynced past its header, which vouches
    # for the WAL segments before it (verify and repair read them the same way: salvage_log).
    # (Log format 3: a 16-byte salt, and a 48-byte header that a `synced` claim must pass.)
    salt_size = 16 if version == ENCRYPTED_LOG_VERSION else 8
    salt = data[20:20 + salt_size]
    if len(salt) == salt_size:
        scan.vouches_prior = _framing_vouches_prior(data, header_size, salt, header_size)
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
                 "header_damaged", "number", "unauthentic")

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
        #: Starts of damaged ranges whose checksums pass but whose authentication fails
        #: (format 3: changed on purpose, moved, or sealed with another key).
        self.unauthentic: set[int] = set()

    def vouched(self, start: int) -> bool:
        """Whether a valid record after ``start`` says the bytes at ``start`` were synced."""
        if self.header_damaged:
            return True  # the header was durable: nothing after it can be told unsynced
        return any(off > start and synced is not None and synced > start
                   for off, rtype, synced, _ in self.records)


def salvage_log(data: bytes, expect: int | None = None, keyring: Keyring | None = None,
                file_kind: int = WAL_FILE, number: int | None = None, *,
                raw: bool = False) -> Salvage:
    """Read every valid record of a log file, resynchronizing after damage at the next valid
    record (formats 2 and 3: by the salted checksum, which bytes inside values cannot pass;
    format 1: by magic and checksum, best effort).

    Format 3: records are decrypted with ``keyring`` (EncryptionError without it) under the
    key of file ``file_kind``/``number`` (the number in the header when it is intact, else
    ``number``, the one in the file's name); a record that fails authentication is a damaged
    range. With ``raw``, format-3 payloads are returned sealed (framing only, no key)."""
    n = len(data)
    damaged_start = expect in (LOG_VERSION, ENCRYPTED_LOG_VERSION) or (
        data[:len(FILE_MAGIC)] != FILE_MAGIC and data[:1] not in (b"", b"\0")
        and data[:2] != MAGIC)
    cipher: FileCipher | None = None
    if expect != 1 and (data[:len(FILE_MAGIC)] == FILE_MAGIC or damaged_start or (
            n >= len(FILE_MAGIC) and not data[:FILE_HEADER_SIZE].strip(b"\0"))):
        version = _header_version(data)
        if version != ENCRYPTED_LOG_VERSION and expect == ENCRYPTED_LOG_VERSION:
            version = ENCRYPTED_LOG_VERSION  # a damaged version field: trust the database
        encrypted = version == ENCRYPTED_LOG_VERSION
        hsize = FILE_HEADER_SIZE_V3 if encrypted else FILE_HEADER_SIZE
        out = Salvage(ENCRYPTED_LOG_VERSION if encrypted else LOG_VERSION, HEADER_SIZE)
        end = _nonzero_end(data, 0)
        if end == 0:
            out.zeros_from = 0
            return out
        if n < hsize or crc32c(data[:hsize - 4]) != int.from_bytes(data[hsize - 4:hsize],
                                                                      "little"):
            # The header is damaged; its salt may not be: records that pass their checksums
            # with it are genuine. The damage is durable when anything follows the header.
            out.damaged.append((0, hsize))
            out.header_damaged = _nonzero_end(data, hsize) > hsize
        else:
            out.number = int.from_bytes(data[12:20], "little")
        salt = data[20:36] if encrypted else data[20:28]
        if encrypted and not raw:
            if keyring is None and expect != LOG_VERSION:
                raise EncryptionError("an encrypted log: give the database's key "
                                      "(--encryption-key-file) to read it")
            file_number = out.number if out.number is not None else number
            try:
                if keyring is None:
                    raise CorruptionError("an encrypted log in a plain database")
                if file_number is None:
                    raise CorruptionError("the file number is unknown")
                cipher = keyring.reader(file_kind, file_number,
                                        int.from_bytes(data[36:40], "little"), salt)
            except CorruptionError:
                # No key for it (a damaged header, a file from elsewhere): nothing decrypts.
                out.damaged = [(0, end)]
                out.header_damaged = True
                out.zeros_from = end if end < n else None
                return out

        def at(pos: int) -> tuple[int, int, int | None]:
            return _record_at(data, pos, salt)
        pos = hsize
    else:
        out = Salvage(1, HEADER_SIZE_V1)

        def at(pos: int) -> tuple[int, int, int | None]:
            return _record_at_v1(data, pos), RECORD_FULL, None
        pos = 0
    rsize = out.header_size
    end_data = _nonzero_end(data, pos)
    while pos < n:
        end, rtype, synced = at(pos)
        if end >= 0:
            payload = data[pos + rsize:end]
            if cipher is not None and rtype == RECORD_FULL:
                try:
                    payload = cipher.open_record(payload, pos)
                except Unauthentic:
                    out.damaged.append((pos, end))
                    out.unauthentic.add(pos)
                    pos = end
                    continue
            out.records.append((pos, rtype, synced, payload))
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


def lost_bytes(data: bytes, offset: int, end: int, version: int) -> bytes:
    """What recovery keeps under ``lost/`` of a log it cuts at ``offset``: the bytes up to
    ``end``, after the file's 48-byte header when it is encrypted (format 3), whose salt and
    data key id the records need to be decrypted (docs/format.md, "lost/")."""
    if version == ENCRYPTED_LOG_VERSION and offset >= FILE_HEADER_SIZE_V3 and end > offset:
        return data[:FILE_HEADER_SIZE_V3] + data[offset:end]
    return data[offset:end]


def content_end(data: bytes, expect: int | None = None) -> int:
    """Where a log's content ends: past its last non-zero byte, or past its last valid record
    when that ends in zeros (a value's own zero bytes are content, not allocated space)."""
    end = _nonzero_end(data, 0)
    sal = salvage_log(data, expect, raw=True)
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
