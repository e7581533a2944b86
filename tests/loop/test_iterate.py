"""`spml-loop iterate` end to end: rounds judged by compound criteria on a real research repository."""

from __future__ import annotations

import json
import shlex
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from loophelpers import (BEST_CONFIG, BETTER_CONFIG, PROJECT, WORSE_CONFIG, build_template, config_text, git,
                         loop_commits, researcher_command, rows, run_json, run_loop, status_porcelain, write_plan)

from pytest_spml import loop_cli

PY = shlex.quote(sys.executable)


def write_criteria(tmp: Path, text: str, name: str = "criteria.yaml") -> Path:
    # outside the repository: an untracked file in the tree would stop the loop from starting
    path = tmp / name
    path.write_text(text)
    return path


def iterate(repo: Path, criteria: Path, plan: Path, *args: str, **kwargs):  # noqa: ANN201
    return run_json(repo, "iterate", "--criteria", str(criteria), "--researcher", researcher_command(),
                    "--poll", "0.05", *args, plan=plan, **kwargs)


def results_by_id(doc: dict) -> dict[str, dict]:
    return {r["id"]: r for r in doc["results"]}


def review(row: dict) -> dict[str, dict]:
    return {item["id"]: item for item in row["steps"]["criteria"]["results"]}


def nan_model(repo: Path) -> str:
    """model.py logging a NaN loss at step 3; the weights it returns stay finite (the eval passes)."""
    text = (repo / "model.py").read_text()
    assert "        log(step, loss)" in text
    return text.replace("        log(step, loss)", "        log(step, float('nan') if step == 3 else loss)")


def test_commit_rollback_and_accept_follow_the_criteria(repo: Path, tmp_path: Path) -> None:
    criteria = write_criteria(tmp_path, """\
metrics:
  val_score: ">= 0.7"
  near_perfect: {metric: val_score, check: ">= 0.95", required: false}
observability:
  keys: [loss]
stability:
custom:
  checkpoint: "test -f checkpoints/model.json"
""")
    plan = write_plan(tmp_path, {
        1: {"write": {"config.json": config_text(WORSE_CONFIG)}, "strategy": "fewer steps, lower lr"},
        2: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "40 steps at lr 0.1"},
        3: {"write": {"config.json": config_text(BEST_CONFIG)}, "strategy": "80 steps at lr 0.2"},
        4: {"write": {"config.json": config_text(WORSE_CONFIG)}, "strategy": "never reached"},
    })
    junit = tmp_path / "junit.xml"
    proc, doc = iterate(repo, criteria, plan, "--junitxml", str(junit))
    history = rows(repo)
    # the verdicts follow the numbers the eval reported for each round
    assert [r["action"] for r in history] == ["rollback", "accept", "commit"], proc.stderr
    assert history[0]["metric"] < 0.7 <= history[1]["metric"] < 0.95 <= history[2]["metric"]
    # round 1 failed a required criterion: rolled back, its diff kept, the row says why
    assert "required criteria failed: metrics/val_score" in history[0]["note"]
    assert '"steps": 30' in (repo / history[0]["patch"]).read_text()
    # round 2 failed only the advisory criterion: committed, with a note
    assert history[1]["verdict"].startswith("accepted ")
    assert "accepted with a note: advisory criteria failed: metrics/near_perfect" in history[1]["note"]
    assert review(history[1])["metrics/near_perfect"]["status"] == "fail"
    assert review(history[1])["metrics/val_score"]["status"] == "pass"
    # round 3 passed everything: committed, and the loop stopped although the plan had a round 4
    assert all(item["status"] == "pass" for item in review(history[2]).values())
    assert doc["stop_reason"] == "all criteria met by round 3" and doc["criteria_met_round"] == 3
    assert json.loads(git(repo, "show", f"{doc['branch']}:config.json")) == BEST_CONFIG
    subjects = loop_commits(repo, doc["branch"])
    assert len(subjects) == 2 and subjects[0].startswith("spml-loop round 2") and subjects[1].startswith(
        "spml-loop round 3")
    assert status_porcelain(repo) == ""
    # the next researcher reads the review of the last round
    prompt = (repo / ".spml/rounds/0002/prompt.md").read_text()
    assert "# ml-iteration round 2 of 5" in prompt and "[advisory] `metrics/near_perfect`" in prompt
    assert f"FAIL `metrics/val_score`: val_score = {history[0]['metric']:.6g}, needs >= 0.7" in prompt
    # --format json: criteria, per-round results, exit 1 because round 1 failed a required criterion
    assert proc.returncode == 1 and doc["ok"] is False
    assert [c["id"] for c in doc["criteria"]] == ["metrics/val_score", "metrics/near_perfect", "observability/keys",
                                                  "stability/nan_inf", "stability/warnings", "custom/checkpoint"]
    found = results_by_id(doc)
    assert found["round-1/criteria/metrics/val_score"]["status"] == "fail"
    assert found["round-1/criteria/metrics/val_score"]["blocking"] is True
    assert found["round-2/criteria/metrics/near_perfect"]["status"] == "fail"
    assert found["round-2/criteria/metrics/near_perfect"]["blocking"] is False
    assert found["round-3/criteria/custom/checkpoint"]["status"] == "pass"
    assert found["round-3/verdict"]["status"] == "pass"
    assert (repo / doc["criteria_file"]).read_text() == criteria.read_text()
    # JUnit: one test case per round step and criterion; the required failure is a failure, the advisory one not
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = {case.get("name").split(" ")[0]: case for case in suite.iter("testcase")}
    assert cases["round-1/criteria/metrics/val_score"].find("failure") is not None
    assert cases["round-2/criteria/metrics/near_perfect"].find("failure") is None
    assert "advisory" in cases["round-2/criteria/metrics/near_perfect"].find("system-out").text
    assert cases["round-3/criteria/metrics/val_score"].find("failure") is None
    assert "round-2/train" in cases and int(suite.get("failures")) == 1


