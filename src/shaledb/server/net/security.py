"""Connection-level security decisions: protected mode, the request limits of a client that
has not authenticated, the key of the failed-AUTH limiter and the networks it spares.

Protected mode (on by default, as in Redis) refuses every client that does not connect from
a loopback address while the ``default`` user has no password (``nopass``; also when it is
``off``, as in Redis: turning it off does not secure the server, other users may be
password-less too). Such a server is open to anyone who can reach the port, so until a
password is set it only serves the local machine, whatever address it listens on. A refused
client gets :data:`PROTECTED_MODE_DENIED` and the connection is closed before any request is
read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The line a refused client gets (Redis' ``-DENIED`` reply, with ShaleDB's settings).
PROTECTED_MODE_DENIED: Final = (
    b"-DENIED ShaleDB is running in protected mode because protected mode is enabled and no "
    b"password is set for the default user. In this mode connections are only accepted from "
    b"the loopback interface. If you want to connect from other hosts, either 1) set a "
    b"password: requirepass in the config file, the SHALEDB_REQUIREPASS environment "
    b"variable, or ACL SETUSER default >password from a local client (and ACL SAVE with an "
    b"aclfile to keep it), or 2) if the network is trusted, set protected-mode = false in "
    b"the config file (or start with --no-protected-mode) and restart the server.\r\n")
#: Most networks in auth-fail-exempt-networks.
MAX_EXEMPT_NETWORKS: Final = 256
#: The limiters' key for a client whose address is unknown (never exempt, never "local").
UNKNOWN_PEER: Final = "unknown"
#: Most arguments of a request from a client that has not authenticated (Redis' limit).
UNAUTHENTICATED_MAX_ARGS: Final = 10
#: Longest argument of a request from a client that has not authenticated (Redis' limit).
UNAUTHENTICATED_MAX_BULK: Final = 16384
#: Both, as the request reader takes them (``RequestReader.unauthenticated``): exceeding
#: either closes the connection with ``-ERR Protocol error: unauthenticated multibulk
#: length`` / ``bulk length``, as Redis does since CVE-2021-32675. Without them anyone who
#: can reach the port makes the server buffer up to ``client-query-buffer-limit`` per
#: connection before giving a password.
UNAUTHENTICATED_LIMITS: Final = (UNAUTHENTICATED_MAX_ARGS, UNAUTHENTICATED_MAX_BULK)


def is_loopback_address(host: str) -> bool:
    """Whether ``host`` (an IP address as a socket reports it, or ``localhost``) is a
    loopback address. IPv4 addresses mapped into IPv6 (``::ffff:127.0.0.1``) count by their
    IPv4 address; anything that is not an address (a host name) is not loopback."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def auth_limit_key(host: str | None) -> str:
    """The failed-AUTH limiter's bucket for a client IP. An IPv6 client is counted per /64,
    the block one host or one customer link routinely gets: per address, every fresh address
    of it would bring a fresh burst of guesses, and enough of them would push every other
    bucket out of the bounded table. An IPv4 address, also when mapped into IPv6
    (``::ffff:192.0.2.1`` on a dual-stack listener), is counted on its own. None (an unknown
    address; the connection path refuses those) shares one bucket, ``unknown``: never an
    exemption. Anything that does not parse is its own key."""
    if host is None:
        return UNKNOWN_PEER
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """The networks written as CIDRs (``10.0.0.0/8``, ``2001:db8::/32``; a bare address is
    a /32 or /128). ValueError naming the first invalid one: a typo must not silently exempt
    the wrong hosts, so host bits set (``10.0.0.1/8``) are refused too. At most
    MAX_EXEMPT_NETWORKS (each client's check walks the list)."""
    nets: list[Network] = []
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"a network must be a string like '10.0.0.0/8', got {text!r}")
        try:
            nets.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid network {text[:64]!r}: {exc}") from None
    if len(nets) > MAX_EXEMPT_NETWORKS:
        raise ValueError(f"at most {MAX_EXEMPT_NETWORKS} networks, got {len(nets)}")
    return tuple(nets)


def in_networks(host: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether the client IP ``host`` is in one of ``networks``. An IPv4 address mapped into
    IPv6 counts by its IPv4 address; None (unknown) and anything that is not an address are
    in none."""
    if host is None or not networks:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks if net.version == addr.version)


def protected_mode_refuses(peer_host: str | None, protected_mode: bool,
                           default_user_nopass: bool) -> bool:
    """Whether a new connection from ``peer_host`` must be refused. ``peer_host`` is None
    when the address is unknown (a TCP client that reset before the accept): that is a
    remote client, never a local one -- the server has no Unix socket listener.
    ``default_user_nopass``: the default user has no password (enabled or not), Redis'
    test for "no password is set"."""
    if not protected_mode or not default_user_nopass:
        return False
    return peer_host is None or not is_loopback_address(peer_host)


__all__ = ["PROTECTED_MODE_DENIED", "UNAUTHENTICATED_LIMITS", "UNAUTHENTICATED_MAX_ARGS",
           "UNAUTHENTICATED_MAX_BULK", "UNKNOWN_PEER", "MAX_EXEMPT_NETWORKS", "Network",
           "auth_limit_key", "in_networks", "is_loopback_address", "parse_networks",
           "protected_mode_refuses"]
