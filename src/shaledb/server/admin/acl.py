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
from . import keyspecs

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


#: Key permission bits of a key pattern: ``%R~`` read, ``%W~`` write, ``~`` (or ``%RW~``) both.
KEY_READ: Final = keyspecs.READ
KEY_WRITE: Final = keyspecs.WRITE
KEY_ALL: Final = KEY_READ | KEY_WRITE

_ALLKEYS_AFTER = ("Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid "
                  "and does not have any effect. Try 'resetkeys' to start with an empty list "
                  "of patterns")


@dataclasses.dataclass(kw_only=True)
class Selector:
    """One set of permissions: commands, key patterns (each with read/write bits) and
    channel patterns. A user has a root selector (its own fields) and any number of extra
    ``(...)`` selectors; a command runs when one selector allows the command *and* all its
    keys *and* all its channels (Redis 7: selectors are not additive)."""

    allowed: set[str] = dataclasses.field(default_factory=set, repr=False)
    command_rules: list[str] = dataclasses.field(default_factory=lambda: ["-@all"])
    allkeys: bool = False
    #: (pattern, KEY_READ | KEY_WRITE bits), in the order first given.
    key_patterns: list[tuple[bytes, int]] = dataclasses.field(default_factory=list)
    allchannels: bool = False
    channel_patterns: list[bytes] = dataclasses.field(default_factory=list)
    _key_matchers: list[Callable[[bytes], bool]] = dataclasses.field(
        default_factory=list, repr=False)
    _channel_matchers: list[Callable[[bytes], bool]] = dataclasses.field(
        default_factory=list, repr=False)

    def copy_selector(self) -> Selector:
        """An independent copy of this selector's permissions."""
        return Selector(
            allowed=set(self.allowed), command_rules=list(self.command_rules),
            allkeys=self.allkeys, key_patterns=list(self.key_patterns),
            allchannels=self.allchannels, channel_patterns=list(self.channel_patterns),
            _key_matchers=list(self._key_matchers),
            _channel_matchers=list(self._channel_matchers))

    def apply_selector_rule(self, rule: bytes, index: CommandIndex) -> bool:
        """Apply a permission rule (commands, keys, channels); False when ``rule`` is not
        one (the caller decides whether it is a user rule or a syntax error)."""
        low = rule.lower()
        head = rule[:1]
        if low == b"allkeys":
            self._set_allkeys()
        elif low == b"resetkeys":
            self.allkeys = False
            self.key_patterns = []
            self._key_matchers = []
        elif head in (b"~", b"%"):
            self._key_rule(rule)
        elif low == b"allchannels" or rule == b"&*":
            self.allchannels = True
            self.channel_patterns = []
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
        else:
            return False
        return True

    def _set_allkeys(self) -> None:
        self.allkeys = True
        self.key_patterns = []
        self._key_matchers = []

    def _key_rule(self, rule: bytes) -> None:
        # As Redis' ACLSetSelector: ``~pat`` is read+write; ``%R~``, ``%W~``, ``%RW~`` name
        # the bits (each at most once); anything else before the ``~`` is a syntax error.
        if rule[:1] == b"~":
            bits, pattern = KEY_ALL, rule[1:]
        else:
            bits, offset = 0, 1
            while offset < len(rule):
                c = rule[offset:offset + 1].upper()
                if c == b"R" and not bits & KEY_READ:
                    bits |= KEY_READ
                elif c == b"W" and not bits & KEY_WRITE:
                    bits |= KEY_WRITE
                elif c == b"~":
                    offset += 1
                    break
                else:
                    raise AclRuleError("Syntax error")
                offset += 1
            else:
                raise AclRuleError("Syntax error")
            if not bits or rule[offset - 1:offset] != b"~":
                raise AclRuleError("Syntax error")
            pattern = rule[offset:]
        if self.allkeys:
            raise AclRuleError(_ALLKEYS_AFTER)
        _check_token(pattern, "A key pattern")
        if pattern == b"*" and bits == KEY_ALL:
            self._set_allkeys()
            return
        for i, (existing, old) in enumerate(self.key_patterns):
            if existing == pattern:
                self.key_patterns[i] = (pattern, old | bits)
                return
        # Bounded like KEYS patterns: each key a user touches is matched against them on
        # the event loop (an unbounded 64 KiB pattern cost 3.4 s a match).
        try:
            matcher = compile_glob(pattern, bounded=True)
        except PatternError as exc:
            raise AclRuleError(f"A key pattern is {exc}") from None
        self.key_patterns.append((pattern, bits))
        self._key_matchers.append(matcher)

    def _command_rule(self, rule: str, index: CommandIndex) -> None:
        add = rule[0] == "+"
        name = rule[1:]
        if name.startswith("@"):
            units = index.by_category.get(name[1:])
        elif "|" in name:
            base, _, arg = name.partition("|")
            if "|" in arg:
                if f"{base}|{arg.partition('|')[0]}" in index.units:
                    raise AclRuleError("Allowing first-arg of a subcommand is not supported")
                raise AclRuleError("Unknown command or category name in ACL")
            units = {name} if name in index.units else None
            if units is None and base in index.by_command and len(index.by_command[base]) == 1:
                # Redis 7's (deprecated) first-arg rule of a command without subcommands
                # (+select|0): only granting, as Redis.
                if not add or not arg:
                    raise AclRuleError("Syntax error")
                units = {name}
        else:
            units = index.by_command.get(name)
        if units is None:
            raise AclRuleError("Unknown command or category name in ACL")
        before = set(self.allowed)
        if add:
            self.allowed |= units
        else:
            self.allowed -= units
            # Removing a command removes its first-arg grants too.
            gone = {u for u in units if "|" not in u}
            self.allowed -= {u for u in self.allowed if u.partition("|")[0] in gone
                             and u not in index.units}
        if self.allowed == before:
            return  # changes nothing: not kept, so GETUSER shows what matters (as Redis)
        if "|" not in name and not name.startswith("@"):
            # A whole-command rule makes earlier rules on its subcommands moot.
            self.command_rules = [r for r in self.command_rules
                                  if r[1:].partition("|")[0] != name or "|" not in r]
        self.command_rules.append(rule)

    # -- checks ----------------------------------------------------------------------------
    def allows_key(self, key: bytes, bits: int) -> bool:
        """Whether a pattern with (at least) permission ``bits`` matches ``key``; a key the
        command only tests for existence (``bits`` 0) needs any pattern."""
        if self.allkeys:
            return True
        return any((have & bits) == bits and match(key)
                   for (_, have), match in zip(self.key_patterns, self._key_matchers,
                                                   strict=True))

    def allows_all_keys(self, bits: int) -> bool:
        """Whether every key is allowed with ``bits`` (``allkeys``, or a ``*`` pattern with
        those bits, as Redis' ACLSelectorHasUnrestrictedKeyAccess)."""
        return self.allkeys or any(p == b"*" and (have & bits) == bits
                                   for p, have in self.key_patterns)

    def allows_channel(self, channel: bytes, pattern: bool = False) -> bool:
        """Whether this selector allows ``channel`` (PUBLISH, SUBSCRIBE: a ``&`` pattern
        matches it) or, ``pattern``, subscribing to it as a pattern (PSUBSCRIBE: it must be
        one of the ``&`` patterns, literally, as in Redis 7)."""
        if self.allchannels:
            return True
        if pattern:
            return channel in self.channel_patterns
        return any(match(channel) for match in self._channel_matchers)

    # -- description -----------------------------------------------------------------------
    def keys_text(self) -> str:
        """The key patterns as Redis writes them (``%R~a %W~b ~c``; ``~*`` for allkeys)."""
        return b" ".join(self._key_words()).decode("latin-1")

    def _key_words(self) -> list[bytes]:
        if self.allkeys:
            return [b"~*"]
        prefix = {KEY_ALL: b"~", KEY_READ: b"%R~", KEY_WRITE: b"%W~"}
        return [prefix[bits] + p for p, bits in self.key_patterns]

    def channels_text(self) -> str:
        """The channel patterns as Redis writes them (``&a &b``; empty when none)."""
        if self.allchannels:
            return "&*"
        return " ".join("&" + p.decode("latin-1") for p in self.channel_patterns)

    def describe_words(self) -> list[bytes]:
        """The selector as rules that rebuild it (keys, channels, commands)."""
        words = self._key_words()
        if self.allchannels:
            words.append(b"&*")
        else:
            # resetchannels first, as Redis: replayed under any acl-pubsub-default it gives
            # exactly these channels.
            words.append(b"resetchannels")
            words += [b"&" + p for p in self.channel_patterns]
        return words + [r.encode("latin-1") for r in self.command_rules]

    def reply(self) -> dict[str, bytes]:
        """The selector as ``ACL GETUSER`` shows it."""
        return {"commands": " ".join(self.command_rules).encode(),
                "keys": self.keys_text().encode("latin-1"),
                "channels": self.channels_text().encode("latin-1")}


