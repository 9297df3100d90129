"""ShaleDB: a durable, embedded LSM-tree key-value database.

>>> import shaledb
>>> with shaledb.open("/tmp/example-db") as db:   # doctest: +SKIP
...     db.put(b"k", b"v")
...     db.get(b"k")
b'v'
"""

from __future__ import annotations

# First: it decides whether the mypyc-compiled modules or their pure-Python source load.
from . import build  # noqa: F401
from .backup import BackupInfo, RestoreInfo, restore
from .db import DB, open  # noqa: A004 - shaledb.open is the documented entry point
from .engine.batch import WriteBatch
from .engine.rekey import KeyChange, decrypt, encrypt, reencrypt, rotate_key
from .engine.repair import RepairReport, repair
from .engine.verify import VerifyReport, verify
from .errors import (
    ClosedError,
    CorruptionError,
    DescriptorsExhaustedError,
    EncryptionError,
    IncompatibleFormatError,
    InvalidArgument,
    LockedError,
    ReadOnlyError,
    ShaleError,
    StorageError,
    TransactionConflict,
)
from .options import MAX_KEY_SIZE, MAX_VALUE_SIZE, Options
from .snapshot import Snapshot
from .transaction import Transaction
from .version import __version__

__all__ = [
    "DB",
    "BackupInfo",
    "MAX_KEY_SIZE",
    "MAX_VALUE_SIZE",
    "ClosedError",
    "CorruptionError",
    "DescriptorsExhaustedError",
    "EncryptionError",
    "IncompatibleFormatError",
    "InvalidArgument",
    "KeyChange",
    "LockedError",
    "Options",
    "ReadOnlyError",
    "RepairReport",
    "RestoreInfo",
    "ShaleError",
    "Snapshot",
    "StorageError",
    "Transaction",
    "TransactionConflict",
    "VerifyReport",
    "WriteBatch",
    "__version__",
    "decrypt",
    "encrypt",
    "open",
    "reencrypt",
    "repair",
    "restore",
    "rotate_key",
    "verify",
]
