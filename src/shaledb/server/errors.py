"""Errors the server turns into RESP error replies.

Redis clients map a reply to an exception class by the first word of the error message (the
*prefix*: ``ERR``, ``NOAUTH``, ``WRONGPASS``, ...), so every error carries the prefix Redis
would use for the same situation. :class:`ProtocolError` additionally closes the connection,
as Redis does after a malformed request.
"""

from __future__ import annotations

from ..errors import ShaleError


class CommandError(ShaleError):
    """A command failed; the client gets ``-PREFIX message``. Nothing the command meant to
    write was written."""

    prefix = "ERR"

    def __init__(self, message: str, prefix: str | None = None) -> None:
        super().__init__(message)
        if prefix is not None:
            self.prefix = prefix

    def reply(self) -> bytes:
        """The RESP error line; CR and LF in the message become spaces, since an error line
        cannot contain them."""
        text = f"{self.prefix} {self}".replace("\r", " ").replace("\n", " ")
        return b"-" + text.encode("utf-8", "replace") + b"\r\n"


class AuthRequiredError(CommandError):
    """The connection must authenticate (AUTH or HELLO ... AUTH) before this command."""

    prefix = "NOAUTH"


class WrongPassError(CommandError):
    """AUTH or HELLO AUTH named an unknown user or a wrong password."""

    prefix = "WRONGPASS"

    def __init__(self) -> None:
        super().__init__("invalid username-password pair or user is disabled.")


class NoPermissionError(CommandError):
    """The client's ACL user may not run this command, or not on these keys."""

    prefix = "NOPERM"


class ProtocolError(CommandError):
    """The client sent bytes that are not a valid request, or broke a size limit of the
    request reader. The server replies with this error and closes the connection."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Protocol error: {message}")


#: Redis' reply to a write sent to a replica (prefix READONLY).
READONLY_MESSAGE = "You can't write against a read only replica."
#: Redis' reply when min-replicas is not met (prefix NOREPLICAS); ShaleDB's sync-replicas.
NOREPLICAS_MESSAGE = "Not enough good replicas to write."
#: A write refused by the failover fence (automatic failover: not the elected primary, or
#: its lease not renewed in time).
FENCED_MESSAGE = ("You can't write against a read only replica. (this node is not the "
                  "primary of its failover group, or its lease was not renewed in time: "
                  "ask SENTINEL get-master-addr-by-name for the primary)")


def wrong_arity(name: str) -> CommandError:
    """The error Redis gives for a wrong number of arguments."""
    return CommandError(f"wrong number of arguments for '{name}' command")


__all__ = [
    "NOREPLICAS_MESSAGE",
    "READONLY_MESSAGE",
    "AuthRequiredError",
    "CommandError",
    "NoPermissionError",
    "ProtocolError",
    "WrongPassError",
    "wrong_arity",
]
