"""Server settings: one validated, frozen dataclass, loadable from a TOML file.

Names follow redis.conf where Redis has the setting (``maxclients``, ``timeout``,
``proto-max-bulk-len``, ``client-query-buffer-limit``, ``appendfsync``, ``requirepass``);
in TOML either spelling works (``proto-max-bulk-len`` or ``proto_max_bulk_len``). The
password can also come from the environment variable ``SHALEDB_REQUIREPASS``, so it never has
to be written into a file or a command line; the path of the database's encryption key file
from ``SHALEDB_ENCRYPTION_KEY_FILE`` (the key itself is never a setting: only the path of a
file only its owner may read).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from typing import Any, Final

from ...errors import InvalidArgument
from ..cluster.etcd import parse_endpoints
from ..cluster.group import check_name
from ..keyspace.keyspace import MAX_USER_VALUE
from ..keyspace.notify import NotifyFlagsError, parse_flags
from ..net.security import parse_networks

KiB: Final = 1024
MiB: Final = 1024 * KiB
#: The least repl-total-output-limit: one link's own bound (an 8 MiB window plus a 1 MiB
#: read, exec/replication.py) and a frame header, so that one replica alone is never
#: dropped by the total.
MIN_REPL_TOTAL_OUTPUT: Final = 10 * MiB
#: The most max-replicas.
MAX_REPLICAS: Final = 10_000

APPENDFSYNC_MODES: Final = ("always", "everysec", "no")
TLS_AUTH_CLIENTS_MODES: Final = ("yes", "no", "optional")
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: Default port of the HTTP endpoint of /metrics and /health.
DEFAULT_METRICS_PORT: Final = 9380
#: metrics_port values (in a TOML file or on the command line) that turn the endpoint off.
METRICS_OFF: Final = (-1, "-1", "off", "no", "none")
#: Environment variable read for the password when the config sets none.
PASSWORD_ENV: Final = "SHALEDB_REQUIREPASS"
#: Environment variable read for the encryption key file when the config sets none.
KEY_FILE_ENV: Final = "SHALEDB_ENCRYPTION_KEY_FILE"
#: Environment variable read for the backup repository when the config sets none.
BACKUP_REPO_ENV: Final = "SHALEDB_BACKUP_REPO"
#: Environment variable holding the password a replica gives its primary (masterauth).
MASTERAUTH_ENV: Final = "SHALEDB_MASTERAUTH"
#: Environment variable read for the backup repository's own key file when the config sets
#: none.
BACKUP_REPO_KEY_FILE_ENV: Final = "SHALEDB_BACKUP_REPO_KEY_FILE"
#: Lowest command rate limit (per IP, per user), in commands per second: a lower one held a
#: client (the admin among them) for up to 1/rate seconds per command -- 1e-300 for ever.
MIN_COMMAND_RATE: Final = 1.0
#: Lowest failed-AUTH refill rate: a client over its burst waits at most 1/rate seconds.
MIN_AUTH_FAIL_RATE: Final = 0.001
#: Most client IPs a limiter remembers (each ~200 bytes), and the largest AUTH burst.
MAX_TRACKED_HOSTS: Final = 1_000_000
#: Smallest proto-max-bulk-len: below it the admin could not even send the CONFIG SET that
#: undoes it (Redis' own minimum is 1 MB).
MIN_BULK_LEN: Final = 1024
#: Smallest nonzero timeout / auth-timeout, in seconds: the idle sweeper looks every
#: timeout/4 (at least every 10 ms), so 1e-300 closed every connection as soon as it was
#: idle -- pooled clients, redis-cli between two commands, the admin who would undo it.
#: (Redis' timeout is whole seconds.)
MIN_TIMEOUT: Final = 0.5


def _rate(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and MIN_COMMAND_RATE <= value < float("inf"))


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything that configures ``shaledb serve``. Every limit is on by default."""

    #: Address to listen on. The default accepts only local clients.
    host: str = "127.0.0.1"
    #: TCP port (0 = pick a free one; the server reports which).
    port: int = 6380
    #: Database directory (created when missing).
    dir: str = "./data"
    #: Most client connections at once; one more gets ``-ERR max number of clients reached``.
    maxclients: int = 10_000
    #: Length of each listening socket's queue of connections not yet accepted (the kernel
    #: caps it at net.core.somaxconn). Larger than Redis' 511: a burst of connections (a
    #: reset storm, a pool reconnecting) that arrives while the event loop is busy would
    #: otherwise overflow it, and each dropped SYN costs a client a 1 s retransmission.
    tcp_backlog: int = 4096
    #: Seconds a client may stay idle before the server closes its connection (0 = never,
    #: the default, as in Redis: pooled connections may idle for hours).
    timeout: float = 0.0
    #: Seconds a connection may stay without ever authenticating, while the default user
    #: needs a password, before the server closes it (0 = never). Bounds what silent
    #: connections (slowloris) can hold of maxclients, whatever ``timeout`` is.
    auth_timeout: float = 30.0
    #: Longest single argument (key or value) in bytes; longer closes the connection with
    #: ``-ERR Protocol error: invalid bulk length``. Also the largest string a command may
    #: build (APPEND, SETRANGE).
    proto_max_bulk_len: int = 32 * MiB
    #: Most bytes of not-yet-complete requests buffered per client; past it the connection
    #: is closed. Must exceed proto_max_bulk_len.
    client_query_buffer_limit: int = 64 * MiB
    #: Most keys one client may WATCH at once (``-ERR`` beyond it).
    max_watched_keys: int = 10_000
    #: Most channels, patterns and shard channels one client may be subscribed to at once
    #: (``-ERR`` beyond it, nothing subscribed; Redis has no limit). Each costs the server
    #: memory for as long as the client stays connected.
    max_subscriptions: int = 100_000
    #: Most bytes of commands queued by one MULTI (the transaction is aborted beyond it).
    max_multi_bytes: int = 64 * MiB
    #: Most SCAN cursors remembered per client (and for the clients that disconnected,
    #: together), within 4 MiB of positions each; that client's least recently used are
    #: dropped (using a dropped cursor gives ``-ERR invalid cursor``).
    max_scan_cursors: int = 10_000
    #: Largest and default LIMIT of KRANGE (bounds the size of one reply).
    krange_max_limit: int = 10_000
    #: Milliseconds a Lua script runs before other clients get ``-BUSY`` (and SCRIPT KILL
    #: may stop it); Redis' busy-reply-threshold / lua-time-limit. 0: never BUSY.
    busy_reply_threshold: int = 5000
    #: Most memory of the Lua state, in bytes (an allocation past it fails the script).
    lua_max_memory: int = 64 * MiB
    #: Largest script body or function library accepted (EVAL, SCRIPT LOAD, FUNCTION LOAD).
    lua_max_script_bytes: int = 4 * MiB
    #: Most bytes of script bodies cached for EVALSHA; past it the least recently used
    #: scripts cached by EVAL are dropped (SCRIPT LOAD's stay).
    lua_script_cache_bytes: int = 64 * MiB
    #: "always": every reply to a write waits for the WAL fsync (one fsync for all writes
    #: of one event-loop turn); "everysec": the engine fsyncs at least once a second;
    #: "no": the OS decides. Writes always reach the OS before the reply, so all three
    #: survive a crash of the server process; only "always" survives power loss.
    appendfsync: str = "everysec"
    #: Password of the ``default`` user; None: no authentication.
    requirepass: str | None = dataclasses.field(default=None, repr=False)
    #: Memtable size handed to the engine (None: the engine's default).
    memtable_size: int | None = None
    #: The engine's ``mmap_reads``: tables read through read-only maps (the event loop keeps
    #: the GIL while a flush or compaction thread runs). False: ``pread``, so a device read
    #: error is an error reply instead of a SIGBUS that ends the server (docs/design.md).
    mmap_reads: bool = True
    #: Key file of an encrypted database (32 raw bytes or 64 hex characters, mode 0600):
    #: ``dir`` is opened, or created, encrypted with it (docs/security.md). None: a plain
    #: database (an encrypted one then refuses to open). The key is read once at start.
    encryption_key_file: str | None = None
    #: Refuse clients from non-loopback addresses while the default user needs no password
    #: (``-DENIED``, connection closed). Turn off only on a trusted network.
    protected_mode: bool = True
    #: ACL file: read at start when it exists, written by ACL SAVE, read by ACL LOAD
    #: (None: ACL users live only until shutdown). Its users override requirepass.
    aclfile: str | None = None
    #: Most entries of ACL LOG (the oldest are dropped).
    acllog_max_len: int = 128
    #: Failed AUTH attempts per client IP: this many at once ...
    auth_fail_burst: int = 10
    #: ... then this many per second (token bucket); beyond it AUTH answers an error
    #: without checking the password.
    auth_fail_rate: float = 1.0
    #: Most client IPs whose failed attempts are remembered (least recently used dropped).
    auth_fail_max_hosts: int = 10_000
    #: Networks (CIDRs, at most 256) whose clients the failed-AUTH limit spares: a NAT
    #: gateway many good clients share, the admin's own host. None by default: a shared IP
    #: shares its bucket, so one client's failures can lock out the others behind it.
    auth_fail_exempt_networks: tuple[str, ...] = ()
    #: TLS port on ``host`` (None: no TLS; 0: pick a free one). Needs the two files below.
    tls_port: int | None = None
    #: Server certificate chain (PEM) and its private key (PEM, not encrypted).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: CA certificates (PEM) that client certificates must chain to.
    tls_ca_cert_file: str | None = None
    #: Client certificates: "yes" required (the default, as in Redis), "optional" (checked
    #: when sent), "no" (not asked for). "yes" and "optional" need tls_ca_cert_file.
    tls_auth_clients: str = "yes"
    #: Serve only the TLS port: no plain-text listener at all.
    tls_only: bool = False
    #: Seconds a client gets to complete the TLS handshake before it is dropped.
    tls_handshake_timeout: float = 10.0
    #: Ticks per second of the background active-expiry sweeper (1-500, as Redis' hz).
    hz: int = 10
    #: Active-expiry effort (1-10, as Redis'): each tick reads up to 2,000 x effort entries
    #: and spends at most 25 + 2 x (effort - 1) percent of the tick's period.
    active_expire_effort: int = 1
    #: Commands that run at least this many microseconds go to the slow log (SLOWLOG GET);
    #: 0 logs every command, -1 none. Read at each command, so it can change at run time.
    slowlog_log_slower_than: int = 10_000
    #: Most slow-log entries kept (the oldest are dropped); each is at most ~5 KiB.
    slowlog_max_len: int = 128
    #: Commands that take at least this many milliseconds are latency events (LATENCY
    #: LATEST / HISTORY); 0, the default as in Redis, records none.
    latency_monitor_threshold: int = 0
    #: Redis' encoding thresholds (hash-max-listpack-entries and -value, set-max-intset-
    #: entries, zset-max-listpack-entries and -value, list-max-listpack-size,
    #: list-compress-depth and their ziplist aliases): accepted and shown by CONFIG so that
    #: tools and tests that tune them work, with no effect: every hash or set has the one
    #: encoding of docs/format.md, whatever its size.
    encoding_hints: tuple[tuple[str, int], ...] = (
        ("hash-max-listpack-entries", 128), ("hash-max-listpack-value", 64),
        ("set-max-intset-entries", 512), ("zset-max-listpack-entries", 128),
        ("zset-max-listpack-value", 64), ("list-max-listpack-size", -2),
        ("list-compress-depth", 0),
        # Streams: stream-node-max-entries does act, on approximate trimming (see
        # commands/streams.py); the byte bound is only shown.
        ("stream-node-max-entries", 100), ("stream-node-max-bytes", 4096))
    #: Address and port of the HTTP endpoint serving GET /metrics (Prometheus) and GET
    #: /health. Port None turns it off (-1 or "off" in the TOML file or on the command
    #: line); 0 picks a free port, which the server reports.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = DEFAULT_METRICS_PORT
    #: Seconds an HTTP client of the metrics endpoint gets to send its request head.
    metrics_header_timeout: float = 5.0
    #: Server log lines: "text" (human readable) or "json" (one object per line).
    log_format: str = "text"
    #: Least severe log level written: debug, info, warning, error.
    log_level: str = "info"
    #: Most bytes of replies waiting to be sent to one client (the transport's buffer plus
    #: the reply being queued); past it the client is disconnected, as by Redis'
    #: ``client-output-buffer-limit`` hard limit. KEYS stops building its reply at this size.
    #: 0 disables it. 256 MiB: eight replies of the largest value (proto_max_bulk_len).
    client_output_buffer_limit: int = 256 * MiB
    #: The ``pubsub`` class of client-output-buffer-limit: (hard, soft, soft seconds) for a
    #: client with a subscription, as Redis' default ``pubsub 32mb 8mb 60``: past the hard
    #: limit, or above the soft one for longer than the seconds, the subscriber is
    #: disconnected (a subscriber that stops reading cannot grow the server's memory).
    #: 0 turns a limit off.
    client_output_buffer_limit_pubsub: tuple[int, int, int] = (32 * MiB, 8 * MiB, 60)
    #: Keyspace notifications (Redis' notify-keyspace-events flag letters; "" = off).
    notify_keyspace_events: str = ""
    #: The channel permissions a new ACL user starts with: "resetchannels" (none, Redis 7's
    #: default) or "allchannels".
    acl_pubsub_default: str = "resetchannels"
    #: Commands per second per client IP (None: no limit). A client over it is slowed down
    #: (the server stops reading from it until a token is due), never sent an error.
    rate_limit_per_ip: float | None = None
    #: Commands per second per ACL user name (users not listed are not limited).
    rate_limit_users: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Most client IPs whose command rate is tracked (least recently used dropped).
    rate_limit_max_hosts: int = 10_000
    #: Seconds between the starts of background scrub passes (a rate-limited re-read and
    #: check of every table, the manifest and the WAL; findings in INFO, /metrics, /health).
    #: 0, the default, schedules none (SCRUB NOW still runs one): a pass costs disk
    #: bandwidth, CPU shared with the event loop and page cache for hours on a large
    #: database, and only the operator knows when and how often that is worth it.
    scrub_interval: float = 0.0
    #: Most bytes per second a scrub pass reads (0: no limit). 16 MiB/s: ~1.8 h per 100 GiB,
    #: about a tenth of a core (measured: README, "Operating the server").
    scrub_rate: int = 16 * MiB
    #: Backup repository (a directory, created when missing; docs/operations.md) that
    #: BGSAVE, SAVE and the schedule back up into. None: no backups (BGSAVE answers an
    #: error). Only from the config file, the command line or ``SHALEDB_BACKUP_REPO``:
    #: CONFIG SET cannot change it (a client could otherwise point it anywhere the server
    #: may write, as Redis 7 protects ``dir``). It may not lie inside ``dir``, nor ``dir``
    #: inside it.
    backup_repo: str | None = None
    #: Seconds between the starts of scheduled backups (0, the default: none scheduled;
    #: BGSAVE still takes one). Needs backup_repo.
    backup_interval: float = 0.0
    #: With backup_repo: open the database with its WAL archived into the same repository
    #: (every WAL segment is copied there before it is deleted), so a point-in-time restore
    #: (``shaledb restore --until``) reaches any write after the first backup.
    backup_wal_archive: bool = True
    #: With backup_repo: the repository's own key file (docs/security.md, "Backup
    #: repositories"). A new repository is created encrypted with it; an existing one must
    #: be encrypted with it (and one that is needs it). Read at start; CONFIG GET shows the
    #: path, never the key, and CONFIG SET cannot change it.
    backup_repo_key_file: str | None = None
    #: Replication (docs/operations.md, "Replication"): ``"host port"`` of the primary this
    #: server replicates at start (REPLICAOF changes it at run time); None: a primary.
    replicaof: str | None = None
    #: The ACL user and password a replica authenticates to its primary with (Redis'
    #: masteruser / masterauth); the password is never shown by CONFIG GET.
    masteruser: str | None = None
    masterauth: str | None = dataclasses.field(default=None, repr=False)
    #: Connect to the primary with TLS (its tls-port), checking its certificate against
    #: tls_ca_cert_file and presenting tls_cert_file / tls_key_file when set.
    master_tls: bool = False
    #: Bytes of recent write groups a primary keeps for partial resyncs (a replica that
    #: falls further behind resyncs fully).
    repl_backlog_size: int = 16 * MiB
    #: Seconds without a byte from the other side after which a replication link is
    #: dropped (both ends; the primary sends a heartbeat every second).
    repl_timeout: float = 60.0
    #: Most replicas a primary feeds at once: SHALEDB.PSYNC past it is refused (-ERR max
    #: number of replicas reached), so fake or forgotten replicas cannot each pin a snapshot
    #: and a window of unsent stream.
    max_replicas: int = 16
    #: Most bytes of replication stream unsent to all replicas together (each link also
    #: has its own bound, about 9 MiB): a send that would pass it first drops the link
    #: furthest behind, which resyncs later (Redis' client-output-buffer-limit replica
    #: class, but for all replicas together).
    repl_total_output_limit: int = 16 * MiB
    #: Synchronous replication: a write is acknowledged only once this many replicas have
    #: it durably (0: asynchronous replication).
    sync_replicas: int = 0
    #: Seconds a write waits for the sync_replicas acknowledgements before its client is
    #: answered -NOREPLICAS (the write is applied on the primary: it may be lost in a
    #: failover, and the client is told so).
    sync_replicas_timeout: float = 10.0
    #: With sync_replicas: refuse writes (-NOREPLICAS) while fewer replicas are connected
    #: (yes, the default), or accept them and let them wait for the timeout (no).
    sync_replicas_refuse: bool = True
    #: Automatic failover (docs/operations.md, "Failover with etcd"): etcd client URL(s),
    #: comma-separated (http://127.0.0.1:2379). None: no failover. With it, this node joins
    #: ``group`` as ``node_name`` and writes only while it holds the group's leader lease.
    etcd: str | None = None
    #: The replication group (with etcd): also the Sentinel master name clients ask for.
    group: str | None = None
    #: This node's name in the group (with etcd; unique in the group).
    node_name: str | None = None
    #: Seconds of the leader lease: a dead primary is replaced after about this long, and a
    #: primary that cannot renew stops writing failover_safety_margin seconds before it.
    failover_ttl: int = 10
    failover_safety_margin: float = 2.0
    #: The address published in etcd for clients and replicas (default: host, which must
    #: then be a specific address, not 0.0.0.0 or ::).
    failover_announce_host: str | None = None
    #: The port published in etcd (default: the port listened on). Set when clients and
    #: replicas reach this node through a forwarder (the Jepsen-style harness's proxies).
    failover_announce_port: int | None = None

    def __post_init__(self) -> None:
        def integer(name: str, minimum: int, maximum: int | None = None) -> None:
            value = getattr(self, name)
            if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
                    or (maximum is not None and value > maximum)):
                bound = f" and <= {maximum}" if maximum is not None else ""
                raise InvalidArgument(
                    f"server setting {name} must be an integer >= {minimum}{bound}, "
                    f"got {value!r}")

        if not isinstance(self.host, str) or not self.host:
            raise InvalidArgument("server setting host must be a non-empty string")
        if not isinstance(self.dir, str) or not self.dir:
            raise InvalidArgument("server setting dir must be a non-empty path")
        integer("port", 0, 65535)
        integer("maxclients", 1)
        integer("tcp_backlog", 1, 65535)
        integer("proto_max_bulk_len", MIN_BULK_LEN, MAX_USER_VALUE)
        integer("client_query_buffer_limit", 1024)
        integer("repl_backlog_size", 16 * KiB)
        integer("sync_replicas", 0, 1000)
        integer("max_replicas", 1, MAX_REPLICAS)
        integer("repl_total_output_limit", MIN_REPL_TOTAL_OUTPUT)
        for name in ("repl_timeout", "sync_replicas_timeout"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 < value < float("inf")):
                raise InvalidArgument(f"server setting {name} must be a number of seconds "
                                      f"> 0, got {value!r}")
        if self.replicaof is not None:
            parse_replicaof(self.replicaof)
        integer("max_watched_keys", 1, MAX_TRACKED_HOSTS)
        integer("max_subscriptions", 1, 10_000_000)
        integer("max_multi_bytes", 1)
        integer("max_scan_cursors", 1)
        integer("krange_max_limit", 1)
        integer("busy_reply_threshold", 0)
        integer("lua_max_memory", 1 * MiB)
        integer("lua_max_script_bytes", 1)
        integer("lua_script_cache_bytes", 0)
        integer("hz", 1, 500)
        integer("active_expire_effort", 1, 10)
        if self.memtable_size is not None:
            integer("memtable_size", 64 * KiB)
        if self.client_query_buffer_limit <= self.proto_max_bulk_len:
            raise InvalidArgument(
                "server setting client_query_buffer_limit must exceed proto_max_bulk_len")
        for name in ("timeout", "auth_timeout"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not (value == 0 or MIN_TIMEOUT <= value < float("inf"))):
                raise InvalidArgument(f"server setting {name} must be 0 (never) or a number "
                                      f"of seconds at least {MIN_TIMEOUT:g}")
        if self.appendfsync not in APPENDFSYNC_MODES:
            raise InvalidArgument(
                f"server setting appendfsync must be one of {', '.join(APPENDFSYNC_MODES)}, "
                f"got {self.appendfsync!r}")
        integer("acllog_max_len", 1, 100_000)  # each denial scans the log to group it
        integer("auth_fail_burst", 1, MAX_TRACKED_HOSTS)
        integer("auth_fail_max_hosts", 1, MAX_TRACKED_HOSTS)
        if (isinstance(self.auth_fail_rate, bool)
                or not isinstance(self.auth_fail_rate, (int, float))
                or not MIN_AUTH_FAIL_RATE <= self.auth_fail_rate < float("inf")):
            raise InvalidArgument(f"server setting auth_fail_rate must be a number of "
                                  f"attempts per second >= {MIN_AUTH_FAIL_RATE:g}")
        nets: object = self.auth_fail_exempt_networks  # a list from TOML, a tuple here
        try:
            if isinstance(nets, str) or not isinstance(nets, (list, tuple)):
                raise ValueError(f"expected a list of networks, got {nets!r}")
            parsed = parse_networks(nets)
        except ValueError as exc:
            raise InvalidArgument(
                f"server setting auth_fail_exempt_networks must list networks as CIDRs "
                f"(TOML: auth-fail-exempt-networks = [\"10.0.0.0/8\", \"::1/128\"]): "
                f"{exc}") from None
        object.__setattr__(self, "auth_fail_exempt_networks", tuple(str(n) for n in parsed))
        if self.aclfile is not None and (not isinstance(self.aclfile, str) or not self.aclfile):
            raise InvalidArgument("server setting aclfile must be a non-empty path")
        if self.encryption_key_file is not None and (
                not isinstance(self.encryption_key_file, str) or not self.encryption_key_file):
            raise InvalidArgument("server setting encryption_key_file must be a non-empty "
                                  "path (of a key file, never the key itself)")
        self._check_backups()
        self._check_failover()
        self._check_tls()
        self._check_observability()
        self._check_output_and_rates()
        if not isinstance(self.protected_mode, bool):
            raise InvalidArgument("server setting protected_mode must be true or false")
        if self.requirepass is not None and (
                not isinstance(self.requirepass, str) or not self.requirepass):
            raise InvalidArgument("server setting requirepass must be a non-empty string")

    def _check_output_and_rates(self) -> None:
        pubsub: object = self.client_output_buffer_limit_pubsub
        if (not isinstance(pubsub, (tuple, list)) or len(pubsub) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pubsub)):
            raise InvalidArgument(
                f"server setting client_output_buffer_limit_pubsub must be three integers "
                f">= 0 (hard bytes, soft bytes, soft seconds), got {pubsub!r}")
        object.__setattr__(self, "client_output_buffer_limit_pubsub", tuple(pubsub))
        if self.acl_pubsub_default not in ("resetchannels", "allchannels"):
            raise InvalidArgument("server setting acl_pubsub_default must be resetchannels "
                                  f"or allchannels, got {self.acl_pubsub_default!r}")
        try:
            parse_flags(self.notify_keyspace_events)
        except (NotifyFlagsError, TypeError):
            raise InvalidArgument(
                f"server setting notify_keyspace_events must be Redis' flag letters "
                f"(Ag$lshzxeKEtmdn), got {self.notify_keyspace_events!r}") from None
        limit = self.client_output_buffer_limit
        if (not isinstance(limit, int) or isinstance(limit, bool)
                or not (limit == 0 or limit >= KiB)):
            raise InvalidArgument(
                f"server setting client_output_buffer_limit must be 0 (no limit) or an "
                f"integer >= {KiB} bytes, got {limit!r}")
        if self.rate_limit_per_ip is not None and not _rate(self.rate_limit_per_ip):
            raise InvalidArgument(
                f"server setting rate_limit_per_ip must be a number of commands per second "
                f">= {MIN_COMMAND_RATE:g}, or unset for no limit; got {self.rate_limit_per_ip!r}")
        users = self.rate_limit_users
        if not isinstance(users, dict) or not all(
                isinstance(k, str) and k and _rate(v) for k, v in users.items()):
            raise InvalidArgument(
                f"server setting rate_limit_users must map user names to commands per second "
                f">= {MIN_COMMAND_RATE:g} (TOML: [server.rate-limit-users] alice = 100); "
                f"got {users!r}")
        if (not isinstance(self.rate_limit_max_hosts, int)
                or isinstance(self.rate_limit_max_hosts, bool)
                or not 1 <= self.rate_limit_max_hosts <= MAX_TRACKED_HOSTS):
            raise InvalidArgument(f"server setting rate_limit_max_hosts must be an integer "
                                  f">= 1 and <= {MAX_TRACKED_HOSTS}")
        if (isinstance(self.scrub_interval, bool)
                or not isinstance(self.scrub_interval, (int, float))
                or not 0 <= self.scrub_interval < float("inf")):
            raise InvalidArgument(
                f"server setting scrub_interval must be a number of seconds >= 0 (0: no "
                f"scheduled scrub), got {self.scrub_interval!r}")
        if (not isinstance(self.scrub_rate, int) or isinstance(self.scrub_rate, bool)
                or self.scrub_rate < 0):
            raise InvalidArgument(
                f"server setting scrub_rate must be an integer number of bytes per second "
                f">= 0 (0: no limit), got {self.scrub_rate!r}")

    def _check_backups(self) -> None:
        if self.backup_repo is not None and (
                not isinstance(self.backup_repo, str) or not self.backup_repo):
            raise InvalidArgument("server setting backup_repo must be a non-empty path (a "
                                  "directory)")
        if (isinstance(self.backup_interval, bool)
                or not isinstance(self.backup_interval, (int, float))
                or not 0 <= self.backup_interval < float("inf")):
            raise InvalidArgument(
                f"server setting backup_interval must be a number of seconds >= 0 (0: no "
                f"scheduled backup), got {self.backup_interval!r}")
        if self.backup_interval and self.backup_repo is None:
            raise InvalidArgument("server setting backup_interval needs backup_repo (the "
                                  "repository the scheduled backups go to)")
        if not isinstance(self.mmap_reads, bool):
            raise InvalidArgument("server setting mmap_reads must be true or false")
        if not isinstance(self.backup_wal_archive, bool):
            raise InvalidArgument("server setting backup_wal_archive must be true or false")
        if self.backup_repo_key_file is not None and (
                not isinstance(self.backup_repo_key_file, str) or not self.backup_repo_key_file):
            raise InvalidArgument("server setting backup_repo_key_file must be a non-empty "
                                  "path (a key file)")
        if self.backup_repo_key_file is not None and self.backup_repo is None:
            raise InvalidArgument("server setting backup_repo_key_file needs backup_repo (the "
                                  "repository it encrypts)")

    def _check_failover(self) -> None:
        fields = {"etcd": self.etcd, "group": self.group, "node_name": self.node_name}
        for name, value in fields.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidArgument(f"server setting {name} must be a non-empty string")
        if self.etcd is None:
            extra = [n for n in ("group", "node_name") if fields[n] is not None]
            if extra:
                raise InvalidArgument(f"server setting(s) {', '.join(extra)} need etcd (the "
                                      "etcd URL of the failover group)")
            return
        if self.group is None or self.node_name is None:
            raise InvalidArgument("server setting etcd needs group and node_name (which "
                                  "replication group this node joins, under which name)")
        if self.replicaof is not None:
            raise InvalidArgument("server settings etcd and replicaof exclude each other: "
                                  "automatic failover chooses whom each node replicates")
        parse_endpoints(self.etcd)
        check_name("group", self.group)
        check_name("node", self.node_name)
        if (not isinstance(self.failover_ttl, int) or isinstance(self.failover_ttl, bool)
                or not 2 <= self.failover_ttl <= 3600):
            raise InvalidArgument("server setting failover_ttl must be an integer number of "
                                  f"seconds from 2 to 3600, got {self.failover_ttl!r}")
        margin = self.failover_safety_margin
        if (isinstance(margin, bool) or not isinstance(margin, (int, float))
                or not 0 < margin < self.failover_ttl / 2):
            raise InvalidArgument("server setting failover_safety_margin must be a number of "
                                  "seconds above 0 and below half of failover_ttl, got "
                                  f"{margin!r}")
        ap = self.failover_announce_port
        if ap is not None and (not isinstance(ap, int) or isinstance(ap, bool)
                               or not 1 <= ap <= 65535):
            raise InvalidArgument("server setting failover_announce_port must be a port "
                                  f"(1-65535), got {ap!r}")
        announce = self.failover_announce_host or self.host
        if announce in ("0.0.0.0", "::", ""):
            raise InvalidArgument("server setting failover_announce_host is needed when host "
                                  f"is {self.host!r}: the address other nodes and clients "
                                  "reach this node at")

    def _check_observability(self) -> None:
        if (not isinstance(self.slowlog_log_slower_than, int)
                or isinstance(self.slowlog_log_slower_than, bool)
                or self.slowlog_log_slower_than < -1):
            raise InvalidArgument(
                f"server setting slowlog_log_slower_than must be an integer >= -1 "
                f"(microseconds; -1 disables the slow log), got {self.slowlog_log_slower_than!r}")
        if (not isinstance(self.slowlog_max_len, int) or isinstance(self.slowlog_max_len, bool)
                or not 0 <= self.slowlog_max_len <= 100_000):
            raise InvalidArgument(
                f"server setting slowlog_max_len must be an integer >= 0 and <= 100000, "
                f"got {self.slowlog_max_len!r}")
        if (not isinstance(self.latency_monitor_threshold, int)
                or isinstance(self.latency_monitor_threshold, bool)
                or self.latency_monitor_threshold < 0):
            raise InvalidArgument(
                f"server setting latency_monitor_threshold must be an integer >= 0 "
                f"(milliseconds; 0 disables the latency monitor), got "
                f"{self.latency_monitor_threshold!r}")
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise InvalidArgument("server setting metrics_host must be a non-empty string")
        if self.metrics_port is not None and (
                not isinstance(self.metrics_port, int) or isinstance(self.metrics_port, bool)
                or not 0 <= self.metrics_port <= 65535):
            raise InvalidArgument(
                f"server setting metrics_port must be an integer >= 0 and <= 65535, or "
                f"\"off\" (-1) to disable the endpoint, got {self.metrics_port!r}")
        if (isinstance(self.metrics_header_timeout, bool)
                or not isinstance(self.metrics_header_timeout, (int, float))
                or not 0 < self.metrics_header_timeout < float("inf")):
            raise InvalidArgument("server setting metrics_header_timeout must be a number of "
                                  "seconds > 0")
        if self.log_format not in LOG_FORMATS:
            raise InvalidArgument(f"server setting log_format must be one of "
                                  f"{', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise InvalidArgument(f"server setting log_level must be one of "
                                  f"{', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    def _check_tls(self) -> None:
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_cert_file"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidArgument(f"server setting {name} must be a non-empty path")
        if self.tls_auth_clients not in TLS_AUTH_CLIENTS_MODES:
            raise InvalidArgument(
                f"server setting tls_auth_clients must be one of "
                f"{', '.join(TLS_AUTH_CLIENTS_MODES)}, got {self.tls_auth_clients!r}")
        if not isinstance(self.tls_only, bool):
            raise InvalidArgument("server setting tls_only must be true or false")
        if (isinstance(self.tls_handshake_timeout, bool)
                or not isinstance(self.tls_handshake_timeout, (int, float))
                or not 0 < self.tls_handshake_timeout < float("inf")):
            raise InvalidArgument("server setting tls_handshake_timeout must be a number of "
                                  "seconds > 0")
        if self.tls_port is None:
            if self.tls_only:
                raise InvalidArgument("server setting tls_only needs tls_port")
            return
        if (not isinstance(self.tls_port, int) or isinstance(self.tls_port, bool)
                or not 0 <= self.tls_port <= 65535):
            raise InvalidArgument(
                f"server setting tls_port must be an integer >= 0 and <= 65535, "
                f"got {self.tls_port!r}")
        if self.tls_cert_file is None or self.tls_key_file is None:
            raise InvalidArgument("server setting tls_port needs tls_cert_file and "
                                  "tls_key_file")
        if self.tls_auth_clients != "no" and self.tls_ca_cert_file is None:
            raise InvalidArgument(
                f"server setting tls_auth_clients = {self.tls_auth_clients!r} needs "
                f"tls_ca_cert_file (the CA that signs client certificates), or set "
                f"tls_auth_clients = \"no\"")

    def password_digest(self) -> bytes | None:
        """SHA-256 of the password (the server keeps only this), or None."""
        if self.requirepass is None:
            return None
        return hashlib.sha256(self.requirepass.encode("utf-8")).digest()

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ServerConfig:
        """Build a config from a mapping (TOML table, CLI flags) naming unknown keys in the
        error; dashes in names are accepted for underscores."""
        known = {f.name for f in dataclasses.fields(cls)}
        clean = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise InvalidArgument(
                f"unknown server setting(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}")
        port = clean.get("metrics_port")
        if isinstance(port, (int, str)) and not isinstance(port, bool) and (
                port in METRICS_OFF or (isinstance(port, str) and port.lower() in METRICS_OFF)):
            clean["metrics_port"] = None
        elif isinstance(port, str) and port.isdigit():
            clean["metrics_port"] = int(port)
        if clean.get("requirepass") is None and os.environ.get(PASSWORD_ENV):
            clean["requirepass"] = os.environ[PASSWORD_ENV]
        if clean.get("encryption_key_file") is None and os.environ.get(KEY_FILE_ENV):
            clean["encryption_key_file"] = os.environ[KEY_FILE_ENV]
        if clean.get("backup_repo") is None and os.environ.get(BACKUP_REPO_ENV):
            clean["backup_repo"] = os.environ[BACKUP_REPO_ENV]
        if clean.get("masterauth") is None and os.environ.get(MASTERAUTH_ENV):
            clean["masterauth"] = os.environ[MASTERAUTH_ENV]
        if clean.get("backup_repo_key_file") is None and os.environ.get(
                BACKUP_REPO_KEY_FILE_ENV):
            clean["backup_repo_key_file"] = os.environ[BACKUP_REPO_KEY_FILE_ENV]
        return cls(**clean)

    @classmethod
    def load(cls, path: str | None, overrides: dict[str, Any] | None = None) -> ServerConfig:
        """Read the TOML file ``path`` (optional; its settings may sit at the top level or
        in a ``[server]`` table) and apply ``overrides`` (None values are ignored)."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as f:
                    data = tomllib.load(f)
            except OSError as exc:
                raise InvalidArgument(f"cannot read config file {path!r}: {exc}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise InvalidArgument(f"config file {path!r} is not valid TOML: {exc}") from exc
            table = data.get("server", data)
            if not isinstance(table, dict):
                raise InvalidArgument(f"config file {path!r}: [server] must be a table")
            values.update(table)
        for k, v in (overrides or {}).items():
            if v is not None:
                values[k] = v
        return cls.from_mapping(values)


def parse_replicaof(value: str) -> tuple[str, int]:
    """``"host port"`` (the replicaof setting) as (host, port); InvalidArgument otherwise."""
    parts = value.split()
    if len(parts) != 2 or not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
        raise InvalidArgument(f"server setting replicaof must be \"host port\", got {value!r}")
    return parts[0], int(parts[1])


__all__ = ["APPENDFSYNC_MODES", "BACKUP_REPO_ENV", "BACKUP_REPO_KEY_FILE_ENV",
           "MASTERAUTH_ENV", "parse_replicaof",
           "DEFAULT_METRICS_PORT", "KEY_FILE_ENV",
           "LOG_FORMATS",
           "LOG_LEVELS", "MAX_TRACKED_HOSTS", "METRICS_OFF", "MIN_AUTH_FAIL_RATE",
           "MIN_BULK_LEN", "MIN_COMMAND_RATE", "MIN_TIMEOUT", "PASSWORD_ENV",
           "TLS_AUTH_CLIENTS_MODES",
           "ServerConfig"]
