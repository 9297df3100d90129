"""Pub/sub and monitoring commands: SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE
SUNSUBSCRIBE PUBLISH SPUBLISH PUBSUB MONITOR (Redis' pubsub.c, and MONITOR of
replication.c). The registry is :mod:`shaledb.server.exec.pubsub`.

(Un)subscribing answers one message per channel, as Redis does: the handler returns them
already encoded (one :class:`~shaledb.server.net.protocol.Encoded` reply holding several
frames), RESP3 pushes or RESP2 arrays. A RESP2 client with a subscription may only run
(P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, PING, QUIT and RESET (the dispatcher refuses the rest);
a RESP3 client runs anything meanwhile, its messages arriving as pushes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ..errors import CommandError
from ..glob import compile_glob
from ..net.protocol import OK, Encoded, Push, encode
from . import CommandFamily, Context, wrong_arity

if TYPE_CHECKING:
    from ..admin.acl import User
    from ..exec.client import ClientState
    from ..exec.context import Services

FAMILY = CommandFamily()
command = FAMILY.command

_SUB_FLAGS: Final = "pubsub noscript loading stale"


def _frames(ctx: Context, frames: list[Push]) -> Encoded:
    out: list[bytes] = []
    for frame in frames:
        encode(frame, ctx.client.resp, out)
    return Encoded(out, sum(map(len, out)))


def _count(client: ClientState, shard: bool) -> int:
    """The count a (un)subscribe message carries: the client's shard channels for the
    shard commands, its channels and patterns for the others (as Redis 7.0)."""
    if shard:
        return len(client.shard_channels)
    return len(client.channels) + len(client.patterns)


@command("subscribe", -2, _SUB_FLAGS, "pubsub slow")
def subscribe(ctx: Context, argv: list[bytes]) -> Any:
    """SUBSCRIBE channel [channel ...]"""
    return _subscribe(ctx, argv, b"subscribe", shard=False)


@command("ssubscribe", -2, _SUB_FLAGS, "pubsub slow")
def ssubscribe(ctx: Context, argv: list[bytes]) -> Any:
    """SSUBSCRIBE shardchannel [shardchannel ...]"""
    return _subscribe(ctx, argv, b"ssubscribe", shard=True)


def _check_room(ctx: Context, new: list[bytes], mine: dict[bytes, None]) -> None:
    """Refuse, before subscribing to any, what would take the client past
    max-subscriptions."""
    limit = ctx.services.config.max_subscriptions
    have = ctx.client.subscriptions
    if have + len(new) <= limit:
        return  # the common case: no need to count what is already subscribed
    adding = sum(1 for c in dict.fromkeys(new) if c not in mine)
    if have + adding > limit:
        raise CommandError(
            f"max-subscriptions ({limit}) would be exceeded: this client is subscribed to "
            f"{have} channels and patterns and asked for {adding} more; unsubscribe some "
            f"first (or raise max-subscriptions)")


def _subscribe(ctx: Context, argv: list[bytes], kind: bytes, shard: bool) -> Any:
    client, registry = ctx.client, ctx.services.pubsub
    _check_room(ctx, argv[1:], client.shard_channels if shard else client.channels)
    frames = []
    for channel in argv[1:]:
        registry.subscribe(client, channel, shard)
        frames.append(Push((kind, channel, _count(client, shard))))
    return _frames(ctx, frames)


@command("psubscribe", -2, _SUB_FLAGS, "pubsub slow")
def psubscribe(ctx: Context, argv: list[bytes]) -> Any:
    """PSUBSCRIBE pattern [pattern ...]"""
    client, registry = ctx.client, ctx.services.pubsub
    _check_room(ctx, argv[1:], client.patterns)
    for pattern in argv[1:]:  # a pattern too complex to match refuses them all
        if pattern not in registry.patterns:
            compile_glob(pattern, bounded=True)
    frames = []
    for pattern in argv[1:]:
        registry.psubscribe(client, pattern)
        frames.append(Push((b"psubscribe", pattern, _count(client, False))))
    return _frames(ctx, frames)


@command("unsubscribe", -1, _SUB_FLAGS, "pubsub slow")
def unsubscribe(ctx: Context, argv: list[bytes]) -> Any:
    """UNSUBSCRIBE [channel ...]"""
    return _unsubscribe(ctx, argv, b"unsubscribe", shard=False)


@command("sunsubscribe", -1, _SUB_FLAGS, "pubsub slow")
def sunsubscribe(ctx: Context, argv: list[bytes]) -> Any:
    """SUNSUBSCRIBE [shardchannel ...]"""
    return _unsubscribe(ctx, argv, b"sunsubscribe", shard=True)


def _unsubscribe(ctx: Context, argv: list[bytes], kind: bytes, shard: bool) -> Any:
    client, registry = ctx.client, ctx.services.pubsub
    channels = argv[1:] or list(client.shard_channels if shard else client.channels)
    frames = []
    for channel in channels:
        registry.unsubscribe(client, channel, shard)
        frames.append(Push((kind, channel, _count(client, shard))))
    if not frames:  # nothing to leave: one message all the same, as Redis
        frames.append(Push((kind, None, _count(client, shard))))
    return _frames(ctx, frames)


@command("punsubscribe", -1, _SUB_FLAGS, "pubsub slow")
def punsubscribe(ctx: Context, argv: list[bytes]) -> Any:
    """PUNSUBSCRIBE [pattern ...]"""
    client, registry = ctx.client, ctx.services.pubsub
    frames = []
    for pattern in argv[1:] or list(client.patterns):
        registry.punsubscribe(client, pattern)
        frames.append(Push((b"punsubscribe", pattern, _count(client, False))))
    if not frames:
        frames.append(Push((b"punsubscribe", None, _count(client, False))))
    return _frames(ctx, frames)


@command("publish", 3, "pubsub loading stale fast", "pubsub fast")
def publish(ctx: Context, argv: list[bytes]) -> Any:
    """PUBLISH channel message: how many clients received it"""
    return ctx.services.pubsub.publish(argv[1], argv[2])


@command("spublish", 3, "pubsub loading stale fast", "pubsub fast")
def spublish(ctx: Context, argv: list[bytes]) -> Any:
    """SPUBLISH shardchannel message"""
    return ctx.services.pubsub.publish(argv[1], argv[2], shard=True)


_PUBSUB_HELP: Final = (
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Print this help.",
)


@command("pubsub", -2, "pubsub loading stale", "pubsub slow", subcommands={
    "channels": "pubsub slow", "numsub": "pubsub slow", "numpat": "pubsub slow",
    "shardchannels": "pubsub slow", "shardnumsub": "pubsub slow", "help": "pubsub slow"})
def pubsub(ctx: Context, argv: list[bytes]) -> Any:
    """PUBSUB CHANNELS | NUMSUB | NUMPAT | SHARDCHANNELS | SHARDNUMSUB | HELP"""
    sub = argv[1].lower()
    n = len(argv)
    registry = ctx.services.pubsub
    if sub in (b"channels", b"shardchannels") and n <= 3:
        return registry.channel_names(argv[2] if n == 3 else None,
                                      shard=sub == b"shardchannels")
    if sub in (b"numsub", b"shardnumsub"):
        return registry.numsub(argv[2:], shard=sub == b"shardnumsub")
    if sub == b"numpat" and n == 2:
        return len(registry.patterns)
    if sub == b"help" and n == 2:
        return [line.encode() for line in _PUBSUB_HELP]
    name = argv[1].decode("utf-8", "replace")
    raise CommandError(f"unknown subcommand or wrong number of arguments for '{name}'. "
                       f"Try PUBSUB HELP.")


@command("monitor", 1, "admin noscript loading stale", "admin slow dangerous")
def monitor(ctx: Context, argv: list[bytes]) -> Any:
    """MONITOR: stream every command the server runs to this client"""
    if len(argv) != 1:
        raise wrong_arity("monitor")
    client = ctx.client
    if not client.monitor:
        client.monitor = True
        ctx.services.pubsub.monitors[client.id] = client
    return OK


def kill_unpermitted(server: Services, user: User, caller: ClientState) -> int:
    """After ACL SETUSER changed ``user``: disconnect its clients subscribed to a channel
    or pattern it may no longer use, as Redis 7 does (the caller after its reply); how
    many."""
    killed = 0
    for conn in list(server.connections.values()):
        c = conn.client
        if c is None or c.user is not user or not c.subscriptions or conn.closing:
            continue
        if (all(user.channel_allowed(ch) for ch in c.channels)
                and all(user.channel_allowed(ch) for ch in c.shard_channels)
                and all(user.channel_allowed(p, pattern=True) for p in c.patterns)):
            continue
        killed += 1
        if c is caller:
            c.close_after_reply = True
        else:
            conn.abort()
    return killed


__all__ = ["FAMILY", "kill_unpermitted"]
