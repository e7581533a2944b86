"""Tensor-core activity (TCA) samplers: DCGM first, NVML GPM second, else None.

What: the fraction of time the GPU's tensor pipes were active while a
workload ran, as a 0-1 ratio.

* :class:`DcgmSampler` runs ``dcgmi dmon -e 1004 -c N -d MS`` (field 1004 =
  ``DCGM_FI_PROF_PIPE_TENSOR_ACTIVE``, already a 0-1 ratio) and averages
  the samples. Needs the DCGM host engine with its profiling module.
* :class:`NvmlGpmSampler` uses nvidia-ml-py's GPM API: two
  ``nvmlGpmSampleGet`` snapshots more than 100 ms apart, then
  ``nvmlGpmMetricsGet`` for metric 5 ``NVML_GPM_METRIC_ANY_TENSOR_UTIL``
  (percent, divided by 100). GPM exists on Hopper and newer only, as reported
  by ``nvmlGpmQueryDeviceSupport``. The ``nvml`` module is injectable.
* :func:`measure_tca` tries them in that order and returns
  ``TcaResult(value=None, source=None, reason=...)`` when neither works.

Why: MFU alone cannot tell "tensor cores idle" from "tensor cores busy but
inefficient"; TCA can (see :mod:`gap`). A fabricated TCA would invert that
diagnosis, so every failure path returns None with the reason.

No torch import; ``pynvml`` is imported lazily and only if no module is injected.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

__all__ = [
    "TcaResult",
    "DcgmSampler",
    "NvmlGpmSampler",
    "measure_tca",
    "parse_dcgmi_dmon",
    "DCGM_FIELD_TENSOR_ACTIVE",
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
]

#: DCGM_FI_PROF_PIPE_TENSOR_ACTIVE
DCGM_FIELD_TENSOR_ACTIVE = 1004
#: nvmlGpmMetricId_t value of NVML_GPM_METRIC_ANY_TENSOR_UTIL
NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
#: GPM needs the two samples at least this far apart (NVML documents 100 ms)
GPM_MIN_INTERVAL_S = 0.11


@dataclass(frozen=True)
class TcaResult:
    """Tensor-core activity as a 0-1 ratio, or None with ``reason``.

    ``source``: ``"dcgm"`` or ``"nvml_gpm"`` when ``value`` is set.
    ``samples``: number of readings averaged (GPM: 1 interval).
    """

    value: float | None
    source: str | None
    reason: str
    samples: int = 0


class Sampler(Protocol):
    """What :func:`measure_tca` needs from a sampler."""

    source: str

    def probe(self) -> str | None:
        """None when usable, else the reason it is not."""

    def start(self, duration_s: float) -> None: ...

    def stop(self) -> TcaResult: ...

    def close(self) -> None: ...


def parse_dcgmi_dmon(text: str, gpu_index: int | None = None) -> list[float]:
    """Values of the first field column of ``dcgmi dmon`` output.

    Keeps ``GPU <id> <value>`` rows (of ``gpu_index`` if given), skips the
    ``#Entity``/``ID`` header lines and ``N/A`` readings. Raises ValueError for
    a reading outside 0-1 (field 1004 is a ratio; anything else means the
    output is not what we think it is).
    """
    values: list[float] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0].upper() != "GPU":
            continue
        if gpu_index is not None and parts[1] != str(gpu_index):
            continue
        raw = parts[2]
        try:
            value = float(raw)
        except ValueError:
            continue  # N/A and friends
        if math.isnan(value):
            continue
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"dcgmi reading {raw!r} is outside the 0-1 ratio of field 1004")
        values.append(value)
    return values


class DcgmSampler:
    """Samples field 1004 with the ``dcgmi`` CLI (found on ``PATH``).

    ``interval_ms`` is the ``-d`` delay; ``start(duration_s)`` launches
    ``dcgmi dmon -e 1004 -c N -d interval_ms -i gpu_index`` in the background
    with ``N = ceil(duration_s*1000/interval_ms)``; ``stop()`` waits for it
    and averages the readings.
    """

    source = "dcgm"

    def __init__(self, gpu_index: int = 0, interval_ms: int = 100, executable: str = "dcgmi") -> None:
        self.gpu_index = gpu_index
        self.interval_ms = max(1, int(interval_ms))
        self.executable = executable
        self._path: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._count = 0
        self.last_command: list[str] | None = None

    def probe(self) -> str | None:
        self._path = shutil.which(self.executable)
        if self._path is None:
            return f"{self.executable!r} not found on PATH (DCGM not installed)"
        return None

    def command(self, count: int) -> list[str]:
        """The argv used for ``count`` samples."""
        return [
            self._path or self.executable,
            "dmon",
            "-e",
            str(DCGM_FIELD_TENSOR_ACTIVE),
            "-c",
            str(count),
            "-d",
            str(self.interval_ms),
            "-i",
            str(self.gpu_index),
        ]

    def start(self, duration_s: float) -> None:
        self._count = max(1, math.ceil(duration_s * 1000.0 / self.interval_ms))
        self.last_command = self.command(self._count)
        self._proc = subprocess.Popen(
            self.last_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def stop(self) -> TcaResult:
        if self._proc is None:
            return TcaResult(None, None, "DcgmSampler.stop() without start()")
        timeout = self._count * self.interval_ms / 1000.0 + 15.0
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            return TcaResult(None, None, f"dcgmi did not finish within {timeout:.0f}s")
        finally:
            proc, self._proc = self._proc, None
        if proc.returncode != 0:
            detail = (err.strip() or out.strip()).splitlines()[:1]
            return TcaResult(None, None, f"dcgmi exited {proc.returncode}: {detail[0] if detail else 'no output'}")
        try:
            values = parse_dcgmi_dmon(out, self.gpu_index)
        except ValueError as exc:
            return TcaResult(None, None, str(exc))
        if not values:
            first = next((ln.strip() for ln in out.splitlines() if ln.strip()), "no output")
            return TcaResult(None, None, f"dcgmi gave no numeric field-1004 readings (first line: {first!r})")
        mean = sum(values) / len(values)
        return TcaResult(mean, self.source, f"mean of {len(values)} dcgmi dmon samples (field 1004)", len(values))

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()
        self._proc = None


class NvmlGpmSampler:
    """``NVML_GPM_METRIC_ANY_TENSOR_UTIL`` over the interval ``start()``..``stop()``.

    ``nvml``: the ``pynvml`` module (nvidia-ml-py) or a stand-in with the same
    functions/constants; imported lazily when None. ``stop()`` sleeps if needed
    so the two GPM samples are more than 100 ms apart.
    """

    source = "nvml_gpm"
    _REQUIRED = (
        "nvmlInit",
        "nvmlDeviceGetHandleByIndex",
        "nvmlGpmQueryDeviceSupport",
        "nvmlGpmSampleAlloc",
        "nvmlGpmSampleGet",
        "nvmlGpmMetricsGet",
        "nvmlGpmSampleFree",
        "c_nvmlGpmMetricsGet_t",
    )

    def __init__(self, nvml: Any = None, gpu_index: int = 0) -> None:
        self.nvml = nvml
        self.gpu_index = gpu_index
        self._handle: Any = None
        self._inited = False
        self._samples: list[Any] = []
        self._t0 = 0.0

    def probe(self) -> str | None:
        if self.nvml is None:
            try:
                import pynvml  # type: ignore[import-not-found]
            except ImportError:
                return "nvidia-ml-py (pynvml) is not installed"
            self.nvml = pynvml
        nv = self.nvml
        missing = [name for name in self._REQUIRED if not hasattr(nv, name)]
        if missing:
            return f"NVML bindings lack the GPM API ({', '.join(missing)}); need nvidia-ml-py >= 12.535"
        try:
            nv.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return f"NVML init failed ({exc}): no NVIDIA driver/GPU"
        self._inited = True
        try:
            self._handle = nv.nvmlDeviceGetHandleByIndex(self.gpu_index)
            support = nv.nvmlGpmQueryDeviceSupport(self._handle)
        except Exception as exc:
            self.close()
            return f"NVML GPM support query failed for GPU {self.gpu_index}: {exc}"
        if not getattr(support, "isSupportedDevice", 0):
            self.close()
            return f"GPU {self.gpu_index} does not support GPM metrics (Hopper or newer required)"
        return None

    def start(self, duration_s: float = 0.0) -> None:
        nv = self.nvml
        self._samples = [nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()]
        nv.nvmlGpmSampleGet(self._handle, self._samples[0])
        self._t0 = time.monotonic()

    def stop(self) -> TcaResult:
        nv = self.nvml
        if not self._samples:
            return TcaResult(None, None, "NvmlGpmSampler.stop() without start()")
        wait = GPM_MIN_INTERVAL_S - (time.monotonic() - self._t0)
        if wait > 0:
            time.sleep(wait)
        s1, s2 = self._samples
        try:
            nv.nvmlGpmSampleGet(self._handle, s2)
            query = nv.c_nvmlGpmMetricsGet_t()
            query.version = getattr(nv, "NVML_GPM_METRICS_GET_VERSION", 1)
            query.numMetrics = 1
            query.sample1 = s1
            query.sample2 = s2
            metric_id = getattr(nv, "NVML_GPM_METRIC_ANY_TENSOR_UTIL", NVML_GPM_METRIC_ANY_TENSOR_UTIL)
            query.metrics[0].metricId = metric_id
            nv.nvmlGpmMetricsGet(query)
            metric = query.metrics[0]
            status = int(getattr(metric, "nvmlReturn", 0) or 0)
            percent = float(metric.value)
        except Exception as exc:
            return TcaResult(None, None, f"nvmlGpmMetricsGet failed: {exc}")
        finally:
            self._free()
        if status != 0:
            return TcaResult(None, None, f"NVML returned status {status} for ANY_TENSOR_UTIL")
        if math.isnan(percent) or not 0.0 <= percent <= 100.0:
            return TcaResult(None, None, f"ANY_TENSOR_UTIL reading {percent!r} is not a percentage")
        return TcaResult(percent / 100.0, self.source, "NVML GPM ANY_TENSOR_UTIL over one interval", 1)

    def _free(self) -> None:
        for sample in self._samples:
            try:
                self.nvml.nvmlGpmSampleFree(sample)
            except Exception:
                pass
        self._samples = []

    def close(self) -> None:
        self._free()
        if self._inited:
            self._inited = False
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass


def _drive(workload: Callable[[], Any] | None, duration_s: float) -> None:
    """Run ``workload`` repeatedly (at least once) until ``duration_s`` passed;
    with no workload just wait, sampling whatever else runs on the GPU."""
    deadline = time.monotonic() + duration_s
    if workload is None:
        time.sleep(max(0.0, duration_s))
        return
    while True:
        workload()
        if time.monotonic() >= deadline:
            return


def measure_tca(
    workload: Callable[[], Any] | None = None,
    *,
    duration_s: float = 1.0,
    gpu_index: int = 0,
    nvml: Any = None,
    dcgmi: str = "dcgmi",
    interval_ms: int = 100,
    samplers: Sequence[Sampler] | None = None,
    device_index: int | None = None,
) -> TcaResult:
    """Tensor-core activity while ``workload`` runs: DCGM, then NVML GPM, else None.

    ``workload`` (e.g. a few training steps) is called repeatedly for
    ``duration_s`` under each sampler tried (so again if DCGM starts but fails
    and GPM is tried next); it should block until its GPU work is done (e.g.
    ``loss.item()``), otherwise the samples lag the host loop. A sampler that
    is unavailable or fails is skipped with its reason; exceptions from
    ``workload`` itself propagate. The result never carries a made-up value.
    ``samplers`` overrides the order. ``device_index`` is an alias of
    ``gpu_index``. Without a workload the window just elapses, so the value
    reflects whatever else ran on the GPU then (an idle GPU reads ~0).
    """
    if device_index is not None:
        gpu_index = device_index
    if samplers is None:
        samplers = [
            DcgmSampler(gpu_index=gpu_index, interval_ms=interval_ms, executable=dcgmi),
            NvmlGpmSampler(nvml=nvml, gpu_index=gpu_index),
        ]
    reasons: list[str] = []
    for sampler in samplers:
        why = sampler.probe()
        if why is not None:
            reasons.append(f"{sampler.source}: {why}")
            continue
        try:
            # sampler failures become reasons; workload failures propagate
            try:
                sampler.start(duration_s)
            except Exception as exc:
                result = TcaResult(None, None, f"start failed: {type(exc).__name__}: {exc}")
            else:
                _drive(workload, duration_s)
                try:
                    result = sampler.stop()
                except Exception as exc:
                    result = TcaResult(None, None, f"stop failed: {type(exc).__name__}: {exc}")
        finally:
            sampler.close()
        if result.value is not None:
            notes = list(reasons)
            if workload is None:
                notes.append("no workload given: sampled whatever ran on the GPU during the window")
            if notes:
                result = TcaResult(
                    result.value, result.source, f"{result.reason} ({'; '.join(notes)})", result.samples
                )
            return result
        reasons.append(f"{sampler.source}: {result.reason}")
    return TcaResult(None, None, "no tensor-core activity source: " + "; ".join(reasons))
