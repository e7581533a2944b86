"""L1 on the chargpt example: the healthy pipeline passes, and each planted bug fails the check that names it.

Every pipeline trains for real (a 2-layer character GPT on CPU, 40 steps);
see broken_variants.py for the bugs. A variant must fail its own check(s),
with a message that says what is wrong, and no other check that the healthy
pipeline passes (the collateral failures a bug really causes are listed per case).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).parent))
import broken_variants as bv  # noqa: E402

from pytest_spml.l1.runner import L1Settings, run_l1  # noqa: E402
from pytest_spml.report import Status  # noqa: E402

SETTINGS = L1Settings(minutes=0.3, steps=40, device="cpu", seed=0)
CPU_SKIPS = {"L1-MFU", "L1-TCA"}  # no peak FLOP/s for a CPU; tensor-core activity needs an NVIDIA GPU


def _summary(report) -> str:
    return "\n".join(f"  {c.id}: {c.status.value}: {c.message}" for c in report.checks.values())


def _failed(report) -> set[str]:
    return {c.id for c in report.checks.values() if c.status in (Status.FAIL, Status.ERROR)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared (oversubscribed) CPU, OpenMP threads that spin-wait for each other
    turn a 30 ms step into seconds and the runs hit their time budget. These tests judge verdicts, not speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def healthy(one_thread):
    return run_l1(bv.CharGPTPipeline(), SETTINGS)


def test_healthy_chargpt_passes_every_check_it_can_run_on_cpu(healthy) -> None:
    not_passing = {c.id: c.status for c in healthy.checks.values() if c.status is not Status.PASS}
    assert not_passing == {check: Status.SKIP for check in CPU_SKIPS}, _summary(healthy)
    assert healthy.trace.stopped_by == "step limit 40", healthy.trace.stopped_by
    assert healthy.trace.eval_steps == [20, 40]  # the pipeline's eval_every is 20


def test_healthy_chargpt_is_small_and_fast(healthy) -> None:
    m = healthy.measurements
    assert m["steps"] == 40
    assert m["tokens_per_sample"] == 64
    assert m["loss_last"] < m["loss_first"]
    # a loose bound: the README promises well under 50 ms on 2 cores; shared CI machines are slower
    assert m["step_time_median_s"] < 0.5, m["step_time_median_s"]


# (variant, {check: words its message must contain}, failures the bug legitimately causes elsewhere)
CASES = [
    pytest.param(bv.LayerLeftOutOfOptimizer,
                 {"L1-GRAD-COVERAGE": ["missing from the optimizer", "transformer.h.1.mlp.c_fc.weight"]},
                 # the left-out layer never moves; and its gradients, which no zero_grad() clears, accumulate
                 # into the clipping norm, so a resumed run (fresh .grad) clips differently
                 {"L1-DRIFT", "L1-RESUME"},
                 id="a-layer-not-in-optimizer"),
    pytest.param(bv.LossGoesNaN,
                 {"L1-LOSS": ["NaN/Inf", "step 11"], "L1-GRAD-HEALTH": ["NaN/Inf", "step 11"]},
                 # NaN weights: outputs, metrics and losses are NaN everywhere after the blow-up
                 {"L1-CHECKPOINT", "L1-RESUME", "L1-INFERENCE", "L1-EVAL", "L1-DRIFT"},
                 id="b-loss-goes-nan"),
    pytest.param(bv.CheckpointWithoutBuffers,
                 {"L1-CHECKPOINT": ["outputs after reload differ", "buffers"]},
                 {"L1-RESUME", "L1-EVAL"},  # the lost buffer also changes resumed training and checkpoint eval
                 id="c-checkpoint-without-buffers"),
    pytest.param(bv.ResumeWithoutOptimizerState,
                 {"L1-CHECKPOINT": ["optimizer state"], "L1-RESUME": ["does not reproduce"]},
                 set(),
                 id="c-optimizer-state-not-restored"),
    pytest.param(bv.EvaluationWithDropoutOn,
                 {"L1-EVAL": ["not deterministic", "model.eval()"]},
                 set(),
                 id="d-dropout-on-in-eval"),
    pytest.param(bv.SchedulerNeverSteps,
                 {"L1-LR-SCHEDULE": ["never changed", "scheduler.step()"]},
                 set(),
                 id="e-scheduler-never-steps"),
]


@pytest.mark.parametrize(("variant", "expected", "collateral"), CASES)
def test_broken_variant_fails_the_right_check(variant, expected: dict[str, list[str]], collateral: set[str],
                                             healthy) -> None:
    pipeline = variant()
    assert pipeline.cfg.dropout > 0  # (d) needs it; the healthy pipeline trains with dropout too
    report = run_l1(pipeline, SETTINGS)
    for check_id, words in expected.items():
        result = report.checks[check_id]
        assert result.status is Status.FAIL, f"{variant.__name__}: {check_id} should fail\n{_summary(report)}"
        for word in words:
            assert word in result.message, f"{check_id} message lacks {word!r}: {result.message}"
    # what the healthy pipeline already fails is the healthy test's business, not this variant's
    unexpected = _failed(report) - _failed(healthy) - set(expected) - collateral
    assert not unexpected, f"{variant.__name__} also failed {sorted(unexpected)}\n{_summary(report)}"
