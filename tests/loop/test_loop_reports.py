"""`spml-loop status` and `report`, stop requests, the built-in sample researcher, the noise floor, real PyTorch rounds."""

from __future__ import annotations

import json
import math
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from loophelpers import (BETTER_CONFIG, BIN, TORCH_PROJECT, WORSE_CONFIG, build_template, config_text, git,
                         loop_commits, researcher_command, rows, run_json, run_loop, status_porcelain, write_plan)

from pytest_spml.loop.judge import ImprovementJudge, Outcome, is_better, noise_floor
from pytest_spml.loop.state import LoopState


def _two_rounds(repo: Path, tmp_path: Path) -> dict:
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "lr 0.1",
                                     "insight": "faster is better"},
                                 2: {"write": {"config.json": config_text(WORSE_CONFIG)}, "strategy": "lr 0.05"}})
    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "2",
                         plan=plan)
    assert proc.returncode == 0, proc.stderr
    return doc


def test_status_and_report_in_text_json_junit_and_png(repo, tmp_path):
    _two_rounds(repo, tmp_path)

    status = run_loop(repo, "status")
    assert status.returncode == 0
    assert "not running" in status.stdout and "- best: 0.801477 (round 1" in status.stdout
    assert "| 1 | pass | 0.801477 | committed" in status.stdout
    proc, doc = run_json(repo, "status")
    assert doc["running"] is False and doc["rounds_done"] == 2 and doc["best_round"] == 1
    assert [r["round"] for r in doc["rounds"]] == [1, 2] and doc["status"] == "finished"

    junit = tmp_path / "report.xml"
    proc, doc = run_json(repo, "report", "--junitxml", str(junit))
    assert proc.returncode == 0
    png = Path(doc["png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")]
    assert sum(name.startswith("round-1/") for name in names) == 6 and "loop loop" in names
    text = run_loop(repo, "report", "--no-png").stdout
    assert "| 2 | pass | 0.544858 | rolled back" in text and "faster is better" in text

    # the prompt of round 2 carried the protocol, the summary and the last rows
    prompt = (repo / ".spml" / "rounds" / "0002" / "prompt.md").read_text()
    assert "## Research question" in prompt and "`model.py`, `config.json`" in prompt
    assert "| 1 | pass | 0.801477 | committed" in prompt and "best so far 0.801477" in prompt


def test_no_loop_is_bad_input(repo):
    for verb in ("status", "report"):
        proc = run_loop(repo, verb)
        assert proc.returncode == 2 and "no loop in this repository" in proc.stderr
    proc = run_loop(repo, "run", "--resume")
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr


def test_a_stop_request_finishes_the_round_in_progress(repo, tmp_path):
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "sleep": 1.0},
                                 2: {"write": {"config.json": config_text(WORSE_CONFIG)}}})
    loop = subprocess.Popen([str(BIN / "spml-loop"), "run", "--researcher", researcher_command(), "--tag", "t1",
                             "--format", "json"], cwd=repo, env={**__import__("os").environ, "PLAN": str(plan)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not Path(f"{plan}.calls").exists():
        assert time.monotonic() < deadline and loop.poll() is None
        time.sleep(0.05)
    asked = run_loop(repo, "status", "--stop")
    assert asked.returncode == 0 and "asked the loop" in asked.stdout
    out, err = loop.communicate(timeout=60)
    doc = json.loads(out)
    assert loop.returncode == 0, err
    assert doc["rounds_done"] == 1 and doc["stop_reason"].startswith("stop requested")
    assert doc["rounds"][0]["verdict"].startswith("committed")  # the round in progress was finished, not lost
    assert not (repo / ".spml" / "stop").exists()
    # --resume goes on from round 2
    proc, doc = run_json(repo, "run", "--resume", "--max-rounds", "2", plan=plan)
    assert proc.returncode == 0 and [r["round"] for r in doc["rounds"]] == [1, 2]


def test_sample_researcher_writes_sampled_values_into_the_variable_config(repo):
    proc, doc = run_json(repo, "run", "--researcher", "sample", "--sampler", "random", "--tag", "t1",
                         "--max-rounds", "3", "--seed", "7")

    assert proc.returncode == 0, proc.stderr
    assert doc["rounds_done"] == 3
    for row in doc["rounds"]:
        params = row["params"]
        assert 0.01 <= params["lr"] <= 0.3 and 5 <= params["steps"] <= 80 and isinstance(params["steps"], int)
        assert row["strategy"].startswith("random: lr=")
        assert row["steps"]["eval"]["status"] == "pass"
    committed = [r for r in doc["rounds"] if r["action"] == "commit"]
    assert committed  # the baseline (lr 0.02 for 10 steps) is easy to beat
    config = json.loads(git(repo, "show", f"{committed[-1]['commit']}:config.json"))
    assert config["lr"] == pytest.approx(committed[-1]["params"]["lr"], rel=1e-3)
    assert config["steps"] == committed[-1]["params"]["steps"]
    assert status_porcelain(repo) == ""


def test_noise_floor_runs_the_baseline_twice_before_round_one(repo, tmp_path):
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}}})
    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         "--noise-floor", plan=plan)

    assert proc.returncode == 0, proc.stderr
    noise = doc["noise"]
    assert len(noise["runs"]) == 2 and noise["runs"][0] == noise["runs"][1]  # deterministic training
    assert noise["floor"] == 0.0 and 0.075 < noise["best_start"] < 0.076
    assert (repo / ".spml" / "rounds" / "baseline-1" / "eval.log").exists()
    (row,) = doc["rounds"]
    assert row["insight"].startswith("+0.7258") and "vs best 0.0756177" in row["insight"]
    assert "noise floor: 0 (baseline run twice" in (repo / ".spml" / "experiences.md").read_text()