@dataclasses.dataclass
class User(Selector):
    """One ACL user: its login (on/off, passwords) and its permissions, the root selector
    (the inherited fields) and the extra ``(...)`` selectors. New users are off, have no
    password, no keys and no commands."""

    name: bytes
    enabled: bool = False
    nopass: bool = False
    passwords: list[bytes] = dataclasses.field(default_factory=list, repr=False)
    selectors: list[Selector] = dataclasses.field(default_factory=list)
    #: Every command on every key: the dispatcher skips the checks (kept by _refresh).
    unrestricted: bool = dataclasses.field(default=False, repr=False)

    def copy(self) -> User:
        """An independent copy to apply changes to."""
        root = self.copy_selector()
        return User(self.name, enabled=self.enabled, nopass=self.nopass,
                    passwords=list(self.passwords),
                    selectors=[s.copy_selector() for s in self.selectors],
                    unrestricted=self.unrestricted,
                    **{f.name: getattr(root, f.name) for f in dataclasses.fields(Selector)})

    def all_selectors(self) -> list[Selector]:
        """The root selector first, then the extra ones (the order checks report in)."""
        return [self, *self.selectors]

    # -- rules -----------------------------------------------------------------------------
    def apply(self, rule: bytes, index: CommandIndex,
              new_selector_channels: bytes = b"resetchannels") -> None:
        """Apply one ACL rule (``on``, ``>pass``, ``+@read``, ``%R~key:*``, ``(~k +get)``)."""
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
        elif low == b"clearselectors":
            self.selectors = []
        elif head == b"(" and rule[-1:] == b")":
            selector = Selector()
            selector.apply_selector_rule(new_selector_channels, index)
            for word in rule[1:-1].split():
                if not selector.apply_selector_rule(word, index):
                    raise AclRuleError("Syntax error")
            self.selectors.append(selector)
        elif low == b"reset":
            fresh = User(self.name)
            for field in dataclasses.fields(User):
                setattr(self, field.name, getattr(fresh, field.name))
            fresh.apply_selector_rule(new_selector_channels, index)
            self.allchannels = fresh.allchannels
        elif not self.apply_selector_rule(rule, index):
            raise AclRuleError("Syntax error")
        self._refresh(index)

    def _add_password(self, digest: bytes) -> None:
        self.nopass = False
        if digest not in self.passwords:
            self.passwords.append(digest)

    def _refresh(self, index: CommandIndex) -> None:
        # One selector allowing everything lets every command through.
        self.unrestricted = any(s.allkeys and s.allchannels and s.allowed >= index.units
                                for s in self.all_selectors())

    # -- checks ----------------------------------------------------------------------------
    def check_password(self, digest: bytes) -> bool:
        """Whether a password with this digest logs in (constant time per stored hash)."""
        ok = self.nopass
        for stored in self.passwords:
            ok = hmac.compare_digest(stored, digest) or ok  # no early exit
        return ok and self.enabled

    def command_allowed(self, unit: str) -> bool:
        """Whether one of the user's selectors allows the command unit (keys unchecked)."""
        return any(unit in s.allowed for s in self.all_selectors())

    def channel_allowed(self, channel: bytes, pattern: bool = False) -> bool:
        """Whether one of the user's selectors allows ``channel`` (see
        :meth:`Selector.allows_channel`)."""
        return any(s.allows_channel(channel, pattern) for s in self.all_selectors())

    # -- description -----------------------------------------------------------------------
    def flags(self) -> list[str]:
        """``ACL GETUSER``'s flags."""
        return ["on" if self.enabled else "off"] + (["nopass"] if self.nopass else [])

    def describe(self) -> bytes:
        """The user as one ``ACL LIST`` / ACL file line; passwords appear as hashes, extra
        selectors in parentheses after the root's rules."""
        parts = [b"user", self.name, b"on" if self.enabled else b"off"]
        if self.nopass:
            parts.append(b"nopass")
        parts += [b"#" + d.hex().encode() for d in self.passwords]
        parts += self.describe_words()
        parts += [b"(" + b" ".join(s.describe_words()) + b")" for s in self.selectors]
        return b" ".join(parts)


