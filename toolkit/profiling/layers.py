"""Per-module forward and backward time of a model.

What: :func:`layer_timing` runs a few forward+backward steps with hooks on
every (leaf) module and reports mean forward and backward seconds per step,
sorted by total. Forward spans come from forward pre-hooks/hooks; backward
spans from full backward pre-hooks/hooks, extended to the last gradient
accumulation of the module's own parameters (a module whose *input* needs
no grad fires its backward hook as soon as its output gradient exists, i.e.
before its weight-gradient matmul - the accumulation hook captures that work).

Why: step time and MFU say *that* a step is slow; this says *where*. On a
GPU the spans are CUDA events read back after one synchronize per step (host
clocks would only time kernel launches); on the CPU ``perf_counter`` is exact.

Caveats: hooks add overhead to very small modules; full backward hooks
reject modules whose output is modified in place (``ReLU(inplace=True)``);
gradients are cleared (``zero_grad(set_to_none=True)``) after every step.
torch is imported inside the function only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from ._clock import EventLike, make_clock

__all__ = ["LayerTime", "layer_timing"]


@dataclass(frozen=True)
class LayerTime:
    """Mean seconds per step spent in one module (children included)."""

    name: str
    type: str
    forward_s: float
    backward_s: float
    calls: float  # forward calls per step

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s


@dataclass
class _Spans:
    fwd_open: list[Any] = field(default_factory=list)
    fwd: list[tuple[Any, Any]] = field(default_factory=list)
    bwd_open: list[Any] = field(default_factory=list)
    bwd: list[list[Any]] = field(default_factory=list)
    calls: int = 0
    fwd_total: float = 0.0
    bwd_total: float = 0.0


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _default_loss(output: Any) -> Any:
    """Sum of every output tensor that requires grad (a surrogate loss)."""
    parts = [t.sum() for t in _tensors(output) if t.requires_grad]
    if not parts:
        raise ValueError("model output has no tensor requiring grad; pass loss_fn")
    loss = parts[0]
    for part in parts[1:]:
        loss = loss + part
    return loss


def layer_timing(
    model: Any,
    inputs: Any,
    loss_fn: Callable[[Any], Any] | None = None,
    steps: int = 3,
    *,
    warmup: int = 1,
    leaf_only: bool = True,
    device: Any = None,
    event_factory: Callable[[], EventLike] | None = None,
) -> list[LayerTime]:
    """Time every leaf module of ``model`` over ``steps`` forward+backward steps.

    ``inputs``: a tensor (called as ``model(inputs)``) or a tuple/list of
    positional arguments. ``loss_fn(output) -> scalar``; default: the sum of
    all output tensors requiring grad. ``warmup`` untimed steps run first
    (allocator growth, autotuning). ``leaf_only=False`` also reports
    containers (their spans include their children). ``device`` picks the
    clock (default: the device of the first parameter); ``event_factory``
    replaces ``torch.cuda.Event`` (tests). Returns one :class:`LayerTime`
    per module, slowest total first.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if device is None:
        params = list(model.parameters())
        device = params[0].device if params else None
    clock, _ = make_clock(device, event_factory)
    last: list[Any] = [None]

    def mark() -> Any:
        last[0] = clock.mark()
        return last[0]

    selected = [
        (name or "(model)", mod)
        for name, mod in model.named_modules()
        if not leaf_only or next(iter(mod.children()), None) is None
    ]
    spans = {id(mod): _Spans() for _, mod in selected}
    handles: list[Any] = []

    def fwd_pre(mod: Any, args: Any) -> None:
        spans[id(mod)].fwd_open.append(mark())

    def fwd_post(mod: Any, args: Any, out: Any) -> None:
        s = spans[id(mod)]
        if s.fwd_open:
            s.fwd.append((s.fwd_open.pop(), mark()))
            s.calls += 1

    def bwd_pre(mod: Any, grad_output: Any) -> None:
        spans[id(mod)].bwd_open.append(mark())

    def bwd_post(mod: Any, grad_input: Any, grad_output: Any) -> None:
        s = spans[id(mod)]
        if s.bwd_open:
            s.bwd.append([s.bwd_open.pop(), mark()])

    def accumulated(owner: _Spans) -> Callable[[Any], None]:
        def hook(param: Any) -> None:
            if owner.bwd and not owner.bwd_open:
                owner.bwd[-1][1] = mark()  # weight grad landed after the backward hook

        return hook

    try:
        for _, mod in selected:
            handles.append(mod.register_forward_pre_hook(fwd_pre))
            handles.append(mod.register_forward_hook(fwd_post))
            handles.append(mod.register_full_backward_pre_hook(bwd_pre))
            handles.append(mod.register_full_backward_hook(bwd_post))
            for p in mod.parameters(recurse=False):
                if p.requires_grad and hasattr(p, "register_post_accumulate_grad_hook"):
                    handles.append(p.register_post_accumulate_grad_hook(accumulated(spans[id(mod)])))

        def run_step() -> None:
            out = model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
            loss = loss_fn(out) if loss_fn is not None else _default_loss(out)
            loss.backward()
            model.zero_grad(set_to_none=True)

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            for i in range(warmup + steps):
                run_step()
                clock.sync(last[0])
                for s in spans.values():
                    if i >= warmup:
                        s.fwd_total += sum(clock.elapsed(a, b) for a, b in s.fwd)
                        s.bwd_total += sum(clock.elapsed(a, b) for a, b in s.bwd)
                    else:
                        s.calls = 0
                    s.fwd.clear()
                    s.bwd.clear()
                    s.fwd_open.clear()
                    s.bwd_open.clear()
    finally:
        for handle in handles:
            handle.remove()

    result = [
        LayerTime(
            name=name,
            type=type(mod).__name__,
            forward_s=spans[id(mod)].fwd_total / steps,
            backward_s=spans[id(mod)].bwd_total / steps,
            calls=spans[id(mod)].calls / steps,
        )
        for name, mod in selected
    ]
    result.sort(key=lambda lt: lt.total_s, reverse=True)
    return result