def test_improvement_judge_ties_margins_and_directions():
    assert not is_better(1.0, 1.0, "maximize") and not is_better(1.0, 1.0, "minimize")
    assert is_better(1.1, 1.0, "maximize") and not is_better(1.1, 1.0, "minimize")
    assert is_better(0.9, 1.0, "minimize", margin=0.05) and not is_better(0.96, 1.0, "minimize", margin=0.05)
    assert not is_better(math.nan, 1.0, "maximize") and is_better(0.1, None, "maximize")
    assert noise_floor([0.90, 0.92]) == pytest.approx(math.sqrt(2) * 0.02)
    state = LoopState(branch="b", tag="t", protocol="p", metric="loss", direction="minimize", baseline=1.0,
                      target=0.5, max_rounds=3, min_delta=0.0, best=1.0, noise={"runs": [1.0, 1.02], "floor": 0.03})
    judge = ImprovementJudge("minimize")
    assert judge.judge(Outcome(1, True, metric=0.98), state).action == "rollback"  # inside the noise floor
    verdict = judge.judge(Outcome(1, True, metric=0.9), state)
    assert verdict.action == "commit" and verdict.improved
    assert judge.judge(Outcome(1, False, failed_step="train", reason="crash"), state).action == "rollback"
    assert judge.finished(state) is None
    state.best = 0.5
    assert judge.finished(state).startswith("target reached")


@pytest.mark.slow
def test_real_pytorch_rounds(tmp_path):
    repo = build_template(TORCH_PROJECT, tmp_path / "torch-repo")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": '{"hidden": 32, "lr": 0.05, "steps": 100}\n'},
                                     "strategy": "wider, faster, longer"},
                                 2: {"write": {"config.json": '{"hidden": 32, "lr": 0.0001, "steps": 100}\n'},
                                     "strategy": "a tiny learning rate"}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "torch", plan=plan,
                         timeout=300)

    assert proc.returncode == 0, proc.stderr
    first, second = doc["rounds"]
    assert first["verdict"].startswith("committed") and first["metric"] > 0.85
    assert second["action"] == "rollback" and second["metric"] < first["metric"]
    assert int(first["steps"]["train"]["message"].split("(")[1].split()[0]) == 100  # every step watched
    assert len(loop_commits(repo, "autoresearch/torch")) == 1 and status_porcelain(repo) == ""
    assert (repo / "checkpoints" / "model.pt").exists()  # ignored outputs survive the rollback
    assert [r["round"] for r in rows(repo)] == [1, 2]


def test_plateau_warning_after_five_rounds_without_improvement_and_the_budget(repo, tmp_path):
    # the researcher changes nothing for five rounds: recorded rounds, none an improvement
    plan = write_plan(tmp_path, {6: {"sleep": 1.5}})
    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "5",
                         plan=plan)

    assert proc.returncode == 0, proc.stderr
    assert doc["rounds_done"] == 5 and doc["best"] == 0.08
    fifth = doc["rounds"][4]
    assert fifth["result"] == "no change: the researcher changed nothing" and "plateau: 5 rounds" in fifth["note"]
    assert "warning: 5 rounds in a row without improvement" in proc.stderr
    plateau = [r for r in doc["results"] if r["id"] == "loop/plateau"]
    assert plateau and plateau[0]["status"] == "fail" and plateau[0]["blocking"] is False

    # a wall-clock budget ends the loop after the round in progress
    proc, doc = run_json(repo, "run", "--resume", "--max-rounds", "9", "--budget", "1s", plan=plan)
    assert proc.returncode == 0 and doc["rounds_done"] == 6  # round 6 took 1.5 s: no round 7
    assert doc["stop_reason"] == "wall-clock budget of 1 s used"


def test_tpe_sampler_runs_rounds_within_the_ranges(repo):
    """--sampler tpe: Optuna's TPE, told every recorded round, suggests each round's values."""
    pytest.importorskip("optuna", reason="the TPE sampler needs the optuna extra (in the test extra)")
    proc, doc = run_json(repo, "run", "--researcher", "sample", "--sampler", "tpe", "--tag", "t1",
                         "--max-rounds", "3", "--seed", "3")

    assert proc.returncode == 0, proc.stderr
    assert doc["rounds_done"] == 3
    strategies = [row["strategy"] for row in doc["rounds"]]
    assert all(s.startswith("optuna-tpe: lr=") for s in strategies), strategies
    for row in doc["rounds"]:
        assert 0.01 <= row["params"]["lr"] <= 0.3 and 5 <= row["params"]["steps"] <= 80
    assert len({(r["params"]["lr"], r["params"]["steps"]) for r in doc["rounds"]}) == 3
    assert status_porcelain(repo) == ""
