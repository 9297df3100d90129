"""An independent reader of ShaleDB's on-disk format, written from docs/format.md alone.

It imports no ShaleDB code (only crc32c, lz4, msgpack, xxhash, zstandard when present, json,
struct, hmac and, for encrypted databases, the AES-GCM and HKDF primitives of ``cryptography``),
so that a test can hold the engine's files against the document: when the engine
writes a byte the document does not describe, this reader fails or reads something else, and
the test comparing it with the engine fails. Keep it that way: when the format changes,
change docs/format.md first and this reader from the document, never from the engine's code.

Everything here raises :class:`FormatError` for bytes that break the document.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import struct
from bisect import bisect_left
from typing import Any

import crc32c as _crc32c
import lz4.block
import msgpack
import xxhash
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

try:
    import zstandard
except ImportError:  # pragma: no cover - optional
    zstandard = None  # type: ignore[assignment]


class FormatError(Exception):
    """Bytes that do not follow docs/format.md."""


class NewerFormatError(FormatError):
    """A version above the ones the document describes."""


def crc32c(data: bytes, start: int = 0) -> int:
    return int(_crc32c.crc32c(data, start))


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


# -- CURRENT and OPTIONS ---------------------------------------------------------------------

_MANIFEST_NAME = re.compile(rb"MANIFEST-[0-9]{6,}")


def read_current(raw: bytes) -> tuple[str, bool]:
    """The manifest name in CURRENT and whether it carried the checksum line."""
    if not raw.endswith(b"\n"):
        raise FormatError(f"CURRENT does not end in a newline: {raw!r}")
    lines = raw[:-1].split(b"\n")
    if not _MANIFEST_NAME.fullmatch(lines[0]):
        raise FormatError(f"CURRENT does not name a manifest: {raw!r}")
    if len(lines) == 1:
        return lines[0].decode(), False
    if len(lines) != 2 or lines[1] != b"crc32c %08x" % crc32c(lines[0]):
        raise FormatError(f"CURRENT checksum line is wrong: {raw!r}")
    return lines[0].decode(), True


def read_options(raw: bytes) -> dict[str, Any]:
    """The OPTIONS object; for formats 3 to 7 its last line is ``crc32c`` and the CRC32C of
    every byte before that line. Formats 5 and 7 are the encrypted ones."""
    body = raw
    crc_line = None
    cut = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    if raw.endswith(b"\n") and raw[cut:].startswith(b"crc32c "):
        body, crc_line = raw[:cut], raw[cut:]
        if crc_line != b"crc32c %08x\n" % crc32c(body):
            raise FormatError("OPTIONS checksum does not match")
    try:
        info = json.loads(body)
    except ValueError as exc:
        raise FormatError(f"OPTIONS is not JSON: {exc}") from exc
    if not isinstance(info, dict) or not isinstance(info.get("format_version"), int):
        raise FormatError("OPTIONS has no format_version")
    version = info["format_version"]
    if version > 7:
        raise NewerFormatError(f"OPTIONS format_version {version}")
    if version in (5, 7):
        if info.get("encryption") != {"cipher": "AES-256-GCM", "keyring": "KEYRING"}:
            raise FormatError(f"OPTIONS of format {version} without its encryption object")
        if (info.get("table_format_version"), info.get("log_format_version"),
                info.get("log_format_2_from"), info.get("wal_async_seal_from")) != (3, 3, 0, 0):
            raise FormatError(f"OPTIONS of format {version} with other part versions and "
                              "starts than 3, 3, 0, 0")
    elif "encryption" in info:
        raise FormatError(f"OPTIONS of format {version} with an encryption object")
    if version >= 3:
        if crc_line is None:
            raise FormatError(f"OPTIONS of format {version} lacks its checksum line")
        if body != (json.dumps(info, indent=2, sort_keys=True) + "\n").encode():
            raise FormatError("OPTIONS is not laid out as json.dumps(indent=2, sort_keys)")
        keys = ["table_format_version", "log_format_version", "created_by", "options",
                "log_format_2_from"] + (["wal_async_seal_from"] if version >= 4 else [])
        for key in keys:
            if key not in info:
                raise FormatError(f"OPTIONS lacks {key}")
    return info


# -- encryption (format 5) ------------------------------------------------------------------

WAL_FILE, MANIFEST_FILE, TABLE_FILE = 1, 2, 3
SEALED = {"data": 3, "filter": 4, "index": 5, "properties": 6}  # table blocks' kind bytes


def hkdf(ikm: bytes, info: bytes, n: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=salt, info=info).derive(ikm)


@dataclasses.dataclass
class Keys:
    """The data keys of an encrypted database, from KEYRING and the master key."""

    key_id: str
    active: int
    data_keys: dict[int, bytes]

    def file_key(self, key_id: int, salt: bytes, kind: int, number: int) -> bytes:
        if key_id not in self.data_keys:
            raise FormatError(f"file {number} names data key {key_id}, KEYRING holds "
                              f"{sorted(self.data_keys)}")
        info = b"shaledb file key" + bytes([kind]) + struct.pack("<Q", number)
        return hkdf(self.data_keys[key_id], info, salt=salt)


def read_keyring(raw: bytes, master: bytes) -> Keys:
    """KEYRING, checked (CRC, key id, check value) and unwrapped with ``master``."""
    cut = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    body = raw[:cut]
    if raw[cut:] != b"crc32c %08x\n" % crc32c(body):
        raise FormatError("KEYRING checksum line")
    info = json.loads(body)
    if body != (json.dumps(info, indent=2, sort_keys=True) + "\n").encode():
        raise FormatError("KEYRING is not laid out as json.dumps(indent=2, sort_keys)")
    if list(info) != sorted(["format", "cipher", "key_id", "active", "data_keys", "check"]):
        raise FormatError(f"KEYRING keys {list(info)}")
    if info["format"] > 1:
        raise NewerFormatError(f"KEYRING format {info['format']}")
    if info["cipher"] != "AES-256-GCM":
        raise FormatError("KEYRING cipher")
    if info["key_id"] != hkdf(master, b"shaledb master key id", 8).hex():
        raise FormatError("KEYRING names another master key")
    rest = {k: v for k, v in info.items() if k != "check"}
    check = hmac.new(hkdf(master, b"shaledb keyring check"),
                     json.dumps(rest, sort_keys=True, separators=(",", ":")).encode(),
                     hashlib.sha256).digest()[:16].hex()
    if info["check"] != check:
        raise FormatError("KEYRING check value")
    wrap = AESGCM(hkdf(master, b"shaledb key wrapping"))
    keys = {}
    ids = [e["id"] for e in info["data_keys"]]
    if ids != sorted(ids) or info["active"] not in ids:
        raise FormatError("KEYRING data keys not by id, or the active one missing")
    for e in info["data_keys"]:
        blob = bytes.fromhex(e["wrapped"])
        if len(blob) != 60 or list(e) != ["id", "wrapped"]:
            raise FormatError("KEYRING wrapped key shape")
        keys[e["id"]] = wrap.decrypt(blob[:12], blob[12:], b"shaledb data key"
                                     + struct.pack("<I", e["id"]))
    return Keys(info["key_id"], info["active"], keys)


def open_sealed(file_key: bytes, number: int, offset: int, what: int | None, code: int,
                sealed: bytes) -> bytes:
    """The plain bytes of a sealed table block (``what``: its kind byte) or, with ``what``
    None, log record (no associated data); FormatError when it does not authenticate."""
    nonce = struct.pack("<Q", offset) + bytes(4)
    aad = None if what is None else struct.pack("<QQBB", number, offset, what, code)
    try:
        return AESGCM(file_key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise FormatError(f"sealed bytes at {offset} of file {number} do not "
                          "authenticate") from None


def _encryption_header(data: bytes, magic: bytes) -> tuple[int, int, bytes, int]:
    """(version, number, salt, data key id) of a 48-byte log or table header."""
    if len(data) < 48 or data[:8] != magic or crc32c(data[:44]) != _u32(data, 44):
        raise FormatError(f"encrypted file header ({magic!r}) damaged")
    if data[40:44] != bytes(4):
        raise FormatError("encrypted file header: bytes 40..43 are not zero")
    return _u32(data, 8), int(struct.unpack_from("<Q", data, 12)[0]), data[20:36], _u32(data, 36)


# -- log files ------------------------------------------------------------------------------

FULL, SEAL, SYNC = 1, 2, 3


@dataclasses.dataclass
class LogRecord:
    offset: int
    type: int
    synced: int  # 0 in log format 1 (it has no such field)
    payload: bytes  # decrypted in log format 3
    size: int = 0  # bytes of the record in the file (header + stored payload)


@dataclasses.dataclass
class LogFile:
    version: int  # 1, 2 or 3
    number: int | None  # from the file header (format 2)
    salt: bytes | None
    records: list[LogRecord]  # every valid record before the end of the log or the damage
    end: int  # offset where the valid records end
    zero_tail: int  # bytes of zeros after ``end`` up to the end of the file
    damage: int | None  # offset of damage (non-zero bytes after the valid records)
    vouched: bool  # a valid record after the damage vouches for it (format 2 only)

    @property
    def payloads(self) -> list[bytes]:
        return [r.payload for r in self.records if r.type == FULL]


HEADER_V2 = 23  # magic 2, type 1, length 4, synced 8, hcrc 4, crc 4


def _record_v2(data: bytes, pos: int, salt: bytes) -> LogRecord | None:
    if pos + HEADER_V2 > len(data) or data[pos:pos + 2] != b"\xdb\x5a":
        return None
    rtype = data[pos + 2]
    length = _u32(data, pos + 3)
    synced = int(struct.unpack_from("<Q", data, pos + 7)[0])
    hcrc = _u32(data, pos + 15)
    crc = _u32(data, pos + 19)
    if rtype not in (FULL, SEAL, SYNC) or pos + HEADER_V2 + length > len(data):
        return None
    if crc32c(data[pos + 2:pos + 15], crc32c(salt)) != hcrc:
        return None
    if crc32c(data[pos + HEADER_V2:pos + HEADER_V2 + length], hcrc) != crc:
        return None
    if rtype != FULL and length != 0:
        raise FormatError(f"seal or sync mark at {pos} has a payload")
    return LogRecord(pos, rtype, synced, data[pos + HEADER_V2:pos + HEADER_V2 + length],
                     HEADER_V2 + length)


def _record_v1(data: bytes, pos: int) -> LogRecord | None:
    if pos + 11 > len(data) or data[pos:pos + 2] != b"\xdb\x5a" or data[pos + 2] != FULL:
        return None
    length = _u32(data, pos + 3)
    if pos + 11 + length > len(data):
        return None
    if crc32c(data[pos + 11:pos + 11 + length], crc32c(data[pos + 2:pos + 7])) != _u32(
            data, pos + 7):
        return None
    return LogRecord(pos, FULL, 0, data[pos + 11:pos + 11 + length], 11 + length)


def _finish(log: LogFile, data: bytes, pos: int) -> LogFile:
    log.end = pos
    tail = data[pos:]
    if tail.strip(b"\0"):
        log.damage = pos
    else:
        log.zero_tail = len(tail)
    return log


def read_log(data: bytes, number: int | None = None, keys: Keys | None = None,
             kind: int = WAL_FILE) -> LogFile:
    """Read a WAL segment or a MANIFEST (log format 1, 2 or 3). ``number``: the number in the
    file's name, checked against a format-2 or 3 header. Format 3 needs ``keys`` and
    ``kind`` (1 WAL, 2 MANIFEST): its full records are decrypted."""
    if data[:8] == b"SHALElog":
        version = _u32(data, 8) if len(data) >= 12 else 0
        file_key = None
        if version == 3:
            version, file_number, salt, key_id = _encryption_header(data, b"SHALElog")
            if keys is None:
                raise FormatError("an encrypted log: the reader needs the keys")
            file_key = keys.file_key(key_id, salt, kind, file_number)
            start = 48
        else:
            if len(data) < 32 or crc32c(data[:28]) != _u32(data, 28):
                return LogFile(2, None, None, [], 0, 0, 0, False)
            if version > 3:
                raise NewerFormatError(f"log format version {version}")
            if version != 2:
                raise FormatError(f"log header with version {version}")
            file_number = int(struct.unpack_from("<Q", data, 12)[0])
            salt = data[20:28]
            start = 32
        if number is not None and file_number != number:
            raise FormatError(f"log header names file {file_number}, the name says {number}")
        log = LogFile(version, file_number, salt, [], 0, 0, None, False)
        pos = start
        while True:
            rec = _record_v2(data, pos, salt)
            if rec is None:
                break
            if file_key is not None and rec.type == FULL:
                rec.payload = open_sealed(file_key, file_number, pos, None, FULL, rec.payload)
            log.records.append(rec)
            pos += rec.size
        _finish(log, data, pos)
        if log.damage is not None:
            last = len(data.rstrip(b"\0"))
            search = data.find(b"\xdb\x5a", pos + 1, last)
            while search >= 0:
                rec = _record_v2(data, search, salt)
                if rec is not None and rec.synced > pos:
                    log.vouched = True
                    break
                search = data.find(b"\xdb\x5a", search + 1, last)
        return log
    if len(data) >= 8 and not data[:32].strip(b"\0"):
        log = LogFile(2, None, None, [], 0, 0, None, False)
        if data.strip(b"\0"):
            log.damage = 0
        else:
            log.zero_tail = len(data)
        return log
    log = LogFile(1, None, None, [], 0, 0, None, False)
    pos = 0
    while True:
        rec = _record_v1(data, pos)
        if rec is None:
            break
        log.records.append(rec)
        pos += rec.size
    return _finish(log, data, pos)


# -- WAL payloads ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Op:
    seq: int
    kind: int  # 1 put, 0 delete
    key: bytes
    expire_at_ms: int
    value: bytes
    #: The record's commit time (ms), formats 6 and 7; None in older records.
    commit_ms: int | None = None


def decode_wal_payload(payload: bytes) -> list[Op]:
    """The operations of one WAL record, with their sequence numbers (and the record's
    commit time when bit 31 of the count says one follows it)."""
    if len(payload) < 12:
        raise FormatError("WAL payload shorter than its 12-byte head")
    first, count = struct.unpack_from("<QI", payload, 0)
    start = 12
    commit_ms = None
    if count & 0x80000000:
        if len(payload) < 20:
            raise FormatError("WAL payload shorter than its head with a commit time")
        count &= 0x7FFFFFFF
        (commit_ms,) = struct.unpack_from("<Q", payload, 12)
        start = 20
    try:
        items = msgpack.unpackb(payload[start:], raw=True, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FormatError(f"WAL payload msgpack: {exc}") from exc
    if not isinstance(items, list) or len(items) != 4 * count:
        raise FormatError("WAL payload: the array does not hold 4 * count items")
    ops = []
    for i in range(count):
        kind, key, exp, value = items[4 * i:4 * i + 4]
        if kind not in (0, 1) or not isinstance(key, bytes) or not isinstance(value, bytes) \
                or not isinstance(exp, int) or exp < 0:
            raise FormatError(f"WAL payload: malformed operation {i}")
        if kind == 0 and (value or exp):
            raise FormatError("WAL payload: a DELETE with a value or an expiry")
        ops.append(Op(first + i, kind, key, exp, value, commit_ms))
    return ops


# -- tables ---------------------------------------------------------------------------------

def decode_block(data: bytes, offset: int, size: int,
                 sealed: tuple[bytes, int, int] | None = None) -> tuple[bytes, int]:
    """The plain payload of the block at ``(offset, size)`` and its compression type;
    ``sealed``: (file key, table number, block kind) of an encrypted table's block."""
    raw = data[offset:offset + size + 5]
    if len(raw) != size + 5:
        raise FormatError(f"block at {offset} runs past the end of the file")
    stored, code = raw[:size], raw[size]
    if crc32c(raw[:size + 1]) != _u32(raw, size + 1):
        raise FormatError(f"block at {offset}: checksum mismatch")
    if sealed is not None:
        stored = open_sealed(sealed[0], sealed[1], offset, sealed[2], code, stored)
    if code == 0:
        return stored, code
    if code == 1:
        if len(stored) < 4:
            raise FormatError(f"block at {offset}: LZ4 block without its size")
        plain_size = _u32(stored, 0)
        try:
            plain = lz4.block.decompress(stored[4:], uncompressed_size=plain_size)
        except lz4.block.LZ4BlockError as exc:
            raise FormatError(f"block at {offset}: not an LZ4 block") from exc
        if len(plain) != plain_size:
            raise FormatError(f"block at {offset}: LZ4 size prefix does not match")
        if len(stored) >= plain_size - plain_size // 8:
            raise FormatError(f"block at {offset}: compressed though it saves too little")
        return bytes(plain), code
    if code == 2:
        if zstandard is None:  # pragma: no cover
            raise FormatError("zstd block, and zstandard is not installed")
        params = zstandard.get_frame_parameters(stored)
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise FormatError(f"block at {offset}: zstd frame without its content size")
        return bytes(zstandard.ZstdDecompressor().decompress(stored)), code
    raise FormatError(f"block at {offset}: unknown compression type {code}")


