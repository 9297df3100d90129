"""Lua scripts and functions (EVAL, EVALSHA, FCALL ...) on a real Lua 5.1 through lupa.

One Lua state per server, built once (``lua_sandbox.lua`` makes the sandbox). Scripts are
cached compiled, by SHA1 of their body; function libraries (FUNCTION LOAD) by name.

**Atomicity.** A script runs whole while no other client's command runs, and its
``redis.call`` writes go into the turn's one keyspace transaction: they commit as one batch
with the turn (or, past the busy threshold, right after the script), never half.

**Threads, and BUSY.** The Lua code runs on one worker thread of this engine, never two at
once; the event loop thread hands the call over and *waits* for it (lupa releases the GIL
while Lua runs). While it waits nothing else runs on the loop, so the worker may use the
keyspace transaction as a command handler would. If the script is still running after
``busy-reply-threshold`` ms (Redis' lua-time-limit), the loop stops waiting: it marks the
engine busy, freezes the turn's commits and the background keyspace tasks (expiry, purge:
:attr:`TurnCommit.frozen`, ``Keyspace.frozen``), and goes back to serving the sockets, where
the dispatcher answers every command ``-BUSY`` except SCRIPT KILL / FUNCTION KILL, SHUTDOWN
NOSAVE and the few flagged ``allow-busy`` (AUTH, HELLO, MULTI ...) that touch no keys. When
the script ends, the loop (called back) unfreezes, commits the script's writes and sends its
reply. So the keyspace is only ever used by one thread at a time.

**SCRIPT KILL.** A count hook (every ``HOOK_EVERY`` Lua instructions) asks Python whether a
kill was requested; once it was, the hook raises an error at every instruction, so a
``pcall`` in the script cannot swallow it. A script that already ran a write command cannot
be killed (``-UNKILLABLE``, as Redis): its writes would be half applied.

**Bounds.** Script body size (``lua-max-script-bytes``), the cache of compiled scripts
(``lua-script-cache-bytes``: least recently used EVAL scripts are dropped past it; redis-py
reloads on ``NOSCRIPT``), the Lua state's memory (``lua-max-memory``, lupa's max_memory: an
allocation past it is a Lua "not enough memory" error), and the reply, converted to RESP
values within the client's output budget.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import importlib.resources
import logging
import math
import queue
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn, Protocol

from ...errors import ReadOnlyError, ShaleError, StorageError
from ..errors import CommandError
from ..net.protocol import NULL_ARRAY, Encoded, SetReply, Status, Verbatim, format_double
from . import lualib
from .client import ClientState
from .command import CommandSpec
from .deferred import Deferred, Written

try:  # the `server` extra; without it EVAL answers how to install it
    from lupa import lua51
except ImportError:  # pragma: no cover
    lua51 = None

if TYPE_CHECKING:
    from ..admin.acl import Acl
    from ..admin.config import ServerConfig
    from ..keyspace.keyspace import Keyspace, KeyspaceTxn


class ScriptTurn(Protocol):
    """The turn's commit (:class:`~.dispatch.TurnCommit`) as a script past the busy threshold
    uses it. (Protocols here, not the dispatcher's and context's classes: those name this
    engine, that would be an import cycle.)"""

    frozen: bool

    @property
    def txn(self) -> KeyspaceTxn: ...
    def settle_reply(self, reply: Any) -> Any: ...


class ScriptRunner(Protocol):
    """The dispatcher as ``redis.call`` uses it."""

    @property
    def table(self) -> Mapping[bytes, CommandSpec]: ...
    def run_in_exec(self, ctx: Any, argv: list[bytes], acl_context: str = "multi"
                    ) -> Any: ...


class ScriptServices(Protocol):
    """What the engine uses of the server (a part of :class:`~.context.Services`)."""

    config: ServerConfig
    acl: Acl

    @property
    def keyspace(self) -> Keyspace: ...
    @property
    def turn(self) -> ScriptTurn: ...
    @property
    def dispatcher(self) -> ScriptRunner: ...


class ScriptContext(Protocol):
    """The EVAL / FCALL command's context (:class:`~.context.Context`)."""

    client: ClientState
    in_exec: bool

    @property
    def services(self) -> ScriptServices: ...
    def overflow(self) -> None: ...

log = logging.getLogger("shaledb.server.scripting")

#: Lua instructions between two checks of the kill flag.
HOOK_EVERY: Final = 100_000
#: Deepest reply table converted (Redis: "reached lua stack limit").
MAX_REPLY_DEPTH: Final = 200
#: Longest a FUNCTION LOAD may run its library's top-level code (Redis: 500 ms).
LOAD_TIMEOUT: Final = 0.5
#: Bytes kept free in the Lua state, past what a Python callback returns, whenever Lua runs
#: on from Python: lupa converts the values (and grows the Lua stack) in C code holding the
#: GIL outside any protected call, where a refused allocation is fatal (see _room).
MEMORY_SLACK: Final = 64 * 1024
#: What a Python exception raised into Lua costs the state (its userdata), with margin.
ERROR_BYTES: Final = 1024

BUSY_SCRIPT: Final = ("Redis is busy running a script. You can only call SCRIPT KILL or "
                      "SHUTDOWN NOSAVE.")
BUSY_FUNCTION: Final = ("Redis is busy running a script. You can only call FUNCTION KILL or "
                        "SHUTDOWN NOSAVE.")


