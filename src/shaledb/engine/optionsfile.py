"""The ``OPTIONS`` file: the database format version, who last wrote the file, and the options
the database was opened with then (JSON), followed by a checksum line since database format 3.

Database format versions (docs/format.md): 1 and 2 differ in their tables (a table carries its
own version in its footer); 3 adds the log file header, salted records with a sync watermark,
sync marks and seals (WAL and MANIFEST), the checksums of CURRENT and OPTIONS, and ``lost/``;
4 seals a WAL segment after the next one started (``wal_async_seal_from``: from that file number
on, a segment's predecessor may be unsealed after a crash; a sync mark in a segment says that
its predecessors were sealed); 5 is format 4 encrypted (``KEYRING``, log format 3, table format
3, an ``encryption`` object here); 6 and 7 are formats 4 and 5 with a commit time in every
WAL record written (for point-in-time restore; engine/batch.py). A plain database is written
in format 6 (:data:`DB_FORMAT_VERSION`), an encrypted one in format 7
(:data:`ENCRYPTED_DB_FORMAT_VERSION`): a database is encrypted exactly when its OPTIONS say
format 5 or 7, and a ShaleDB that knows only an older format refuses it rather than misread
it. Opening a format-4 database for writing makes it format 6, a format-5 one format 7. A
ShaleDB refuses a database whose version is newer than :data:`MAX_DB_FORMAT_VERSION`.

Layout (formats 3 to 5): the JSON object as ``json.dumps(info, indent=2, sort_keys=True)``, a
newline, then the line ``crc32c XXXXXXXX`` (the CRC32C of every byte before that line, as 8
lowercase hex digits) and a newline. The checksum covers the bytes as they are, so a reader
in any language checks it before parsing.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptionError, IncompatibleFormatError
from .crypto import CIPHER
from .filenames import KEYRING
from .logfile import ENCRYPTED_LOG_VERSION, LOG_VERSION, crc32c
from .sstable.format import ENCRYPTED_FORMAT_VERSION as ENCRYPTED_TABLE_FORMAT_VERSION
from .sstable.format import FORMAT_VERSION as TABLE_FORMAT_VERSION

#: The format a plain database is written in.
DB_FORMAT_VERSION = 6
#: The format an encrypted database is written in.
ENCRYPTED_DB_FORMAT_VERSION = 7
#: Formats of encrypted databases (5: without WAL commit times).
ENCRYPTED_DB_FORMATS = (5, 7)
#: The newest format this ShaleDB reads.
MAX_DB_FORMAT_VERSION = ENCRYPTED_DB_FORMAT_VERSION

_CRC_PREFIX = b"crc32c "


def encode_options(created_by: str, options: dict[str, Any], log_format_2_from: int,
                   wal_async_seal_from: int, encrypted: bool = False) -> bytes:
    """The content of a new OPTIONS file. ``log_format_2_from``: the first file number that
    may be a log of format 2 (0 for a database created in format 3 or later; the next file
    number when an older database is upgraded): every WAL segment and MANIFEST numbered from
    it has a format-2 header, so one that does not start with a valid header is damaged.
    ``wal_async_seal_from``: the first WAL segment number written by format 4 (0, or the next
    file number at an upgrade), whose predecessor may have been left unsealed by a crash.
    ``encrypted``: database format 7 (every log of format 3, every table of format 3)."""
    info: dict[str, Any] = {"format_version": DB_FORMAT_VERSION,
                            "table_format_version": TABLE_FORMAT_VERSION,
                            "log_format_version": LOG_VERSION,
                            "log_format_2_from": log_format_2_from,
                            "wal_async_seal_from": wal_async_seal_from,
                            "created_by": created_by, "options": options}
    if encrypted:
        info.update({"format_version": ENCRYPTED_DB_FORMAT_VERSION,
                     "table_format_version": ENCRYPTED_TABLE_FORMAT_VERSION,
                     "log_format_version": ENCRYPTED_LOG_VERSION,
                     "encryption": {"cipher": CIPHER, "keyring": KEYRING}})
    body = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    return body + b"%s%08x\n" % (_CRC_PREFIX, crc32c(body))


def _damaged(dirpath: str, why: str) -> CorruptionError:
    return CorruptionError(f"OPTIONS file of {dirpath!r} is damaged ({why}); restore it from "
                           f"a backup, or salvage the data with `shaledb repair {dirpath} DEST`")


def decode_options(raw: bytes, dirpath: str) -> dict[str, Any]:
    """Parse and check OPTIONS; CorruptionError when damaged, IncompatibleFormatError when
    written by a newer format than this ShaleDB knows."""
    body, checked = raw, False
    cut = raw.rfind(b"\n", 0, len(raw) - 1) + 1
    if raw.endswith(b"\n") and raw[cut:].startswith(_CRC_PREFIX):
        body = raw[:cut]
        if raw[cut:] != b"%s%08x\n" % (_CRC_PREFIX, crc32c(body)):
            raise _damaged(dirpath, "its checksum does not match")
        checked = True
    try:
        info = json.loads(body)
        if not isinstance(info, dict):
            raise TypeError("not a JSON object")
        version = int(info["format_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _damaged(dirpath, str(exc)) from exc
    if version > MAX_DB_FORMAT_VERSION:
        raise IncompatibleFormatError(
            f"database {dirpath!r} was written with format version {version}; this ShaleDB "
            f"supports up to {MAX_DB_FORMAT_VERSION}: upgrade ShaleDB")
    if version >= 3:
        if not checked:
            raise _damaged(dirpath, "its checksum line is missing")
        for key in ("log_format_2_from", "wal_async_seal_from")[:1 + (version >= 4)]:
            since = info.get(key)
            if isinstance(since, bool) or not isinstance(since, int) or since < 0:
                raise _damaged(dirpath, f"{key} is missing or not a file number")
        for key, known in (("table_format_version", ENCRYPTED_TABLE_FORMAT_VERSION),
                           ("log_format_version", ENCRYPTED_LOG_VERSION)):
            part = info.get(key)
            if not isinstance(part, int):
                raise _damaged(dirpath, f"{key} is missing")
            if part > known:
                raise IncompatibleFormatError(
                    f"database {dirpath!r} uses {key.replace('_', ' ')} {part}; this "
                    f"ShaleDB supports up to {known}: upgrade ShaleDB")
    if version in ENCRYPTED_DB_FORMATS:
        enc = info.get("encryption")
        if not isinstance(enc, dict) or enc.get("cipher") != CIPHER:
            raise _damaged(dirpath, f"format {version} without its encryption object")
    elif "encryption" in info:
        raise _damaged(dirpath, f"format {version} with an encryption object")
    return info


def is_encrypted(info: dict[str, Any]) -> bool:
    """Whether decoded OPTIONS describe an encrypted database (format 5 or 7)."""
    return int(info.get("format_version", 0)) in ENCRYPTED_DB_FORMATS


#: ``log_format_2_from`` of a database of format 1 or 2: none of its logs is of format 2.
NO_FORMAT_2_LOGS = 1 << 62


def log_format_2_from(info: dict[str, Any] | None) -> int | None:
    """From decoded OPTIONS: the first file number whose logs are of format 2
    (:data:`NO_FORMAT_2_LOGS` for a database of format 1 or 2; None when OPTIONS is unknown)."""
    if info is None:
        return None
    since = info.get("log_format_2_from")
    if isinstance(since, int) and not isinstance(since, bool):
        return since
    return NO_FORMAT_2_LOGS if int(info.get("format_version", 0)) < 3 else None


def wal_async_seal_from(info: dict[str, Any] | None) -> int | None:
    """From decoded OPTIONS: the first WAL segment number whose predecessor may be unsealed
    after a crash (:data:`NO_FORMAT_2_LOGS`, never, before format 4; None when unknown)."""
    if info is None:
        return None
    if int(info.get("format_version", 0)) < 4:
        return NO_FORMAT_2_LOGS
    since = info.get("wal_async_seal_from")
    return since if isinstance(since, int) and not isinstance(since, bool) else None


def expected_log_format(since: int | None, number: int, encrypted: bool = False
                        ) -> int | None:
    """The log format of file ``number``, as far as OPTIONS tells (None: unknown); in an
    encrypted database every log is of format 3."""
    if since is None:
        return None
    if number < since:
        return 1
    return ENCRYPTED_LOG_VERSION if encrypted else LOG_VERSION


__all__ = ["DB_FORMAT_VERSION", "ENCRYPTED_DB_FORMATS", "ENCRYPTED_DB_FORMAT_VERSION",
           "MAX_DB_FORMAT_VERSION",
           "NO_FORMAT_2_LOGS", "decode_options", "encode_options", "expected_log_format",
           "is_encrypted", "log_format_2_from", "wal_async_seal_from"]
