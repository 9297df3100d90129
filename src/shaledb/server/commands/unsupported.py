"""Redis commands ShaleDB has by name only, so that ACL rules written for Redis parse
(``-debug +debug|digest``, ``+readonly``), ACL DRYRUN and COMMAND describe them, and clients
get a refusal naming the reason rather than an unknown command: DEBUG (no debugging hooks
over the network), MIGRATE (no cluster; DUMP and RESTORE copy keys), CLUSTER, READONLY and
READWRITE (no cluster mode: Redis' own error for a server without it). Each always replies
with an error and touches nothing."""

from __future__ import annotations

from typing import Any

from ..admin import keyspecs
from ..errors import CommandError
from . import CommandFamily, Context

FAMILY = CommandFamily()
command = FAMILY.command


@command("debug", -2, "admin noscript loading stale", "admin slow dangerous")
def debug(ctx: Context, argv: list[bytes]) -> Any:
    """DEBUG subcommand [...] -> always an error."""
    raise CommandError("DEBUG is not supported by ShaleDB (it has no debugging hooks over "
                       "the network); use INFO, SLOWLOG and LATENCY to inspect the server")


def _no_cluster(ctx: Context, argv: list[bytes]) -> Any:
    raise CommandError("This instance has cluster support disabled")


command("readonly", 1, "loading stale fast", "fast connection")(_no_cluster)
command("readwrite", 1, "loading stale fast", "fast connection")(_no_cluster)


def _migrate_keys(argv: list[bytes]) -> list[bytes]:
    # Redis' migrateGetKeys: the key at 3, or (key "") the arguments after KEYS.
    return [argv[i] for i, _ in keyspecs.keys_and_flags("migrate", argv) or []]


@command("migrate", -6, "write", "keyspace write slow dangerous", key_finder=_migrate_keys)
def migrate(ctx: Context, argv: list[bytes]) -> Any:
    """MIGRATE host port key|"" db timeout [...] -> always an error."""
    raise CommandError("MIGRATE is not supported by ShaleDB (it has no cluster): copy keys "
                       "with DUMP on this server and RESTORE on the other")


_CLUSTER_SUBCOMMANDS = {sub: "slow" for sub in (
    "addslots", "addslotsrange", "bumpepoch", "count-failure-reports", "countkeysinslot",
    "delslots", "delslotsrange", "failover", "flushslots", "forget", "getkeysinslot", "help",
    "info", "keyslot", "links", "meet", "myid", "nodes", "replicas", "replicate", "reset",
    "saveconfig", "set-config-epoch", "setslot", "shards", "slaves", "slots")}
command("cluster", -2, "", "slow", subcommands=_CLUSTER_SUBCOMMANDS)(_no_cluster)
