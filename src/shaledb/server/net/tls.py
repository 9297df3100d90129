"""TLS for the server: the ``ssl`` context built from the ``tls-*`` settings.

The context is TLS 1.2 or newer with the ``ssl`` module's default (secure) ciphers. Client
certificates follow ``tls-auth-clients`` as in Redis: ``yes`` requires one that chains to
``tls-ca-cert-file``, ``optional`` checks one when the client sends it, ``no`` does not ask.
The TLS port is a plain TCP listener: each connection is counted against ``maxclients``
from its accept (as in Redis: connections in a handshake hold descriptors too), then runs
its handshake (``loop.start_tls``, ``connection.ClientConnection._tls_handshake``). A client
that fails the handshake, or does not finish it within ``tls-handshake-timeout``, is
dropped and forgotten before it reaches the command path.
"""

from __future__ import annotations

import ssl
from typing import Final

from ...errors import InvalidArgument
from ..admin.config import ServerConfig

_VERIFY: Final = {"yes": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "no": ssl.CERT_NONE}


def server_context(config: ServerConfig) -> ssl.SSLContext:
    """The server's SSL context; InvalidArgument when a file is missing or invalid."""
    assert config.tls_cert_file is not None and config.tls_key_file is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(
            f"cannot load tls_cert_file {config.tls_cert_file!r} / tls_key_file "
            f"{config.tls_key_file!r}: {exc}") from None
    ctx.verify_mode = _VERIFY[config.tls_auth_clients]
    if config.tls_ca_cert_file is not None:
        try:
            ctx.load_verify_locations(cafile=config.tls_ca_cert_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(
                f"cannot load tls_ca_cert_file {config.tls_ca_cert_file!r}: {exc}") from None
    return ctx


__all__ = ["server_context"]
