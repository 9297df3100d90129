"""Geo commands over the network: GEOADD GEODIST GEOHASH GEOPOS GEORADIUS(_RO)
GEORADIUSBYMEMBER(_RO) GEOSEARCH GEOSEARCHSTORE with redis-py, replies compared with a real
redis-server 7 on loopback (RESP2 and RESP3; a fixed script of options, errors, edges of
the map and scores no GEOADD wrote, then seeded random searches by radius and by box over
points near the antimeridian, the poles and both hemispheres), the geo set being a sorted
set scored by its 52-bit geohash, searches charged to the output limit, and the STORE key
seen by WATCH and ACL key patterns."""

from __future__ import annotations

import random
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ._server_support import HOST, RawClient, ServerThread, free_port, keyevents, wait_for_port

KiB = 1024

# Every line's reply must equal a real redis-server 7.0's, errors included.
_SCRIPT = r"""
geoadd Sicily 13.361389 38.115556 Palermo 15.087269 37.502669 Catania
geoadd Sicily 200 100 a
geoadd Sicily nx xx 1 2 a
geoadd Sicily abc 2 a
geoadd Sicily 1 2
geoadd Sicily ch nx ch
geoadd Sicily ch 13.361389 38.115556 Palermo 15 37 Catania 1 1 new
geoadd Sicily xx ch 15.087269 37.502669 Catania 2 2 none
geoadd Sicily nx 0 0 new 0 0 new2
geodist Sicily Palermo Catania
geodist Sicily Palermo Catania km
geodist Sicily Palermo Catania MI
geodist Sicily Palermo Catania ft
geodist Sicily Palermo Catania foo
geodist Sicily Palermo Catania km x
geodist Sicily Palermo nope
geodist nokey a b
geohash Sicily Palermo Catania nope new
geohash nokey a
geopos Sicily Palermo Catania nope new
geopos nokey a b
georadius Sicily 15 37 200 km
georadius Sicily 15 37 200 km withdist withcoord withhash
georadius Sicily 15 37 200 km withdist desc
georadius Sicily 15 37 200 km count 1
georadius Sicily 15 37 200 km count 1 desc
georadius Sicily 15 37 200 km count 1 any
georadius Sicily 15 37 -1 km
georadius Sicily 15 37 abc km
georadius Sicily 15 37 200 parsec
georadius Sicily 15 37 200 km count 0
georadius Sicily 15 37 200 km any
georadius Sicily 15 37 200 km withdist store x
georadius Sicily 15 37 200 km store dst
zrange dst 0 -1 withscores
georadius Sicily 15 37 200 km storedist dst
zrange dst 0 -1 withscores
georadius Sicily 15 37 1 km store dst
exists dst
georadius_ro Sicily 15 37 200 km store x
georadius_ro Sicily 15 37 200 km withdist asc
georadiusbymember Sicily Palermo 200 km withdist withcoord
georadiusbymember Sicily nope 200 km
georadiusbymember nokey nope 200 km
georadiusbymember nokey nope 200 km store dst
georadiusbymember_ro Sicily Catania 100 mi withdist
geosearch Sicily frommember Palermo byradius 200 km withdist
geosearch Sicily frommember Palermo bybox 400 400 km withdist withcoord asc
geosearch Sicily fromlonlat 15 37 bybox 400 400 km withdist desc
geosearch Sicily fromlonlat 15 37 bybox 40 40 km withdist desc
geosearch Sicily frommember Palermo bybox -1 2 km
geosearch Sicily frommember Palermo bybox a 2 km
geosearch Sicily frommember Palermo bybox 1 a km
geosearch Sicily frommember nope byradius 1 km
geosearch Sicily byradius 1 km foo
GEOSEARCH Sicily BYRADIUS 1 km ASC WITHDIST
geosearch Sicily fromlonlat 0 0 byradius inf m withdist
geosearch Sicily fromlonlat 0 0 bybox inf inf m withdist
geosearch Sicily fromlonlat 0 0 bybox inf 1 km withdist
geosearch Sicily fromlonlat 0 0 byradius 1e400 m
geosearch Sicily fromlonlat 15 37 bybox 1e300 1e300 km withdist
geosearch Sicily fromlonlat 15 37 bybox 1e200 1 km
geosearch Sicily fromlonlat 15 37 bybox 1 1e308 m withdist
geosearch Sicily fromlonlat 0 0 byradius 0 m
geosearch Sicily frommember Palermo bybox 0 0 m withdist
GeoSearch Sicily FROMLONLAT 15 37 ASC WITHDIST
geosearch Sicily frommember Palermo foo bar
geosearch Sicily frommember Palermo fromlonlat 1 2 byradius 1 km
geosearch Sicily frommember Palermo byradius 1 km bybox 1 1 km
geosearch Sicily frommember Palermo byradius 200 km store x
geosearch Sicily fromlonlat 200 2 byradius 1 km
geosearch nokey frommember a byradius 1 km
geosearch Sicily frommember Palermo byradius 200 km storedist
geosearchstore dst Sicily frommember Palermo byradius 200 km withdist
geosearchstore dst Sicily frommember Palermo byradius 200 km storedist
zrange dst 0 -1 withscores
geosearchstore dst Sicily frommember Palermo byradius 200 km count 1
zrange dst 0 -1 withscores
geosearchstore dst nokey frommember Palermo byradius 200 km
exists dst
geoadd edge 180 85.05112878 ne -180 -85.05112878 sw 0 0 zero 179.9999 0 e 180 0 e2 -180 0 w
geopos edge ne sw zero e e2 w
geohash edge ne sw zero e e2 w
georadius edge 180 0 5000 km withdist asc
georadius edge 0 0 20000 km withdist asc
georadius edge 0 85 1000 km withdist
geosearch edge fromlonlat 179 0 bybox 500 500 km withdist asc
zadd weird -1 a 1e30 b 0.5 c 4503599627370496 d
geopos weird a b c d
geohash weird a b c d
set str x
geoadd str 1 1 a
geopos str a
geodist str a b
georadius str 1 1 1 km
geosearch str frommember a byradius 1 km
geoadd g 13.361389 38.115556 Palermo 15.087269 37.502669 Catania 180 85.05112878 ne
geoadd g -180 -85.05112878 sw 0 0 zero 179.9999 0 e -180 0 w 2.35 48.85 paris
geoadd g -0.12 51.5 london 151.2 -33.86 sydney -70.6 -33.4 santiago
geosearch g fromlonlat 0 0 byradius 0 m withdist
geosearch g frommember Palermo byradius 0 m withdist
geosearch g frommember Palermo bybox 0 0 m withdist
geosearch g fromlonlat 0 0 byradius inf m withdist
geosearch g fromlonlat 0 0 byradius 1e30 m withdist
geosearch g fromlonlat 0 0 byradius 1e400 m withdist
geosearch g fromlonlat 0 0 bybox inf inf m withdist
geosearch g fromlonlat 0 0 bybox 40000 20000 km withdist
geosearch g fromlonlat 0 0 byradius 20000 km withdist count 9223372036854775807
geosearch g fromlonlat 0 0 byradius 20000 km withdist count 9223372036854775808
geosearch g fromlonlat 180 85.05112878 byradius 500 km withdist
geosearch g fromlonlat -180 -85.05112878 byradius 500 km withdist
geosearch g fromlonlat 180 85.05112879 byradius 500 km withdist
geosearch g fromlonlat 0 0 byradius nan km
geosearch g fromlonlat nan 0 byradius 1 km
geosearch g fromlonlat 0x10 0 byradius 1 km
geosearch g fromlonlat " 1" 0 byradius 1 km
geosearch g fromlonlat 1 0 byradius -0 km
geosearch g fromlonlat 140 -35 bybox 3000 2000 km withdist withcoord asc
geosearch g fromlonlat -75 -30 byradius 1000 mi withdist desc
georadius g 2 50 500 km withdist count 2 desc
georadius g 2 50 500 km count 1 any desc withdist
georadius g 2 50 5000 km count 2 any asc withdist
georadius g 2 50 500 km store
georadius g 2 50 500 km STORE dst STOREDIST dst2
zrange dst2 0 -1 withscores
exists dst
georadius g 2 50 500 km count 1 count 2
georadius g 2 50 500 km asc desc
geosearch g frommember Palermo frommember Catania byradius 1 km
geosearch g fromlonlat 1 1 fromlonlat 2 2 byradius 1 km
geosearch g fromlonlat 1 1 byradius 1 km byradius 2 km withdist
geosearchstore dst g fromlonlat 1 1 byradius 1 km store x
geosearchstore dst g fromlonlat 1 1 byradius 1 km withcoord
geoadd g 1 2 Palermo xx
geoadd g XX CH 1 2 Palermo
geopos g Palermo
geoadd g 1.0000001 2 p2 1 2.0000001 p3
geodist g Palermo p2
geodist g Palermo p3 ft
geodist g Palermo Palermo
geohash g p2 p3
geoadd rnd 6.8295 -1.6474 a1 4.36 2.6539 b1 3.2271 -1.7226 a2 -2.1201 -8.7218 b2
geodist rnd a1 b1 ft
geodist rnd a2 b2 ft
geosearch rnd frommember a1 byradius 2000 km withdist asc
geosearch rnd frommember a2 byradius 3000000 ft withdist asc
"""


