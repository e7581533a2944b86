"""A run's metric series (bounded memory) and one detector per anomaly kind.

``RunSeries`` ingests :class:`~pytest_spml.watch.model.Record` rows
incrementally and keeps, per metric, only the last ``cap`` points plus running
aggregates (the first ``head`` finite values, a Welford mean and variance, an
EMA, min and max, counts of non-finite values and a decimated whole-run
summary of at most ``summary_cap`` buckets). Memory does not grow with the
length of the run, so a watchdog can keep one series alive for weeks. A large
chunk (a long list of Records, or a reader's ``Columns``) is ingested column
by column with C-speed builtins: a first check of a multi-GB log costs little
more than parsing it.

Every detector has the signature ``detect_<kind>(series, baseline, thresholds,
now) -> list[Anomaly]`` and puts the numbers it compared in ``evidence``.
Detectors judge trends (medians and means over windows), not single noisy
points: a lone point can at most produce a *mild* anomaly.

Standard library only: this module runs inside long-lived watch loops.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from dataclasses import dataclass, fields
from functools import reduce
from itertools import compress, islice, repeat
from operator import add, attrgetter, le, lt, mul, not_, sub, truediv
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from .model import KINDS, Anomaly, Baseline, Record

__all__ = [
    "DETECTORS", "ROLES", "Columns", "RunSeries", "Track", "WatchThresholds", "detect_all", "detect_divergence",
    "detect_eval_degradation", "detect_grad_explosion", "detect_grad_vanishing", "detect_loss_spike",
    "detect_lr_schedule", "detect_nan_inf", "detect_plateau", "detect_stale", "detect_throughput_drop",
]

# ----------------------------------------------------------------------------------------------------------------
# thresholds


@dataclass(frozen=True)
class WatchThresholds:
    """SPML's watchdog settings (``spml handoff`` writes the first seven) and the finer knobs of each detector."""

    # SPML defaults (names as in experiment-context.md "Watchdog settings"; mfu_drop is accepted for throughput_drop)
    loss_spike_factor: float = 3.0  # a loss point above 3x the recent average is a spike
    plateau_fraction: float = 0.05  # no meaningful improvement for 5% of the expected total steps
    grad_norm_high_factor: float = 10.0  # grad norm above 10x the baseline: explosion
    grad_norm_low_factor: float = 0.01  # grad norm below 0.01x the baseline: vanishing
    throughput_drop: float = 0.20  # throughput / MFU 20% below baseline (step time above baseline / 0.8)
    stale_step_time_factor: float = 10.0  # no new record for 10x the typical step (log) interval
    startup_grace_minutes: float = 15.0  # start-up grace before a silent run counts as stale ...
    startup_grace_steps: int = 3  # ... ended early by this many logged steps
    # how much data before trends are judged
    min_points: int = 10  # loss points before decide() judges the run (fewer: WAIT)
    baseline_points: int = 20  # the run's own early baseline: its first N finite values
    # loss_spike
    spike_window: int = 20  # "recent average": the mean of the previous N non-spike points
    spike_patience: int = 10  # points after a spike before it counts as unrecovered
    spike_min_delta_fraction: float = 0.05  # a spike must also rise by 5% of the early loss level (absolute)
    # divergence
    divergence_window: int = 60  # points over which a sustained rise is judged
    divergence_rise: float = 0.20  # last third's median 20% above the first third's
    divergence_above_start: float = 0.10  # recent median 10% above the early level
    # plateau
    plateau_min_improvement: float = 0.005  # "meaningful": 0.5% of the loss level over the plateau window
    plateau_start_tolerance: float = 0.02  # "stuck at its initial value / chance": within 2%
    plateau_min_points: int = 200  # without expected_total_steps: points before "stuck at the start" is judged
    chance_loss: float | None = None  # e.g. ln(num_classes); None: the run's initial loss stands in
    # gradients
    grad_window: int = 10  # recent window (median) for explosion / vanishing
    # evaluation
    eval_patience: int = 3  # consecutive worse evaluations
    eval_min_change: float = 0.01  # relative worsening that counts
    # learning rate
    lr_schedule: str | None = None  # configured schedule: None (unknown), "constant", or a decaying one
    lr_warmup_max_fraction: float = 0.35  # lr still rising after 35% of the run: no warm-up (OneCycle: 30%)
    lr_decay_check_fraction: float = 0.2  # a decaying schedule must have started to decay by then
    # throughput
    throughput_window: int = 20  # recent window (median)
    # stale
    stale_min_seconds: float = 60.0  # floor under the stale threshold (log flushes, checkpoint saves)
    # decide()
    near_end_fraction: float = 0.10  # last 10% of the run: check every 10 minutes
    check_intervals_minutes: tuple[int, ...] = (10, 20, 30, 60)  # adaptive interval while healthy

    def __post_init__(self) -> None:
        positive = ("loss_spike_factor", "plateau_fraction", "grad_norm_high_factor", "grad_norm_low_factor",
                    "throughput_drop", "stale_step_time_factor", "divergence_rise", "plateau_min_improvement")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"WatchThresholds.{name} must be a positive number, got {value!r}")
        if not 0 < self.throughput_drop < 1:
            raise ValueError(f"WatchThresholds.throughput_drop must be in (0, 1), got {self.throughput_drop!r}")
        if self.loss_spike_factor <= 1 or self.grad_norm_high_factor <= 1 or self.grad_norm_low_factor >= 1:
            raise ValueError("WatchThresholds: loss_spike_factor and grad_norm_high_factor must be > 1, "
                             "grad_norm_low_factor < 1")
        for name in ("min_points", "baseline_points", "spike_window", "spike_patience", "divergence_window",
                     "grad_window", "eval_patience", "throughput_window", "plateau_min_points"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WatchThresholds.{name} must be a positive integer, got {value!r}")
        if not self.check_intervals_minutes or any(int(m) < 1 for m in self.check_intervals_minutes):
            raise ValueError("WatchThresholds.check_intervals_minutes must be positive minutes")

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any], *, strict: bool = False) -> WatchThresholds:
        """Thresholds from a settings mapping (experiment-context.md); nulls are ignored, and so are unknown keys
        unless ``strict`` (then a misspelt setting is a ValueError that lists the valid names)."""
        known = {f.name: f for f in fields(cls)}
        if strict:
            unknown = [str(k) for k in settings if k != "mfu_drop" and k not in known]
            if unknown:
                raise ValueError(f"unknown watchdog setting{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(repr(k) for k in unknown)}; valid: {', '.join(known)} (and mfu_drop)")
        kwargs: dict[str, Any] = {}
        for key, value in settings.items():
            name = "throughput_drop" if key == "mfu_drop" else key
            if name not in known or value is None:
                continue
            default = getattr(cls, name)
            if isinstance(default, bool) or name == "lr_schedule":
                kwargs[name] = value
            elif isinstance(default, int) and not isinstance(value, bool):
                kwargs[name] = int(value)
            elif isinstance(default, tuple):
                kwargs[name] = tuple(int(v) for v in value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                kwargs[name] = float(value)
            else:
                raise ValueError(f"watchdog setting {key}: expected a number, got {value!r}")
        return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# metric names

# (role, name, unit scale, higher_is_better); the first name of a role that has data wins
_NAMES: tuple[tuple[str, str, float, bool], ...] = (
    *(("loss", n, 1.0, False) for n in ("loss", "train/loss", "train_loss", "training_loss", "train/loss_step")),
    *(("eval", n, 1.0, False) for n in ("val_loss", "eval/loss", "eval_loss", "val/loss", "valid_loss",
                                         "validation_loss", "valid/loss", "val_ppl", "val/ppl", "eval/perplexity",
                                         "eval_perplexity")),
    *(("eval", n, 1.0, True) for n in ("val_acc", "val_accuracy", "val/acc", "val/accuracy", "eval_acc",
                                        "eval_accuracy", "eval/acc", "eval/accuracy", "accuracy", "acc")),
    *(("grad", n, 1.0, False) for n in ("grad_norm", "train/grad_norm", "gradient_norm", "train/gradient_norm",
                                         "grad_norm_total")),
    *(("lr", n, 1.0, False) for n in ("lr", "learning_rate", "train/lr", "train/learning_rate")),
    ("step_time", "step_time_s", 1.0, False), ("step_time", "dt", 1.0, False),
    ("step_time", "train/step_time_s", 1.0, False),
    ("step_time", "time_ms", 1e-3, False), ("step_time", "step_time_ms", 1e-3, False),
    ("step_time", "dt_ms", 1e-3, False),
    *(("throughput", n, 1.0, True) for n in ("tokens_per_s", "samples_per_s", "train/tokens_per_s",
                                             "train/samples_per_s", "tokens_per_sec", "samples_per_sec")),
    *(("mfu", n, 1.0, True) for n in ("mfu", "train/mfu")),
    *(("loss_scale", n, 1.0, False) for n in ("loss_scale", "scale", "grad_scale", "amp/loss_scale",
                                               "train/loss_scale")),
)
ROLES: dict[str, tuple[str, ...]] = {}
for _role, _name, _scale, _higher in _NAMES:
    ROLES.setdefault(_role, ())
    ROLES[_role] += (_name,)
_BY_NAME = {name: (role, scale, higher) for role, name, scale, higher in _NAMES}

_EPOCH = 1e9  # times above this are Unix time; below, seconds since some start (another clock)


# ----------------------------------------------------------------------------------------------------------------
# the series


class Columns(NamedTuple):
    """A chunk of records column by column: what ``RunSeries.add`` ingests without touching a Record per row.

    A reader that already holds its rows as columns (``sources.JsonlChunk``)
    hands them over through a ``to_columns()`` method; a list of Records is
    turned into columns by ``RunSeries.add`` itself. Either way the series ends
    in the state that adding the Records one by one gives.
    """

    steps: list  # per row: int, or None (the row gets the last step + 1)
    times: list  # per row: a finite float, or None
    # name -> (the rows that have a value, ascending, or None: every row; the values there, floats)
    values: dict[str, tuple[list[int] | None, list[float]]]
    ignored: int  # values already dropped as non-numbers (they count in RunSeries.ignored_values)
    names: Callable[[int], Iterable[str]]  # the value names of row i in the row's order (which track comes first)
    line: Callable[[int], str]  # where row i came from ("path:line")


# Below this many records, RunSeries.add takes them one by one (columns do not pay for themselves).
_COLUMNS_MIN = 64
_PART = 2048  # Track.extend's aggregates take this many points at a time (they fit in the CPU cache)
_ABSENT = object()
_STEP, _TIME, _VALUES = attrgetter("step"), attrgetter("time"), attrgetter("values")
# sum() adds floats one by one up to Python 3.11, bit for bit what `total += value` in a loop gives; from 3.12
# it compensates rounding errors, so the loop's result needs reduce there
_seq_sum = sum if sys.version_info < (3, 12) else (lambda values, start: reduce(add, values, start))
_EMA_TAIL = 4096  # points an EMA is summed over at a time
_EMA_WEIGHTS: dict[float, tuple[list[float], float]] = {}


def _ema_weights(alpha: float) -> tuple[list[float], float]:
    """([alpha q^4095, ..., alpha q, alpha], q = 1 - alpha): an EMA's weights over 4096 points, newest last."""
    found = _EMA_WEIGHTS.get(alpha)
    if found is None:
        q = 1.0 - alpha
        found = _EMA_WEIGHTS[alpha] = ([alpha * q ** k for k in range(_EMA_TAIL - 1, -1, -1)], q)
    return found


def _sorted(values: list) -> bool:
    """Non-decreasing (C-speed: one comparison per neighbouring pair)."""
    return all(map(le, values, islice(values, 1, None)))


def _record_columns(records: list) -> Columns | None:
    """A list of Records as Columns (None: some row is unusual, take the records one by one)."""
    try:
        steps = list(map(_STEP, records))
        times = list(map(_TIME, records))
        rows = list(map(_VALUES, records))
    except AttributeError:
        return None
    if not set(map(type, steps)) <= {int, type(None)} or set(map(type, rows)) != {dict}:
        return None
    if set(map(type, times)) != {float} or not all(map(math.isfinite, times)):
        times = [t if isinstance(t, (int, float)) and math.isfinite(t) else None for t in times]
    n = len(records)
    values: dict[str, tuple[list[int] | None, list[float]]] = {}
    ignored = 0
    get = dict.get
    for name in set().union(*rows):
        column = list(map(get, rows, repeat(name), repeat(_ABSENT)))
        if name not in _BY_NAME:  # every value under a name no role knows is ignored, whatever it is
            ignored += n - column.count(_ABSENT)
            continue
        if set(map(type, column)) == {float}:
            values[name] = (None, column)
            continue
        where, points = [], []
        for i, v in enumerate(column):  # what RunSeries takes one record at a time: numbers but not booleans
            if v is _ABSENT:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                ignored += 1
            else:
                where.append(i)
                points.append(float(v))
        if points:
            values[name] = (where, points)
    return Columns(steps, times, values, ignored, lambda i: records[i].values, lambda i: records[i].line)


class _Summary:
    """A whole-run summary in at most ``cap`` buckets: adjacent buckets merge pairwise when it fills up."""

    __slots__ = ("cap", "width", "buckets")

    def __init__(self, cap: int) -> None:
        self.cap = max(2, cap)
        self.width = 1
        # [first step, last step, n, sum, sum of squares, min, max]
        self.buckets: list[list[float]] = []

    def add(self, step: int, value: float) -> None:
        last = self.buckets[-1] if self.buckets else None
        if last is None or last[2] >= self.width:
            self.buckets.append([step, step, 1, value, value * value, value, value])
            if len(self.buckets) > self.cap:
                self._halve()
            return
        last[1] = step
        last[2] += 1
        last[3] += value
        last[4] += value * value
        last[5] = min(last[5], value)
        last[6] = max(last[6], value)

    def extend(self, steps: list[int], values: list[float]) -> list[tuple[int, int, float, float]]:
        """``add`` for each (step, value) in turn, a bucket's worth of values at a time (the same sums, bit for bit).

        Returns the pieces it took, (start, end, min, max) of ``values[start:end]``, in order: the caller's
        minimum and maximum without another pass over the values.
        """
        pieces = []
        i, n = 0, len(values)
        while i < n:
            last = self.buckets[-1] if self.buckets else None
            if last is None or last[2] >= self.width:
                value = values[i]
                self.add(steps[i], value)  # opens a bucket (and may halve)
                pieces.append((i, i + 1, value, value))
                i += 1
                continue
            take = min(n - i, int(self.width - last[2]))
            part = values[i:i + take]
            low, high = min(part), max(part)
            last[1] = steps[i + take - 1]
            last[2] += take
            last[3] = _seq_sum(part, last[3])
            last[4] = _seq_sum(map(mul, part, part), last[4])
            last[5] = min(last[5], low)
            last[6] = max(last[6], high)
            pieces.append((i, i + take, low, high))
            i += take
        return pieces

    def _halve(self) -> None:
        merged = []
        for i in range(0, len(self.buckets) - 1, 2):
            a, b = self.buckets[i], self.buckets[i + 1]
            merged.append([a[0], b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], min(a[5], b[5]), max(a[6], b[6])])
        if len(self.buckets) % 2:
            merged.append(self.buckets[-1])
        self.buckets = merged
        self.width *= 2

    def truncate(self, step: int) -> None:
        while self.buckets and self.buckets[-1][0] >= step:
            self.buckets.pop()

    def window(self, lo: float, hi: float) -> tuple[int, float, float]:
        """(n, mean, variance) of the values whose bucket's middle step lies in (lo, hi]."""
        n, total, squares = 0, 0.0, 0.0
        for b in self.buckets:
            middle = (b[0] + b[1]) / 2
            if lo < middle <= hi:
                n += int(b[2])
                total += b[3]
                squares += b[4]
        if n == 0:
            return 0, math.nan, math.nan
        mean = total / n
        return n, mean, max(0.0, squares / n - mean * mean)

    def __len__(self) -> int:
        return len(self.buckets)