_BIN_HEADER = {0xC4: (2, 1), 0xC5: (3, 2), 0xC6: (5, 4)}


def _bin_element(payload: bytes, start: int, end: int) -> bytes:
    marker = payload[start]
    if marker not in _BIN_HEADER:
        raise FormatError(f"data block: no msgpack bin element at {start}")
    hdr, width = _BIN_HEADER[marker]
    length = int.from_bytes(payload[start + 1:start + 1 + width], "big")
    if start + hdr + length != end:
        raise FormatError(f"data block: bin element at {start} does not end at {end}")
    return payload[start + hdr:end]


Entry = tuple[bytes, int, int, int, bytes]  # key, seq, kind, expire_at_ms, value


def _array_header(count: int) -> bytes:
    """msgpack's array header: fixarray, array 16 or array 32 (big-endian lengths)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def decode_data_block_v2(payload: bytes) -> list[Entry]:
    """Entries of a format-2 data block, parsed section by section as the document says."""
    if len(payload) < 8:
        raise FormatError("data block shorter than its header")
    m, flags = struct.unpack_from("<IB", payload, 0)
    if payload[5:8] != b"\0\0\0" or flags & ~7 or m == 0:
        raise FormatError(f"data block header: m={m} flags={flags} pad={payload[5:8]!r}")
    seq_w = 8 if flags & 2 else 4
    off_w = 4 if flags & 1 else 2
    pos = 8
    kinds = payload[pos:pos + m]
    if payload[pos + m:pos + _pad8(m)].strip(b"\0"):
        raise FormatError("data block: non-zero padding after the kinds")
    pos += _pad8(m)
    seqs = struct.unpack_from(f"<{m}{'Q' if seq_w == 8 else 'I'}", payload, pos)
    pos += _pad8(m * seq_w)
    expires: tuple[int, ...] = (0,) * m
    if flags & 4:
        expires = struct.unpack_from(f"<{m}Q", payload, pos)
        pos += 8 * m
    code = "I" if off_w == 4 else "H"
    koffs = struct.unpack_from(f"<{m + 1}{code}", payload, pos)
    pos += _pad8((m + 1) * off_w)
    voffs = struct.unpack_from(f"<{m + 1}{code}", payload, pos)
    pos += _pad8((m + 1) * off_w)
    if koffs[0] != pos or pos % 8 or koffs[m] != voffs[0] or voffs[m] != len(payload):
        raise FormatError("data block: offsets do not frame the keys and values")
    if not flags & 1 and len(payload) > 0xFFFF:
        raise FormatError("data block: 2-byte offsets in a payload over 65,535 bytes")
    if flags & 1:
        # 4-byte offsets only when 2-byte ones would not do.
        small = len(payload) - 2 * (_pad8((m + 1) * 4) - _pad8((m + 1) * 2))
        if small <= 0xFFFF:
            raise FormatError("data block: 4-byte offsets where 2-byte ones would do")
    if (flags & 2) != (2 if max(seqs) >= 1 << 32 else 0):
        raise FormatError("data block: sequence width flag does not match the numbers")
    if flags & 4 and not any(expires):
        raise FormatError("data block: an expires section of zeros")
    entries = []
    for j in range(m):
        if kinds[j] not in (0, 1):
            raise FormatError(f"data block: kind {kinds[j]}")
        key = _bin_element(payload, koffs[j], koffs[j + 1])
        value = _bin_element(payload, voffs[j], voffs[j + 1])
        entries.append((key, seqs[j], kinds[j], expires[j], value))
    # The document's promise: a msgpack array header makes a run of elements one array.
    run = msgpack.unpackb(_array_header(m) + payload[koffs[0]:koffs[m]])
    if run != [e[0] for e in entries]:
        raise FormatError("data block: the key run is not a msgpack array body")
    return entries


def decode_data_block_v1(payload: bytes) -> list[Entry]:
    cols = msgpack.unpackb(payload, raw=True, use_list=True)
    if not isinstance(cols, list) or len(cols) != 5 or len({len(c) for c in cols}) != 1:
        raise FormatError("format-1 data block is not five equal arrays")
    keys, seqs, kinds, expires, values = cols
    return list(zip(keys, seqs, kinds, expires, values, strict=True))


def xxh32(key: bytes) -> int:
    return int(xxhash.xxh32_intdigest(key, seed=0))


class Filter:
    """A table's filter block, decoded as the document says (format 2 or 1)."""

    def __init__(self, payload: bytes, version: int) -> None:
        self.version = version
        if version < 2:
            if len(payload) % 4:
                raise FormatError("format-1 filter is not a run of uint32")
            self.hashes = list(struct.unpack(f"<{len(payload) // 4}I", payload))
            if self.hashes != sorted(set(self.hashes)):
                raise FormatError("format-1 filter hashes are not sorted and distinct")
            return
        if len(payload) < 5:
            raise FormatError("malformed filter block: shorter than its header")
        k, n = struct.unpack_from("<BI", payload, 0)
        if k > 16 or len(payload) != 5 + 4 * ((1 << k) + 1) + 2 * n:
            raise FormatError(f"malformed filter block: k={k} n={n} size={len(payload)}")
        self.k = k
        self.starts = list(struct.unpack_from(f"<{(1 << k) + 1}I", payload, 5))
        self.remainders = list(struct.unpack_from(f"<{n}H", payload, 5 + 4 * ((1 << k) + 1)))
        if self.starts[0] != 0 or self.starts[-1] != n or any(
                a > b for a, b in zip(self.starts, self.starts[1:], strict=False)):
            raise FormatError("malformed filter block: bucket starts")
        for b in range(1 << k):
            bucket = self.remainders[self.starts[b]:self.starts[b + 1]]
            if bucket != sorted(set(bucket)):
                raise FormatError(f"filter bucket {b} is not sorted and distinct")

    @staticmethod
    def bucket_bits(distinct_hashes: int) -> int:
        k = 0
        while k < 16 and distinct_hashes >> k > 32:
            k += 1
        return k

    def may_contain(self, key: bytes) -> bool:
        h = xxh32(key)
        if self.version < 2:
            i = bisect_left(self.hashes, h)
            return i < len(self.hashes) and self.hashes[i] == h
        b = h >> (32 - self.k)
        r = h & 0xFFFF
        return r in self.remainders[self.starts[b]:self.starts[b + 1]]

    def check_built_from(self, keys: set[bytes]) -> None:
        """The filter holds exactly what the document says it is built from."""
        hashes = {xxh32(k) for k in keys}
        if self.version < 2:
            if self.hashes != sorted(hashes):
                raise FormatError("format-1 filter does not hold the keys' hashes")
            return
        if self.k != self.bucket_bits(len(hashes)):
            raise FormatError(f"filter has {self.k} bucket bits, expected "
                              f"{self.bucket_bits(len(hashes))} for {len(hashes)} hashes")
        want: dict[int, set[int]] = {}
        for h in hashes:
            want.setdefault(h >> (32 - self.k), set()).add(h & 0xFFFF)
        for b in range(1 << self.k):
            if self.remainders[self.starts[b]:self.starts[b + 1]] != sorted(want.get(b, ())):
                raise FormatError(f"filter bucket {b} does not hold the keys' remainders")


