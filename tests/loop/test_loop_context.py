"""`--context`: the experiment context's Watchdog settings tune the detectors that watch each round's training."""

from __future__ import annotations

import subprocess
from pathlib import Path

from loophelpers import BETTER_CONFIG, config_text, loop_commits, researcher_command, run_json, write_plan

BRANCH = "autoresearch/t1"


def test_watchdog_settings_from_the_context_are_used(repo: Path, tmp_path: Path) -> None:
    context = tmp_path / "experiment-context.md"
    context.write_text("# Context\n\n## Watchdog settings\n\n```yaml\nloss_spike_factor: 4.0\n```\n")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}}})
    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         "--context", str(context), plan=plan)
    assert proc.returncode == 0, proc.stderr
    assert doc["rounds_done"] == 1 and len(loop_commits(repo, BRANCH)) == 1


def test_a_bad_watchdog_block_is_refused_before_any_round(repo: Path, tmp_path: Path) -> None:
    context = tmp_path / "experiment-context.md"
    context.write_text("# Context\n\n## Watchdog settings\n\n```yaml\nloss_spike_factor: [oops\n```\n")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}}})
    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--context", str(context),
                         plan=plan)
    assert proc.returncode == 2
    assert f"{context}:" in proc.stderr and "Watchdog settings" in proc.stderr
    # nothing was started: no loop branch, no loop state
    branches = subprocess.run(["git", "branch", "--list", BRANCH], cwd=repo, capture_output=True, text=True).stdout
    assert branches.strip() == "" and not (repo / ".spml" / "state.json").exists()