@pytest.fixture
def real_redis(tmp_path: Path) -> Iterator[int]:
    """The port of a real redis-server on loopback (skips without one)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _outcomes(c: redis.Redis, lines: list[str]) -> list[Any]:
    c.flushall()
    out: list[Any] = []
    for line in lines:
        try:
            out.append(c.execute_command(*shlex.split(line)))
        except redis.ResponseError as exc:
            out.append(f"error: {exc}")
    return out


@pytest.mark.parametrize("protocol", [2, 3])
def test_geo_replies_equal_a_real_redis_server(
        server_factory: Callable[..., ServerThread], real_redis: int, protocol: int) -> None:
    lines = _SCRIPT.strip().splitlines()
    want = _outcomes(redis.Redis(host=HOST, port=real_redis, protocol=protocol), lines)
    got = _outcomes(server_factory().client(protocol=protocol), lines)
    mismatches = [(line, w, g) for line, w, g in zip(lines, want, got, strict=True) if w != g]
    assert not mismatches, mismatches
    # the script reached its searches (a typo would make both sides answer errors)
    assert got[lines.index("georadius Sicily 15 37 200 km withdist withcoord withhash")] != []


def _random_points(rnd: random.Random, n: int) -> list[str]:
    args: list[str] = []
    for i in range(n):
        mode = rnd.random()
        if mode < 0.3:
            lon, lat = rnd.uniform(-180, 180), rnd.uniform(-85.05, 85.05)
        elif mode < 0.6:  # clusters north and south of the equator
            lon, lat = rnd.gauss(13, 2), rnd.gauss(-38 if i % 2 else 38, 2)
        elif mode < 0.8:  # both sides of the antimeridian
            lon = max(-180.0, min(180.0, rnd.choice([-180, 180]) + rnd.uniform(-1, 1)))
            lat = rnd.uniform(-10, 10)
        else:  # near the poles' limits
            lon, lat = rnd.uniform(-180, 180), rnd.choice([-1, 1]) * rnd.uniform(75, 85.05)
        args += [f"{lon:.6f}", f"{lat:.6f}", f"p{i}"]
    return args


def _random_search(rnd: random.Random) -> list[str]:
    lon = max(-180.0, min(180.0, rnd.choice(
        [rnd.uniform(-180, 180), rnd.gauss(13, 2), rnd.choice([-179.9, 179.9])])))
    lat = rnd.choice([rnd.uniform(-85, 85), rnd.gauss(38, 2), rnd.gauss(-38, 2),
                      rnd.uniform(70, 85)])
    unit = rnd.choice(["m", "km", "mi", "ft"])
    size = rnd.choice([10, 100, 500, 2000, 8000]) * rnd.random() * {
        "m": 1000, "km": 1, "mi": 0.6, "ft": 3000}[unit]
    center = ["FROMLONLAT", f"{lon:.5f}", f"{lat:.5f}"]
    if rnd.random() < 0.5:
        cmd = ["GEOSEARCH", "g", *center, "BYRADIUS", f"{size:.3f}", unit]
    else:
        cmd = ["GEOSEARCH", "g", *center, "BYBOX", f"{size:.3f}",
               f"{size * rnd.uniform(0.3, 3):.3f}", unit]
    return cmd + rnd.choice([["WITHDIST", "WITHCOORD", "WITHHASH", "ASC"],
                             ["WITHDIST", "DESC"], [], ["COUNT", "5"],
                             ["COUNT", "3", "ANY"], ["WITHHASH"]])


def test_random_searches_equal_a_real_redis_server(
        server_factory: Callable[..., ServerThread], real_redis: int) -> None:
    rnd = random.Random(20261202)
    real = redis.Redis(host=HOST, port=real_redis)
    ours = server_factory().client()
    points = _random_points(rnd, 1000)
    assert ours.execute_command("GEOADD", "g", *points) == real.execute_command(
        "GEOADD", "g", *points) == 1000
    found = 0
    for _ in range(150):
        cmd = _random_search(rnd)
        want = real.execute_command(*cmd)
        assert ours.execute_command(*cmd) == want, cmd
        found += len(want)
    assert found > 1000  # the searches found points, not only empty replies
    assert ours.zrange("g", 0, -1, withscores=True) == real.zrange("g", 0, -1,
                                                                    withscores=True)


def test_a_geo_set_is_a_sorted_set_scored_by_its_geohash(r: redis.Redis) -> None:
    assert r.geoadd("Sicily", [13.361389, 38.115556, "Palermo"]) == 1
    # Redis' documented score of Palermo: the 52-bit interleaved geohash
    assert r.zscore("Sicily", "Palermo") == 3479099956230698.0
    assert r.type("Sicily") == b"zset"
    r.zadd("Sicily", {"Catania": 3479447370796909})
    assert r.geohash("Sicily", "Palermo", "Catania") == ["sqc8b49rny0", "sqdtr74hyu0"]
    pos = r.geopos("Sicily", "Catania")[0]
    assert pos == pytest.approx((15.087267, 37.502668), abs=1e-6)
    assert r.geodist("Sicily", "Palermo", "Catania", "km") == 166.2742
    assert r.zrem("Sicily", "Palermo") == 1 and r.geopos("Sicily", "Palermo") == [None]
    r.set("str", "x")
    for call in (lambda: r.geoadd("str", [1, 1, "a"]), lambda: r.geopos("str", "a"),
                 lambda: r.geosearch("str", longitude=1, latitude=1, radius=1)):
        with pytest.raises(redis.ResponseError, match="^WRONGTYPE"):
            call()


def test_a_search_is_charged_to_the_output_limit_as_it_finds_points(
        server_factory: Callable[..., ServerThread]) -> None:
    st = server_factory(client_output_buffer_limit=256 * KiB)
    r = st.client()
    rnd = random.Random(7)
    for batch in range(4):  # 2,000 points with 1 KiB names within 50 km: 2 MiB of names
        args: list[Any] = []
        for i in range(500):
            args += [13 + rnd.uniform(-0.3, 0.3), 38 + rnd.uniform(-0.3, 0.3),
                     b"%d-" % (batch * 500 + i) + b"x" * KiB]
        r.geoadd("big", args)
    for args in (("GEOSEARCH", "big", "FROMLONLAT", "13", "38", "BYRADIUS", "100", "km"),
                 ("GEORADIUS", "big", "13", "38", "100", "km", "DESC"),
                 ("GEOSEARCH", "big", "FROMLONLAT", "13", "38", "BYBOX", "200", "200", "km",
                  "COUNT", "1000")):
        raw = RawClient(st.port)
        raw.send(*args)
        with pytest.raises(ConnectionError):
            raw.read()
        raw.close()
    assert int(st.call(
        lambda: st.server.stats["client_output_buffer_limit_disconnections"])) == 3
    # COUNT keeps only the COUNT nearest: a small reply from the same search is served,
    # and so is a STORE of all of them (a write, not a reply)
    near = r.geosearch("big", longitude=13, latitude=38, radius=100, unit="km", count=5,
                       withdist=True)
    assert len(near) == 5 and [d for _, d in near] == sorted(d for _, d in near)
    assert r.geosearchstore("dst", "big", longitude=13, latitude=38, radius=100,
                            unit="km") == 2000
    assert r.zcard("dst") == 2000


def test_the_store_key_is_a_key_of_the_command(server: ServerThread) -> None:
    r = server.client()
    r.geoadd("src", [13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"])
    # WATCH sees GEORADIUS ... STORE writing its destination
    with r.pipeline() as pipe:
        pipe.watch("dst")
        r.execute_command("GEORADIUS", "src", "15", "37", "200", "km", "STORE", "dst")
        pipe.multi()
        pipe.set("dst", "x")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r.zrange("dst", 0, -1) == [b"Palermo", b"Catania"]
    # A user allowed only src~ keys may search but not store elsewhere
    r.execute_command("ACL", "SETUSER", "geo", "on", ">pw", "~src", "+@geo")
    u = server.client(username="geo", password="pw")
    assert u.execute_command("GEORADIUS", "src", "15", "37", "200", "km") == [
        b"Palermo", b"Catania"]
    for cmd in (("GEORADIUS", "src", "15", "37", "200", "km", "STORE", "dst"),
                ("GEORADIUSBYMEMBER", "src", "Palermo", "200", "km", "STOREDIST", "dst"),
                ("GEOSEARCHSTORE", "dst", "src", "FROMMEMBER", "Palermo", "BYRADIUS", "1",
                 "km")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            u.execute_command(*cmd)
    assert r.zrange("dst", 0, -1) == [b"Palermo", b"Catania"]


def test_a_search_past_the_output_limit_stops_collecting(
        server_factory: Callable[..., ServerThread]) -> None:
    """The points a search finds are charged as they are found: one over the limit stops
    the walk, so the server never holds much more than the limit (16 MiB of member names
    found by one GEOSEARCH, limit 256 KiB)."""
    import tracemalloc

    st = server_factory(client_output_buffer_limit=256 * KiB)
    r = st.client()
    rnd = random.Random(11)
    for batch in range(8):
        args: list[Any] = []
        for i in range(500):
            args += [13 + rnd.uniform(-0.3, 0.3), 38 + rnd.uniform(-0.3, 0.3),
                     b"%d-" % (batch * 500 + i) + b"x" * (4 * KiB)]
        r.geoadd("big", args)
    tracemalloc.start()
    try:
        for args in (("GEOSEARCH", "big", "FROMLONLAT", "13", "38", "BYRADIUS", "100", "km",
                      "ASC"),
                     ("GEOSEARCH", "big", "FROMLONLAT", "13", "38", "BYRADIUS", "100", "km",
                      "COUNT", "4000")):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            raw = RawClient(st.port)
            raw.send(*args)
            with pytest.raises(ConnectionError):
                raw.read()
            raw.close()
            peak = tracemalloc.get_traced_memory()[1] - base
            assert peak < 6 * 1024 * KiB, (args, peak)
    finally:
        tracemalloc.stop()
    assert r.zcard("big") == 4000


def test_geo_commands_raise_the_keyspace_events_redis_does(server_factory, tmp_path) -> None:
    # Geo landed beside keyspace notifications: GEOADD is a ZADD (event zadd), the STORE
    # forms raise georadiusstore / geosearchstore, as Redis 7.0's georadiusGeneric.
    from ._server_support import real_redis

    def run(r: redis.Redis) -> None:
        r.geoadd("g", [13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"])
        r.execute_command("GEORADIUS", "g", "15", "37", "200", "km", "STORE", "r1")
        r.execute_command("GEOSEARCHSTORE", "r2", "g", "FROMLONLAT", "15", "37", "BYRADIUS",
                          "200", "km")
        r.execute_command("GEOSEARCHSTORE", "r2", "g", "FROMLONLAT", "0", "0", "BYRADIUS",
                          "1", "km")  # nothing found: the destination is deleted

    st = server_factory()
    ours = keyevents(st.client(), run)
    with real_redis(tmp_path) as ref:
        theirs = keyevents(ref, run)
    assert ours == theirs, (ours, theirs)
    assert ("georadiusstore", "r1") in ours and ("geosearchstore", "r2") in ours
