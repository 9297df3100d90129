"""Reads a table: point lookups (filter -> bisect index -> cached block -> bisect) and ordered
iteration in both directions."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator
from operator import neg
from typing import Any, Final

import msgpack

from ...errors import CorruptionError
from ..cache import LRUCache
from ..crypto import (
    DATA_BLOCK,
    FILTER_BLOCK,
    INDEX_BLOCK,
    PROPERTIES_BLOCK,
    TABLE_FILE,
    FileCipher,
    Keyring,
)
from ..dbformat import Entry, Record
from ..vfs import FileSystem, ReadFile
from .block import Block, Columns, decode_data_block, decode_index_block
from .filter import KeyFilter
from .format import (
    ENCRYPTED_FORMAT_VERSION,
    FOOTER_SIZE,
    HEADER_SIZE,
    TRAILER_SIZE,
    FileMeta,
    Footer,
    decode_block,
    decode_header,
)

#: Python memory per index key beyond its bytes (the bytes object header and a list slot).
_KEY_OVERHEAD: Final = 41
#: An iterator's read-ahead: the first window's bytes, doubled at each window up to the
#: last (as RocksDB's iterators grow theirs from 8 KiB to 256 KiB).
_READAHEAD_START: Final = 32 * 1024
_READAHEAD: Final = 256 * 1024
#: Entries decoded first when a range scan enters its first block.
_HEAD_RUN: Final = 16


def _entries(cols: Columns) -> Iterator[Entry]:
    return zip(cols[0], map(neg, cols[1]), cols[2], cols[3], cols[4], strict=True)


def _reversed_entries(cols: Columns) -> Iterator[Entry]:
    return zip(reversed(cols[0]), map(neg, reversed(cols[1])), reversed(cols[2]),
               reversed(cols[3]), reversed(cols[4]), strict=True)


def table_cipher(f: ReadFile, path: str, number: int, footer: Footer,
                 keyring: Keyring | None) -> FileCipher | None:
    """The cipher of table ``number`` (None for a plain table). A plain table in an encrypted
    database, or the reverse, is CorruptionError: nothing in an encrypted database is ever
    read without authentication (a footer changed to say "plain" would otherwise pass)."""
    encrypted = footer.format_version == ENCRYPTED_FORMAT_VERSION
    if keyring is None:
        if encrypted:
            raise CorruptionError(f"table {path!r} is encrypted, and the database is not (a "
                                  "table from another database?)")
        return None
    if not encrypted:
        raise CorruptionError(f"table {path!r} is not encrypted, and the database is (a "
                              f"table from another database, or its footer was changed?)")
    key_id, salt = decode_header(f.pread(HEADER_SIZE, 0), path, number)
    return keyring.reader(TABLE_FILE, number, key_id, salt)


class TableReader:
    """An open table. Thread-safe: reads use ``pread`` (or copy from a read-only map) and the
    block cache locks itself."""

    __slots__ = ("path", "number", "_cache", "_cipher", "_file", "format_version",
                 "_last_keys", "_offsets", "_sizes", "_filter", "properties", "nblocks",
                 "meta_bytes")

    def __init__(self, fs: FileSystem, path: str, number: int,
                 block_cache: LRUCache[tuple[int, int], Block] | None,
                 keyring: Keyring | None = None, mapped: bool = False) -> None:
        self.path = path
        self.number = number
        self._cache = block_cache
        self._cipher: FileCipher | None = None
        # (``mapped`` only when asked: a FileSystem written before it keeps working unmapped)
        self._file: ReadFile = fs.open_read(path, mapped=True) if mapped else fs.open_read(path)
        try:
            size = self._file.size
            if size < FOOTER_SIZE:
                raise CorruptionError(f"table {path!r} is too short ({size} bytes)")
            footer = Footer.decode(self._file.pread(FOOTER_SIZE, size - FOOTER_SIZE), path, size)
            self.format_version = footer.format_version
            self._cipher = table_cipher(self._file, path, number, footer, keyring)
            last_keys, offsets, sizes = decode_index_block(
                self._read_raw(*footer.index_handle, INDEX_BLOCK), path)
            self._last_keys = last_keys
            # Compact arrays: 12 bytes per block instead of two int objects and list slots.
            self._offsets = array("Q", offsets)
            self._sizes = array("I", sizes)
            self._filter = KeyFilter(self._read_raw(*footer.filter_handle, FILTER_BLOCK),
                                     footer.format_version, path)
            try:
                props = msgpack.unpackb(self._read_raw(*footer.props_handle, PROPERTIES_BLOCK),
                                        raw=False)
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                raise CorruptionError(f"table {path!r}: malformed properties block") from exc
            if not isinstance(props, dict):
                raise CorruptionError(f"table {path!r}: malformed properties block")
            self.properties: dict[str, Any] = props
        except BaseException:
            self._file.close()
            raise
        self.nblocks = len(self._last_keys)
        #: Memory this reader holds while open (filter and index), charged to the block cache.
        self.meta_bytes = (self._filter.nbytes + 12 * self.nblocks
                           + sum(map(len, self._last_keys)) + _KEY_OVERHEAD * self.nblocks)

    def check_identity(self, meta: FileMeta) -> None:
        """CorruptionError unless this table holds what the manifest says table
        ``meta.number`` holds (key range, sequence range, entries): a table put back under
        another table's name would otherwise send reads to the wrong file."""
        props = self.properties
        pairs = (("smallest_key", meta.smallest), ("largest_key", meta.largest),
                 ("smallest_seq", meta.smallest_seq), ("largest_seq", meta.largest_seq),
                 ("entries", meta.entries))
        wrong = [name for name, want in pairs if name in props and props[name] != want]
        if wrong:
            raise CorruptionError(
                f"table {self.path!r} does not hold what the manifest records for table "
                f"{meta.number} ({', '.join(wrong)} differ: a table renamed, swapped or "
                f"restored under the wrong name?); restore it from a backup, or salvage the "
                f"data with `shaledb repair`")

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __del__(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _read_raw(self, offset: int, size: int, kind: int = DATA_BLOCK) -> bytes:
        raw = self._file.pread(size + TRAILER_SIZE, offset)
        if len(raw) != size + TRAILER_SIZE:
            raise CorruptionError(f"table {self.path!r}: block at {offset} is cut short")
        # Encrypted: the tag authenticates the block, the CRC is read only if it does not.
        return decode_block(raw, self.path, offset, self._cipher, kind, check_crc=False)

    def _block(self, i: int, fill_cache: bool = True) -> Block:
        cache = self._cache
        if cache is not None:
            block = cache.get((self.number, i))
            if block is not None:
                return block
        return self._load_block(i, fill_cache)

    def _load_block(self, i: int, fill_cache: bool = True) -> Block:
        """Read, verify and decode data block ``i`` (and cache it)."""
        cache = self._cache
        block = decode_data_block(self._read_raw(self._offsets[i], self._sizes[i]), self.path,
                                  self.format_version)
        if cache is not None and fill_cache:
            cache.put((self.number, i), block, block.charge)
        return block

    def _readahead(self, i: int, stop: int, reverse: bool, window: int) -> int:
        """Ask for blocks ``i`` onwards (towards ``stop``, inclusive) up to about ``window``
        bytes (at least block ``i``) to be read in; returns the first block after them (before
        them, ``reverse``). A mapped file gets no read-ahead from the kernel (MADV_RANDOM), so
        a cold scan would otherwise wait for its blocks one at a time."""
        offsets = self._offsets
        sizes = self._sizes
        j = i
        if reverse:
            end = offsets[i] + sizes[i] + TRAILER_SIZE
            while j > stop and end - offsets[j - 1] <= window:
                j -= 1
            self._file.readahead(offsets[j], end - offsets[j])
            return j - 1
        start = offsets[i]
        while j < stop and offsets[j + 1] + sizes[j + 1] + TRAILER_SIZE - start <= window:
            j += 1
        self._file.readahead(start, offsets[j] + sizes[j] + TRAILER_SIZE - start)
        return j + 1

    def _read_ahead(self, i: int, fetch: int, window: int, stop: int, reverse: bool
                    ) -> tuple[int, int, int]:
        """At block ``i`` (an iterator's third block, or the middle of the last window it
        asked for): ask for the next ``window`` bytes of blocks from ``fetch``, the first not
        asked for yet, so their I/O runs while the blocks before them are decoded. Returns
        the block at which to ask again (the middle of this window; -1: never), the first
        block after the window, and the next window's size (doubled up to _READAHEAD)."""
        if reverse:
            fetch = min(fetch, i)
            if fetch < stop:
                return -1, fetch, window
            nxt = self._readahead(fetch, stop, reverse, window)
            ahead = min((fetch + nxt + 1) // 2, i - 1)
        else:
            fetch = max(fetch, i)
            if fetch > stop:
                return -1, fetch, window
            nxt = self._readahead(fetch, stop, reverse, window)
            ahead = max((fetch + nxt) // 2, i + 1)
        return ahead, nxt, min(2 * window, _READAHEAD)

    def may_contain(self, key: bytes) -> bool:
        """Filter check: False means certainly absent."""
        return self._filter.may_contain(key)

    def get(self, key: bytes, seq: int) -> Record | None:
        """The newest version of ``key`` with sequence <= ``seq``: (seq, kind, expire, value)."""
        if not self._filter.may_contain(key):
            return None
        i = bisect_left(self._last_keys, key)
        if i >= self.nblocks:
            return None
        cache = self._cache
        block = None if cache is None else cache.get((self.number, i))
        if block is None:
            block = self._load_block(i)
        return block.get(key, seq)

    def latest_seq(self, key: bytes) -> int | None:
        """Sequence of the newest version of ``key`` in this table, or None."""
        if not self._filter.may_contain(key):
            return None
        i = bisect_left(self._last_keys, key)
        if i >= self.nblocks:
            return None
        return self._block(i).latest_seq(key)

    def iter_range(self, lo: bytes | None, hi: bytes | None, reverse: bool = False,
                   fill_cache: bool = True) -> Iterator[Entry]:
        """Entries with ``lo <= key < hi`` (None: unbounded), in table order or reversed.

        The first block is decoded in a short run first: a seek followed by a few ``next``
        calls (the common short range scan) then decodes a few entries, not a whole block.
        """
        last_keys = self._last_keys
        nblocks = self.nblocks
        if nblocks == 0:
            return
        first = 0 if lo is None else bisect_left(last_keys, lo)
        last = nblocks - 1 if hi is None else min(bisect_left(last_keys, hi), nblocks - 1)
        if first > last:
            return
        order = range(last, first - 1, -1) if reverse else range(first, last + 1)
        head = True
        # Read-ahead from the third block on: a seek and a few next calls read one or two.
        ahead = fetch = last - 2 if reverse else first + 2
        window = _READAHEAD_START
        stop = first if reverse else last
        for i in order:
            if i == ahead:
                ahead, fetch, window = self._read_ahead(i, fetch, window, stop, reverse)
            b = self._block(i, fill_cache)
            a = 0 if lo is None or i != first else b.lower_bound(lo)
            e = b.n if hi is None or i != last else b.lower_bound(hi)
            if a >= e:
                continue
            if reverse:
                if head and e - a > _HEAD_RUN:
                    yield from _reversed_entries(b.columns(e - _HEAD_RUN, e))
                    e -= _HEAD_RUN
                yield from _reversed_entries(b.columns(a, e))
            else:
                if head and e - a > _HEAD_RUN:
                    yield from _entries(b.columns(a, a + _HEAD_RUN))
                    a += _HEAD_RUN
                yield from _entries(b.columns(a, e))
            head = False

    def first_run(self, lo: bytes | None, hi: bytes | None, limit: int) -> list[Entry]:
        """The first ``limit`` entries (fewer at the end of the range) with
        ``lo <= key < hi``, in table order, read at once: a seek's share of this table,
        without a generator (a short range read, :meth:`Engine._collect`)."""
        out: list[Entry] = []
        last_keys = self._last_keys
        nblocks = self.nblocks
        i = 0 if lo is None else bisect_left(last_keys, lo)
        first = i
        while i < nblocks and len(out) < limit:
            b = self._block(i)
            a = 0 if lo is None or i != first else b.lower_bound(lo)
            # The range ends in this block when its last key reaches ``hi``.
            ends_here = hi is not None and last_keys[i] >= hi
            e = b.n if hi is None or not ends_here else b.lower_bound(hi)
            e = min(e, a + limit - len(out))
            if e > a:
                out += _entries(b.columns(a, e))
            if ends_here:
                break
            i += 1
        return out

    def iter_chunks(self, lo: bytes | None, hi: bytes | None, reverse: bool = False,
                    fill_cache: bool = True, head_run: int = _HEAD_RUN
                    ) -> Iterator[list[Entry]]:
        """:meth:`iter_range` as lists of entries: a run of ``head_run`` first, then the
        rest block by block."""
        head_run = max(1, head_run)
        last_keys = self._last_keys
        nblocks = self.nblocks
        if nblocks == 0:
            return
        first = 0 if lo is None else bisect_left(last_keys, lo)
        last = nblocks - 1 if hi is None else min(bisect_left(last_keys, hi), nblocks - 1)
        if first > last:
            return
        order = range(last, first - 1, -1) if reverse else range(first, last + 1)
        head = True
        # Read-ahead from the third block on: a seek and a few next calls read one or two.
        ahead = fetch = last - 2 if reverse else first + 2
        window = _READAHEAD_START
        stop = first if reverse else last
        for i in order:
            if i == ahead:
                ahead, fetch, window = self._read_ahead(i, fetch, window, stop, reverse)
            b = self._block(i, fill_cache)
            a = 0 if lo is None or i != first else b.lower_bound(lo)
            e = b.n if hi is None or i != last else b.lower_bound(hi)
            if a >= e:
                continue
            if reverse:
                if head and e - a > head_run:
                    yield list(_reversed_entries(b.columns(e - head_run, e)))
                    e -= head_run
                yield list(_reversed_entries(b.columns(a, e)))
            else:
                if head and e - a > head_run:
                    yield list(_entries(b.columns(a, a + head_run)))
                    a += head_run
                yield list(_entries(b.columns(a, e)))
            head = False

    def __repr__(self) -> str:
        return f"TableReader({self.path!r}, blocks={self.nblocks})"
