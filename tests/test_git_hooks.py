"""The git side: the real pre-commit framework and the core.hooksPath shim."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import BIN, EXAMPLE, REPO_ROOT, git

from pytest_spml.hooks import fixed_files as fixed_files_hook


def make_project(path: Path, branch: str = "autoresearch/r1") -> Path:
    shutil.copytree(EXAMPLE, path)
    git(path, "init", "-q", "-b", branch)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "base")
    return path


def edit(path: Path, text: str = "\n# edited\n") -> None:
    with open(path, "a") as fh:
        fh.write(text)


# ------------------------------------------------------------ hook main()s


def test_fixed_files_hook_passes_off_governed_branches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project(tmp_path / "p", branch="main")
    edit(project / "eval" / "evaluate.py")
    git(project, "add", "-A")
    monkeypatch.chdir(project)
    assert fixed_files_hook.main([]) == 0
    out = capsys.readouterr().out
    assert "not enforced: branch 'main' is not governed by the protocol (branch: 'autoresearch/*')" in out


def test_fixed_files_hook_checks_staged_content_on_governed_branch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project(tmp_path / "p")
    monkeypatch.chdir(project)
    edit(project / "eval" / "evaluate.py")  # unstaged: not part of the commit
    edit(project / "model.py")
    git(project, "add", "model.py")
    assert fixed_files_hook.main([]) == 0
    git(project, "add", "eval/evaluate.py")
    assert fixed_files_hook.main([]) == 1
    assert "eval/evaluate.py: FF001 staged content differs from the base [Fixed]" in capsys.readouterr().out


def test_explicit_base_always_enforces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "p", branch="main")
    monkeypatch.chdir(project)
    edit(project / "train.py")
    git(project, "add", "-A")
    assert fixed_files_hook.main([]) == 0
    assert fixed_files_hook.main(["--base", "HEAD"]) == 1


def test_hook_without_protocol_passes_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    git(tmp_path, "init", "-q", "-b", "autoresearch/x")
    (tmp_path / "a.txt").write_text("a")
    git(tmp_path, "add", "-A")
    monkeypatch.chdir(tmp_path)
    assert fixed_files_hook.main([]) == 0
    assert "no protocol at" in capsys.readouterr().out


# ------------------------------------------------------------ core.hooksPath shim


def test_hookspath_shim_blocks_and_allows_commits(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    git(project, "config", "core.hooksPath", str(REPO_ROOT / "hooks"))
    edit(project / "eval" / "evaluate.py", "\naccuracy = 1.0\n")
    edit(project / "configs" / "train.yaml", "\n# wider\n")
    git(project, "add", "-A")
    refused = git(project, "commit", "-qm", "round 1", check=False)
    assert refused.returncode != 0
    assert "eval/evaluate.py: FF001" in refused.stdout + refused.stderr
    git(project, "checkout", "HEAD", "--", "eval/evaluate.py")
    accepted = git(project, "commit", "-qm", "round 1", check=False)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert git(project, "log", "--format=%s").stdout.split("\n")[0] == "round 1"


def test_hookspath_shim_runs_the_plan_gate_on_staged_plans(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", branch="main")
    git(project, "config", "core.hooksPath", str(REPO_ROOT / "hooks"))
    plan = next((project / "docs" / "plans").glob("*.md"))
    plan.write_text(plan.read_text().replace("[INTEGRATION]", ""))
    git(project, "add", "-A")
    refused = git(project, "commit", "-qm", "plan without integration", check=False)
    assert refused.returncode != 0
    assert "PG001" in refused.stdout + refused.stderr


def test_hookspath_shim_passes_bad_input_on_as_exit_2(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    git(project, "config", "core.hooksPath", str(REPO_ROOT / "hooks"))
    (project / "docs" / "plans" / "new plan.md").write_bytes(b"# Plan\n\xff\xfe not utf-8\n")
    git(project, "add", "-A")
    proc = subprocess.run([str(REPO_ROOT / "hooks" / "pre-commit")], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "docs/plans/new plan.md:2: plan is not UTF-8" in proc.stderr


def test_hookspath_shim_explains_missing_spml(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    git(project, "config", "core.hooksPath", str(REPO_ROOT / "hooks"))
    edit(project / "model.py")
    git(project, "add", "-A")
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["git", "commit", "-qm", "x"], cwd=project, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "'spml' is not on PATH" in proc.stderr


# ------------------------------------------------------------ the real pre-commit framework


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("pre-commit", path=str(BIN)) is None:
        pytest.fail("pre-commit is not installed: install the test extra (pip install -e '.[test]')")
    return tmp_path_factory.mktemp("pre-commit-home")


def try_repo(project: Path, home: Path, hook: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never"}
    return subprocess.run([str(BIN / "pre-commit"), "try-repo", str(REPO_ROOT), hook, "--verbose", *extra],
                          cwd=project, capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_pre_commit_plan_gate(tmp_path: Path, pre_commit_home: Path) -> None:
    project = make_project(tmp_path / "p", branch="main")
    ok = try_repo(project, pre_commit_home, "spml-plan-gate", "--all-files")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "spml plan gate" in ok.stdout and "Passed" in ok.stdout
    plan = next((project / "docs" / "plans").glob("*.md"))
    plan.write_text(plan.read_text().replace("[INTEGRATION]", ""))
    git(project, "add", "-A")
    bad = try_repo(project, pre_commit_home, "spml-plan-gate")
    assert bad.returncode == 1
    assert "Failed" in bad.stdout and "PG001" in bad.stdout


@pytest.mark.slow
def test_pre_commit_fixed_files(tmp_path: Path, pre_commit_home: Path) -> None:
    project = make_project(tmp_path / "p")
    edit(project / "model.py")
    git(project, "add", "-A")
    ok = try_repo(project, pre_commit_home, "spml-fixed-files")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    edit(project / "train.py")
    git(project, "add", "-A")
    bad = try_repo(project, pre_commit_home, "spml-fixed-files")
    assert bad.returncode == 1
    assert "train.py: FF001 staged content differs from the base [Fixed]" in bad.stdout
    git(project, "checkout", "-q", "-b", "main")
    elsewhere = try_repo(project, pre_commit_home, "spml-fixed-files")
    assert elsewhere.returncode == 0
    assert "not enforced: branch 'main'" in elsewhere.stdout


@pytest.mark.slow
def test_pre_commit_l0(tmp_path: Path, pre_commit_home: Path) -> None:
    project = make_project(tmp_path / "p", branch="main")
    (project / "loader.py").write_text('import torch\nstate = torch.load("a.pt", weights_only=True)\n')
    git(project, "add", "-A")
    ok = try_repo(project, pre_commit_home, "spml-l0", "--files", "loader.py")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (project / "bad.py").write_text('import torch\nmodel.to("cuda:0")\nbatch = batch.to("cuda:1")\n')
    git(project, "add", "-A")
    bad = try_repo(project, pre_commit_home, "spml-l0", "--files", "bad.py", "loader.py")
    assert bad.returncode == 1
    assert "bad.py:2:10: DEV001 [device]" in bad.stdout