class Track:
    """One metric: the last ``cap`` points and running aggregates over every point ever added."""

    __slots__ = ("name", "role", "higher_is_better", "recent", "count", "finite", "nonfinite", "first_nonfinite",
                 "last_nonfinite", "head", "head_size", "mean", "_m2", "ema", "ema_alpha", "min", "min_step", "max",
                 "max_step", "min_since_max", "last", "last_step", "summary", "rewinds")

    def __init__(self, name: str, role: str, higher_is_better: bool, cap: int, head: int, summary_cap: int,
                 ema_alpha: float) -> None:
        self.name, self.role, self.higher_is_better = name, role, higher_is_better
        self.recent: deque[tuple[int, float, str]] = deque(maxlen=cap)  # (step, value, line)
        self.count = 0  # every point, NaN/Inf included
        self.finite = 0
        self.nonfinite = 0
        self.first_nonfinite: tuple[int, float, str] | None = None
        self.last_nonfinite: tuple[int, float, str] | None = None
        self.head: list[tuple[int, float]] = []  # first finite points
        self.head_size = head
        self.mean = 0.0  # Welford, finite values
        self._m2 = 0.0
        self.ema: float | None = None
        self.ema_alpha = ema_alpha
        self.min = math.inf
        self.min_step: int | None = None
        self.max = -math.inf
        self.max_step: int | None = None
        self.min_since_max = math.inf  # lowest value after the maximum (an lr that decayed after its peak)
        self.last: float | None = None
        self.last_step: int | None = None
        self.summary = _Summary(summary_cap)
        self.rewinds = 0

    def add(self, step: int, value: float, line: str) -> None:
        if self.last_step is not None and step < self.last_step:  # restart from a checkpoint: steps rewound
            self.rewinds += 1
            while self.recent and self.recent[-1][0] >= step:
                self.recent.pop()
            self.summary.truncate(step)
        self.recent.append((step, value, line))
        self.count += 1
        self.last, self.last_step = value, step
        if not math.isfinite(value):
            self.nonfinite += 1
            self.last_nonfinite = (step, value, line)
            if self.first_nonfinite is None:
                self.first_nonfinite = (step, value, line)
            return
        self.finite += 1
        if len(self.head) < self.head_size:
            self.head.append((step, value))
        delta = value - self.mean
        self.mean += delta / self.finite
        self._m2 += delta * (value - self.mean)
        self.ema = value if self.ema is None else self.ema + self.ema_alpha * (value - self.ema)
        if value < self.min:
            self.min, self.min_step = value, step
        if value > self.max:
            self.max, self.max_step = value, step
            self.min_since_max = math.inf
        else:
            self.min_since_max = min(self.min_since_max, value)
        self.summary.add(step, value)

    def extend(self, steps: list[int], values: list[float], line: Callable[[int], str],
               tail: list[str] | None = None) -> None:
        """``add`` for every point in turn when the steps do not go back (not below ``last_step`` either).

        The same state as ``add`` point by point, with C-speed builtins over
        the points (``min``/``max``, slices into the recent window and the
        summary): bit for bit, except the running mean, variance and EMA, which
        are combined per chunk (equal up to rounding, see ``_aggregate``).
        ``line(j)`` is where point j came from; it is asked only for the points
        that are kept. ``tail``: the lines of the last points when the caller
        has them already (as many as the recent window keeps, or every point).
        """
        n = len(values)
        if n == 0:
            return
        keep = max(0, n - self.recent.maxlen) if self.recent.maxlen is not None else 0
        lines = tail[len(tail) - (n - keep):] if tail is not None and len(tail) >= n - keep \
            else map(line, range(keep, n))
        self.recent.extend(zip(steps[keep:], values[keep:], lines))
        self.count += n
        self.last, self.last_step = values[-1], steps[-1]
        finite, ema = self.finite, self.ema
        for start in range(0, n, _PART):  # a part at a time: its values stay in the CPU cache over the passes
            if start == 0 and n <= _PART:
                self._extend_part(steps, values, line, 0)
            else:
                self._extend_part(steps[start:start + _PART], values[start:start + _PART], line, start)
        if self.finite > finite:
            self.ema = self._ema(ema, values, self.finite - finite)

    def _extend_part(self, steps: list[int], values: list[float], line: Callable[[int], str], offset: int) -> None:
        """``extend`` over some consecutive points, but the EMA (``line(offset + j)``: point j's line)."""
        if not all(map(math.isfinite, values)):
            ok = list(map(math.isfinite, values))
            bad = list(compress(range(len(values)), map(not_, ok)))
            self.nonfinite += len(bad)
            j = bad[0]
            if self.first_nonfinite is None:
                self.first_nonfinite = (steps[j], values[j], line(offset + j))
            j = bad[-1]
            self.last_nonfinite = (steps[j], values[j], line(offset + j))
            steps, values = list(compress(steps, ok)), list(compress(values, ok))
            if not values:
                return
        if len(self.head) < self.head_size:
            self.head.extend(zip(steps[:self.head_size - len(self.head)], values))
        pieces = self.summary.extend(steps, values)
        # add() keeps the first point below the minimum, the first above the maximum, and the lowest point after
        # the maximum; the pieces' own minima and maxima find them
        lows = [p[2] for p in pieces]
        low = min(lows)
        highs = [p[3] for p in pieces]
        high = max(highs)
        self._aggregate(values, low == high)
        if low < self.min:
            start, end = pieces[lows.index(low)][:2]
            self.min, self.min_step = low, steps[values.index(low, start, end)]
        if high > self.max:
            k = highs.index(high)
            start, end = pieces[k][:2]
            j = values.index(high, start, end)
            self.max, self.max_step = high, steps[j]
            self.min_since_max = min(min(values[j + 1:end], default=math.inf), min(lows[k + 1:], default=math.inf))
        else:
            self.min_since_max = min(self.min_since_max, low)

    def _aggregate(self, values: list[float], constant: bool) -> None:
        """Welford's mean and variance over finite ``values`` (all equal: ``constant``), as one chunk.

        Per chunk, not per point: the chunk's mean and sum of squared
        deviations combined with the running ones (Chan et al.): the same
        numbers as ``add`` point by point up to rounding (relative differences
        around 1e-15), exactly where the values are all equal (a variance of
        0, not of 1e-30); point by point for values so large that the sums
        would overflow.
        """
        m = len(values)
        if constant:
            chunk_mean, chunk_m2 = values[0], 0.0
        else:
            chunk_mean = sum(values) / m
            distance = math.dist(values, [chunk_mean] * m)  # the root of the sum of squared deviations, in C
            chunk_m2 = distance * distance
        if not (math.isfinite(chunk_mean) and math.isfinite(chunk_m2)):
            count, mean, m2 = self.finite, self.mean, self._m2
            for value in values:
                count += 1
                delta = value - mean
                mean += delta / count
                m2 += delta * (value - mean)
            self.finite, self.mean, self._m2 = count, mean, m2
            return
        n = self.finite
        total = n + m
        if n == 0:
            self.mean, self._m2 = chunk_mean, chunk_m2
        else:
            delta = chunk_mean - self.mean
            self.mean += delta * m / total
            self._m2 += chunk_m2 + delta * delta * (n * m / total)
        self.finite = total

    def _ema(self, ema: float | None, values: list[float], added: int) -> float:
        """The EMA after ``values`` (``added`` of them finite), from ``ema`` before them, in closed form.

        e_k = q^k e_0 + sum(alpha q^(k-i) v_i), q = 1 - alpha. Only the last
        ``_EMA_TAIL`` points are summed when the older ones cannot matter: their
        weight is at most q^_EMA_TAIL and they lie between the run's minimum
        and maximum; otherwise every point (in pieces of ``_EMA_TAIL``).
        """
        tail = values[-_EMA_TAIL:]
        if not all(map(math.isfinite, tail)):
            tail = list(compress(tail, map(math.isfinite, tail)))
        weights, q = _ema_weights(self.ema_alpha)
        if len(tail) < added:
            if tail:
                start = tail[0] if ema is None else ema  # stands in for the EMA before the tail: anything in range
                estimate = start * q ** len(tail) + sum(map(mul, weights[_EMA_TAIL - len(tail):], tail))
                if 2 * max(abs(self.min), abs(self.max)) * q ** len(tail) <= abs(estimate) * 2.0 ** -60:
                    return estimate
            tail = [v for v in values if math.isfinite(v)]
        if ema is None:
            ema, tail = tail[0], tail[1:]
        for start in range(0, len(tail), _EMA_TAIL):
            part = tail[start:start + _EMA_TAIL]
            ema = ema * q ** len(part) + sum(map(mul, weights[_EMA_TAIL - len(part):], part))
        return ema

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / (self.finite - 1)) if self.finite > 1 else 0.0

    def values(self, finite: bool = True) -> list[float]:
        return [v for _, v, _ in self.recent if not finite or math.isfinite(v)]

    def points(self, finite: bool = True) -> list[tuple[int, float, str]]:
        return [p for p in self.recent if not finite or math.isfinite(p[1])]

    def head_values(self) -> list[float]:
        return [v for _, v in self.head]

    @property
    def stored_points(self) -> int:
        return len(self.recent) + len(self.head) + len(self.summary)


