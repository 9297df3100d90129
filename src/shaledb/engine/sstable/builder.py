"""Writes a table from entries given in table order (see format.py for the layout)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import msgpack

from ..crypto import (
    DATA_BLOCK,
    FILTER_BLOCK,
    INDEX_BLOCK,
    PROPERTIES_BLOCK,
    TABLE_FILE,
    FileCipher,
    Keyring,
)
from ..dbformat import Entry
from ..ratelimit import RateLimiter
from ..vfs import FileSystem
from .block import encode_columns, encode_data_block
from .filter import build_filter
from .format import (
    ENCRYPTED_FORMAT_VERSION,
    FORMAT_VERSION,
    FileMeta,
    Footer,
    encode_block,
    encode_header,
    require_codec,
)

_WRITE_CHUNK = 1 << 20

#: The clock of a table's ``created_at`` property: a variable, so that scripts/make_golden.py
#: can fix it for reproducible files in the compiled build too (mypyc binds function calls
#: at build time but reads module variables at run time).
clock: Callable[[], float] = time.time
#: Module attributes tests and scripts may replace in the compiled build (tests/conftest.py).
__test_seams__ = ("clock",)


class TableBuilder:
    """Builds one table file. Call :meth:`add` in order, then :meth:`finish` (or
    :meth:`abandon`). A block is cut only between user keys, never inside one key's versions.
    """

    def __init__(self, fs: FileSystem, path: str, number: int, *, block_size: int,
                 compression: str, rate_limiter: RateLimiter | None = None,
                 keyring: Keyring | None = None) -> None:
        self.path = path
        self._limiter = rate_limiter
        self.number = number
        self._block_size = block_size
        self._code = require_codec(compression)
        # Encrypted (format 3): a new file key (fresh salt) for this table; blocks are sealed
        # at their offsets, after the header.
        self._cipher: FileCipher | None = (None if keyring is None
                                           else keyring.writer(TABLE_FILE, number))
        self._version = FORMAT_VERSION if keyring is None else ENCRYPTED_FORMAT_VERSION
        self._file = fs.create(path, exclusive=True)
        self._buf = bytearray()
        self._offset = 0
        if self._cipher is not None:
            self._buf += encode_header(number, self._cipher.salt, self._cipher.key_id)
        self._cols: tuple[list[bytes], list[int], list[int], list[int], list[bytes]] = (
            [], [], [], [], [])
        self._block_bytes = 0
        self._index_keys: list[bytes] = []
        self._index_offsets: list[int] = []
        self._index_sizes: list[int] = []
        self._user_keys: list[bytes] = []
        self._last_key: bytes | None = None
        self.entries = 0
        self.deletions = 0
        self._smallest_seq = 1 << 64
        self._largest_seq = 0
        self._smallest: bytes | None = None
        self.raw_bytes = 0

    @property
    def estimated_size(self) -> int:
        """Bytes written so far plus the pending block."""
        return self._offset + len(self._buf) + self._block_bytes

    def add(self, key: bytes, seq: int, kind: int, expire: int, value: bytes) -> None:
        """Append one entry; entries must come in (key ascending, seq descending) order."""
        if key != self._last_key:
            if self._block_bytes >= self._block_size:
                self._flush_block()
            self._user_keys.append(key)
            self._last_key = key
            if self._smallest is None:
                self._smallest = key
        keys, seqs, kinds, expires, values = self._cols
        keys.append(key)
        seqs.append(seq)
        kinds.append(kind)
        expires.append(expire)
        values.append(value)
        n = len(key) + len(value)
        self._block_bytes += n + 12
        self.raw_bytes += n
        self.entries += 1
        if kind == 0:
            self.deletions += 1
        if seq < self._smallest_seq:
            self._smallest_seq = seq
        if seq > self._largest_seq:
            self._largest_seq = seq

    def add_run(self, entries: list[Entry], start: int, size_limit: int | None) -> int:
        """Add ``entries[start:]`` (``(key, -seq, kind, expire, value)``, table order) as
        :meth:`add` would, one by one, until the table holds ``size_limit`` bytes
        (:attr:`estimated_size`) at a user-key boundary (None: no limit); returns the index
        of the first entry not added. One loop with the builder's state in locals: the
        compaction merge spends most of its time here."""
        keys, seqs, kinds, expires, values = self._cols
        last_key = self._last_key
        block_bytes = self._block_bytes
        block_size = self._block_size
        raw = 0
        deletions = 0
        smallest_seq = self._smallest_seq
        largest_seq = self._largest_seq
        user_keys = self._user_keys
        limit = -1 if size_limit is None else size_limit - self._offset
        i = start
        n = len(entries)
        while i < n:
            key, negseq, kind, expire, value = entries[i]
            if key != last_key:
                # (the writer's cut first, then the block's, as add() after the writer's check)
                if limit >= 0 and last_key is not None and len(self._buf) + block_bytes >= limit:
                    break
                if block_bytes >= block_size:
                    self._block_bytes = block_bytes
                    self._flush_block()
                    keys, seqs, kinds, expires, values = self._cols
                    block_bytes = 0
                    limit = -1 if size_limit is None else size_limit - self._offset
                user_keys.append(key)
                if last_key is None and self._smallest is None:
                    self._smallest = key
                last_key = key
            seq = -negseq
            keys.append(key)
            seqs.append(seq)
            kinds.append(kind)
            expires.append(expire)
            values.append(value)
            m = len(key) + len(value)
            block_bytes += m + 12
            raw += m
            if kind == 0:
                deletions += 1
            if seq < smallest_seq:
                smallest_seq = seq
            if seq > largest_seq:
                largest_seq = seq
            i += 1
        self._last_key = last_key
        self._block_bytes = block_bytes
        self.raw_bytes += raw
        self.entries += i - start
        self.deletions += deletions
        self._smallest_seq = smallest_seq
        self._largest_seq = largest_seq
        return i

    def add_all(self, entries: Iterable[tuple[bytes, int, int, int, bytes]]) -> None:
        """Add ``(key, -seq, kind, expire, value)`` entries (the iterator tuple shape)."""
        add = self.add
        for key, negseq, kind, expire, value in entries:
            add(key, -negseq, kind, expire, value)

    def at_key_boundary(self, key: bytes) -> bool:
        """Whether adding ``key`` would start a new user key (a safe place to cut a file)."""
        return key != self._last_key

    def _write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _WRITE_CHUNK:
            if self._limiter is not None:
                self._limiter.request(len(self._buf))
            self._file.append(self._buf)
            self._offset += len(self._buf)
            self._buf = bytearray()

    def _position(self) -> int:
        return self._offset + len(self._buf)

    def _add_block(self, payload: bytes, code: int, kind: int = DATA_BLOCK) -> tuple[int, int]:
        offset = self._position()
        raw = encode_block(payload, code, self._cipher, offset, kind)
        self._write(raw)
        return offset, len(raw) - 5

    def _flush_block(self) -> None:
        keys = self._cols[0]
        if not keys:
            return
        offset, size = self._add_block(encode_data_block(*self._cols), self._code)
        self._index_keys.append(keys[-1])
        self._index_offsets.append(offset)
        self._index_sizes.append(size)
        self._cols = ([], [], [], [], [])
        self._block_bytes = 0

    def finish(self) -> FileMeta:
        """Write filter, index, properties and footer; fsync; close. Returns the metadata."""
        if self.entries == 0 or self._smallest is None or self._last_key is None:
            raise ValueError("cannot finish an empty table")
        self._flush_block()
        filter_h = self._add_block(build_filter(self._user_keys), 0, FILTER_BLOCK)
        index_h = self._add_block(
            encode_columns([self._index_keys, self._index_offsets, self._index_sizes]), 0,
            INDEX_BLOCK)
        props = {
            "format_version": self._version,
            "entries": self.entries,
            "deletions": self.deletions,
            "data_blocks": len(self._index_keys),
            "user_keys": len(self._user_keys),
            "smallest_key": self._smallest,
            "largest_key": self._last_key,
            "smallest_seq": self._smallest_seq,
            "largest_seq": self._largest_seq,
            "raw_bytes": self.raw_bytes,
            "created_at": int(clock()),
        }
        props_h = self._add_block(msgpack.packb(props, use_bin_type=True), 0, PROPERTIES_BLOCK)
        self._write(Footer(filter_h, index_h, props_h, self._version).encode())
        if self._limiter is not None:
            self._limiter.request(len(self._buf))
        self._file.append(self._buf)
        self._offset += len(self._buf)
        self._buf = bytearray()
        self._file.sync()
        self._file.close()
        return FileMeta(self.number, self._offset, self._smallest, self._last_key,
                        self._smallest_seq, self._largest_seq, self.entries)

    def abandon(self) -> None:
        """Close the file without finishing it (the caller deletes it)."""
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - best effort on an error path
            pass