@dataclasses.dataclass
class Table:
    version: int
    filter: Filter
    index: tuple[list[bytes], list[int], list[int]]
    properties: dict[str, Any]
    blocks: list[list[Entry]]  # decoded data blocks, in order
    block_types: list[int]  # compression type of each data block
    block_payloads: list[bytes]  # the plain payload of each data block

    @property
    def entries(self) -> list[Entry]:
        return [e for b in self.blocks for e in b]


PROPERTY_KEYS = ["format_version", "entries", "deletions", "data_blocks", "user_keys",
                 "smallest_key", "largest_key", "smallest_seq", "largest_seq", "raw_bytes",
                 "created_at"]


def read_table(data: bytes, number: int | None = None, keys: Keys | None = None) -> Table:
    """Read a whole table and check its structure against the document (a format-3 table
    needs ``keys``; ``number``: the one in its name, checked against its header)."""
    if len(data) < 64:
        raise FormatError("table shorter than its footer")
    footer = data[-64:]
    if footer[56:] != b"SHALEsst":
        raise FormatError("table footer magic")
    if crc32c(footer[:52]) != _u32(footer, 52):
        raise FormatError("table footer checksum")
    fo, fs, io, isz, po, ps, version = struct.unpack_from("<QIQIQII", footer, 0)
    if footer[40:52] != bytes(12):
        raise FormatError("table footer: bytes 40..51 are not zero")
    if version > 3:
        raise NewerFormatError(f"table format {version}")
    if version < 1:
        raise FormatError(f"table format {version}")
    start = 0
    file_key = None
    if version == 3:
        header_version, table_number, salt, key_id = _encryption_header(data, b"SHALEenc")
        if header_version != 3 or (number is not None and table_number != number):
            raise FormatError(f"table header: version {header_version}, number "
                              f"{table_number} (named {number})")
        if keys is None:
            raise FormatError("an encrypted table: the reader needs the keys")
        file_key = keys.file_key(key_id, salt, TABLE_FILE, table_number)
        start = 48

    def block(offset: int, size: int, what: str) -> tuple[bytes, int]:
        if file_key is None:
            return decode_block(data, offset, size)
        return decode_block(data, offset, size, (file_key, table_number, SEALED[what]))

    limit = len(data) - 64
    for off, size in ((fo, fs), (io, isz), (po, ps)):
        if off + size + 5 > limit:
            raise FormatError("table footer points past the footer")
    filter_payload, ftype = block(fo, fs, "filter")
    index_payload, itype = block(io, isz, "index")
    props_payload, ptype = block(po, ps, "properties")
    if (ftype, itype, ptype) != (0, 0, 0):
        raise FormatError("filter, index or properties block compressed")
    if not (fo + fs + 5 == io and io + isz + 5 == po and po + ps + 5 == limit):
        raise FormatError("table: filter, index, properties and footer are not back to back")
    index = msgpack.unpackb(index_payload, raw=True, use_list=True)
    if not isinstance(index, list) or len(index) != 3 or len({len(c) for c in index}) != 1:
        raise FormatError("index block is not three equal arrays")
    props = msgpack.unpackb(props_payload, raw=False)
    if not isinstance(props, dict) or list(props) != PROPERTY_KEYS:
        raise FormatError(f"properties keys {list(props) if isinstance(props, dict) else props}")
    blocks, types, payloads = [], [], []
    pos = start
    for last_key, off, size in zip(*index, strict=True):
        if off != pos:
            raise FormatError(f"data block at {off}, expected at {pos}")
        payload, code = block(off, size, "data")
        entries = (decode_data_block_v2(payload) if version >= 2
                   else decode_data_block_v1(payload))
        if not entries or entries[-1][0] != last_key:
            raise FormatError(f"index names {last_key!r} as the last key of block at {off}")
        blocks.append(entries)
        types.append(code)
        payloads.append(payload)
        pos = off + size + 5
    if pos != fo:
        raise FormatError("data blocks do not end where the filter block starts")
    table = Table(version, Filter(filter_payload, version), index, props, blocks, types,
                  payloads)
    _check_table(table)
    return table