class RawError(CommandError):
    """An error reply whose whole text (prefix included) a script chose: ``{err="..."}``."""

    def __init__(self, text: str) -> None:
        prefix, _, rest = text.partition(" ")
        super().__init__(rest, prefix=prefix or "ERR")
        self.text = text

    def reply(self) -> bytes:
        text = self.text.replace("\r", " ").replace("\n", " ")
        return b"-" + text.encode("utf-8", "replace") + b"\r\n"


def error_text(exc: CommandError) -> str:
    """The text of an error reply without ``-`` and CRLF."""
    return exc.reply()[1:-2].decode("utf-8", "replace")


def sha1hex(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


@dataclasses.dataclass
class Script:
    """One cached script: its body and compiled function."""

    sha: str
    body: bytes
    fn: Any
    #: Loaded by SCRIPT LOAD: kept when the cache is over its bound (only EVAL's go).
    pinned: bool = False
    read_only: bool = False  # shebang flag no-writes


@dataclasses.dataclass
class Function:
    """One function of a library."""

    name: str
    fn: Any
    library: str
    flags: frozenset[str]
    description: bytes | None = None


@dataclasses.dataclass
class Library:
    name: str
    code: bytes
    functions: dict[str, Function]


class _Call:
    """One script or function run, handed to the worker thread."""

    __slots__ = ("ctx", "work", "read_only", "name", "kind", "wrote", "kill", "stopped",
                 "deadline",
                 "outcome", "finished", "on_done", "done", "lock", "resp", "started", "argv",
                 "max_memory", "oom")

    def __init__(self, ctx: ScriptContext | None, work: Any, read_only: bool, name: str,
                 kind: str) -> None:
        self.ctx = ctx
        self.work = work  # a callable run on the worker -> the reply
        self.read_only = read_only
        self.name = name
        self.kind = kind  # "script" | "function" | "load"
        self.wrote = False
        self.kill = False
        #: The run is over after a kill or a deadline: the hook stops failing.
        self.stopped = False
        self.deadline: float | None = None
        self.outcome: Any = None
        self.finished = False
        self.on_done: Any = None
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.resp = 2
        self.started = time.monotonic()
        #: The EVAL / FCALL request (FUNCTION STATS shows it).
        self.argv: list[bytes] = []
        #: lua-max-memory when the call was made (the worker applies it).
        self.max_memory = 0
        #: A Python callback found no room in the Lua state for its result: the run is
        #: stopped at the next hook as by a kill, its callbacks do nothing meanwhile.
        self.oom = False


class ScriptEngine:
    """The Lua state, the script cache, the function libraries and the worker thread."""

    def __init__(self) -> None:
        self._runtime: Any = None
        self._lua: tuple[Any, ...] = ()
        self.scripts: collections.OrderedDict[str, Script] = collections.OrderedDict()
        self.cache_bytes = 0
        self.libraries: dict[str, Library] = {}
        self.functions: dict[str, Function] = {}
        self.current: _Call | None = None
        #: The loop stopped waiting for ``current`` (past busy-reply-threshold).
        self.busy = False
        self._jobs: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._memory_limit = 0
        self._rawget: Any = None
        self._memory_used = 0
        #: Scripts evicted from the cache by its byte bound (INFO, tests).
        self.evicted = 0
        self.calls = 0

    # -- the Lua state ----------------------------------------------------------------------
    def _ensure(self, max_memory: int) -> None:
        if self._runtime is None:
            if lua51 is None:  # pragma: no cover - lupa is in the server extra
                raise CommandError("scripting needs the lupa package: pip install "
                                   "'shaledb[server]'")

            def deny(obj: Any, name: Any, setting: bool) -> Any:
                # No Python attribute is reachable from Lua (a function's __globals__ ...).
                # (The sandbox never lets a script index a Python object: its metatable's
                # __index is Lua's; this stays as a second wall.)
                raise AttributeError("not accessible from a script")

            # Built with a limit so that lupa counts the state's memory; the limit itself
            # is set by _room around each run (lifted while Python code runs: see _room).
            runtime = lua51.LuaRuntime(encoding=None, unpack_returned_tuples=True,
                                       register_eval=False, register_builtins=False,
                                       attribute_filter=deny, max_memory=max_memory or None)
            self._runtime = runtime
            runtime.set_max_memory(0)
            glob = runtime.globals()
            glob.python = None
            # Reading a script's tables from Python must not run their metatables (a
            # returned _G's __index raises; a crafted __index could call redis).
            self._rawget = glob.rawget
            source = importlib.resources.files(__package__).joinpath(
                "lua_sandbox.lua").read_bytes()
            guard = self._guarded
            self._lua = tuple(runtime.execute(
                source, guard(self._redis_call), guard(self._redis_call_raise),
                guard(self._log), guard(self._sha1), self._guarded_hook,
                *(guard(lualib.for_lua(fn)) for fn in (
                    lualib.json_encode, lualib.bound(lualib.json_decode, runtime),
                    lualib.msgpack_pack, lualib.bound(lualib.msgpack_unpack, runtime),
                    lualib.bit_op, lualib.struct_pack, lualib.struct_unpack,
                    lualib.struct_size)),
                guard(self._setresp), guard(self._acl_check), lualib.NULL_KEY,
                self._unlimit, guard(_py_str)))
            # What the bootstrap chunk could reach stays out of every script's reach: the
            # sandbox closed over what it needs, and scripts see only their own globals.
            for name in list(glob):
                glob[name] = None
        self._memory_limit = max_memory

    # -- the Lua state's memory ---------------------------------------------------------------
    # lua-max-memory is lupa's allocation limit. lupa converts values between Python and Lua
    # (a callback's arguments and results, a table_from, a call's arguments) in C code that
    # holds the GIL *outside* any protected call: an allocation refused there longjmps past
    # lupa's GIL release (the Lua thread then waits for the GIL it holds, and with it the
    # whole server: the hang of Redis' TCL scripting group), or, with no Lua call around,
    # panics and aborts the process. Lua 5.1 has no emergency collection either: a state
    # whose garbage reaches the limit fails even when little of it is alive. So the limit is
    # set only while Lua code runs, and always with room for what lupa converts next:
    #   * every Python callable handed to Lua is _guarded: the limit is lifted on entry, and
    #     before the result goes back _room collects garbage if needed and sets the limit
    #     to lua-max-memory (with MEMORY_SLACK + the result's size free below it);
    #   * a run sets it (_room) before its Lua function is called and the sandbox lifts it
    #     (_unlimit) before the results come back; Python code around runs unlimited.
    # When even a collection leaves no room, the callback returns nil (no allocation), the
    # call is marked ``oom`` and the hook stops it as a kill would ("not enough memory").
    def _room(self, need: int) -> bool:
        """Set the limit for Lua code that goes on after a Python callback returns ``need``
        bytes of values: True when they fit under lua-max-memory with MEMORY_SLACK."""
        rt = self._runtime
        limit = self._memory_limit
        if not limit:
            return True
        need += MEMORY_SLACK
        used = rt.get_memory_used()
        if used + need > limit:
            rt.gccollect()
            used = rt.get_memory_used()
        if used + need <= limit:
            rt.set_max_memory(limit)
            return True
        # No room: Lua code may not grow the state any more; what is pushed next (nil)
        # allocates nothing.
        rt.set_max_memory(max(limit, used + MEMORY_SLACK))
        call = self.current
        if call is not None:
            call.oom = True
        return False

    def _oom_text(self) -> str:
        return (f"not enough memory: the Lua state is at lua-max-memory "
                f"({self._memory_limit} bytes); raise it with CONFIG SET")

    def _unlimit(self) -> None:
        """Lift the limit (the sandbox, before its results go back to Python)."""
        self._runtime.set_max_memory(0)

    def _guarded(self, fn: Any) -> Any:
        """``fn`` as Lua may call it: runs unlimited, returns only what fits (see _room)."""
        def guarded(*args: Any) -> Any:
            call = self.current
            if call is not None and call.oom:
                return None  # the hook stops the run; nothing is converted meanwhile
            self._runtime.set_max_memory(0)
            try:
                result = fn(*args)
            except BaseException:
                if self._room(ERROR_BYTES):
                    raise
                return None
            if self._room(_push_size(result)):
                return result
            return None

        return guarded

    def _guarded_hook(self) -> bool:
        """The count hook: once it stops the run (kill, deadline, no memory), the limit stays
        lifted: every later instruction raises, the error escapes the sandbox's own code and
        lupa converts it."""
        self._runtime.set_max_memory(0)
        stop = self._hook()
        if not stop:
            self._room(0)
        return stop

    def memory_used(self) -> int:
        """Bytes used by the Lua state after the last run (INFO used_memory_lua)."""
        return self._memory_used

    # -- the worker ---------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            call = self._jobs.get()
            if call is None:
                return
            try:
                call.outcome = self._run_call(call)
            except CommandError as exc:
                call.outcome = exc
            except BaseException as exc:  # noqa: BLE001 - a bug: answer, keep the worker
                log.error("internal error running a script", exc_info=exc)
                call.outcome = CommandError(
                    f"internal error running the script ({type(exc).__name__}); see the "
                    "server log")
            with call.lock:
                call.finished = True
                callback = call.on_done
            call.done.set()
            if callback is not None:
                callback()

    def _run_call(self, call: _Call) -> Any:
        """Run ``call`` (on the worker); a SELECT inside the script does not outlive it.

        Only this thread ever calls into the Lua state (it is built here too): the loop
        thread never waits on lupa's lock while holding the GIL."""
        client = call.ctx.client if call.ctx is not None else None
        db = client.db if client is not None else 0
        try:
            self._ensure(call.max_memory)
            self._runtime.set_max_memory(0)
            return call.work(call)
        finally:
            if client is not None:
                client.db = db
            if self._runtime is not None:
                self._runtime.set_max_memory(0)
                self._memory_used = int(self._runtime.get_memory_used())

    def _start(self, call: _Call) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="shaledb-lua",
                                            daemon=True)
            self._thread.start()
        self.current = call
        self._jobs.put(call)

    def _wait(self, call: _Call, services: ScriptServices, allow_busy: bool) -> Any:
        """Wait for ``call``; past the busy threshold (when allowed) return a Deferred and
        let the loop answer BUSY meanwhile."""
        threshold = services.config.busy_reply_threshold / 1000
        if not allow_busy or threshold <= 0:
            call.done.wait()
            return self._outcome(call)
        if call.done.wait(threshold):
            return self._outcome(call)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        turn = services.turn
        keyspace = services.keyspace
        with call.lock:
            if call.finished:
                return self._outcome(call)
            self.busy = True
            turn.frozen = True
            keyspace.frozen = True
            log.warning("a script has run for %d ms (busy-reply-threshold): other clients "
                        "get BUSY until it ends or SCRIPT KILL stops it",
                        services.config.busy_reply_threshold)

            def finished() -> None:
                self.busy = False
                turn.frozen = False
                keyspace.frozen = False
                reply = self._outcome(call)
                wrote = turn.txn.dirty
                # Commit the script's writes now (and release the replies parked while
                # frozen); a failed commit turns the reply into its error.
                reply = turn.settle_reply(reply)
                if not future.done():
                    future.set_result(Written(reply) if wrote else reply)

            call.on_done = lambda: loop.call_soon_threadsafe(finished)
        return Deferred(future)

    def _outcome(self, call: _Call) -> Any:
        """The reply of a finished call. A script's error is *returned*: raised, the
        dispatcher would take back the writes the script made before it failed, and Redis
        keeps them (a script is atomic, not transactional). A load's error is raised."""
        if self.current is call:
            self.current = None
        if isinstance(call.outcome, CommandError) and call.kind == "load":
            raise call.outcome
        return call.outcome

    def kill(self, kind: str) -> None:
        """SCRIPT KILL / FUNCTION KILL."""
        call = self.current
        if call is None or not self.busy or call.kind == "load":
            raise CommandError("No scripts in execution right now.", prefix="NOTBUSY")
        if (call.kind == "script") != (kind == "script"):
            # SCRIPT KILL does not stop a function (nor FUNCTION KILL a script): BUSY, as Redis.
            raise self.busy_error()
        if call.wrote:
            raise CommandError(
                "Sorry the script already executed write commands against the dataset. You "
                "can either wait the script termination or kill the server in a hard way "
                "using the SHUTDOWN NOSAVE command.", prefix="UNKILLABLE")
        call.kill = True

    def busy_error(self) -> CommandError:
        call = self.current
        return CommandError(BUSY_FUNCTION if call is not None and call.kind == "function"
                            else BUSY_SCRIPT, prefix="BUSY")

    def close(self) -> None:
        """Stop the worker (SHUTDOWN): a running script is stopped at its next hook, its
        writes are never committed."""
        call = self.current
        if call is not None:
            call.kill = True
            call.wrote = False
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5.0)
            self._thread = None

    # -- callbacks from Lua (on the worker) -------------------------------------------------
    def _hook(self) -> bool:
        call = self.current
        if call is None or call.stopped:
            return False
        if call.deadline is not None and time.monotonic() > call.deadline:
            return True
        return call.kill or call.oom

    def _invoke(self, call: _Call, fn: Any, *args: Any) -> tuple[Any, Any]:
        """Call a sandbox function -> (ok, result). After a kill the hook raises at every
        instruction, also in the sandbox's code around the script: that error reaches
        here, and counts as the kill."""
        if not self._room(0):
            # Even a collection leaves no room: the state's live data is at lua-max-memory.
            call.oom = False
            raise CommandError(self._oom_text())
        try:
            result = fn(*args)
        except lua51.LuaError:
            self._runtime.set_max_memory(0)
            if not (call.kill or call.oom or call.deadline is not None):
                raise
            result = (False, None)
        self._runtime.set_max_memory(0)
        if call.kill or call.oom or call.deadline is not None:
            call.stopped = True
            self._lua[4]()  # clear_hook
        return result[0], result[1]

    def _log(self, level: int, message: bytes) -> None:
        levels = {0: logging.DEBUG, 1: logging.INFO, 2: logging.INFO, 3: logging.WARNING}
        # The message is the script's: logged as data (%r), never as a format.
        log.log(levels.get(level, logging.INFO), "script: %r", message[:4096])

    @staticmethod
    def _sha1(data: bytes) -> bytes:
        return sha1hex(data).encode()

    def _setresp(self, version: int) -> None:
        call = self.current
        if call is not None:
            call.resp = int(version)

    def _command(self, call: _Call, args: tuple[Any, ...]) -> tuple[list[bytes], Any]:
        """The request of a redis.call and its command (errors as Redis words them)."""
        if not args:
            raise CommandError("Please specify at least one argument for this redis lib call")
        argv: list[bytes] = []
        for a in args:
            if type(a) is bytes:
                argv.append(a)
            elif type(a) is int:
                argv.append(b"%d" % a)
            elif type(a) is float:
                argv.append(b"%.17g" % a if a != int(a) else b"%d" % int(a))
            else:
                raise CommandError("Lua redis lib command arguments must be strings or "
                                   "integers")
        assert call.ctx is not None
        table = call.ctx.services.dispatcher.table
        cmd = table.get(argv[0].lower())
        if cmd is None:
            raise CommandError("Unknown Redis command called from script")
        if not cmd.arity_ok(len(argv)):
            raise CommandError("Wrong number of args calling Redis command from script")
        return argv, cmd

    def _acl_check(self, *args: Any) -> tuple[Any, ...]:
        call = self.current
        if call is None or call.ctx is None:
            return (None, b"redis.acl_check_cmd() called outside a script")
        try:
            argv, cmd = self._command(call, args)
        except CommandError:
            return (None, b"Invalid command passed to redis.acl_check_cmd()")
        client = call.ctx.client
        if client.user.unrestricted:
            return (True,)
        # The same rules as running it: one selector must allow the command and its keys.
        return (call.ctx.services.acl.evaluate(client.user, cmd, argv) is None,)

    def _redis_call_raise(self, *args: Any) -> Any:
        """redis.call: the reply, or raise its error (a Lua error in the script)."""
        ok, value = self._redis_call(*args)
        if not ok:
            raise _CallError(ERROR_MARK + value.decode("utf-8", "replace"))
        return value

    def _redis_call(self, *args: Any) -> tuple[bool, Any]:
        """redis.call / redis.pcall: (True, the reply as Lua values) or (False, the error
        text)."""
        call = self.current
        if call is None or call.ctx is None:
            return False, b"ERR redis.call() called outside a script"
        ctx = call.ctx
        try:
            argv, cmd = self._command(call, args)
            if cmd.name in ("xread", "xreadgroup"):
                # Redis 7.0 lets scripts read streams, only not wait on them.
                opts = [a.lower() for a in argv[1:]]
                opts = opts[:opts.index(b"streams")] if b"streams" in opts else opts
                if b"block" in opts:
                    raise CommandError(f"{cmd.name} command is not allowed with BLOCK "
                                       "option from scripts")
            elif "noscript" in cmd.flags or "blocking" in cmd.categories:
                # (Redis 7.0 flags its blocking commands noscript too.)
                raise CommandError("This Redis command is not allowed from script")
            if cmd.name in ("xread", "xreadgroup") and any(a.lower() == b"block"
                                                           for a in argv[1:]):
                raise CommandError(f"{cmd.name} command is not allowed with BLOCK option "
                                   "from scripts")
            if call.read_only and ("write" in cmd.flags or "may-write" in cmd.flags):
                raise CommandError("Write commands are not allowed from read-only scripts.")
            services = ctx.services
            client = ctx.client
            if not client.user.unrestricted:
                denied = services.acl.check(client, cmd, argv, "lua")
                if denied is not None:
                    raise CommandError(
                        "The user executing the script can't run this command or "
                        "subcommand", prefix="NOPERM")
            if "write" in cmd.flags:
                call.wrote = True
            saved = client.resp
            client.resp = call.resp
            try:
                reply = services.dispatcher.run_in_exec(ctx, argv)
            finally:
                client.resp = saved
        except CommandError as exc:
            return False, error_text(exc).encode()
        except (ReadOnlyError, StorageError) as exc:
            return False, f"MISCONF the database refuses writes: {exc}".encode()
        except ShaleError as exc:
            return False, f"ERR {type(exc).__name__}: {exc}".encode()
        if isinstance(reply, CommandError):
            return False, error_text(reply).encode()
        return True, self._to_lua(reply, call.resp)

    # -- conversions ------------------------------------------------------------------------
    def _to_lua(self, reply: Any, resp: int) -> Any:
        """A command's reply as Lua values, as Redis converts them (RESP2: null -> false,
        status -> {ok=...}, error -> {err=...}, arrays -> tables)."""
        rt = self._runtime
        t = type(reply)
        if t is bytes:
            return reply
        if t is int:
            return reply
        if t is Status:
            return rt.table_from({b"ok": bytes(reply)})
        if reply is None or reply is NULL_ARRAY:
            return None if resp == 3 else False
        if t is bool:
            return reply if resp == 3 else int(reply)
        if t is float:
            if resp == 3:
                return rt.table_from({b"double": reply})
            return format_double(reply)
        if t is Verbatim:
            return bytes(reply)
        if t is str:
            return reply.encode()
        if t is Encoded:
            return self._to_lua(_parse_resp(b"".join(reply.parts)), resp)
        if t in (list, tuple, SetReply):
            return rt.table_from([self._to_lua(x, resp) for x in reply])
        if t in (set, frozenset):
            if resp == 3:
                return rt.table_from({b"set": rt.table_from(
                    {self._to_lua(x, resp): True for x in reply})})
            return rt.table_from([self._to_lua(x, resp) for x in reply])
        if t is dict:
            if resp == 3:
                return rt.table_from({b"map": rt.table_from(
                    {self._to_lua(k, resp): self._to_lua(v, resp) for k, v in reply.items()})})
            flat: list[Any] = []
            for k, v in reply.items():
                flat += (self._to_lua(k, resp), self._to_lua(v, resp))
            return rt.table_from(flat)
        if isinstance(reply, CommandError):
            return rt.table_from({b"err": error_text(reply).encode()})
        if isinstance(reply, _RespError):
            return rt.table_from({b"err": bytes(reply)})
        return False

    def _to_reply(self, value: Any, budget: list[int], depth: int = 0, resp: int = 2) -> Any:
        """A script's Lua return value as a reply (Redis' conversion: numbers truncated to
        integers, true -> 1, false/nil -> null, {ok}/{err}, tables as arrays up to the
        first nil). ``budget`` is what is left of the client's output limit."""
        if depth > MAX_REPLY_DEPTH:
            return CommandError("reached lua stack limit")
        t = type(value)
        if t is bytes:
            budget[0] -= len(value) + 16
            return value
        if t is int:
            budget[0] -= 24
            return value
        if t is float:
            budget[0] -= 24
            if not math.isfinite(value):
                return -(2**63)
            return max(-(2**63), min(2**63 - 1, int(value)))
        if value is True:
            return True if resp == 3 else 1
        if value is False:
            return False if resp == 3 else None
        if value is None:
            return None
        if lua51.lua_type(value) != "table":
            return None
        rawget = self._rawget
        err = rawget(value, b"err")
        if err is not None:
            return RawError(_as_text(err))
        ok = rawget(value, b"ok")
        if ok is not None:
            return Status(ok if isinstance(ok, bytes) else _as_text(ok).encode())
        double = rawget(value, b"double")
        if double is not None and isinstance(double, (int, float)):
            return float(double)
        # RESP3 types a script built (redis.setresp(3)): {map={...}}, {set={...}}; the
        # client gets them in its own protocol (a RESP2 client a flat array).
        for kind in (b"map", b"set"):
            inner = rawget(value, kind)
            if inner is not None and lua51.lua_type(inner) == "table":
                pairs = list(inner.items())
                budget[0] -= 32 * len(pairs)
                if budget[0] < 0:
                    raise _Overflow
                if kind == b"map":
                    return {self._to_reply(k, budget, depth + 1, resp):
                            self._to_reply(v, budget, depth + 1, resp) for k, v in pairs}
                return SetReply(self._to_reply(k, budget, depth + 1, resp) for k, _ in pairs)
        items: list[Any] = []
        i = 1
        while True:
            item = rawget(value, i)
            if item is None:
                break
            items.append(self._to_reply(item, budget, depth + 1, resp))
            if budget[0] < 0:
                raise _Overflow
            i += 1
        budget[0] -= 16
        return items

    # -- scripts ------------------------------------------------------------------------------
    def load(self, services: ScriptServices, body: bytes, pinned: bool) -> Script:
        """Compile ``body`` (cached by SHA1) -> the script; ``-ERR Error compiling script``
        on a syntax error."""
        limit = services.config.lua_max_script_bytes
        if len(body) > limit:
            raise CommandError(f"script of {len(body)} bytes is over lua-max-script-bytes "
                               f"({limit}); raise it with CONFIG SET")
        sha = sha1hex(body)
        script = self.scripts.get(sha)
        if script is not None:
            self.scripts.move_to_end(sha)
            script.pinned = script.pinned or pinned
            return script
        flags, code = _shebang(body)

        def work(call: _Call) -> Any:
            fn, message = self._lua[0](code, b"@user_script")
            if fn is None:
                text = message.decode("utf-8", "replace") if isinstance(message, bytes) else \
                    str(message)
                raise CommandError(f"Error compiling script (new function): {text}")
            return fn

        fn = self._on_worker(work, services.config.lua_max_memory)
        script = Script(sha, body, fn, pinned, read_only="no-writes" in flags)
        self.scripts[sha] = script
        self.cache_bytes += len(body)
        self._evict(services.config.lua_script_cache_bytes)
        return script

    def _on_worker(self, work: Any, max_memory: int) -> Any:
        """Run ``work`` on the Lua thread and wait for it (compiling: no script code runs)."""
        call = _Call(None, work, False, "", "load")
        call.max_memory = max_memory
        self._start(call)
        call.done.wait()
        return self._outcome(call)

    def _evict(self, limit: int) -> None:
        """Drop the least recently used EVAL scripts past ``limit`` bytes (SCRIPT LOAD's are
        kept: a client loaded them to call by SHA)."""
        if self.cache_bytes <= limit:
            return
        for sha in list(self.scripts):
            if self.cache_bytes <= limit:
                break
            script = self.scripts[sha]
            if script.pinned:
                continue
            del self.scripts[sha]
            self.cache_bytes -= len(script.body)
            self.evicted += 1

    def flush(self) -> None:
        """SCRIPT FLUSH."""
        self.scripts.clear()
        self.cache_bytes = 0

    def run_script(self, ctx: ScriptContext, script: Script, keys: list[bytes], args: list[bytes],
                   read_only: bool) -> Any:
        """EVAL / EVALSHA: run ``script`` -> its reply (or a Deferred past the threshold)."""
        read_only = read_only or script.read_only

        def work(call: _Call) -> Any:
            rt = self._runtime
            ok, res = self._invoke(call, self._lua[1], script.fn, rt.table_from(keys),
                                   rt.table_from(args), HOOK_EVERY)
            return self._result(call, ok, res, script.sha)

        return self._submit(ctx, work, read_only, script.sha, "script")

    def _submit(self, ctx: ScriptContext, work: Any, read_only: bool, name: str, kind: str,
                argv: list[bytes] | None = None) -> Any:
        services = ctx.services
        call = _Call(ctx, work, read_only, name, kind)
        call.argv = argv or []
        call.max_memory = services.config.lua_max_memory
        self.calls += 1
        self._start(call)
        return self._wait(call, services, not ctx.in_exec)

    def _result(self, call: _Call, ok: Any, res: Any, name: str) -> Any:
        """The reply of a finished run: its value, or its error with Redis' suffix."""
        if call.oom:
            raise RawError(f"ERR Error running script {name}, {self._oom_text()}")
        if call.kill and not call.wrote:
            raise CommandError("Script killed by user with SCRIPT KILL...")
        if not ok:
            if lua51.lua_type(res) == "table":
                rawget = self._rawget
                err = rawget(res, b"err")
                text = _as_text(err) if err is not None else "ERR unknown error"
                source, line = rawget(res, b"source"), rawget(res, b"line")
                if source is not None and line is not None:
                    text += (f" script: {name}, on {_as_text(source)}:"
                             f"{int(line) if isinstance(line, (int, float)) else line}.")
                raise RawError(text)
            raise RawError(f"ERR Error running script {name}, {_as_text(res)}")
        assert call.ctx is not None
        budget = [max(call.ctx.client.output_budget, 0)]
        try:
            return self._to_reply(res, budget, 0, call.resp)
        except _Overflow:
            call.ctx.overflow()
            return None

    # -- functions ----------------------------------------------------------------------------
    def function_load(self, ctx: ScriptContext, code: bytes, replace: bool) -> str:
        """FUNCTION LOAD [REPLACE] code -> the library name."""
        services = ctx.services
        limit = services.config.lua_max_script_bytes
        if len(code) > limit:
            raise CommandError(f"library of {len(code)} bytes is over lua-max-script-bytes "
                               f"({limit}); raise it with CONFIG SET")
        name, body = _library_header(code)
        if name in self.libraries and not replace:
            raise CommandError(f"Library '{name}' already exists")
        registered: dict[str, Function] = {}

        def register(*args: Any) -> tuple[Any, ...]:
            try:
                fname, fn, flags, desc = _register_args(args, self._rawget)
                if fname.lower() in (n.lower() for n in registered):
                    raise_lua("Function already exists in the library")
                if not _valid_name(fname):
                    # (Redis 7.0 words it so for function names too)
                    raise_lua("Library names can only contain letters, numbers, or "
                              "underscores(_) and must be at least one character long")
            except _LuaRaise as exc:
                return (False, str(exc).encode())
            registered[fname] = Function(fname, fn, name, flags, desc)
            return (True,)

        def work(call: _Call) -> Any:
            call.deadline = time.monotonic() + LOAD_TIMEOUT
            ok, res = self._invoke(call, self._lua[2], body, b"@user_function",
                                   self._guarded(register))
            if not ok:
                if call.deadline is not None and time.monotonic() > call.deadline:
                    raise CommandError("FUNCTION LOAD timeout")
                if call.oom:
                    raise CommandError(f"Error registering functions: {self._oom_text()}")
                if lua51.lua_type(res) == "table":
                    err = _as_text(self._rawget(res, b"err"))
                    raise RawError(err if err.startswith("ERR Error compiling") else
                                   f"ERR Error registering functions: {err.removeprefix('ERR ')}")
                raise CommandError(f"Error registering functions: {_as_text(res)}")
            return None

        call = _Call(ctx, work, False, name, "load")
        call.max_memory = services.config.lua_max_memory
        self._start(call)
        call.done.wait()
        self._outcome(call)
        if not registered:
            raise CommandError("No functions registered")
        for fname in registered:  # function names are case-insensitive, as Redis'
            owner = self.functions.get(fname.lower())
            if owner is not None and owner.library != name:
                raise CommandError(f"Function {fname} already exists")
        old = self.libraries.pop(name, None)
        if old is not None:
            for fname in old.functions:
                self.functions.pop(fname.lower(), None)
        self.libraries[name] = Library(name, code, registered)
        self.functions.update((fname.lower(), f) for fname, f in registered.items())
        return name

    def function_delete(self, name: str) -> None:
        lib = self.libraries.pop(name, None)
        if lib is None:
            raise CommandError("Library not found")
        for fname in lib.functions:
            self.functions.pop(fname.lower(), None)

    def function_flush(self) -> None:
        self.libraries.clear()
        self.functions.clear()

    def fcall(self, ctx: ScriptContext, name: bytes, keys: list[bytes], args: list[bytes],
              read_only: bool, argv: list[bytes] | None = None) -> Any:
        fn = self.functions.get(name.decode("utf-8", "replace").lower())
        if fn is None:
            raise CommandError("Function not found")
        if read_only and "no-writes" not in fn.flags:
            raise CommandError("Can not execute a script with write flag using *_ro command.")
        def work(call: _Call) -> Any:
            rt = self._runtime
            ok, res = self._invoke(call, self._lua[3], fn.fn, rt.table_from(keys),
                                   rt.table_from(args), HOOK_EVERY)
            return self._result(call, ok, res, fn.name)

        return self._submit(ctx, work, read_only or "no-writes" in fn.flags, fn.name,
                            "function", argv)


