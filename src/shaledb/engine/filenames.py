"""Names of the files in a database directory (LevelDB's conventions)."""

from __future__ import annotations

import re

from .vfs import join

CURRENT = "CURRENT"
LOCK = "LOCK"
OPTIONS = "OPTIONS"
#: The wrapped data keys of an encrypted database (docs/format.md, "KEYRING").
KEYRING = "KEYRING"
#: Subdirectory where recovery keeps the bytes it cut from a damaged WAL or manifest tail.
LOST_DIR = "lost"

# ASCII digits only (``\d`` would take any Unicode digit), and the canonical spelling: what
# f"{n:06d}" writes. Anything else is not a database file and is never touched.
_NUMBERED = re.compile(r"^([0-9]{6,})\.(log|sst)$")
_MANIFEST = re.compile(r"^MANIFEST-([0-9]{6,})$")


def log_file(number: int) -> str:
    """File name of WAL segment ``number``."""
    return f"{number:06d}.log"


def log_name(dirpath: str, number: int) -> str:
    """Path of WAL segment ``number``."""
    return join(dirpath, log_file(number))


def prepared_log_name(dirpath: str, number: int) -> str:
    """Path of WAL segment ``number`` while it is prepared ahead of its memtable switch (the
    switch renames it to :func:`log_name`)."""
    return join(dirpath, log_file(number) + ".new")


_PREPARED = re.compile(r"^([0-9]{6,})\.log\.new$")


def parse_prepared(name: str) -> int | None:
    """The number of a prepared WAL segment's file name, or None."""
    m = _PREPARED.match(name)
    if m and f"{int(m.group(1)):06d}" == m.group(1):
        return int(m.group(1))
    return None


def table_file(number: int) -> str:
    """File name of table ``number``."""
    return f"{number:06d}.sst"


def table_name(dirpath: str, number: int) -> str:
    """Path of table ``number``."""
    return join(dirpath, table_file(number))


def manifest_name(dirpath: str, number: int) -> str:
    """Path of manifest ``number``."""
    return join(dirpath, f"MANIFEST-{number:06d}")


def parse(name: str) -> tuple[str, int] | None:
    """Classify a file name: ("log"|"sst"|"manifest", number), or None for anything else."""
    m = _NUMBERED.match(name)
    if m and f"{int(m.group(1)):06d}" == m.group(1):
        return m.group(2), int(m.group(1))
    m = _MANIFEST.match(name)
    if m and f"{int(m.group(1)):06d}" == m.group(1):
        return "manifest", int(m.group(1))
    return None
