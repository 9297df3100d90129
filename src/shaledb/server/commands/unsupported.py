"""Redis commands ShaleDB has by name only, so that ACL rules written for Redis parse
(``-debug +debug|digest``, ``+readonly``) and clients get Redis' own refusal rather than
an unknown command: DEBUG (no debugging hooks over the network), READONLY and READWRITE
(cluster replicas: ShaleDB has no cluster mode). Each always replies with an error."""

from __future__ import annotations

from typing import Any

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
