"""`spml conclude` and `spml handoff` read the L1 JSON report (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLE

from pytest_spml import cli

PLAN = EXAMPLE / "docs" / "plans" / "2026-11-01-mlp-width.md"


def l1_report(tmp_path: Path, failing: bool = False) -> Path:
    checks = [
        {"id": "L1-LOSS", "name": "loss trend", "status": "pass", "message": "finite and decreasing",
         "evidence": {"first_half_mean": 2.1, "second_half_mean": 1.4, "spike_factor": 10.0}},
        {"id": "L1-MFU", "name": "model FLOPs utilisation", "status": "skip", "message": "no peak on CPU",
         "evidence": {"achieved_flops_per_s": 3.2e9}},
        {"id": "L1-RESUME", "name": "resume equivalence", "status": "fail" if failing else "pass",
         "message": "losses differ" if failing else "equal", "evidence": {}},
    ]
    doc = {"tool": "spml l1", "pipeline": "mlp", "device": {"type": "cpu", "name": "x86_64"},
           "measurements": {"step_time_median_s": 0.012, "samples_per_s": 5300.0, "mfu": None,
                            "grad_norm_median": 0.8, "grad_norm_min": 0.2, "grad_norm_max": 2.5, "loss_first": 2.3},
           "checks": checks, "git": {"commit": "0123456789abcdef", "branch": "main", "dirty": False}}
    path = tmp_path / ".spml" / "l1-report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_conclude_appends_the_block_to_the_plan(tmp_path: Path) -> None:
    plan = tmp_path / "plan.md"
    plan.write_text(PLAN.read_text())
    report = l1_report(tmp_path)
    assert cli.main(["conclude", "--plan", str(plan), "--report", str(report), "--result", "effective",
                     "--anomaly", "step time noisy in the first 3 steps"]) == 0
    text = plan.read_text()
    block = text[text.index("Conclusion (INTEGRATION)"):]
    assert "**Result:** effective" in block
    assert "- L1-LOSS loss trend: first_half_mean=2.1, second_half_mean=1.4, spike_factor=10 — **pass**" in block
    assert "**Anomalies:** step time noisy in the first 3 steps" in block
    assert "commit 0123456789ab" in block


def test_conclude_refuses_effective_without_a_passing_report(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.md"
    plan.write_text(PLAN.read_text())
    report = l1_report(tmp_path, failing=True)
    assert cli.main(["conclude", "--plan", str(plan), "--report", str(report), "--result", "effective"]) == 1
    assert "refusing 'effective': 1 L1 check(s) failed: L1-RESUME" in capsys.readouterr().out
    assert "Conclusion" not in plan.read_text()
    assert cli.main(["conclude", "--plan", str(plan), "--report", str(report), "--result", "inconclusive"]) == 0


def test_conclude_without_a_report_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["conclude", "--report", str(tmp_path / "none.json"), "--result", "effective",
                     "--hypothesis", "h", "--log", str(tmp_path / "log.md")]) == 2
    assert "run `pytest --spml-l1` first" in capsys.readouterr().err


def test_handoff_writes_the_baseline(tmp_path: Path) -> None:
    report = l1_report(tmp_path)
    out = tmp_path / "experiment-context.md"
    assert cli.main(["handoff", "--report", str(report), "--plan", str(PLAN), "--total-steps", "20000",
                     "--command", "python train.py", "--out", str(out)]) == 0
    text = out.read_text()
    block = text.split("## L1 baseline")[1].split("```yaml")[1].split("```")[0]
    baseline = yaml.safe_load(block)
    assert baseline["step_time_s"] == 0.012 and baseline["grad_norm"] == 0.8 and baseline["mfu"] is None
    assert baseline["expected_total_steps"] == 20000 and baseline["loss_start"] == 2.3
    assert "- Commit: 0123456789abcdef" in text and "`python train.py`" in text
    assert "loss_spike_factor: 3.0" in text
    assert cli.main(["handoff", "--report", str(report), "--out", str(out)]) == 2  # never overwrites silently
