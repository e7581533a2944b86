"""``spml diagnose`` end to end on small real CPU pipelines with planted causes.

Each test writes a project (and for code bisection a real git history), runs
the command (in-process through ``cli.main``, or as the console script), and
checks that the report names the planted cause with its evidence, that the
files it promises exist, and that nothing of the user's changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import planted
import pytest
import torch
from helpers import BIN, git

from pytest_spml import proc
from pytest_spml.cli import main
from pytest_spml.diagnose import bisect_code


def diagnose(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["diagnose", "--device", "cpu", "--format", "json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def hypothesis(doc: dict, hid: str) -> dict:
    return next(h for h in doc["hypotheses"] if h["id"] == hid)


def result(doc: dict, rid: str) -> dict:
    return next(r for r in doc["results"] if r["id"] == rid)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the .git folder included) by content hash: any write shows."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def repo_state(repo: Path) -> dict[str, str]:
    """HEAD, refs, index and work-tree status, worktrees, stash (run with GIT_OPTIONAL_LOCKS=0: no index refresh)."""
    return {
        "head": git(repo, "rev-parse", "HEAD").stdout,
        "symbolic": git(repo, "symbolic-ref", "-q", "HEAD", check=False).stdout,
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)").stdout,
        "status": git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored").stdout,
        "worktrees": git(repo, "worktree", "list", "--porcelain").stdout,
        "stash": git(repo, "stash", "list").stdout,
    }


# ------------------------------------------------------------------------------------------------ data corruption


def _train_like_the_user(folder: Path, module: str, log: Path, ckpt: Path, steps: int, every: int) -> None:
    """The user's own training run: a JSONL log and a checkpoint every ``every`` steps."""
    spec = importlib.util.spec_from_file_location(module, folder / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)
    pipeline = mod.Pipeline()
    pipeline.setup(torch.device("cpu"), 0)
    state = pipeline.build()
    ckpt.mkdir()
    with log.open("w") as fh:
        for step, batch in zip(range(steps), pipeline.batches()):
            loss = float(pipeline.train_step(state, batch))
            state.step += 1
            fh.write(json.dumps({"step": step, "loss": loss if loss == loss else "nan"}) + "\n")
            if state.step % every == 0:
                pipeline.save_checkpoint(state, ckpt / f"ckpt_{state.step:04d}.pt")


def test_nan_batch_is_found_saved_and_confirmed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project, out = tmp_path / "project", tmp_path / "incident"
    planted.write_pipeline(project, "pipe_nan", corrupt_step=45)
    log, ckpt = tmp_path / "run.jsonl", tmp_path / "ckpt"
    _train_like_the_user(project, "pipe_nan", log, ckpt, steps=60, every=20)
    evidence_before = tree_digest(tmp_path)
    junit = tmp_path / "report.xml"

    code, doc = diagnose(capsys, "--pipeline", "pipe_nan:Pipeline", "--root", str(project), "--log", str(log),
                         "--checkpoint-dir", str(ckpt), "--checks", "reproduce,data", "--out", str(out),
                         "--junitxml", str(junit))

    assert code == 1
    assert doc["causes"] == ["H-DATA"]
    repro = doc["reproduction"]
    # the log's NaN at step 45 is reproduced from the nearest checkpoint before it, not from scratch
    assert repro["reproduced"] and repro["kind"] == "nan_inf" and repro["step"] == 45
    assert repro["start_step"] == 40 and repro["checkpoint"].endswith("ckpt_0040.pt")
    assert repro["matches_log"] is True
    assert repro["smallest_slice_batches"] == 1  # the checkpoint plus batch 45 alone reproduce it
    batch = doc["batch"]
    assert batch["step"] == 45 and batch["rows_with_nonfinite"] == [5] and batch["inputs_nonfinite"] == 1
    saved = torch.load(batch["saved"], weights_only=False)
    assert torch.isnan(saved[0][5, 2]) and int(torch.isnan(saved[0]).sum()) == 1
    data = hypothesis(doc, "H-DATA")
    assert data["verdict"] == "confirmed" and data["basis"] == "observation" and data["confidence"] <= 0.95
    skip = next(e for e in data["experiments"] if "without batch 45" in e["experiment"])
    assert skip["verdict"] == "supports" and skip["result"].startswith("healthy")
    assert data["fix"]["before"]["nonfinite_from_step"] == 45 and data["fix"]["after"]["healthy"] is True
    # a lower learning rate does not help against a NaN input: the optimizer is ruled out by experiment
    assert hypothesis(doc, "H-OPTIM")["verdict"] == "ruled out"
    assert result(doc, "REPRO")["status"] == "fail" and result(doc, "H-DATA")["status"] == "fail"
    assert result(doc, "H-CODE")["status"] == "skip"

    report = (out / "incident.md").read_text()
    for section in ("## Summary", "## Reproduction", "## Hypotheses and experiments", "## Fix", "## Prevention",
                    "## Rollback", "## Confidence", "ceiling 0.95"):
        assert section in report
    assert "spml diagnose --pipeline pipe_nan:Pipeline" in report and "--checks reproduce" in report
    assert "batch 45" in report and "ckpt_0040.pt" in report
    assert json.loads((out / "incident.json").read_text())["batch"]["step"] == 45
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert any("data corruption" in name for name in cases)
    after = {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith(("incident/", "report.xml"))}
    assert after == evidence_before  # the log, the checkpoints and the project are untouched


