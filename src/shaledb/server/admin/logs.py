"""Server logging: human-readable text lines or one JSON object per line.

``log_format = "json"`` writes each record as ``{"ts": ..., "level": ..., "logger": ...,
"msg": ...}`` plus any extra fields the call passed (``extra={"client": "ip:port"}``) and the
formatted traceback of an exception, so log shippers need no parsing rules. ``ts`` is UTC in
RFC 3339 form with milliseconds.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TextIO

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def printable(text: str) -> str:
    """``text`` safe for a log line: characters that are not printable (controls, escape
    sequences, newlines, bidirectional overrides) and backslashes become ``\\xNN`` /
    ``\\uNNNN`` escapes. Anything that came from a client goes through it: a raw ESC would
    reach the operator's terminal, a newline would forge a log line."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        ch if ch.isprintable() and ch != "\\" else
        (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}") for ch in text)


class LogBudget:
    """At most ``burst`` lines of each kind per ``interval`` seconds. Lines a client can
    cause once per connection or request (refusals, protocol errors, TLS failures, output
    limit closures) go through it: thousands of connections a second must not turn into
    thousands of formatted lines a second, a cost paid on the event loop and a flood of
    the operator's logs. The first line after a gap says how many were left out."""

    def __init__(self, burst: int = 10, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self.clock = clock
        #: kind -> [window start, lines logged in it, lines left out since the last logged]
        self._kinds: dict[str, list[float]] = {}
        #: Lines left out in all, for INFO / tests.
        self.suppressed = 0

    def log(self, logger: logging.Logger, level: int, kind: str, msg: str, *args: Any,
            **kwargs: Any) -> None:
        """``logger.log(level, msg, *args)`` unless ``kind`` used up its budget."""
        now = self.clock()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.interval:
            skipped = int(state[2]) if state is not None else 0
            state = self._kinds[kind] = [now, 0, 0]
            if skipped:
                msg += f" ({skipped} similar lines left out in the last seconds)"
        if state[1] >= self.burst:
            state[2] += 1
            self.suppressed += 1
            return
        state[1] += 1
        logger.log(level, msg, *args, **kwargs)


#: The server's budget for client-caused log lines.
CLIENT_LOG: Final = LogBudget()


def configure_logging(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) as ``log_format`` ("text" or
    "json") from ``level`` ("debug", "info", "warning", "error") up, replacing earlier
    handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


__all__ = ["CLIENT_LOG", "JsonFormatter", "LogBudget", "TEXT_FORMAT", "configure_logging",
           "printable"]
