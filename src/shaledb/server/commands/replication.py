"""Replication commands: REPLICAOF / SLAVEOF, ROLE, WAIT, REPLCONF, and ShaleDB's
SHALEDB.PSYNC (the handshake of a ShaleDB replica) and SHALEDB.ROLE (role and term at once,
for the failover controller). PSYNC and SYNC, which a real Redis replica sends, answer an
error that says why (exec/replication.py; docs/format.md, "Replication stream")."""

from __future__ import annotations

from typing import Any

from ..errors import CommandError
from ..exec.deferred import Deferred
from ..exec.replication import STREAM_VERSION
from ..net.protocol import OK, Status
from . import SYNTAX, CommandFamily, Context, parse_int

FAMILY = CommandFamily()
command = FAMILY.command

_ADMIN = "admin slow dangerous"

#: The answer to a Redis replica (PSYNC, SYNC): its RDB stream is not what we send.
REDIS_REPLICA_REFUSED = (
    "this is a ShaleDB primary: it replicates to ShaleDB replicas only (SHALEDB.PSYNC, "
    "a stream of engine write groups), not to Redis replicas (PSYNC / SYNC and RDB). Run "
    "the replica as `shaledb serve --replicaof HOST PORT`")


def _port(arg: bytes) -> int:
    port = parse_int(arg, "Invalid master port")
    if not 0 < port < 65536:
        raise CommandError("Invalid master port")
    return port


def _not_under_failover(ctx: Context, name: str) -> None:
    """Automatic failover owns the role: a change behind the election's back would leave a
    primary it keeps the lease of but that takes no writes, or a fenced primary nobody
    re-points (the election only acts when the group changes)."""
    if ctx.services.config.etcd is not None:
        raise CommandError(f"{name} is refused: automatic failover (--etcd) manages this "
                           "node's role; stop the node (a primary resigns) to move the "
                           "primary elsewhere")


def _term(arg: bytes) -> int:
    term = parse_int(arg, "term must be an integer >= 0")
    if term < 0:
        raise CommandError("term must be an integer >= 0")
    return term


@command("replicaof", 3, "admin noscript loading stale no-multi", _ADMIN)
def replicaof(ctx: Context, argv: list[bytes]) -> Any:
    """REPLICAOF host port | REPLICAOF NO ONE"""
    _not_under_failover(ctx, argv[0].decode("utf-8", "replace").upper())
    repl = ctx.services.replication
    if argv[1].lower() == b"no" and argv[2].lower() == b"one":
        if repl.role == "master":
            return OK
        repl.become_primary(None)
        return OK
    host = argv[1].decode("utf-8", "replace")
    port = _port(argv[2])
    if repl.role == "slave" and repl.master_host == host and repl.master_port == port:
        return Status(b"OK Already connected to specified master")
    repl.become_replica(host, port, None)
    return OK


@command("slaveof", 3, "admin noscript loading stale no-multi", _ADMIN)
def slaveof(ctx: Context, argv: list[bytes]) -> Any:
    """SLAVEOF host port | SLAVEOF NO ONE (Redis' old name)"""
    return replicaof(ctx, argv)


@command("role", 1, "noscript loading stale fast", "admin fast dangerous")
def role(ctx: Context, argv: list[bytes]) -> Any:
    """ROLE"""
    return ctx.services.replication.role_reply()


@command("wait", 3, "", "slow connection")
def wait(ctx: Context, argv: list[bytes]) -> Any:
    """WAIT numreplicas timeout(ms): how many replicas acknowledged every write so far."""
    count = parse_int(argv[1])
    ms = parse_int(argv[2], "timeout is not an integer or out of range")
    if ms < 0:
        raise CommandError("timeout is negative")
    repl = ctx.services.replication
    if repl.role == "slave":
        raise CommandError("WAIT cannot be used with replica instances. Please also note "
                           "that writes to replicas are just local and are not propagated.")
    fut = repl.wait_acks(count, None if ms == 0 else ms / 1000, client_id=ctx.client.id)
    if fut.done() or ctx.in_exec:
        return fut.result() if fut.done() else repl.acked_now()
    # Blocking, as Redis blocks a WAITing client: its connection keeps reading, so a client
    # that leaves is seen at once and its waiter forgotten.
    return Deferred(fut, blocking=True)