#: How a redis.call error is told from other Python exceptions in Lua (lua_sandbox.lua).
ERROR_MARK: Final = "\0redis.call:"


class _CallError(Exception):
    """A redis.call error, raised into the script."""


class _Overflow(Exception):
    """A script's reply passed the client's output limit while being converted."""


class _RespError(bytes):
    """An error inside a parsed RESP reply."""


class _LuaRaise(Exception):
    """Raised by a Python helper called from Lua; its Lua wrapper raises the message."""


def raise_lua(message: str) -> NoReturn:
    """Fail the Python helper with ``message`` (a Lua error at the caller's line)."""
    raise _LuaRaise(message)


def _py_str(obj: Any) -> bytes:
    """tostring() of a Python object in a script (a redis.call error): bytes, since the
    runtime has no encoding (a str would reach Lua as a userdata)."""
    return str(obj).encode("utf-8", "replace")


def _push_size(value: Any) -> int:
    """About what lupa allocates in the Lua state to return ``value`` from Python: new
    strings (and tuple items unpacked onto the stack); Lua objects already exist."""
    t = type(value)
    if t is bytes:
        return len(value) + 64
    if t is str:
        return len(value) * 4 + 64
    if t is tuple:
        return sum(_push_size(v) for v in value) + 16 * len(value)
    if value is None or t in (bool, int, float) or lua51.lua_type(value) is not None:
        return 16
    return ERROR_BYTES  # any other Python object becomes a userdata


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def _valid_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c == "_" for c in name) and name.isascii()


