"""The contract between the execution layer and the command handlers.

A handler is ``handler(ctx, argv) -> reply``. :class:`Context` carries the calling client
(:class:`~shaledb.server.exec.client.ClientState`), the keyspace transaction its reads and
writes go through, and :class:`Services`: the part of the server a handler may use. A handler
never sees the asyncio server or a connection object: :class:`Services` is a Protocol that
the server (:class:`shaledb.server.server.Server`) satisfies, checked by mypy where the
server hands itself to the :class:`~shaledb.server.exec.dispatch.Dispatcher`. A command that
needs something new from the server adds it here, by name and type, where a reviewer sees
it; a test or another front end (a Lua script's ``redis.call``) can supply a different one.

:class:`Command` is a :class:`~shaledb.server.exec.command.CommandSpec` plus its handler;
:class:`CommandFamily` collects the commands of one family module (``commands/strings.py``
... ), as Redis' ``t_string.c``, ``t_hash.c`` each hold one family.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import shaledb

from ..keyspace.keyspace import Keyspace, KeyspaceTxn
from ..net.protocol import ArrayBuilder, RequestReader
from .client import ClientState
from .command import CommandSpec

if TYPE_CHECKING:
    from ..admin.acl import Acl, User
    from ..admin.config import ServerConfig
    from ..admin.slowlog import SlowLog
    from ..admin.stats import ServerStats
    from ..cluster.runner import FailoverRunner
    from ..keyspace.scrub import Scrubber
    from ..net.ratelimit import CommandRateLimits
    from ..net.security import Network
    from .backups import BackupScheduler
    from .blocking import BlockingQueue
    from .checkpoint import Checkpointer
    from .cursors import ScanCursors
    from .pubsub import PubSub
    from .replication import Replication
    from .scripting import ScriptEngine, ScriptTurn
    from .watch import WatchRegistry


class ClientHandle(Protocol):
    """What a handler may do with another client's connection (CLIENT LIST/KILL, ACL
    DELUSER, CONFIG SET of the request limits): the connection object itself belongs to
    the network layer."""

    @property
    def client(self) -> ClientState | None: ...  # None until the connection is accepted
    @property
    def closing(self) -> bool: ...
    @property
    def reader(self) -> RequestReader: ...
    def memory(self) -> dict[str, int]: ...
    def events(self) -> str: ...
    def abort(self, message: bytes | None = None) -> None: ...
    @property
    def output_bytes(self) -> int: ...
    def send_raw(self, data: bytes) -> bool: ...


class CommandRunner(Protocol):
    """The dispatcher as a handler sees it: the command table, and running a queued command
    inside EXEC (MULTI/EXEC today; a script's ``redis.call`` tomorrow)."""

    @property
    def table(self) -> Mapping[bytes, Command]: ...
    def writes(self, argv: list[bytes]) -> bool: ...
    def run_in_exec(self, ctx: Context, argv: list[bytes], acl_context: str = "multi"
                    ) -> Any: ...


class Services(Protocol):
    """The server as command handlers (and the INFO, CONFIG and metrics code they call)
    see it. Life cycle, listeners, the event loop and the connections' I/O are not in it."""

    # -- configuration and identity (INFO server, CONFIG) ---------------------------------
    config: ServerConfig
    config_file: str | None
    run_id: str
    started: float
    port: int | None
    tls_port: int | None
    metrics_port: int | None

    @property
    def uptime(self) -> float: ...

    # -- data ----------------------------------------------------------------------------
    @property
    def keyspace(self) -> Keyspace: ...
    @property
    def db(self) -> shaledb.DB: ...

    watches: WatchRegistry
    blocking: BlockingQueue
    pubsub: PubSub
    scan_cursors: ScanCursors
    #: Replication: role, replicas, the replica link (REPLICAOF, ROLE, WAIT, INFO).
    replication: Replication
    checkpoints: Checkpointer
    backups: BackupScheduler
    scrubber: Scrubber
    last_save_time: int
    bgsave_in_progress: bool

    @property
    def dispatcher(self) -> CommandRunner: ...
    #: Lua scripts and functions (EVAL, FCALL): the cache and the Lua state.
    scripts: ScriptEngine
    #: Automatic failover (SENTINEL), when started with --etcd.
    failover: FailoverRunner | None

    @property
    def turn(self) -> ScriptTurn: ...

    # -- clients and security ------------------------------------------------------------
    acl: Acl
    auth_exempt: tuple[Network, ...]
    rate_limits: CommandRateLimits

    @property
    def connections(self) -> Mapping[int, ClientHandle]: ...
    def authenticate(self, client: ClientState, user: bytes, password: bytes) -> None: ...
    def disconnect_users(self, users: list[User], caller: ClientState) -> None: ...
    def install_users(self, users: dict[bytes, User], caller: ClientState) -> None: ...

    # -- observability -------------------------------------------------------------------
    stats: collections.Counter[str]
    command_stats: ServerStats
    slowlog: SlowLog

    # -- control (CONFIG SET, SHUTDOWN) --------------------------------------------------
    def set_appendfsync(self, mode: str) -> None: ...
    def restart_idle_sweeper(self) -> None: ...
    def shutdown_on_request(self, save: bool, force: bool) -> asyncio.Future[Any]: ...


class Context:
    """What a handler gets besides its arguments: the calling client, the server's services
    and the keyspace transaction its reads and writes go through."""

    __slots__ = ("client", "services", "txn", "in_exec")

    def __init__(self, client: ClientState, services: Services, txn: KeyspaceTxn,
                 in_exec: bool = False) -> None:
        self.client = client
        self.services = services
        self.txn = txn
        #: The command runs inside EXEC: its reply must be ready when it returns (no
        #: :class:`~shaledb.server.exec.deferred.Deferred`).
        self.in_exec = in_exec

    @property
    def db(self) -> int:
        """The client's selected logical database."""
        return self.client.db

    def array(self) -> ArrayBuilder:
        """A builder for an array reply, charged to what is left of the client's output
        buffer limit: when :meth:`ArrayBuilder.add` returns False, return
        :meth:`overflow` at once."""
        return ArrayBuilder(self.client.resp, self.client.output_budget)

    def overflow(self) -> None:
        """The reply being built passed the client's output buffer limit: the connection
        disconnects the client after this command (its reply, None, is never sent)."""
        self.client.output_overflow = True


Handler = Callable[[Context, list[bytes]], Any]


@dataclasses.dataclass(frozen=True)
class Command(CommandSpec):
    """One entry of the command table: its spec and the handler that runs it."""

    handler: Handler = dataclasses.field(repr=False, compare=False, kw_only=True)


class CommandFamily:
    """The commands of one family module, collected by the :meth:`command` decorator."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def command(self, name: str, arity: int, flags: str, categories: str,
                keys: tuple[int, int, int] = (0, 0, 0),
                subcommands: dict[str, str] | None = None,
                key_finder: Callable[[list[bytes]], list[bytes]] | None = None
                ) -> Callable[[Handler], Handler]:
        """Register the decorated function as the handler of ``name``. ``flags`` and
        ``categories`` are space-separated words; ``subcommands`` maps a subcommand to its
        own categories."""
        subs = tuple((sub, tuple(cats.split())) for sub, cats in (subcommands or {}).items())

        def register(fn: Handler) -> Handler:
            self.commands.append(Command(name, arity, frozenset(flags.split()),
                                         tuple(categories.split()), *keys, handler=fn,
                                         subcommands=subs, key_finder=key_finder))
            return fn

        return register



__all__ = ["ClientHandle", "Command", "CommandFamily", "CommandRunner", "Context", "Handler",
           "Services"]