def test_observability_missing_key_rolls_back(repo: Path, tmp_path: Path) -> None:
    criteria = write_criteria(tmp_path, "metrics:\n  val_score: '>= 0.1'\nobservability:\n  keys: [loss, grad_norm]\n")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "more steps"}})
    proc, doc = iterate(repo, criteria, plan, "--max-rounds", "1")
    (row,) = rows(repo)
    assert row["action"] == "rollback" and proc.returncode == 1
    result = review(row)["observability/keys"]
    assert result["status"] == "fail"
    assert result["message"] == ("grad_norm missing from step records (first: grad_norm at "
                                 ".spml/rounds/0001/metrics.jsonl:1)")
    assert review(row)["metrics/val_score"]["status"] == "pass"
    assert "required criteria failed: observability/keys" in row["note"]


def test_stability_nan_fails_from_the_log_and_from_the_watchdog(repo: Path, tmp_path: Path) -> None:
    criteria = write_criteria(tmp_path, "metrics:\n  val_score: '>= 0.1'\nstability:\n")
    slow = {**BETTER_CONFIG, "steps": 80, "step_sleep": 0.02}
    nan = {"write": {"model.py": nan_model(repo), "config.json": config_text(slow)}, "strategy": "log a NaN"}
    plan = write_plan(tmp_path, {1: nan, 2: nan})
    # without the watchdog, training finishes and the eval passes; the review finds the NaN in the step log
    proc, doc = iterate(repo, criteria, plan, "--max-rounds", "1", "--no-watch")
    (first,) = rows(repo)
    assert first["action"] == "rollback" and first["steps"]["train"]["status"] == "pass"
    assert review(first)["metrics/val_score"]["status"] == "pass"
    assert review(first)["stability/nan_inf"]["message"] == (
        "loss is not finite at step 3 (.spml/rounds/0001/metrics.jsonl:4)")
    # with the watchdog (resumed, one more round), training is stopped early and the criterion fails from its finding
    proc, doc = run_json(repo, "iterate", "--resume", "--max-rounds", "2", "--poll", "0.05", plan=plan)
    second = rows(repo)[1]
    assert second["action"] == "rollback", proc.stderr
    assert second["steps"]["train"]["status"] == "fail" and "nan_inf" in second["steps"]["train"]["message"]
    assert review(second)["stability/nan_inf"]["status"] == "fail"
    assert review(second)["stability/nan_inf"]["message"].startswith("the watchdog stopped training")
    assert review(second)["metrics/val_score"]["status"] == "skip"
    assert loop_commits(repo, doc["branch"]) == []


