"""Memory accounting of a model + optimizer, and device/process peaks.

What: :func:`memory_stats` sums parameter, gradient and optimizer-state bytes
from the tensors themselves, reads the CUDA caching allocator's peaks on a
CUDA device, and the process peak RSS everywhere.

Why: the static part (params + grads + optimizer state, e.g. 2x params for
Adam/AdamW moments) is what a memory plan predicts; comparing it with the
allocator peak exposes activation memory, and ``1 - allocated/reserved``
exposes allocator fragmentation (memory held by the cache but unusable).
On the CPU the allocator figures do not exist: they are None with a reason,
never estimated.

torch is imported inside the function only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ["MemoryStats", "memory_stats", "tensor_bytes", "peak_rss_bytes"]


@dataclass(frozen=True)
class MemoryStats:
    """Byte counts. Device fields are None off CUDA; ``device_reason`` says why.

    ``fragmentation`` = ``1 - memory_allocated / memory_reserved`` at the time
    of the call (current, not peak, values).
    """

    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    fragmentation: float | None
    device_reason: str | None
    peak_rss_bytes: int | None
    rss_reason: str | None = None

    @property
    def static_bytes(self) -> int:
        """params + grads + optimizer state."""
        return self.param_bytes + self.grad_bytes + self.optimizer_state_bytes


def tensor_bytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes of every tensor found in ``obj`` (tensor, dict, list/tuple), each
    counted once. Storage is not de-duplicated beyond tensor identity."""
    import torch

    seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def peak_rss_bytes() -> tuple[int | None, str | None]:
    """Process peak resident set size via ``resource.getrusage`` as ``(bytes, reason)``.

    Linux reports KiB, macOS bytes. Unavailable (Windows) -> ``(None, reason)``.
    """
    try:
        import resource
    except ImportError:
        return None, "resource module unavailable on this platform"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024), None


def _unique_params(params: Iterable[Any]) -> list[Any]:
    out, seen = [], set()
    for p in params:
        if id(p) not in seen:  # tied weights appear once
            seen.add(id(p))
            out.append(p)
    return out


def memory_stats(model: Any, optimizer: Any = None, device: Any = None, cuda: Any = None) -> MemoryStats:
    """Memory breakdown of ``model`` (+ ``optimizer``) on ``device``.

    ``device`` defaults to the device of the model's first parameter.
    ``optimizer_state_bytes`` sums every tensor in ``optimizer.state`` (for
    AdamW: ``exp_avg`` + ``exp_avg_sq`` = 2x params, plus a scalar ``step``
    per parameter). ``cuda`` replaces the ``torch.cuda`` module (tests pass a
    fake providing ``max_memory_allocated``, ``max_memory_reserved``,
    ``memory_allocated``, ``memory_reserved``).
    """
    import torch

    params = _unique_params(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state_bytes = 0
    if optimizer is not None:
        state_bytes = tensor_bytes(list(getattr(optimizer, "state", {}).values()))

    if device is None:
        device = params[0].device if params else torch.device("cpu")
    dev = torch.device(device) if not isinstance(device, torch.device) else device

    peak_alloc = peak_reserved = None
    frag: float | None = None
    reason: str | None = None
    if dev.type != "cuda":
        reason = f"device {dev} is not CUDA: allocator peaks and fragmentation are not available"
    else:
        cu = cuda if cuda is not None else torch.cuda
        if cuda is None and not torch.cuda.is_available():
            reason = "CUDA device requested but torch.cuda.is_available() is False"
        else:
            peak_alloc = int(cu.max_memory_allocated(dev))
            peak_reserved = int(cu.max_memory_reserved(dev))
            reserved_now = int(cu.memory_reserved(dev))
            if reserved_now > 0:
                frag = 1.0 - int(cu.memory_allocated(dev)) / reserved_now
            else:
                reason = "CUDA caching allocator holds no memory: fragmentation undefined"

    rss, rss_reason = peak_rss_bytes()
    return MemoryStats(
        param_bytes=param_bytes,
        grad_bytes=grad_bytes,
        optimizer_state_bytes=state_bytes,
        peak_allocated_bytes=peak_alloc,
        peak_reserved_bytes=peak_reserved,
        fragmentation=frag,
        device_reason=reason,
        peak_rss_bytes=rss,
        rss_reason=rss_reason,
    )
