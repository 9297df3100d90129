"""A small typed client of etcd v3's HTTP/JSON gateway, on the standard library.

etcd (3.4+) serves its gRPC API as JSON over HTTP under ``/v3/``: keys and values are base64,
64-bit integers are JSON strings. This module speaks just what failover needs -- range, put,
delete-range, txn (compare-and-swap, create-if-absent), lease grant/keep-alive/revoke -- with
a timeout on every request, a bound on every response, and typed errors:

- :class:`EtcdUnavailable`: no endpoint answered (connection refused, timeout, HTTP 5xx);
  the caller cannot know whether a write took effect.
- :class:`EtcdRequestError`: etcd answered and refused the request (HTTP 4xx, gRPC error).
- :class:`LeaseExpired`: the lease is gone (a keep-alive answered TTL 0 / not found).

``url`` may list several endpoints separated by commas; a request that fails on one is
retried on the next (requests are idempotent here, or guarded by a compare in a txn).
A client is used by one thread at a time (a lock serialises requests).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

from ...errors import InvalidArgument, ShaleError

#: Seconds a request may take (connect, send, answer) before the endpoint counts as down.
DEFAULT_TIMEOUT: Final = 2.0
#: Largest response body read; a larger one fails the request (EtcdRequestError). Group
#: state is a few small keys, so this only stops a confused endpoint from filling memory.
DEFAULT_MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024


class EtcdError(ShaleError):
    """Base class of the etcd client's errors."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered in time; whether the request took effect is unknown."""


class EtcdRequestError(EtcdError):
    """etcd answered with an error (the request did not take effect)."""


class LeaseExpired(EtcdError):
    """The lease no longer exists in etcd (expired or revoked): keys on it are gone."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with ``prefix`` (etcd's range_end)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"  # every key


@dataclasses.dataclass(frozen=True)
class KeyValue:
    """One key as etcd returned it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    #: The lease the key is attached to (0: none).
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(key=_unb64(kv.get("key", "")), value=_unb64(kv.get("value", "")),
                   create_revision=int(kv.get("create_revision", 0)),
                   mod_revision=int(kv.get("mod_revision", 0)),
                   version=int(kv.get("version", 0)), lease=int(kv.get("lease", 0)))


_COMPARE_FIELDS: Final[dict[str, str]] = {
    "VALUE": "value", "VERSION": "version", "CREATE": "create_revision",
    "MOD": "mod_revision", "LEASE": "lease"}


