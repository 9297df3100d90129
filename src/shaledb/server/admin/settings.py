"""The run-time view of the server settings: CONFIG GET and CONFIG SET.

Every parameter is one :class:`Setting` line in :data:`SETTINGS`: its Redis name (dashes),
the :class:`~shaledb.server.admin.config.ServerConfig` field behind it, a parser that turns the
CONFIG SET argument into the field's value (None: the parameter is immutable at run time),
and an optional apply hook for a change that needs more than the new config (appendfsync
switches the durability mode, timeout restarts the idle sweeper, ...) and an optional check
against the running server (maxclients must fit the open files limit). Settings whose value
lives elsewhere (``databases``, ``requirepass``) have a getter instead of a field.

CONFIG SET of several parameters is atomic, as in Redis 7: every argument is parsed, then
the whole new config is validated by building it (``ServerConfig.__post_init__``, so rules
between settings -- the query buffer must exceed the bulk length -- hold too); only then is
it installed and are the hooks run. Settings read per use (``maxclients``,
``protected-mode``, ``krange-max-limit``, ...) need no hook.

To add a parameter: add the ServerConfig field, then one line here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ...errors import InvalidArgument
from ..errors import CommandError
from ..glob import compile_glob
from ..keyspace.keyspace import DATABASES
from ..keyspace.notify import NotifyFlagsError, format_flags, parse_flags
from ..net.fdlimit import fit_maxclients
from ..net.ratelimit import CommandRateLimits
from ..net.security import parse_networks
from .config import (
    APPENDFSYNC_MODES,
    MAX_REPLICAS,
    MAX_TRACKED_HOSTS,
    MIN_AUTH_FAIL_RATE,
    MIN_BULK_LEN,
    MIN_COMMAND_RATE,
    MIN_REPL_TOTAL_OUTPUT,
    MIN_TIMEOUT,
)

if TYPE_CHECKING:
    from ..exec.context import Services

Parser = Callable[[bytes], Any]
Hook = Callable[["Services", Any], None]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One CONFIG parameter."""

    #: The name CONFIG GET/SET use (Redis' spelling, lower case with dashes).
    name: str
    #: The ServerConfig field that holds it (None: see ``get``).
    field: str | None
    #: CONFIG SET argument -> field value, raising ValueError with the reason; None: the
    #: parameter cannot change while the server runs.
    parse: Parser | None = None
    #: Run after the new config is installed, with the parsed value.
    apply: Hook | None = None
    #: The value for CONFIG GET when it is not simply the field's.
    get: Callable[[Services], Any] | None = None
    #: A check of the parsed value against the running server, before anything changes
    #: (raises ValueError with the reason).
    check: Hook | None = None

    @property
    def mutable(self) -> bool:
        """Whether CONFIG SET may change it."""
        return self.parse is not None

    def value(self, server: Services) -> bytes:
        """The CONFIG GET value."""
        if self.get is not None:
            return show(self.get(server))
        assert self.field is not None
        return show(getattr(server.config, self.field))


