"""ACL users, as in Redis 7: who may connect, with which password, run which commands on
which keys; the log of denials; the ACL file; the rate limit on failed AUTH.

Invariants:

* Passwords exist only as SHA-256 digests (Redis' own choice, so ACL files move between
  the two): ``>password`` is hashed the moment the rule is parsed, and nothing -- replies,
  the ACL file, errors, the ACL log, server logs -- ever contains a clear-text password.
  Digests are compared with :func:`hmac.compare_digest`, against every password of the user,
  and a digest is computed even for an unknown user, so timing tells nothing.
* A user's permissions are a set of *units*: command names, and ``name|sub`` for the
  subcommands that have their own categories (``acl|whoami``). A rule list (``+@all
  -@dangerous +get``) is applied left to right to that set; the rules are also kept, in
  order, because they are what ``ACL GETUSER``/``LIST`` show and what ``ACL SAVE`` writes,
  and replaying them rebuilds the same set.
* Every change (SETUSER, LOAD) is built on a copy and installed only when every rule parsed:
  a rejected change changes nothing.
* Key patterns are checked on the key positions of the command table. Commands that read
  values outside their key positions (KRANGE) need ``allkeys``.
* Bounded: the ACL log keeps ``acllog-max-len`` entries (oldest dropped) with ``object``
  and ``username`` cut to :data:`LOG_FIELD_MAX` bytes; the AUTH limiter keeps
  ``auth-fail-max-hosts`` buckets (least recently used dropped). The user table is not
  bounded: only @admin users (ACL SETUSER, ACL LOAD) add to it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..errors import CommandError, NoPermissionError
from ..glob import PatternError, compile_glob
from ..net.ratelimit import TokenBuckets

if TYPE_CHECKING:
    from ..exec.command import CommandSpec


class AclClient(Protocol):
    """What the ACL reads of a client (its user; the CLIENT LIST fields of a log entry):
    a Protocol, so that the client state (:mod:`shaledb.server.exec.client`), which names
    :class:`User`, is not imported back."""

    @property
    def user(self) -> User: ...
    @property
    def id(self) -> int: ...
    @property
    def addr(self) -> str: ...
    @property
    def created(self) -> float: ...
    @property
    def last_active(self) -> float: ...
    @property
    def db(self) -> int: ...
    @property
    def resp(self) -> int: ...

#: Redis 7's command categories; ``ACL CAT`` lists them all, even those without commands
#: here yet, so rules written for Redis parse unchanged.
CATEGORIES: Final = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
    "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking",
    "dangerous", "connection", "transaction", "scripting")
#: Commands that read or write keys outside their key positions (ranges, KBATCH's op list):
#: only ``allkeys`` users.
NEEDS_ALL_KEYS: Final = frozenset(("krange", "kdelrange", "kbatch"))
#: The channel arguments of the pub/sub commands, for the ``&pattern`` checks: (first,
#: last (-1: to the end), whether they are patterns).
CHANNEL_ARGS: Final = {
    "publish": (1, 1, False), "spublish": (1, 1, False), "subscribe": (1, -1, False),
    "ssubscribe": (1, -1, False), "psubscribe": (1, -1, True)}
#: Longest ``object``/``username`` kept in an ACL log entry (they come from clients).
LOG_FIELD_MAX: Final = 128
#: Denials of the same kind within this many seconds are one log entry with a count.
LOG_GROUP_SECONDS: Final = 60.0
DEFAULT_USER: Final = b"default"


class AclRuleError(CommandError):
    """An ACL rule (SETUSER argument, ACL file line) is invalid."""


def hash_password(password: bytes) -> bytes:
    """The SHA-256 digest under which a password is kept."""
    return hashlib.sha256(password).digest()


def _check_token(token: bytes, what: str) -> None:
    # The ACL file is one user per line, rules separated by spaces.
    if not token or any(c <= 32 or c == 127 for c in token):
        raise AclRuleError(f"{what} cannot be empty or contain spaces or control characters")


class CommandIndex:
    """The units and categories of a command table, for building permission sets."""

    def __init__(self, table: Mapping[bytes, CommandSpec]) -> None:
        self.by_category: dict[str, set[str]] = {c: set() for c in CATEGORIES}
        self.by_command: dict[str, set[str]] = {}
        self.units: set[str] = set()
        for cmd in table.values():
            units = {cmd.name}
            for cat in cmd.categories:
                self.by_category.setdefault(cat, set()).add(cmd.name)
            for sub, cats in cmd.subcommands:
                unit = f"{cmd.name}|{sub}"
                units.add(unit)
                for cat in cats:
                    self.by_category.setdefault(cat, set()).add(unit)
            self.by_command[cmd.name] = units
            self.units |= units

    @staticmethod
    def unit(cmd: CommandSpec, argv: list[bytes]) -> str:
        """The unit ``argv`` runs: ``name|sub`` for a known subcommand, else the name."""
        if cmd.subcommands and len(argv) > 1:
            sub = argv[1].lower().decode("latin-1")
            if any(sub == s for s, _ in cmd.subcommands):
                return f"{cmd.name}|{sub}"
        return cmd.name


@dataclasses.dataclass
class User:
    """One ACL user. New users are off, have no password, no keys and no commands."""

    name: bytes
    enabled: bool = False
    nopass: bool = False
    passwords: list[bytes] = dataclasses.field(default_factory=list, repr=False)
    allowed: set[str] = dataclasses.field(default_factory=set, repr=False)
    command_rules: list[str] = dataclasses.field(default_factory=lambda: ["-@all"])
    allkeys: bool = False
    key_patterns: list[bytes] = dataclasses.field(default_factory=list)
    allchannels: bool = False
    channel_patterns: list[bytes] = dataclasses.field(default_factory=list)
    #: Every command on every key: the dispatcher skips the checks (kept by _refresh).
    unrestricted: bool = dataclasses.field(default=False, repr=False)
    _key_matchers: list[Callable[[bytes], bool]] = dataclasses.field(
        default_factory=list, repr=False)
    _channel_matchers: list[Callable[[bytes], bool]] = dataclasses.field(
        default_factory=list, repr=False)

    def copy(self) -> User:
        """An independent copy to apply changes to."""
        return dataclasses.replace(
            self, passwords=list(self.passwords), allowed=set(self.allowed),
            command_rules=list(self.command_rules), key_patterns=list(self.key_patterns),
            channel_patterns=list(self.channel_patterns),
            _key_matchers=list(self._key_matchers),
            _channel_matchers=list(self._channel_matchers))

    # -- rules -----------------------------------------------------------------------------
    def apply(self, rule: bytes, index: CommandIndex) -> None:
        """Apply one ACL rule (``on``, ``>pass``, ``+@read``, ``~key:*``, ...)."""
        low = rule.lower()
        head = rule[:1]
        if low == b"on":
            self.enabled = True
        elif low == b"off":
            self.enabled = False
        elif low == b"nopass":
            self.nopass = True
            self.passwords.clear()
        elif low == b"resetpass":
            self.nopass = False
            self.passwords.clear()
        elif head == b">":
            self._add_password(hash_password(rule[1:]))
        elif head == b"#":
            self._add_password(_parse_hash(rule[1:]))
        elif head in (b"<", b"!"):
            digest = hash_password(rule[1:]) if head == b"<" else _parse_hash(rule[1:])
            if digest not in self.passwords:
                raise AclRuleError(
                    "The password you are trying to remove from the user does not exist")
            self.passwords.remove(digest)
        elif low == b"allkeys" or rule == b"~*":
            self.allkeys = True
            self.key_patterns = [b"*"]
            self._key_matchers = []
        elif low == b"resetkeys":
            self.allkeys = False
            self.key_patterns = []
            self._key_matchers = []
        elif head == b"~":
            _check_token(rule[1:], "A key pattern")
            if self.allkeys:
                raise AclRuleError(
                    "Adding a pattern after the * pattern (or the 'allkeys' flag) is not "
                    "valid and does not have any effect. Try 'resetkeys' to start with an "
                    "empty list of patterns")
            if rule[1:] not in self.key_patterns:
                # Bounded like KEYS patterns: each key a user touches is matched against
                # them on the event loop (an unbounded 64 KiB pattern cost 3.4 s a match).
                try:
                    matcher = compile_glob(rule[1:], bounded=True)
                except PatternError as exc:
                    raise AclRuleError(f"A key pattern is {exc}") from None
                self.key_patterns.append(rule[1:])
                self._key_matchers.append(matcher)
        elif low == b"allchannels" or rule == b"&*":
            self.allchannels = True
            self.channel_patterns = [b"*"]
            self._channel_matchers = []
        elif low == b"resetchannels":
            self.allchannels = False
            self.channel_patterns = []
            self._channel_matchers = []
        elif head == b"&":
            _check_token(rule[1:], "A channel pattern")
            if self.allchannels:
                raise AclRuleError(
                    "Adding a pattern after the * pattern (or the 'allchannels' flag) is not "
                    "valid and does not have any effect. Try 'resetchannels' to start with an "
                    "empty list of channels")
            if rule[1:] not in self.channel_patterns:
                # Bounded like key patterns: every PUBLISH / SUBSCRIBE of the user is
                # matched against them on the event loop.
                try:
                    matcher = compile_glob(rule[1:], bounded=True)
                except PatternError as exc:
                    raise AclRuleError(f"A channel pattern is {exc}") from None
                self.channel_patterns.append(rule[1:])
                self._channel_matchers.append(matcher)
        elif low in (b"allcommands", b"+@all"):
            self.allowed = set(index.units)
            self.command_rules = ["+@all"]
        elif low in (b"nocommands", b"-@all"):
            self.allowed = set()
            self.command_rules = ["-@all"]
        elif head in (b"+", b"-") and len(rule) > 1:
            self._command_rule(low.decode("latin-1"), index)
        elif low == b"reset":
            fresh = User(self.name)
            for field in dataclasses.fields(User):
                setattr(self, field.name, getattr(fresh, field.name))
        else:
            raise AclRuleError("Syntax error")
        self._refresh(index)

    def _add_password(self, digest: bytes) -> None:
        self.nopass = False
        if digest not in self.passwords:
            self.passwords.append(digest)

    def _command_rule(self, rule: str, index: CommandIndex) -> None:
        add = rule[0] == "+"
        name = rule[1:]
        if name.startswith("@"):
            units = index.by_category.get(name[1:])
        elif "|" in name:
            units = {name} if name in index.units else None
        else:
            units = index.by_command.get(name)
        if units is None:
            raise AclRuleError("Unknown command or category name in ACL")
        if add:
            self.allowed |= units
        else:
            self.allowed -= units
        self.command_rules.append(rule)

    def _refresh(self, index: CommandIndex) -> None:
        self.unrestricted = self.allkeys and self.allchannels and self.allowed >= index.units

    # -- checks ----------------------------------------------------------------------------
    def check_password(self, digest: bytes) -> bool:
        """Whether a password with this digest logs in (constant time per stored hash)."""
        ok = self.nopass
        for stored in self.passwords:
            ok = hmac.compare_digest(stored, digest) or ok  # no early exit
        return ok and self.enabled

    def key_allowed(self, key: bytes) -> bool:
        """Whether one of the user's key patterns matches ``key``."""
        return self.allkeys or any(match(key) for match in self._key_matchers)

    def channel_allowed(self, channel: bytes, pattern: bool = False) -> bool:
        """Whether the user may use ``channel`` (PUBLISH, SUBSCRIBE: one of its ``&``
        patterns matches it) or, ``pattern``, subscribe to the pattern ``channel``
        (PSUBSCRIBE: it must be one of its ``&`` patterns, literally, as in Redis 7)."""
        if self.allchannels:
            return True
        if pattern:
            return channel in self.channel_patterns
        return any(match(channel) for match in self._channel_matchers)

    # -- description -----------------------------------------------------------------------
    def flags(self) -> list[str]:
        """``ACL GETUSER``'s flags."""
        return ["on" if self.enabled else "off"] + (["nopass"] if self.nopass else [])

    def keys_text(self) -> str:
        """The key patterns as Redis writes them (``~a ~b``)."""
        return " ".join("~" + p.decode("latin-1") for p in self.key_patterns)

    def channels_text(self) -> str:
        """The channel patterns as Redis writes them (``&a &b``; empty when none)."""
        if not self.channel_patterns:
            return ""
        return " ".join("&" + p.decode("latin-1") for p in self.channel_patterns)

    def describe(self) -> bytes:
        """The user as one ``ACL LIST`` / ACL file line; passwords appear as hashes."""
        parts = [b"user", self.name, b"on" if self.enabled else b"off"]
        if self.nopass:
            parts.append(b"nopass")
        parts += [b"#" + d.hex().encode() for d in self.passwords]
        parts += [b"~" + p for p in self.key_patterns] or [b"resetkeys"]
        parts += [b"&" + p for p in self.channel_patterns] or [b"resetchannels"]
        parts += [r.encode("latin-1") for r in self.command_rules]
        return b" ".join(parts)


