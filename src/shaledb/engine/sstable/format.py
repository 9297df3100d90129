"""Byte-level pieces of the table format: block trailers, compression and the footer.

Table layout (format version 2; docs/format.md has every byte)::

    data block 0 .. data block N-1
    filter block        xxh32 remainders of the user keys, bucketed (filter.py; format 1:
                        the sorted unique hashes)
    index block         last key, offset and size of every data block
    properties block    entry counts, key and sequence ranges, format version
    footer              64 bytes, fixed

Every block is stored as ``payload + type (1 byte) + crc32c (4 bytes, LE)``, where the CRC
covers payload and type and ``type`` names the compression of the payload (0 none, 1 lz4:
a 4-byte LE uncompressed size, then an LZ4 block, 2 zstd: a frame with the content size).
A block handle ``(offset, size)`` counts the stored payload only.

Footer (little-endian): filter offset Q, filter size I, index offset Q, index size I,
properties offset Q, properties size I, format version I, 12 zero bytes, crc32c of the first
52 bytes I, magic 8 bytes.

Format 3 (encrypted databases): the same, after a 48-byte table header at offset 0 (magic
``SHALEenc``, version, table number, a random 16-byte salt, the data key id, crc32c), and every
block's stored payload sealed with AES-256-GCM after compression (ciphertext + 16-byte tag;
nonce and associated data from the block's offset, kind and compression byte, see
:mod:`shaledb.engine.crypto`). The trailer's CRC covers the sealed bytes: damage is told from
tampering (a good CRC, a failed authentication) without the key.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import crc32c as _crc32c
import lz4.block

from ...errors import CorruptionError, IncompatibleFormatError, InvalidArgument
from ..crypto import DATA_BLOCK, FileCipher, Unauthentic

#: The format of the tables of a plain database.
FORMAT_VERSION = 2
#: The format of the tables of an encrypted database (database format 5).
ENCRYPTED_FORMAT_VERSION = 3
MAGIC = b"SHALEsst"
FOOTER = struct.Struct("<QIQIQII12xI8s")
FOOTER_SIZE = FOOTER.size  # 64
TRAILER_SIZE = 5
HEADER_MAGIC = b"SHALEenc"
HEADER = struct.Struct("<8sIQ16sI4xI")  # magic, version, number, salt, data key id, crc
HEADER_SIZE = HEADER.size  # 48

NONE, LZ4, ZSTD = 0, 1, 2
CODES = {"none": NONE, "lz4": LZ4, "zstd": ZSTD}

crc32c = _crc32c.crc32c

try:  # zstandard is an optional extra
    import zstandard as _zstd

    _zc = _zstd.ZstdCompressor(level=3)
    _zd = _zstd.ZstdDecompressor()
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None  # type: ignore[assignment]


def require_codec(name: str) -> int:
    """The code for compression ``name``; InvalidArgument if its library is missing."""
    code = CODES[name]
    if code == ZSTD and _zstd is None:
        raise InvalidArgument("compression='zstd' needs the zstandard package: "
                              "pip install 'shaledb[zstd]'")
    return code


def encode_header(number: int, salt: bytes, key_id: int) -> bytes:
    """The 48-byte header of encrypted table ``number``."""
    head = HEADER.pack(HEADER_MAGIC, ENCRYPTED_FORMAT_VERSION, number, salt, key_id, 0)[:44]
    return head + crc32c(head).to_bytes(4, "little")


def decode_header(raw: bytes, path: str, number: int) -> tuple[int, bytes]:
    """``(data key id, salt)`` of an encrypted table's header; CorruptionError when it is
    damaged or names another table."""
    if len(raw) < HEADER_SIZE or raw[:8] != HEADER_MAGIC:
        raise CorruptionError(f"table {path!r}: the header of an encrypted table is missing "
                              "or damaged")
    magic, version, file_number, salt, key_id, crc = HEADER.unpack_from(raw, 0)
    if crc32c(raw[:44]) != crc:
        raise CorruptionError(f"table {path!r}: header checksum mismatch")
    if version != ENCRYPTED_FORMAT_VERSION:
        raise CorruptionError(f"table {path!r}: its header says format {version}, its "
                              f"footer {ENCRYPTED_FORMAT_VERSION}")
    if file_number != number:
        raise CorruptionError(f"table {path!r}: its header says it is table {file_number} (a "
                              "table renamed, swapped or restored under the wrong name?)")
    return key_id, salt


def encode_block(payload: bytes, code: int, cipher: FileCipher | None = None,
                 offset: int = 0, kind: int = DATA_BLOCK) -> bytes:
    """Compress (when it pays off), seal (with ``cipher``: the block starts at ``offset``
    and is a ``kind`` block) and add the trailer."""
    if code == LZ4:
        packed = lz4.block.compress(payload, store_size=True)
        if len(packed) < len(payload) - len(payload) // 8:
            payload = packed
        else:
            code = NONE
    elif code == ZSTD:
        packed = _zc.compress(payload)
        if len(packed) < len(payload) - len(payload) // 8:
            payload = packed
        else:
            code = NONE
    if cipher is not None:
        payload = cipher.seal(payload, offset, kind, code)
    trailer = bytes((code,))
    crc = crc32c(trailer, crc32c(payload))
    return b"".join((payload, trailer, crc.to_bytes(4, "little")))


def decode_block(raw: bytes, path: str, offset: int, cipher: FileCipher | None = None,
                 kind: int = DATA_BLOCK, check_crc: bool = True) -> bytes:
    """Verify the trailer of a raw block (payload + trailer) and return the plain payload
    (opened with ``cipher`` first, for an encrypted table: a ``kind`` block at ``offset``).

    ``check_crc=False`` (encrypted blocks only; the read path) checks the CRC only when
    authentication fails, to tell damage from tampering: the GCM tag already covers every
    stored byte and the compression byte, with a 2^-128 chance of missing a change against
    the CRC's 2^-32, and a CRC over a 16 KiB block costs ~1.4 us here, half of what
    decrypting it costs. Verify and repair, which must also find a damaged CRC field, keep
    the check."""
    if len(raw) < TRAILER_SIZE:
        raise CorruptionError(f"table {path!r}: block at {offset} is truncated")
    view = memoryview(raw)  # no copies until the payload itself
    if (check_crc or cipher is None) and not _crc_ok(view):
        raise CorruptionError(f"table {path!r}: checksum mismatch in block at offset {offset}")
    code = raw[-5]
    stored: bytes | memoryview = view[:-5]
    if cipher is not None:
        try:
            stored = cipher.open(stored, offset, kind, code)
        except Unauthentic as exc:
            if not check_crc and not _crc_ok(view):
                raise CorruptionError(f"table {path!r}: checksum mismatch in block at offset "
                                      f"{offset}") from None
            raise Unauthentic(f"table {path!r}: block at offset {offset} fails authentication "
                              "(changed after it was written, or moved from another place or "
                              "table)") from exc
    try:
        if code == NONE:
            return stored if isinstance(stored, bytes) else raw[:-5]
        if code == LZ4:
            return bytes(lz4.block.decompress(stored))
        if code == ZSTD:
            if _zstd is None:
                raise InvalidArgument("this table is zstd-compressed: pip install 'shaledb[zstd]'")
            return bytes(_zd.decompress(stored))
    except (lz4.block.LZ4BlockError, ValueError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise CorruptionError(f"table {path!r}: block at {offset} does not decompress") from exc
    raise CorruptionError(f"table {path!r}: block at {offset} has unknown compression {code}")


def _crc_ok(view: memoryview) -> bool:
    """Whether a raw block's trailer CRC matches its stored bytes and type."""
    return crc32c(view[:-4]) == int.from_bytes(view[-4:], "little")


