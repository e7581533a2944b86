"""The watchdog's series, detectors and decision: real fixture runs, then each detector on synthetic series.

The fixture logs in runs/ come from real, short CPU training runs (make_runs.py
regenerates them); the synthetic series test each detector both ways: it fires
on the failure, and stays quiet on noise of the same amplitude.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_spml.watch.decide import Verdict, decide, next_check_minutes
from pytest_spml.watch.detectors import (
    DETECTORS, ROLES, RunSeries, WatchThresholds, detect_all, detect_divergence, detect_eval_degradation,
    detect_grad_explosion, detect_grad_vanishing, detect_loss_spike, detect_lr_schedule, detect_nan_inf,
    detect_plateau, detect_stale, detect_throughput_drop,
)
from pytest_spml.watch.model import KINDS, Anomaly, Baseline, Record

RUNS = Path(__file__).resolve().parent / "runs"
T0 = 1_700_000_000.0
PLANNED = Baseline(expected_total_steps=2000, source="test: the fixture runs are the start of 2,000-step runs")


def load_jsonl(path: Path) -> list[Record]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        step, when = row.pop("step"), row.pop("time")
        records.append(Record(step, when, {k: float(v) for k, v in row.items()}, f"{path.name}:{number}"))
    return records


def check(records: list[Record], baseline: Baseline = PLANNED, now: float | None = None,
          thresholds: WatchThresholds | None = None) -> tuple[RunSeries, list[Anomaly], Verdict]:
    series = RunSeries()
    series.add(records)
    now = series.last_time + 1.0 if now is None and series.last_time is not None else now
    anomalies = detect_all(series, baseline, thresholds, now)
    return series, anomalies, decide(series, anomalies, baseline, now, thresholds=thresholds)


def build(n: int, *, interval: float = 1.0, start: int = 0, every: dict[str, int] | None = None,
          **columns: list[float | None]) -> list[Record]:
    """Records of steps start..start+n-1, one second apart; ``every``: a column logged only every k steps."""
    every = every or {}
    out = []
    for i in range(n):
        values = {}
        for name, column in columns.items():
            k = every.get(name, 1)
            if k > 1:
                if i % k == k - 1 and (i // k) < len(column) and column[i // k] is not None:
                    values[name] = float(column[i // k])
            elif column[i] is not None:
                values[name] = float(column[i])
        out.append(Record(start + i, T0 + i * interval, values, f"synthetic:{i + 1}"))
    return out


def series_of(n: int, **kwargs) -> RunSeries:
    series = RunSeries()
    series.add(build(n, **kwargs))
    return series


def noisy(level: float, n: int, amplitude: float, seed: int = 0) -> list[float]:
    """``level`` with uniform noise of +/- ``amplitude`` (relative)."""
    rng = random.Random(seed)
    return [level * (1 + rng.uniform(-amplitude, amplitude)) for _ in range(n)]


def descending(n: int, start: float = 2.3, end: float = 0.8, noise: float = 0.05, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [(start + (end - start) * i / (n - 1)) * (1 + rng.uniform(-noise, noise)) for i in range(n)]


def kinds(anomalies: list[Anomaly]) -> set[str]:
    return {a.kind for a in anomalies}


def severe(anomalies: list[Anomaly]) -> list[Anomaly]:
    return [a for a in anomalies if a.severity == "severe" and not a.recovered]


# ----------------------------------------------------------------------------------------------------------------
# the fixture runs

EXPECTED = {
    # run: (decision, status, anomaly kinds)
    "healthy_sgd": ("CONTINUE", "NORMAL", set()),
    "healthy_adamw": ("CONTINUE", "NORMAL", set()),
    "amp_overflow": ("CONTINUE", "NORMAL", set()),
    "lr_ramp_nan": ("STOP", "SEVERE_ANOMALY", {"nan_inf", "divergence", "grad_explosion", "loss_spike"}),
    "bad_batch_spike": ("CONTINUE", "MILD_ANOMALY", {"loss_spike", "grad_explosion"}),
    "chance_plateau": ("CONTINUE", "MILD_ANOMALY", {"plateau"}),
    "overfit_val_rise": ("CONTINUE", "MILD_ANOMALY", {"eval_degradation"}),
    "too_few_steps": ("WAIT", "NORMAL", set()),
}


def test_every_fixture_run_is_listed_and_small() -> None:
    files = sorted(p.stem for p in RUNS.glob("*.jsonl"))
    assert files == sorted(EXPECTED)
    assert sum(p.stat().st_size for p in RUNS.iterdir()) < 200_000
    manifest = json.loads((RUNS / "manifest.json").read_text())
    assert set(EXPECTED) <= set(manifest)
    assert manifest["amp_overflow"]["amp"] in {"real", "simulated"}


@pytest.mark.parametrize("run", sorted(EXPECTED))
def test_fixture_run_verdict(run: str) -> None:
    decision, status, expected_kinds = EXPECTED[run]
    series, anomalies, verdict = check(load_jsonl(RUNS / f"{run}.jsonl"))
    assert (verdict.decision, verdict.status) == (decision, status), (verdict, anomalies)
    assert kinds(anomalies) == expected_kinds, anomalies
    assert all(a.kind in KINDS and a.severity in {"mild", "severe"} for a in anomalies)
    if decision != "STOP":
        assert not severe(anomalies), anomalies


@pytest.mark.parametrize("run", ["healthy_sgd", "healthy_adamw", "amp_overflow", "bad_batch_spike", "chance_plateau",
                                 "overfit_val_rise"])
def test_no_severe_anomaly_at_any_check_of_a_run_that_should_continue(run: str) -> None:
    """A watch loop checking every 5 records: noise never triggers a severe anomaly, from the first step to the last."""
    records = load_jsonl(RUNS / f"{run}.jsonl")
    series = RunSeries()
    for i in range(0, len(records), 5):
        series.add(records[i:i + 5])
        anomalies = detect_all(series, PLANNED, None, series.last_time + 1)
        assert not severe(anomalies), (series.last_step, anomalies)
        assert decide(series, anomalies, PLANNED, series.last_time + 1).decision != "STOP"


def test_healthy_runs_are_normal_and_the_interval_grows() -> None:
    for run in ("healthy_sgd", "healthy_adamw", "amp_overflow"):
        series, anomalies, _ = check(load_jsonl(RUNS / f"{run}.jsonl"))
        minutes = [decide(series, anomalies, PLANNED, series.last_time + 1, healthy_checks=k).next_check_minutes
                   for k in range(6)]
        assert minutes == [10, 20, 30, 60, 60, 60]


def test_amp_run_overflows_for_real_and_is_normal() -> None:
    records = load_jsonl(RUNS / "amp_overflow.jsonl")
    overflow = [r for r in records if not math.isfinite(r.values["grad_norm"])]
    assert len(overflow) >= 3  # occasional Inf grad norms ...
    assert all(math.isfinite(r.values["loss"]) for r in records)  # ... with a finite loss throughout
    scales = {r.step: r.values["loss_scale"] for r in records}
    for record in overflow[1:]:  # each overflow halves the scale (after the scaler's update)
        assert scales[record.step] == scales[record.step - 1] / 2
    series, anomalies, verdict = check(records)
    assert detect_nan_inf(series, PLANNED) == []
    assert verdict.status == "NORMAL"


def test_lr_ramp_run_stops_on_nan_with_evidence() -> None:
    records = load_jsonl(RUNS / "lr_ramp_nan.jsonl")
    first_nan = next(r for r in records if not math.isfinite(r.values["loss"]))
    series, anomalies, verdict = check(records)
    nan = [a for a in anomalies if a.kind == "nan_inf"]
    assert len(nan) == 1 and nan[0].severity == "severe"  # the NaN grads are the loss's, not a second finding
    assert nan[0].step == first_nan.step and nan[0].evidence["line"] == first_nan.line
    assert verdict.decision == "STOP" and "nan_inf" in verdict.reason


def test_lr_ramp_run_is_stopped_by_divergence_before_the_nan() -> None:
    records = load_jsonl(RUNS / "lr_ramp_nan.jsonl")
    first_nan = next(r.step for r in records if not math.isfinite(r.values["loss"]))
    series = RunSeries()
    for i in range(0, len(records), 5):
        series.add(records[i:i + 5])
        anomalies = detect_all(series, PLANNED, None, series.last_time + 1)
        if decide(series, anomalies, PLANNED, series.last_time + 1).decision == "STOP":
            break
    assert series.last_step < first_nan - 20
    assert "divergence" in kinds(severe(anomalies))


def test_bad_batch_spike_is_mild_and_recovered() -> None:
    series, anomalies, _ = check(load_jsonl(RUNS / "bad_batch_spike.jsonl"))
    spike = next(a for a in anomalies if a.kind == "loss_spike")
    assert spike.step == 120 and spike.recovered and spike.severity == "mild"
    assert spike.evidence["ratio"] > 3 and spike.evidence["recovered_at_step"] > 120
    grad = next(a for a in anomalies if a.kind == "grad_explosion")
    assert grad.severity == "mild" and grad.evidence["peak_step"] == 120


def test_bad_batch_spike_is_pending_then_recovered() -> None:
    records = load_jsonl(RUNS / "bad_batch_spike.jsonl")
    series = RunSeries()
    series.add(records[:121])  # the spike is the last point: too early to say
    (spike,) = detect_loss_spike(series, PLANNED)
    assert spike.severity == "mild" and not spike.recovered and spike.evidence["pending"]
    series.add(records[121:])
    (spike,) = detect_loss_spike(series, PLANNED)
    assert spike.recovered


def test_chance_plateau_is_stuck_at_its_start() -> None:
    series, anomalies, _ = check(load_jsonl(RUNS / "chance_plateau.jsonl"))
    (plateau,) = anomalies
    assert plateau.evidence["stuck_at_start"]
    assert abs(plateau.evidence["mean_last_window"] - math.log(10)) < 0.02
    chance = WatchThresholds(chance_loss=math.log(10))
    assert detect_plateau(series, PLANNED, chance)[0].evidence["start_source"] == "chance_loss"


def test_overfit_run_val_loss_turns_while_train_loss_falls() -> None:
    series, anomalies, _ = check(load_jsonl(RUNS / "overfit_val_rise.jsonl"))
    (degraded,) = anomalies
    assert degraded.evidence["metric"] == "val_loss" and degraded.evidence["train_loss_falling"]
    assert degraded.evidence["best_step"] < 100 < degraded.step


def test_too_few_steps_waits() -> None:
    _, anomalies, verdict = check(load_jsonl(RUNS / "too_few_steps.jsonl"))
    assert anomalies == [] and verdict.decision == "WAIT" and "too little data" in verdict.reason


def test_fixture_runs_stop_as_stale_when_their_log_went_quiet() -> None:
    series, anomalies, verdict = check(load_jsonl(RUNS / "healthy_sgd.jsonl"), now=T0 + 3600)
    assert kinds(anomalies) == {"stale"} and (verdict.decision, verdict.status) == ("STOP", "STALE")


# ----------------------------------------------------------------------------------------------------------------
# the series


@pytest.mark.parametrize(("name", "role"), [
    ("loss", "loss"), ("train/loss", "loss"), ("train_loss", "loss"),
    ("val_loss", "eval"), ("eval/loss", "eval"), ("eval_loss", "eval"), ("val/loss", "eval"), ("val_acc", "eval"),
    ("grad_norm", "grad"), ("train/grad_norm", "grad"), ("gradient_norm", "grad"),
    ("lr", "lr"), ("learning_rate", "lr"),
    ("step_time_s", "step_time"), ("dt", "step_time"), ("time_ms", "step_time"),
    ("tokens_per_s", "throughput"), ("samples_per_s", "throughput"), ("mfu", "mfu"),
    ("loss_scale", "loss_scale"), ("scale", "loss_scale"),
])
def test_metric_names_resolve(name: str, role: str) -> None:
    series = series_of(3, **{name: [1.0, 2.0, 3.0]})
    assert series.resolve(role) == name and name in ROLES[role]


def test_milliseconds_become_seconds_and_the_first_name_wins() -> None:
    series = series_of(3, time_ms=[100.0, 120.0, 80.0], loss=[1.0, 1.0, 1.0], train_loss=[2.0, 2.0, 2.0])
    assert series.track("step_time").values() == [0.1, 0.12, 0.08]
    assert series.resolve("loss") == "loss"


def test_accuracy_is_higher_is_better() -> None:
    series = series_of(3, val_accuracy=[0.5, 0.6, 0.7])
    assert series.track("eval").higher_is_better
    assert not series_of(3, val_loss=[1.0, 0.9, 0.8]).track("eval").higher_is_better


def test_unknown_metrics_are_ignored() -> None:
    series = RunSeries()
    series.add([Record(0, T0, {"loss": 1.0, "my_custom": 3.0, "flag": True}, "x:1")])  # type: ignore[dict-item]
    assert set(series.tracks) == {"loss"} and series.ignored_values == 2


def test_memory_stays_bounded_over_200k_records() -> None:
    n = 200_000
    series = RunSeries()
    started = time.perf_counter()
    for chunk in range(0, n, 10_000):
        series.add(Record(i, T0 + i * 0.1, {"loss": 3.0 / (1 + i / 1000), "grad_norm": 1.0, "lr": 1e-3,
                                             "step_time_s": 0.1, **({"val_loss": 2.0} if i % 100 == 0 else {})},
                          f"big:{i}") for i in range(chunk, chunk + 10_000))
    took = time.perf_counter() - started
    loss = series.track("loss")
    assert series.records == n and loss.count == n and series.last_step == n - 1
    for track in series.tracks.values():
        assert len(track.recent) <= series.cap
        assert len(track.summary) <= series.summary_cap
        assert len(track.head) <= series.head
    assert len(series.step_seconds) <= series.cap and len(series.log_intervals) <= series.cap
    cap_per_track = series.cap + series.head + series.summary_cap
    assert series.stored_points <= len(series.tracks) * cap_per_track + 3 * series.cap
    assert series.stored_points < n  # far below the history
    # the aggregates still describe the whole run
    exact_mean = sum(3.0 / (1 + i / 1000) for i in range(n)) / n
    assert loss.mean == pytest.approx(exact_mean, rel=1e-9)
    assert loss.max == 3.0 and loss.min == pytest.approx(3.0 / (1 + (n - 1) / 1000))
    assert loss.summary.buckets[0][0] == 0 and loss.summary.buckets[-1][1] == n - 1
    assert sum(b[2] for b in loss.summary.buckets) == n
    assert took < 30  # about 2 s on a laptop; generous for slow CI
    assert detect_all(series, Baseline(expected_total_steps=10 * n), None, T0 + n * 0.1) is not None


def test_restart_from_a_checkpoint_rewinds_the_recent_window() -> None:
    series = RunSeries()
    series.add(build(100, loss=[1.0] * 100))
    series.add(build(10, start=50, loss=[0.9] * 10))
    loss = series.track("loss")
    assert loss.rewinds == 1 and series.last_step == 59
    assert [s for s, _, _ in loss.recent][-12:] == [48, 49, *range(50, 60)]


def test_records_without_steps_are_numbered() -> None:
    series = RunSeries()
    series.add([Record(None, None, {"loss": 1.0}), Record(None, None, {"loss": 0.9})])
    assert [s for s, _, _ in series.track("loss").recent] == [0, 1]


def test_aggregates() -> None:
    values = [4.0, 2.0, 6.0, 8.0]
    loss = series_of(4, loss=values).track("loss")
    assert loss.mean == 5.0 and loss.std == pytest.approx(2.5819889, rel=1e-6)
    assert (loss.min, loss.max, loss.head_values()) == (2.0, 8.0, values)
    assert loss.ema is not None and 4.0 < loss.ema < 8.0


# ----------------------------------------------------------------------------------------------------------------
# thresholds


def test_threshold_defaults_are_spmls() -> None:
    from pytest_spml.commands.handoff import WATCHDOG_DEFAULTS

    t = WatchThresholds()
    assert (t.loss_spike_factor, t.plateau_fraction, t.grad_norm_high_factor, t.grad_norm_low_factor,
            t.throughput_drop, t.stale_step_time_factor, t.startup_grace_minutes, t.startup_grace_steps) == (
        3.0, 0.05, 10.0, 0.01, 0.20, 10.0, 15.0, 3)
    assert WatchThresholds.from_mapping(WATCHDOG_DEFAULTS) == t


def test_thresholds_are_overridable_frozen_and_checked() -> None:
    t = WatchThresholds.from_mapping({"loss_spike_factor": 5, "mfu_drop": 0.3, "unknown": 1, "eval_patience": None})
    assert t.loss_spike_factor == 5.0 and t.throughput_drop == 0.3 and t.eval_patience == 3
    with pytest.raises(AttributeError):
        t.loss_spike_factor = 2.0  # type: ignore[misc]
    for bad in ({"loss_spike_factor": 0.5}, {"throughput_drop": 1.5}, {"grad_window": 0}, {"plateau_fraction": -1}):
        with pytest.raises(ValueError):
            WatchThresholds(**bad)
    with pytest.raises(ValueError):
        WatchThresholds.from_mapping({"loss_spike_factor": "high"})


def test_detectors_cover_every_kind_and_import_no_heavy_module() -> None:
    assert tuple(DETECTORS) == KINDS
    code = ("import sys, pytest_spml.watch.detectors, pytest_spml.watch.decide; "
            "print(sorted(m for m in ('torch', 'numpy', 'yaml', 'pytest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------------
# nan_inf


def test_nan_loss_is_severe() -> None:
    loss = descending(30)
    loss[20] = math.nan
    (a,) = detect_nan_inf(series_of(30, loss=loss))
    assert a.severity == "severe" and a.step == 20 and a.evidence["nonfinite_count"] == 1
    assert a.evidence["line"] == "synthetic:21"


def test_inf_eval_metric_is_severe() -> None:
    (a,) = detect_nan_inf(series_of(40, loss=descending(40), val_loss=[1.0, 0.9, math.inf, 0.8],
                                    every={"val_loss": 10}))
    assert a.severity == "severe" and a.evidence["metric"] == "val_loss"


def test_amp_overflow_with_a_dropping_scale_is_normal() -> None:
    grad, scale = [1.0] * 60, []
    current = 65536.0
    for i in range(60):
        if i in (10, 35, 36):
            grad[i] = math.inf
            current /= 2
        scale.append(current)
    assert detect_nan_inf(series_of(60, loss=descending(60), grad_norm=grad, loss_scale=scale)) == []
    # the same Inf grad norms without any loss scale: not explained
    (a,) = detect_nan_inf(series_of(60, loss=descending(60), grad_norm=grad))
    assert a.severity == "mild" and a.evidence["explained_by_loss_scale_drop"] == 0
    # with a loss scale that did not drop: not explained either
    (a,) = detect_nan_inf(series_of(60, loss=descending(60), grad_norm=grad, loss_scale=[65536.0] * 60))
    assert a.severity == "mild"


def test_every_recent_grad_non_finite_is_severe_unless_amp_still_has_scale() -> None:
    grad = [1.0] * 40 + [math.inf] * 12
    (a,) = detect_nan_inf(series_of(52, loss=descending(52), grad_norm=grad))
    assert a.severity == "severe" and a.evidence["recent_all_nonfinite"]
    scale = [2.0 ** 16] * 40 + [2.0 ** (15 - i) for i in range(12)]
    assert detect_nan_inf(series_of(52, loss=descending(52), grad_norm=grad, loss_scale=scale)) == []
    collapsed = [2.0 ** 16] * 40 + [2.0 ** (-1 - i) for i in range(12)]
    (a,) = detect_nan_inf(series_of(52, loss=descending(52), grad_norm=grad, loss_scale=collapsed))
    assert a.severity == "severe" and "collapsed" in a.detail


# ----------------------------------------------------------------------------------------------------------------
# loss_spike


def test_spike_that_recovers_is_mild() -> None:
    loss = descending(100)
    loss[60] = loss[59] * 5
    (a,) = detect_loss_spike(series_of(100, loss=loss))
    assert a.recovered and a.severity == "mild" and a.step == 60
    assert a.evidence["ratio"] > 3 and a.evidence["recovered_at_step"] == 61


def test_spike_that_does_not_recover_is_severe() -> None:
    loss = descending(80) + noisy(8.0, 20, 0.05)
    (a,) = detect_loss_spike(series_of(100, loss=loss))
    assert a.severity == "severe" and not a.recovered and a.step == 80 and a.evidence["points_after"] == 19


def test_spike_at_the_last_point_is_pending() -> None:
    loss = descending(50)
    loss[-1] = 10.0
    (a,) = detect_loss_spike(series_of(50, loss=loss))
    assert a.severity == "mild" and a.evidence["pending"]


def test_spike_detector_is_quiet_on_noise() -> None:
    rng = random.Random(3)
    heavy = [2.0 * math.exp(rng.gauss(0, 0.3)) for _ in range(500)]  # lognormal noise, occasional 2.5x points
    assert detect_loss_spike(series_of(500, loss=heavy)) == []
    assert detect_loss_spike(series_of(200, loss=noisy(2.0, 200, 0.5))) == []
    # near zero, a 5x blip is tiny next to the loss's start level: noise, not a spike
    tiny = [2.3] * 20 + [0.002 * (5 if i % 37 == 0 else 1) for i in range(180)]
    assert detect_loss_spike(series_of(200, loss=tiny)) == []


# ----------------------------------------------------------------------------------------------------------------
# divergence


def test_sustained_rise_is_divergence() -> None:
    loss = noisy(2.0, 100, 0.05) + [(2.0 + 1.5 * i / 59) * (1 + random.Random(i).uniform(-0.05, 0.05))
                                    for i in range(60)]
    (a,) = detect_divergence(series_of(160, loss=loss))
    assert a.severity == "severe" and a.evidence["rise"] > 0.2


def test_loss_above_its_early_level_is_divergence() -> None:
    down = descending(100, 2.0, 1.0, 0.02)
    back_up = [1.0 + 1.5 * i / 99 for i in range(100)]
    loss = down + back_up + noisy(2.5, 60, 0.02)
    (a,) = detect_divergence(series_of(260, loss=loss))
    assert a.evidence["ratio"] > 1.1 and "early level" in a.detail


def test_divergence_is_quiet_on_noise_of_the_same_amplitude() -> None:
    # noise whose swing (2.0 +/- 0.75) is as large as the rise above
    assert detect_divergence(series_of(160, loss=noisy(2.0, 160, 0.375))) == []
    # a single huge point at the end is a spike, not a trend
    loss = noisy(2.0, 160, 0.05)
    loss[-1] = 20.0
    assert detect_divergence(series_of(160, loss=loss)) == []
    # a decreasing run
    assert detect_divergence(series_of(300, loss=descending(300))) == []


# ----------------------------------------------------------------------------------------------------------------
# plateau


def test_flat_loss_is_a_plateau() -> None:
    (a,) = detect_plateau(series_of(400, loss=descending(200, 2.3, 1.0) + noisy(1.0, 200, 0.02, seed=1)),
                          Baseline(expected_total_steps=2000))
    assert a.severity == "mild" and a.evidence["window_steps"] == 100 and not a.evidence.get("stuck_at_start")


def test_improving_loss_is_no_plateau() -> None:
    series = series_of(400, loss=descending(400, 2.3, 1.0, 0.05))
    assert detect_plateau(series, Baseline(expected_total_steps=2000)) == []


def test_plateau_needs_a_confident_lack_of_improvement() -> None:
    # a slowly improving loss under noise: tiny windows cannot tell, so it stays quiet
    loss = descending(60, 1.05, 1.0, 0.3, seed=4)
    assert detect_plateau(series_of(60, loss=loss), Baseline(expected_total_steps=200)) == []


def test_loss_stuck_at_its_start_is_a_plateau_even_without_expected_steps() -> None:
    series = series_of(300, loss=noisy(2.3026, 300, 0.02))
    (a,) = detect_plateau(series, Baseline())
    assert a.evidence["stuck_at_start"]
    assert detect_plateau(series_of(100, loss=noisy(2.3026, 100, 0.02)), Baseline()) == []  # too early to say


def test_plateau_waits_for_enough_steps() -> None:
    assert detect_plateau(series_of(150, loss=noisy(1.0, 150, 0.02)), Baseline(expected_total_steps=2000)) == []


# ----------------------------------------------------------------------------------------------------------------
# grad_explosion / grad_vanishing


def test_sustained_high_grad_norm_is_explosion() -> None:
    grad = noisy(1.0, 50, 0.2) + noisy(20.0, 10, 0.2)
    (a,) = detect_grad_explosion(series_of(60, loss=descending(60), grad_norm=grad))
    assert a.severity == "severe" and a.evidence["recent_median"] > 10 * a.evidence["reference"]


def test_single_high_grad_norm_is_mild() -> None:
    grad = noisy(1.0, 60, 0.2)
    grad[30] = 20.0
    (a,) = detect_grad_explosion(series_of(60, loss=descending(60), grad_norm=grad))
    assert a.severity == "mild" and a.recovered and a.evidence["points_above"] == 1


def test_grad_detectors_are_quiet_on_noise() -> None:
    rng = random.Random(5)
    grad = [math.exp(rng.gauss(0, 0.5)) for _ in range(300)]
    series = series_of(300, loss=descending(300), grad_norm=grad)
    assert detect_grad_explosion(series) == [] and detect_grad_vanishing(series) == []


def test_grad_reference_comes_from_the_baseline_when_known() -> None:
    series = series_of(40, loss=descending(40), grad_norm=noisy(1.0, 40, 0.1))
    assert detect_grad_explosion(series, Baseline(grad_norm=1.0)) == []
    (a,) = detect_grad_explosion(series, Baseline(grad_norm=0.05, source="L1"))
    assert a.severity == "severe" and a.evidence["reference_source"].startswith("baseline grad_norm")
    assert detect_grad_explosion(series, Baseline(grad_norm=0.0)) == []  # a template's 0.0 means unknown


def test_vanishing_grad_norm_is_mild() -> None:
    grad = noisy(1.0, 50, 0.2) + noisy(0.002, 12, 0.2)
    (a,) = detect_grad_vanishing(series_of(62, loss=descending(62), grad_norm=grad))
    assert a.severity == "mild" and a.evidence["recent_median"] < a.evidence["limit"]
    one_low = noisy(1.0, 60, 0.2)
    one_low[-1] = 0.001
    assert detect_grad_vanishing(series_of(60, loss=descending(60), grad_norm=one_low)) == []


# ----------------------------------------------------------------------------------------------------------------
# eval_degradation


def test_val_loss_rising_while_train_falls() -> None:
    val = [2.0, 1.8, 1.6, 1.5, 1.45, 1.5, 1.6, 1.7]
    (a,) = detect_eval_degradation(series_of(80, loss=descending(80), val_loss=val, every={"val_loss": 10}))
    assert a.severity == "mild" and a.evidence["train_loss_falling"] and "each of the last 3" in a.detail
    assert a.evidence["best_mean"] == pytest.approx((1.5 + 1.45 + 1.5) / 3, rel=1e-5)


def test_accuracy_falling_is_degradation_and_rising_is_not() -> None:
    falling = [0.5, 0.6, 0.7, 0.75, 0.7, 0.65, 0.6]
    (a,) = detect_eval_degradation(series_of(70, loss=descending(70), val_accuracy=falling,
                                             every={"val_accuracy": 10}))
    assert a.evidence["higher_is_better"]
    rising = [0.5, 0.6, 0.7, 0.75, 0.8, 0.82, 0.85]
    assert detect_eval_degradation(series_of(70, loss=descending(70), val_accuracy=rising,
                                             every={"val_accuracy": 10})) == []


def test_eval_detector_is_quiet_on_noise_of_the_same_amplitude() -> None:
    alternating = [1.5 if i % 2 else 1.6 for i in range(20)]  # swings of 0.1, as large as the rise above
    assert detect_eval_degradation(series_of(200, loss=descending(200), val_loss=alternating,
                                             every={"val_loss": 10})) == []
    rng = random.Random(7)
    flat = [1.5 + rng.uniform(-0.1, 0.1) for _ in range(20)]
    assert detect_eval_degradation(series_of(200, loss=noisy(1.0, 200, 0.05), val_loss=flat,
                                             every={"val_loss": 10})) == []


def test_eval_worse_than_the_first_evaluation() -> None:
    val = [1.0, 1.02, 1.05, 1.08, 1.1, 1.12, 1.15]  # never better than the first one
    (a,) = detect_eval_degradation(series_of(70, loss=noisy(1.0, 70, 0.01), val_loss=val, every={"val_loss": 10}))
    assert "first" in a.detail


# ----------------------------------------------------------------------------------------------------------------
# lr_schedule


def _warmup_cosine(n: int, total: int = 2000, peak: float = 1e-3, warmup: int = 20) -> list[float]:
    return [peak * (i + 1) / warmup if i < warmup else
            peak * 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup))) for i in range(n)]


def test_lr_schedule_quiet_on_a_normal_schedule_and_a_constant_lr() -> None:
    total = Baseline(expected_total_steps=2000)
    for configured in (None, "cosine"):
        t = WatchThresholds(lr_schedule=configured)
        assert detect_lr_schedule(series_of(800, lr=_warmup_cosine(800)), total, t) == []
    assert detect_lr_schedule(series_of(800, lr=[1e-3] * 800), total) == []  # unconfigured: constant may be intended


def test_lr_constant_when_it_should_decay() -> None:
    (a,) = detect_lr_schedule(series_of(500, lr=[1e-3] * 500), Baseline(expected_total_steps=2000),
                              WatchThresholds(lr_schedule="cosine"))
    assert "should decay" in a.detail and a.severity == "mild"


def test_lr_changing_when_configured_constant() -> None:
    (a,) = detect_lr_schedule(series_of(300, lr=_warmup_cosine(300, total=300)), Baseline(expected_total_steps=2000),
                              WatchThresholds(lr_schedule="constant"))
    assert "constant" in a.detail


def test_lr_increasing_after_warmup() -> None:
    restarted = _warmup_cosine(600) + _warmup_cosine(50)  # the scheduler re-created on resume: back to warm-up
    (a,) = detect_lr_schedule(series_of(650, lr=restarted), Baseline(expected_total_steps=2000))
    assert "after decaying" in a.detail
    assert detect_lr_schedule(series_of(650, lr=restarted), Baseline(expected_total_steps=2000),
                              WatchThresholds(lr_schedule="cosine_restarts")) == []
    ramp = [1e-5 * 1.005 ** i for i in range(900)]  # still rising at 45% of the run
    (a,) = detect_lr_schedule(series_of(900, lr=ramp), Baseline(expected_total_steps=2000))
    assert "still rising" in a.detail
    assert detect_lr_schedule(series_of(600, lr=ramp[:600]), Baseline(expected_total_steps=2000)) == []  # 30%


# ----------------------------------------------------------------------------------------------------------------
# throughput_drop


def test_slower_steps_are_a_throughput_drop() -> None:
    step_time = noisy(0.1, 100, 0.05) + noisy(0.15, 30, 0.05)
    (a,) = detect_throughput_drop(series_of(130, loss=descending(130), step_time_s=step_time))
    assert a.severity == "mild" and a.evidence["ratio"] == pytest.approx(1.5, rel=0.05)


def test_throughput_quiet_on_occasional_slow_steps() -> None:
    step_time = [0.15 if i % 10 == 0 else 0.1 for i in range(200)]  # the same 1.5x, on single steps
    assert detect_throughput_drop(series_of(200, loss=descending(200), step_time_s=step_time)) == []
    assert detect_throughput_drop(series_of(200, loss=descending(200), step_time_s=noisy(0.1, 200, 0.15))) == []


def test_throughput_against_the_l1_baseline() -> None:
    series = series_of(50, loss=descending(50), time_ms=noisy(100.0, 50, 0.05), tokens_per_s=noisy(1000, 50, 0.05),
                       mfu=noisy(0.30, 50, 0.05))
    assert detect_throughput_drop(series, Baseline(step_time_s=0.1, tokens_per_s=1000, mfu=0.3)) == []
    found = detect_throughput_drop(series, Baseline(step_time_s=0.05, tokens_per_s=2000, mfu=0.5, source="L1"))
    assert {a.evidence["metric"] for a in found} == {"time_ms", "tokens_per_s", "mfu"}
    assert all(a.evidence["reference_source"].startswith("baseline") for a in found)


def test_throughput_from_record_times() -> None:
    records = build(100, loss=descending(100))
    slow = [Record(r.step, T0 + (r.step if r.step < 70 else 70 + (r.step - 70) * 2.0), r.values, r.line)
            for r in records]
    series = RunSeries()
    series.add(slow)
    (a,) = detect_throughput_drop(series)
    assert a.evidence["metric"] == "record times" and a.evidence["ratio"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------------------------
# stale


def test_stale_during_startup_uses_the_grace() -> None:
    series = series_of(2, interval=5.0, loss=[2.3, 2.2])
    last = series.last_time
    assert detect_stale(series, now=last + 10 * 60) == []
    (a,) = detect_stale(series, now=last + 16 * 60)
    assert a.severity == "severe" and "start-up" in a.detail


def test_stale_after_startup_uses_the_step_time() -> None:
    series = series_of(50, interval=10.0, loss=descending(50), step_time_s=[10.0] * 50)
    last = series.last_time
    assert detect_stale(series, now=last + 90) == []
    (a,) = detect_stale(series, now=last + 120)
    assert a.evidence["threshold_s"] == 100 and a.evidence["silent_s"] == 120
    verdict = decide(series, [a], Baseline(expected_total_steps=2000), last + 120)
    assert (verdict.decision, verdict.status) == ("STOP", "STALE")


def test_stale_floor_and_known_pauses() -> None:
    fast = series_of(50, interval=1.0, loss=descending(50))
    assert detect_stale(fast, now=fast.last_time + 30) == []  # 10 x 1 s would be 10 s: the 60 s floor holds
    assert detect_stale(fast, now=fast.last_time + 61)
    records = build(60, interval=10.0, loss=descending(60))
    paused = [Record(r.step, r.time + (400 if r.step >= 30 else 0), r.values, r.line) for r in records]
    series = RunSeries()
    series.add(paused)  # a 410 s evaluation pause the run came back from
    assert detect_stale(series, now=series.last_time + 500) == []
    assert detect_stale(series, now=series.last_time + 700)


def test_stale_with_sparse_logging_uses_the_log_interval() -> None:
    records = [Record(50 * i, T0 + 50.0 * i, {"loss": 2.0 - 0.01 * i, "step_time_s": 1.0}, f"x:{i}") for i in range(20)]
    series = RunSeries()
    series.add(records)
    assert detect_stale(series, now=series.last_time + 200) == []  # 200 s: four log intervals, not 200 steps
    assert detect_stale(series, now=series.last_time + 600)


def test_stale_needs_now_and_the_same_clock() -> None:
    series = series_of(50, interval=1.0, loss=descending(50))
    assert detect_stale(series, now=None) == []
    relative = RunSeries()
    relative.add([Record(i, float(i), {"loss": 1.0}) for i in range(50)])  # seconds since start
    assert detect_stale(relative, now=time.time()) == []  # another clock: cannot judge
    assert detect_stale(relative, now=49.0 + 3600)  # the same relative clock: can
    received = RunSeries()
    received.add([Record(i, None, {"loss": 1.0}) for i in range(50)], received_at=T0)
    assert detect_stale(received, now=T0 + 16 * 60)  # no record times: when they were received


def test_stale_before_any_record() -> None:
    series = RunSeries(started_at=T0)
    assert detect_stale(series, now=T0 + 10 * 60) == []
    (a,) = detect_stale(series, now=T0 + 20 * 60)
    assert a.step is None and "no record at all" in a.detail


# ----------------------------------------------------------------------------------------------------------------
# decide


def _anomaly(kind: str, severity: str = "severe", recovered: bool = False) -> Anomaly:
    return Anomaly(kind, 10, f"a {kind}", severity, recovered)


def test_decide_order() -> None:
    series = series_of(100, loss=descending(100))
    b = Baseline(expected_total_steps=1000)
    now = series.last_time + 1
    assert decide(series, [], b, now).decision == "CONTINUE"
    assert decide(series, [], b, now).status == "NORMAL"
    for kind in ("nan_inf", "loss_spike", "divergence", "grad_explosion"):
        v = decide(series, [_anomaly(kind)], b, now)
        assert (v.decision, v.status) == ("STOP", "SEVERE_ANOMALY") and kind in v.reason
    v = decide(series, [_anomaly("stale")], b, now)
    assert (v.decision, v.status) == ("STOP", "STALE")
    v = decide(series, [_anomaly("plateau", "mild"), _anomaly("loss_spike", "severe", recovered=True)], b, now)
    assert (v.decision, v.status, v.next_check_minutes) == ("CONTINUE", "MILD_ANOMALY", 10)
    # an unreachable source never stops a run, whatever the anomalies say
    v = decide(series, [_anomaly("nan_inf")], b, now, source_ok=False)
    assert (v.decision, v.status) == ("WAIT", "NORMAL") and "unreachable" in v.reason


def test_decide_waits_on_too_little_data_but_not_on_a_nan() -> None:
    few = series_of(5, loss=[2.3, 2.2, 2.2, 2.1, 2.1])
    v = decide(few, [], Baseline(expected_total_steps=1000), few.last_time + 1)
    assert v.decision == "WAIT" and "5 loss point" in v.reason
    nan = series_of(3, loss=[2.3, math.nan, math.nan])
    anomalies = detect_all(nan, Baseline(), None, nan.last_time + 1)
    assert decide(nan, anomalies, Baseline(), nan.last_time + 1).decision == "STOP"
    v = decide(RunSeries(), [], Baseline(), T0)
    assert v.decision == "WAIT" and "no training loss" in v.reason


def test_decide_complete() -> None:
    series = series_of(101, loss=descending(101))
    b = Baseline(expected_total_steps=100)
    v = decide(series, [_anomaly("stale")], b, series.last_time + 3600)  # a finished run goes quiet: not stale
    assert (v.decision, v.status) == ("CONTINUE", "COMPLETE")
    assert decide(series, [_anomaly("nan_inf")], b, None).decision == "STOP"


def test_next_check_interval() -> None:
    series = series_of(100, loss=descending(100))
    b = Baseline(expected_total_steps=10_000)
    assert [decide(series, [], b, None, healthy_checks=k).next_check_minutes for k in range(5)] == [10, 20, 30, 60, 60]
    assert decide(series, [_anomaly("plateau", "mild")], b, None, healthy_checks=7).next_check_minutes == 10
    near_end = Baseline(expected_total_steps=105)  # step 99 of 105: the last 10%
    v = decide(series, [], near_end, None, healthy_checks=7)
    assert v.next_check_minutes == 10 and v.healthy and "last 10%" in v.reason
    assert next_check_minutes(2) == 30 and next_check_minutes(2, anomalous=True) == 10
    t = WatchThresholds(check_intervals_minutes=(5, 15))
    assert [next_check_minutes(k, thresholds=t) for k in range(3)] == [5, 15, 15]


def test_verdict_validates_and_serialises() -> None:
    with pytest.raises(ValueError):
        Verdict("PAUSE", "NORMAL", "", 10)
    with pytest.raises(ValueError):
        Verdict("STOP", "BAD", "", 10)
    v = Verdict("STOP", "STALE", "quiet", 10)
    assert v.to_dict()["decision"] == "STOP" and not v.healthy
