"""GPU collector: the no-driver path for real, the NVML path against fakes that return what
nvidia-ml-py returns (its own ctypes structs and friendly objects, NVML's units)."""

from __future__ import annotations

import logging
from typing import Any

import pynvml
import pytest

from servescope.collectors.gpu import GpuCollector
from servescope.core.records import Sample

GIB = 1024**3
UUID = "GPU-8f6f1c2e-0000-4a5b-9c3d-1234567890ab"


def no_gpu_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("no NVIDIA GPU")]


def by_concept(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.concept, []).append(s)
    return out


def only(samples: list[Sample], concept: str) -> Sample:
    found = by_concept(samples)[concept]
    assert len(found) == 1, found
    return found[0]


def test_this_machine_without_driver_collects_nothing_and_says_so_once(caplog):
    caplog.set_level(logging.INFO, logger="servescope.collect")
    collector = GpuCollector()
    if collector.available:  # run on a GPU machine: the real path must give real values
        samples = collector.collect()
        assert only(samples, "gpu_memory_total_bytes").value > 0
        assert no_gpu_lines(caplog) == []
        collector.close()
        return
    assert [collector.collect() for _ in range(3)] == [[], [], []]
    lines = no_gpu_lines(caplog)
    assert len(lines) == 1, lines


def test_init_failure_is_logged_once_and_never_retried(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="servescope.collect")
    calls = []

    def failing_init() -> None:
        calls.append(1)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", failing_init)
    collector = GpuCollector()
    assert [collector.collect() for _ in range(5)] == [[], [], [], [], []]
    assert calls == [1]
    assert no_gpu_lines(caplog) == ["no NVIDIA GPU: Driver Not Loaded"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]


class FakeNvml:
    """One H100-like GPU. Each fake has the signature and return type of the pynvml call."""

    def __init__(self) -> None:
        self.handle = pynvml.c_nvmlDevice_t()  # NVML handles are opaque pointers
        self.reasons = (
            pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        )
        self.shutdowns = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in dir(self):
            if name.startswith("nvml"):
                monkeypatch.setattr(pynvml, name, getattr(self, name))

    def _check(self, handle: Any) -> None:
        assert handle is self.handle

    def nvmlInit(self) -> None:
        return None

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        assert index == 0
        return self.handle

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._check(handle)
        return UUID  # @convertStrBytes: str on Python 3

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._check(handle)
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> pynvml.c_nvmlUtilization_t:
        self._check(handle)
        return pynvml.c_nvmlUtilization_t(gpu=37, memory=12)  # percent

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        self._check(handle)
        assert version is None
        return pynvml.c_nvmlMemory_t(total=80 * GIB, free=30 * GIB, used=50 * GIB)  # bytes

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        self._check(handle)
        return 250000  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        self._check(handle)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        self._check(handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return 64  # celsius

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        self._check(handle)
        return {pynvml.NVML_CLOCK_SM: 1410, pynvml.NVML_CLOCK_MEM: 2619}[type]  # MHz

    def nvmlDeviceGetPcieThroughput(self, device: Any, counter: int) -> int:
        self._check(device)
        return {pynvml.NVML_PCIE_UTIL_TX_BYTES: 1024, pynvml.NVML_PCIE_UTIL_RX_BYTES: 3}[counter]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        self._check(handle)
        return self.reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        raise AssertionError("the deprecated call is only a fallback")

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        self._check(handle)
        serving = pynvml.c_nvmlProcessInfo_t(
            pid=4242, usedGpuMemory=70 * GIB, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0
        )
        unattributed = pynvml.c_nvmlProcessInfo_t(pid=4243, usedGpuMemory=0)
        procs = [pynvml.nvmlStructToFriendlyObject(p) for p in (serving, unattributed)]
        procs[1].usedGpuMemory = None  # what pynvml makes of NVML_VALUE_NOT_AVAILABLE
        return procs


@pytest.fixture()
def fake_nvml(monkeypatch) -> FakeNvml:
    fake = FakeNvml()
    fake.install(monkeypatch)
    return fake


def test_units_are_converted_to_base_units(fake_nvml):
    samples = GpuCollector().collect()
    assert only(samples, "gpu_utilization_ratio").value == 0.37
    assert only(samples, "gpu_memory_utilization_ratio").value == 0.12
    assert only(samples, "gpu_memory_used_bytes").value == 50 * GIB
    assert only(samples, "gpu_memory_total_bytes").value == 80 * GIB
    assert only(samples, "gpu_power_draw_watts").value == 250.0
    assert only(samples, "gpu_temperature_celsius").value == 64.0
    assert only(samples, "gpu_sm_clock_hertz").value == 1.41e9
    assert only(samples, "gpu_memory_clock_hertz").value == 2.619e9
    assert only(samples, "gpu_pcie_transmitted_bytes_per_second").value == 1048576
    assert only(samples, "gpu_pcie_received_bytes_per_second").value == 3072
    assert all(isinstance(s.value, float) for s in samples)


def test_raw_source_and_gpu_labels_are_kept(fake_nvml):
    samples = GpuCollector().collect()
    power = only(samples, "gpu_power_draw_watts")
    assert power.raw_name == "nvmlDeviceGetPowerUsage"
    assert power.labels == {"gpu": "0", "uuid": UUID, "name": "NVIDIA H100 80GB HBM3"}
    assert only(samples, "gpu_memory_used_bytes").raw_name == "nvmlDeviceGetMemoryInfo.used"
    assert all(s.extra is None for s in samples)  # extra is reserved for histograms


def test_not_supported_query_only_omits_its_sample(fake_nvml, caplog):
    caplog.set_level(logging.DEBUG, logger="servescope.collect")
    samples = GpuCollector().collect()
    assert "gpu_power_limit_watts" not in by_concept(samples)
    assert "gpu_power_draw_watts" in by_concept(samples)
    assert caplog.records == []  # not-supported is normal, not news


def test_throttle_bits_decode_to_reason_labels(fake_nvml):
    samples = by_concept(GpuCollector().collect())["gpu_throttle_active"]
    active = {s.labels["reason"] for s in samples if s.value == 1.0}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}
    assert {s.labels["reason"] for s in samples if s.value == 0.0} >= {"gpu_idle", "hw_slowdown"}
    assert {s.raw_name for s in samples} == {"nvmlDeviceGetCurrentClocksEventReasons"}