class RunSeries:
    """A run's metrics, ingested incrementally, in bounded memory.

    ``add(records)`` expects records in logging order and only new ones (a
    tail, not the whole file again); a step lower than the metric's last step
    is read as a restart from a checkpoint and drops the rewound points of the
    recent window. A record without a step gets the last step + 1. Only
    metrics with a known name (``ROLES``) are kept; values in ``*_ms`` names
    are converted to seconds.
    """

    def __init__(self, *, cap: int = 2000, head: int = 20, summary_cap: int = 256, ema_alpha: float = 0.05,
                 started_at: float | None = None) -> None:
        if cap < 10 or head < 1 or summary_cap < 2 or not 0 < ema_alpha <= 1:
            raise ValueError("RunSeries: cap >= 10, head >= 1, summary_cap >= 2, 0 < ema_alpha <= 1")
        self.cap, self.head, self.summary_cap, self.ema_alpha = cap, head, summary_cap, ema_alpha
        self.started_at = started_at  # when the run was launched (Unix time), if known: stale before any record
        self.tracks: dict[str, Track] = {}
        self.records = 0
        self.ignored_values = 0  # values under names no role knows, or not numbers
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.steps_logged = 0  # distinct (advancing) steps seen
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.last_received: float | None = None  # when add() last got records, if the caller says (received_at)
        self.max_gap = 0.0  # longest time between consecutive records
        self.step_seconds: deque[float] = deque(maxlen=cap)  # seconds per step, from record times
        self.log_intervals: deque[float] = deque(maxlen=cap)  # seconds between records of advancing steps
        self.head_step_seconds: list[float] = []
        self._tick: tuple[float | None, int] | None = None  # (time, step) of the last advancing step

    # ingest ------------------------------------------------------------------------------------------------------
    def add(self, records: Iterable[Record], *, received_at: float | None = None) -> int:
        """Ingest records; returns how many were added.

        ``records`` is any iterable of Records, or a chunk with a
        ``to_columns()`` method (``sources.JsonlChunk``) that can hand its rows
        over as ``Columns``. A large chunk is ingested column by column (a first
        check of a long log is dominated by this): the same state as adding the
        records one at a time, bit for bit, but for each metric's running mean,
        variance and EMA, which are combined per chunk and agree up to rounding
        (relative differences around 1e-15; see ``Track.extend``).
        """
        to_columns = getattr(records, "to_columns", None)
        columns = to_columns() if callable(to_columns) else None
        if columns is None:
            records = records if isinstance(records, list) else list(records)
            if len(records) >= _COLUMNS_MIN:
                columns = _record_columns(records)
        added = self._add_columns(columns) if columns is not None else self._add_each(records)
        if added and received_at is not None:
            self.last_received = received_at
        return added

    def _add_each(self, records: Iterable[Record]) -> int:
        """The reference ingest: one record, one value at a time."""
        added = 0
        for record in records:
            added += 1
            self.records += 1
            step = record.step
            if step is None:
                step = self.last_step + 1 if self.last_step is not None else 0
            t = record.time if isinstance(record.time, (int, float)) and math.isfinite(record.time) else None
            self._clock(step, t)
            for name, value in record.values.items():
                known = _BY_NAME.get(name)
                if known is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                    self.ignored_values += 1
                    continue
                role, scale, higher = known
                track = self.tracks.get(name)
                if track is None:
                    track = self.tracks[name] = Track(name, role, higher, self.cap, self.head, self.summary_cap,
                                                      self.ema_alpha)
                track.add(step, float(value) * scale, record.line)
        return added

    def _add_columns(self, columns: Columns) -> int:
        """``_add_each`` for a chunk given as columns (see ``add``: the same state, up to rounding in three
        running aggregates); rows that go back in steps or time take the reference path, row by row."""
        steps, times, values = columns.steps, columns.times, columns.values
        n = len(steps)
        if n == 0:
            return 0
        self.records += n
        if None in steps:  # no step: the last step + 1 (the last step is always the previous row's)
            last, numbered = self.last_step, []
            for step in steps:
                last = step if step is not None else (last + 1 if last is not None else 0)
                numbered.append(last)
            steps = numbered
        in_order = (self.last_step is None or steps[0] >= self.last_step) and _sorted(steps)
        if in_order and set(map(type, times)) == {float} and _sorted(times) \
                and (self.last_time is None or times[0] >= self.last_time):
            self._clock_columns(steps, times)
        else:  # rewinds, records without a time, a clock that went back: row by row
            for step, t in zip(steps, times):
                self._clock(step, t)
        self.ignored_values += columns.ignored
        known = {}
        for name, (_, points) in values.items():
            info = _BY_NAME.get(name)
            if info is None:
                self.ignored_values += len(points)
            elif points:
                known[name] = info
        first = {name: (where[0] if where is not None else 0) for name, (where, _) in values.items()
                 if name in known and name not in self.tracks}
        if first:  # create the tracks in the order _add_each meets them: by first row, then the row's own order
            for row in sorted(set(first.values())):
                for name in columns.names(row):
                    if first.get(name) == row and name not in self.tracks:
                        self._new_track(name)
            for name in first:
                if name not in self.tracks:
                    self._new_track(name)
        line = columns.line
        everywhere: list[str] | None = None  # the lines of the last rows, for metrics on every row
        shared: dict[int, tuple[list, list[str], Callable[[int], str]]] = {}  # by rows list: metrics logged together
        for name, (_, scale, _) in known.items():
            where, points = values[name]
            if where is None:
                if everywhere is None:
                    everywhere = list(map(line, range(max(0, n - self.cap), n)))
                track_steps, tail, line_of = steps, everywhere, line
            else:
                found = shared.get(id(where))
                if found is None:
                    found = shared[id(where)] = (list(map(steps.__getitem__, where)),
                                                 list(map(line, where[-self.cap:])),
                                                 lambda j, where=where: line(where[j]))
                track_steps, tail, line_of = found
            if scale != 1.0:
                points = list(map(mul, points, repeat(scale)))
            track = self.tracks[name]
            if in_order and (track.last_step is None or track_steps[0] >= track.last_step):
                track.extend(track_steps, points, line_of, tail)
            else:
                for j, (step, value) in enumerate(zip(track_steps, points)):
                    track.add(step, value, line_of(j))
        return n

    def _new_track(self, name: str) -> None:
        role, _, higher = _BY_NAME[name]
        self.tracks[name] = Track(name, role, higher, self.cap, self.head, self.summary_cap, self.ema_alpha)

    def _clock_columns(self, steps: list[int], times: list[float]) -> None:
        """``_clock`` for each row when steps and times do not go back and every row has a time."""
        if self.first_step is None:
            self.first_step = steps[0]
        # a row "advances" when its step is above the previous row's (the first: above the last step)
        first_advances = self.last_step is None or steps[0] > self.last_step
        if all(map(lt, steps, islice(steps, 1, None))):
            advancing = None if first_advances else [False] + [True] * (len(steps) - 1)
        else:
            advancing = [first_advances, *map(lt, steps, islice(steps, 1, None))]
        self.steps_logged += len(steps) if advancing is None else advancing.count(True)
        self.last_step = steps[-1]
        if self.first_time is None:
            self.first_time = times[0]
        gap = max(map(sub, islice(times, 1, None), times), default=0.0)
        if self.last_time is not None and times[0] > self.last_time:
            gap = max(gap, times[0] - self.last_time)
        self.max_gap = max(self.max_gap, gap)
        latest = max(times)
        self.last_time = latest if self.last_time is None else max(self.last_time, latest)
        if advancing is not None:
            steps, times = list(compress(steps, advancing)), list(compress(times, advancing))
            if not steps:
                return
        tick = self._tick
        if tick is not None and tick[0] is not None:
            steps, times = [tick[1], *steps], [tick[0], *times]
        self._tick = (times[-1], steps[-1])
        pairs = len(steps) - 1  # pair j: rows j and j + 1 of the advancing rows
        if pairs <= 0:
            return
        cap = self.step_seconds.maxlen or pairs
        start = max(0, pairs - cap)
        per_step, intervals = _per_step(steps[start:], times[start:])
        if start and len(per_step) < cap:  # some pairs in the tail did not count: take them all
            per_step, intervals = _per_step(steps, times)
        self.step_seconds.extend(per_step[-cap:])
        self.log_intervals.extend(intervals[-cap:])
        need = self.head - len(self.head_step_seconds)
        if need > 0:
            early = _per_step(steps[:need + 1], times[:need + 1])[0]
            if len(early) < need and pairs > need:
                early = _per_step(steps, times)[0]
            self.head_step_seconds.extend(early[:need])

    def _clock(self, step: int, t: float | None) -> None:
        if self.first_step is None:
            self.first_step = step
        advanced = self.last_step is None or step > self.last_step
        if self.last_step is None or step != self.last_step:
            if advanced:
                self.steps_logged += 1
            self.last_step = step  # a rewind (restart) moves it back
        if t is None:
            return
        if self.first_time is None:
            self.first_time = t
        if self.last_time is not None and t > self.last_time:
            self.max_gap = max(self.max_gap, t - self.last_time)
        if advanced and self._tick is not None and self._tick[0] is not None and t > self._tick[0] \
                and step > self._tick[1]:
            per_step = (t - self._tick[0]) / (step - self._tick[1])
            self.step_seconds.append(per_step)
            self.log_intervals.append(t - self._tick[0])
            if len(self.head_step_seconds) < self.head:
                self.head_step_seconds.append(per_step)
        if advanced:
            self._tick = (t, step)
        self.last_time = t if self.last_time is None else max(self.last_time, t)

    # lookup ------------------------------------------------------------------------------------------------------
    def resolve(self, role: str) -> str | None:
        """The metric name that plays ``role`` in this run (the first known name with data), or None."""
        for name in ROLES.get(role, ()):
            if name in self.tracks and self.tracks[name].count:
                return name
        return None

    def track(self, role: str) -> Track | None:
        name = self.resolve(role)
        return self.tracks[name] if name else None

    def role_tracks(self, role: str) -> list[Track]:
        """Every track of a role (throughput may come as tokens/s and samples/s)."""
        return [self.tracks[n] for n in ROLES.get(role, ()) if n in self.tracks and self.tracks[n].count]

    @property
    def loss_points(self) -> int:
        loss = self.track("loss")
        return loss.count if loss else 0

    @property
    def stored_points(self) -> int:
        """Every stored point (recent windows, heads, summary buckets, interval windows): bounded."""
        return (sum(t.stored_points for t in self.tracks.values()) + len(self.step_seconds)
                + len(self.log_intervals) + len(self.head_step_seconds))

    def step_time_values(self) -> tuple[list[float], list[float], str]:
        """(recent seconds per step, early seconds per step, where from): the step-time metric, else record times."""
        track = self.track("step_time")
        if track is not None and track.finite:
            return track.values(), track.head_values(), track.name
        return list(self.step_seconds), list(self.head_step_seconds), "record times"

    def typical_step_seconds(self) -> float | None:
        recent, _, _ = self.step_time_values()
        recent = [v for v in recent if v > 0]
        return _median(recent[-200:]) if recent else None

    def typical_log_interval(self) -> float | None:
        values = list(self.log_intervals)[-200:]
        return _median(values) if values else None


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _per_step(steps: list[int], times: list[float]) -> tuple[list[float], list[float]]:
    """Seconds per step and seconds between consecutive (step, time) rows, for the pairs whose time and step
    both advance (what ``RunSeries._clock`` records)."""
    dt = list(map(sub, islice(times, 1, None), times))
    ds = list(map(sub, islice(steps, 1, None), steps))
    if min(dt, default=1.0) <= 0 or min(ds, default=1) <= 0:
        ok = [a > 0 and b > 0 for a, b in zip(dt, ds)]
        dt, ds = list(compress(dt, ok)), list(compress(ds, ok))
    return list(map(truediv, dt, ds)), dt


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    middle = n // 2
    return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _r(value: float | None) -> float | None:
    """A number for evidence: 6 significant digits; NaN and Inf kept."""
    if value is None or not isinstance(value, (int, float)):
        return value
    if not math.isfinite(value) or value == 0:
        return float(value)
    return float(f"{value:.6g}")


