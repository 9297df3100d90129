"""The slow log: the last ``slowlog-max-len`` commands that ran for at least
``slowlog-log-slower-than`` microseconds, as Redis keeps it (SLOWLOG GET / LEN / RESET).

Both settings are read from the server's config at each use, so changing them at run time
(CONFIG SET) applies to the next command. An entry keeps at most SLOWLOG_MAX_ARGC arguments
and at most SLOWLOG_MAX_STRING bytes of each, with Redis' markers for what was cut, so a
huge request cannot make the log large; the client name is cut the same way (CLIENT SETNAME
takes up to proto-max-bulk-len bytes, and a client may rename itself before every slow
command). Secrets are replaced by ``(redacted)`` before an
entry is made, as Redis does: the passwords of AUTH, HELLO ... AUTH and MIGRATE ... AUTH, the
rules of ACL SETUSER, the values of CONFIG SET requirepass / masterauth.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Final

#: Arguments kept per entry; the last one kept says how many more there were.
SLOWLOG_MAX_ARGC: Final = 32
#: Bytes kept per argument; the rest is replaced by "... (N more bytes)".
SLOWLOG_MAX_STRING: Final = 128
REDACTED: Final = b"(redacted)"
#: CONFIG SET parameters whose values are secrets.
_SENSITIVE_CONFIG: Final = frozenset((b"requirepass", b"masterauth", b"tls-key-file-pass",
                                      b"tls-client-key-file-pass"))

SLOWLOG_HELP: Final = (
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count>]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Print this help.",
)


def redact(argv: list[bytes]) -> list[bytes]:
    """``argv`` with its secret arguments replaced by ``(redacted)`` (a copy when any is)."""
    name = argv[0].lower()
    secret: list[int] = []
    n = len(argv)
    if name == b"auth":
        secret = list(range(1, n))
    elif name == b"hello":
        secret = _hello_secrets(argv)
    elif name == b"acl" and n > 2 and argv[1].lower() == b"setuser":
        secret = list(range(2, n))
    elif name == b"config" and n > 3 and argv[1].lower() == b"set":
        secret = [i + 1 for i in range(2, n - 1, 2) if argv[i].lower() in _SENSITIVE_CONFIG]
    elif name == b"migrate":
        for i in range(6, n):
            opt = argv[i].lower()
            if opt == b"auth":
                secret = [i + 1]
                break
            if opt == b"auth2":
                secret = [i + 1, i + 2]
                break
    if not secret:
        return argv
    out = list(argv)
    for i in secret:
        if i < n:
            out[i] = REDACTED
    return out


def _hello_secrets(argv: list[bytes]) -> list[int]:
    """The positions of every ``AUTH user password`` of a HELLO, found by walking its
    options as the handler does: a client named ``AUTH`` (``SETNAME AUTH``) is not an
    option, and a repeated AUTH option (the last one is used) is a secret too."""
    secret: list[int] = []
    i, n = 2, len(argv)
    while i < n:
        opt = argv[i].lower()
        if opt == b"auth":
            secret += [i + 1, i + 2]  # even when cut short: whatever follows is secret
            i += 3
        elif opt == b"setname":
            i += 2
        else:
            i += 1  # a syntax error (HELLO ran nothing): still hide a later AUTH's password
    return secret


def _cut(arg: bytes) -> bytes:
    if len(arg) <= SLOWLOG_MAX_STRING:
        return arg
    return arg[:SLOWLOG_MAX_STRING] + b"... (%d more bytes)" % (len(arg) - SLOWLOG_MAX_STRING)


def truncate(argv: list[bytes]) -> list[bytes]:
    """Redis' shortened copy of ``argv`` for a log entry."""
    argc = len(argv)
    kept = min(argc, SLOWLOG_MAX_ARGC)
    out: list[bytes] = []
    for j in range(kept):
        if kept != argc and j == kept - 1:
            out.append(b"... (%d more arguments)" % (argc - kept + 1))
        else:
            out.append(_cut(argv[j]))
    return out


class SlowLog:
    """The entries, newest first, and the id of the next one."""

    def __init__(self) -> None:
        self.entries: collections.deque[list[Any]] = collections.deque()
        self.next_id = 0

    def add(self, argv: list[bytes], micros: int, addr: str, name: bytes,
            max_len: int) -> None:
        """Log one command that ran for ``micros`` microseconds, keeping at most ``max_len``
        entries."""
        entry = [self.next_id, int(time.time()), micros, truncate(redact(argv)),
                 addr.encode(), _cut(name)]
        self.next_id += 1
        self.entries.appendleft(entry)
        while len(self.entries) > max_len:
            self.entries.pop()

    def get(self, count: int) -> list[list[Any]]:
        """The newest ``count`` entries (-1: all)."""
        if count < 0 or count >= len(self.entries):
            return list(self.entries)
        return [self.entries[i] for i in range(count)]

    def reset(self) -> None:
        """Drop every entry (ids keep increasing, as in Redis)."""
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


__all__ = ["REDACTED", "SLOWLOG_HELP", "SLOWLOG_MAX_ARGC", "SLOWLOG_MAX_STRING", "SlowLog",
           "redact", "truncate"]
