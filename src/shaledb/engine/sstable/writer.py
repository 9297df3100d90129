"""Writes a stream of entries into one or more tables (a flush, a compaction, a repair)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..crypto import Keyring
from ..dbformat import Entry
from ..ratelimit import RateLimiter
from ..vfs import FileSystem
from .builder import TableBuilder
from .format import FileMeta


class WriteAborted(Exception):
    """The writer's ``should_stop`` said stop (the database is closing): the caller removes
    the tables in ``TableWriter.created``."""


class TableWriter:
    """Writes a stream of entries into one or more tables, cutting a new table after
    ``target_size`` bytes at a user-key boundary."""

    def __init__(self, fs: FileSystem, path_of: Callable[[int], str],
                 new_number: Callable[[], int], *, block_size: int, compression: str,
                 target_size: int | None, max_outputs: int | None = None,
                 rate_limiter: RateLimiter | None = None,
                 keyring: Keyring | None = None) -> None:
        self._fs = fs
        self._keyring = keyring
        self._limiter = rate_limiter
        self._path_of = path_of
        self._new_number = new_number
        self._block_size = block_size
        self._compression = compression
        self._target = target_size
        self._max_outputs = max_outputs
        self._builder: TableBuilder | None = None
        self.outputs: list[FileMeta] = []
        self.created: list[int] = []
        self.bytes_written = 0

    def write(self, entries: Iterator[Entry], should_stop: Callable[[], bool] | None = None
              ) -> list[FileMeta]:
        """Consume ``entries``; returns the finished tables."""
        target = self._target
        builder = self._builder
        for count, (key, negseq, kind, expire, value) in enumerate(entries, 1):
            if builder is None:
                builder = self._open()
            elif (target is not None and builder.estimated_size >= target
                  and builder.at_key_boundary(key)
                  and (self._max_outputs is None or len(self.created) < self._max_outputs)):
                self._finish(builder)
                builder = self._open()
            builder.add(key, -negseq, kind, expire, value)
            if should_stop is not None and count % 4096 == 0 and should_stop():
                raise WriteAborted()
        if builder is not None:
            self._finish(builder)
        self._builder = None
        return self.outputs

    def write_chunks(self, chunks: Iterable[list[Entry]],
                     should_stop: Callable[[], bool] | None = None) -> list[FileMeta]:
        """:meth:`write` for a stream of chunks (lists of entries in table order): the same
        tables, cut at the same places, with one :meth:`TableBuilder.add_run` per chunk."""
        target = self._target
        builder = self._builder
        since_check = 0
        for chunk in chunks:
            i = 0
            n = len(chunk)
            while i < n:
                if builder is None:
                    builder = self._open()
                can_cut = (target is not None and (self._max_outputs is None
                                                   or len(self.created) < self._max_outputs))
                j = builder.add_run(chunk, i, target if can_cut else None)
                if j < n:
                    self._finish(builder)
                    builder = self._open()
                    # (the entry it stopped at starts the new table: add_run never stops
                    # before a table's first entry)
                since_check += j - i
                i = j
            if should_stop is not None and since_check >= 4096:
                since_check = 0
                if should_stop():
                    raise WriteAborted()
        if builder is not None:
            self._finish(builder)
        self._builder = None
        return self.outputs

    def _open(self) -> TableBuilder:
        number = self._new_number()
        self.created.append(number)
        self._builder = TableBuilder(self._fs, self._path_of(number), number,
                                     block_size=self._block_size,
                                     compression=self._compression,
                                     rate_limiter=self._limiter, keyring=self._keyring)
        return self._builder

    def _finish(self, builder: TableBuilder) -> None:
        meta = builder.finish()
        self._builder = None
        self.outputs.append(meta)
        self.bytes_written += meta.size

    def abandon(self) -> None:
        """Close an unfinished table (the caller deletes every created file)."""
        if self._builder is not None:
            self._builder.abandon()
            self._builder = None
