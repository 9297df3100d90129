"""The etcd v3 JSON-gateway client against a real etcd on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from shaledb.errors import InvalidArgument
from shaledb.server.cluster.etcd import (
    Compare,
    EtcdClient,
    EtcdRequestError,
    EtcdUnavailable,
    Get,
    GetPrefix,
    LeaseExpired,
    Put,
    parse_endpoints,
    prefix_end,
)


def test_put_get_delete_prefix(etcd: EtcdClient, group: str) -> None:
    p = f"/t/{group}/".encode()
    assert etcd.get(p + b"a") is None
    rev = etcd.put(p + b"a", b"\x00\xffone")
    assert rev > 0
    etcd.put(p + b"b", b"two")
    etcd.put(p[:-1] + b"X", b"outside")  # not under the prefix
    kv = etcd.get(p + b"a")
    assert kv is not None and kv.value == b"\x00\xffone" and kv.mod_revision == rev
    assert [k.key for k in etcd.get_prefix(p)] == [p + b"a", p + b"b"]
    assert [k.key for k in etcd.get_prefix(p, limit=1)] == [p + b"a"]
    assert etcd.delete(p, prefix=True) == 2
    assert etcd.get_prefix(p) == []
    assert etcd.get(p[:-1] + b"X") is not None


def test_a_transaction_reads_keys_and_bounded_prefixes_at_one_revision(
        etcd: EtcdClient, group: str) -> None:
    p = f"/t/{group}/".encode()
    for name in (b"m/a", b"m/b", b"m/c", b"z"):
        etcd.put(p + name, name)
    res = etcd.txn([], [Get(p + b"z"), GetPrefix(p + b"m/", 2), Get(p + b"absent")])
    assert res.succeeded
    assert [[kv.key for kv in r] for r in res.ranges] == [
        [p + b"z"], [p + b"m/a", p + b"m/b"], []]
    assert res.reads[0] is not None and res.reads[0].value == b"z"
    assert res.reads[2] is None
    etcd.delete(p, prefix=True)


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_create_if_absent_is_atomic(etcd: EtcdClient, group: str) -> None:
    key = f"/t/{group}/leader".encode()
    results: list[bool] = []

    def race(i: int) -> None:
        with EtcdClient(etcd.endpoints[0].__str__()) as c:
            results.append(c.create(key, b"node%d" % i)[0])

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    created, existing = etcd.create(key, b"late")
    assert not created and existing is not None and existing.value.startswith(b"node")


def test_txn_compare_and_swap(etcd: EtcdClient, group: str) -> None:
    key = f"/t/{group}/term".encode()
    etcd.put(key, b"1")
    ok = etcd.txn([Compare.value_is(key, b"1")], [Put(key, b"2")], [Get(key)])
    assert ok.succeeded and ok.reads == ()
    stale = etcd.txn([Compare.value_is(key, b"1")], [Put(key, b"3")], [Get(key)])
    assert not stale.succeeded
    assert stale.reads[0] is not None and stale.reads[0].value == b"2"
    kv = etcd.get(key)
    assert kv is not None
    assert etcd.txn([Compare.mod_revision_is(key, kv.mod_revision)], [Put(key, b"4")]).succeeded
    with pytest.raises(InvalidArgument):
        Compare(key, "MOD", "EQUAL", b"x").to_json()


def test_lease_keys_vanish_on_revoke_and_expiry(etcd: EtcdClient, group: str) -> None:
    p = f"/t/{group}/".encode()
    lease = etcd.lease_grant(5)
    etcd.put(p + b"m", b"x", lease=lease)
    assert etcd.lease_keepalive(lease) == 5
    kv = etcd.get(p + b"m")
    assert kv is not None and kv.lease == lease
    etcd.lease_revoke(lease)
    assert etcd.get(p + b"m") is None
    with pytest.raises(LeaseExpired):
        etcd.lease_keepalive(lease)
    with pytest.raises(LeaseExpired):
        etcd.lease_revoke(lease)
    short = etcd.lease_grant(1)
    etcd.put(p + b"n", b"y", lease=short)
    deadline = time.monotonic() + 10
    while etcd.get(p + b"n") is not None:
        assert time.monotonic() < deadline, "a 1 s lease did not expire within 10 s"
        time.sleep(0.1)
    with pytest.raises(LeaseExpired):
        etcd.lease_keepalive(short)
    with pytest.raises(InvalidArgument):
        etcd.lease_grant(0)


def test_put_on_unknown_lease_is_refused(etcd: EtcdClient, group: str) -> None:
    with pytest.raises(EtcdRequestError, match="lease not found"):
        etcd.put(f"/t/{group}/k".encode(), b"v", lease=0x1234567)


def test_unreachable_endpoint_is_typed_and_bounded_in_time() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        # Nothing listens: refused at once.
        c = EtcdClient(f"http://127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(EtcdUnavailable, match="no etcd endpoint answered"):
            c.get(b"k")
        # Listening but never answering (a paused etcd): the timeout bounds the wait.
        s.listen(1)
        t0 = time.monotonic()
        with pytest.raises(EtcdUnavailable):
            c.get(b"k")
        assert time.monotonic() - t0 < 3
        c.close()


def test_second_endpoint_used_when_first_is_down(etcd_url: str, group: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with EtcdClient(f"http://127.0.0.1:{dead},{etcd_url}", timeout=0.5) as c:
        c.put(f"/t/{group}/k".encode(), b"v")
        kv = c.get(f"/t/{group}/k".encode())
        assert kv is not None and kv.value == b"v"


def test_response_size_bound(etcd: EtcdClient, etcd_url: str, group: str) -> None:
    p = f"/t/{group}/".encode()
    for i in range(4):
        etcd.put(p + b"%d" % i, b"v" * 1000)
    with EtcdClient(etcd_url, max_response_bytes=2000) as small:
        assert small.get(p + b"0") is not None  # one key fits
        with pytest.raises(EtcdRequestError, match="more than 2000 bytes"):
            small.get_prefix(p)
        assert small.get(p + b"1") is not None  # the client recovers


def test_bad_urls() -> None:
    for bad in ["", "etcd:2379", "ftp://h:1", "http://h:1/path", "http://u@h:1",
                "http://h:notaport"]:
        with pytest.raises(InvalidArgument):
            parse_endpoints(bad)
    eps = parse_endpoints("http://a:1, https://b")
    assert [str(e) for e in eps] == ["http://a:1", "https://b:443"]
    with pytest.raises(InvalidArgument):
        EtcdClient("http://a:1", timeout=0)