def _parse_hash(text: bytes) -> bytes:
    if len(text) != 64 or any(c not in b"0123456789abcdef" for c in text):
        raise AclRuleError("The password hash must be exactly 64 characters and contain "
                           "only lowercase hexadecimal characters")
    return bytes.fromhex(text.decode())


def _rule_for_error(rule: bytes) -> str:
    """The rule as an error may quote it: password rules are never echoed."""
    if rule[:1] in (b">", b"<", b"#", b"!"):
        return rule[:1].decode() + "..."
    return rule[:128].decode("utf-8", "replace")


@dataclasses.dataclass
class LogEntry:
    """One ``ACL LOG`` entry: a kind of denial, counted while it repeats."""

    reason: str  # "auth", "command" or "key"
    context: str  # "toplevel" or "multi"
    object: bytes
    username: bytes
    client_info: bytes
    entry_id: int
    created: float
    updated: float
    count: int = 1

    def reply(self, now: float) -> dict[str, Any]:
        """The entry as Redis 7 shows it."""
        return {
            "count": self.count, "reason": self.reason, "context": self.context,
            "object": self.object, "username": self.username,
            "age-seconds": round(now - self.created, 3), "client-info": self.client_info,
            "entry-id": self.entry_id, "timestamp-created": int(self.created * 1000),
            "timestamp-last-updated": int(self.updated * 1000),
        }