def _shebang(body: bytes) -> tuple[frozenset[str], bytes]:
    """A ``#!lua flags=...`` first line -> (flags, the code with the line blanked)."""
    if not body.startswith(b"#!"):
        return frozenset(), body
    line, nl, rest = body.partition(b"\n")
    words = line[2:].split()
    if not words or words[0] != b"lua":
        raise CommandError(f"Unexpected engine in script shebang: "
                           f"{(words[0] if words else b'').decode('utf-8', 'replace')}")
    flags: set[str] = set()
    for word in words[1:]:
        if not word.startswith(b"flags="):
            raise CommandError(f"Unknown lua shebang option: "
                               f"{word.decode('utf-8', 'replace')}")
        for flag in word[6:].split(b","):
            if not flag:
                continue
            text = flag.decode("utf-8", "replace")
            if text not in ("no-writes", "allow-oom", "allow-stale", "no-cluster",
                            "allow-cross-slot-keys"):
                raise CommandError(f"Unexpected flag in script shebang: {text}")
            flags.add(text)
    return frozenset(flags), b"--" + line + nl + rest  # keep line numbers


def _library_header(code: bytes) -> tuple[str, bytes]:
    """``#!lua name=<lib>`` -> (name, code)."""
    line, nl, rest = code.partition(b"\n")
    if not line.startswith(b"#!"):
        raise CommandError("Missing library metadata")
    # The engine is what follows "#!" up to the first space ("#! name=x": engine '').
    engine, *words = line[2:].split(b" ")
    if engine.lower() != b"lua":
        raise CommandError(f"Engine '{engine.decode('utf-8', 'replace')}' not found")
    name = None
    for word in words:
        if not word:
            continue
        key, _, value = word.partition(b"=")
        if key != b"name":
            raise CommandError(f"Invalid metadata value given: {word.decode('utf-8', 'replace')}")
        if name is not None:
            raise CommandError("Invalid metadata value, name argument was given multiple times")
        if len(value) >= 2 and value[:1] == value[-1:] and value[:1] in (b'"', b"'"):
            value = value[1:-1]  # name="foo", as Redis' sdssplitargs reads it
        name = value.decode("utf-8", "replace")
    if name is None:
        raise CommandError("Library name was not given")
    if not _valid_name(name):
        raise CommandError("Library names can only contain letters, numbers, or underscores(_)"
                           " and must be at least one character long")
    return name, b"--" + line + nl + rest