def _parse_hash(text: bytes) -> bytes:
    if len(text) != 64 or any(c not in b"0123456789abcdef" for c in text):
        raise AclRuleError("The password hash must be exactly 64 characters and contain "
                           "only lowercase hexadecimal characters")
    return bytes.fromhex(text.decode())


def _rule_for_error(rule: bytes) -> str:
    """The rule as an error may quote it: password rules are never echoed (nor a selector
    holding one, though a selector refuses them)."""
    if rule[:1] in (b">", b"<", b"#", b"!"):
        return rule[:1].decode() + "..."
    if rule[:1] == b"(" and any(w[:1] in (b">", b"<", b"#", b"!")
                                for w in rule.strip(b"()").split()):
        return "(...)"
    return rule[:128].decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True)
class Denial:
    """Why a user may not run a command: ``code`` orders the kinds as Redis (1 command,
    2 key, 4 channel), ``index`` is the argument denied."""

    code: int
    index: int
    reason: str  # "command", "key" or "channel" (the ACL LOG reason)
    object: bytes

    def noperm(self) -> str:
        """The NOPERM error text (Redis 7's)."""
        if self.reason == "command":
            return (f"this user has no permissions to run the "
                    f"'{self.object.decode('latin-1')}' command")
        if self.reason == "key":
            return "this user has no permissions to access one of the keys used as arguments"
        return "this user has no permissions to access one of the channels used as arguments"

    def dryrun(self) -> str:
        """The ACL DRYRUN answer (Redis 7's, naming the key or channel)."""
        text = self.object.decode("utf-8", "replace")
        if self.reason == "command":
            return f"This user has no permissions to run the '{text}' command"
        return f"This user has no permissions to access the '{text}' {self.reason}"


