"""tca: dcgmi parsing, NVML GPM via an injected fake, fallback order, and the real no-GPU path."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_spml.toolkit.profiling import tca
from pytest_spml.toolkit.profiling.tca import (
    DcgmSampler,
    NvmlGpmSampler,
    TcaResult,
    measure_tca,
    parse_dcgmi_dmon,
)

DMON_OUTPUT = """\
#Entity   TENSO
ID
GPU 0     0.400
GPU 0     N/A
GPU 1     0.900
GPU 0     0.600
"""


def test_parse_dcgmi_dmon() -> None:
    assert parse_dcgmi_dmon(DMON_OUTPUT, 0) == [0.4, 0.6]
    assert parse_dcgmi_dmon(DMON_OUTPUT, 1) == [0.9]
    assert parse_dcgmi_dmon(DMON_OUTPUT) == [0.4, 0.9, 0.6]
    assert parse_dcgmi_dmon("Error: Unable to connect to host engine.\n") == []
    assert parse_dcgmi_dmon("") == []


def test_parse_rejects_percent_looking_values() -> None:
    with pytest.raises(ValueError):
        parse_dcgmi_dmon("GPU 0   45.0\n")


def _fake_dcgmi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, exit_code: int = 0) -> Path:
    """Write an executable `dcgmi` into tmp_path/bin and put it first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "dcgmi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > "{tmp_path}/dcgmi-args.txt"\n'
        f"cat <<'EOF'\n{body}EOF\n"
        f"exit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path / "dcgmi-args.txt"


class FakeNvml:
    """Stand-in for the pynvml module, injected through NvmlGpmSampler(nvml=...)."""

    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5

    def __init__(self, percent: float = 42.0, supported: bool = True, init_error: str | None = None,
                 status: int = 0) -> None:
        self.percent, self.supported, self.init_error, self.status = percent, supported, init_error, status
        self.calls: list[str] = []
        self.sample_times: list[float] = []
        self.freed = 0
        self.queried_metric: int | None = None

        fake = self

        class Query:
            def __init__(self) -> None:
                self.version = 0
                self.numMetrics = 0
                self.sample1: Any = None
                self.sample2: Any = None
                self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(4)]

        self.c_nvmlGpmMetricsGet_t = Query
        self._fake = fake

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise RuntimeError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlGpmQueryDeviceSupport(self, handle: str) -> SimpleNamespace:
        return SimpleNamespace(isSupportedDevice=int(self.supported))

    def nvmlGpmSampleAlloc(self) -> SimpleNamespace:
        return SimpleNamespace(t=None)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self.freed += 1

    def nvmlGpmSampleGet(self, handle: str, sample: Any) -> None:
        sample.t = time.monotonic()
        self.sample_times.append(sample.t)

    def nvmlGpmMetricsGet(self, query: Any) -> Any:
        self.calls.append("metrics")
        assert query.version == 1 and query.numMetrics == 1
        assert query.sample2.t - query.sample1.t > 0.1, "GPM samples must be >100 ms apart"
        metric = query.metrics[0]
        self.queried_metric = metric.metricId
        metric.value = self.percent
        metric.nvmlReturn = self.status
        return query


def test_dcgm_sampler_with_fake_executable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args_file = _fake_dcgmi(tmp_path, monkeypatch, DMON_OUTPUT)
    sampler = DcgmSampler(gpu_index=0, interval_ms=50)
    assert sampler.probe() is None
    sampler.start(0.2)
    result = sampler.stop()
    sampler.close()
    assert result == TcaResult(pytest.approx(0.5), "dcgm", result.reason, 2)
    assert args_file.read_text().split() == ["dmon", "-e", "1004", "-c", "4", "-d", "50", "-i", "0"]


def test_dcgm_sampler_failure_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dcgmi(tmp_path, monkeypatch, "Error: Profiling module not loaded\n", exit_code=3)
    sampler = DcgmSampler()
    assert sampler.probe() is None
    sampler.start(0.1)
    result = sampler.stop()
    assert result.value is None and "exited 3" in result.reason and "Profiling module" in result.reason


