"""Connection and server commands: PING ECHO QUIT RESET HELLO AUTH SELECT CLIENT COMMAND
TIME."""

from __future__ import annotations

import time
from typing import Any

import shaledb

from ..errors import AuthRequiredError, CommandError
from ..keyspace import DATABASES
from ..protocol import OK, PONG, Status
from . import SYNTAX, CommandFamily, Context, parse_int, wrong_arity

FAMILY = CommandFamily()
command = FAMILY.command

_CONN = "noscript loading stale fast"


@command("ping", -1, "fast sentinel", "fast connection")
def ping(ctx: Context, argv: list[bytes]) -> Any:
    """PING [message]"""
    if len(argv) > 2:
        raise wrong_arity("ping")
    return PONG if len(argv) == 1 else argv[1]


@command("echo", 2, "fast", "fast connection")
def echo(ctx: Context, argv: list[bytes]) -> Any:
    """ECHO message"""
    return argv[1]


@command("quit", -1, "allow-busy no-auth fast", "fast connection")
def quit_(ctx: Context, argv: list[bytes]) -> Any:
    """QUIT: answer OK, then close the connection"""
    ctx.client.close_after_reply = True
    return OK


@command("reset", 1, _CONN + " no-auth allow-busy", "fast connection")
def reset(ctx: Context, argv: list[bytes]) -> Any:
    """RESET: leave MULTI, forget WATCHes, select db 0, RESP2, drop the name, become the
    default user (logged out when it needs a password)"""
    client = ctx.client
    client.multi = None
    ctx.server.watches.unwatch_all(client)
    client.db = 0
    client.resp = 2
    client.name = b""
    client.user = ctx.server.acl.default
    client.authenticated = ctx.server.acl.default_open()
    return Status(b"RESET")


def _check_name(name: bytes) -> bytes:
    if any(c < 33 or c > 126 for c in name):
        raise CommandError(
            "Client names cannot contain spaces, newlines or special characters.")
    return name


def _authenticate(ctx: Context, user: bytes, password: bytes) -> None:
    ctx.server.authenticate(ctx.client, user, password)


@command("hello", -1, _CONN + " no-auth sentinel allow-busy", "fast connection")
def hello(ctx: Context, argv: list[bytes]) -> Any:
    """HELLO [protover [AUTH username password] [SETNAME clientname]]"""
    client = ctx.client
    version = client.resp
    if len(argv) >= 2:
        version = parse_int(argv[1], "Protocol version is not an integer or out of range")
        if version not in (2, 3):
            raise CommandError("unsupported protocol version", prefix="NOPROTO")
    auth: tuple[bytes, bytes] | None = None
    name: bytes | None = None
    i = 2
    while i < len(argv):
        opt = argv[i].upper()
        if opt == b"AUTH" and i + 2 < len(argv):
            auth = (argv[i + 1], argv[i + 2])
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(argv):
            name = _check_name(argv[i + 1])
            i += 2
        else:
            raise CommandError(
                f"Syntax error in HELLO option '{argv[i].decode('utf-8', 'replace')}'")
    if auth is not None:
        _authenticate(ctx, *auth)
    elif not client.authenticated:
        raise AuthRequiredError(
            "HELLO must be called with the client already authenticated, otherwise the "
            "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client "
            "and select the RESP protocol version at the same time")
    if name is not None:
        client.name = name
    client.resp = version
    return {
        "server": "shaledb",
        "version": shaledb.__version__,
        "proto": version,
        "id": client.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }


@command("auth", -2, _CONN + " no-auth allow-busy", "fast connection")
def auth(ctx: Context, argv: list[bytes]) -> Any:
    """AUTH [username] password"""
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    if len(argv) == 2 and ctx.server.acl.default.nopass:
        raise CommandError(
            "AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?")
    user, password = (b"default", argv[1]) if len(argv) == 2 else (argv[1], argv[2])
    _authenticate(ctx, user, password)
    return OK


@command("select", 2, "loading stale fast", "fast connection")
def select(ctx: Context, argv: list[bytes]) -> Any:
    """SELECT index (0-15)"""
    index = parse_int(argv[1])
    if not 0 <= index < DATABASES:
        raise CommandError("DB index is out of range")
    ctx.client.db = index
    return OK


@command("time", 1, "loading stale fast", "fast")
def time_(ctx: Context, argv: list[bytes]) -> Any:
    """TIME -> [unix seconds, microseconds]"""
    now = time.time_ns() // 1000
    return [b"%d" % (now // 1_000_000), b"%d" % (now % 1_000_000)]


@command("client", -2, "noscript loading stale", "slow connection")
def client_(ctx: Context, argv: list[bytes]) -> Any:
    """CLIENT ID | GETNAME | SETNAME name | SETINFO LIB-NAME|LIB-VER value"""
    sub = argv[1].lower()
    client = ctx.client
    n = len(argv)
    if sub == b"id" and n == 2:
        return client.id
    if sub == b"getname" and n == 2:
        return client.name or None
    if sub == b"setname" and n == 3:
        client.name = _check_name(argv[2])
        return OK
    if sub == b"setinfo" and n == 4:
        attr = argv[2].lower()
        if attr not in (b"lib-name", b"lib-ver"):
            raise CommandError(
                f"Unrecognized option '{argv[2].decode('utf-8', 'replace')}'")
        value = _check_name(argv[3]) if argv[3] else b""
        client.lib[attr.decode()] = value
        return OK
    if sub in (b"id", b"getname", b"setname", b"setinfo"):
        raise wrong_arity("client|" + sub.decode())
    raise CommandError(f"unknown subcommand '{argv[1].decode('utf-8', 'replace')}'. "
                       "Try CLIENT HELP.")


@command("command", -1, "loading stale", "slow connection")
def command_(ctx: Context, argv: list[bytes]) -> Any:
    """COMMAND [COUNT | LIST | INFO name... | DOCS [name...]]"""
    table = ctx.server.dispatcher.table
    if len(argv) == 1:
        return [c.info() for c in table.values()]
    sub = argv[1].lower()
    if sub == b"count" and len(argv) == 2:
        return len(table)
    if sub == b"list" and len(argv) == 2:
        return [name for name in table]
    if sub == b"info":
        names = argv[2:] or list(table)
        out: list[Any] = []
        for name in names:
            cmd = table.get(name.lower())
            out.append(None if cmd is None else cmd.info())
        return out
    if sub == b"docs":
        names = [n.lower() for n in argv[2:]] or list(table)
        return {name: {} for name in names if name in table}
    raise CommandError(f"unknown subcommand or wrong number of arguments for "
                       f"'{argv[1].decode('utf-8', 'replace')}'. Try COMMAND HELP.")
