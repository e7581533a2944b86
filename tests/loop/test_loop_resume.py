"""kill -9 of `spml-loop run` at every step of a round, then `--resume`: nothing committed or recorded is lost.

The loop kills itself with SIGKILL at a chosen point (SPML_LOOP_KILL_AT=N:STEP,
or N:STEP:running once the step's command has started), which is what a
kill -9 from outside at that moment does, but deterministic.
"""

from __future__ import annotations

import json
import signal

import pytest
from loophelpers import (BETTER_CONFIG, WORSE_CONFIG, config_text, git, loop_commits, researcher_command, rows,
                         run_json, run_loop, status_porcelain, write_plan)

BRANCH = "autoresearch/t1"

POINTS = [
    "1:researcher", "1:researcher:running", "1:compliance", "1:train", "1:train:running", "1:restore",
    "1:eval", "1:eval:running", "1:verdict", "1:commit", "1:record", "2:verdict", "2:rollback", "2:record",
]


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_each_step_then_resume(repo, tmp_path, point):
    better = dict(BETTER_CONFIG, step_sleep=0.05 if point == "1:train:running" else 0.0)
    plan = write_plan(tmp_path, {
        1: {"write": {"config.json": config_text(better)}, "strategy": "lr 0.1",
            "sleep": 1.0 if point == "1:researcher:running" else 0},
        2: {"write": {"config.json": config_text(WORSE_CONFIG)}, "strategy": "lr 0.05"},
    })
    killed = run_loop(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "2",
                      plan=plan, env={"SPML_LOOP_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = json.loads((repo / ".spml" / "state.json").read_text())
    assert state["current"]["step"] == point.split(":")[1]

    proc, doc = run_json(repo, "run", "--resume", plan=plan)

    assert proc.returncode == 0, proc.stderr
    assert "resuming round" in proc.stderr
    assert [r["round"] for r in rows(repo)] == [1, 2]  # every round recorded exactly once
    first, second = doc["rounds"]
    assert first["verdict"].startswith("committed") and 0.80 < first["metric"] < 0.81
    assert second["action"] == "rollback"
    subjects = loop_commits(repo, BRANCH)
    assert len(subjects) == 1 and subjects[0].startswith("spml-loop round 1:")
    assert git(repo, "rev-parse", BRANCH).strip() == first["commit"] == doc["best_commit"]
    assert json.loads((repo / "config.json").read_text())["lr"] == 0.1
    assert status_porcelain(repo) == ""
    table = [line for line in (repo / ".spml" / "experiences.md").read_text().splitlines()
             if line.startswith("| ") and not line.startswith("| Round") and not line.startswith("| ---")]
    assert len(table) == 2
    assert doc["status"] == "finished" and doc["current"] is None
    if point.startswith("1:researcher"):
        calls = [json.loads(line)["round"] for line in (tmp_path / "plan.json.calls").read_text().splitlines()]
        # killed before the command started, or while it ran: the round starts again either way
        assert calls == ([1, 1, 2] if point.endswith(":running") else [1, 2])
        assert "restarted after a crash during the researcher" in first["note"]
    if point.endswith(":running") and point != "1:researcher:running":
        assert "killed the interrupted" in first["note"]
    if point in ("1:compliance", "1:train", "1:restore", "1:train:running", "1:eval", "1:eval:running"):
        assert "finished from the compliance check" in first["note"]
    if point == "2:rollback":
        assert "lr\": 0.05" in (repo / second["patch"]).read_text()