def merge_selectors(args: list[bytes]) -> list[bytes]:
    """Join the words of a ``(...)`` selector split over several arguments (``(~k`` ``+get)``
    is one rule ``(~k +get)``), as Redis' ACLMergeSelectorArguments."""
    out: list[bytes] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg[:1] == b"(" and arg[-1:] != b")":
            j = i + 1
            parts = [arg]
            while j < len(args) and args[j][-1:] != b")":
                parts.append(args[j])
                j += 1
            if j == len(args):
                raise AclRuleError(
                    f"Unmatched parenthesis in acl selector starting at "
                    f"'{_rule_for_error(arg)}'.")
            parts.append(args[j])
            out.append(b" ".join(parts))
            i = j + 1
        else:
            out.append(arg)
            i += 1
    return out


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
        for rule in merge_selectors(list(rules)):
            try:
                user.apply(rule, self.index, self.pubsub_default)
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
        if not name or any(c <= 32 or c == 127 for c in name):
            # Stricter than Redis (spaces, NUL): the ACL file is one user per line.
            raise AclRuleError("Usernames can't contain spaces or null characters")
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
        denial = self.evaluate(user, cmd, argv)
        if denial is None:
            return None
        self.record(denial.reason, context, denial.object, user.name, client)
        return NoPermissionError(denial.noperm())

    def evaluate(self, user: User, cmd: CommandSpec, argv: list[bytes]) -> Denial | None:
        """Why ``user`` may not run ``argv`` (None: it may). One selector must allow the
        command, every key with the access the command needs, and every channel; when
        none does, the reported denial is Redis': the worst kind (command < key <
        channel), then the one furthest in the arguments."""
        unit = self.index.unit(cmd, argv)
        keys: list[tuple[int, int]] | None = None
        worst: Denial | None = None
        first_arg = (f"{cmd.name}|{argv[1].lower().decode('latin-1')}"
                     if not cmd.subcommands and len(argv) > 1 else None)
        for selector in user.all_selectors():
            if unit not in selector.allowed and (first_arg is None
                                                 or first_arg not in selector.allowed):
                denial = Denial(1, 0, "command", unit.encode())
            else:
                if keys is None and not selector.allkeys:
                    keys = self.key_permissions(cmd, argv)
                found = self._check_selector(selector, cmd, argv, keys or [])
                if found is None:
                    return None
                denial = found
            if worst is None or (denial.code, denial.index) > (worst.code, worst.index):
                worst = denial
        return worst

    @staticmethod
    def key_permissions(cmd: CommandSpec, argv: list[bytes]) -> list[tuple[int, int]]:
        """(argument index, KEY_READ | KEY_WRITE bits needed) of every key of ``argv``:
        Redis' key specs; any key the command table names beyond them (and every key of a
        command Redis does not have) needs both read and write."""
        name = cmd.name
        if len(argv) > 1:
            sub = f"{cmd.name}|{argv[1].lower().decode('latin-1')}"
            if keyspecs.known(sub):
                name = sub
        found = keyspecs.keys_and_flags(name, argv, cmd.arity) or []
        out = [(i, keyspecs.needed(flags)) for i, flags in found]
        # Counted, not a set: a key named twice by our table but once by the specs has its
        # second use unaccounted for, so it needs both bits too.
        covered = collections.Counter(argv[i] for i, _ in out)
        for key in cmd.keys(argv):
            if covered[key] > 0:
                covered[key] -= 1
            else:
                out.append((argv.index(key, 1), KEY_ALL))
        return out

    @staticmethod
    def _check_selector(selector: Selector, cmd: CommandSpec, argv: list[bytes],
                        keys: list[tuple[int, int]]) -> Denial | None:
        if not selector.allkeys:
            if cmd.name in NEEDS_ALL_KEYS:
                return Denial(2, 0, "key", cmd.name.encode())
            for i, bits in keys:
                if not selector.allows_key(argv[i], bits):
                    return Denial(2, i, "key", argv[i])
        if not selector.allchannels and cmd.name in CHANNEL_ARGS:
            first, last, pattern = CHANNEL_ARGS[cmd.name]
            stop = len(argv) if last < 0 else min(last + 1, len(argv))
            for i in range(first, stop):
                if not selector.allows_channel(argv[i], pattern):
                    return Denial(4, i, "channel", argv[i])
        return None

    def full_key_access(self, user: User, cmd: CommandSpec, argv: list[bytes],
                        bits: int) -> bool:
        """Whether a selector that allows ``argv`` also allows every key with ``bits``
        (SORT BY/GET read keys it cannot name in advance: Redis'
        ACLUserCheckCmdWithUnrestrictedKeyAccess)."""
        if user.unrestricted:
            return True
        unit = self.index.unit(cmd, argv)
        keys: list[tuple[int, int]] | None = None
        for selector in user.all_selectors():
            if unit not in selector.allowed or not selector.allows_all_keys(bits):
                continue
            if keys is None and not selector.allkeys:
                keys = self.key_permissions(cmd, argv)
            if self._check_selector(selector, cmd, argv, keys or []) is None:
                return True
        return False

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
    "Denial",
    "KEY_ALL",
    "KEY_READ",
    "KEY_WRITE",
    "LogEntry",
    "Selector",
    "User",
    "client_info",
    "hash_password",
    "merge_selectors",
]