class AuthRateLimiter(TokenBuckets):
    """Failed-AUTH token buckets per client IP: ``burst`` attempts at once, refilled at
    ``rate`` per second, at most ``max_hosts`` IPs remembered (least recently used dropped).

    :meth:`take` checks and consumes one token in the same call, before the password is
    checked; a successful login gives it back (:meth:`refund`). So a flood of pipelined
    attempts cannot all pass a check made before any of them failed.
    """


class Acl:
    """The users of one server, its ACL log and its failed-AUTH limiter."""

    def __init__(self, table: Mapping[bytes, CommandSpec], *, password_digest: bytes | None,
                 log_max_len: int, auth_limiter: AuthRateLimiter,
                 clock: Callable[[], float] = time.time) -> None:
        self.index = CommandIndex(table)
        self.log: collections.deque[LogEntry] = collections.deque(maxlen=log_max_len)
        self.limiter = auth_limiter
        self._clock = clock
        self._next_entry = 0
        self.users: dict[bytes, User] = {DEFAULT_USER: self.default_user(password_digest)}
        #: acl-pubsub-default: the channel rule a new user starts with (Redis 7's default
        #: is resetchannels: no channel until granted).
        self.pubsub_default = b"resetchannels"

    def default_user(self, password_digest: bytes | None) -> User:
        """Redis' ``default`` user: every command and key; ``requirepass`` is its password."""
        user = User(DEFAULT_USER)
        for rule in (b"on", b"allkeys", b"allchannels", b"+@all"):
            user.apply(rule, self.index)
        if password_digest is None:
            user.apply(b"nopass", self.index)
        else:
            user.passwords.append(password_digest)
        return user

    @property
    def default(self) -> User:
        """The ``default`` user (it always exists)."""
        return self.users[DEFAULT_USER]

    def default_open(self) -> bool:
        """Whether a new connection is logged in as ``default`` without a password."""
        d = self.default
        return d.enabled and d.nopass

    # -- users -----------------------------------------------------------------------------
    def build_user(self, base: User, rules: Iterable[bytes]) -> User:
        """``base`` with ``rules`` applied, as a new object; raise AclRuleError naming the
        failing rule (passwords never quoted)."""
        user = base.copy()
        for rule in rules:
            try:
                user.apply(rule, self.index)
            except AclRuleError as exc:
                raise AclRuleError(
                    f"Error in ACL SETUSER modifier '{_rule_for_error(rule)}': {exc}") from None
        return user

    def new_user(self, name: bytes) -> User:
        """A user as it starts: off, no password, no keys or commands, the channels of
        acl-pubsub-default."""
        user = User(name)
        user.apply(self.pubsub_default, self.index)
        return user

    def set_user(self, name: bytes, rules: list[bytes]) -> User:
        """ACL SETUSER: create or change ``name``; all rules or none take effect."""
        _check_token(name, "A user name")
        current = self.users.get(name)
        user = self.build_user(current or self.new_user(name), rules)
        if current is None:
            self.users[name] = user
            return user
        # Logged-in connections hold the object: change it in place so they see the change.
        for field in dataclasses.fields(User):
            setattr(current, field.name, getattr(user, field.name))
        return current

    def parse_file(self, data: bytes, path: str) -> dict[bytes, User]:
        """The users of an ACL file's text (``user <name> <rule>...`` per line; blank lines
        and lines starting with ``#`` are skipped). A file without a ``default`` line keeps
        the current default user."""
        users: dict[bytes, User] = {}
        for number, line in enumerate(data.splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith(b"#"):
                continue
            if words[0] != b"user" or len(words) < 2:
                raise AclRuleError(f"{path}:{number}: line should start with user keyword")
            name = words[1]
            try:
                _check_token(name, "A user name")
                if name in users:
                    raise AclRuleError(f"Duplicate user '{name.decode('latin-1')}' found")
                users[name] = self.build_user(self.new_user(name), words[2:])
            except AclRuleError as exc:
                raise AclRuleError(f"{path}:{number}: {exc}") from None
        users.setdefault(DEFAULT_USER, self.default)
        return users

    def load_file(self, path: str) -> dict[bytes, User]:
        """Read and parse the ACL file; raise AclRuleError (and change nothing) when it is
        unreadable or any line is invalid."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise AclRuleError(f"cannot read the ACL file {path}: {exc.strerror}") from None
        return self.parse_file(data, path)

    def save_file(self, path: str) -> None:
        """Write every user to ``path`` atomically (a new 0600 file, fsynced, renamed over
        the old one, directory fsynced). Passwords are written as SHA-256 hashes."""
        data = b"".join(u.describe() + b"\n" for u in self.users.values())
        directory = os.path.dirname(os.path.abspath(path))
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- authentication and checks ------------------------------------------------------------
    def authenticate(self, name: bytes, password: bytes) -> User | None:
        """The user ``name`` if ``password`` logs it in, else None."""
        digest = hash_password(password)  # computed for unknown users too: same timing
        user = self.users.get(name)
        if user is None:
            hmac.compare_digest(digest, digest)
            return None
        return user if user.check_password(digest) else None

    def check(self, client: AclClient, cmd: CommandSpec, argv: list[bytes],
              context: str) -> NoPermissionError | None:
        """The NOPERM error (logged) when the client's user may not run ``argv``."""
        user = client.user
        if user.unrestricted:
            return None
        unit = self.index.unit(cmd, argv)
        if unit not in user.allowed:
            self.record("command", context, unit.encode(), user.name, client)
            return NoPermissionError(
                f"User {user.name.decode('utf-8', 'replace')} has no permissions to run "
                f"the '{unit}' command")
        if not user.allkeys:
            if cmd.name in NEEDS_ALL_KEYS:
                self.record("key", context, cmd.name.encode(), user.name, client)
                return NoPermissionError("No permissions to access a key")
            for key in cmd.keys(argv):
                if not user.key_allowed(key):
                    self.record("key", context, key, user.name, client)
                    return NoPermissionError("No permissions to access a key")
        if not user.allchannels and cmd.name in CHANNEL_ARGS:
            first, last, pattern = CHANNEL_ARGS[cmd.name]
            for channel in argv[first:len(argv) if last < 0 else last + 1]:
                if not user.channel_allowed(channel, pattern):
                    self.record("channel", context, channel, user.name, client)
                    return NoPermissionError("this user has no permissions to access one of "
                                             "the channels used as arguments")
        return None

    def record(self, reason: str, context: str, obj: bytes, username: bytes,
               client: AclClient) -> None:
        """Add a denial to the ACL log, or count it on a recent entry of the same kind."""
        now = self._clock()
        obj = obj[:LOG_FIELD_MAX]
        username = username[:LOG_FIELD_MAX]
        for entry in self.log:
            if (entry.reason == reason and entry.context == context and entry.object == obj
                    and entry.username == username
                    and now - entry.updated < LOG_GROUP_SECONDS):
                entry.count += 1
                entry.updated = now
                entry.client_info = client_info(client)
                return
        self._next_entry += 1
        self.log.appendleft(LogEntry(reason, context, obj, username, client_info(client),
                                     self._next_entry - 1, now, now))

    def log_reply(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` log entries, newest first."""
        now = self._clock()
        return [e.reply(now) for e in list(self.log)[:count]]


def client_info(client: AclClient) -> bytes:
    """The ``client-info`` of an ACL log entry (``CLIENT LIST`` fields; no free text)."""
    now = time.monotonic()
    return (f"id={client.id} addr={client.addr} age={int(now - client.created)} "
            f"idle={int(now - client.last_active)} db={client.db} resp={client.resp}"
            ).encode()


__all__ = [
    "CATEGORIES",
    "CHANNEL_ARGS",
    "DEFAULT_USER",
    "LOG_FIELD_MAX",
    "Acl",
    "AclClient",
    "AclRuleError",
    "AuthRateLimiter",
    "CommandIndex",
    "LogEntry",
    "User",
    "client_info",
    "hash_password",
]