def _x(ratio: float) -> str:
    """A ratio for a message: 9.1x, 122x, 1.7e+35x."""
    if not math.isfinite(ratio):
        return f"{ratio}x"
    return f"{ratio:.1f}x" if abs(ratio) < 100 else f"{ratio:.3g}x"


def _known(value: float | int | None) -> float | None:
    """A baseline number: None, 0 (a template placeholder) and non-finite values mean unknown."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _expected(baseline: Baseline | None) -> int | None:
    total = baseline.expected_total_steps if baseline else None
    return int(total) if isinstance(total, (int, float)) and not isinstance(total, bool) and total > 0 else None


def _args(baseline: Baseline | None, thresholds: WatchThresholds | None) -> tuple[Baseline, WatchThresholds]:
    return baseline or Baseline(), thresholds or WatchThresholds()


def _early_level(track: Track, baseline: Baseline) -> tuple[float | None, str]:
    """The loss's early level: the mean of the run's first finite points, else the baseline's loss_start."""
    head = track.head_values()
    if len(head) >= 3:
        return _mean(head), f"mean of the first {len(head)} points"
    start = baseline.loss_start
    if isinstance(start, (int, float)) and not isinstance(start, bool) and math.isfinite(start) and start != 0:
        return float(start), "baseline loss_start"
    return None, "unknown"


