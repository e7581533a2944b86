"""timing: warm-up detection, summaries, and both StepTimer paths (CUDA via fake events)."""

from __future__ import annotations

import random

import pytest

from pytest_spml.toolkit.profiling.timing import StepStats, StepTimer, detect_warmup, summarize


def test_slow_warmup_then_steady() -> None:
    times = [2.0, 1.2, 0.6, 0.3] + [0.1] * 20
    assert detect_warmup(times) == 4
    stats = summarize(times, detect_warmup(times))
    assert stats == StepStats(median=0.1, p90=pytest.approx(0.1), mean=pytest.approx(0.1), steady_steps=20, warmup_steps=4)


def test_steady_with_small_jitter_is_detected() -> None:
    rng = random.Random(0)
    times = [1.0, 0.5] + [0.1 * (1 + rng.uniform(-0.02, 0.02)) for _ in range(30)]
    assert detect_warmup(times) == 2


def test_never_steady_returns_len() -> None:
    times = [0.1 * (i + 1) ** 2 for i in range(15)]  # keeps growing
    assert detect_warmup(times) == len(times)
    stats = summarize(times, len(times))
    assert stats.median is None and stats.p90 is None and stats.mean is None
    assert stats.steady_steps == 0 and stats.warmup_steps == 15


def test_noisy_series_is_not_steady() -> None:
    rng = random.Random(1)
    times = [0.1 * (1 + rng.uniform(-0.5, 0.5)) for _ in range(40)]
    assert detect_warmup(times, window=5, cv=0.05) == len(times)


def test_late_spike_breaks_steadiness() -> None:
    times = [0.1] * 20 + [0.5]
    assert detect_warmup(times) == len(times)


def test_short_series_and_bad_window() -> None:
    assert detect_warmup([0.1, 0.1, 0.1]) == 3
    assert detect_warmup([]) == 0
    with pytest.raises(ValueError):
        detect_warmup([0.1] * 10, window=1)


def test_summarize_percentiles_match_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    times = [5.0, 4.0] + [0.1, 0.3, 0.2, 0.5, 0.4, 0.9, 0.6, 0.7, 0.8, 1.0]
    stats = summarize(times, 2)
    steady = np.array(times[2:])
    assert stats.median == pytest.approx(float(np.median(steady)))
    assert stats.p90 == pytest.approx(float(np.percentile(steady, 90)))
    assert stats.mean == pytest.approx(float(steady.mean()))
    assert (stats.steady_steps, stats.warmup_steps) == (10, 2)


def test_summarize_clamps_warmup() -> None:
    assert summarize([0.2, 0.4], -3).steady_steps == 2
    assert summarize([0.2, 0.4], 99).warmup_steps == 2


def test_cpu_timer_uses_perf_counter() -> None:
    timer = StepTimer("cpu", sync_every=3)
    assert timer.kind == "perf_counter" and timer.note is None
    for _ in range(5):
        with timer.step():
            sum(range(2000))
    times = timer.times()
    assert len(times) == 5 and all(t >= 0 for t in times)
    assert timer.syncs == 0


class FakeClock:
    """Simulated GPU stream time (ms)."""

    def __init__(self) -> None:
        self.now_ms = 0.0
        self.syncs = 0


class FakeEvent:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.t: float | None = None
        self.synced = False

    def record(self) -> None:
        self.t = self.clock.now_ms

    def synchronize(self) -> None:
        self.clock.syncs += 1
        self.synced = True

    def elapsed_time(self, end: "FakeEvent") -> float:
        assert end.synced or end.clock.syncs > 0, "elapsed_time read before any synchronize"
        assert self.t is not None and end.t is not None
        return end.t - self.t


def test_cuda_timer_records_events_and_syncs_every_k_steps() -> None:
    clock = FakeClock()
    timer = StepTimer("cuda:0", sync_every=4, event_factory=lambda: FakeEvent(clock))
    assert timer.kind == "cuda_event"
    durations = [30.0, 20.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    for ms in durations:
        with timer.step():
            clock.now_ms += ms
        clock.now_ms += 1.0  # host gap between steps is not counted
    assert clock.syncs == 2  # after steps 4 and 8, none per step
    times = timer.times()  # flushes the last 2 with one more sync
    assert clock.syncs == 3 and timer.syncs == 3
    assert times == pytest.approx([ms / 1000.0 for ms in durations])


def test_cuda_requested_without_cuda_degrades_with_note() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    timer = StepTimer("cuda")
    assert timer.kind == "perf_counter" and timer.note and "CUDA" in timer.note


def test_timer_misuse() -> None:
    timer = StepTimer()
    with pytest.raises(RuntimeError):
        timer.stop()
    timer.start()
    with pytest.raises(RuntimeError):
        timer.start()
    with pytest.raises(ValueError):
        StepTimer(sync_every=0)
    assert len(timer) == 0