def test_loss_spike_batch_is_found_from_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    planted.write_pipeline(project, "pipe_spike", outlier_step=45)  # batch 45: every label shifted by one
    log, ckpt = tmp_path / "run.jsonl", tmp_path / "ckpt"
    _train_like_the_user(project, "pipe_spike", log, ckpt, steps=70, every=20)

    code, doc = diagnose(capsys, "--pipeline", "pipe_spike:Pipeline", "--root", str(project), "--log", str(log),
                         "--checkpoint-dir", str(ckpt), "--checks", "reproduce", "--out", str(tmp_path / "out"))

    assert code == 1
    incident = doc["reproduction"]
    # the run recovered from the spike (mild to the watchdog), yet it is the incident, replayed from step 40
    assert incident["kind"] == "loss_spike" and incident["step"] == 45 and incident["start_step"] == 40
    assert incident["matches_log"] is True and incident["smallest_slice_batches"] == 1
    assert Path(doc["batch"]["saved"]).name == "batch_step45.pt" and Path(doc["batch"]["saved"]).is_file()
    data = hypothesis(doc, "H-DATA")
    # nothing in the batch is NaN or out of range: the tool says what it saw, no more (an advisory, inference)
    assert data["verdict"] == "supported" and data["basis"] == "inference" and data["confidence"] <= 0.70
    assert result(doc, "H-DATA")["blocking"] is False
    assert hypothesis(doc, "H-OPTIM")["verdict"] == "ruled out"


def test_out_of_range_labels_crash_is_traced_to_its_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted.write_pipeline(tmp_path / "project", "pipe_labels", bad_label_step=12)

    code, doc = diagnose(capsys, "--pipeline", str(tmp_path / "project" / "pipe_labels.py") + ":Pipeline",
                         "--steps", "30", "--checks", "reproduce,data", "--out", str(tmp_path / "out"))

    assert code == 1
    repro = doc["reproduction"]
    assert repro["kind"] == "crash" and repro["step"] == 12 and "out of bounds" in repro["detail"]
    assert doc["batch"]["labels_out_of_range"]["rows"] == [7] and doc["batch"]["labels_out_of_range"]["max"] == 4
    data = hypothesis(doc, "H-DATA")
    assert data["verdict"] == "confirmed" and "label(s) outside [0, 4)" in data["summary"]
    scan = data["evidence"]["scan"]
    assert [entry["step"] for entry in scan["labels_out_of_range"]] == [12] and scan["num_classes"] == 4


# ------------------------------------------------------------------------------------------------ code bisection