def _scale_dropped(scale: Track | None, step: int) -> bool:
    """Whether an AMP loss scale dropped at ``step`` (logged after or before the scaler's update)."""
    if scale is None:
        return False
    points = [(s, v) for s, v, _ in scale.recent if math.isfinite(v)]
    for i, (s, v) in enumerate(points):
        if s < step:
            continue
        if s == step:
            if i == 0 and scale.count == len(scale.recent):
                # the first scale the run logged: the drop happened before it (GradScaler's start-up overflows)
                return True
            before = points[i - 1][1] if i > 0 else None
            after = points[i + 1][1] if i + 1 < len(points) else None
            return (before is not None and v < before) or (after is not None and after < v)
        # the first logged scale after the step: lower than the last one before it
        before = points[i - 1][1] if i > 0 else None
        return before is not None and v < before
    return False


# ----------------------------------------------------------------------------------------------------------------
# detectors


def detect_nan_inf(series: RunSeries, baseline: Baseline | None = None, thresholds: WatchThresholds | None = None,
                   now: float | None = None) -> list[Anomaly]:
    """NaN/Inf in the loss or an eval metric (severe); non-finite grad norms that no AMP loss-scale drop explains.

    An AMP run whose grad norm is sometimes Inf while its loss scale drops and
    its loss stays finite is the GradScaler working (it skips that step): normal.
    """
    baseline, thresholds = _args(baseline, thresholds)
    out: list[Anomaly] = []
    for role in ("loss", "eval"):
        track = series.track(role)
        if track is None or not track.nonfinite:
            continue
        step, value, line = track.first_nonfinite or (None, math.nan, "")
        last_finite = next((v for _, v, _ in reversed(track.recent) if math.isfinite(v)), None)
        out.append(Anomaly(
            "nan_inf", step, f"{track.name} is {value} at step {step} ({track.nonfinite} non-finite of "
                             f"{track.count} points)", "severe",
            evidence={"metric": track.name, "first_step": step, "first_value": str(value), "line": line,
                      "last_step": track.last_nonfinite[0] if track.last_nonfinite else None,
                      "nonfinite_count": track.nonfinite, "points": track.count,
                      "last_value": str(track.last), "last_finite_value": _r(last_finite)}))
    grad = series.track("grad")
    if grad is not None and grad.nonfinite:
        scale = series.track("loss_scale")
        loss = series.track("loss")
        loss_bad = {s for s, v, _ in loss.recent if not math.isfinite(v)} if loss is not None else set()
        bad = [(s, v, line) for s, v, line in grad.recent if not math.isfinite(v) and s not in loss_bad]
        unexplained = [p for p in bad if not _scale_dropped(scale, p[0])]
        recent = [v for s, v, _ in grad.recent if s not in loss_bad][-thresholds.grad_window:]
        all_bad = len(recent) >= min(5, thresholds.grad_window) and not any(math.isfinite(v) for v in recent)
        lowest_scale = scale.min if scale is not None and scale.finite else None
        collapsed = lowest_scale is not None and lowest_scale < 1.0
        evidence = {"metric": grad.name, "nonfinite_in_window": len(bad), "nonfinite_total": grad.nonfinite,
                    "explained_by_loss_scale_drop": len(bad) - len(unexplained),
                    "loss_scale": scale.name if scale else None, "loss_scale_last": _r(scale.last) if scale else None,
                    "loss_scale_min": _r(lowest_scale), "recent_all_nonfinite": all_bad}
        if not bad:
            pass
        elif all_bad and (scale is None or collapsed):
            step = bad[-1][0] if bad else grad.last_step
            out.append(Anomaly("nan_inf", step, f"{grad.name} non-finite at each of the last {len(recent)} points"
                               + (f"; loss scale collapsed to {lowest_scale:g}" if collapsed else "")
                               + ": no optimizer step has been finite", "severe", evidence=evidence))
        elif unexplained:
            step, value, line = unexplained[-1]
            evidence["line"] = line
            out.append(Anomaly("nan_inf", step, f"{grad.name} is {value} at {len(unexplained)} step(s) without an AMP "
                                                "loss-scale drop to explain it", "mild", evidence=evidence))
    return out


def detect_loss_spike(series: RunSeries, baseline: Baseline | None = None, thresholds: WatchThresholds | None = None,
                      now: float | None = None) -> list[Anomaly]:
    """A loss point above ``loss_spike_factor`` x the mean of the previous ``spike_window`` points.

    Recovered (mild) when a later point returns to or below the pre-spike
    average; unrecovered (severe) when ``spike_patience`` later points have not;
    pending (mild) before that. Spikes smaller (in absolute terms) than
    ``spike_min_delta_fraction`` of the early loss level are noise.
    """
    baseline, thresholds = _args(baseline, thresholds)
    track = series.track("loss")
    if track is None:
        return []
    points = track.points()
    early, _ = _early_level(track, baseline)
    min_delta = abs(early) * thresholds.spike_min_delta_fraction if early is not None else 0.0
    factor = thresholds.loss_spike_factor
    reference: deque[float] = deque(maxlen=thresholds.spike_window)
    events: list[dict[str, Any]] = []
    i = 0
    while i < len(points):
        step, value, line = points[i]
        if len(reference) >= min(5, thresholds.spike_window):
            average = _mean(list(reference))
            if average > 0 and value > factor * average and value - average > min_delta:
                j = i
                peak = (step, value, line)
                while j + 1 < len(points) and points[j + 1][1] > factor * average:
                    j += 1
                    if points[j][1] > peak[1]:
                        peak = points[j]
                after = points[i + 1:]  # a lasting jump stays above the average: no recovery, however long
                recovery = next((p for p in after[:max(thresholds.spike_patience * 5, 50)] if p[1] <= average), None)
                events.append({"step": step, "peak": peak, "average": average, "end": points[j][0],
                               "points_after": len(after), "recovery": recovery, "spike_points": j - i + 1})
                i = j + 1
                continue
        reference.append(value)
        i += 1
    out = []
    for event in events[-5:]:
        _, value, line = event["peak"]
        step, average = event["step"], event["average"]
        evidence = {"metric": track.name, "value": _r(value), "peak_step": event["peak"][0],
                    "pre_spike_average": _r(average),
                    "ratio": _r(value / average), "factor": factor, "window": thresholds.spike_window,
                    "spike_points": event["spike_points"], "points_after": event["points_after"], "line": line,
                    "spikes_in_window": len(events)}
        if event["recovery"] is not None:
            evidence["recovered_at_step"] = event["recovery"][0]
            evidence["recovered_value"] = _r(event["recovery"][1])
            out.append(Anomaly("loss_spike", step, f"{track.name} {value:.4g} is {_x(value / average)} the recent "
                                                   f"average {average:.4g}; back below it at step "
                                                   f"{event['recovery'][0]}", "mild", recovered=True,
                               evidence=evidence))
        elif event["points_after"] >= thresholds.spike_patience:
            out.append(Anomaly("loss_spike", step, f"{track.name} {value:.4g} is {_x(value / average)} the recent "
                                                   f"average {average:.4g} and has not come back below it in "
                                                   f"{event['points_after']} points", "severe", evidence=evidence))
        else:
            evidence["pending"] = True
            out.append(Anomaly("loss_spike", step, f"{track.name} {value:.4g} is {_x(value / average)} the recent "
                                                   f"average {average:.4g}; recovery not yet known "
                                                   f"({event['points_after']} points since)", "mild",
                               evidence=evidence))
    return out