def test_autograd_warning_in_the_training_output_fails_stability(repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the torch extra: a real autograd warning")
    criteria = write_criteria(tmp_path, "stability:\n  nan_inf: false\n")
    model = (repo / "model.py").read_text() + (
        "\n\nimport torch\n\n_leaf = torch.ones(2, requires_grad=True)\n"
        "_ = (_leaf * 2).grad  # a non-leaf .grad: torch warns that autograd never fills it\n")
    plan = write_plan(tmp_path, {1: {"write": {"model.py": model}, "strategy": "read a non-leaf grad"}})
    proc, doc = iterate(repo, criteria, plan, "--max-rounds", "1")
    (row,) = rows(repo)
    result = review(row)["stability/warnings"]
    assert row["action"] == "rollback" and result["status"] == "fail", proc.stderr
    assert "UserWarning: The .grad attribute of a Tensor that is not a leaf Tensor" in result["message"]
    assert result["message"].startswith("1 autograd warning/anomaly line(s) in the training output; first "
                                        ".spml/rounds/0001/train.log:")


def test_custom_commands_pass_or_fail_the_round(repo: Path, tmp_path: Path) -> None:
    steps_40 = f"{PY} -c \"import json, sys; sys.exit(0 if json.load(open('config.json'))['steps'] >= 40 else 3)\""
    criteria = write_criteria(tmp_path, f"""\
custom:
  enough_steps: {json.dumps(steps_40)}
  sees_the_round: 'test "$SPML_ROUND" -ge 1 && test -s "$SPML_EVAL_METRICS" && test -s "$SPML_TRAIN_LOG"'
""")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(WORSE_CONFIG)}, "strategy": "30 steps"},
                                 2: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "40 steps"}})
    proc, doc = iterate(repo, criteria, plan)
    first, second = rows(repo)
    assert first["action"] == "rollback" and second["action"] == "commit", proc.stderr
    assert review(first)["custom/enough_steps"]["status"] == "fail"
    assert review(first)["custom/enough_steps"]["message"].endswith("exit 3")
    assert review(first)["custom/sees_the_round"]["status"] == "pass"
    assert review(second)["custom/enough_steps"]["status"] == "pass"
    assert (repo / ".spml/rounds/0002/custom-enough_steps.log").exists()
    assert doc["stop_reason"] == "all criteria met by round 2"


def test_a_custom_command_that_edits_the_tree_rolls_the_round_back(repo: Path, tmp_path: Path) -> None:
    criteria = write_criteria(tmp_path, "custom:\n  sneaky: {command: 'echo \"# reviewed\" >> model.py', "
                                        "required: false}\n")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "more steps"}})
    proc, doc = iterate(repo, criteria, plan, "--max-rounds", "1")
    (row,) = rows(repo)
    # even an advisory criterion: what would be committed is no longer what was reviewed
    assert row["action"] == "rollback"
    assert review(row)["custom/sneaky"]["status"] == "error"
    assert "changed the work tree (model.py)" in review(row)["custom/sneaky"]["message"]
    assert "# reviewed" not in (repo / "model.py").read_text() and status_porcelain(repo) == ""
    assert "# reviewed" in (repo / row["patch"]).read_text()


