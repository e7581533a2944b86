"""Starting or resuming a loop: the preconditions, the branch, the state.

A new loop starts only from a tree that is exactly its base: no Fixed-file
violation, no uncommitted change (bytecode caches inside Fixed paths, which
Python writes on its own, are removed with a note). Otherwise round 1 would
be judged on edits nobody made in round 1.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import gitcmd
from ..errors import InputError
from ..protocol import Protocol
from .experiences import write_history
from .gitops import STATE_EXCLUDE, LoopGit, branch_name, check_branch_name
from .state import LoopPaths, LoopState, save_state


def default_tag(root: Path, pattern: str) -> str:
    stem = time.strftime("%b%d").lower()
    for i in range(1, 1000):
        tag = stem if i == 1 else f"{stem}-{i}"
        if gitcmd.resolve_commit(root, f"refs/heads/{branch_name(pattern, tag)}") is None:
            return tag
    return time.strftime("%Y%m%d-%H%M%S")


def choose_branch(root: Path, protocol: Protocol, tag: str | None) -> tuple[str, str, bool]:
    """(branch, tag, create): the current branch when it matches the protocol's pattern, else a new one."""
    import fnmatch

    current = gitcmd.current_branch(root)
    pattern = protocol.branch
    if tag is None and current is not None and fnmatch.fnmatchcase(current, pattern):
        return current, current.rsplit("/", 1)[-1], False
    tag = tag or default_tag(root, pattern)
    branch = branch_name(pattern, tag)
    check_branch_name(root, branch)
    if branch == current:
        return branch, tag, False
    if gitcmd.resolve_commit(root, f"refs/heads/{branch}") is not None:
        raise InputError(f"branch '{branch}' already exists and is not checked out; the loop never moves a branch it "
                         f"did not create: check it out to continue on it, or pass another --tag", root)
    return branch, tag, True


def precheck_tree(git: LoopGit, protocol: Protocol, base: str, *, resuming: bool = False) -> list[str]:
    """Refuse to start unless the tree is its base (under the protocol); returns notes of what was cleaned."""
    from ..commands.fixed_files import check

    info = gitcmd.repo_info(git.root)
    notes: list[str] = []
    compliance = check(info, protocol.path, protocol.relpath, base, extra_variable=(f"{STATE_EXCLUDE}/",))
    violations = [v for v in compliance.violations if not v.path.startswith(f"{STATE_EXCLUDE}/")]
    bytecode = [v.path for v in violations if v.fixed and set(v.kinds) == {"new"} and "/__pycache__/" in f"/{v.path}"]
    if bytecode:
        for path in bytecode:
            (git.root / path).unlink(missing_ok=True)
        notes.append(f"removed {len(bytecode)} bytecode file(s) inside Fixed paths before starting")
        violations = [v for v in violations if v.path not in bytecode]
    if violations:
        shown = "; ".join(f"{v.path}: {v.reason}" for v in violations[:5])
        more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
        raise InputError(f"the work tree already breaks the protocol against {base[:12]} before any round: "
                         f"{shown}{more}; revert these (or commit them to the base) before starting the loop",
                         protocol.path)
    if not resuming and git.snapshot(base) != git.tree_of(base):
        changed = git.changed_paths(base, git.snapshot(base))
        raise InputError("uncommitted changes in " + ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
                         + ": the loop starts from a clean commit; commit them (they become the base) or stash them",
                         git.root)
    return notes


def new_state(protocol: Protocol, branch: str, tag: str, base: str, max_rounds: int | None,
              researcher: str) -> LoopState:
    return LoopState(branch=branch, tag=tag, protocol=protocol.relpath, metric=protocol.eval_metric,
                     direction=protocol.eval_direction, baseline=protocol.baseline, target=protocol.target,
                     max_rounds=max_rounds or protocol.max_rounds, min_delta=protocol.min_delta,
                     best=protocol.baseline, start_commit=base, researcher=researcher)


def start_new(root: Path, paths: LoopPaths, protocol: Protocol, tag: str | None, max_rounds: int | None,
              researcher: str) -> tuple[LoopState, list[str]]:
    info = gitcmd.repo_info(root)
    if info.head is None:
        raise InputError("the repository has no commits; commit the validated baseline first", root)
    branch, tag, create = choose_branch(root, protocol, tag)
    git = LoopGit(root, branch)
    notes = precheck_tree(git, protocol, info.head)
    if paths.experiences.exists() or paths.results_jsonl.exists():
        raise InputError("experiences from an earlier loop are in .spml/ (experiences.md, results.jsonl); move "
                         ".spml/ away (keep it: it is that loop's record) to start a new loop", paths.dir)
    tracked = gitcmd.split_z(git.git(["ls-files", "-z", "--", STATE_EXCLUDE]))
    if any(p.split("/")[1] in ("state.json", "experiences.md", "results.jsonl", "results.tsv", "rounds")
           for p in tracked if p.count("/") >= 1):
        raise InputError("the loop's own files under .spml/ are tracked by git: a rollback could rewind them; "
                         "`git rm --cached` them and add .spml/ to .gitignore", paths.dir)
    if create:
        git.create_branch(info.head)
        notes.append(f"created branch {branch} at {info.head[:12]}")
    exclude_state_dir(info.git_dir)
    state = new_state(protocol, branch, tag, info.head, max_rounds, researcher)
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.stop.unlink(missing_ok=True)
    save_state(paths, state)
    write_history(paths, state, [], protocol.research_question)
    return state, notes


def exclude_state_dir(git_dir: Path) -> None:
    """``/.spml/`` in ``.git/info/exclude``: a researcher's ``git add -A`` must not stage the loop's state.

    Only the user's own git commands read this file; the loop's checks and
    rollback use the base commit's ``.gitignore`` and exempt ``.spml/`` by name.
    """
    exclude = git_dir / "info" / "exclude"
    try:
        text = exclude.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError:
        return
    if any(line.strip() in ("/.spml/", "/.spml", ".spml/", ".spml") for line in text.splitlines()):
        return
    try:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a", encoding="utf-8") as fh:
            fh.write(("" if not text or text.endswith("\n") else "\n") + "# spml-loop state\n/.spml/\n")
    except OSError:
        pass


def check_resume(root: Path, state: LoopState, protocol: Protocol) -> list[str]:
    """Preconditions of ``--resume``: the branch exists; HEAD is on it unless a round was interrupted."""
    git = LoopGit(root, state.branch)
    notes: list[str] = []
    if git.tip() is None:
        raise InputError(f"the loop's branch {state.branch} does not exist any more; restore it (its last commit "
                         f"is {state.commits[-1] if state.commits else state.start_commit}) and --resume", root)
    in_round = state.current is not None and state.current.step != "done"
    head = git.head_ref()
    if head != git.ref and not in_round:
        shown = head.removeprefix("refs/heads/") if head else "a detached HEAD"
        raise InputError(f"HEAD is on {shown}, not on the loop's branch {state.branch}; run `git checkout "
                         f"{state.branch}` (with a clean tree) and --resume", root)
    if not in_round:
        notes += precheck_tree(git, protocol, git.tip() or "", resuming=False)
    return notes