def _history(repo: Path) -> list[str]:
    """Six commits; the fourth flips the loss's sign. Returns the commit ids, oldest first."""
    repo.mkdir()
    git(repo, "init", "-q")
    shas = []

    def commit(message: str) -> None:
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", message)
        shas.append(git(repo, "rev-parse", "HEAD").stdout.strip())

    planted.write_pipeline(repo, "pipe_code")
    (repo / "README.md").write_text("# blobs\n")
    commit("blobs classifier")
    (repo / "README.md").write_text("# blobs\n\nA classifier.\n")
    commit("docs: describe it")
    (repo / "NOTES.md").write_text("lr 0.05 works\n")
    commit("notes")
    planted.write_pipeline(repo, "pipe_code", sign_flip=True)
    commit("refactor the loss")
    (repo / "NOTES.md").write_text("lr 0.05 works\nhidden 16\n")
    commit("more notes")
    (repo / "README.md").write_text("# blobs\n\nA small classifier.\n")
    commit("docs: wording")
    return shas


@pytest.mark.slow
def test_code_bisection_finds_the_breaking_commit_and_leaves_the_repo_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")  # our own `git status` must not rewrite the index either
    repo = tmp_path / "repo"
    shas = _history(repo)
    git(repo, "branch", "experiment", shas[2])
    (repo / "README.md").write_text("uncommitted edit\n")  # the user's work in progress
    (repo / "scratch.txt").write_text("untracked\n")
    before, files_before = repo_state(repo), tree_digest(repo)

    code, doc = diagnose(capsys, "--pipeline", "pipe_code:Pipeline", "--root", str(repo), "--good", shas[0],
                         "--steps", "30", "--checks", "code", "--out", str(tmp_path / "out"))

    assert code == 1 and doc["causes"] == ["H-CODE"]
    h = hypothesis(doc, "H-CODE")
    bisection = h["evidence"]["bisection"]
    assert bisection["first_bad"] == shas[3]
    assert "refactor the loss" in h["summary"]
    assert bisection["endpoints"]["good"]["verdict"] == "good" and bisection["endpoints"]["bad"]["verdict"] == "bad"
    tested = {t["commit"]: t["verdict"] for t in bisection["tested"]}
    assert tested.get(shas[3]) == "bad" and all(tested[s] == "good" for s in shas[:3] if s in tested)
    # the revert, applied in the clone on top of HEAD, trains healthy again: the fix is validated
    assert bisection["revert"]["validated"] is True and h["fix"]["after"]["verdict"] == "good"
    report = (tmp_path / "out" / "incident.md").read_text()
    assert "(-loss).backward()" in report and f"git revert {shas[3][:12]}" in report
    # nothing of the user's moved: HEAD, branches, index, work tree, worktrees, stash, bisect state, every file
    assert repo_state(repo) == before
    assert tree_digest(repo) == files_before
    assert not (repo / ".git" / "BISECT_LOG").exists()