@pytest.mark.parametrize(("text", "line", "message"), [
    ("metrix:\n  a: '>= 1'\n", 1, "unknown criteria section 'metrix' (known: metrics, performance"),
    ("metrics:\n  accuracy: 0.85\n", 2, "criteria field 'metrics.accuracy' must be a comparison such as "
                                        "'>= 0.85', '<= 30s' or '>= 30%' (one of >=, >, <=, <, ==), got 0.85; a bare "
                                        "number has no direction: write '>= 0.85' or '<= 0.85'"),
    ("metrics:\n  accuracy:\n    check: '>= 0.8'\n    requird: false\n", 4,
     "unknown criteria field 'metrics.accuracy.requird' (known: check, required, metric, why)"),
    ("metrics:\n  a: '>= 1'\n  a: '>= 2'\n", 3, "field 'metrics.a' appears twice (first on line 2); keep one"),
    ("performance:\n  mfu: {check: '>= 0.3', from: gpu}\n", 2, "criteria field 'performance.mfu.from' must be one of "
                                                              "eval, log, l1"),
    ("stability:\n  warning_patterns: ['ok', '(']\n", 2, "pattern '(' is not a regular expression"),
    ("custom:\n  x: {command: 'true', timeout: soon}\n", 2, "criteria field 'custom.x.timeout' must be a positive "
                                                           "duration"),
    ("metrics:\n  a: '>= 1'\n  b: [\n", 4, "invalid YAML"),
    ("", 1, "no criteria: the file is empty"),
])
def test_bad_criteria_file_is_exit_2_naming_file_and_line(repo: Path, tmp_path: Path, text: str, line: int,
                                                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    criteria = write_criteria(tmp_path, text)
    code = loop_cli.main(["iterate", "--repo", str(repo), "--criteria", str(criteria), "--researcher", "sample"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"spml-loop iterate: error: {criteria}:{line}: "), err
    assert message in err and "Traceback" not in err
    # refused before the repository was touched
    assert not (repo / ".spml").exists() and git(repo, "branch", "--list", "autoresearch/*") == ""


def test_bad_criteria_with_json_output_is_one_error_document(repo: Path, tmp_path: Path) -> None:
    criteria = write_criteria(tmp_path, "observability:\n  keys: []\n")
    proc = run_loop(repo, "iterate", "--criteria", str(criteria), "--researcher", "sample", "--format", "json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 2 and doc["ok"] is False
    assert doc["error"]["path"] == str(criteria) and doc["error"]["line"] == 2
    assert "criteria field 'observability.keys' must be a non-empty list" in doc["error"]["message"]


def test_resume_judges_by_the_saved_criteria_and_refuses_a_run_loop(repo: Path, tmp_path: Path) -> None:
    criteria = write_criteria(tmp_path, "metrics:\n  val_score: '>= 0.95'\n")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "40 steps"},
                                 2: {"write": {"config.json": config_text(BEST_CONFIG)}, "strategy": "80 steps"}})
    iterate(repo, criteria, plan, "--max-rounds", "1")
    criteria.write_text("metrics:\n  val_score: '>= 0.1'\n")  # edited after the start: the loop keeps its copy
    proc, doc = run_json(repo, "iterate", "--resume", "--max-rounds", "2", "--poll", "0.05", plan=plan)
    first, second = rows(repo)
    assert first["action"] == "rollback" and second["action"] == "commit", proc.stderr
    assert review(second)["metrics/val_score"]["message"].endswith("(>= 0.95)")
    # a loop started by `spml-loop run` is not resumed as an ml-iteration loop
    other = tmp_path / "other"
    build_template(PROJECT, other)
    run_loop(other, "run", "--researcher", researcher_command(), "--max-rounds", "1", "--poll", "0.05", plan=plan)
    refused = run_loop(other, "iterate", "--resume")
    assert refused.returncode == 2
    assert "this loop was started by `spml-loop run` (no .spml/criteria.yaml); resume it with `spml-loop run " \
           "--resume`" in refused.stderr


# ------------------------------------------------------------------------------------------------ performance

L1_PIPELINE = Path(__file__).resolve().parents[1] / "l1" / "mlp_pipeline.py"


