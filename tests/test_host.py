"""Host collector against the real psutil of this machine: plausible values, never an
exception for a process that is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil

from servescope.collectors.host import (
    MIN_CPU_WINDOW_S,
    HostCollector,
    collect_host,
    find_serving_pids,
)
from servescope.core.records import Sample


def values(samples: list[Sample], concept: str) -> list[float]:
    return [s.value for s in samples if s.concept == concept]


def one(samples: list[Sample], concept: str) -> float:
    found = values(samples, concept)
    assert len(found) == 1, (concept, found)
    return found[0]


def pids_of(samples: list[Sample]) -> set[int]:
    return {int(s.labels["pid"]) for s in samples if s.concept.startswith("process_")}


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_memory_is_plausible():
    samples = collect_host()
    total = one(samples, "memory_total_bytes")
    assert total > one(samples, "memory_used_bytes") > 0
    assert 0 < one(samples, "memory_available_bytes") <= total
    assert one(samples, "swap_total_bytes") >= one(samples, "swap_used_bytes") >= 0


def test_one_cpu_sample_per_core_as_a_ratio():
    collector = HostCollector()
    time.sleep(MIN_CPU_WINDOW_S * 2)
    samples = [s for s in collector.collect() if s.concept == "cpu_utilization_ratio"]
    assert sorted(int(s.labels["cpu"]) for s in samples) == list(range(psutil.cpu_count()))
    assert all(0.0 <= s.value <= 1.0 for s in samples)


def test_cpu_window_too_short_to_mean_anything_is_not_reported():
    collector = HostCollector()
    assert values(collector.collect(), "cpu_utilization_ratio") == []


def test_load_average_windows():
    samples = [s for s in collect_host() if s.concept == "load_average"]
    assert [s.labels["window"] for s in samples] == ["1m", "5m", "15m"]
    assert all(s.value >= 0 for s in samples)


def test_io_counters_are_non_negative_and_keep_raw_source():
    samples = collect_host()
    received = [s for s in samples if s.concept == "network_received_bytes_total"]
    assert received and all(s.value >= 0 and s.labels["interface"] for s in received)
    assert len(values(samples, "network_transmitted_bytes_total")) == len(received)
    assert all(s.raw_name.startswith("psutil.") for s in samples)
    if psutil.disk_io_counters() is not None:
        assert one(samples, "disk_read_bytes_total") >= 0
        assert one(samples, "disk_written_bytes_total") >= 0


def test_own_process_rss_and_cpu_seconds():
    samples = collect_host([os.getpid()])
    mine = [s for s in samples if s.labels.get("pid") == str(os.getpid())]
    rss = [s for s in mine if s.concept == "process_resident_memory_bytes"]
    cpu = [s for s in mine if s.concept == "process_cpu_seconds_total"]
    assert len(rss) == 1 and rss[0].value > 0
    assert len(cpu) == 1 and cpu[0].value > 0
    assert rss[0].labels["name"] == psutil.Process().name()


def test_children_of_a_serving_process_are_included():
    child = sleeper()
    try:
        assert {os.getpid(), child.pid} <= pids_of(collect_host([os.getpid()]))
    finally:
        child.kill()
        child.wait()


def test_each_process_counted_once_when_given_with_its_parent():
    child = sleeper()
    try:
        samples = collect_host([os.getpid(), child.pid])
        rss_pids = [
            s.labels["pid"] for s in samples if s.concept == "process_resident_memory_bytes"
        ]
        assert len(rss_pids) == len(set(rss_pids))
    finally:
        child.kill()
        child.wait()


def test_vanished_process_is_skipped():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    samples = collect_host([gone.pid, os.getpid()])
    assert gone.pid not in pids_of(samples)
    assert os.getpid() in pids_of(samples)
    assert one(samples, "memory_total_bytes") > 0


def test_find_serving_pids_finds_our_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert os.getpid() in find_serving_pids(port)
    assert find_serving_pids(port) == []


def test_find_serving_pids_without_privileges_asks_each_process(monkeypatch):
    def denied(kind: str = "inet") -> list[object]:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert os.getpid() in find_serving_pids(server.getsockname()[1])


def test_find_serving_pids_gives_up_quietly(monkeypatch):
    def denied(*args: object, **kwargs: object) -> list[object]:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    monkeypatch.setattr(psutil.Process, "net_connections", denied)
    assert find_serving_pids(8000) == []
