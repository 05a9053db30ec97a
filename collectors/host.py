"""Host metrics (CPU, memory, disk, network, serving processes) as normalized samples.

A serving benchmark is only trustworthy if the host was not the bottleneck, so these sit
beside the runtime's own metrics. Values come from psutil; `raw_name` names the psutil
call (and field) each one came from.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import psutil

from servescope.core.records import Sample

# Below this many seconds since the previous reading, per-core CPU deltas are a handful of
# scheduler ticks: noise rather than utilization, so no CPU sample is reported.
MIN_CPU_WINDOW_S = 0.1


class HostCollector:
    """Collects host samples; keeps its own CPU baseline between calls.

    CPU utilization is a rate, so it needs two readings. psutil.cpu_percent(interval=None)
    keeps one process-wide baseline that any other caller resets; this class keeps its
    own (primed at construction), so collect() never blocks and never fights other users.
    """

    def __init__(self) -> None:
        self._cpu_prev = _cpu_busy_total()
        self._cpu_prev_at = time.monotonic()

    def collect(self, pids: Iterable[int] | None = None) -> list[Sample]:
        samples = self._cpu()
        samples += _load_average()
        samples += _memory()
        samples += _disk()
        samples += _network()
        if pids:
            samples += _processes(pids)
        return samples

    def _cpu(self) -> list[Sample]:
        now_at = time.monotonic()
        if now_at - self._cpu_prev_at < MIN_CPU_WINDOW_S:
            return []
        now = _cpu_busy_total()
        prev, self._cpu_prev, self._cpu_prev_at = self._cpu_prev, now, now_at
        if len(now) != len(prev):  # a CPU went on- or offline: start a new window
            return []
        samples = []
        for cpu, ((busy0, total0), (busy1, total1)) in enumerate(zip(prev, now, strict=True)):
            d_total = total1 - total0
            ratio = (busy1 - busy0) / d_total if d_total > 0 else 0.0
            samples.append(
                Sample(
                    "cpu_utilization_ratio",
                    min(1.0, max(0.0, ratio)),
                    "psutil.cpu_times",
                    {"cpu": str(cpu)},
                )
            )
        return samples


_default: HostCollector | None = None


def collect_host(pids: list[int] | None = None) -> list[Sample]:
    """Host samples from a process-wide collector (created, and CPU-primed, on first use).

    The first call has no CPU window yet and so returns no CPU samples; a long-running
    caller should hold its own HostCollector.
    """
    global _default
    if _default is None:
        _default = HostCollector()
    return _default.collect(pids)


def find_serving_pids(port: int) -> list[int]:
    """Pids listening on local TCP `port`; [] when none is found or visible to us.

    System-wide connection listing needs privileges on some systems (macOS, hardened
    Linux), so fall back to asking each process we may inspect.
    """
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError, OSError):
        return _find_listening_per_process(port)
    pids = {c.pid for c in conns if _listens_on(c, port) and c.pid is not None}
    return sorted(pids)


def _find_listening_per_process(port: int) -> list[int]:
    pids = set()
    for proc in psutil.process_iter():
        try:
            if any(_listens_on(c, port) for c in proc.net_connections(kind="tcp")):
                pids.add(proc.pid)
        except (psutil.Error, OSError):
            continue
    return sorted(pids)


def _listens_on(conn: Any, port: int) -> bool:
    return conn.status == psutil.CONN_LISTEN and bool(conn.laddr) and conn.laddr.port == port


def _cpu_busy_total() -> list[tuple[float, float]]:
    """(busy, total) CPU seconds per core, counted the way psutil.cpu_percent counts."""
    out = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        # On Linux guest time is already included in user time.
        total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
        busy = total - t.idle - getattr(t, "iowait", 0.0)
        out.append((busy, total))
    return out


def _load_average() -> list[Sample]:
    try:
        loads = psutil.getloadavg()
    except (AttributeError, OSError):  # not every platform has one
        return []
    return [
        Sample("load_average", float(v), "psutil.getloadavg", {"window": w})
        for w, v in zip(("1m", "5m", "15m"), loads, strict=True)
    ]


def _memory() -> list[Sample]:
    vm = psutil.virtual_memory()
    samples = [
        Sample("memory_total_bytes", float(vm.total), "psutil.virtual_memory.total"),
        Sample("memory_used_bytes", float(vm.used), "psutil.virtual_memory.used"),
        Sample("memory_available_bytes", float(vm.available), "psutil.virtual_memory.available"),
    ]
    try:
        sw = psutil.swap_memory()
    except (RuntimeError, OSError):  # no swap accounting in some containers
        return samples
    samples.append(Sample("swap_used_bytes", float(sw.used), "psutil.swap_memory.used"))
    samples.append(Sample("swap_total_bytes", float(sw.total), "psutil.swap_memory.total"))
    return samples


def _disk() -> list[Sample]:
    io = psutil.disk_io_counters(perdisk=False)
    if io is None:  # no disks visible (some containers)
        return []
    return [
        Sample("disk_read_bytes_total", float(io.read_bytes), "psutil.disk_io_counters.read_bytes"),
        Sample(
            "disk_written_bytes_total", float(io.write_bytes), "psutil.disk_io_counters.write_bytes"
        ),
    ]


def _network() -> list[Sample]:
    """Per interface, loopback included: a local load generator talks over `lo`."""
    samples = []
    for nic, io in sorted(psutil.net_io_counters(pernic=True).items()):
        labels = {"interface": nic}
        samples.append(
            Sample(
                "network_received_bytes_total",
                float(io.bytes_recv),
                "psutil.net_io_counters.bytes_recv",
                labels,
            )
        )
        samples.append(
            Sample(
                "network_transmitted_bytes_total",
                float(io.bytes_sent),
                "psutil.net_io_counters.bytes_sent",
                dict(labels),
            )
        )
    return samples


def _processes(pids: Iterable[int]) -> list[Sample]:
    """RSS and CPU seconds of each pid and its descendants; vanished ones are skipped."""
    samples = []
    for proc in _with_children(pids):
        try:
            with proc.oneshot():
                name = proc.name()
                rss = proc.memory_info().rss
                cpu = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess included
            continue
        labels = {"pid": str(proc.pid), "name": name}
        samples.append(
            Sample(
                "process_resident_memory_bytes",
                float(rss),
                "psutil.Process.memory_info.rss",
                labels,
            )
        )
        samples.append(
            Sample(
                "process_cpu_seconds_total",
                float(cpu.user + cpu.system),
                "psutil.Process.cpu_times",
                dict(labels),
            )
        )
    return samples


def _with_children(pids: Iterable[int]) -> Iterator[psutil.Process]:
    """Each pid, then its descendants, each process once. Serving runtimes fork workers
    (vLLM engine cores, Ollama runners), so the parent alone understates their use."""
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for proc in family:
            if proc.pid not in seen:
                seen.add(proc.pid)
                yield proc


if __name__ == "__main__":  # a quick look: python -m collectors.host
    import json
    import os
    from dataclasses import asdict

    collector = HostCollector()
    time.sleep(MIN_CPU_WINDOW_S * 2)
    for sample in collector.collect([os.getpid()]):
        print(json.dumps(asdict(sample)))
