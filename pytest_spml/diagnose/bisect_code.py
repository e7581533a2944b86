"""Code bisection: ``git bisect run`` between a good and a bad commit, judged by an L1 run at each commit.

It runs in a temporary clone (``git clone --shared``: the user's objects are
read, nothing of the user's is written), so the user's HEAD, branches, index,
working tree, stash and bisect state are never touched, and a run killed with
SIGKILL leaves nothing behind in the user's ``.git``. The clone is deleted on
every exit (errors and Ctrl-C included). Each tested commit is judged in a
fresh interpreter (:mod:`.runner`): code from two commits never shares one
process.

The check at a commit: the pipeline trains ``steps`` steps from scratch with
the fixed seed; it is *bad* when it crashes, goes NaN/Inf, spikes, diverges,
does not learn, or ends with a loss more than ``tolerance`` above the good
commit's; a commit without the pipeline is skipped (exit 125). Both ends are
checked first: a good end that is not healthy, or a bad end that is, leaves
nothing to bisect. The first bad commit's revert is then applied on top of the
bad commit (in the clone) and run: a healthy run validates the fix.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import gitcmd, proc
from ..errors import InputError
from . import runner

PATCH_LINES = 200


def _git_env() -> dict[str, str]:
    """Git in the clone: no LFS downloads (large files are not what a bisection needs), no bytecode."""
    return dict(gitcmd.git_env(), GIT_LFS_SKIP_SMUDGE="1", PYTHONDONTWRITEBYTECODE="1")


@dataclass
class CodeBisection:
    good: str
    bad: str
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_bad: str | None = None
    subject: str = ""
    stat: str = ""
    patch: str = ""
    tested: list[dict[str, Any]] = field(default_factory=list)
    revert: dict[str, Any] | None = None
    log: str = ""
    note: str = ""
    commits_between: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"good": self.good, "bad": self.bad, "first_bad": self.first_bad, "subject": self.subject,
                "stat": self.stat, "endpoints": self.endpoints, "tested": self.tested, "revert": self.revert,
                "note": self.note, "commits_between": self.commits_between}


def _clone_target(target: str, root: Path, top: Path, clone: Path) -> str:
    """The target as seen from inside the clone (a file path moves with the tree; a module name does not)."""
    module, sep, attr = target.rpartition(":") if ":" in target else (target, "", "")
    if not module.endswith(".py"):
        return target
    path = Path(module)
    path = (path if path.is_absolute() else root / path).resolve()
    try:
        inside = path.relative_to(top)
    except ValueError:
        raise InputError(f"--pipeline {target}: the file is outside the repository, so it does not change with the "
                         "commits; put it in the repository to bisect the code", path) from None
    return f"{clone / inside}{sep}{attr}"


def _wait(child: subprocess.Popen, timeout: float | None) -> int | None:
    """The exit status, or None after ``timeout``; Ctrl-C stops the child's whole process group first."""
    try:
        code = proc.wait(child, timeout)
    except KeyboardInterrupt:
        proc.terminate(child, grace=5.0)
        raise
    if code is None:
        proc.terminate(child, grace=5.0)
    return code


class _Work:
    """The temporary clone and its runner spec; removed however the bisection ends."""

    def __init__(self, top: Path, spec: dict[str, Any], work_root: str | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="spml-bisect-", dir=work_root))
        self.clone = self.dir / "repo"
        self.results = self.dir / "results"
        self.spec_base = spec
        self.top = top

    def __enter__(self) -> "_Work":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def git(self, *args: str, check: bool = True) -> str:
        return gitcmd.run_git(self.clone, list(args), check=check, env=_git_env()).decode(errors="replace")

    def checkout(self, sha: str) -> None:
        self.git("-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", sha)

    def spec(self, label: str | None, reference: float | None, mode: str = "check") -> Path:
        spec = dict(self.spec_base, label=label, reference_loss=reference, out_dir=str(self.results), mode=mode)
        path = self.dir / f"spec-{label or 'bisect'}.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        return path

    def run_label(self, label: str, reference: float | None, timeout: float) -> dict[str, Any]:
        """Run the pipeline as the clone is now; the runner's result document."""
        cwd = Path(self.spec_base["root"])
        child = proc.spawn(runner.command(self.spec(label, reference)), cwd=cwd, env=runner.child_env(),
                           log=self.dir / f"{label}.log")
        code = _wait(child, timeout + 30)
        path = self.results / f"{label}.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        tail = (self.dir / f"{label}.log").read_text(errors="replace").strip().splitlines()[-3:]
        ended = proc.describe_exit(code)
        return {"label": label, "verdict": "bad",
                "reason": f"the run ended without a result ({ended}{': ' + ' | '.join(tail) if tail else ''})"}


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    metrics = result.get("metrics") or {}
    return {"commit": result.get("commit"), "verdict": result.get("verdict"), "reason": result.get("reason"),
            "final_loss": metrics.get("final_loss"), "nonfinite_from_step": metrics.get("nonfinite_from_step"),
            "steps": metrics.get("steps")}


