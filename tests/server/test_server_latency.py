"""LATENCY (HISTOGRAM, LATEST, HISTORY, RESET, DOCTOR, HELP) and latency-monitor-threshold
over a socket."""

from __future__ import annotations

import pytest
import redis


@pytest.fixture
def client(server):
    c = server.client(decode_responses=True)
    yield c
    c.close()


def test_latency_monitor_records_commands_over_the_threshold(client) -> None:
    assert client.execute_command("LATENCY", "LATEST") == []  # threshold 0: nothing
    client.eval("local i = 0 while i < 200000 do i = i + 1 end return i", 0)
    assert client.execute_command("LATENCY", "LATEST") == []
    assert client.config_set("latency-monitor-threshold", 1) is True
    assert client.config_get("latency-monitor-threshold") == {"latency-monitor-threshold": "1"}
    client.eval("local i = 0 while i < 200000 do i = i + 1 end return i", 0)
    (event,) = client.execute_command("LATENCY", "LATEST")
    assert event[0] == "command" and event[2] >= 1 and event[3] >= event[2]
    (sample,) = client.execute_command("LATENCY", "HISTORY", "command")
    assert sample == event[1:3]
    assert "command" in client.execute_command("LATENCY", "DOCTOR")
    assert client.execute_command("LATENCY", "RESET", "nosuch") == 0
    assert client.execute_command("LATENCY", "RESET") == 1
    assert client.execute_command("LATENCY", "LATEST") == []
    with pytest.raises(redis.ResponseError, match="argument must be between 0"):
        client.config_set("latency-monitor-threshold", -1)


def test_latency_histogram(client) -> None:
    client.config_resetstat()
    client.set("a", "b")
    client.set("c", "d")
    histo = client.execute_command("LATENCY", "HISTOGRAM", "set", "nosuch", "config")
    assert set(histo) == {"set", "config|resetstat"}
    assert histo["set"]["calls"] == 2
    counts = list(histo["set"]["histogram_usec"].values())
    assert counts == sorted(counts) and counts[-1] == 2  # cumulative
    assert client.execute_command("LATENCY", "HISTOGRAM", "nosuch") == {}
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'latency|help'"):
        client.execute_command("LATENCY", "HELP", "x")
