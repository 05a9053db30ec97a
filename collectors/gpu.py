"""NVIDIA GPU metrics through NVML (nvidia-ml-py), normalized to base units.

NVML reports milliwatts, MHz and KB/s; concepts carry watts, hertz and bytes per second,
and `raw_name` keeps the NVML call each value came from. Without a driver the collector
says so once and then returns nothing, so a CPU-only host collects the same way.

Run ``python -m collectors.gpu`` to print one collection as JSON lines.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import operator
from dataclasses import asdict, dataclass
from typing import Any

import pynvml

from servescope.core.records import Sample

log = logging.getLogger("servescope.collect")

MHZ = 1_000_000
KIB = 1024  # NVML's PCIe "KB/s" are KiB: 1024 KB/s is 1 MiB/s

# Clock event ("throttle") reason bits, as NVML defines them. The two newest bits exist only
# in the older ClocksThrottleReason names of pynvml, hence getattr with a default.
THROTTLE_REASONS: dict[str, int] = {
    "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
    "board_limit": getattr(pynvml, "nvmlClocksThrottleReasonBoardLimit", 0x200),
    "reliability": getattr(pynvml, "nvmlClocksThrottleReasonReliability", 0x400),
}
_KNOWN_REASON_BITS = functools.reduce(operator.or_, THROTTLE_REASONS.values(), 0)


@dataclass(frozen=True)
class _Gpu:
    index: int
    handle: Any
    labels: dict[str, str]


# Newer NVML renames calls; older drivers lack the new names. First one present wins.
REASONS_CALLS = (
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)
PROCESSES_CALLS = (
    "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetComputeRunningProcesses_v2",
)


class GpuCollector:
    """One NVML session for the life of the collector.

    NVML is initialized once: a host without a driver is reported with a single log line
    and every collect() afterwards is a cheap [] (no retries, no repeated logging).
    """

    def __init__(self) -> None:
        self.gpus: list[_Gpu] = []
        self._nvml_open = False
        self._warned: set[tuple[str, int]] = set()
        self._missing: set[str] = set()  # calls this driver does not have
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError, OSError) as e:
            log.info("no NVIDIA GPU: %s", e)
            return
        self._nvml_open = True
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as e:
            log.info("no NVIDIA GPU: %s", e)
            self.close()
            return
        for index in range(count):
            try:
                self.gpus.append(_open_gpu(index))
            except pynvml.NVMLError as e:  # e.g. a lost GPU: collect the others
                log.warning("GPU %d skipped: %s", index, e)
        if not self.gpus:
            log.info("no NVIDIA GPU: NVML lists no usable device")
            self.close()

    @property
    def available(self) -> bool:
        return bool(self.gpus)

    def collect(self) -> list[Sample]:
        samples: list[Sample] = []
        for gpu in self.gpus:
            samples += self._collect_gpu(gpu)
        return samples

    def close(self) -> None:
        self.gpus = []
        if self._nvml_open:
            self._nvml_open = False
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    def __enter__(self) -> GpuCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, name: str, *args: Any) -> Any:
        """Call one NVML query by name; None when it fails, so only its samples are omitted.

        Not-supported is normal (power on some boards, PCIe counters on others) and stays
        quiet; a call the driver lacks is remembered; anything else is logged once.
        """
        try:
            return getattr(pynvml, name)(*args)
        except pynvml.NVMLError_NotSupported:
            return None
        except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLLibraryMismatchError):
            self._missing.add(name)
            return None
        except pynvml.NVMLError as e:
            key = (name, e.value)
            if key not in self._warned:
                self._warned.add(key)
                log.warning("NVML %s failed: %s", name, e)
            return None

    def _query_first(self, names: tuple[str, ...], *args: Any) -> tuple[str, Any]:
        """(name, result) of the first of `names` this driver has."""
        for name in names:
            if name in self._missing or not hasattr(pynvml, name):
                continue
            value = self._query(name, *args)
            if name not in self._missing:
                return name, value
        return names[-1], None

    def _collect_gpu(self, gpu: _Gpu) -> list[Sample]:
        h, labels = gpu.handle, gpu.labels
        out: list[Sample] = []

        def add(concept: str, value: float | None, raw_name: str) -> None:
            if value is not None:
                out.append(Sample(concept, float(value), raw_name, dict(labels)))

        util = self._query("nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            add("gpu_utilization_ratio", util.gpu / 100, "nvmlDeviceGetUtilizationRates.gpu")
            add(
                "gpu_memory_utilization_ratio",
                util.memory / 100,
                "nvmlDeviceGetUtilizationRates.memory",
            )
        mem = self._query("nvmlDeviceGetMemoryInfo", h)
        if mem is not None:
            add("gpu_memory_used_bytes", mem.used, "nvmlDeviceGetMemoryInfo.used")
            add("gpu_memory_total_bytes", mem.total, "nvmlDeviceGetMemoryInfo.total")

        for concept, name in (
            ("gpu_power_draw_watts", "nvmlDeviceGetPowerUsage"),
            ("gpu_power_limit_watts", "nvmlDeviceGetEnforcedPowerLimit"),
        ):
            milliwatts = self._query(name, h)
            add(concept, None if milliwatts is None else milliwatts / 1000, name)
        temp = self._query("nvmlDeviceGetTemperature", h, pynvml.NVML_TEMPERATURE_GPU)
        add("gpu_temperature_celsius", temp, "nvmlDeviceGetTemperature")

        for concept, clock in (
            ("gpu_sm_clock_hertz", pynvml.NVML_CLOCK_SM),
            ("gpu_memory_clock_hertz", pynvml.NVML_CLOCK_MEM),
        ):
            mhz = self._query("nvmlDeviceGetClockInfo", h, clock)
            add(concept, None if mhz is None else mhz * MHZ, "nvmlDeviceGetClockInfo")
        for concept, counter in (
            ("gpu_pcie_transmitted_bytes_per_second", pynvml.NVML_PCIE_UTIL_TX_BYTES),
            ("gpu_pcie_received_bytes_per_second", pynvml.NVML_PCIE_UTIL_RX_BYTES),
        ):
            kib = self._query("nvmlDeviceGetPcieThroughput", h, counter)
            add(concept, None if kib is None else kib * KIB, "nvmlDeviceGetPcieThroughput")

        out += self._throttle(h, labels)
        out += self._processes(gpu)
        return out

    def _throttle(self, h: Any, labels: dict[str, str]) -> list[Sample]:
        """The reason bitmask as one 0/1 sample per reason, so each is its own series."""
        name, mask = self._query_first(REASONS_CALLS, h)
        if mask is None:
            return []
        samples = [
            Sample(
                "gpu_throttle_active", float(bool(mask & bit)), name, {**labels, "reason": reason}
            )
            for reason, bit in THROTTLE_REASONS.items()
        ]
        if mask & ~_KNOWN_REASON_BITS:
            samples.append(Sample("gpu_throttle_active", 1.0, name, {**labels, "reason": "other"}))
        return samples

    def _processes(self, gpu: _Gpu) -> list[Sample]:
        name, procs = self._query_first(PROCESSES_CALLS, gpu.handle)
        return [
            Sample(
                "gpu_process_memory_bytes",
                float(p.usedGpuMemory),
                f"{name}.usedGpuMemory",
                {"gpu": gpu.labels["gpu"], "pid": str(p.pid)},
            )
            for p in procs or []
            # None where the driver cannot attribute memory (e.g. Windows WDDM).
            if p.usedGpuMemory is not None
        ]


def _open_gpu(index: int) -> _Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    labels = {
        "gpu": str(index),
        "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
        "name": _text(pynvml.nvmlDeviceGetName(handle)),
    }
    return _Gpu(index=index, handle=handle, labels=labels)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def main() -> None:
    """Print one collection as JSON lines: a quick check on a real GPU machine."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    with GpuCollector() as collector:
        for s in collector.collect():
            print(json.dumps(asdict(s)))


if __name__ == "__main__":
    main()
