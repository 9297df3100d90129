"""The slow log names a blocked command as sent, when it is served (as Redis 7)."""

from __future__ import annotations

import time

from ._server_support import RawClient


def _wait_blocked(c: RawClient, n: int) -> None:
    deadline = time.monotonic() + 10
    while b"blocked_clients:%d" % n not in c("INFO", "clients"):
        assert time.monotonic() < deadline, "the client never blocked"
        time.sleep(0.01)


def test_served_blpop_is_logged_as_blpop(server) -> None:
    c, blocked = RawClient(server.port), RawClient(server.port)
    try:
        assert c("CONFIG", "SET", "slowlog-log-slower-than", "0") == b"OK"
        assert c("SLOWLOG", "RESET") == b"OK"
        blocked.send("BLPOP", "l", "0")
        _wait_blocked(c, 1)
        # Not logged when it blocks.
        assert b"BLPOP" not in [e[3][0] for e in c("SLOWLOG", "GET", "-1")]
        assert c("MULTI") == b"OK"
        assert c("LPUSH", "l", "foo") == b"QUEUED"
        assert c("SLOWLOG", "RESET") == b"QUEUED"
        assert c("EXEC") == [1, b"OK"]
        assert blocked.read() == [b"l", b"foo"]
        newest = c("SLOWLOG", "GET", "1")[0]
        assert newest[3] == [b"BLPOP", b"l", b"0"]
    finally:
        c.close()
        blocked.close()