def test_unknown_throttle_bits_show_as_other(fake_nvml):
    fake_nvml.reasons = pynvml.nvmlClocksEventReasonGpuIdle | (1 << 40)
    samples = by_concept(GpuCollector().collect())["gpu_throttle_active"]
    assert {s.labels["reason"] for s in samples if s.value == 1.0} == {"gpu_idle", "other"}


def test_process_memory_in_bytes_and_unattributed_skipped(fake_nvml):
    procs = by_concept(GpuCollector().collect())["gpu_process_memory_bytes"]
    assert [(p.labels, p.value) for p in procs] == [({"gpu": "0", "pid": "4242"}, 70.0 * GIB)]


def test_older_driver_falls_back_to_older_calls(fake_nvml, monkeypatch):
    def no_event_reasons(handle: Any) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    def no_v3(handle: Any) -> list[Any]:
        raise pynvml.NVMLLibraryMismatchError("Unversioned function called ...")

    def v2(handle: Any) -> list[Any]:
        return [
            pynvml.nvmlStructToFriendlyObject(pynvml.c_nvmlProcessInfo_t(pid=7, usedGpuMemory=5))
        ]

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", no_event_reasons)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", lambda h: 0x4)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", no_v3)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses_v2", v2)
    collector = GpuCollector()
    for _ in range(2):  # the second collection goes straight to the older calls
        samples = by_concept(collector.collect())
        throttle = {s.labels["reason"]: s for s in samples["gpu_throttle_active"]}
        assert throttle["sw_power_cap"].value == 1.0
        assert throttle["sw_power_cap"].raw_name == "nvmlDeviceGetCurrentClocksThrottleReasons"
        assert [p.value for p in samples["gpu_process_memory_bytes"]] == [5.0]


def test_other_nvml_errors_omit_the_sample_and_warn_once(fake_nvml, monkeypatch, caplog):
    def lost(handle: Any) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lost)
    collector = GpuCollector()
    for _ in range(3):
        assert "gpu_power_draw_watts" not in by_concept(collector.collect())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["NVML nvmlDeviceGetPowerUsage failed: GPU is lost"]


def test_close_shuts_nvml_down_once(fake_nvml):
    with GpuCollector() as collector:
        assert collector.available
    collector.close()
    assert fake_nvml.shutdowns == 1
    assert collector.collect() == []