def _final(result: dict[str, Any]) -> float | None:
    value = (result.get("metrics") or {}).get("final_loss")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def bisect(top: Path, root: Path, target: str, good: str, bad: str, *, config: dict[str, Any] | None, seed: int,
           device: str, steps: int, tolerance: float, timeout: float, work_root: str | None = None) -> CodeBisection:
    """Find the first commit between ``good`` and ``bad`` (commit ids) whose pipeline run goes bad."""
    top, root = top.resolve(), root.resolve()
    try:
        inside = root.relative_to(top)
    except ValueError:
        raise InputError("the pipeline's folder is outside the repository; run spml diagnose from inside it",
                         root) from None
    result = CodeBisection(good=good, bad=bad)
    count = gitcmd.run_git(top, ["rev-list", "--count", f"{good}..{bad}"]).decode().strip()
    result.commits_between = int(count or 0)
    if result.commits_between == 0:
        raise InputError(f"--bad {bad[:12]} is not a descendant of --good {good[:12]}: nothing to bisect; give "
                         "--good an older commit than --bad", top)
    spec = {"target": "", "root": "", "config": config, "seed": seed, "device": device, "steps": steps,
            "tolerance": tolerance, "timeout": timeout}
    with _Work(top, spec, work_root) as work:
        gitcmd.run_git(work.dir, ["clone", "--quiet", "--shared", "--no-checkout", str(top), str(work.clone)])
        # the user's hooks (a global core.hooksPath) must not run on the clone's checkouts
        work.git("config", "core.hooksPath", os.devnull)
        work.spec_base.update(root=str(work.clone / inside), target=_clone_target(target, root, top, work.clone))
        work.checkout(good)
        good_run = work.run_label("good", None, timeout)
        result.endpoints["good"] = _summary(good_run)
        if good_run.get("verdict") != "good":
            result.note = f"the good commit {good[:12]} is not healthy ({good_run.get('reason')}): nothing to bisect"
            return result
        reference = _final(good_run)
        work.checkout(bad)
        bad_run = work.run_label("bad", reference, timeout)
        result.endpoints["bad"] = _summary(bad_run)
        if bad_run.get("verdict") != "bad":
            result.note = f"the bad commit {bad[:12]} trains as well as the good one: the problem is not in the code " \
                          "between them (look at data, config or environment)"
            return result
        started = work.git("bisect", "start", bad, good)
        if "is the first bad commit" not in started:
            child = proc.spawn(["git", "bisect", "run", *runner.command(work.spec(None, reference))],
                               cwd=work.clone, env=_git_env(),
                               log=work.dir / "bisect.log")
            commits = max(1, result.commits_between)
            code = _wait(child, (timeout + 30) * (math.ceil(math.log2(commits + 1)) + 2))
            output = (work.dir / "bisect.log").read_text(errors="replace")
            if code != 0 or "is the first bad commit" not in output:
                last = [line for line in output.splitlines() if line.strip()][-3:]
                result.note = f"git bisect run did not finish ({proc.describe_exit(code)}): {' | '.join(last)}"
        result.log = work.git("bisect", "log", check=False)
        if not result.note:
            result.first_bad = work.git("rev-parse", "refs/bisect/bad").strip()
        work.git("bisect", "reset", "--quiet", check=False)
        for path in sorted(work.results.glob("*.json")):
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("label") not in ("good", "bad", "revert"):
                result.tested.append(_summary(doc))
        if result.first_bad:
            result.subject = work.git("log", "-1", "--format=%h %s (%an, %ad)", "--date=short",
                                      result.first_bad).strip()
            result.stat = work.git("show", "--stat", "--format=", result.first_bad).strip()
            patch = work.git("show", "--format=", "--patch", result.first_bad).splitlines()
            result.patch = "\n".join(patch[:PATCH_LINES]) + (f"\n... ({len(patch) - PATCH_LINES} more lines)"
                                                             if len(patch) > PATCH_LINES else "")
            result.revert = _validate_revert(work, bad, result.first_bad, reference, timeout, bad_run)
    return result


def _validate_revert(work: _Work, bad: str, first_bad: str, reference: float | None, timeout: float,
                     bad_run: dict[str, Any]) -> dict[str, Any]:
    """Revert the first bad commit on top of the bad one (in the clone) and run: the fix, before and after."""
    work.checkout(bad)
    try:
        work.git("revert", "--no-commit", first_bad)
    except InputError:
        return {"validated": False,
                "why": f"git revert {first_bad[:12]} did not apply on {bad[:12]} (a conflict, or a merge commit)"}
    after = work.run_label("revert", reference, timeout)
    return {"validated": after.get("verdict") == "good", "change": f"git revert {first_bad[:12]}",
            "before": _summary(bad_run), "after": _summary(after), "why": after.get("reason")}
