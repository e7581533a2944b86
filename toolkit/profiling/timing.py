"""Step timing, warm-up detection and robust step statistics.

What: :class:`StepTimer` measures per-step wall time - CUDA events on a CUDA
device, ``time.perf_counter()`` on the CPU; :func:`detect_warmup` finds where
step times become steady; :func:`summarize` reports median/p90/mean of the
steady part.

Why: the first steps of a run include compilation, cuDNN autotuning,
allocator growth and data-loader spin-up; averaging them in understates
throughput (and MFU). On a GPU, host timestamps only measure kernel *launch*,
so the timer records events in the stream and reads them back with a single
synchronize every ``sync_every`` steps - per-step synchronisation would itself
serialise the pipeline and distort the timing. CPU execution is synchronous,
so the CPU path needs no synchronisation at all.

Pure Python except :class:`StepTimer`, which imports torch lazily (only to
create CUDA events).
"""

from __future__ import annotations

import math
import statistics
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ._clock import EventLike, make_clock

__all__ = ["StepTimer", "StepStats", "detect_warmup", "summarize"]


class StepTimer:
    """Times training steps; use ``with timer.step(): ...`` or ``start()``/``stop()``.

    ``device``: ``"cuda"``, ``"cuda:1"``, a ``torch.device``, ``"cpu"`` or None
    (CPU). On CUDA each step records a start/end event pair; every
    ``sync_every`` steps (and on :meth:`times`) the host waits once on the
    newest event and converts all pending pairs to seconds. If CUDA is
    requested but unavailable the timer falls back to ``perf_counter`` and
    says so in :attr:`note`. ``event_factory`` replaces ``torch.cuda.Event``
    (used by tests; anything with ``record``/``synchronize``/``elapsed_time``).
    """

    def __init__(
        self,
        device: Any = None,
        sync_every: int = 10,
        event_factory: Callable[[], EventLike] | None = None,
    ) -> None:
        if sync_every < 1:
            raise ValueError("sync_every must be >= 1")
        self.sync_every = sync_every
        self._clock, self.note = make_clock(device, event_factory)
        self._pending: list[tuple[Any, Any]] = []
        self._times: list[float] = []
        self._open: Any = None
        #: number of host synchronisations performed (CUDA path)
        self.syncs = 0

    @property
    def kind(self) -> str:
        """``"cuda_event"`` or ``"perf_counter"``."""
        return self._clock.kind

    def start(self) -> None:
        """Mark the beginning of a step."""
        if self._open is not None:
            raise RuntimeError("StepTimer.start() called twice without stop()")
        self._open = self._clock.mark()

    def stop(self) -> None:
        """Mark the end of the step opened by :meth:`start`."""
        if self._open is None:
            raise RuntimeError("StepTimer.stop() without start()")
        self._pending.append((self._open, self._clock.mark()))
        self._open = None
        if len(self._pending) >= self.sync_every:
            self._flush()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Context manager timing one step."""
        self.start()
        try:
            yield
        finally:
            self.stop()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._clock.kind != "perf_counter":
            self._clock.sync(self._pending[-1][1])
            self.syncs += 1
        self._times.extend(self._clock.elapsed(a, b) for a, b in self._pending)
        self._pending.clear()

    def times(self) -> list[float]:
        """All completed step durations in seconds (flushes pending events)."""
        self._flush()
        return list(self._times)

    def __len__(self) -> int:
        return len(self._times) + len(self._pending)


@dataclass(frozen=True)
class StepStats:
    """Steady-state step statistics in seconds (None when no steady steps)."""

    median: float | None
    p90: float | None
    mean: float | None
    steady_steps: int
    warmup_steps: int


def _cv(values: Sequence[float]) -> float:
    mean = statistics.fmean(values)
    std = statistics.pstdev(values)
    if std == 0.0:
        return 0.0
    if mean <= 0.0:
        return math.inf
    return std / mean


def detect_warmup(times: Sequence[float], window: int = 5, cv: float = 0.05) -> int:
    """Index of the first steady step.

    Returns the smallest ``i`` such that every ``window``-long run of steps
    starting at or after ``i`` has a coefficient of variation (population
    std / mean) below ``cv``: from ``i`` on, the rolling CV *stays* below the
    threshold. Returns ``len(times)`` if the series never becomes steady (or
    is shorter than ``window``).
    """
    if window < 2:
        raise ValueError("window must be >= 2")
    n = len(times)
    if n < window:
        return n
    start = n
    # walk backwards while windows stay steady; the first unsteady one stops us
    for i in range(n - window, -1, -1):
        if _cv(times[i : i + window]) < cv:
            start = i
        else:
            break
    return start


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method)."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def summarize(times: Sequence[float], warmup: int) -> StepStats:
    """Median, p90 and mean of ``times[warmup:]``.

    ``warmup`` is clamped to ``[0, len(times)]``; with no steady steps left
    the statistics are None rather than computed from warm-up noise.
    """
    warmup = max(0, min(int(warmup), len(times)))
    steady = sorted(float(t) for t in times[warmup:])
    if not steady:
        return StepStats(None, None, None, 0, warmup)
    return StepStats(
        median=float(statistics.median(steady)),
        p90=_percentile(steady, 0.9),
        mean=float(statistics.fmean(steady)),
        steady_steps=len(steady),
        warmup_steps=warmup,
    )
