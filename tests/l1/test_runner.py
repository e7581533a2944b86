"""The L1 runner on real CPU training: a healthy pipeline passes, each planted bug fails its check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="L1 tests need the torch extra: pip install -e '.[test,torch]'")

sys.path.insert(0, str(Path(__file__).parent))

from mlp_pipeline import (  # noqa: E402
    DropoutInEval, ExplodingButClipped, FlatScheduler, ForgetsOptimizerState, MissingFromOptimizer, MLPPipeline,
    NaNLoss,
)

from pytest_spml.l1.runner import L1Settings, run_l1  # noqa: E402
from pytest_spml.report import Status  # noqa: E402

SETTINGS = L1Settings(minutes=0.2, steps=60, device="cpu", seed=0)


@pytest.fixture(scope="module")
def healthy():
    return run_l1(MLPPipeline(), SETTINGS)


def statuses(report) -> dict[str, str]:
    return {check_id: check.status.value for check_id, check in report.checks.items()}


def test_healthy_pipeline_passes_every_check_it_can_run_on_cpu(healthy) -> None:
    got = statuses(healthy)
    assert got.pop("L1-MFU") == "skip" and got.pop("L1-TCA") == "skip"
    assert set(got.values()) == {"pass"}, {k: healthy.checks[k].message for k, v in got.items() if v != "pass"}


def test_measurements_have_numbers(healthy) -> None:
    m = healthy.measurements
    assert m["steps"] == 60 and m["step_time_median_s"] > 0 and m["samples_per_s"] > 0
    # forward 2*B*(in*out) per linear; backward 2x forward, except the first layer, whose input needs no
    # gradient: it only computes its weight gradient (1x forward)
    first, second = 2 * 32 * 16 * 64, 2 * 32 * 64 * 4
    assert m["flops_per_step"] == (first + second) + (first + 2 * second)
    assert m["loss_second_half_mean"] < m["loss_first_half_mean"]
    assert healthy.device["matmul_dtypes"] == ["float32"]  # the step's matmuls, as dispatched
    assert healthy.checks["L1-MFU"].message.startswith("achieved ")
    assert "--spml-peak-flops" in healthy.checks["L1-MFU"].message


def test_mfu_with_a_given_cpu_peak() -> None:
    report = run_l1(MLPPipeline(), L1Settings(minutes=0.2, steps=20, device="cpu", peak_flops=1e12))
    mfu = report.checks["L1-MFU"]
    assert mfu.status in (Status.PASS, Status.FAIL) and 0 < report.measurements["mfu"] < 1
    assert mfu.evidence["threshold"] == 0.01


@pytest.mark.parametrize("pipeline, check_id, words", [
    (MissingFromOptimizer(), "L1-GRAD-COVERAGE", "missing from the optimizer: 0.weight, 0.bias"),
    (NaNLoss(), "L1-LOSS", "loss is NaN/Inf from step 9"),
    (NaNLoss(), "L1-GRAD-HEALTH", "NaN/Inf"),
    (FlatScheduler(), "L1-LR-SCHEDULE", "the learning rate never changed"),
    (ExplodingButClipped(), "L1-GRAD-HEALTH", "exploding gradients"),
    (DropoutInEval(), "L1-EVAL", "not deterministic"),
    (ForgetsOptimizerState(), "L1-CHECKPOINT", "optimizer state"),
    (ForgetsOptimizerState(), "L1-RESUME", "does not reproduce"),
])
def test_planted_bugs_fail_the_right_check(pipeline, check_id: str, words: str) -> None:
    report = run_l1(pipeline, L1Settings(minutes=0.2, steps=30, device="cpu", seed=0))
    check = report.checks[check_id]
    assert check.status is Status.FAIL, check.message
    assert words in check.message


def test_report_json(healthy, tmp_path: Path) -> None:
    from pytest_spml.l1.report_file import summary_lines, write_report

    path = tmp_path / "l1.json"
    write_report(healthy, path)
    doc = json.loads(path.read_text())
    assert doc["tool"] == "spml l1" and doc["ok"] is True
    assert [c["id"] for c in doc["checks"]][:3] == ["L1-STEP-TIME", "L1-THROUGHPUT", "L1-MFU"]
    assert doc["measurements"]["steps"] == 60
    lines = summary_lines(healthy)
    assert len(lines) == 1 + len(healthy.checks) and any("L1-RESUME" in line for line in lines)


def test_peak_dtype_follows_the_matmuls() -> None:
    from pytest_spml.l1.runner import peak_dtype

    assert peak_dtype(["bfloat16", "float32"]) == "bf16"
    assert peak_dtype(["float16"]) == "fp16"
    assert peak_dtype(["float32"]) in ("fp32", "tf32")
