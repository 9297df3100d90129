"""Typed errors raised by ShaleDB.

Every error ShaleDB raises on purpose derives from :class:`ShaleError`, so callers can catch
the whole family with one clause. Messages say what happened and what to do about it.
Wrong argument *types* raise the built-in :class:`TypeError`, as Python code expects.
"""

from __future__ import annotations


class ShaleError(Exception):
    """Base class of every ShaleDB error."""


class InvalidArgument(ShaleError, ValueError):
    """An argument has the right type but a value ShaleDB cannot accept (too large, negative
    TTL, unknown option, ...). Nothing was written."""


class CorruptionError(ShaleError):
    """Stored data failed a checksum or a structural check. ShaleDB never returns data it
    cannot verify; restore from a backup or open with a lenient recovery mode."""


class IncompatibleFormatError(ShaleError):
    """The database was written by a newer, unknown on-disk format version."""


class EncryptionError(ShaleError):
    """The encryption key does not fit the database: an encrypted database opened without a
    key or with another one, a plain database opened with a key, or a key file that cannot
    be used (wrong length, readable by others). Nothing was read or written; the message
    says which key the database needs (by its key id, never the key)."""


class LockedError(ShaleError):
    """The database directory is already open (in this or another process)."""


class ClosedError(ShaleError):
    """The database, snapshot, iterator or transaction was used after it was closed."""


class ReadOnlyError(ShaleError):
    """The database refuses writes: it was opened read-only, or an earlier write error
    (disk full, I/O error) left the write path in an unknown state. Reads still work; fix the
    cause and reopen the database to write again."""


class StorageError(ShaleError):
    """The operating system reported an I/O error (EIO, ENOSPC, ...) while ShaleDB read or
    wrote a file. The original ``OSError`` is chained as ``__cause__``."""

    def __init__(self, message: str, errno: int | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        #: The failed operation ("read", "write", "fsync", "open", ...), when known.
        self.op = op


class DescriptorsExhaustedError(StorageError):
    """The process (EMFILE) or the system (ENFILE) had no file descriptor left to open or
    map a new file (a WAL segment, a table, a manifest). Unlike other storage errors this
    one is *retryable*: it is raised before anything was written, the database stays
    writable, and the same write succeeds once descriptors are free again (fewer client
    connections, a higher ``ulimit -n``)."""


class TransactionConflict(ShaleError):
    """An optimistic transaction could not commit because a key it read or wrote was changed
    by another writer after the transaction started. Nothing of the transaction was written;
    retry it (see :meth:`shaledb.DB.run_transaction`)."""


__all__ = [
    "ClosedError",
    "CorruptionError",
    "DescriptorsExhaustedError",
    "EncryptionError",
    "IncompatibleFormatError",
    "InvalidArgument",
    "LockedError",
    "ReadOnlyError",
    "ShaleError",
    "StorageError",
    "TransactionConflict",
]
