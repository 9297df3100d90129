"""SENTINEL, answered from etcd, so clients find the primary of a failover group with the
Sentinel support they already have (redis-py's ``redis.sentinel.Sentinel``, unchanged).

Any node of a group started with ``--etcd`` answers, for its own group (the Sentinel "master
name" is the group name): GET-MASTER-ADDR-BY-NAME, MASTERS, MASTER, REPLICAS (SLAVES),
SENTINELS (always empty: there are no Sentinel processes), MYID, and
CKQUORUM. Each reads the group's keys afresh (one etcd range request, off the event loop;
concurrent requests share one read), so the answer is at most one etcd read old. The reply
fields are Redis Sentinel's; those that mean nothing here (ping times, quorum) are constant.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..cluster.etcd import EtcdError
from ..cluster.group import GroupState, MemberInfo
from ..errors import CommandError
from ..exec.deferred import Deferred
from ..net.protocol import NULL_ARRAY, Status
from . import CommandFamily, Context

FAMILY = CommandFamily()

_SUBCOMMANDS = {sub: "slow" for sub in (
    "get-master-addr-by-name", "masters", "master", "replicas", "slaves", "sentinels",
    "myid", "ckquorum", "help")}

NO_FAILOVER = ("SENTINEL needs automatic failover: start the server with --etcd URL --group "
               "NAME --node-name NAME")
NO_SUCH_MASTER = "No such master with that name"

SENTINEL_HELP = (
    "SENTINEL <subcommand> [<arg> ...]. Subcommands are (answered from etcd):",
    "GET-MASTER-ADDR-BY-NAME <group>", "    The primary's address, or null.",
    "MASTERS", "    The state of this node's group (when it has a primary).",
    "MASTER <group>", "    The state of the group's primary.",
    "REPLICAS <group>", "    The other members of the group.",
    "SENTINELS <group>", "    Empty: failover is coordinated by etcd, not Sentinels.",
    "MYID", "    This node's name in its group.",
    "CKQUORUM <group>", "    Whether the group has a primary now.",
)


def _common(m: MemberInfo, flags: str) -> dict[bytes, bytes]:
    return {
        b"name": m.node.encode() if "master" in flags else f"{m.host}:{m.port}".encode(),
        b"ip": m.host.encode(), b"port": str(m.port).encode(),
        b"runid": m.node.encode(), b"flags": flags.encode(),
        b"link-pending-commands": b"0", b"link-refcount": b"1",
        b"last-ping-sent": b"0", b"last-ok-ping-reply": b"0", b"last-ping-reply": b"0",
        b"down-after-milliseconds": b"0", b"info-refresh": b"0",
        b"role-reported": (b"master" if "master" in flags else b"slave"),
        b"role-reported-time": b"0",
    }


def _master(state: GroupState) -> dict[bytes, bytes] | None:
    lead = state.leader
    if lead is None:
        return None
    member = state.members.get(lead.node) or MemberInfo(
        lead.node, lead.host, lead.port, 0, lead.term, "primary", None, True)
    out = _common(MemberInfo(lead.node, lead.host, lead.port, member.offset, lead.term,
                             "primary", None, True), "master")
    out[b"name"] = state.group.encode()
    out.update({b"config-epoch": str(lead.term).encode(),
                b"num-slaves": str(len(state.replicas())).encode(),
                b"num-other-sentinels": b"0", b"quorum": b"1",
                b"failover-timeout": b"0", b"parallel-syncs": b"1"})
    return out


def _replica(state: GroupState, m: MemberInfo) -> dict[bytes, bytes]:
    lead = state.leader
    linked = lead is not None and m.following == lead.node
    flags = "slave" if m.healthy else "slave,s_down"
    out = _common(m, flags)
    out.update({b"master-link-down-time": b"0",
                b"master-link-status": b"ok" if linked else b"err",
                b"master-host": (lead.host if lead else "?").encode(),
                b"master-port": str(lead.port if lead else 0).encode(),
                b"slave-priority": b"100", b"slave-repl-offset": str(m.offset).encode(),
                b"replica-announced": b"1"})
    return out


def _answer(sub: bytes, name: bytes | None, state: GroupState) -> Any:
    mine = name is None or name.decode("utf-8", "replace") == state.group
    if sub == b"get-master-addr-by-name":
        lead = state.leader
        if not mine or lead is None:
            return NULL_ARRAY
        return [lead.host.encode(), str(lead.port).encode()]
    if sub == b"masters":
        master = _master(state)
        return [] if master is None else [master]
    if not mine:
        raise CommandError(NO_SUCH_MASTER)
    if sub == b"master":
        master = _master(state)
        if master is None:
            raise CommandError(f"{NO_SUCH_MASTER} (group {state.group} has no primary now)")
        return master
    if sub in (b"replicas", b"slaves"):
        return [_replica(state, m) for m in state.replicas()]
    if sub == b"sentinels":
        return []
    if sub == b"ckquorum":
        if state.leader is None:
            raise CommandError(f"NOQUORUM group {state.group} has no primary now",
                               prefix="NOQUORUM")
        return Status(b"OK 1 usable Sentinels. Quorum and failover authorization can be "
                      b"reached")
    raise CommandError(f"unknown subcommand {sub.decode('utf-8', 'replace')}")


async def _read_and_answer(fut: asyncio.Future[GroupState], sub: bytes,
                           name: bytes | None) -> Any:
    try:
        state = await fut
    except EtcdError as exc:
        raise CommandError(f"cannot read the failover group from etcd: {exc}") from None
    return _answer(sub, name, state)


@FAMILY.command("sentinel", -2, "admin noscript loading stale no-multi", "slow",
                subcommands=_SUBCOMMANDS)
def sentinel(ctx: Context, argv: list[bytes]) -> Any:
    """SENTINEL GET-MASTER-ADDR-BY-NAME name | MASTERS | MASTER name | REPLICAS name |
    SLAVES name | SENTINELS name | MYID | CKQUORUM name | HELP"""
    sub = argv[1].lower()
    if sub == b"help" and len(argv) == 2:
        return [line.encode() for line in SENTINEL_HELP]
    runner = ctx.services.failover
    if runner is None:
        raise CommandError(NO_FAILOVER)
    if sub in (b"masters", b"myid"):
        if len(argv) != 2:
            raise CommandError(f"wrong number of arguments for 'sentinel|{sub.decode()}' "
                               "command")
        if sub == b"myid":
            return runner.election.config.node.encode()
        name = None
    elif sub in (b"get-master-addr-by-name", b"master", b"replicas", b"slaves",
                 b"sentinels", b"ckquorum"):
        if len(argv) != 3:
            raise CommandError(f"wrong number of arguments for 'sentinel|{sub.decode()}' "
                               "command")
        name = argv[2]
    else:
        raise CommandError(f"unknown subcommand '{argv[1].decode('utf-8', 'replace')}'. "
                           "Try SENTINEL HELP.")
    loop = asyncio.get_running_loop()
    return Deferred(loop.create_task(_read_and_answer(runner.read_state(), sub, name)))
