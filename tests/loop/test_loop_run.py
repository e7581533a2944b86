"""`spml-loop run` end to end on a small real research repository (pure-Python training, real git, real processes).

Every test starts a real `spml-loop run` process on a copy of one repository
and judges only what a user sees: the exit code, the JSON document, the
loop's branch, the work tree, and the files under .spml/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from loophelpers import (BEST_CONFIG, BETTER_CONFIG, BIN, WORSE_CONFIG, config_text, git, loop_commits, make_patch,
                         researcher_command, rows, run_json, run_loop, set_protocol, status_porcelain, write_plan)

BRANCH = "autoresearch/t1"


def test_improving_round_is_committed_and_regressing_round_rolled_back_with_its_patch(repo, template, tmp_path):
    patches = tmp_path / "patches"
    patches.mkdir()
    make_patch(template, patches, {"config.json": config_text(BETTER_CONFIG)}, "lr 0.1 for 40 steps", "001-better")
    regress = "    lr = config[\"lr\"] * 0.5\n"
    model = (template / "model.py").read_text().replace("    lr = config[\"lr\"]\n", regress)
    make_patch(template, patches, {"model.py": model}, "halve the learning rate", "002-halve")
    junit = tmp_path / "loop.xml"

    proc, doc = run_json(repo, "run", "--researcher", f"script:{patches}", "--tag", "t1", "--junitxml", str(junit))

    assert proc.returncode == 0, proc.stderr
    assert doc["branch"] == BRANCH and doc["rounds_done"] == 2
    first, second = doc["rounds"]
    assert first["verdict"].startswith("committed") and first["improved"]
    assert 0.80 < first["metric"] < 0.81 and doc["best"] == first["metric"] and doc["best_round"] == 1
    assert second["action"] == "rollback" and second["metric"] < first["metric"] and not second["improved"]
    # one loop commit, naming round, metric and strategy; HEAD on the loop's branch
    subjects = loop_commits(repo, BRANCH)
    assert len(subjects) == 1
    assert "round 1" in subjects[0] and "val_score 0.801477" in subjects[0] and "lr 0.1 for 40 steps" in subjects[0]
    assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == BRANCH
    assert git(repo, "rev-parse", BRANCH).strip() == first["commit"] == doc["best_commit"]
    # the rollback: the work tree is the committed improvement, the rejected diff is kept
    assert status_porcelain(repo) == ""
    assert json.loads((repo / "config.json").read_text())["lr"] == 0.1
    assert "* 0.5" not in (repo / "model.py").read_text()
    patch = repo / second["patch"]
    assert patch.parent.name == "0002" and "lr = config[\"lr\"] * 0.5" in patch.read_text()
    git(repo, "apply", "--check", str(patch))  # the kept patch still applies to the base it was made on
    # the experiences log and the machine-readable history
    experiences = (repo / ".spml" / "experiences.md").read_text()
    assert "- best: 0.801477 (round 1" in experiences and "- rounds: 2 of 5" in experiences
    assert "| Round | Compliance | Result | Verdict | Strategy | Insight | Note |" in experiences
    assert "| 2 | pass | 0.610066 | rolled back | halve the learning rate |" in experiences
    tsv = (repo / ".spml" / "results.tsv").read_text().splitlines()
    assert len(tsv) == 3 and tsv[0].startswith("round\tkind")
    assert [r["round"] for r in rows(repo)] == [1, 2]
    # one JUnit test case per round step
    cases = {c.get("name") for c in ET.parse(junit).getroot().iter("testcase")}
    for n in (1, 2):
        for step in ("researcher", "compliance", "train", "restore", "eval", "verdict"):
            assert any(name.startswith(f"round-{n}/{step} ") for name in cases), (n, step)
    # progress lines on stderr, one per round
    assert "round 1/5 committed" in proc.stderr and "round 2/5 rolled back" in proc.stderr


def test_fixed_file_edit_fails_the_round_before_training(repo, tmp_path):
    evaluate = (repo / "evaluate.py").read_bytes()
    plan = write_plan(tmp_path, {1: {"append": {"evaluate.py": "\nvalue = 1.0\n"},
                                     "write": {"config.json": config_text(BETTER_CONFIG)},
                                     "strategy": "also 'fix' the evaluation"}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)

    assert proc.returncode == 1, proc.stderr  # a round failed a step
    (row,) = doc["rounds"]
    assert row["compliance"] == "violation" and row["action"] == "rollback"
    assert "evaluate.py" in row["result"]
    assert row["steps"]["train"]["status"] == "skip" and row["steps"]["eval"]["status"] == "skip"
    assert not (repo / ".spml" / "rounds" / "0001" / "train.log").exists()
    failed = {r["id"] for r in doc["results"] if r["status"] == "fail"}
    assert "round-1/compliance" in failed
    assert (repo / "evaluate.py").read_bytes() == evaluate and status_porcelain(repo) == ""
    assert loop_commits(repo, BRANCH) == []
    assert "value = 1.0" in (repo / row["patch"]).read_text()


TAMPERING_MODEL = '''
from pathlib import Path

_real_fit = fit


def fit(points, config, log):
    Path("evaluate.py").write_text(
        "import os, json\\nopen(os.environ['SPML_RESULT'], 'w').write(json.dumps({'val_score': 1.0}))\\n")
    return _real_fit(points, config, log)
'''


def test_training_that_rewrites_the_evaluation_is_caught_and_the_evaluation_restored(repo, tmp_path):
    evaluate = (repo / "evaluate.py").read_bytes()
    model = (repo / "model.py").read_text() + TAMPERING_MODEL
    plan = write_plan(tmp_path, {1: {"write": {"model.py": model}, "strategy": "a 'better' model"}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)

    assert proc.returncode == 1
    (row,) = doc["rounds"]
    assert row["compliance"] == "violation (during training)"
    assert row["steps"]["train"]["status"] == "pass"
    assert row["steps"]["restore"]["status"] == "fail" and "evaluate.py" in row["steps"]["restore"]["message"]
    assert row["steps"]["eval"]["status"] == "skip" and row["metric"] is None
    assert (repo / "evaluate.py").read_bytes() == evaluate
    assert loop_commits(repo, BRANCH) == [] and doc["best"] == 0.08


FAKING_MODEL = '''
import json as _json
import os as _os
from pathlib import Path as _Path

_real_fit = fit


def fit(points, config, log):
    fake = _json.dumps({"val_score": 0.999})
    for target in (_os.environ.get("SPML_RESULT"), "checkpoints/result.json", "result.json"):
        if target:
            _Path(target).parent.mkdir(parents=True, exist_ok=True)
            _Path(target).write_text(fake)
    print(fake)
    print("val_score=0.999")
    print("step 999: val_score 0.999")
    return _real_fit(points, config, log)
'''


def test_fake_result_files_and_printed_metric_lines_do_not_count(repo, tmp_path):
    model = (repo / "model.py").read_text() + FAKING_MODEL
    plan = write_plan(tmp_path, {1: {"write": {"model.py": model, "config.json": config_text(WORSE_CONFIG)},
                                     "strategy": "print a great score"}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)

    (row,) = doc["rounds"]
    # result.json at the root is an unignored new file: the round fails compliance after training
    assert row["steps"]["restore"]["status"] == "fail" and "result.json" in row["steps"]["restore"]["message"]
    assert row["metric"] is None and proc.returncode == 1

    # without the stray root file, the eval runs and its own result is the only one that counts
    model = model.replace('"checkpoints/result.json", "result.json"', '"checkpoints/result.json",')
    plan = write_plan(tmp_path, {2: {"write": {"model.py": model, "config.json": config_text(WORSE_CONFIG)},
                                     "strategy": "print a great score"}})
    proc, doc = run_json(repo, "run", "--resume", "--max-rounds", "2", plan=plan)
    row = doc["rounds"][1]
    assert row["steps"]["eval"]["status"] == "pass", row
    train_log = (repo / ".spml" / "rounds" / "0002" / "train.log").read_text()
    assert "val_score=0.999" in train_log  # the fake lines were printed ...
    assert 0.54 < row["metric"] < 0.55  # ... and the genuine evaluation was recorded
    genuine = json.loads(run_eval(repo))["val_score"]
    assert row["metric"] == genuine
    assert row["verdict"].startswith("committed")  # 0.545 beats the protocol baseline 0.08: a real gain


def run_eval(repo: Path) -> str:
    return subprocess.run([sys.executable, "evaluate.py"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_researcher_commits_are_folded_and_history_stays_the_loops(repo, tmp_path):
    plan = write_plan(tmp_path, {
        1: {"write": {"config.json": config_text(BETTER_CONFIG)},
            "shell": ["git add -A config.json && git commit -qm 'researcher: faster lr'"], "strategy": "commit myself"},
        2: {"write": {"config.json": config_text(WORSE_CONFIG)},
            "shell": ["git commit -qam 'researcher: slower'", "git checkout -qb researcher-side"],
            "strategy": "commit and switch branches"},
    })

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "2",
                         plan=plan)

    assert proc.returncode == 0, proc.stderr
    first, second = doc["rounds"]
    assert first["verdict"].startswith("committed") and "folded back" in first["note"]
    assert second["action"] == "rollback" and "folded back" in second["note"] and "researcher-side" in second["note"]
    subjects = loop_commits(repo, BRANCH)
    assert len(subjects) == 1 and subjects[0].startswith("spml-loop round 1:")
    assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == BRANCH
    kept = (repo / ".spml" / "rounds" / "0001" / "researcher-commits.patch").read_text()
    assert "researcher: faster lr" in kept and '"lr": 0.1' in kept
    assert status_porcelain(repo) == "" and json.loads((repo / "config.json").read_text())["lr"] == 0.1


def test_a_round_that_goes_nan_is_stopped_early(repo, tmp_path):
    # a "normalisation" that divides by a variance reaching zero: the loss is NaN from step 8 on
    model = (repo / "model.py").read_text().replace(
        "        log(step, loss)\n", "        log(step, loss if step < 8 else float('nan'))\n")
    slow = {"lr": 0.02, "steps": 400, "step_sleep": 0.02}
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(slow), "model.py": model},
                                     "strategy": "normalise the gradient"}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         "--poll", "0.2", plan=plan)

    (row,) = doc["rounds"]
    train = row["steps"]["train"]
    assert train["status"] == "fail" and train["stopped"] == "watchdog", train
    assert "nan_inf" in row["result"] and row["action"] == "rollback"
    assert row["steps"]["eval"]["status"] == "skip"
    steps_logged = [json.loads(line)["step"] for line in
                    (repo / ".spml" / "rounds" / "0001" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps_logged) < 399  # stopped before the run's last step
    assert proc.returncode == 1 and json.loads((repo / "config.json").read_text())["lr"] == 0.02


def test_target_reached_stops_the_loop(repo, template, tmp_path):
    set_protocol(repo, "target: null", "target: 0.99")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}},
                                 2: {"write": {"config.json": config_text(BEST_CONFIG)}, "strategy": "lr 0.2, 80"},
                                 3: {"write": {"config.json": config_text(WORSE_CONFIG)}}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", plan=plan)

    assert proc.returncode == 0, proc.stderr
    assert doc["rounds_done"] == 2 and doc["status"] == "finished"
    assert doc["stop_reason"].startswith("target reached by round 2")
    assert doc["best"] > 0.99 and len(loop_commits(repo, BRANCH)) == 2
    calls = [json.loads(line)["round"] for line in Path(f"{plan}.calls").read_text().splitlines()]
    assert calls == [1, 2]


def test_max_rounds_reached_and_ties_are_not_improvements(repo, tmp_path):
    set_protocol(repo, "max_rounds: 5", "max_rounds: 2")
    comment = (repo / "model.py").read_text() + "\n# a comment changes nothing the metric sees\n"
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}},
                                 2: {"write": {"model.py": comment}, "strategy": "a comment"},
                                 3: {"write": {"config.json": config_text(BEST_CONFIG)}}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", plan=plan)

    assert proc.returncode == 0
    assert doc["rounds_done"] == 2 and doc["stop_reason"] == "max_rounds reached (2)"
    tie = doc["rounds"][1]
    assert tie["metric"] == doc["rounds"][0]["metric"] and tie["action"] == "rollback"
    assert "a tie is not an improvement" in tie["note"]
    calls = [json.loads(line)["round"] for line in Path(f"{plan}.calls").read_text().splitlines()]
    assert calls == [1, 2]


def test_crashes_of_researcher_training_and_eval_are_recorded_rounds(repo, tmp_path):
    crashing_model = (repo / "model.py").read_text() + "\nraise RuntimeError('bad idea')\n"
    plan = write_plan(tmp_path, {
        1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "exit": 3},
        2: {"write": {"model.py": crashing_model}, "strategy": "import-time crash"},
        3: {"write": {"config.json": '{"lr": 0.1, "steps": 0, "step_sleep": 0.0}\n'}, "strategy": "zero steps"},
        4: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "lr 0.1"},
    })

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "4",
                         plan=plan)

    assert proc.returncode == 1 and doc["rounds_done"] == 4
    researcher, train, evaluation, good = doc["rounds"]
    assert researcher["steps"]["researcher"]["status"] == "error" and "exit 3" in researcher["result"]
    assert train["steps"]["train"]["status"] == "fail" and "bad idea" in train["steps"]["train"]["message"]
    # zero steps: training saves w=b=0 ... a valid (bad) result, not a crash
    assert evaluation["steps"]["eval"]["status"] == "pass" and evaluation["action"] == "rollback"
    assert good["verdict"].startswith("committed")


def test_bad_protocol_exits_2_naming_the_file(repo):
    set_protocol(repo, "max_rounds: 5", "max_rounds: 0")

    proc = run_loop(repo, "run", "--researcher", "true")

    assert proc.returncode == 2
    assert "autoresearch-protocol.md:5:" in proc.stderr and "max_rounds" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo / ".spml" / "state.json").exists()
    assert git(repo, "branch", "--list", "autoresearch/*") == ""


def test_a_dirty_tree_and_a_second_loop_are_refused(repo, tmp_path):
    (repo / "config.json").write_text(config_text(BETTER_CONFIG))
    proc = run_loop(repo, "run", "--researcher", "true")
    assert proc.returncode == 2 and "uncommitted changes in config.json" in proc.stderr
    git(repo, "checkout", "--", "config.json")

    (repo / "evaluate.py").write_text("print('edited')\n")
    proc = run_loop(repo, "run", "--researcher", "true")
    assert proc.returncode == 2 and "evaluate.py" in proc.stderr and "breaks the protocol" in proc.stderr
    git(repo, "checkout", "--", "evaluate.py")

    plan = write_plan(tmp_path, {1: {"sleep": 30}})
    first = subprocess.Popen([str(BIN / "spml-loop"), "run", "--researcher", researcher_command(), "--tag", "t1"],
                             cwd=repo, env={**os.environ, "PLAN": str(plan)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{plan}.calls").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = run_loop(repo, "run", "--resume")
        assert second.returncode == 2 and "another spml-loop holds the lock" in second.stderr
        status = run_loop(repo, "status", "--format", "json")
        doc = json.loads(status.stdout)
        assert doc["running"] is True and doc["current"]["step"] == "researcher"
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    after = json.loads(run_loop(repo, "status", "--format", "json").stdout)
    assert after["running"] is False and after["status"] == "interrupted" and after["rounds_done"] == 0
    assert status_porcelain(repo) == ""


def test_training_past_the_time_limit_is_stopped_and_recorded(repo, tmp_path):
    set_protocol(repo, "time_limit: 30s", "time_limit: 1s")
    slow = {"lr": 0.1, "steps": 400, "step_sleep": 0.05}  # 20 s of training for a 1 s budget
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(slow)}, "strategy": "train longer"}})

    proc, doc = run_json(repo, "run", "--researcher", researcher_command(), "--tag", "t1", "--max-rounds", "1",
                         plan=plan)

    (row,) = doc["rounds"]
    train = row["steps"]["train"]
    assert train["stopped"] == "time limit" and "SIGTERM" in train["message"]
    assert row["result"] == "timeout" and row["action"] == "rollback" and proc.returncode == 1
    assert row["steps"]["eval"]["status"] == "skip"
