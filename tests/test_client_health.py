"""The load generator flags results it limited itself."""

import time

import gevent

from loadgen.health import ClientHealth


def test_a_blocked_event_loop_is_flagged():
    health = ClientHealth(tick=0.02)
    health.start()
    gevent.sleep(0.2)
    time.sleep(0.15)  # a greenlet that hogs the loop, as a CPU-bound client would
    gevent.sleep(0.2)
    health.stop()
    s = health.summary(send_lag_ms=[0.1] * 10, connections={}, peak_concurrency=64)
    assert s["loop_lag_ms"]["max"] >= 100
    assert s["limited_by_client"] is True
    assert any("event-loop lag" in r for r in s["reasons"])


def test_an_idle_client_is_not_flagged():
    health = ClientHealth(tick=0.02)
    health.start()
    gevent.sleep(0.5)
    health.stop()
    s = health.summary(send_lag_ms=[0.1] * 10, connections={}, peak_concurrency=64)
    assert s["limited_by_client"] is False, s["reasons"]