def _check_table(t: Table) -> None:
    entries = t.entries
    order = [(e[0], -e[1]) for e in entries]
    if order != sorted(order) or len(set(order)) != len(order):
        raise FormatError("table entries are not in (key ascending, seq descending) order")
    for a, b in zip(t.blocks, t.blocks[1:], strict=False):
        if a[-1][0] == b[0][0]:
            raise FormatError("a user key straddles two data blocks")
    keys = {e[0] for e in entries}
    t.filter.check_built_from(keys)
    p = t.properties
    want = {"format_version": t.version, "entries": len(entries),
            "deletions": sum(1 for e in entries if e[2] == 0), "data_blocks": len(t.blocks),
            "user_keys": len(keys), "smallest_key": entries[0][0],
            "largest_key": entries[-1][0], "smallest_seq": min(e[1] for e in entries),
            "largest_seq": max(e[1] for e in entries),
            "raw_bytes": sum(len(e[0]) + len(e[4]) for e in entries)}
    got = {k: p[k] for k in want}
    if got != want:
        raise FormatError(f"properties {got} do not describe the table ({want})")


# -- MANIFEST -------------------------------------------------------------------------------

EDIT_KEYS = ["v", "log", "next", "seq", "add", "del", "ptr"]


@dataclasses.dataclass(frozen=True)
class TableMeta:
    level: int
    number: int
    size: int
    smallest: bytes
    largest: bytes
    smallest_seq: int
    largest_seq: int
    entries: int


