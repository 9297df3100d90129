"""The ``OPTIONS`` file: the database format version, who created the database, and the
options it was created with (JSON, with a checksum since database format 3).

Database format versions (docs/format.md): 1 and 2 differ in their tables (a table carries its
own version in its footer); 3 adds the log file header, salted records with a sync watermark
and seals (WAL and MANIFEST), the checksum in CURRENT and in OPTIONS, and ``lost/``. A
ShaleDB refuses a database whose version is newer than :data:`DB_FORMAT_VERSION`.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptionError, IncompatibleFormatError
from .logfile import LOG_VERSION, crc32c
from .sstable import FORMAT_VERSION as TABLE_FORMAT_VERSION

DB_FORMAT_VERSION = 3


def _canonical(info: dict[str, Any]) -> bytes:
    return json.dumps(info, sort_keys=True, separators=(",", ":")).encode()


def encode_options(created_by: str, options: dict[str, Any]) -> bytes:
    """The content of a new OPTIONS file."""
    info: dict[str, Any] = {"format_version": DB_FORMAT_VERSION,
                            "table_format_version": TABLE_FORMAT_VERSION,
                            "log_format_version": LOG_VERSION,
                            "created_by": created_by, "options": options}
    info["crc32c"] = f"{crc32c(_canonical(info)):08x}"
    return (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()


def decode_options(raw: bytes, dirpath: str) -> dict[str, Any]:
    """Parse and check OPTIONS; CorruptionError when damaged, IncompatibleFormatError when
    written by a newer format than this ShaleDB knows."""
    try:
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise TypeError("not a JSON object")
        version = int(info["format_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(f"OPTIONS file of {dirpath!r} is damaged ({exc}); restore it "
                              f"from a backup, or salvage the data with `shaledb repair "
                              f"{dirpath} DEST`") from exc
    if version > DB_FORMAT_VERSION:
        raise IncompatibleFormatError(
            f"database {dirpath!r} was written with format version {version}; this ShaleDB "
            f"supports up to {DB_FORMAT_VERSION}: upgrade ShaleDB")
    if version >= 3:
        stored = info.pop("crc32c", None)
        if stored != f"{crc32c(_canonical(info)):08x}":
            raise CorruptionError(
                f"OPTIONS file of {dirpath!r} is damaged (its checksum does not match); "
                f"restore it from a backup, or salvage the data with `shaledb repair "
                f"{dirpath} DEST`")
    return info


__all__ = ["DB_FORMAT_VERSION", "decode_options", "encode_options"]
