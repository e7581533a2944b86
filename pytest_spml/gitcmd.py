"""Plain ``git`` plumbing, run as short-lived subprocesses.

We call git directly instead of GitPython: the hooks start on every commit
and ``spml-loop`` runs for days, so start-up cost and long-lived handles both
matter (GitPython is in maintenance mode and leaks in long-lived processes).
All listings use ``-z`` so any file name round-trips exactly.
"""

from __future__ import annotations

import os
import subprocess
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

# Plain classes and namedtuples, not dataclasses: this module loads before the
# git listings start, so its import time is on every hook's critical path.

# Keep user configuration from changing what plumbing prints, never let a
# read-only check take the index lock (a concurrent `git commit` must not
# fail), and never follow `git replace` refs: they can swap the base commit,
# its tree or its history for a forged one.
_ENV_OVERRIDES = {"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0",
                  "GIT_NO_REPLACE_OBJECTS": "1"}


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(_ENV_OVERRIDES)
    return env


def decode_path(raw: bytes) -> str:
    return os.fsdecode(raw)


def run_git(repo: str | Path, args: Sequence[str], *, input: bytes | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> bytes:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=repo, input=input, capture_output=True, env=env or git_env()
        )
    except FileNotFoundError:
        raise InputError("git is not installed or not on PATH; install git to use this command") from None
    if check and proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise InputError(f"git {' '.join(args[:2])} failed: {reason[-1] if reason else 'exit ' + str(proc.returncode)}", repo)
    return proc.stdout


def start_git(repo: str | Path, args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a git listing in the background; pair with :func:`finish_git`."""
    return subprocess.Popen(["git", *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env or git_env())


def finish_git(proc: subprocess.Popen, repo: str | Path) -> bytes:
    out, err = proc.communicate()
    if proc.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()
        args = proc.args[1:3] if isinstance(proc.args, list) else []
        raise InputError(f"git {' '.join(map(str, args))} failed: {reason[-1] if reason else proc.returncode}", repo)
    return out


class RepoInfo:
    """Facts about one repository; ``head`` is None before the first commit."""

    __slots__ = ("root", "git_dir", "objects", "object_format", "head")

    def __init__(self, root: Path, git_dir: Path, objects: Path, object_format: str, head: str | None):
        self.root, self.git_dir, self.objects = root, git_dir, objects
        self.object_format, self.head = object_format, head


def repo_info(start: str | Path = ".") -> RepoInfo:
    """Everything the gates need to know about a repository, in one git call."""
    start = Path(start)
    cwd = start if start.is_dir() else start.parent
    proc = subprocess.run(
        ["git", "rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-path", "objects", "--show-object-format",
         "--verify", "-q", "HEAD^{commit}"],
        cwd=cwd, capture_output=True, env=git_env(),
    )
    lines = os.fsdecode(proc.stdout).splitlines()
    # exit 1 with four lines: a repository whose HEAD has no commit yet
    if proc.returncode not in (0, 1) or len(lines) < 4 or not lines[0]:
        raise InputError("not inside a git repository with a work tree; run this from your project's repository", start)
    root = Path(lines[0])
    objects = Path(lines[2]) if os.path.isabs(lines[2]) else cwd.resolve() / lines[2]
    head = lines[4] if proc.returncode == 0 and len(lines) > 4 else None
    return RepoInfo(root=root, git_dir=Path(lines[1]), objects=objects.resolve(), object_format=lines[3] or "sha1",
                    head=head)


def resolve_commit(repo: str | Path, rev: str) -> str | None:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=repo, capture_output=True, env=git_env()
    )
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def current_branch(repo: str | Path) -> str | None:
    proc = subprocess.run(["git", "symbolic-ref", "--short", "-q", "HEAD"], cwd=repo, capture_output=True, env=git_env())
    return proc.stdout.decode().strip() or None if proc.returncode == 0 else None


TreeEntry = namedtuple("TreeEntry", "mode sha")


def parse_ls_tree(out: bytes) -> dict[str, TreeEntry]:
    """Parse ``git ls-tree -r -z --full-tree`` output."""
    entries: dict[str, TreeEntry] = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")
        mode, _type, sha = meta.split(b" ")
        entries[decode_path(path)] = TreeEntry(mode.decode(), sha.decode())
    return entries


def split_z(out: bytes) -> list[str]:
    return [decode_path(p) for p in out.split(b"\0") if p]


def base_file(repo: str | Path, rev: str, path: str) -> bytes | None:
    """Content of ``path`` in commit ``rev``, or None when the commit has no such file."""
    proc = subprocess.run(["git", "cat-file", "blob", f"{rev}:{path}"], cwd=repo, capture_output=True, env=git_env())
    return proc.stdout if proc.returncode == 0 else None


def tree_gitignores(repo: str | Path, rev: str) -> dict[str, TreeEntry]:
    """The ``.gitignore`` files of commit ``rev``: {path: entry}."""
    records = run_git(repo, ["ls-tree", "-r", "-z", "--full-tree", rev]).split(b"\0")
    return parse_ls_tree(b"\0".join(r for r in records if r.endswith((b"\t.gitignore", b"/.gitignore"))))


def cat_blobs(repo: str | Path, shas: Sequence[str]) -> dict[str, bytes]:
    """Read blobs with one ``git cat-file --batch`` process."""
    if not shas:
        return {}
    out = run_git(repo, ["cat-file", "--batch"], input=("\n".join(shas) + "\n").encode())
    blobs: dict[str, bytes] = {}
    pos = 0
    for sha in shas:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].split(b" ")
        if len(header) < 3:  # "<sha> missing"
            pos = header_end + 1
            continue
        size = int(header[2])
        start = header_end + 1
        blobs[sha] = out[start:start + size]
        pos = start + size + 1
    return blobs