@dataclasses.dataclass
class ManifestState:
    tables: dict[int, TableMeta]
    log_number: int
    next_file: int
    last_seq: int
    pointers: dict[int, bytes]
    edits: list[dict[str, Any]]


def decode_edit(payload: bytes) -> dict[str, Any]:
    edit = msgpack.unpackb(payload, raw=False)
    if not isinstance(edit, dict):
        raise FormatError("manifest edit is not a map")
    keys = list(edit)
    if keys != [k for k in EDIT_KEYS if k in edit]:
        raise FormatError(f"manifest edit keys {keys} not in the documented order")
    if edit.get("v", 1) > 1:
        raise NewerFormatError(f"manifest edit version {edit['v']}")
    for k in ("add", "del", "ptr"):
        if k in edit and not edit[k]:
            raise FormatError(f"manifest edit with an empty {k!r}")
    return edit


def replay_manifest(log: LogFile, num_levels: int = 7) -> ManifestState:
    state = ManifestState({}, 0, 0, 0, {}, [])
    for payload in log.payloads:
        edit = decode_edit(payload)
        state.edits.append(edit)
        for level, number in edit.get("del", []):
            meta = state.tables.pop(number, None)
            if meta is None or meta.level != level:
                raise FormatError(f"manifest deletes table {number} at L{level}: not there")
        for a in edit.get("add", []):
            meta = TableMeta(*a)
            if meta.number in state.tables or not 0 <= meta.level < num_levels:
                raise FormatError(f"manifest adds table {meta.number} twice or at a bad level")
            state.tables[meta.number] = meta
        if "log" in edit:
            state.log_number = edit["log"]
        state.next_file = max(state.next_file, edit.get("next", 0))
        state.last_seq = max(state.last_seq, edit.get("seq", 0))
        for level, key in edit.get("ptr", []):
            state.pointers[level] = key
    if not state.edits:
        raise FormatError("manifest holds no edit")
    return state