def _register_args(args: tuple[Any, ...], rawget: Any
                   ) -> tuple[str, Any, frozenset[str], bytes | None]:
    """redis.register_function's arguments, checked with Redis 7.0's error texts."""
    desc: Any = None
    flags: set[str] = set()
    if len(args) == 1:
        t = args[0]
        if lua51.lua_type(t) != "table":
            raise_lua("calling redis.register_function with a single argument is only "
                      "applicable to Lua table (representing named arguments).")
        allowed = {b"function_name", b"callback", b"flags", b"description"}
        for key in t:  # a LuaTable iterates its keys
            if key not in allowed:
                raise_lua("unknown argument given to redis.register_function")
        # (rawget: a metamethod would run Lua code, unprotected, inside this callback)
        name, fn, flags_t, desc = (rawget(t, k) for k in (b"function_name", b"callback",
                                                           b"flags", b"description"))
        if name is None:
            raise_lua("redis.register_function must get a function name argument")
        if fn is None:
            raise_lua("redis.register_function must get a callback argument")
        if not isinstance(name, bytes):
            raise_lua("function_name argument given to redis.register_function must be a "
                      "string")
        if lua51.lua_type(fn) != "function":
            raise_lua("callback argument given to redis.register_function must be a "
                      "function")
        if desc is not None and not isinstance(desc, bytes):
            raise_lua("description argument given to redis.register_function must be a "
                      "string")
        if flags_t is not None:
            if lua51.lua_type(flags_t) != "table":
                raise_lua("flags argument to redis.register_function must be a table "
                          "representing function flags")
            for f in flags_t.values():
                text = _as_text(f)
                if text not in ("no-writes", "allow-oom", "allow-stale", "no-cluster",
                                "allow-cross-slot-keys"):
                    raise_lua("unknown flag given")
                flags.add(text)
    elif len(args) == 2:
        name, fn = args
        if not isinstance(name, bytes):
            raise_lua("first argument to redis.register_function must be a string")
        if lua51.lua_type(fn) != "function":
            raise_lua("second argument to redis.register_function must be a function")
    else:
        raise_lua("wrong number of arguments to redis.register_function")
    return name.decode("utf-8", "replace"), fn, frozenset(flags), desc