@command("replconf", -1, "admin noscript loading stale allow-busy", _ADMIN)
def replconf(ctx: Context, argv: list[bytes]) -> Any:
    """REPLCONF ACK offset | REPLCONF listening-port port | REPLCONF ip-address addr |
    REPLCONF node-name name | REPLCONF option value..."""
    if len(argv) % 2 == 0:
        raise CommandError(SYNTAX)
    repl = ctx.services.replication
    if argv[1].lower() == b"ack" and len(argv) >= 3:
        repl.note_ack(ctx.client.id, parse_int(argv[2]))
        return None  # no reply (the replica's connection has replies off)
    for i in range(1, len(argv), 2):
        opt = argv[i].lower()
        if opt == b"listening-port":
            repl.listening_ports[ctx.client.id] = _port(argv[i + 1])
        elif opt == b"ip-address":
            repl.announced_ips[ctx.client.id] = argv[i + 1].decode("utf-8", "replace")[:255]
        elif opt == b"node-name":
            # A failover replica's node name (ShaleDB's own option): sync mode counts
            # acknowledgements per node, one link each.
            repl.announced_nodes[ctx.client.id] = argv[i + 1].decode("utf-8", "replace")[:64]
        elif opt != b"capa":
            raise CommandError(f"Unrecognized REPLCONF option: "
                               f"{argv[i].decode('utf-8', 'replace')}")
    return OK


@command("shaledb.psync", 5, "admin noscript stale no-multi", _ADMIN)
def shaledb_psync(ctx: Context, argv: list[bytes]) -> Any:
    """SHALEDB.PSYNC replid offset term stream-version: start streaming to this replica."""
    version = parse_int(argv[4])
    if version != STREAM_VERSION:
        raise CommandError(f"replication stream version {version} is not supported by this "
                           f"primary (it speaks version {STREAM_VERSION}): run the same "
                           "ShaleDB release on both")
    replid = argv[1].decode("ascii", "replace")
    offset = parse_int(argv[2])
    term = _term(argv[3])
    repl = ctx.services.replication
    repl.start_feed(ctx.client, replid, offset, term,
                    repl.listening_ports.pop(ctx.client.id, 0))
    return None  # the feeder answers (+FULLRESYNC / +CONTINUE), then streams


@command("shaledb.role", -3, "admin noscript loading stale no-multi", _ADMIN)
def shaledb_role(ctx: Context, argv: list[bytes]) -> Any:
    """SHALEDB.ROLE PRIMARY term | SHALEDB.ROLE REPLICA host port term: what the failover
    controller calls; a term older than the node's is refused (-STALETERM)."""
    _not_under_failover(ctx, "SHALEDB.ROLE")
    repl = ctx.services.replication
    what = argv[1].lower()
    if what == b"primary" and len(argv) == 3:
        repl.become_primary(_term(argv[2]))
        return OK
    if what == b"replica" and len(argv) == 5:
        repl.become_replica(argv[2].decode("utf-8", "replace"), _port(argv[3]),
                            _term(argv[4]))
        return OK
    raise CommandError("SHALEDB.ROLE PRIMARY term | SHALEDB.ROLE REPLICA host port term")


@command("psync", -3, "admin noscript no-multi", _ADMIN)
def psync(ctx: Context, argv: list[bytes]) -> Any:
    """PSYNC from a Redis replica: refused, saying why."""
    raise CommandError(REDIS_REPLICA_REFUSED)


@command("sync", 1, "admin noscript no-multi", _ADMIN)
def sync(ctx: Context, argv: list[bytes]) -> Any:
    """SYNC from an old Redis replica: refused, saying why."""
    raise CommandError(REDIS_REPLICA_REFUSED)


__all__ = ["FAMILY", "REDIS_REPLICA_REFUSED"]