# -- a whole directory ----------------------------------------------------------------------

_NUMBERED = re.compile(r"^(\d{6,})\.(log|sst)$")


@dataclasses.dataclass
class Database:
    path: str
    current: str
    current_checksummed: bool
    options: dict[str, Any]
    manifest_log: LogFile
    manifest: ManifestState
    tables: dict[int, Table]
    table_files: set[int]  # every NNNNNN.sst in the directory
    wal: dict[int, LogFile]  # every NNNNNN.log in the directory

    def live_wal_ops(self) -> list[Op]:
        """Operations of the live WAL segments (>= log_number), in order, up to the first
        damage."""
        ops: list[Op] = []
        for number in sorted(n for n in self.wal if n >= self.manifest.log_number):
            log = self.wal[number]
            for payload in log.payloads:
                ops.extend(decode_wal_payload(payload))
            if log.damage is not None:
                break
        return ops

    def state(self, now_ms: int) -> dict[bytes, tuple[bytes, int]]:
        """What a reader sees: the newest version of every key, live at ``now_ms``
        (value, expire_at_ms)."""
        newest: dict[bytes, tuple[int, int, int, bytes]] = {}

        def offer(key: bytes, seq: int, kind: int, exp: int, value: bytes) -> None:
            cur = newest.get(key)
            if cur is None or seq > cur[0]:
                newest[key] = (seq, kind, exp, value)

        for t in self.tables.values():
            for key, seq, kind, exp, value in t.entries:
                offer(key, seq, kind, exp, value)
        for op in self.live_wal_ops():
            offer(op.key, op.seq, op.kind, op.expire_at_ms, op.value)
        return {k: (v, exp) for k, (_, kind, exp, v) in newest.items()
                if kind == 1 and (exp == 0 or exp > now_ms)}