def show(value: Any) -> bytes:
    """A setting's value as redis.conf writes it: yes/no, integers without a fraction,
    ``""`` for unset, mappings as ``key value key value``."""
    if isinstance(value, bytes):
        return value
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"yes" if value else b"no"
    if isinstance(value, float):
        return b"%d" % value if value.is_integer() else repr(value).encode()
    if isinstance(value, dict):
        return b" ".join(show(k) + b" " + show(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return b" ".join(show(v) for v in value)
    return str(value).encode("utf-8")


# -- parsers -----------------------------------------------------------------------------------

_MEMORY = re.compile(rb"(\d+)(k|kb|m|mb|g|gb)?", re.IGNORECASE)
_UNITS: Final = {b"": 1, b"k": 1000, b"kb": 1024, b"m": 1000**2, b"mb": 1024**2,
                 b"g": 1000**3, b"gb": 1024**3}


def integer(minimum: int, maximum: int = 2**63 - 1) -> Parser:
    """An integer in [minimum, maximum]."""

    def parse(raw: bytes) -> int:
        if not re.fullmatch(rb"-?\d+", raw):
            raise ValueError("argument couldn't be parsed into an integer")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise ValueError(f"argument must be between {minimum} and {maximum} inclusive")
        return value

    return parse


def memory(minimum: int = 0) -> Parser:
    """A byte count with Redis' optional unit (``k`` = 1000, ``kb`` = 1024, ``m``, ``mb``,
    ``g``, ``gb``)."""

    def parse(raw: bytes) -> int:
        m = _MEMORY.fullmatch(raw)
        if m is None:
            raise ValueError("argument must be a memory value")
        value = int(m.group(1)) * _UNITS[(m.group(2) or b"").lower()]
        if value < minimum:
            raise ValueError(f"argument must be at least {minimum}")
        return value

    return parse


#: A plain decimal number with an optional exponent: float() alone also takes "1_0",
#: surrounding blanks, "nan" and "inf", which Redis refuses.
_DECIMAL = re.compile(rb"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def number(raw: bytes) -> float:
    """A finite number >= 0, written as a plain decimal."""
    if not _DECIMAL.fullmatch(raw):
        raise ValueError("argument couldn't be parsed into a number")
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError("argument must be a number >= 0")
    return value


def at_least(minimum: float) -> Parser:
    """A finite number >= ``minimum``."""

    def parse(raw: bytes) -> float:
        value = number(raw)
        if value < minimum:
            raise ValueError(f"argument must be a number >= {minimum:g}")
        return value

    return parse


def _timeout_seconds(raw: bytes) -> float:
    """0 (never) or a number of seconds >= MIN_TIMEOUT (a tiny one drops every idle
    connection at once, the admin's too)."""
    value = number(raw)
    if value and value < MIN_TIMEOUT:
        raise ValueError(f"argument must be 0 (never) or at least {MIN_TIMEOUT:g} seconds")
    return value


def _command_rate(raw: bytes) -> float:
    value = number(raw)
    if value < MIN_COMMAND_RATE:
        raise ValueError(f"a rate must be at least {MIN_COMMAND_RATE:g} command(s) per second")
    return value


def optional_rate(raw: bytes) -> float | None:
    """Commands per second >= MIN_COMMAND_RATE; ``""`` or ``0`` means no limit."""
    if not raw or number(raw) == 0:
        return None
    return _command_rate(raw)


def user_rates(raw: bytes) -> dict[str, float]:
    """``user rate [user rate ...]`` (``""``: nobody is limited)."""
    words = raw.split()
    if len(words) % 2:
        raise ValueError("argument must be pairs of user name and commands per second")
    rates: dict[str, float] = {}
    for name, rate in zip(words[::2], words[1::2], strict=True):
        rates[name.decode("utf-8", "replace")] = _command_rate(rate)
    return rates


def networks(raw: bytes) -> tuple[str, ...]:
    """Space-separated CIDRs (``""``: none)."""
    words = raw.decode("utf-8", "replace").split()
    return tuple(str(n) for n in parse_networks(words))


def yes_no(raw: bytes) -> bool:
    """``yes`` or ``no``."""
    low = raw.lower()
    if low not in (b"yes", b"no"):
        raise ValueError("argument must be 'yes' or 'no'")
    return low == b"yes"


def choice(*values: str) -> Parser:
    """One of ``values`` (case-insensitive)."""

    def parse(raw: bytes) -> str:
        text = raw.decode("utf-8", "replace").lower()
        if text not in values:
            raise ValueError("argument(s) must be one of the following: " + ", ".join(values))
        return text

    return parse


class FieldChanges(dict[str, Any]):
    """What a parser returns when one parameter sets several ServerConfig fields."""


def output_buffer_limit(raw: bytes) -> FieldChanges:
    """A byte count (the normal class's hard limit), or Redis' ``<class> <hard> <soft>
    <seconds>`` groups for the ``normal`` class (no soft limit: it must be ``0 0``) and
    the ``pubsub`` class (hard, soft, seconds)."""
    words = raw.split()
    if len(words) == 1:
        return FieldChanges(client_output_buffer_limit=int(memory()(words[0])))
    if not words or len(words) % 4:
        raise ValueError("Wrong number of arguments in buffer limit configuration.")
    out = FieldChanges()
    for i in range(0, len(words), 4):
        kind = words[i].lower()
        hard, soft = int(memory()(words[i + 1])), int(memory()(words[i + 2]))
        seconds = int(integer(0)(words[i + 3]))
        if kind == b"normal":
            if soft or seconds:
                raise ValueError("the normal class has only a hard limit: soft limit and "
                                 "seconds must be 0")
            out["client_output_buffer_limit"] = hard
        elif kind == b"pubsub":
            out["client_output_buffer_limit_pubsub"] = (hard, soft, seconds)
        elif kind in (b"replica", b"slave"):
            raise ValueError("ShaleDB has no replicas: set the normal or pubsub class")
        else:
            raise ValueError("Invalid client class specified in buffer limit configuration.")
    return out


def notify_events(raw: bytes) -> FieldChanges:
    """notify-keyspace-events: Redis' flag letters, stored in Redis' spelling."""
    try:
        flags = parse_flags(raw.decode("latin-1"))
    except NotifyFlagsError as exc:
        raise ValueError(str(exc)) from None
    return FieldChanges(notify_keyspace_events=format_flags(flags))


def password(raw: bytes) -> bytes:
    """Any password; ``""`` removes it."""
    return raw


# -- apply hooks -------------------------------------------------------------------------------

def _readers(server: Services, _: Any) -> None:
    cfg = server.config
    for conn in server.connections.values():
        conn.reader.max_bulk_len = cfg.proto_max_bulk_len
        conn.reader.max_query_buffer = cfg.client_query_buffer_limit


def _requirepass(server: Services, value: bytes) -> None:
    # As in Redis: the default user's password; existing connections stay logged in.
    user = server.acl.default
    index = server.acl.index
    user.apply(b"resetpass", index)
    user.apply(b">" + value if value else b"nopass", index)
    # Keep only the digest (in the ACL user), not the clear text, from now on.
    server.config = dataclasses.replace(server.config, requirepass=None)


def _show_requirepass(server: Services) -> bytes:
    # Redis returns the password itself. ShaleDB keeps only its SHA-256, and shows that in
    # the form ACL GETUSER / ACL LIST already show it to the same admins.
    user = server.acl.default
    if user.nopass or not user.passwords:
        return b""
    return b"#" + user.passwords[0].hex().encode()


def _acllog(server: Services, n: int) -> None:
    server.acl.log = type(server.acl.log)(server.acl.log, maxlen=n)


def _scan_cursors(server: Services, n: int) -> None:
    server.scan_cursors.limit = n


def _auth_limiter(server: Services, _: Any) -> None:
    cfg, limiter = server.config, server.acl.limiter
    limiter.burst, limiter.rate = cfg.auth_fail_burst, cfg.auth_fail_rate
    limiter.max_hosts = cfg.auth_fail_max_hosts
    server.auth_exempt = parse_networks(cfg.auth_fail_exempt_networks)


def _rate_limits(server: Services, _: Any) -> None:
    cfg = server.config
    server.rate_limits = CommandRateLimits(cfg.rate_limit_per_ip, cfg.rate_limit_users,
                                           cfg.rate_limit_max_hosts)


def _constant(value: Any) -> Callable[[Services], Any]:
    return lambda server: value


def _port(server: Services) -> int:
    return server.port if server.port is not None else server.config.port


def _dir(server: Services) -> str:
    return os.path.abspath(server.config.dir)


def _output_limit(server: Services) -> str:
    hard, soft, seconds = server.config.client_output_buffer_limit_pubsub
    return (f"normal {server.config.client_output_buffer_limit} 0 0 "
            f"pubsub {hard} {soft} {seconds}")


def _pubsub_default(server: Services, value: str) -> None:
    server.acl.pubsub_default = value.encode()


def _notify_flags(server: Services, _: Any) -> None:
    server.keyspace.notify_flags = parse_flags(server.config.notify_keyspace_events)


def _tls_port(server: Services) -> int:
    return server.tls_port or server.config.tls_port or 0


def _maxclients_fit(server: Services, n: int) -> None:
    fitted = fit_maxclients(n, server.db.options.max_open_files)
    if fitted < n:
        raise ValueError(f"The operating system is not able to handle the specified number "
                         f"of clients, try with {fitted}")


def _appendfsync(server: Services, mode: str) -> None:
    server.set_appendfsync(mode)


def _timeout(server: Services, _: Any) -> None:
    server.restart_idle_sweeper()


def _optional_text(raw: bytes) -> str | None:
    """Any text; ``""`` unsets it."""
    return raw.decode("utf-8", "replace") or None


def _show_masterauth(server: Services) -> bytes:
    # Never the password itself (Redis shows it): whether one is set.
    return b"" if server.config.masterauth is None else b"(set)"


def _replicaof(server: Services) -> bytes:
    repl = server.replication
    if repl.role != "slave" or repl.master_host is None:
        return b""
    return f"{repl.master_host} {repl.master_port}".encode()


def _sync_replicas_fixed_with_failover(server: Services, value: Any) -> None:
    # The election chose its promotion rule (sync mode, K) at start: a K changed under it
    # would acknowledge writes that the rule does not protect.
    if server.config.etcd is not None and value != server.config.sync_replicas:
        raise ValueError("sync-replicas cannot change while automatic failover (--etcd) "
                         "runs: restart the group's nodes with the new value")


def _sync_replicas(server: Services, _: Any) -> None:
    server.set_appendfsync(server.config.appendfsync)  # installs or removes the ack wait
    server.replication.sync_mode_changed()  # pins or releases the snapshot reads use


def _scrub_interval(server: Services, interval: float) -> None:
    server.scrubber.reschedule(interval)


def _backup_interval(server: Services, interval: float) -> None:
    server.backups.reschedule(interval)


def _backup_repo(server: Services) -> str:
    repo = server.config.backup_repo
    return "" if repo is None else os.path.abspath(repo)


# -- the registry: one line per parameter ----------------------------------------------------

def _no_snapshots(raw: bytes) -> None:
    if raw.strip():
        raise ValueError("can't set immutable config")


def _hint(name: str) -> Setting:
    """An encoding threshold of Redis (see ServerConfig.encoding_hints): kept and shown,
    no effect. ``*-ziplist-*`` are Redis' older names of the ``*-listpack-*`` ones."""
    stored = name.replace("ziplist", "listpack")

    def get(server: Services) -> int:
        return dict(server.config.encoding_hints)[stored]

    def apply(server: Services, value: Any) -> None:
        hints = dict(server.config.encoding_hints)
        hints[stored] = value
        server.config = dataclasses.replace(server.config,
                                            encoding_hints=tuple(hints.items()))

    return Setting(name, None, integer(-(2**63)), apply, get=get)


_HINTS: Final = tuple(_hint(n) for n in (
    "hash-max-listpack-entries", "hash-max-listpack-value", "hash-max-ziplist-entries",
    "hash-max-ziplist-value", "set-max-intset-entries", "zset-max-listpack-entries",
    "zset-max-listpack-value", "zset-max-ziplist-entries", "zset-max-ziplist-value",
    "list-max-listpack-size", "list-max-ziplist-size", "list-compress-depth",
    "stream-node-max-entries", "stream-node-max-bytes"))

SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("bind", "host"),
    Setting("port", "port", get=_port),
    Setting("dir", "dir", get=_dir),
    Setting("databases", None, get=_constant(DATABASES)),
    # No snapshots: the WAL is always on. Setting it to what it is ("") is accepted (test
    # harnesses and tools that turn snapshots off do that); anything else is immutable.
    Setting("save", None, _no_snapshots, get=_constant("")),
    Setting("appendonly", None, get=_constant(True)),
    Setting("maxmemory", None, get=_constant(0)),  # data lives on disk, not in memory
    Setting("appendfsync", "appendfsync", choice(*APPENDFSYNC_MODES), _appendfsync),
    Setting("maxclients", "maxclients", integer(1), check=_maxclients_fit),
    Setting("tcp-backlog", "tcp_backlog"),
    Setting("timeout", "timeout", _timeout_seconds, _timeout),
    Setting("auth-timeout", "auth_timeout", _timeout_seconds, _timeout),
    Setting("proto-max-bulk-len", "proto_max_bulk_len", memory(MIN_BULK_LEN), _readers),
    Setting("client-query-buffer-limit", "client_query_buffer_limit", memory(1024), _readers),
    Setting("client-output-buffer-limit", None, output_buffer_limit, get=_output_limit),
    Setting("acl-pubsub-default", "acl_pubsub_default",
            choice("resetchannels", "allchannels"), _pubsub_default),
    Setting("notify-keyspace-events", None, notify_events, _notify_flags,
            get=lambda server: server.config.notify_keyspace_events),
    Setting("requirepass", None, password, _requirepass, get=_show_requirepass),
    Setting("protected-mode", "protected_mode", yes_no),
    Setting("max-watched-keys", "max_watched_keys", integer(1, MAX_TRACKED_HOSTS)),
    Setting("max-subscriptions", "max_subscriptions", integer(1, 10_000_000)),
    Setting("max-multi-bytes", "max_multi_bytes", memory(1)),
    Setting("max-scan-cursors", "max_scan_cursors", integer(1), _scan_cursors),
    Setting("krange-max-limit", "krange_max_limit", integer(1)),
    Setting("busy-reply-threshold", "busy_reply_threshold", integer(0)),
    Setting("lua-time-limit", "busy_reply_threshold", integer(0)),  # Redis' old name
    Setting("lua-max-memory", "lua_max_memory", memory(1024 * 1024)),
    Setting("lua-max-script-bytes", "lua_max_script_bytes", memory(1)),
    Setting("lua-script-cache-bytes", "lua_script_cache_bytes", memory(0)),
    Setting("memtable-size", "memtable_size"),
    Setting("mmap-reads", "mmap_reads"),  # the database is opened with it
    Setting("encryption-key-file", "encryption_key_file"),  # the path; never the key
    Setting("aclfile", "aclfile"),
    Setting("acllog-max-len", "acllog_max_len", integer(1, 100_000), _acllog),
    Setting("auth-fail-burst", "auth_fail_burst", integer(1, MAX_TRACKED_HOSTS), _auth_limiter),
    Setting("auth-fail-rate", "auth_fail_rate", at_least(MIN_AUTH_FAIL_RATE), _auth_limiter),
    Setting("auth-fail-max-hosts", "auth_fail_max_hosts", integer(1, MAX_TRACKED_HOSTS),
            _auth_limiter),
    Setting("auth-fail-exempt-networks", "auth_fail_exempt_networks", networks,
            _auth_limiter),
    Setting("rate-limit-per-ip", "rate_limit_per_ip", optional_rate, _rate_limits),
    Setting("rate-limit-users", "rate_limit_users", user_rates, _rate_limits),
    Setting("rate-limit-max-hosts", "rate_limit_max_hosts", integer(1, MAX_TRACKED_HOSTS),
            _rate_limits),
    Setting("slowlog-log-slower-than", "slowlog_log_slower_than", integer(-1)),
    Setting("slowlog-max-len", "slowlog_max_len", integer(0, 100_000)),
    Setting("latency-monitor-threshold", "latency_monitor_threshold", integer(0)),
    Setting("scrub-interval", "scrub_interval", number, _scrub_interval),
    Setting("scrub-rate", "scrub_rate", memory(0)),  # read before every read of a pass
    # Immutable, as Redis 7 protects dir: a client that could point it anywhere could make
    # the server write the database's files (keys and values) there.
    Setting("backup-repo", "backup_repo", get=_backup_repo),
    Setting("backup-interval", "backup_interval", number, _backup_interval),
    Setting("backup-wal-archive", "backup_wal_archive"),  # the database is opened with it
    Setting("backup-repo-key-file", "backup_repo_key_file"),  # the path; never the key
    Setting("hz", "hz"),  # the active-expiry task takes it at start
    # Failover (read-only: the election runs with what it started with).
    Setting("etcd", "etcd"),
    Setting("group", "group"),
    Setting("node-name", "node_name"),
    Setting("failover-ttl", "failover_ttl"),
    Setting("failover-safety-margin", "failover_safety_margin"),
    Setting("failover-announce-host", "failover_announce_host"),
    Setting("failover-announce-port", "failover_announce_port"),
    Setting("active-expire-effort", "active_expire_effort"),
    Setting("metrics-host", "metrics_host"),
    Setting("metrics-port", "metrics_port"),
    Setting("metrics-header-timeout", "metrics_header_timeout"),
    Setting("log-format", "log_format"),
    Setting("log-level", "log_level"),
    Setting("tls-port", "tls_port", get=_tls_port),
    Setting("tls-cert-file", "tls_cert_file"),
    Setting("tls-key-file", "tls_key_file"),
    Setting("tls-ca-cert-file", "tls_ca_cert_file"),
    Setting("tls-auth-clients", "tls_auth_clients"),
    Setting("tls-only", "tls_only"),
    Setting("tls-handshake-timeout", "tls_handshake_timeout"),
    # Replication (REPLICAOF changes the primary; CONFIG GET shows the current one).
    Setting("replicaof", None, get=_replicaof),
    Setting("masteruser", "masteruser", _optional_text),
    Setting("masterauth", "masterauth", _optional_text, get=_show_masterauth),
    Setting("master-tls", "master_tls", yes_no),
    Setting("repl-backlog-size", "repl_backlog_size"),  # the backlog is sized at start
    Setting("repl-timeout", "repl_timeout", number),
    # Checked at every SHALEDB.PSYNC and every send (links already fed stay when lowered).
    Setting("max-replicas", "max_replicas", integer(1, MAX_REPLICAS)),
    Setting("repl-total-output-limit", "repl_total_output_limit",
            memory(MIN_REPL_TOTAL_OUTPUT)),
    Setting("sync-replicas", "sync_replicas", integer(0, 1000), _sync_replicas,
            check=_sync_replicas_fixed_with_failover),
    Setting("sync-replicas-timeout", "sync_replicas_timeout", number),
    Setting("sync-replicas-refuse", "sync_replicas_refuse", yes_no),
    *_HINTS,
)

BY_NAME: Final = {s.name: s for s in SETTINGS}


# -- CONFIG GET / SET ----------------------------------------------------------------------

def config_get(server: Services, patterns: list[bytes]) -> dict[bytes, bytes]:
    """The parameters matching any of the glob ``patterns`` (case-insensitive), by name."""
    found: dict[bytes, bytes] = {}
    for pattern in patterns:
        low = pattern.lower()
        exact = BY_NAME.get(low.decode("utf-8", "replace"))
        if exact is not None:
            found[exact.name.encode()] = exact.value(server)
            continue
        match = compile_glob(low)
        for s in SETTINGS:
            name = s.name.encode()
            if name not in found and match(name):
                found[name] = s.value(server)
    return found


def _failed(name: bytes, reason: str) -> CommandError:
    return CommandError(f"CONFIG SET failed (possibly related to argument "
                        f"'{name.decode('utf-8', 'replace')}') - {reason}")


def config_set(server: Services, pairs: list[tuple[bytes, bytes]]) -> None:
    """Set every ``(name, value)`` pair or none: all are parsed and the new config is
    validated as a whole before it is installed and the apply hooks run."""
    changes: dict[str, Any] = {}
    hooks: list[tuple[Setting, Any]] = []
    seen: set[str] = set()
    for raw_name, raw in pairs:
        setting = BY_NAME.get(raw_name.lower().decode("utf-8", "replace"))
        if setting is None:
            raise CommandError(f"Unknown option or number of arguments for CONFIG SET - "
                               f"'{raw_name.decode('utf-8', 'replace')}'")
        if setting.name in seen:
            raise _failed(raw_name, "duplicate parameter")
        seen.add(setting.name)
        if setting.parse is None:
            raise _failed(raw_name, "can't set immutable config")
        try:
            value = setting.parse(raw)
            if setting.check is not None:
                setting.check(server, value)
        except ValueError as exc:
            raise _failed(raw_name, str(exc)) from None
        if setting.field is not None:
            changes[setting.field] = value
        elif isinstance(value, FieldChanges):
            changes.update(value)
        hooks.append((setting, value))
    try:
        new = dataclasses.replace(server.config, **changes)
    except InvalidArgument as exc:
        raise _failed(pairs[0][0], str(exc)) from None
    server.config = new
    for setting, value in hooks:
        if setting.apply is not None:
            setting.apply(server, value)


__all__ = ["BY_NAME", "SETTINGS", "Setting", "config_get", "config_set", "show"]
