"""The asyncio server: listening socket, connections, limits, durability mode, shutdown.

Everything that touches the keyspace runs on the event loop thread, one command at a time;
that is what makes each command, and each EXEC, atomic for other clients. Only fsyncs
(``appendfsync always``), checkpoints, closing the database and the background scrub
(:mod:`shaledb.server.keyspace.scrub`) run in worker threads. uvloop is used
when it is installed (``pip install shaledb[server]``).

Shutdown (SIGTERM, SIGINT, :meth:`Server.shutdown`): stop accepting; every request already
read has been answered (commands run synchronously as they arrive), so wait for replies
still held for an fsync, close the connections once their replies are written, then close
the database (which fsyncs the WAL). A running scrub pass is told to stop at the start of
the shutdown and waited for before the database closes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import os
import secrets
import signal
import stat
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Final

import shaledb

from ..backup.repository import BackupInfo, Repository
from ..errors import EncryptionError, InvalidArgument, ShaleError
from .admin.acl import Acl, AclRuleError, AuthRateLimiter, User
from .admin.config import PASSWORD_ENV, ServerConfig
from .admin.gcpauses import PAUSES
from .admin.httpendpoint import MetricsEndpoint
from .admin.logs import CLIENT_LOG
from .admin.slowlog import SlowLog
from .admin.stats import ServerStats
from .cluster.election import ElectionConfig
from .cluster.runner import FailoverRunner, ServerNodeControl
from .commands import build_table
from .errors import CommandError, WrongPassError
from .exec.backups import BackupScheduler
from .exec.blocking import BlockingQueue
from .exec.checkpoint import Checkpointer
from .exec.client import ClientState
from .exec.cursors import ScanCursors
from .exec.deferred import CLOSE
from .exec.dispatch import Dispatcher, TurnCommit
from .exec.durability import SyncGroup
from .exec.pubsub import PubSub
from .exec.replication import ReplicaSyncGroup, Replication
from .exec.scripting import ScriptEngine
from .exec.watch import WatchRegistry
from .keyspace.expiry import run_active_expire
from .keyspace.keyspace import Keyspace
from .keyspace.notify import Event, parse_flags
from .keyspace.purge import run_purger
from .keyspace.scrub import Scrubber
from .net.connection import ClientConnection
from .net.fdlimit import fit_maxclients
from .net.ratelimit import CommandRateLimits
from .net.security import (
    auth_limit_key,
    in_networks,
    is_loopback_address,
    parse_networks,
    protected_mode_refuses,
)
from .net.tls import server_context

log = logging.getLogger("shaledb.server")


class Server:
    """A ShaleDB server speaking the Redis protocol.

    ``db`` may be an already open database (the server then leaves closing it to the
    caller); by default the server opens ``config.dir`` itself and closes it on shutdown.
    """

    def __init__(self, config: ServerConfig, db: shaledb.DB | None = None,
                 config_file: str | None = None) -> None:
        self.config = config
        #: The TOML file the config came from (INFO config_file), if any.
        self.config_file = config_file
        self._own_db = db is None
        self._db = db
        #: Random id of this run (INFO run_id), as Redis makes one at every start.
        self.run_id = secrets.token_hex(20)
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.command_stats = ServerStats()
        self.slowlog = SlowLog()
        self.metrics: MetricsEndpoint | None = None
        #: The metrics endpoint's port (None when off; 0 in the config picks one).
        self.metrics_port: int | None = None
        self.watches = WatchRegistry()
        #: Channel subscriptions and MONITOR clients.
        self.pubsub = PubSub()
        #: Clients blocked on keys (BLPOP ...), woken by the turn's commit.
        self.blocking = BlockingQueue()
        self.scan_cursors = ScanCursors(config.max_scan_cursors)
        self.dispatcher = Dispatcher(self, build_table())
        self.acl = Acl(self.dispatcher.table, password_digest=config.password_digest(),
                       log_max_len=config.acllog_max_len,
                       auth_limiter=AuthRateLimiter(config.auth_fail_burst,
                                                    config.auth_fail_rate,
                                                    config.auth_fail_max_hosts))
        self.acl.pubsub_default = config.acl_pubsub_default.encode()
        #: Networks the failed-AUTH limit spares (auth-fail-exempt-networks).
        self.auth_exempt = parse_networks(config.auth_fail_exempt_networks)
        self.connections: dict[int, ClientConnection] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self.accepting = False
        self.sync_group: SyncGroup | None = None
        #: True while a connection runs commands (guards against running two at once).
        self.executing = False
        #: The ports listened on (None when not listening; 0 in the config picks one).
        self.port: int | None = None
        self.tls_port: int | None = None
        self._keyspace: Keyspace | None = None
        self._turn: TurnCommit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 0
        self._listeners: list[asyncio.Server] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shaledb-server-io")
        self._stopped = asyncio.Event()
        self._stopping = False
        self._shutdown_started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._idle_task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        #: Whether the engine fsyncs the WAL every second by itself (opened with an
        #: fsync_interval); if not, ``everysec`` is done by :meth:`_periodic_sync`.
        self._engine_fsyncs = False
        #: Unix time of the last successful backup (SAVE, BGSAVE, schedule), or of the last
        #: SAVE without a backup repository (LASTSAVE); at first the newest backup in the
        #: repository, else the start time.
        self.last_save_time = int(time.time())
        #: Whether a backup is running (BGSAVE, SAVE, schedule).
        self.bgsave_in_progress = False
        self.checkpoints = Checkpointer(self)
        #: BGSAVE, SAVE's backup and the schedule (the repository is opened by start()).
        self.backups = BackupScheduler(self, None)
        self.rate_limits = CommandRateLimits(config.rate_limit_per_ip, config.rate_limit_users,
                                             config.rate_limit_max_hosts)
        self.scrubber = Scrubber(self)
        #: EVAL / FCALL: the Lua state and script cache (its thread starts at the first).
        self.scripts = ScriptEngine()
        #: Replication (both sides); started once the keyspace is open.
        self.replication = Replication(self)
        #: Automatic failover (--etcd): the election beside the server, and the fence every
        #: commit asks (cluster/runner.py). None without etcd.
        self.failover: FailoverRunner | None = None
        self.node_control: ServerNodeControl | None = None

    @property
    def keyspace(self) -> Keyspace:
        """The keyspace (available once started)."""
        if self._keyspace is None:
            raise RuntimeError("the server is not started")
        return self._keyspace

    def _on_write(self, keys: Iterable[tuple[int, bytes]]) -> None:
        """A commit changed ``keys`` (a generator, read only when someone waits on keys):
        WATCH flags its watchers, the blocking queue marks its keys ready."""
        if len(self.blocking):
            keys = list(keys)
            self.blocking.touch(keys)
        self.watches.touch(keys)

    def _publish_events(self, events: list[Event]) -> None:
        """Committed keyspace notifications: to the subscribers of their channels."""
        self.pubsub.publish_events(events, self.keyspace.notify_flags)

    def _on_flush(self, db: int, keys: list[bytes] | None) -> None:
        """Database ``db`` was flushed (``keys``: its watched keys that existed) or swapped
        (None)."""
        if keys is None:
            self.watches.touch_db(db)
        else:
            self.watches.touch((db, k) for k in keys)
        self.blocking.touch_db(db)

    @property
    def turn(self) -> TurnCommit:
        """The shared write transaction of the current event-loop turn (once started)."""
        if self._turn is None:
            raise RuntimeError("the server is not started")
        return self._turn

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (once started)."""
        if self._loop is None:
            raise RuntimeError("the server is not started")
        return self._loop

    @property
    def db(self) -> shaledb.DB:
        """The database the server serves (available once started)."""
        if self._db is None:
            raise RuntimeError("the server is not started")
        return self._db

    def new_client_id(self) -> int:
        """A new connection id (CLIENT ID)."""
        self._next_id += 1
        return self._next_id

    def refuses_peer(self, host: str | None) -> bool:
        """Whether protected mode refuses a new client from IP ``host``."""
        return protected_mode_refuses(host, self.config.protected_mode,
                                      self.acl.default.nopass)

    def authenticate(self, client: ClientState, user: bytes, password: bytes) -> None:
        """Log ``client`` in as ``user`` or raise: WrongPassError for an unknown or disabled
        user or a wrong password, CommandError when the client's IP (its /64 for IPv6) used
        up its failed attempts (checked, and one attempt consumed, before the password is
        looked at). The password is compared as a SHA-256 digest in constant time and never
        stored or logged."""
        host = auth_limit_key(client.host)  # IPv6: per /64
        limited = not in_networks(client.host, self.auth_exempt)
        wait = self.acl.limiter.take(host) if limited else 0.0
        if wait > 0:
            self.stats["auth_rate_limited"] += 1
            self.acl.record("auth", "toplevel", b"AUTH", user, client)
            raise CommandError(f"too many failed authentication attempts from this address; "
                               f"retry in {wait:.1f} s")
        found = self.acl.authenticate(user, password)
        if found is None:
            self.stats["auth_failures"] += 1
            self.acl.record("auth", "toplevel", b"AUTH", user, client)
            raise WrongPassError()
        if limited:
            self.acl.limiter.refund(host)
        client.user = found
        client.authenticated = True
        client.ever_authenticated = True

    def disconnect_users(self, users: list[User], caller: ClientState) -> None:
        """Close the connections logged in as one of ``users`` (deleted users); the caller's
        own connection closes after its reply. Each is logged out at once, as the default
        user (as Redis does): what the caller still runs -- the rest of its EXEC -- gets
        NOAUTH instead of the deleted user's permissions."""
        gone = {id(u) for u in users}
        for conn in list(self.connections.values()):
            c = conn.client
            if c is not None and id(c.user) in gone:
                c.user = self.acl.default
                c.authenticated = False
                if c is caller:
                    c.close_after_reply = True
                else:
                    conn.abort()

    def install_users(self, users: dict[bytes, User], caller: ClientState) -> None:
        """Replace every user (ACL LOAD). Connections move to the new user of the same name;
        those whose user no longer exists are closed."""
        self.acl.users = users
        gone = []
        for conn in list(self.connections.values()):
            c = conn.client
            if c is not None:
                new = users.get(c.user.name)
                if new is None:
                    gone.append(c.user)
                else:
                    c.user = new
        self.disconnect_users(gone, caller)

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Load the ACL file (when set and present), open the database (unless given one)
        and start listening."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        if cfg.aclfile is not None and os.path.exists(cfg.aclfile):
            configured = self.acl.default
            try:
                self.acl.users = self.acl.load_file(cfg.aclfile)
            except AclRuleError as exc:
                raise InvalidArgument(f"invalid ACL file: {exc}") from None
            if cfg.requirepass is not None and self.acl.default is not configured:
                # The file's users override requirepass (documented), but a password set
                # for a reason must not vanish without a word.
                if self.acl.default.nopass:
                    log.warning("the ACL file %s defines the default user without a "
                                "password (nopass): requirepass / %s is ignored and clients "
                                "need no password. Set one in the file's 'user default' line "
                                "(>password or #sha256) or remove that line", cfg.aclfile,
                                PASSWORD_ENV)
                else:
                    log.warning("the ACL file %s defines the default user: its passwords "
                                "replace requirepass / %s", cfg.aclfile, PASSWORD_ENV)
        ssl_context = server_context(cfg) if cfg.tls_port is not None else None
        repository = None
        if cfg.backup_repo is not None:
            repository = await loop.run_in_executor(
                self._executor, _open_repository, cfg.backup_repo, cfg.dir,
                cfg.backup_repo_key_file)
            self.backups.repository = repository
        if self._db is None:
            options: dict[str, Any] = {
                "fsync_interval": None if cfg.appendfsync == "no" else 1.0}
            if repository is not None and cfg.backup_wal_archive:
                options["wal_archive"] = repository
            if cfg.memtable_size is not None:
                options["memtable_size"] = cfg.memtable_size
            options["mmap_reads"] = cfg.mmap_reads
            if cfg.encryption_key_file is not None:
                options["encryption_key_file"] = cfg.encryption_key_file
            self._db = await loop.run_in_executor(
                self._executor, lambda: shaledb.open(cfg.dir, **options))
        db = self._db
        _tighten_data_dir(db.path)
        self._engine_fsyncs = db.options.fsync_interval is not None
        fitted = fit_maxclients(cfg.maxclients, db.options.max_open_files)
        if fitted < cfg.maxclients:
            log.warning("maxclients lowered from %d to %d: the open files limit (ulimit -n) "
                        "leaves no more descriptors next to the engine's %d table files; "
                        "raise the limit to serve more clients", cfg.maxclients, fitted,
                        db.options.max_open_files)
            self.config = cfg = dataclasses.replace(cfg, maxclients=fitted)
        try:
            self._keyspace = Keyspace(db, on_write=self._on_write,
                                      on_flush=self._on_flush,
                                      watched_keys=self.watches.keys_in)
            self._keyspace.notify_flags = parse_flags(cfg.notify_keyspace_events)
            self._keyspace.publish_events = self._publish_events
        except BaseException:
            if self._own_db:
                db.close()
            raise
        self._loop = loop
        self._turn = TurnCommit(self._keyspace, loop, self.command_stats, self.blocking)
        if cfg.etcd is not None:
            # Automatic failover: the write fence is replication's (role, term and lease
            # deadline; until elected, and whenever fenced, this node refuses writes),
            # asked right before every commit and by the background writers.
            self.node_control = ServerNodeControl(self.replication, loop)
            self._turn.fence = self.replication.can_write
            self._keyspace.write_fence = self.replication.can_write
        turn = self._turn

        def settle() -> None:
            # Background writers (the expiry sweeper) commit the turn's writes first: a
            # buffered header may name a chunk set they would free (keyspace.py).
            if turn.txn.dirty:
                turn.commit()

        self._keyspace.settle = settle
        try:
            self.replication.start()
        except BaseException:
            if self._own_db:
                db.close()
            raise
        self.set_appendfsync(cfg.appendfsync)
        try:
            if not cfg.tls_only:
                plain = await loop.create_server(
                    lambda: ClientConnection(self), cfg.host, cfg.port, reuse_address=True,
                    backlog=cfg.tcp_backlog, start_serving=False)
                self._listeners.append(plain)
                self.port = plain.sockets[0].getsockname()[1]
            if ssl_context is not None:
                # A plain TCP listener: each connection is counted at the accept, then does
                # its handshake (ClientConnection._tls_handshake), as Redis does.
                context = ssl_context
                tls = await loop.create_server(
                    lambda: ClientConnection(self, context), cfg.host, cfg.tls_port,
                    reuse_address=True, backlog=cfg.tcp_backlog, start_serving=False)
                self._listeners.append(tls)
                self.tls_port = tls.sockets[0].getsockname()[1]
        except BaseException:
            for listener in self._listeners:
                listener.close()
            if self._own_db:
                db.close()
            raise
        if cfg.metrics_port is not None:
            try:
                self.metrics = MetricsEndpoint(self)
                self.metrics_port = await self.metrics.start(cfg.metrics_host,
                                                             cfg.metrics_port)
            except BaseException:
                for listener in self._listeners:
                    listener.close()
                if self._own_db:
                    db.close()
                raise
        # LASTSAVE and INFO start from the newest backup: read before any client is served
        # (a client connecting at once was answered the start time under load).
        newest = None
        if repository is not None:
            newest = await loop.run_in_executor(self._executor, _newest_backup, repository)
        self.backups.start(newest)
        self.accepting = True
        # The listeners were bound without listening: a client connecting while the TLS
        # port or the metrics endpoint was still being set up would have been accepted and
        # refused as if the server were shutting down. Until here the kernel refuses it.
        for listener in self._listeners:
            await listener.start_serving()
        self.restart_idle_sweeper()
        self._tasks.append(loop.create_task(run_purger(self._keyspace)))
        self._tasks.append(loop.create_task(
            run_active_expire(self._keyspace, cfg.hz, cfg.active_expire_effort)))
        self._tasks.append(loop.create_task(self._sample_ops()))
        self.scrubber.start()
        self._start_failover()
        log.info("ShaleDB %s serving %s on %s port %s, TLS port %s, metrics port %s "
                 "(appendfsync %s)", shaledb.__version__, db.path, cfg.host, self.port,
                 self.tls_port, self.metrics_port, cfg.appendfsync)
        if self.acl.default.nopass and not is_loopback_address(cfg.host):
            if cfg.protected_mode:
                log.warning("listening on %s without a password: protected mode refuses "
                            "every non-loopback client until a password is set", cfg.host)
            else:
                log.warning("listening on %s without a password and without protected "
                            "mode: any host that can reach this port can read and change "
                            "every key", cfg.host)

    @property
    def uptime(self) -> float:
        """Seconds since the server was created."""
        return time.monotonic() - self.started_monotonic

    async def _sample_ops(self) -> None:
        # Once a second: the samples behind INFO's instantaneous_ops_per_sec.
        while True:
            self.command_stats.sample(self.stats["total_commands_processed"])
            await asyncio.sleep(1.0)

    def set_appendfsync(self, mode: str) -> None:
        """Switch the durability mode (at start, and live by CONFIG SET appendfsync).

        ``always`` holds write replies for a group fsync; the replies already held keep
        their fsync when leaving it. ``everysec`` relies on the engine's own 1-second WAL
        sync when the database was opened with one, else on a server task doing the same.
        ``no`` stops that task; an engine opened with its own sync thread keeps it (it
        cannot be stopped without reopening), which only makes ``no`` safer.
        """
        loop = asyncio.get_running_loop()
        if self.config.sync_replicas:
            # sync-replicas: every write's reply waits for the replicas' acknowledgements
            # and for the local fsync, in every appendfsync mode (ReplicaSyncGroup says why).
            self.sync_group = ReplicaSyncGroup(self.db, loop, self._executor,
                                               self.replication)
        elif mode == "always":
            if self.sync_group is None or isinstance(self.sync_group, ReplicaSyncGroup):
                self.sync_group = SyncGroup(self.db, loop, self._executor)
        else:
            self.sync_group = None
        wants_task = mode == "everysec" and not self._engine_fsyncs
        if wants_task and self._sync_task is None:
            self._sync_task = loop.create_task(self._periodic_sync())
        elif not wants_task and self._sync_task is not None:
            self._sync_task.cancel()
            self._sync_task = None

    async def _periodic_sync(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            try:
                await loop.run_in_executor(self._executor, self.db.sync)
            except shaledb.DescriptorsExhaustedError as exc:
                # Retryable (no descriptor to open the directory with): the engine still
                # takes writes, so they must still be fsynced every second.
                log.warning("periodic WAL fsync postponed: %s", exc)
            except Exception as exc:  # noqa: BLE001 - the engine now refuses writes
                log.error("periodic WAL fsync failed: %s", exc)
                return

    def restart_idle_sweeper(self) -> None:
        """(Re)start closing clients idle for ``timeout`` seconds, and those that never
        authenticated within ``auth_timeout`` (stop when both are 0)."""
        if self._idle_task is not None:
            self._idle_task.cancel()
            self._idle_task = None
        cfg = self.config
        if (cfg.timeout or cfg.auth_timeout) and not self._stopping:
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_sweeper())

    async def _idle_sweeper(self) -> None:
        timeout, auth_timeout = self.config.timeout, self.config.auth_timeout
        shortest = min(t for t in (timeout, auth_timeout) if t)
        interval = max(0.01, min(1.0, shortest / 4))  # a tiny timeout must not spin the loop
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections.values()):
                c = conn.client
                if c is None or conn.holding:
                    continue
                if timeout and now - c.last_active > timeout:
                    self.stats["idle_timeouts"] += 1
                    CLIENT_LOG.log(log, logging.INFO, "idle-timeout", "closing idle client %s",
                                   c.addr)
                    conn.abort()
                elif auth_timeout and not c.ever_authenticated and now - c.created > auth_timeout:
                    self.stats["auth_timeouts"] += 1
                    CLIENT_LOG.log(log, logging.INFO, "auth-timeout",
                                   "closing client %s: not authenticated within %g s", c.addr,
                                   auth_timeout)
                    conn.abort()

    def request_shutdown(self) -> None:
        """Start a graceful shutdown (safe to call from a signal handler, more than once)."""
        if not self._stopping:
            self._stopping = True
            self._tasks.append(asyncio.get_running_loop().create_task(self.shutdown()))

    def shutdown_on_request(self, save: bool, force: bool) -> asyncio.Future[Any]:
        """SHUTDOWN from a client: checkpoint first when ``save``, then shut down as
        SIGTERM does. The future's result is :data:`~shaledb.server.exec.deferred.CLOSE` (the
        client gets no reply, as from Redis); it raises CommandError when the checkpoint
        failed and not ``force``, and the server then keeps running."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()

        async def run() -> None:
            if save and not self._stopping:
                try:
                    await self.checkpoints.save()
                except CommandError as exc:
                    if not force:
                        log.warning("SHUTDOWN refused: %s", exc)
                        result.set_exception(
                            CommandError("Errors trying to SHUTDOWN. Check logs."))
                        return
            log.warning("shutdown requested by a client")
            result.set_result(CLOSE)
            self.request_shutdown()

        self._tasks.append(loop.create_task(run()))
        return result

    def _start_failover(self) -> None:
        cfg = self.config
        if self.node_control is None or cfg.etcd is None or self.port is None:
            return
        assert cfg.group is not None and cfg.node_name is not None
        election = ElectionConfig(cfg.group, cfg.node_name,
                                  cfg.failover_announce_host or cfg.host,
                                  cfg.failover_announce_port or self.port,
                                  ttl=cfg.failover_ttl,
                                  safety_margin=cfg.failover_safety_margin,
                                  # Sync mode and its K are replication's settings.
                                  sync_mode=cfg.sync_replicas > 0,
                                  sync_replicas=max(cfg.sync_replicas, 1))
        self.failover = FailoverRunner(cfg.etcd, election, self.node_control)
        self.failover.start()
        log.info("failover: node %s joined group %s through etcd %s", cfg.node_name,
                 cfg.group, cfg.etcd)

    async def shutdown(self) -> None:
        """Stop accepting, answer what was read, close connections and the database. A
        second call (SIGTERM after SHUTDOWN, a test's stop) waits for the first to finish."""
        if self._shutdown_started:
            await self._stopped.wait()
            return
        self._shutdown_started = True
        self._stopping = True
        self.accepting = False
        if self.failover is not None:
            # Fence and resign first: another node can take over while we drain.
            failover, self.failover = self.failover, None
            await asyncio.get_running_loop().run_in_executor(None, failover.close)
        self.scrubber.close()  # a running pass stops at its next read (within 50 ms)
        self.backups.stop()  # a running backup stops at its next chunk (1 MiB)
        for listener in self._listeners:
            listener.close()
        if self.metrics is not None:
            self.metrics.close()
        await self.replication.stop()
        current = asyncio.current_task()
        for task in (*self._tasks, self._idle_task, self._sync_task):
            if task is not None and task is not current:
                task.cancel()
        # A script still running (SHUTDOWN NOSAVE while BUSY) stops here; its writes were
        # never committed, and are not now.
        self.scripts.close()
        if self._turn is not None:
            if self._turn.frozen:
                self._turn.txn.undo(0)
                self._turn.frozen = False
            self._turn.commit()  # writes parked for the end of this turn
        if self.sync_group is not None:
            with contextlib.suppress(Exception):
                await self.sync_group.wait_idle()
        for conn in list(self.connections.values()):
            conn.close_when_sent()
        deadline = time.monotonic() + 5.0
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections.values()):
            conn.abort()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 1.0)
        await self.checkpoints.close()
        await self.backups.close()
        await asyncio.get_running_loop().run_in_executor(None, self.scrubber.join)
        if self._own_db and self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=True)
        log.info("ShaleDB server stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Wait until a shutdown has completed."""
        await self._stopped.wait()


def _open_repository(path: str, data_dir: str, key_file: str | None = None) -> Repository:
    """The configured backup repository, created when missing (encrypted with its own key
    when ``key_file`` is given; blocking). Refused inside the data directory, or around it:
    a backup would copy itself, or the database's directory listing would hold the
    repository's files."""
    repo = os.path.realpath(path)
    data = os.path.realpath(data_dir)
    if repo == data or repo.startswith(data + os.sep) or data.startswith(repo + os.sep):
        raise InvalidArgument(f"backup_repo {path!r} and dir {data_dir!r} overlap: put the "
                              f"backup repository outside the database directory (and "
                              f"best on another disk)")
    try:
        return Repository(repo, encryption_key_file=key_file)
    except EncryptionError:
        raise  # its message says which key the repository needs, or that it has none
    except ShaleError as exc:
        raise InvalidArgument(f"cannot open the backup repository {path!r}: {exc}; fix the "
                              f"path or its permissions, or start without backup_repo") from None


def _newest_backup(repo: Repository) -> BackupInfo | None:
    """The newest backup in ``repo`` (LASTSAVE after a restart), or None; a damaged manifest
    is logged, not fatal (``shaledb backups verify`` names it)."""
    try:
        found = repo.backups()
    except ShaleError as exc:
        log.warning("cannot list the backups in %s (%s): LASTSAVE starts at the start time; "
                    "run `shaledb backups verify %s`", repo.location, exc, repo.location)
        return None
    return found[-1] if found else None


def _tighten_data_dir(path: str) -> None:
    """Make the data directory 0700 if other users may enter or list it: the engine creates
    its files 0600 and new directories 0700, but an existing directory (made by hand, by a
    package, with a loose umask) was used as it was. Logged either way."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if not mode & 0o077:
            return
        os.chmod(path, mode & 0o700)
    except OSError as exc:
        log.warning("the data directory %s is open to other users and could not be made "
                    "0700 (%s): chmod 700 it", path, exc.strerror or exc)
        return
    log.warning("the data directory %s was mode %04o (open to other users); made it %04o",
                path, mode, mode & 0o700)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


#: The cyclic garbage collector's first threshold in a serving process (Python's default is
#: 700): container objects allocated, less those freed, before a young collection.
GC_YOUNG_THRESHOLD: Final = 50_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a serving process (``serve`` only: a
    server started inside another program leaves that program's collector alone).

    Requests allocate short-lived containers that reference counting frees at once, yet
    each one counts towards a young collection; at Python's default threshold the young
    collections promoted enough survivors (memtable entries, cached blocks) to start a full
    collection every ~80,000 requests, each of which walked every object of the process
    for ~70 ms: 7-9% of the server's CPU time under ``redis-benchmark -P 16``, and a 70 ms
    stall of every client each time. A young collection now runs every 50,000 net
    allocations (a cycle of garbage lives longer, bounded by that count: a few MB), and
    full ones far more rarely (none in a 400,000-request run that had six);
    ``gc.freeze`` takes what start-up built (modules, the command table, the
    configuration) out of every later collection. Each collection is timed (INFO
    ``gc_gen*_max_pause_ms``; admin/gcpauses.py)."""
    PAUSES.install()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def serve(config: ServerConfig, config_file: str | None = None) -> None:
    """Run a server until SIGTERM or SIGINT, then shut it down gracefully. ``config_file``
    names the file ``config`` was read from (shown by INFO)."""

    async def main() -> None:
        server = Server(config, config_file=config_file)
        await server.start()
        tune_gc()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_shutdown)
        await server.wait_stopped()

    _run(main())


__all__ = ["Server", "serve"]