@pytest.fixture
def perf_repo(tmp_path: Path) -> Path:
    """The research repository with a step time in its step log and a real L1 check (`pytest --spml-l1`)."""
    source = tmp_path / "perf-source"
    import shutil

    shutil.copytree(PROJECT, source)
    train = source / "train.py"
    text = train.read_text()
    old = '        log_file.write(json.dumps({"step": step, "loss": loss}) + "\\n")\n'
    assert old in text
    train.write_text(text.replace(old, (
        '        now = time.perf_counter()\n'
        '        log_file.write(json.dumps({"step": step, "loss": loss, "step_time_s": now - last[0]}) + "\\n")\n'
        '        last[0] = now\n')).replace("with open(metrics", "last = [time.perf_counter()]\nwith open(metrics"))
    (source / "l1check").mkdir()
    shutil.copy(L1_PIPELINE, source / "l1check" / "mlp_pipeline.py")
    (source / "l1check" / "test_l1.py").write_text("from pytest_spml.l1 import l1_tests\n\ntest_spml_l1 = l1_tests()\n")
    # a peak FLOP/s for the CPU so L1 reports an MFU; ten steps keep it quick
    (source / "pytest.ini").write_text("[pytest]\nspml_l1_pipeline = mlp_pipeline:MLPPipeline\nspml_l1_steps = 10\n"
                                       "spml_peak_flops = 1e9\n")
    return build_template(source, tmp_path / "perf-repo")


def test_performance_from_the_step_log_and_a_fresh_l1_report(perf_repo: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="needs the torch extra: a real L1 run")
    # L1's own 1% MFU floor is no test of this loop on a shared CPU: deselected; the report still has the MFU
    l1 = f"{PY} -m pytest -q -p no:cacheprovider --spml-l1 --spml-l1-device cpu -k 'not MFU' l1check"
    criteria = write_criteria(tmp_path, f"""\
performance:
  first_step_time: "<= 60s"
  step_time: "<= 10s"
  samples_per_s: {{check: "> 0", from: l1}}
  mfu: {{check: "> 0", from: l1}}
  tca: {{check: ">= 50%", from: l1, required: false}}
custom:
  l1: {json.dumps(l1)}
""")
    plan = write_plan(tmp_path, {1: {"write": {"config.json": config_text(BETTER_CONFIG)}, "strategy": "40 steps"}})
    proc, doc = iterate(perf_repo, criteria, plan, "--max-rounds", "1")
    (row,) = rows(perf_repo)
    found = review(row)
    assert row["action"] == "accept", (proc.stderr, found)
    first = json.loads((perf_repo / ".spml/rounds/0001/metrics.jsonl").read_text().splitlines()[0])
    assert found["performance/first_step_time"]["status"] == "pass"
    assert found["performance/first_step_time"]["value"] == first["step_time_s"]
    assert found["performance/step_time"]["message"].endswith("(median of 40 values of step_time_s)")
    report = json.loads((perf_repo / ".spml/l1-report.json").read_text())
    assert found["performance/mfu"]["value"] == report["measurements"]["mfu"] > 0
    assert found["performance/samples_per_s"]["value"] == report["measurements"]["samples_per_s"]
    # a CPU has no tensor-core activity: the advisory criterion fails and the round is accepted with a note
    assert found["performance/tca"]["status"] == "fail"
    assert found["performance/tca"]["message"].startswith("the L1 report has no tca (measured on ")
    assert "advisory criteria failed: performance/tca" in row["note"]
    assert status_porcelain(perf_repo) == ""


def test_an_l1_report_from_before_the_round_does_not_count(repo: Path, tmp_path: Path) -> None:
    import os
    import time

    from pytest_spml.loop.criteria import CriteriaJudge, load_criteria
    from pytest_spml.loop.judge import Outcome
    from pytest_spml.loop.state import LoopPaths

    criteria = load_criteria(write_criteria(tmp_path, "performance:\n  mfu: '>= 0.3'\n"))
    report = repo / ".spml" / "l1-report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"measurements": {"mfu": 0.5}, "step_times_s": [1.0]}))
    judge = CriteriaJudge(criteria, repo, LoopPaths(repo), "maximize")
    outcome = Outcome(1, True, metric=0.5, metrics={"val_score": 0.5})
    os.utime(report, (time.time() - 3600, time.time() - 3600))
    (stale,) = judge.review(outcome, started=time.time())
    assert stale.status == "fail" and stale.message.startswith(".spml/l1-report.json was not written during this round")
    os.utime(report, None)
    (fresh,) = judge.review(outcome, started=time.time() - 60)
    assert fresh.status == "pass" and fresh.value == 0.5
