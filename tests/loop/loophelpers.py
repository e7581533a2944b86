"""Helpers for the loop's end-to-end tests: a real research repository, real `spml-loop` processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "project"
TORCH_PROJECT = HERE / "torch_project"
RESEARCHER = HERE / "researcher.py"
BIN = Path(sys.executable).parent
GIT_ID = ["-c", "user.name=spml test", "-c", "user.email=test@example.com"]

# What the project scores for a config (deterministic pure-Python training).
BASELINE_CONFIG = {"lr": 0.02, "steps": 10, "step_sleep": 0.0}
BETTER_CONFIG = {"lr": 0.1, "steps": 40, "step_sleep": 0.0}  # val_score ~0.801
WORSE_CONFIG = {"lr": 0.05, "steps": 30, "step_sleep": 0.0}  # ~0.545
BEST_CONFIG = {"lr": 0.2, "steps": 80, "step_sleep": 0.0}  # ~0.993


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *GIT_ID, *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def build_template(source: Path, dest: Path, protocol_edits: dict[str, str] | None = None) -> Path:
    shutil.copytree(source, dest)
    (dest / "gitignore").rename(dest / ".gitignore")
    protocol = dest / "autoresearch-protocol.md"
    text = protocol.read_text()
    for old, new in (protocol_edits or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    protocol.write_text(text)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "baseline")
    return dest


def config_text(config: dict) -> str:
    return json.dumps(config, indent=2) + "\n"


def set_protocol(repo: Path, old: str, new: str) -> None:
    """Edit the protocol and commit it as the new base (before a loop starts)."""
    protocol = repo / "autoresearch-protocol.md"
    text = protocol.read_text()
    assert old in text, old
    protocol.write_text(text.replace(old, new))
    git(repo, "commit", "-q", "-am", f"protocol: {new}")


def write_plan(tmp: Path, plan: dict) -> Path:
    path = tmp / "plan.json"
    path.write_text(json.dumps({str(k): v for k, v in plan.items()}))
    return path


def researcher_command() -> str:
    return f"{sys.executable} {RESEARCHER}"


def run_loop(repo: Path, *args: str, plan: Path | None = None, env: dict | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    if plan is not None:
        full_env["PLAN"] = str(plan)
    full_env.update(env or {})
    return subprocess.run([str(BIN / "spml-loop"), *args], cwd=repo, capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def run_json(repo: Path, *args: str, **kwargs) -> tuple[subprocess.CompletedProcess, dict]:
    proc = run_loop(repo, *args, "--format", "json", **kwargs)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None
    return proc, doc


def rows(repo: Path) -> list[dict]:
    path = repo / ".spml" / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loop_commits(repo: Path, branch: str) -> list[str]:
    """Subjects of the commits on ``branch`` after the baseline commit, oldest first."""
    return git(repo, "log", "--reverse", "--format=%s", f"main..{branch}").splitlines()


def status_porcelain(repo: Path) -> str:
    """`git status` of tracked and untracked (not ignored) files."""
    return git(repo, "status", "--porcelain", "--untracked-files=all")


def make_patch(template: Path, scratch: Path, edits: dict[str, str], strategy: str, name: str) -> Path:
    """A patch against the template's base commit, made by editing a scratch copy."""
    work = scratch / f"scratch-{name}"
    shutil.copytree(template, work)
    for path, text in edits.items():
        (work / path).write_text(text)
    diff = git(work, "diff", "--binary")
    shutil.rmtree(work)
    patch = scratch / f"{name}.patch"
    patch.write_text(f"Strategy: {strategy}\n\n{diff}")
    return patch