def detect_divergence(series: RunSeries, baseline: Baseline | None = None, thresholds: WatchThresholds | None = None,
                      now: float | None = None) -> list[Anomaly]:
    """A sustained rise of the loss over the last ``divergence_window`` points, or a loss above its early level.

    Medians of thirds, not single points: a spike is not a trend.
    """
    baseline, thresholds = _args(baseline, thresholds)
    track = series.track("loss")
    if track is None:
        return []
    points = track.points()
    window = points[-thresholds.divergence_window:]
    out: list[Anomaly] = []
    if len(window) >= max(15, thresholds.divergence_window // 2):
        third = len(window) // 3
        first = [v for _, v, _ in window[:third]]
        last = [v for _, v, _ in window[-third:]]
        m1, m3 = _median(first), _median(last)
        spread = _median([abs(v - m1) for v in first]) * 1.4826  # robust noise scale of the first third
        above = sum(v > m1 for v in last) / len(last)
        if m1 > 0 and m3 > m1 * (1 + thresholds.divergence_rise) and m3 - m1 > 3 * spread and above >= 0.8:
            out.append(Anomaly("divergence", window[-1][0],
                               f"{track.name} rose from a median {m1:.4g} to {m3:.4g} "
                               f"({_x(m3 / m1)}) over the last {len(window)} points "
                               f"(steps {window[0][0]}-{window[-1][0]})", "severe",
                               evidence={"metric": track.name, "window_points": len(window),
                                         "first_step": window[0][0], "last_step": window[-1][0],
                                         "median_first_third": _r(m1), "median_last_third": _r(m3),
                                         "rise": _r(m3 / m1 - 1), "threshold_rise": thresholds.divergence_rise,
                                         "noise_scale": _r(spread), "fraction_above": _r(above)}))
    early, source = _early_level(track, baseline)
    recent = points[-thresholds.spike_window:]
    enough = track.finite >= max(3 * thresholds.baseline_points, thresholds.min_points)
    if not out and early is not None and early > 0 and enough and len(recent) >= 5:
        values = [v for _, v, _ in recent]
        level = _median(values)
        above = sum(v > early for v in values) / len(values)
        # both levels are noisy estimates: the gap must also clear 4 standard errors of their difference
        head = track.head_values()
        head_se = _std(head) / math.sqrt(len(head)) if len(head) >= 3 else 0.0
        recent_se = 1.253 * 1.4826 * _median([abs(v - level) for v in values]) / math.sqrt(len(values))
        error = math.sqrt(head_se ** 2 + recent_se ** 2)
        if level > early * (1 + thresholds.divergence_above_start) and above >= 0.8 and level - early > 4 * error:
            out.append(Anomaly("divergence", recent[-1][0],
                               f"{track.name} median {level:.4g} over the last {len(recent)} points is above its "
                               f"early level {early:.4g} ({source})", "severe",
                               evidence={"metric": track.name, "recent_median": _r(level), "early_level": _r(early),
                                         "early_source": source, "ratio": _r(level / early),
                                         "threshold": 1 + thresholds.divergence_above_start,
                                         "standard_error": _r(error),
                                         "fraction_above": _r(above), "last_step": recent[-1][0]}))
    return out


def detect_plateau(series: RunSeries, baseline: Baseline | None = None, thresholds: WatchThresholds | None = None,
                   now: float | None = None) -> list[Anomaly]:
    """No meaningful improvement for more than ``plateau_fraction`` of the expected steps, or stuck at the start.

    Compares the mean loss over the last W steps (W = plateau_fraction x
    expected_total_steps) with the W steps before (the whole-run summary, so W
    may exceed the recent window): a plateau when even the improvement plus one
    standard error is below ``plateau_min_improvement`` of the loss (noise
    alone does not make one); "stuck" is the last window's mean within
    ``plateau_start_tolerance`` of the initial loss (or ``chance_loss``).
    Mild: a plateau is worth a look, not a stop.
    """
    baseline, thresholds = _args(baseline, thresholds)
    track = series.track("loss")
    if track is None or track.finite < thresholds.min_points or track.last_step is None:
        return []
    total = _expected(baseline)
    last = track.last_step
    first = track.head[0][0] if track.head else series.first_step or 0
    summary = track.summary
    reasons: list[str] = []
    evidence: dict[str, Any] = {"metric": track.name, "expected_total_steps": total}
    if total is not None:
        width = max(1.0, thresholds.plateau_fraction * total)
        judged = last - first >= 2 * width
    else:  # no expected length: only "stuck at the start", once enough points are in
        width = max(1.0, (last - first) / 4)
        judged = track.finite >= thresholds.plateau_min_points
    evidence["window_steps"] = _r(width)
    if total is not None and judged:
        n_prev, prev, var_prev = summary.window(last - 2 * width, last - width)
        n_cur, cur, var_cur = summary.window(last - width, last)
        if n_prev >= 3 and n_cur >= 3 and math.isfinite(prev) and math.isfinite(cur):
            gain = prev - cur
            needed = thresholds.plateau_min_improvement * abs(prev)
            error = math.sqrt(var_prev / n_prev + var_cur / n_cur)  # standard error of the difference of means
            evidence.update(mean_previous_window=_r(prev), mean_last_window=_r(cur), points=[n_prev, n_cur],
                            improvement=_r(gain), needed=_r(needed), standard_error=_r(error))
            if gain + error < needed:  # less than a meaningful improvement by a standard error: not just noise
                reasons.append(f"mean {cur:.4g} over the last {width:.0f} steps vs {prev:.4g} over the {width:.0f} "
                               f"before: improvement {gain:.3g} (+/- {error:.2g}) < {needed:.3g} "
                               f"({thresholds.plateau_min_improvement:.1%}, window = "
                               f"{thresholds.plateau_fraction:.0%} of {total} steps)")
    # stuck at the initial value / chance level
    level, source = _early_level(track, baseline)
    if thresholds.chance_loss is not None:
        level, source = float(thresholds.chance_loss), "chance_loss"
    if level is not None and level != 0 and judged:
        n_cur, cur, _ = summary.window(last - width, last)
        if n_cur >= 3 and abs(cur - level) <= thresholds.plateau_start_tolerance * abs(level):
            evidence.update(mean_last_window=_r(cur), start_level=_r(level), start_source=source,
                            tolerance=thresholds.plateau_start_tolerance, stuck_at_start=True)
            reasons.append(f"stuck at its start: mean {cur:.4g} over the last {width:.0f} steps is within "
                           f"{thresholds.plateau_start_tolerance:.0%} of {level:.4g} ({source})")
    if not reasons:
        return []
    return [Anomaly("plateau", last, f"{track.name} " + "; ".join(reasons), "mild", evidence=evidence)]


def _grad_reference(series: RunSeries, baseline: Baseline) -> tuple[Track | None, float | None, str]:
    track = series.track("grad")
    if track is None:
        return None, None, "no grad norm metric"
    known = _known(baseline.grad_norm)
    if known is not None:
        return track, known, f"baseline grad_norm ({baseline.source})"
    head = [v for v in track.head_values() if v > 0]
    if len(head) >= 5:
        return track, _median(head), f"median of the run's first {len(head)} finite grad norms"
    return track, None, "too few early grad norms"


def detect_grad_explosion(series: RunSeries, baseline: Baseline | None = None,
                          thresholds: WatchThresholds | None = None, now: float | None = None) -> list[Anomaly]:
    """Grad norm above ``grad_norm_high_factor`` x the baseline: severe when the recent median is, mild for lone points.

    Non-finite grad norms are left to ``detect_nan_inf`` (an AMP overflow is normal).
    """
    baseline, thresholds = _args(baseline, thresholds)
    track, reference, source = _grad_reference(series, baseline)
    if track is None or reference is None:
        return []
    limit = thresholds.grad_norm_high_factor * reference
    points = track.points()
    recent = points[-thresholds.grad_window:]
    if len(recent) < min(5, thresholds.grad_window):
        return []
    level = _median([v for _, v, _ in recent])
    evidence = {"metric": track.name, "reference": _r(reference), "reference_source": source,
                "factor": thresholds.grad_norm_high_factor, "limit": _r(limit), "recent_median": _r(level),
                "recent_points": len(recent)}
    if level > limit:
        return [Anomaly("grad_explosion", recent[-1][0],
                        f"{track.name} median {level:.4g} over the last {len(recent)} points is "
                        f"{_x(level / reference)} the reference {reference:.4g} ({source})", "severe",
                        evidence=evidence)]
    high = [p for p in points if p[1] > limit]
    if high and _known(baseline.grad_norm) is None:
        # the reference is the run's own early median: a point is judged only against the early points at or
        # before it (the very first steps of a run, larger than what follows as it settles, are no explosion)
        early = [(s, v) for s, v in track.head if v > 0]

        def judged(point: tuple[int, float, str]) -> bool:
            before = [v for s, v in early if s <= point[0]]
            return len(before) >= 5 and point[1] > thresholds.grad_norm_high_factor * _median(before)

        high = [p for p in high if judged(p)]
    if high:
        step, value, line = max(high, key=lambda p: p[1])
        evidence.update(peak=_r(value), peak_step=step, line=line, points_above=len(high),
                        window_points=len(points))
        return [Anomaly("grad_explosion", step,
                        f"{track.name} {value:.4g} at step {step} is {_x(value / reference)} the reference "
                        f"{reference:.4g} ({len(high)} point(s) of {len(points)}); the recent median {level:.4g} "
                        "is back in range", "mild", recovered=True, evidence=evidence)]
    return []


def detect_grad_vanishing(series: RunSeries, baseline: Baseline | None = None,
                          thresholds: WatchThresholds | None = None, now: float | None = None) -> list[Anomaly]:
    """Recent median grad norm below ``grad_norm_low_factor`` x the baseline (mild)."""
    baseline, thresholds = _args(baseline, thresholds)
    track, reference, source = _grad_reference(series, baseline)
    if track is None or reference is None:
        return []
    recent = track.points()[-thresholds.grad_window:]
    if len(recent) < min(5, thresholds.grad_window):
        return []
    level = _median([v for _, v, _ in recent])
    limit = thresholds.grad_norm_low_factor * reference
    if level < limit:
        return [Anomaly("grad_vanishing", recent[-1][0],
                        f"{track.name} median {level:.3g} over the last {len(recent)} points is below "
                        f"{thresholds.grad_norm_low_factor:g}x the reference {reference:.4g} ({source})", "mild",
                        evidence={"metric": track.name, "recent_median": _r(level), "reference": _r(reference),
                                  "reference_source": source, "factor": thresholds.grad_norm_low_factor,
                                  "limit": _r(limit), "recent_points": len(recent)})]
    return []


def detect_eval_degradation(series: RunSeries, baseline: Baseline | None = None,
                            thresholds: WatchThresholds | None = None, now: float | None = None) -> list[Anomaly]:
    """The eval metric getting worse while the train loss falls (mild).

    Three findings, each by at least ``eval_min_change`` (relative) and by four
    times the evaluation noise (estimated from second differences, so a
    trend does not count as noise): the last ``eval_patience`` evaluations
    each got worse (and the train loss did not rise); the mean of the last
    ``eval_patience`` is worse than the best such mean earlier in the run
    while the train loss falls (overfitting, early-stopping style); or that
    mean is worse than the first evaluation (the run's own baseline).
    """
    baseline, thresholds = _args(baseline, thresholds)
    track = series.track("eval")
    if track is None:
        return []
    points = track.points()
    patience = thresholds.eval_patience
    if len(points) < patience + 1:
        return []
    sign = -1.0 if track.higher_is_better else 1.0
    bad = [sign * v for _, v, _ in points]  # "badness": higher is worse, whatever the metric's direction
    d2 = [abs(bad[i - 1] - 2 * bad[i] + bad[i + 1]) for i in range(1, len(bad) - 1)]
    noise = _median(d2[-50:]) / 0.6745 / math.sqrt(6) if len(d2) >= 3 else 0.0  # robust std of one evaluation

    def margin(reference: float) -> float:
        return max(thresholds.eval_min_change * abs(reference), 4 * noise)

    tail = bad[-(patience + 1):]
    rolling = [_mean(bad[i:i + patience]) for i in range(len(bad) - patience + 1)]
    best_index = min(range(len(rolling)), key=lambda i: rolling[i])
    current = rolling[-1]
    windows_since_best = len(rolling) - 1 - best_index
    best_step = points[best_index + patience - 1][0]  # where the best window ended
    first = sign * track.head[0][1] if track.head else bad[0]

    loss = series.track("loss")
    train_falling = None
    train_evidence: dict[str, Any] = {}
    if loss is not None:
        since = best_step if windows_since_best >= patience else points[-(patience + 1)][0]
        before = [v for s, v, _ in loss.recent if math.isfinite(v) and s <= since][-thresholds.spike_window:]
        after = [v for _, v, _ in loss.recent if math.isfinite(v)][-thresholds.spike_window:]
        if before and after:
            train_falling = _median(after) < _median(before)
            train_evidence = {"train_loss_then": _r(_median(before)), "train_loss_now": _r(_median(after)),
                              "train_loss_falling": train_falling}
    reasons = []
    consecutive = all(tail[i + 1] > tail[i] for i in range(patience))
    if consecutive and tail[-1] - tail[0] >= margin(tail[0]) and train_falling is not False:
        reasons.append(f"worse at each of the last {patience} evaluations")
    if windows_since_best >= patience and current - rolling[best_index] >= margin(rolling[best_index]) \
            and train_falling:
        reasons.append(f"the mean of the last {patience} evaluations is worse than the best mean "
                       f"{sign * rolling[best_index]:.4g} (up to step {best_step}) while the train loss falls")
    if current - first >= margin(first):
        reasons.append(f"the mean of the last {patience} evaluations is worse than the first evaluation "
                       f"{sign * first:.4g}")
    if not reasons:
        return []
    direction = "higher is better" if track.higher_is_better else "lower is better"
    last_evals = points[-(patience + 1):]
    return [Anomaly("eval_degradation", points[-1][0], f"{track.name} ({direction}) {points[-1][1]:.4g}: "
                    + "; ".join(reasons), "mild",
                    evidence={"metric": track.name, "higher_is_better": track.higher_is_better,
                              "last_evals": [[s, _r(v)] for s, v, _ in last_evals],
                              "mean_last": _r(sign * current), "best_mean": _r(sign * rolling[best_index]),
                              "best_step": best_step, "evaluations": len(points), "first_eval": _r(sign * first),
                              "noise": _r(noise), "min_change": thresholds.eval_min_change, "patience": patience,
                              **train_evidence})]


_NOT_DECAYING = ("constant", "cyclic", "triangular", "restart", "sgdr")


def detect_lr_schedule(series: RunSeries, baseline: Baseline | None = None, thresholds: WatchThresholds | None = None,
                       now: float | None = None) -> list[Anomaly]:
    """The learning rate not behaving as configured (mild, conservative).

    Always: still rising after ``lr_warmup_max_fraction`` of the expected steps
    (no warm-up is that long), and rising by half again after it had decayed
    from its peak (a scheduler re-created on resume; skipped for cyclic or
    restart schedules). With ``lr_schedule="constant"``: the lr changed; with a
    decaying schedule configured: still at its peak after
    ``lr_decay_check_fraction`` of the expected steps.
    """
    baseline, thresholds = _args(baseline, thresholds)
    track = series.track("lr")
    if track is None or track.finite < thresholds.min_points or track.last_step is None:
        return []
    configured = (thresholds.lr_schedule or "").lower() or None
    total = _expected(baseline)
    last, current = track.last_step, track.last
    if current is None or not math.isfinite(current):
        return []
    peak, peak_step = track.max, track.max_step
    evidence = {"metric": track.name, "lr": _r(current), "step": last, "peak": _r(peak), "peak_step": peak_step,
                "min": _r(track.min), "configured": configured, "expected_total_steps": total}
    out = []
    if configured == "constant":
        if track.max > track.min * 1.01:
            out.append(Anomaly("lr_schedule", last, f"{track.name} was configured constant but ranged "
                                                    f"{track.min:.4g}-{track.max:.4g}", "mild", evidence=evidence))
        return out
    points = track.points()
    window = points[-max(5, thresholds.spike_window):]
    rising = len(window) >= 5 and window[-1][1] > window[0][1] * 1.001 and peak_step == last
    if total is not None and rising and last >= thresholds.lr_warmup_max_fraction * total:
        out.append(Anomaly("lr_schedule", last, f"{track.name} is still rising at step {last} "
                                                f"({last / total:.0%} of {total} steps; from {window[0][1]:.4g} to "
                                                f"{current:.4g} over the last {len(window)} points): longer than "
                                                f"any warm-up ({thresholds.lr_warmup_max_fraction:.0%})", "mild",
                           evidence={**evidence, "warmup_max_fraction": thresholds.lr_warmup_max_fraction}))
    bottom = track.min_since_max
    cyclic = configured is not None and any(word in configured for word in _NOT_DECAYING)
    if not cyclic and math.isfinite(bottom) and bottom <= 0.9 * peak and bottom > 0 and current > 1.5 * bottom:
        out.append(Anomaly("lr_schedule", last, f"{track.name} rose to {current:.4g} after decaying from its peak "
                                                f"{peak:.4g} (step {peak_step}) to {bottom:.4g}: increasing after "
                                                "warm-up (a scheduler restarted on resume?)", "mild",
                           evidence={**evidence, "lowest_after_peak": _r(bottom)}))
    if configured is not None and not cyclic and total is not None \
            and last >= thresholds.lr_decay_check_fraction * total and current >= 0.99 * peak \
            and track.finite >= thresholds.min_points:
        out.append(Anomaly("lr_schedule", last, f"{track.name} is still at its peak {peak:.4g} at step {last} "
                                                f"({last / total:.0%} of the run) but the schedule is "
                                                f"{configured!r}: constant when it should decay", "mild",
                           evidence={**evidence, "decay_check_fraction": thresholds.lr_decay_check_fraction}))
    return out


def detect_throughput_drop(series: RunSeries, baseline: Baseline | None = None,
                           thresholds: WatchThresholds | None = None, now: float | None = None) -> list[Anomaly]:
    """Step time, throughput or MFU more than ``throughput_drop`` worse than baseline over a recent window (mild).

    "20% worse" is measured as throughput: step time above baseline / 0.8
    (1.25x), tokens/s, samples/s or MFU below 0.8x. The baseline is the
    ``Baseline`` value, else the median of the run's first points.
    """
    baseline, thresholds = _args(baseline, thresholds)
    drop = thresholds.throughput_drop
    window = thresholds.throughput_window
    out: list[Anomaly] = []

    def reference_of(known: float | None, head: list[float], what: str) -> tuple[float | None, str]:
        if known is not None:
            return known, f"baseline {what} ({baseline.source})"
        head = [v for v in head if v > 0][2:]  # the first steps carry start-up cost
        if len(head) >= 5:
            return _median(head), f"median of the run's early {what}"
        return None, ""

    recent, head, origin = series.step_time_values()
    recent = [v for v in recent if v > 0][-window:]
    reference, source = reference_of(_known(baseline.step_time_s), head, "step time")
    if reference is not None and len(recent) >= min(5, window):
        level = _median(recent)
        limit = reference / (1 - drop)
        if level > limit:
            out.append(Anomaly("throughput_drop", series.last_step,
                               f"step time {level:.4g}s (median of the last {len(recent)}, from {origin}) is "
                               f"{level / reference:.2f}x the reference {reference:.4g}s ({source}); "
                               f"limit {limit:.4g}s", "mild",
                               evidence={"metric": origin, "recent_median_s": _r(level), "reference_s": _r(reference),
                                         "reference_source": source, "limit_s": _r(limit), "drop": drop,
                                         "ratio": _r(level / reference), "recent_points": len(recent)}))
    for track in series.role_tracks("throughput") + series.role_tracks("mfu"):
        if track.role == "mfu":
            known = _known(baseline.mfu)
        elif "token" in track.name:
            known = _known(baseline.tokens_per_s)
        else:
            known = _known(baseline.samples_per_s)
        reference, source = reference_of(known, track.head_values(), track.name)
        values = [v for v in track.values() if v > 0][-window:]
        if reference is None or len(values) < min(5, window):
            continue
        level = _median(values)
        limit = reference * (1 - drop)
        if level < limit:
            out.append(Anomaly("throughput_drop", track.last_step,
                               f"{track.name} {level:.4g} (median of the last {len(values)}) is "
                               f"{(1 - level / reference):.0%} below the reference {reference:.4g} ({source})",
                               "mild",
                               evidence={"metric": track.name, "recent_median": _r(level), "reference": _r(reference),
                                         "reference_source": source, "limit": _r(limit), "drop": drop,
                                         "ratio": _r(level / reference), "recent_points": len(values)}))
    return out


def _same_clock(a: float, b: float) -> bool:
    return (a > _EPOCH) == (b > _EPOCH)


def detect_stale(series: RunSeries, baseline: Baseline | None = None, thresholds: WatchThresholds | None = None,
                 now: float | None = None) -> list[Anomaly]:
    """No new record for more than ``stale_step_time_factor`` x the typical interval (severe).

    The typical interval is the larger of the median step time and the median
    time between logged steps (a run that logs every 50 steps is not stale
    after 10 step times). A pause the run already came back from (an
    evaluation, a checkpoint save) raises the threshold up to the start-up
    grace; ``stale_min_seconds`` is the floor. During start-up (fewer than
    ``startup_grace_steps`` logged steps) the run may be silent for
    ``startup_grace_minutes``. Needs ``now`` on the records' clock (Unix time,
    or the same relative clock).
    """
    baseline, thresholds = _args(baseline, thresholds)
    if now is None or not math.isfinite(now):
        return []
    grace = thresholds.startup_grace_minutes * 60
    last = series.last_time
    clock = "record times"
    if last is None or not _same_clock(last, now):
        last, clock = series.last_received, "time records were received"
    if last is None or not _same_clock(last, now):
        if series.records == 0 and series.started_at is not None and _same_clock(series.started_at, now) \
                and now - series.started_at > grace:
            silent = now - series.started_at
            return [Anomaly("stale", None, f"no record at all {silent / 60:.0f} minutes after the start "
                                           f"(grace {thresholds.startup_grace_minutes:g} minutes)", "severe",
                            evidence={"started_at": series.started_at, "now": now, "silent_s": _r(silent),
                                      "grace_s": grace})]
        return []
    started = series.started_at
    if started is not None and _same_clock(started, now) and started > last:
        # restarted (from a checkpoint) after the last record: the new process gets a start-up grace of its own
        silent = now - started
        if silent <= grace:
            return []
        return [Anomaly("stale", series.last_step, f"no record {silent / 60:.1f} minutes after the restart "
                                                   f"(grace {thresholds.startup_grace_minutes:g} minutes)", "severe",
                        evidence={"restarted_at": started, "now": now, "silent_s": _r(silent), "grace_s": grace})]
    silent = now - last
    evidence: dict[str, Any] = {"last_record_time": last, "now": now, "silent_s": _r(silent), "clock": clock,
                                "last_step": series.last_step, "steps_logged": series.steps_logged}
    if series.steps_logged < thresholds.startup_grace_steps:
        if silent > grace:
            return [Anomaly("stale", series.last_step,
                            f"no new record for {silent / 60:.1f} minutes during start-up "
                            f"({series.steps_logged} step(s) logged; grace {thresholds.startup_grace_minutes:g} "
                            "minutes)", "severe", evidence={**evidence, "grace_s": grace})]
        return []
    step_s = series.typical_step_seconds()
    interval = series.typical_log_interval()
    typical = max(v for v in (step_s or 0.0, interval or 0.0))
    if typical <= 0:
        if silent > grace:
            return [Anomaly("stale", series.last_step, f"no new record for {silent / 60:.1f} minutes (no step "
                                                       "time known; grace used)", "severe",
                            evidence={**evidence, "grace_s": grace})]
        return []
    recovered_pause = min(series.max_gap * 1.5, grace)
    threshold = max(thresholds.stale_step_time_factor * typical, recovered_pause, thresholds.stale_min_seconds)
    evidence.update(median_step_s=_r(step_s), median_log_interval_s=_r(interval), typical_s=_r(typical),
                    factor=thresholds.stale_step_time_factor, longest_previous_gap_s=_r(series.max_gap),
                    floor_s=thresholds.stale_min_seconds, threshold_s=_r(threshold))
    if silent > threshold:
        return [Anomaly("stale", series.last_step,
                        f"no new record for {silent:.0f}s, more than {threshold:.0f}s "
                        f"({thresholds.stale_step_time_factor:g}x the typical {typical:.3g}s interval"
                        f"{', or the longest pause seen' if threshold == recovered_pause else ''}); "
                        f"last step {series.last_step}", "severe", evidence=evidence)]
    return []


DETECTORS: dict[str, Callable[..., list[Anomaly]]] = {
    "nan_inf": detect_nan_inf, "loss_spike": detect_loss_spike, "divergence": detect_divergence,
    "plateau": detect_plateau, "grad_explosion": detect_grad_explosion, "grad_vanishing": detect_grad_vanishing,
    "eval_degradation": detect_eval_degradation, "lr_schedule": detect_lr_schedule,
    "throughput_drop": detect_throughput_drop, "stale": detect_stale,
}
assert tuple(DETECTORS) == KINDS


def detect_all(series: RunSeries, baseline: Baseline | None = None, thresholds: WatchThresholds | None = None,
               now: float | None = None) -> list[Anomaly]:
    """Every detector, in ``KINDS`` order."""
    out: list[Anomaly] = []
    for detect in DETECTORS.values():
        out.extend(detect(series, baseline, thresholds, now))
    return out
