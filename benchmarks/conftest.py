"""pytest-benchmark setup for detspec's benchmarks (DESIGN.md "Performance method").

- ``--bench-device cpu|cuda`` (default cpu) selects where the workloads live; the ``bench_device`` fixture
  returns it as a ``torch.device``. ``cuda`` without a GPU is a usage error.
- ``timed`` wraps a callable so that, on CUDA, the device is synchronised before the timer stops.
- Each benchmark's ``extra_info["other_cpu_cores"]`` is the CPU time that *other* processes used while it ran,
  in cores (0 = the machine was ours; 1 = another process kept one core busy). Timings with a large value
  are contended and should be rerun (Linux only; absent elsewhere).
- Before the first benchmark, one 31 MiB buffer is allocated and freed (``_warm_allocator``). glibc then raises
  its dynamic mmap threshold to that size, as it does in any process that has already run a model, so that
  temporaries below 31 MiB come from the heap instead of fresh, page-faulting mmaps. Without this the
  figures depend on which benchmarks ran earlier in the process (fast batched NMS on the "rpn" workload
  measured 5 ms after the iou_match group and 17 ms in a fresh process). Temporaries above the cap (e.g.
  torchvision's [20, 242991, 2] box_iou intermediates) are mmapped either way.
- The machine info saved in ``--benchmark-json`` gains the torch / torchvision versions, torch's thread
  count, the CPU model, the benchmark device and the GPU name (when CUDA is available), so that every
  figure names its hardware (DESIGN.md "Performance method").
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from detspec.bench.machine import bf16_support


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("detspec-bench", "detspec benchmarks")
    group.addoption("--bench-device", default="cpu", choices=("cpu", "cuda"), dest="bench_device",
                    help="device the benchmark workloads run on (default cpu)")


def _device_name(config: pytest.Config) -> str:
    return config.getoption("bench_device", default="cpu") or "cpu"


def pytest_configure(config: pytest.Config) -> None:
    if _device_name(config) == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--bench-device cuda, but torch.cuda.is_available() is False")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor(), else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    import torchvision

    machine_info["torch_version"] = torch.__version__
    machine_info["torchvision_version"] = torchvision.__version__
    machine_info["torch_num_threads"] = torch.get_num_threads()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_bf16"] = bf16_support()  # issue 16: bf16 speed depends on it
    machine_info["bench_device"] = _device_name(config)
    if hasattr(os, "getloadavg"):  # other processes on the machine skew CPU timings: record the load
        machine_info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        machine_info["gpu_name"] = torch.cuda.get_device_name(0)
        machine_info["cuda_version"] = torch.version.cuda
    else:
        machine_info["gpu_name"] = None


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process), or None off Linux."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(ticks) - ticks[3] - ticks[4]) / hz
    own = os.times()  # this process and its waited-for children (e.g. a peak-memory subprocess) are not "other"
    return busy, own.user + own.system + own.children_user + own.children_system


WARM_ALLOCATOR_BYTES = 31 << 20  # below glibc's DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit)


@pytest.fixture(scope="session", autouse=True)
def _warm_allocator() -> None:
    """Put the C allocator in a warm process's state once, whatever the test order (see module docstring)."""
    buf = torch.empty(WARM_ALLOCATOR_BYTES, dtype=torch.uint8)
    buf.fill_(0)  # touch it, as a real workload would
    del buf


@pytest.fixture(autouse=True)
def _record_contention(request: pytest.FixtureRequest):
    """Store in extra_info how many cores other processes kept busy during the benchmark."""
    if "benchmark" not in request.fixturenames:
        yield
        return
    bench = request.getfixturevalue("benchmark")
    before, start = _cpu_seconds(), time.perf_counter()
    yield
    after, wall = _cpu_seconds(), time.perf_counter() - start
    if before is not None and after is not None and wall > 0:
        other = (after[0] - before[0]) - (after[1] - before[1])
        bench.extra_info["other_cpu_cores"] = round(max(other, 0.0) / wall, 2)


@pytest.fixture(scope="session")
def bench_device(pytestconfig: pytest.Config) -> torch.device:
    """The device the workloads run on (``--bench-device``)."""
    return torch.device(_device_name(pytestconfig))


@pytest.fixture(scope="session")
def timed(bench_device: torch.device) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """timed(fn) -> fn that synchronises CUDA before returning (a no-op wrapper on CPU)."""

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        if bench_device.type != "cuda":
            return fn

        def synced() -> Any:
            out = fn()
            torch.cuda.synchronize(bench_device)
            return out

        return synced

    return wrap