@dataclasses.dataclass(frozen=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` compared with ``value``.

    ``target`` is ``"VALUE"``, ``"VERSION"``, ``"CREATE"`` (create revision), ``"MOD"`` (mod
    revision) or ``"LEASE"``; ``result`` ``"EQUAL"``, ``"NOT_EQUAL"``, ``"GREATER"`` or
    ``"LESS"``. A key that does not exist has version and create revision 0.
    """

    key: bytes
    target: str
    result: str
    value: bytes | int

    def to_json(self) -> dict[str, Any]:
        field = _COMPARE_FIELDS.get(self.target)
        if field is None or self.result not in ("EQUAL", "NOT_EQUAL", "GREATER", "LESS"):
            raise InvalidArgument(f"bad etcd compare {self.target} {self.result}")
        if isinstance(self.value, bytes):
            if self.target != "VALUE":
                raise InvalidArgument(f"etcd compare {self.target} takes an integer")
            v: str = _b64(self.value)
        else:
            v = str(self.value)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: v}

    @staticmethod
    def absent(key: bytes) -> Compare:
        """True when ``key`` does not exist."""
        return Compare(key, "CREATE", "EQUAL", 0)

    @staticmethod
    def value_is(key: bytes, value: bytes) -> Compare:
        return Compare(key, "VALUE", "EQUAL", value)

    @staticmethod
    def mod_revision_is(key: bytes, revision: int) -> Compare:
        return Compare(key, "MOD", "EQUAL", revision)


@dataclasses.dataclass(frozen=True)
class Put:
    """A put inside a transaction."""

    key: bytes
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


@dataclasses.dataclass(frozen=True)
class Get:
    """A single-key range inside a transaction."""

    key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"request_range": {"key": _b64(self.key)}}


@dataclasses.dataclass(frozen=True)
class GetPrefix:
    """A range of the keys starting with ``prefix`` (at most ``limit``, in key order)
    inside a transaction."""

    prefix: bytes
    limit: int

    def to_json(self) -> dict[str, Any]:
        return {"request_range": {"key": _b64(self.prefix),
                                  "range_end": _b64(prefix_end(self.prefix)),
                                  "limit": str(self.limit)}}


@dataclasses.dataclass(frozen=True)
class Delete:
    """A single-key delete inside a transaction."""

    key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(self.key)}}


TxnOp = Put | Get | GetPrefix | Delete


@dataclasses.dataclass(frozen=True)
class TxnResult:
    """What a transaction did: whether the compares held, the revision after it, and the
    keys its ``Get`` operations read (in order; None where the key did not exist; a
    ``GetPrefix`` gives its first key there) and, in ``ranges``, every key each ``Get`` or
    ``GetPrefix`` read (in order)."""

    succeeded: bool
    revision: int
    reads: tuple[KeyValue | None, ...]
    ranges: tuple[tuple[KeyValue, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_endpoints(url: str) -> list[Endpoint]:
    """``http://host:port[,http://host2:port2...]`` -> endpoints (InvalidArgument if bad)."""
    out: list[Endpoint] = []
    for part in url.split(","):
        part = part.strip()
        if not part:
            continue
        u = urllib.parse.urlsplit(part)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise InvalidArgument(f"etcd URL {part!r} must be http://host:port or "
                                  "https://host:port")
        if u.path not in ("", "/") or u.query or u.username:
            raise InvalidArgument(f"etcd URL {part!r} must have no path, query or user")
        try:
            port = u.port or (443 if u.scheme == "https" else 2379)
        except ValueError:
            raise InvalidArgument(f"etcd URL {part!r} has a bad port") from None
        out.append(Endpoint(u.scheme, u.hostname, port))
    if not out:
        raise InvalidArgument("no etcd URL given (for example http://127.0.0.1:2379)")
    return out


class EtcdClient:
    """Blocking etcd v3 JSON-gateway client (one request at a time)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if timeout <= 0:
            raise InvalidArgument("etcd timeout must be positive")
        self.endpoints = parse_endpoints(url)
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        #: Index in ``endpoints`` of the endpoint in use (the last that answered).
        self._current = 0

    def __repr__(self) -> str:
        return f"EtcdClient({','.join(map(str, self.endpoints))!r}, timeout={self.timeout})"

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self, ep: Endpoint) -> http.client.HTTPConnection:
        if ep.scheme == "https":
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=self.timeout,
                                               context=self._ssl)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=self.timeout)

    def _post_once(self, ep: Endpoint, path: str, payload: bytes) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = self._connect(ep)
        conn = self._conn
        conn.request("POST", path, body=payload,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read(self.max_response_bytes + 1)
        if len(body) > self.max_response_bytes:
            self._drop()
            raise EtcdRequestError(f"etcd answered {path} with more than "
                                   f"{self.max_response_bytes} bytes")
        if resp.will_close:
            self._drop()
        return resp.status, body

    def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers; the parsed reply."""
        payload = json.dumps(body).encode()
        errors: list[str] = []
        with self._lock:
            n = len(self.endpoints)
            for i in range(n):
                idx = (self._current + i) % n
                ep = self.endpoints[idx]
                try:
                    status, raw = self._post_once(ep, path, payload)
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    errors.append(f"{ep}: {exc or type(exc).__name__}")
                    continue
                if status >= 500:
                    self._drop()
                    errors.append(f"{ep}: HTTP {status} {raw[:200]!r}")
                    continue
                self._current = idx
                try:
                    reply = json.loads(raw)
                except ValueError:
                    raise EtcdRequestError(f"etcd answered {path} with non-JSON "
                                           f"{raw[:200]!r}") from None
                if not isinstance(reply, dict):
                    raise EtcdRequestError(f"etcd answered {path} with {raw[:200]!r}")
                if status >= 400 or "error" in reply and "result" not in reply:
                    msg = reply.get("message") or reply.get("error") or repr(raw[:200])
                    raise EtcdRequestError(f"etcd refused {path}: HTTP {status}: {msg}")
                return reply
        raise EtcdUnavailable("no etcd endpoint answered (" + "; ".join(errors) + ")")

    # -- key-value ------------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        reply = self.request("/v3/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs") or []
        return KeyValue.from_json(kvs[0]) if kvs else None

    def get_prefix(self, prefix: bytes, limit: int = 1000) -> list[KeyValue]:
        """Keys starting with ``prefix`` in key order, at most ``limit``."""
        reply = self.request("/v3/kv/range", {"key": _b64(prefix),
                                              "range_end": _b64(prefix_end(prefix)),
                                              "limit": str(limit)})
        return [KeyValue.from_json(kv) for kv in reply.get("kvs") or []]

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Set ``key``; the revision after the put."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        reply = self.request("/v3/kv/put", body)
        return int(reply.get("header", {}).get("revision", 0))

    def delete(self, key: bytes, prefix: bool = False) -> int:
        """Delete ``key`` (every key under it with ``prefix``); how many were deleted."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        reply = self.request("/v3/kv/deleterange", body)
        return int(reply.get("deleted", 0))

    def txn(self, compare: Sequence[Compare], success: Sequence[TxnOp],
            failure: Sequence[TxnOp] = ()) -> TxnResult:
        """If every compare holds run ``success``, else ``failure``, atomically."""
        reply = self.request("/v3/kv/txn", {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure]})
        succeeded = bool(reply.get("succeeded", False))
        reads: list[KeyValue | None] = []
        ranges: list[tuple[KeyValue, ...]] = []
        for r in reply.get("responses") or []:
            rr = r.get("response_range")
            if rr is not None:
                kvs = tuple(KeyValue.from_json(kv) for kv in rr.get("kvs") or [])
                reads.append(kvs[0] if kvs else None)
                ranges.append(kvs)
        return TxnResult(succeeded, int(reply.get("header", {}).get("revision", 0)),
                         tuple(reads), tuple(ranges))

    def create(self, key: bytes, value: bytes, lease: int = 0) -> tuple[bool, KeyValue | None]:
        """Create ``key`` if absent. (True, None) when created; (False, the existing key)
        when it already existed."""
        res = self.txn([Compare.absent(key)], [Put(key, value, lease)], [Get(key)])
        if res.succeeded:
            return True, None
        return False, res.reads[0] if res.reads else None

    # -- leases ---------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        if ttl < 1:
            raise InvalidArgument("an etcd lease TTL is at least 1 second")
        reply = self.request("/v3/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise EtcdRequestError(f"etcd refused a lease: {reply['error']}")
        return int(reply["ID"])

    def lease_keepalive(self, lease: int) -> int:
        """Renew ``lease``; the TTL etcd granted. LeaseExpired when it no longer exists."""
        reply = self.request("/v3/lease/keepalive", {"ID": str(lease)})
        result = reply.get("result", reply)
        ttl = int(result.get("TTL", 0))
        if ttl <= 0:
            raise LeaseExpired(f"etcd lease {lease:x} expired or was revoked")
        return ttl

    def lease_revoke(self, lease: int) -> None:
        """Revoke ``lease`` (its keys are deleted). LeaseExpired when already gone."""
        try:
            self.request("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdRequestError as exc:
            if "not found" in str(exc):
                raise LeaseExpired(f"etcd lease {lease:x} expired or was revoked") from None
            raise
