"""Connection and server commands: PING ECHO QUIT RESET HELLO AUTH SELECT CLIENT COMMAND
TIME."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, Final

from ..admin import keyspecs
from ..admin.info import REDIS_VERSION
from ..errors import AuthRequiredError, CommandError
from ..glob import PatternError, compile_glob
from ..keyspace.keyspace import DATABASES
from ..net.protocol import OK, PONG, Status, Verbatim
from . import SYNTAX, Command, CommandFamily, Context, parse_int, wrong_arity

if TYPE_CHECKING:
    from ..exec.client import ClientState
    from ..exec.context import Services

log = logging.getLogger("shaledb.server")

FAMILY = CommandFamily()
command = FAMILY.command

_CONN = "noscript loading stale fast"
#: Longest client name (CLIENT SETNAME, HELLO SETNAME) and CLIENT SETINFO value, in bytes.
#: Redis has no limit; a name lives as long as its connection and appears in every CLIENT
#: LIST line, the slow log and the ACL log, so it is kept to what names are for.
MAX_CLIENT_NAME: Final = 1024
#: Printable ASCII without space (what Redis allows in a name).
_NAME: Final = re.compile(rb"[!-~]*")


@command("ping", -1, "fast sentinel", "fast connection")
def ping(ctx: Context, argv: list[bytes]) -> Any:
    """PING [message]"""
    if len(argv) > 2:
        raise wrong_arity("ping")
    if ctx.client.resp == 2 and ctx.client.subscriptions:
        return [b"pong", argv[1] if len(argv) == 2 else b""]  # subscribed mode, as Redis
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
    ctx.services.watches.unwatch_all(client)
    ctx.services.pubsub.forget(client)  # subscriptions and MONITOR end, as in Redis
    client.reply_off, client.skip_replies = False, 0  # CLIENT REPLY ON
    client.db = 0
    client.resp = 2
    client.name = b""
    client.user = ctx.services.acl.default
    client.authenticated = ctx.services.acl.default_open()
    return Status(b"RESET")


def _check_name(name: bytes) -> bytes:
    # Length first, then one regular expression (C speed): a byte-by-byte check in Python
    # spent 2.4 s of the event loop on a 32 MiB name.
    if len(name) > MAX_CLIENT_NAME:
        raise CommandError(f"Client names are limited to {MAX_CLIENT_NAME} bytes")
    if _NAME.fullmatch(name) is None:
        raise CommandError(
            "Client names cannot contain spaces, newlines or special characters.")
    return name


def _authenticate(ctx: Context, user: bytes, password: bytes) -> None:
    ctx.services.authenticate(ctx.client, user, password)


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
    # The Redis whose protocol and commands are served, as INFO's redis_version says;
    # ShaleDB's own version is INFO's shaledb_version (clients that pick features by
    # version, like Lettuce, read HELLO's).
    return {
        "server": "redis",
        "version": REDIS_VERSION,
        "proto": version,
        "id": client.id,
        "mode": "standalone",
        "role": "replica" if ctx.services.replication.role == "slave" else "master",
        "modules": [],
    }


@command("auth", -2, _CONN + " no-auth allow-busy", "fast connection")
def auth(ctx: Context, argv: list[bytes]) -> Any:
    """AUTH [username] password"""
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    if len(argv) == 2 and ctx.services.acl.default.nopass:
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


_CLIENT_ADMIN = "admin slow dangerous connection"
_CLIENT_SUBCOMMANDS = {
    "id": "slow connection", "getname": "slow connection", "setname": "slow connection",
    "setinfo": "slow connection", "info": "slow connection", "list": _CLIENT_ADMIN,
    "kill": _CLIENT_ADMIN, "unblock": _CLIENT_ADMIN, "no-evict": _CLIENT_ADMIN,
    "no-touch": "slow connection", "help": "slow connection", "reply": "slow connection",
}

CLIENT_HELP = (
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME", "    Return the name of the current connection.",
    "ID", "    Return the ID of the current connection.",
    "INFO", "    Return information about the current client connection.",
    "KILL <ip:port>", "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are:",
    "    * ADDR (<ip:port>|<unixsocket>:0)", "      Kill connections made from the given address",
    "    * LADDR (<ip:port>|<unixsocket>:0)", "      Kill connections made to the given address",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)", "      Kill connections by type.",
    "    * USER <username>", "      Kill connections authenticated by <username>.",
    "    * ID <client-id>", "      Kill connections by client id.",
    "    * MAXAGE <maxage>", "      Kill connections older than the specified age.",
    "    * SKIPME (YES|NO)", "      Skip killing current connection (default: yes).",
    "LIST [options ...]", "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)", "      Return clients of specified type.",
    "    * ID <client-id> [<client-id> ...]", "      Return clients of specified IDs only.",
    "NO-EVICT (ON|OFF)", "    Accepted; ShaleDB evicts no clients (it has no maxmemory).",
    "NO-TOUCH (ON|OFF)", "    Accepted; ShaleDB keeps no access times (no LRU/LFU).",
    "SETINFO <option> <value>", "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.", "    * LIB-VER: the client lib version.",
    "REPLY (ON|OFF|SKIP)",
    "    Control the replies sent to the current connection.",
    "SETNAME <name>", "    Assign the name <name> to the current connection.",
    "UNBLOCK <clientid> [TIMEOUT|ERROR]",
    "    Unblock the specified blocked client.",
    "HELP", "    Print this help.",
)

_CLIENT_TYPES = (b"normal", b"master", b"replica", b"slave", b"pubsub")


def _flags(c: ClientState) -> str:
    flags = ("O" if c.monitor else "") + ("P" if c.subscriptions else "") + (
        "x" if c.multi is not None else "") + ("d" if c.dirty_cas else "") + (
        "c" if c.close_after_reply else "")
    return flags or "N"


def client_line(server: Services, c: ClientState) -> bytes:
    """One CLIENT LIST line (Redis 7's fields, in Redis' order; without the newline).
    Fields ShaleDB has no counterpart for are 0 (or -1 for redir, as in Redis)."""
    conn = server.connections.get(c.id)
    mem = conn.memory() if conn is not None else {"qbuf": 0, "argv-mem": 0, "oll": 0, "omem": 0}
    events = conn.events() if conn is not None else ""
    now = time.monotonic()
    multi_mem = c.multi_bytes if c.multi is not None else 0
    tot = mem["qbuf"] + mem["argv-mem"] + mem["omem"] + multi_mem
    fields = (
        ("id", c.id), ("addr", c.addr), ("laddr", c.laddr), ("fd", c.fd),
        ("name", c.name.decode("utf-8", "replace")), ("age", int(now - c.created)),
        ("idle", int(now - c.last_active)), ("flags", _flags(c)), ("db", c.db),
        ("sub", len(c.channels)), ("psub", len(c.patterns)),
        ("ssub", len(c.shard_channels)),
        ("multi", len(c.multi) if c.multi is not None else -1), ("qbuf", mem["qbuf"]),
        ("qbuf-free", 0), ("argv-mem", mem["argv-mem"]), ("multi-mem", multi_mem),
        ("obl", 0), ("oll", mem["oll"]), ("omem", mem["omem"]), ("tot-mem", tot),
        ("events", events), ("cmd", c.cmd),
        ("user", c.user.name.decode("utf-8", "replace")), ("redir", -1), ("resp", c.resp),
        ("lib-name", c.lib.get("lib-name", b"").decode("utf-8", "replace")),
        ("lib-ver", c.lib.get("lib-ver", b"").decode("utf-8", "replace")),
    )
    return " ".join(f"{k}={v}" for k, v in fields).encode()


def _clients(server: Services) -> list[ClientState]:
    return [conn.client for conn in server.connections.values()
            if conn.client is not None and not conn.closing]


def _client_list(ctx: Context, argv: list[bytes]) -> bytes:
    clients = _clients(ctx.services)
    i = 2
    while i < len(argv):
        opt = argv[i].lower()
        if opt == b"type" and i + 1 < len(argv):
            kind = argv[i + 1].lower()
            if kind not in _CLIENT_TYPES:
                raise CommandError(
                    f"Unknown client type '{argv[i + 1].decode('utf-8', 'replace')}'")
            if kind == b"pubsub":
                clients = [c for c in clients if c.subscriptions]
            elif kind == b"normal":
                clients = [c for c in clients if not c.subscriptions]
            else:
                clients = []  # no replicas or masters
            i += 2
        elif opt == b"id" and i + 1 < len(argv):
            ids = set()
            for arg in argv[i + 1:]:
                try:
                    ids.add(parse_int(arg))
                except CommandError:
                    raise CommandError("Invalid client ID") from None
            clients = [c for c in clients if c.id in ids]
            i = len(argv)
        else:
            raise CommandError(SYNTAX)
    return b"".join(client_line(ctx.services, c) + b"\n" for c in clients)


def _client_kill(ctx: Context, argv: list[bytes]) -> Any:
    server = ctx.services
    me = ctx.client
    if len(argv) == 3:  # the old form: CLIENT KILL addr:port
        for c in _clients(server):
            if c.addr.encode() == argv[2]:
                _kill(server, c, me)
                return OK
        raise CommandError("No such client")
    if len(argv) % 2:
        raise CommandError(SYNTAX)
    want = _KillFilter()
    for opt, value in zip(argv[2::2], argv[3::2], strict=True):
        want.add(server, opt.lower(), value)
    killed = 0
    for c in _clients(server):
        if (c is me and want.skipme) or not want.matches(c):
            continue
        _kill(server, c, me)
        killed += 1
    return killed


class _KillFilter:
    """The filters of one CLIENT KILL (all must match)."""

    def __init__(self) -> None:
        self.skipme = True
        self.id: int | None = None
        #: TYPE: None (any), b"normal", b"pubsub" (a client with a subscription, as Redis'
        #: getClientType) or another class ShaleDB has no client of.
        self.kind: bytes | None = None
        self.addr: bytes | None = None
        self.laddr: bytes | None = None
        self.user: object | None = None
        self.born_before: float | None = None

    def add(self, server: Services, opt: bytes, value: bytes) -> None:
        if opt == b"id":
            try:
                self.id = parse_int(value)
            except CommandError:
                self.id = 0
            if self.id <= 0:
                raise CommandError("client-id should be greater than 0")
        elif opt == b"type":
            if value.lower() not in _CLIENT_TYPES:
                raise CommandError(f"Unknown client type '{value.decode('utf-8', 'replace')}'")
            self.kind = value.lower()
        elif opt == b"addr":
            self.addr = value
        elif opt == b"laddr":
            self.laddr = value
        elif opt == b"user":
            self.user = server.acl.users.get(value)
            if self.user is None:
                raise CommandError(f"No such user '{value.decode('utf-8', 'replace')}'")
        elif opt == b"skipme":
            if value.lower() not in (b"yes", b"no"):
                raise CommandError(SYNTAX)
            self.skipme = value.lower() == b"yes"
        elif opt == b"maxage":
            self.born_before = time.monotonic() - parse_int(value)
        else:
            raise CommandError(SYNTAX)

    def matches(self, c: ClientState) -> bool:
        kind = self.kind
        return ((kind is None or kind == (b"pubsub" if c.subscribed else b"normal"))
                and (self.id is None or c.id == self.id)
                and (self.addr is None or c.addr.encode() == self.addr)
                and (self.laddr is None or c.laddr.encode() == self.laddr)
                and (self.user is None or c.user is self.user)
                and (self.born_before is None or c.created <= self.born_before))


def _kill(server: Services, c: ClientState, me: ClientState) -> None:
    if c is me:
        c.close_after_reply = True  # after this reply, as in Redis
        return
    conn = server.connections.get(c.id)
    if conn is not None:
        log.info("client %s (id %d) killed by client %s (id %d)", c.addr, c.id, me.addr,
                 me.id)
        server.stats["clients_killed"] += 1
        conn.abort()


@command("client", -2, "noscript loading stale", "slow connection",
         subcommands=_CLIENT_SUBCOMMANDS)
def client_(ctx: Context, argv: list[bytes]) -> Any:
    """CLIENT ID | GETNAME | SETNAME name | SETINFO LIB-NAME|LIB-VER value | INFO | LIST
    [TYPE type] [ID id ...] | KILL addr | KILL filter value ... | NO-EVICT on|off |
    NO-TOUCH on|off | HELP"""
    sub = argv[1].lower()
    client = ctx.client
    n = len(argv)
    if sub == b"id" and n == 2:
        return client.id
    if sub == b"reply" and n == 3:
        # As Redis: OFF and SKIP are not answered (the connection drops the replies while
        # reply_off / skip_replies say so); pub/sub messages still go out.
        mode = argv[2].lower()
        if mode == b"on":
            client.reply_off, client.skip_replies = False, 0
        elif mode == b"off":
            client.reply_off = True
        elif mode == b"skip":
            if not client.reply_off:
                client.skip_replies = 2  # this command's reply and the next one's
        else:
            raise CommandError(SYNTAX)
        return OK
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
    if sub == b"info" and n == 2:
        return Verbatim(client_line(ctx.services, client) + b"\n")
    if sub == b"list":
        return Verbatim(_client_list(ctx, argv))  # verbatim in RESP3, as in Redis 7
    if sub == b"kill" and n >= 3:
        return _client_kill(ctx, argv)
    if sub == b"unblock" and n in (3, 4):
        target = parse_int(argv[2])
        how = argv[3].upper() if n == 4 else b"TIMEOUT"
        if how not in (b"TIMEOUT", b"ERROR"):
            raise CommandError("CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
        error = (CommandError("client unblocked via CLIENT UNBLOCK", prefix="UNBLOCKED")
                 if how == b"ERROR" else None)
        return int(ctx.services.blocking.unblock(target, error))
    if sub in (b"no-evict", b"no-touch") and n == 3:
        # Accepted for clients that send them: ShaleDB never evicts clients (no maxmemory)
        # and keeps no access times (nothing for NO-TOUCH to preserve).
        if argv[2].lower() not in (b"on", b"off"):
            raise CommandError(SYNTAX)
        return OK
    if sub == b"help" and n == 2:
        return [Status(line.encode()) for line in CLIENT_HELP]
    if sub in (b"id", b"getname", b"setname", b"setinfo", b"info", b"kill", b"unblock",
               b"no-evict",
               b"no-touch", b"help"):
        raise wrong_arity("client|" + sub.decode())
    raise CommandError(f"unknown subcommand '{argv[1].decode('utf-8', 'replace')}'. "
                       "Try CLIENT HELP.")


#: Commands whose keys may be none (Redis' no_mandatory_keys): COMMAND GETKEYS answers [].
_NO_MANDATORY_KEYS: Final = frozenset(
    ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"))
#: Key spec flags in Redis' order (COMMAND GETKEYSANDFLAGS lists them so).
_FLAG_ORDER: Final = ("RO", "RW", "OW", "RM", "access", "update", "insert", "delete",
                      "not_key", "incomplete", "variable_flags")


def _keys_and_flags(cmd: Command, argv: list[bytes]) -> list[tuple[int, frozenset[str]]]:
    """The key positions of ``argv`` with Redis 7's key spec flags (our own key positions,
    flagged read+write, for a command Redis does not have)."""
    name = cmd.name
    if len(argv) > 1 and keyspecs.known(f"{name}|{argv[1].lower().decode('latin-1')}"):
        name = f"{name}|{argv[1].lower().decode('latin-1')}"
    found = keyspecs.keys_and_flags(name, argv, cmd.arity)
    if found is not None:
        return found
    keys = cmd.keys(argv)
    return [(argv.index(k, 1), keyspecs.WORST) for k in keys]


def _info(cmd: Command) -> list[Any]:
    """COMMAND INFO's entry, with Redis' ``movablekeys`` flag where the keys depend on the
    arguments (Redis 7's key specs say so, or our table finds them by a function)."""
    info = cmd.info()
    if cmd.key_finder is not None or keyspecs.movablekeys(cmd.name):
        info[2] = info[2] | {Status(b"movablekeys")}
    return info


def _command_list(ctx: Context, argv: list[bytes]) -> list[bytes]:
    """COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN pattern]: every
    command and subcommand (``name|sub``) name."""
    units = sorted(ctx.services.acl.index.units)
    if len(argv) == 2:
        return [u.encode() for u in units]
    if len(argv) != 5 or argv[2].lower() != b"filterby":
        raise CommandError(SYNTAX)
    kind, arg = argv[3].lower(), argv[4]
    if kind == b"module":
        return []  # no modules
    if kind == b"aclcat":
        members = ctx.services.acl.index.by_category.get(arg.lower().decode("latin-1"), set())
        return [u.encode() for u in units if u in members]
    if kind == b"pattern":
        try:
            match = compile_glob(arg.lower(), bounded=True)
        except PatternError as exc:
            raise CommandError(str(exc)) from None
        return [u.encode() for u in units if match(u.encode())]
    raise CommandError(SYNTAX)


@command("command", -1, "loading stale", "slow connection")
def command_(ctx: Context, argv: list[bytes]) -> Any:
    """COMMAND [COUNT | LIST | INFO name... | DOCS [name...] | GETKEYS command [arg ...]]"""
    table = ctx.services.dispatcher.table
    if len(argv) == 1:
        return [_info(c) for c in table.values()]
    sub = argv[1].lower()
    if sub == b"count" and len(argv) == 2:
        return len(table)
    if sub == b"list":
        return _command_list(ctx, argv)
    if sub == b"info":
        names = argv[2:] or list(table)
        out: list[Any] = []
        for name in names:
            cmd = table.get(name.lower())
            out.append(None if cmd is None else _info(cmd))
        return out
    if sub == b"getkeys" and len(argv) >= 3:
        cmd = table.get(argv[2].lower())
        if cmd is None:
            raise CommandError("Invalid command specified")
        if not cmd.arity_ok(len(argv) - 2):
            raise CommandError("Invalid number of arguments specified for command")
        found = _keys_and_flags(cmd, argv[2:])
        if not found:
            if cmd.name in _NO_MANDATORY_KEYS:
                return []
            raise CommandError("The command has no key arguments")
        return [argv[2 + i] for i, _ in found]
    if sub == b"getkeysandflags" and len(argv) >= 3:
        cmd = table.get(argv[2].lower())
        if cmd is None:
            raise CommandError("Invalid command specified")
        if not cmd.arity_ok(len(argv) - 2):
            raise CommandError("Invalid number of arguments specified for command")
        found = _keys_and_flags(cmd, argv[2:])
        if not found:
            if cmd.name in _NO_MANDATORY_KEYS:
                return []
            raise CommandError("The command has no key arguments")
        return [[argv[2 + i], [Status(f.encode()) for f in sorted(flags, key=_FLAG_ORDER.index)]]
                for i, flags in found]
    if sub == b"docs":
        names = [n.lower() for n in argv[2:]] or list(table)
        return {name: {} for name in names if name in table}
    raise CommandError(f"unknown subcommand or wrong number of arguments for "
                       f"'{argv[1].decode('utf-8', 'replace')}'. Try COMMAND HELP.")