def test_interrupted_bisection_removes_its_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    repo = tmp_path / "repo"
    shas = _history(repo)
    before, files_before = repo_state(repo), tree_digest(repo)
    work_root = tmp_path / "work"
    work_root.mkdir()
    started: list[subprocess.Popen] = []
    wait = proc.wait

    def interrupted(child: subprocess.Popen, timeout: float | None) -> int | None:
        if started:
            return wait(child, timeout)  # the stop that follows waits for real
        started.append(child)
        raise KeyboardInterrupt  # Ctrl-C while the good commit's run is training

    monkeypatch.setattr(proc, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bisect_code.bisect(repo, repo, "pipe_code:Pipeline", shas[0], shas[-1], config=None, seed=0, device="cpu",
                           steps=30, tolerance=0.1, timeout=60, work_root=str(work_root))

    assert started and all(child.poll() is not None for child in started)  # the run was stopped, not orphaned
    assert list(work_root.iterdir()) == []
    assert repo_state(repo) == before and tree_digest(repo) == files_before


# ------------------------------------------------------------------------------------------------ config


def test_learning_rate_change_is_isolated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    planted.write_pipeline(project, "pipe_cfg")
    good = planted.write_config(project / "good.yaml", {"lr": 0.05, "hidden": 16, "batch_size": 32})
    bad = planted.write_config(project / "bad.yaml", {"lr": 4.0, "hidden": 24, "batch_size": 32})

    code, doc = diagnose(capsys, "--pipeline", "pipe_cfg:Pipeline", "--root", str(project), "--config", str(bad),
                         "--good-config", str(good), "--steps", "60", "--checks", "config",
                         "--out", str(tmp_path / "out"))

    assert code == 1 and "H-CONFIG" in doc["causes"]
    h = hypothesis(doc, "H-CONFIG")
    isolation = h["evidence"]["config"]
    assert isolation["differing"] == ["lr", "hidden"] and isolation["causes"] == ["lr"]
    assert isolation["good_healthy"] and isolation["bad_reproduces"] and not isolation["interaction"]
    trials = {tuple(t["reverted"]): t for t in isolation["trials"]}
    assert trials[("lr",)]["healthy"] and not trials[("hidden",)]["healthy"]
    assert "lr 4 -> 0.05 alone" in h["summary"]
    assert h["fix"]["before"]["healthy"] is False and h["fix"]["after"]["healthy"] is True
    # the mechanism: an optimizer setting (research-level link, so its ceiling is 0.85)
    optim = hypothesis(doc, "H-OPTIM")
    assert optim["verdict"] == "confirmed" and optim["basis"] == "research" and optim["confidence"] <= 0.85
    assert "Set lr: 0.05 in the config." in (tmp_path / "out" / "incident.md").read_text()


# ------------------------------------------------------------------------------------------------ leakage


def test_train_eval_overlap_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted.write_pipeline(tmp_path / "leaky", "pipe_leaky", leak=True)
    planted.write_pipeline(tmp_path / "clean", "pipe_clean")

    code, doc = diagnose(capsys, "--pipeline", "pipe_leaky:Pipeline", "--root", str(tmp_path / "leaky"),
                         "--checks", "leakage", "--out", str(tmp_path / "out-leaky"))
    assert code == 1 and doc["causes"] == ["H-LEAKAGE"]
    leak = hypothesis(doc, "H-LEAKAGE")["evidence"]["leakage"]
    assert leak["eval_examples"] == 256 and leak["overlap"] > 200 and leak["keyed_by"].startswith("content hashes")
    example = leak["examples"][0]
    assert {"train_step", "train_row", "eval_batch", "eval_row"} <= set(example)

    code, doc = diagnose(capsys, "--pipeline", "pipe_clean:Pipeline", "--root", str(tmp_path / "clean"),
                         "--checks", "leakage", "--out", str(tmp_path / "out-clean"))
    assert code == 0 and hypothesis(doc, "H-LEAKAGE")["verdict"] == "ruled out"


# ------------------------------------------------------------------------------------------------ nondeterminism


def test_nondeterminism_from_string_hashing_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    planted.write_pipeline(tmp_path / "project", "pipe_hashed", hashed_labels=True)

    code, doc = diagnose(capsys, "--pipeline", "pipe_hashed:Pipeline", "--root", str(tmp_path / "project"),
                         "--checks", "determinism", "--determinism-steps", "5", "--out", str(tmp_path / "out"))

    assert code == 1 and doc["causes"] == ["H-NONDET"]
    h = hypothesis(doc, "H-NONDET")
    found = h["evidence"]["determinism"]
    assert found["identical"] is False and found["cause"] == "hash_seed"
    assert found["first_difference"]["what"] == "batch"  # the labels (a set's order) differ, not the arithmetic
    assert found["runs"]["hashseed-0"]["param_hash"] == found["runs"]["hashseed-0-again"]["param_hash"]
    assert found["runs"]["hashseed-0"]["param_hash"] != found["runs"]["hashseed-1"]["param_hash"]
    assert "PYTHONHASHSEED" in h["summary"]
    assert not list((tmp_path / "project").glob("__pycache__"))  # child runs wrote no bytecode into the project


def test_healthy_pipeline_exits_0_and_reports_under_spml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    planted.write_pipeline(project, "pipe_healthy")

    code, doc = diagnose(capsys, "--pipeline", "pipe_healthy:Pipeline", "--root", str(project), "--steps", "40",
                         "--data-batches", "40", "--determinism-steps", "5",
                         "--checks", "reproduce,data,leakage,determinism")

    assert code == 0 and doc["causes"] == [] and doc["reproduced"] is False
    assert {r["id"]: r["status"] for r in doc["results"]} == {
        "REPRO": "pass", "H-DATA": "pass", "H-LEAKAGE": "pass", "H-OPTIM": "skip", "H-PRECISION": "skip",
        "H-CODE": "skip", "H-CONFIG": "skip", "H-NONDET": "pass"}
    report = Path(doc["incident_report"])
    assert report.parent.parent.resolve() == (project / ".spml" / "incidents").resolve() and report.is_file()
    assert "Nothing reproduces" in report.read_text()
    assert sorted(p.name for p in project.iterdir()) == [".spml", "pipe_healthy.py"]  # no __pycache__ either


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    planted.write_pipeline(project, "pipe_input")
    (project / "broken.py").write_text("import torch\n\ndef oops(:\n    pass\n")
    (project / "bad.yaml").write_text("lr: 0.1\nhidden: [16\n")
    (project / "unknown.yaml").write_text("lr: 0.1\nlrr: 0.2\n")
    (project / "list.yaml").write_text("- 1\n- 2\n")
    git(project, "init", "-q")
    return project


@pytest.mark.parametrize(("args", "where", "words"), [
    (["--pipeline", "no_such_module:Pipeline"], None, "cannot import"),
    (["--pipeline", "broken:Pipeline"], "broken.py:3", "importing it raised SyntaxError"),
    (["--pipeline", "pipe_input:Missing"], None, "cannot import"),
    (["--pipeline", "pipe_input:Pipeline", "--config", "bad.yaml"], "bad.yaml:3", "not valid YAML"),
    (["--pipeline", "pipe_input:Pipeline", "--config", "unknown.yaml"], "unknown.yaml:2", "does not accept"),
    (["--pipeline", "pipe_input:Pipeline", "--config", "list.yaml"], "list.yaml:1", "must be a mapping"),
    (["--pipeline", "pipe_input:Pipeline", "--config", "missing.yaml"], "missing.yaml", "no such file"),
    (["--pipeline", "pipe_input:Pipeline", "--log", "missing.jsonl"], "missing.jsonl", "no such file"),
    (["--pipeline", "pipe_input:Pipeline", "--checkpoint-dir", "nowhere"], "nowhere", "not a folder"),
    (["--pipeline", "pipe_input:Pipeline", "--good", "no-such-rev"], None, "not a commit"),
    (["--pipeline", "pipe_input:Pipeline", "--checks", "reproduce,bogus"], None, "unknown check"),
    (["--pipeline", "pipe_input:Pipeline", "--checks", "config"], None, "needs --config"),
    (["--pipeline", "pipe_input:Pipeline", "--steps", "0"], None, "--steps must be positive"),
])
def test_bad_input_exits_2_naming_file_and_line(small_project: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, args: list[str], where: str | None,
                                                words: str) -> None:
    monkeypatch.chdir(small_project)
    code = main(["diagnose", "--out", str(small_project.parent / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert words in err
    if where is not None:
        assert where in err


def test_console_script_bad_input_and_help_without_torch(tmp_path: Path) -> None:
    done = subprocess.run([str(BIN / "spml"), "diagnose", "--pipeline", "x:Y", "--log", str(tmp_path / "no.jsonl"),
                           "--format", "json"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["path"] == str(tmp_path / "no.jsonl")
    probe = ("import sys; from pytest_spml.cli import main; code = main(['diagnose', '--help']); "
             "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "0 False"
    assert "Exit codes: 1 when the incident reproduces" in done.stdout