def test_dcgm_missing_executable() -> None:
    assert "not found" in (DcgmSampler(executable="spml-no-such-dcgmi").probe() or "")


def test_nvml_gpm_sampler_with_fake_module() -> None:
    nv = FakeNvml(percent=37.5)
    sampler = NvmlGpmSampler(nvml=nv)
    assert sampler.probe() is None
    sampler.start()
    result = sampler.stop()  # waits so the two samples are >100 ms apart
    sampler.close()
    assert result.value == pytest.approx(0.375) and result.source == "nvml_gpm"
    assert nv.queried_metric == 5
    assert nv.sample_times[1] - nv.sample_times[0] > 0.1
    assert nv.freed == 2 and nv.calls[-1] == "shutdown"


@pytest.mark.parametrize(
    ("fake", "expect"),
    [
        (FakeNvml(supported=False), "Hopper"),
        (FakeNvml(init_error="NVML Shared Library Not Found"), "no NVIDIA driver"),
        (SimpleNamespace(nvmlInit=lambda: None), "GPM API"),
    ],
)
def test_nvml_gpm_unavailable_reasons(fake: Any, expect: str) -> None:
    why = NvmlGpmSampler(nvml=fake).probe()
    assert why is not None and expect in why


def test_nvml_gpm_bad_metric_status_is_none() -> None:
    sampler = NvmlGpmSampler(nvml=FakeNvml(status=3))
    assert sampler.probe() is None
    sampler.start()
    result = sampler.stop()
    assert result.value is None and "status 3" in result.reason


def test_fallback_prefers_dcgm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dcgmi(tmp_path, monkeypatch, DMON_OUTPUT)
    nv = FakeNvml()
    calls = []
    result = measure_tca(lambda: calls.append(1), duration_s=0.05, nvml=nv, interval_ms=25)
    assert result.source == "dcgm" and result.value == pytest.approx(0.5)
    assert "init" not in nv.calls  # GPM never touched
    assert calls  # the workload ran under the sampler


def test_fallback_to_nvml_when_dcgm_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dcgmi(tmp_path, monkeypatch, "Error: Unable to connect to host engine\n", exit_code=1)
    result = measure_tca(duration_s=0.02, nvml=FakeNvml(percent=80.0))
    assert result.source == "nvml_gpm" and result.value == pytest.approx(0.8)
    assert "dcgm" in result.reason and "host engine" in result.reason


def test_fallback_to_nvml_when_dcgm_missing() -> None:
    result = measure_tca(duration_s=0.0, nvml=FakeNvml(percent=10.0), dcgmi="spml-no-such-dcgmi")
    assert result.source == "nvml_gpm" and result.value == pytest.approx(0.1)


def test_nothing_available_is_none_with_both_reasons() -> None:
    result = measure_tca(duration_s=0.0, nvml=FakeNvml(supported=False), dcgmi="spml-no-such-dcgmi")
    assert result == TcaResult(None, None, result.reason, 0)
    assert "dcgm:" in result.reason and "nvml_gpm:" in result.reason and "Hopper" in result.reason


def test_workload_errors_propagate() -> None:
    def boom() -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        measure_tca(boom, duration_s=0.0, nvml=FakeNvml(), dcgmi="spml-no-such-dcgmi")


def test_real_cpu_path_reports_no_gpu_or_no_library() -> None:
    if shutil.which("dcgmi"):
        pytest.skip("dcgmi is installed here")
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    except ImportError:
        pass
    result = measure_tca(duration_s=0.0)
    assert result.value is None and result.source is None
    assert "dcgmi" in result.reason
    assert "not installed" in result.reason or "no NVIDIA driver" in result.reason or "GPM" in result.reason


def test_module_does_not_import_pynvml_eagerly() -> None:
    assert "pynvml" not in vars(tca)


def test_device_index_alias_and_no_workload_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args_file = _fake_dcgmi(tmp_path, monkeypatch, "GPU 2   0.250\n")
    result = measure_tca(duration_s=0.01, device_index=2, nvml=FakeNvml())
    assert result.value == pytest.approx(0.25) and result.source == "dcgm"
    assert args_file.read_text().split()[-2:] == ["-i", "2"]
    assert "no workload" in result.reason
