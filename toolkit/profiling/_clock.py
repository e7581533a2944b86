"""Tiny clock abstraction shared by :mod:`timing` and :mod:`layers`.

Why: on a GPU the host returns from a kernel launch long before the kernel
finishes, so host timestamps measure launch overhead, not work. CUDA events are
recorded *in the stream* and read back after one synchronize. On the CPU every
op is synchronous, so ``time.perf_counter()`` is exact and needs no
synchronisation at all. Both hide behind ``mark()`` / ``sync()`` /
``elapsed()`` so callers never branch on the device.

The event factory is injectable so the CUDA bookkeeping can be unit-tested on a
CPU-only machine with fake events (no global monkeypatching).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol


class EventLike(Protocol):
    """The part of ``torch.cuda.Event`` the clocks use."""

    def record(self) -> None: ...

    def synchronize(self) -> None: ...

    def elapsed_time(self, end: Any) -> float:  # milliseconds, like torch
        ...


class Clock(Protocol):
    """A source of timestamps; ``elapsed`` is only valid after ``sync``."""

    kind: str

    def mark(self) -> Any: ...

    def sync(self, last: Any) -> None: ...

    def elapsed(self, start: Any, end: Any) -> float: ...


class PerfCounterClock:
    """Host monotonic clock; exact for synchronous (CPU) execution."""

    kind = "perf_counter"

    def mark(self) -> float:
        return time.perf_counter()

    def sync(self, last: Any) -> None:  # nothing is in flight on the CPU
        return None

    def elapsed(self, start: float, end: float) -> float:
        return max(0.0, end - start)


class EventClock:
    """CUDA-event clock: ``mark`` records an event in the current stream."""

    kind = "cuda_event"

    def __init__(self, factory: Callable[[], EventLike]) -> None:
        self._factory = factory

    def mark(self) -> EventLike:
        event = self._factory()
        event.record()
        return event

    def sync(self, last: EventLike | None) -> None:
        # one host wait on the newest event covers every earlier one in the stream
        if last is not None:
            last.synchronize()

    def elapsed(self, start: EventLike, end: EventLike) -> float:
        return max(0.0, start.elapsed_time(end) / 1000.0)


def device_type(device: Any) -> str:
    """``"cuda"`` / ``"cpu"`` / ... for a str, ``torch.device`` or None (→ cpu)."""
    if device is None:
        return "cpu"
    kind = getattr(device, "type", None)
    if isinstance(kind, str):
        return kind
    return str(device).split(":", 1)[0]


def make_clock(
    device: Any, event_factory: Callable[[], EventLike] | None = None
) -> tuple[Clock, str | None]:
    """Pick a clock for ``device``; returns ``(clock, note)``.

    ``note`` explains a degradation (CUDA requested but unavailable) and is None
    when the requested clock is used.
    """
    if device_type(device) != "cuda":
        return PerfCounterClock(), None
    if event_factory is not None:
        return EventClock(event_factory), None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is present wherever CUDA is
        return PerfCounterClock(), "torch not importable: host perf_counter timing used"
    if not torch.cuda.is_available():
        return PerfCounterClock(), "CUDA requested but torch.cuda.is_available() is False: host perf_counter timing used"
    return EventClock(lambda: torch.cuda.Event(enable_timing=True)), None
