"""Regressions from a review of `spml-loop run` / `iterate` / `status` / `note`: real repositories, real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from loophelpers import (BETTER_CONFIG, BIN, config_text, git, researcher_command, rows, run_json, run_loop,
                         set_protocol, status_porcelain, write_plan)

from pytest_spml.loop.criteria import load_criteria

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "mnist-mlp"
TEMPLATE = REPO_ROOT / "templates" / "criteria.yaml"


def _watched(row: dict) -> int:
    found = re.search(r"\((\d+) metric records watched\)", row["steps"]["train"]["message"])
    assert found, row["steps"]["train"]
    return int(found.group(1))


def _better_plan(tmp_path: Path) -> Path:
    return write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "more steps"}})


# ---------------------------------------------------------------- 1. the watchdog sees the step log

def test_a_round_of_the_tests_project_watches_its_step_log(repo: Path, tmp_path: Path) -> None:
    proc, _doc = run_json(repo, "run", "--researcher", researcher_command(), "--max-rounds", "1",
                          plan=_better_plan(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert _watched(rows(repo)[0]) > 0


@pytest.mark.skipif(shutil.which("git") is None, reason="git")
def test_the_bundled_example_end_to_end_readme_iterate_flow(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    work = tmp_path / "M"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("runs", "checkpoints", "__pycache__", ".spml"))
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "baseline")
    # the example's train.py without the loop keeps its own log; under a supervisor it writes $SPML_METRICS_LOG
    env = {k: v for k, v in os.environ.items() if k != "SPML_METRICS_LOG"}
    out = tmp_path / "plain"
    subprocess.run([sys.executable, "train.py", "--max-steps", "10", "--out", str(out)], cwd=work, env=env,
                   check=True, capture_output=True)
    assert (out / "runs" / "metrics.jsonl").read_text().count("\n") == 1
    named = tmp_path / "named" / "steps.jsonl"
    subprocess.run([sys.executable, "train.py", "--max-steps", "10", "--out", str(tmp_path / "o2")], cwd=work,
                   env={**env, "SPML_METRICS_LOG": str(named)}, check=True, capture_output=True)
    assert json.loads(named.read_text())["step"] == 10
    assert not (tmp_path / "o2" / "runs" / "metrics.jsonl").exists()
    for leftover in ("runs", "checkpoints"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    assert status_porcelain(work) == ""

    # the README's iterate flow: the template's defaults work on the example once committed
    init = subprocess.run([str(BIN / "spml"), "init", "--only", "criteria"], cwd=work, capture_output=True,
                          text=True)
    assert init.returncode == 0, init.stderr
    refused = run_loop(work, "iterate", "--criteria", "criteria.yaml", "--researcher", "sample", "--max-rounds", "1")
    assert refused.returncode == 2 and "not committed" in refused.stderr and "git add criteria.yaml" in \
        refused.stderr, refused.stderr
    assert not (work / ".spml").exists()
    git(work, "add", "criteria.yaml")
    git(work, "commit", "-q", "-m", "criteria")
    proc, doc = run_json(work, "iterate", "--criteria", "criteria.yaml", "--researcher", "sample",
                         "--max-rounds", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = rows(work)
    assert _watched(row) > 0
    results = {r["id"]: r for r in row["steps"]["criteria"]["results"]}
    assert all(r["status"] == "pass" for r in results.values()), results
    assert "metrics.jsonl" in results["stability/nan_inf"]["message"]
    assert doc["criteria_met_round"] == 1


# ---------------------------------------------------------------- 2. bad paths

@pytest.mark.parametrize("command", ["run", "iterate"])
@pytest.mark.parametrize(("option", "value", "message"), [
    ("--context", "nope.md", "--context: no such file"),
    ("--context", "DIR", "--context is a directory"),
    ("--metrics-log", "DIR", "--metrics-log is a directory"),
    ("--metrics-log", "BINARY", "--metrics-log is a binary file"),
])
def test_bad_context_and_metrics_log_paths_are_refused_before_anything_is_written(
        repo: Path, tmp_path: Path, command: str, option: str, value: str, message: str) -> None:
    (tmp_path / "adir").mkdir()
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x80\x02PK\x00\x00\x01\xff" * 64)
    arg = {"DIR": str(tmp_path / "adir"), "BINARY": str(binary)}.get(value, value)
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("metrics:\n  val_score: '>= 0'\n")
    extra = ["--criteria", str(criteria)] if command == "iterate" else []
    proc = run_loop(repo, command, "--researcher", "sample", option, arg, *extra)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (repo / ".spml").exists() and git(repo, "branch", "--list", "autoresearch/*") == ""
    proc, doc = run_json(repo, command, "--researcher", "sample", option, arg, *extra)
    assert proc.returncode == 2 and doc["ok"] is False and message in doc["error"]["message"]


def test_a_metrics_log_that_training_creates_later_is_fine(repo: Path, tmp_path: Path) -> None:
    proc, _doc = run_json(repo, "run", "--researcher", researcher_command(), "--max-rounds", "1",
                          "--metrics-log", "runs/later.jsonl", plan=_better_plan(tmp_path))
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- 3. iterate's criteria

def test_an_ignored_criteria_file_in_the_repository_is_accepted(repo: Path, tmp_path: Path) -> None:
    (repo / "runs").mkdir()
    criteria = repo / "runs" / "criteria.yaml"  # runs/ is in the project's .gitignore
    criteria.write_text("metrics:\n  val_score: '>= 0'\n")
    proc, _doc = run_json(repo, "iterate", "--criteria", str(criteria), "--researcher", researcher_command(),
                          "--max-rounds", "1", plan=_better_plan(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_a_criteria_file_with_uncommitted_changes_is_refused(repo: Path) -> None:
    (repo / "criteria.yaml").write_text("metrics:\n  val_score: '>= 0'\n")
    git(repo, "add", "criteria.yaml")
    git(repo, "commit", "-q", "-m", "criteria")
    (repo / "criteria.yaml").write_text("metrics:\n  val_score: '>= 0.5'\n")
    proc = run_loop(repo, "iterate", "--researcher", "sample")
    assert proc.returncode == 2 and "criteria file has uncommitted changes" in proc.stderr, proc.stderr
    assert not (repo / ".spml").exists()


@pytest.mark.parametrize(("command", "message"), [
    ("no-such-checker-xyz --strict", "command not found: no-such-checker-xyz"),
    ("tools/missing.sh", "its program tools/missing.sh does not exist"),
    ("FOO=1 ./data.py", "its program ./data.py is not executable"),
])
def test_a_custom_criterion_whose_program_is_missing_is_refused_before_round_1(
        repo: Path, tmp_path: Path, command: str, message: str) -> None:
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text(f"metrics:\n  val_score: '>= 0'\ncustom:\n  ok: 'true'\n  checker: {json.dumps(command)}\n")
    proc = run_loop(repo, "iterate", "--criteria", str(criteria), "--researcher", "sample")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"spml-loop iterate: error: {criteria}:5: ") and message in proc.stderr, proc.stderr
    assert not (repo / ".spml").exists()


def test_the_template_has_no_custom_commands_and_step_log_criteria_are_advisory() -> None:
    criteria = load_criteria(TEMPLATE)
    ids = {c.id: c.required for c in criteria.items}
    assert not [i for i in ids if i.startswith("custom/")]
    assert ids["observability/keys"] is False and ids["performance/first_step_time"] is False
    assert ids["stability/nan_inf"] is True


def test_nan_inf_without_a_step_log_is_skipped_saying_so(repo: Path, tmp_path: Path) -> None:
    # training logs to runs/metrics.jsonl, not to $SPML_METRICS_LOG: the round has no step log
    set_protocol(repo, "command: python train.py", "command: SPML_METRICS_LOG= python train.py")
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("metrics:\n  val_score: '>= 0'\nstability:\n  nan_inf: true\n")
    proc, _doc = run_json(repo, "iterate", "--criteria", str(criteria), "--researcher", researcher_command(),
                          "--max-rounds", "1", plan=_better_plan(tmp_path))
    (row,) = rows(repo)
    result = {r["id"]: r for r in row["steps"]["criteria"]["results"]}["stability/nan_inf"]
    assert result["status"] == "skip" and result["message"].startswith("no step log"), result


# ---------------------------------------------------------------- 4. odd .spml states

def test_note_when_the_notes_folder_is_a_file_is_exit_2(repo: Path) -> None:
    (repo / ".spml").mkdir()
    (repo / ".spml" / "notes").write_text("not a folder\n")
    proc = run_loop(repo, "note", "hi")
    assert proc.returncode == 2 and ".spml/notes is not a directory" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc, doc = run_json(repo, "note", "hi")
    assert proc.returncode == 2 and doc["ok"] is False


def test_resume_when_the_state_is_a_directory_says_so(repo: Path) -> None:
    (repo / ".spml" / "state.json").mkdir(parents=True)
    proc = run_loop(repo, "run", "--resume")
    assert proc.returncode == 2 and ".spml/state.json is a directory" in proc.stderr, proc.stderr
    assert "nothing to resume" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_repository_without_commits_is_refused_leaving_nothing_to_stage(tmp_path: Path) -> None:
    work = tmp_path / "empty"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "autoresearch-protocol.md").write_text((Path(__file__).parent / "project" /
                                                    "autoresearch-protocol.md").read_text())
    proc = run_loop(work, "run", "--researcher", "sample")
    assert proc.returncode == 2 and "no commits" in proc.stderr, proc.stderr
    git(work, "add", "-A")
    staged = git(work, "diff", "--cached", "--name-only").split()
    assert staged == ["autoresearch-protocol.md"]  # the loop's .spml/ never reaches a user's `git add -A`


def test_status_after_kill_9_says_interrupted(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(dict(BETTER_CONFIG, step_sleep=0.05))},
                                     "strategy": "more steps"}})
    killed = run_loop(repo, "run", "--researcher", researcher_command(), "--max-rounds", "1", plan=plan,
                      env={"SPML_LOOP_KILL_AT": "1:train:running"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    proc = run_loop(repo, "status")
    assert proc.returncode == 0, proc.stderr
    assert "- status: interrupted: round 1 at step train; no loop holds the lock" in proc.stdout, proc.stdout
    assert "interrupted (no loop holds the lock); resume with spml-loop run --resume" in proc.stdout
    assert "running" not in proc.stdout
    proc, doc = run_json(repo, "status")
    assert doc["status"] == "interrupted" and doc["running"] is False
    # what status shows is only a view: the state still resumes
    state = json.loads((repo / ".spml" / "state.json").read_text())
    assert state["status"] == "running"
    resumed = run_loop(repo, "run", "--resume", plan=plan)
    assert resumed.returncode == 0, resumed.stderr


# ---------------------------------------------------------------- 5. messages

def test_a_train_command_that_does_not_exist_says_command_not_found(repo: Path, tmp_path: Path) -> None:
    set_protocol(repo, "command: python train.py", "command: no-such-trainer-xyz")
    proc, _doc = run_json(repo, "run", "--researcher", researcher_command(), "--max-rounds", "1",
                          plan=_better_plan(tmp_path))
    assert proc.returncode == 1, proc.stderr
    (row,) = rows(repo)
    assert row["result"] == "train crashed (exit 127: command not found; see .spml/rounds/0001/train.log)", row
    assert "exit 127: command not found" in row["steps"]["train"]["message"]


def test_an_ignored_file_in_a_fixed_path_names_the_gitignore_line(repo: Path, tmp_path: Path) -> None:
    (repo / "lib").mkdir()
    (repo / "lib" / "__init__.py").write_text("")
    git(repo, "add", "lib")
    git(repo, "commit", "-q", "-m", "lib")
    set_protocol(repo, "files: [train.py, evaluate.py, scoring.py, data.py]",
                 "files: [train.py, evaluate.py, scoring.py, data.py, lib/]")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG), "lib/fast.so": "x"},
                                     "strategy": "a native kernel"}})
    proc, _doc = run_json(repo, "run", "--researcher", researcher_command(), "--max-rounds", "1", plan=plan)
    (row,) = rows(repo)
    message = row["steps"]["compliance"]["message"]
    assert "lib/fast.so" in message and "hidden from `git status` by .gitignore:3 ('*.so')" in message, message
    assert "an exclude rule" not in message