def _parse_resp(data: bytes) -> Any:
    """One RESP value from ``data`` (an :class:`Encoded` reply, to hand it to Lua)."""
    value, _ = _parse_at(data, 0)
    return value


def _parse_at(data: bytes, pos: int) -> tuple[Any, int]:
    end = data.index(b"\r\n", pos)
    kind, line = data[pos:pos + 1], data[pos + 1:end]
    pos = end + 2
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        return data[pos:pos + n], pos + n + 2
    if kind in (b"*", b"~", b">"):
        n = int(line)
        if n < 0:
            return NULL_ARRAY, pos
        items = []
        for _ in range(n):
            item, pos = _parse_at(data, pos)
            items.append(item)
        return items, pos
    if kind == b"%":
        out = {}
        for _ in range(int(line)):
            k, pos = _parse_at(data, pos)
            v, pos = _parse_at(data, pos)
            out[k] = v
        return out, pos
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return Status(line), pos
    if kind == b"-":
        return _RespError(line), pos
    if kind == b"_":
        return None, pos
    if kind == b",":
        return float(line), pos
    if kind == b"#":
        return line == b"t", pos
    if kind == b"=":
        n = int(line)
        return data[pos + 4:pos + n], pos + n + 2
    raise ValueError(f"unexpected RESP type {kind!r}")


__all__ = ["BUSY_FUNCTION", "BUSY_SCRIPT", "Function", "Library", "RawError", "Script",
           "ScriptEngine", "sha1hex"]
