"""Adversarial review of encryption at rest (issue 11), over a socket: a real encrypted
server, redis-py clients, only 127.0.0.1. Each test is one way found to leak or break what
docs/security.md promises, written to fail before its fix."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from shaledb.server import ServerConfig

from ._server_support import ServerThread

pytestmark = pytest.mark.timeout(120)

KEY = bytes(range(200, 232))


def _key_file(path: Path, key: bytes = KEY) -> str:
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return str(path)


def _leaks(text: str, needle: bytes) -> bool:
    """Whether ``text`` holds ``needle`` as text or as hexadecimal (how verify prints a key
    that is not printable UTF-8, such as the server's encoded keys)."""
    return (needle.decode() in text or needle.hex() in text.lower())


def test_the_scrub_logs_no_user_key_of_an_encrypted_database(tmp_path, caplog) -> None:
    """Scenario: an encrypted server's background scrub finds a damaged table block and logs
    one line per problem. The line (and its structured ``keys`` field) named the key range
    of the damaged block, so user keys went in plaintext (or as hex) to the server's log,
    which usually lands on a disk of its own, unencrypted: what encryption at rest is for.
    For an encrypted database the log names the file, offset and kind only (SCRUB STATUS,
    for an admin who can read the keys anyway, keeps the full lines)."""
    caplog.set_level(logging.INFO, logger="shaledb.server.scrub")
    data = tmp_path / "db"
    st = ServerThread(ServerConfig(port=0, dir=str(data), metrics_port=None,
                                   encryption_key_file=_key_file(tmp_path / "key")))
    try:
        r = st.client()
        pipe = r.pipeline(transaction=False)
        for i in range(3000):
            pipe.set(b"confidential-user:%06d" % i, os.urandom(200))
        pipe.execute()
        assert r.save()
        assert st.server is not None and st.server.db.encrypted
        (sst,) = sorted(data.glob("*.sst"))
        with open(sst, "r+b") as fh:  # a byte inside the first data block (after the header)
            fh.seek(300)
            b = fh.read(1)
            fh.seek(300)
            fh.write(bytes([b[0] ^ 0xFF]))
        assert r.execute_command("SCRUB", "NOW") == b"Scrub started"
        deadline = time.monotonic() + 30
        while r.info("scrub")["scrub_passes"] < 1 or r.info("scrub")["scrub_in_progress"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.info("scrub")["scrub_last_status"] == "damaged"
        recs = [x for x in caplog.records if getattr(x, "event", None) == "scrub_problem"]
        assert recs, "the damage was not logged"
        for rec in recs:
            text = rec.getMessage() + " " + repr(rec.__dict__)
            assert sst.name in rec.getMessage()
            assert not _leaks(text, b"confidential-user"), rec.getMessage()
    finally:
        st.stop()


def _hits(data: Path, needles: tuple[bytes, ...]) -> list[str]:
    """The files under ``data`` that hold any of ``needles``."""
    return [str(p) for p in data.rglob("*") if p.is_file()
            and any(n in p.read_bytes() for n in needles)]


def test_chunked_values_of_an_encrypted_server_leave_no_plaintext(tmp_path) -> None:
    """Checked sound: values over 64 KiB are stored by the server as chunks (separate engine
    entries, some written by APPEND and SETRANGE in place); none of their bytes, nor the
    key's, reach any file in plaintext, in the WAL (before SAVE) or in the tables (after),
    and a plain control server does write them (so the search can fail)."""
    for encrypted in (False, True):
        data = tmp_path / ("enc" if encrypted else "plain")
        st = ServerThread(ServerConfig(
            port=0, dir=str(data), metrics_port=None,
            encryption_key_file=_key_file(tmp_path / "key") if encrypted else None))
        try:
            r = st.client()
            marker = b"chunked-secret-"
            big = b"".join(marker + os.urandom(16).hex().encode() for _ in range(9000))
            assert len(big) > 4 * 65536
            r.set(b"big-secret-key", big)
            r.append(b"big-secret-key", marker + b"appended")
            r.setrange(b"big-secret-key", 200_000, marker + b"overwritten")
            expected = bytearray(big + marker + b"appended")
            expected[200_000:200_000 + len(marker) + 11] = marker + b"overwritten"
            assert r.get(b"big-secret-key") == bytes(expected)
            needles = (marker, b"big-secret-key")

            in_wal = _hits(data, needles)
            assert r.save()
            after_save = _hits(data, needles)
            assert r.get(b"big-secret-key") == bytes(expected)
        finally:
            st.stop()
        if encrypted:
            assert in_wal == [] and after_save == [] and _hits(data, needles) == []
        else:
            assert in_wal and after_save  # the control finds them
