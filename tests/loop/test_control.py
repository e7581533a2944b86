"""The human on the loop: `spml-loop pause`, `unpause` and `note` against a real running loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from loophelpers import BEST_CONFIG, BETTER_CONFIG, BIN, config_text, researcher_command, rows, run_json, run_loop, \
    write_plan

from pytest_spml import loop_cli


def start_loop(repo: Path, plan: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PLAN=str(plan))
    return subprocess.Popen([str(BIN / "spml-loop"), "run", "--researcher", researcher_command(), "--poll", "0.05",
                             *args], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(what, timeout: float = 30.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what.__doc__ or what}")


def state(repo: Path) -> dict:
    try:
        return json.loads((repo / ".spml" / "state.json").read_text())
    except (FileNotFoundError, ValueError):  # not written yet (writes are atomic: never half a file)
        return {}


def calls(plan: Path) -> list[int]:
    path = Path(f"{plan}.calls")
    return [json.loads(line)["round"] for line in path.read_text().splitlines()] if path.exists() else []


def test_pause_between_rounds_then_a_note_reaches_the_next_prompt(repo: Path, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    plan = write_plan(tmp_path, {
        1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "40 steps",
            "shell": [f"while [ ! -e {gate} ]; do sleep 0.05; done"]},
        2: {"write": {"config.json": config_text(BEST_CONFIG)}, "strategy": "80 steps, as the note said"},
    })
    loop = start_loop(repo, plan, "--max-rounds", "2")
    try:
        wait_for(lambda: calls(plan) == [1])
        proc, doc = run_json(repo, "pause", "checking", "the", "logs")
        assert proc.returncode == 0 and doc["requested"] is True and doc["running_pid"] == loop.pid
        assert "finishes the round in progress and waits before the next one" in doc["results"][0]["message"]
        gate.touch()
        # round 1 finishes, then the loop waits: status `paused` in state.json, round 2 not started
        paused = wait_for(lambda: state(repo).get("status") == "paused" and state(repo))
        assert paused["rounds_done"] == 1 and paused["current"] is None and calls(plan) == [1]
        assert paused["stop_reason"] == ("paused with `spml-loop pause` (checking the logs) before round 2; "
                                         "`spml-loop unpause` to go on")
        proc, doc = run_json(repo, "status")
        assert proc.returncode == 0 and doc["status"] == "paused" and doc["stop_reason"] == paused["stop_reason"]
        time.sleep(0.3)  # several polls of the loop: still waiting
        assert calls(plan) == [1] and state(repo)["status"] == "paused"
        again = run_loop(repo, "pause")
        assert again.returncode == 0 and "the loop is already paused" in again.stdout
        proc, doc = run_json(repo, "note", "try", "lr 0.2 with 80 steps")
        assert proc.returncode == 0 and doc["next_round"] == 2 and doc["note"]["text"] == "try lr 0.2 with 80 steps"
        assert doc["paused"] is True and [n["text"] for n in doc["pending_notes"]] == ["try lr 0.2 with 80 steps"]
        proc, doc = run_json(repo, "unpause")
        assert proc.returncode == 0 and doc["released"] is True and doc["paused"] is False
        out, err = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert loop.returncode == 0, err
    assert "paused before round 2: waiting for `spml-loop unpause`" in err and "unpaused after" in err
    first, second = rows(repo)
    assert [first["action"], second["action"]] == ["commit", "commit"]
    # the note went to round 2 only: its prompt, its experiences row, its folder
    prompt_1 = (repo / ".spml/rounds/0001/prompt.md").read_text()
    prompt_2 = (repo / ".spml/rounds/0002/prompt.md").read_text()
    assert "Notes from the human on the loop" not in prompt_1
    assert "## Notes from the human on the loop" in prompt_2 and ") try lr 0.2 with 80 steps\n" in prompt_2
    assert "human note: try lr 0.2 with 80 steps" in second["note"] and "human note" not in first["note"]
    assert "human note: try lr 0.2 with 80 steps" in (repo / ".spml/experiences.md").read_text()
    assert os.listdir(repo / ".spml/notes") == [] and len(os.listdir(repo / ".spml/rounds/0002/notes")) == 1
    assert state(repo)["status"] == "finished"


def test_a_paused_loop_stops_on_sigterm_and_on_a_stop_request(repo: Path, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "40 steps"}})
    proc, doc = run_json(repo, "pause")
    assert proc.returncode == 0 and doc["running_pid"] is None
    assert doc["results"][0]["message"].startswith("no loop is running here; the next `spml-loop run/iterate`")
    # a loop started while a pause is requested waits before its first round
    loop = start_loop(repo, plan)
    try:
        wait_for(lambda: state(repo).get("status") == "paused")
        loop.send_signal(signal.SIGTERM)
        loop.communicate(timeout=30)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert state(repo)["status"] == "interrupted" and state(repo)["rounds_done"] == 0 and calls(plan) == []
    # resumed, still paused; a stop request ends the wait and the loop
    loop = subprocess.Popen([str(BIN / "spml-loop"), "run", "--resume", "--poll", "0.05"], cwd=repo,
                            env=dict(os.environ, PLAN=str(plan)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: state(repo).get("status") == "paused")
        (repo / ".spml" / "stop").touch()
        out, err = loop.communicate(timeout=30)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert state(repo)["status"] == "stopped" and state(repo)["stop_reason"] == "stop requested (.spml/stop)", err
    assert calls(plan) == [] and not (repo / ".spml" / "stop").exists()
    proc, doc = run_json(repo, "unpause")
    assert doc["released"] is True and doc["results"][0]["message"] == "pause request removed (no loop is running here)"
    proc, doc = run_json(repo, "unpause")
    assert doc["released"] is False and doc["results"][0]["message"] == "no pause was requested; nothing to do"


def test_a_note_left_before_the_loop_starts_reaches_round_one(repo: Path, tmp_path: Path) -> None:
    proc, doc = run_json(repo, "note", "the eval is slow; keep steps under 100")
    assert proc.returncode == 0 and doc["next_round"] == 1 and doc["running_pid"] is None
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "40 steps"}})
    run_loop(repo, "run", "--researcher", researcher_command(), "--max-rounds", "1", "--poll", "0.05", plan=plan)
    (row,) = rows(repo)
    assert "human note: the eval is slow; keep steps under 100" in row["note"]
    assert ") the eval is slow; keep steps under 100\n" in (repo / ".spml/rounds/0001/prompt.md").read_text()


def test_an_empty_note_is_exit_2(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert loop_cli.main(["note", "  ", "--repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spml-loop note: error: the note is empty; write what the next researcher should know")
    assert not (repo / ".spml").exists()


def test_the_control_verbs_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    assert loop_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb, text in (("pause", "ask the running loop to wait before its next round"),
                       ("unpause", "let a paused loop go on"),
                       ("note", "leave a note for the next round's researcher")):
        assert f"    {verb}" in out and text in out
    assert loop_cli.main(["note", "--help"]) == 0
    assert "it goes into that round's prompt" in " ".join(capsys.readouterr().out.split())


def test_time_spent_paused_does_not_use_the_budget(repo: Path, tmp_path: Path) -> None:
    """--budget is for rounds: a loop held by `spml-loop pause` longer than its budget still runs the next round."""
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}},
                                 2: {"write": {"config.json": config_text(BEST_CONFIG)}}})
    assert run_json(repo, "pause")[0].returncode == 0  # before round 1: the loop waits at once
    loop = start_loop(repo, plan, "--max-rounds", "2", "--budget", "3s")
    try:
        wait_for(lambda: state(repo).get("status") == "paused")
        time.sleep(4)  # longer than the whole budget
        assert calls(plan) == []
        assert run_json(repo, "unpause")[0].returncode == 0
        out, err = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert loop.returncode == 0, err
    assert calls(plan)[:1] == [1], err  # round 1 ran after the pause; the budget then ends the loop when used
