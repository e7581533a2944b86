"""Profiling toolkit for L1 validation: FLOPs, peak FLOP/s, MFU, step timing,
memory, tensor-core activity and per-layer time.

Every GPU-only measurement degrades to ``None`` plus a reason on machines
without one; nothing is estimated or faked. Submodules are imported lazily
(``profiling.flops`` works as an attribute), and importing this package never
imports torch: ``peak_flops`` and ``gap`` are pure Python, the others import
torch inside their functions.

API (module: signature):

* ``peak_flops``:
  ``match_device(name: str) -> DeviceSpec | None``;
  ``peak_flops(name: str, dtype: str | torch.dtype) -> tuple[float | None, str]``;
  ``normalize_dtype(dtype) -> str | None``;
  ``mfu(flops, seconds, peak) -> tuple[float | None, str]``;
  ``DEVICES: tuple[DeviceSpec, ...]`` (dense peaks, FLOP/s).
* ``flops``:
  ``count_flops(fn, *args, **kwargs) -> FlopCount(total, by_op, uncounted,
  uncounted_ops, op_calls)``; ``linear_flops_note() -> str``.
* ``timing``:
  ``StepTimer(device=None, sync_every=10, event_factory=None)`` with
  ``step()`` / ``start()`` / ``stop()`` / ``times() -> list[float]``;
  ``detect_warmup(times, window=5, cv=0.05) -> int``;
  ``summarize(times, warmup) -> StepStats(median, p90, mean, steady_steps,
  warmup_steps)``.
* ``memory``:
  ``memory_stats(model, optimizer=None, device=None, cuda=None) ->
  MemoryStats(param_bytes, grad_bytes, optimizer_state_bytes,
  peak_allocated_bytes, peak_reserved_bytes, fragmentation, device_reason,
  peak_rss_bytes, rss_reason)``.
* ``tca``:
  ``measure_tca(workload=None, *, duration_s=1.0, gpu_index=0, nvml=None,
  dcgmi="dcgmi", interval_ms=100, samplers=None, device_index=None) ->
  TcaResult(value, source, reason, samples)``; ``DcgmSampler``; ``NvmlGpmSampler(nvml=None)``;
  ``parse_dcgmi_dmon(text, gpu_index=None) -> list[float]``.
* ``gap``:
  ``tca_mfu_gap(tca, mfu, ...) -> GapReport(tca, mfu, gap, efficiency,
  verdict, explanation, causes; summary)``.
* ``layers``:
  ``layer_timing(model, inputs, loss_fn=None, steps=3, *, warmup=1,
  leaf_only=True, device=None, event_factory=None) -> list[LayerTime(name, type,
  forward_s, backward_s, calls; total_s)]``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["peak_flops", "flops", "timing", "memory", "tca", "gap", "layers"]


def __getattr__(name: str) -> ModuleType:
    """Import a submodule on first attribute access (keeps torch out of import time)."""
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
