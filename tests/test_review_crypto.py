"""Adversarial review of encryption at rest (issue 11): each test is one way found to break
it, written to fail before its fix (or marked xfail with the reason when it is left open).

The scenarios and their outcomes are summed up in docs/security.md; the files are taken apart
with tests/format_reader.py (written from docs/format.md alone).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import format_reader as fr
import shaledb
from shaledb.engine import crypto
from shaledb.errors import CorruptionError, EncryptionError
from test_encryption import KEY, _encrypted_db, _flip_log_record, _keys_of, _write_key_file


def _lost_key_ids(path: Path) -> set[int]:
    """Data key ids named by the 48-byte log headers the files under lost/ start with."""
    ids = set()
    for f in (path / "lost").iterdir():
        head = f.read_bytes()[:48]
        assert head[:8] == b"SHALElog" and int.from_bytes(head[8:12], "little") == 3, f.name
        ids.add(int.from_bytes(head[36:40], "little"))
    return ids


def test_reencrypt_keeps_the_data_keys_that_lost_files_need(tmp_path) -> None:
    """Scenario: a recovery cut a WAL record that fails authentication and kept the bytes
    under lost/ (sealed under data key 1, decryptable with the key: docs/security.md). Then
    `shaledb reencrypt` rewrites every live file under a fresh data key and drops the data
    keys "no file uses" from KEYRING. It looked only at the top directory, so it dropped data
    key 1 and the lost/ bytes could never be decrypted again, by anyone."""
    path = tmp_path / "db"
    _encrypted_db(path)
    (log,) = path.glob("*.log")
    _flip_log_record(log, 20, True, fr.WAL_FILE)
    with shaledb.open(path, encryption_key=KEY, wal_recovery="point_in_time") as db:
        assert db.stats()["wal_recovery"]["cut"]
    needed = _lost_key_ids(path)
    assert needed == {1}
    change = shaledb.reencrypt(str(path), key=KEY)
    assert change.active_data_key == 2
    held = set(_keys_of(path).data_keys)
    assert needed <= held, f"KEYRING holds data keys {sorted(held)}, lost/ needs {needed}"
    assert set(change.data_keys) == held


@pytest.mark.timeout(30)
def test_a_key_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path) -> None:
    """Scenario: the key file path names a FIFO (a mistake, or a hostile swap of the path:
    `mkfifo key; chmod 600 key`). Opening it for reading blocked until a writer came, so
    `shaledb.open` and `shaledb serve` hung forever before any check, instead of refusing
    the non-regular file with EncryptionError."""
    key = tmp_path / "key"
    os.mkfifo(key, 0o600)
    code = ("import shaledb, sys\n"
            "try:\n"
            f"    shaledb.open({str(tmp_path / 'db')!r}, encryption_key_file={str(key)!r})\n"
            "except shaledb.EncryptionError as exc:\n"
            "    print('refused:', exc)\n"
            "    sys.exit(0)\n"
            "sys.exit(3)\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("opening a FIFO as the key file hung")
    assert out.returncode == 0, out.stderr
    assert "not a regular file" in out.stdout
    assert not (tmp_path / "db").exists()