@dataclasses.dataclass(frozen=True)
class Footer:
    """The fixed-size end of a table."""

    filter_handle: tuple[int, int]
    index_handle: tuple[int, int]
    props_handle: tuple[int, int]
    format_version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        head = FOOTER.pack(*self.filter_handle, *self.index_handle, *self.props_handle,
                           self.format_version, 0, MAGIC)[:52]
        return FOOTER.pack(*self.filter_handle, *self.index_handle, *self.props_handle,
                           self.format_version, crc32c(head), MAGIC)

    @classmethod
    def decode(cls, raw: bytes, path: str, file_size: int) -> Footer:
        if len(raw) != FOOTER_SIZE:
            raise CorruptionError(f"table {path!r} is too short to hold a footer")
        fo, fs, io, isz, po, ps, version, crc, magic = FOOTER.unpack(raw)
        if magic != MAGIC:
            raise CorruptionError(f"table {path!r}: bad magic number (not a ShaleDB table, "
                                  "or its end is damaged)")
        if crc32c(raw[:52]) != crc:
            raise CorruptionError(f"table {path!r}: footer checksum mismatch")
        if version < 1:
            raise CorruptionError(f"table {path!r}: format version {version} does not exist")
        if version > ENCRYPTED_FORMAT_VERSION:
            raise IncompatibleFormatError(
                f"table {path!r} has format version {version}; this ShaleDB reads up to "
                f"{ENCRYPTED_FORMAT_VERSION}: upgrade ShaleDB")
        limit = file_size - FOOTER_SIZE
        for off, size in ((fo, fs), (io, isz), (po, ps)):
            if off + size + TRAILER_SIZE > limit:
                raise CorruptionError(f"table {path!r}: footer points past the end of the file")
        return cls((fo, fs), (io, isz), (po, ps), version)


@dataclasses.dataclass(frozen=True)
class FileMeta:
    """What the manifest knows about a table."""

    number: int
    size: int
    smallest: bytes
    largest: bytes
    smallest_seq: int
    largest_seq: int
    entries: int

    def to_list(self) -> list[Any]:
        return [self.number, self.size, self.smallest, self.largest, self.smallest_seq,
                self.largest_seq, self.entries]

    @classmethod
    def from_list(cls, v: list[Any]) -> FileMeta:
        return cls(int(v[0]), int(v[1]), bytes(v[2]), bytes(v[3]), int(v[4]), int(v[5]),
                   int(v[6]))

    def overlaps(self, lo: bytes | None, hi: bytes | None) -> bool:
        """Whether the file's key range meets ``[lo, hi]`` (inclusive; None is unbounded)."""
        return (hi is None or self.smallest <= hi) and (lo is None or self.largest >= lo)