def read_database(path: str, master: bytes | None = None) -> Database:
    """Read every file of a (closed, or copied) database directory; an encrypted one (format
    5 or 7) with its master key."""

    def read(name: str) -> bytes:
        with open(os.path.join(path, name), "rb") as f:
            return f.read()

    names = os.listdir(path)
    current, checksummed = read_current(read("CURRENT"))
    options = read_options(read("OPTIONS"))
    keys = None
    if options["format_version"] in (5, 7):
        if master is None:
            raise FormatError("an encrypted database: the reader needs the master key")
        keys = read_keyring(read("KEYRING"), master)
    mlog = read_log(read(current), int(current.split("-")[1]), keys, MANIFEST_FILE)
    if mlog.damage is not None:
        raise FormatError(f"{current} is damaged at {mlog.damage}")
    if keys is not None and mlog.version != 3:
        raise FormatError(f"{current} of log format {mlog.version} in an encrypted database")
    levels = options.get("options", {}).get("num_levels", 7)
    manifest = replay_manifest(mlog, levels)
    tables, table_files, wal = {}, set(), {}
    for name in names:
        m = _NUMBERED.match(name)
        if not m:
            continue
        number = int(m.group(1))
        if m.group(2) == "sst":
            table_files.add(number)
        else:
            wal[number] = read_log(read(name), number, keys, WAL_FILE)
            if keys is not None and wal[number].version != 3:
                raise FormatError(f"WAL segment {number} of log format "
                                  f"{wal[number].version} in an encrypted database")
    for number, meta in manifest.tables.items():
        data = read(f"{number:06d}.sst")
        if len(data) != meta.size:
            raise FormatError(f"table {number} has {len(data)} bytes, manifest says {meta.size}")
        t = read_table(data, number, keys)
        if (keys is not None) != (t.version == 3):
            raise FormatError(f"table {number} of format {t.version} in a database of "
                              f"format {options['format_version']}")
        e = t.entries
        got = (e[0][0], e[-1][0], min(x[1] for x in e), max(x[1] for x in e), len(e))
        if got != (meta.smallest, meta.largest, meta.smallest_seq, meta.largest_seq,
                   meta.entries):
            raise FormatError(f"manifest entry of table {number} does not describe it")
        tables[number] = t
    return Database(path, current, checksummed, options, mlog, manifest, tables, table_files,
                    wal)
