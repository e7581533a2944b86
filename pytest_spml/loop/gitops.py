"""The loop's writes to git: snapshot, commit, fold, roll back. The loop is the only writer of history.

Reading the work tree and restoring it go through the compliance checker's
*shadow* git directory (see :mod:`pytest_spml.fixedfiles.shadow`): its index
is the base tree with no ``assume-unchanged``/``skip-worktree`` bits, its
configuration has no filters and no exclude files. So a researcher who
tampers with ``.git/config``, ``.git/info/*`` or index flags can neither hide
a file from the rejected patch nor keep an edit through a rollback.

Writes to the user's repository are plumbing (``commit-tree``, a
compare-and-swap ``update-ref`` of the loop's own branch, ``reset`` of the
index), run with hooks off. Nothing here ever runs ``git clean``: untracked
files are judged one by one against the *base commit's* ``.gitignore``
rules; ignored outputs (checkpoints, logs) stay, everything else goes.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from .. import gitcmd
from ..errors import InputError
from ..fixedfiles.compliance import BaseIgnoreAnswers, Rules
from ..fixedfiles.rulecache import RuleCache
from ..fixedfiles.shadow import ShadowRepo

STATE_EXCLUDE = ".spml"
_FLAGGED = re.compile(rb"(?:\A|\x00)(?!H |\Z)")  # an `ls-files -v` record whose tag is not plain "H"
# Hooks off for every write: a researcher could plant a reference-transaction hook.
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgSign=false"]
_FALLBACK_IDENT = {"GIT_AUTHOR_NAME": "spml-loop", "GIT_AUTHOR_EMAIL": "spml-loop@localhost",
                   "GIT_COMMITTER_NAME": "spml-loop", "GIT_COMMITTER_EMAIL": "spml-loop@localhost"}


class _ScanLike:
    """What :class:`BaseIgnoreAnswers` needs from a scan: the repository and the base."""

    def __init__(self, repo: gitcmd.RepoInfo, base: str):
        self.repo, self.base = repo, base


class LoopGit:
    """Git operations of one loop on one repository and one branch."""

    def __init__(self, root: Path, branch: str):
        self.root = root
        self.branch = branch
        self.ref = f"refs/heads/{branch}"
        self._ident_env: dict[str, str] | None = None

    # reading --------------------------------------------------------------------------------------------------
    def info(self) -> gitcmd.RepoInfo:
        return gitcmd.repo_info(self.root)

    def git(self, args: list[str], *, input: bytes | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> bytes:
        return gitcmd.run_git(self.root, args, input=input, check=check, env=env)

    def tip(self) -> str | None:
        return gitcmd.resolve_commit(self.root, self.ref)

    def head_ref(self) -> str | None:
        """The branch HEAD points at (``refs/heads/...``), None when detached."""
        out = self.git(["symbolic-ref", "-q", "HEAD"], check=False).decode().strip()
        return out or None

    def tree_of(self, commit: str) -> str:
        return self.git(["rev-parse", f"{commit}^{{tree}}"]).decode().strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self._exit_ok(["merge-base", "--is-ancestor", older, newer])

    def _exit_ok(self, args: list[str]) -> bool:
        import subprocess

        return subprocess.run(["git", *args], cwd=self.root, capture_output=True,
                              env=gitcmd.git_env()).returncode == 0

    def log(self, base: str, tip: str) -> str:
        return self.git(["log", "--format=%h %s", f"{base}..{tip}"], check=False).decode(errors="replace").strip()

    # the branch -----------------------------------------------------------------------------------------------
    def ensure_on_branch(self) -> str | None:
        """Point HEAD at the loop's branch (work tree untouched); the branch HEAD was on when it was elsewhere."""
        current = self.head_ref()
        if current == self.ref:
            return None
        self.git([*_SAFE, "symbolic-ref", "-m", "spml-loop: back to the loop's branch", "HEAD", self.ref])
        return current or "a detached HEAD"

    def create_branch(self, start: str) -> None:
        """Create the loop's branch at ``start`` (refusing to move an existing one) and put HEAD on it."""
        self.git([*_SAFE, "update-ref", "-m", "spml-loop: start", self.ref, start, "0" * len(start)])
        self.git([*_SAFE, "symbolic-ref", "-m", "spml-loop: start", "HEAD", self.ref])

    def move_branch(self, new: str, old: str, why: str) -> None:
        """Compare-and-swap the loop's branch from ``old`` to ``new``: never moves a branch someone else moved."""
        self.git([*_SAFE, "update-ref", "-m", f"spml-loop: {why}", self.ref, new, old])

    def reset_index(self) -> None:
        """The real index to HEAD's tree: drop staged changes and index flags, keep the work tree."""
        listing = self.git(["ls-files", "-v", "-z"])
        # read-tree keeps assume-unchanged / skip-worktree bits: clear them (rarely any, so look first)
        if _FLAGGED.search(listing):
            flagged = [r[2:] for r in listing.split(b"\0") if len(r) > 2 and (r[:1] == b"S" or r[:1].islower())]
            if flagged:
                self.git(["update-index", "--no-assume-unchanged", "--no-skip-worktree", "-z", "--stdin"],
                         input=b"\0".join(flagged) + b"\0", check=False)
        # one-tree --reset keeps the stat data of unchanged entries: no rehash of the whole tree
        self.git([*_SAFE, "read-tree", "--reset", "HEAD"])

    # snapshots and commits -------------------------------------------------------------------------------------
    def snapshot(self, base: str) -> str:
        """The tree of the work tree as the base sees it: tracked files plus untracked ones that are not ignored.

        Built in a copy of the shadow index, with the work tree's ``.gitignore``
        files only (no info/exclude, no flags, no filters). Blobs go to the
        repository's own object store so the tree can be committed.
        """
        info = self.info()
        with ShadowRepo(info) as shadow:
            shadow.set_base(base)
            tmp = tempfile.mkdtemp(prefix="spml-index-")
            try:
                index = Path(tmp) / "index"
                try:
                    shutil.copyfile(shadow.path / "index", index)
                except FileNotFoundError:
                    pass
                env = shadow.env()
                env.update(GIT_INDEX_FILE=str(index), GIT_OBJECT_DIRECTORY=str(info.objects))
                env.pop("GIT_ALTERNATE_OBJECT_DIRECTORIES", None)
                if not index.exists():
                    gitcmd.run_git(self.root, ["read-tree", base], env=env)
                gitcmd.run_git(self.root, ["add", "-A", "--", ".", f":(exclude){STATE_EXCLUDE}"], env=env)
                return gitcmd.run_git(self.root, ["write-tree"], env=env).decode().strip()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def diff(self, old: str, new: str) -> bytes:
        """A binary patch from ``old`` to ``new`` (commits or trees)."""
        return self.git(["diff-tree", "-r", "-p", "--binary", "--full-index", "--no-renames", old, new])

    def changed_paths(self, old: str, new: str) -> list[str]:
        return gitcmd.split_z(self.git(["diff-tree", "-r", "-z", "--name-only", "--no-renames", old, new]))

    def _ident(self) -> dict[str, str]:
        if self._ident_env is None:
            ok = self._exit_ok(["var", "GIT_COMMITTER_IDENT"]) and self._exit_ok(["var", "GIT_AUTHOR_IDENT"])
            self._ident_env = {} if ok else dict(_FALLBACK_IDENT)
        return self._ident_env

    def commit_tree(self, tree: str, parent: str, message: str) -> str:
        env = gitcmd.git_env()
        env.update(self._ident())
        return self.git([*_SAFE, "commit-tree", tree, "-p", parent, "-F", "-"], input=message.encode(),
                        env=env).decode().strip()

    # rollback -------------------------------------------------------------------------------------------------
    def restore(self, base: str, rules: Rules) -> dict[str, list[str]]:
        """Make the work tree equal to ``base``: tracked files rewritten, untracked ones removed unless ignored.

        Untracked files are judged against the base commit's ``.gitignore``
        files: ignored ones (checkpoints, logs) stay, except inside Fixed paths,
        which may not gain files at all. ``.spml/`` (the loop's own state) is
        never touched. Returns {"restored": [...], "removed": [...]}.
        """
        info = self.info()
        removed: list[str] = []
        with ShadowRepo(info) as shadow:
            shadow.set_base(base)
            env = shadow.env()
            # untracked first: a folder may stand where a tracked file must come back
            untracked = gitcmd.split_z(gitcmd.run_git(
                self.root, ["ls-files", "--others", "-z", "--directory", "--no-empty-directory"], env=env))
            ignore = BaseIgnoreAnswers(_ScanLike(info, base), RuleCache(info.git_dir / "spml" / "cache"))  # type: ignore[arg-type]
            for entry in untracked:
                removed.extend(self._remove_untracked(entry, rules, ignore))
            ignore.save()
            # refresh first: entries whose stat data is stale but content equal are not rewritten
            gitcmd.run_git(self.root, ["update-index", "-q", "--refresh"], env=env, check=False)
            changed = gitcmd.split_z(gitcmd.run_git(self.root, ["diff-files", "-z", "--name-only", "--no-renames"],
                                                    env=env))
            if changed:
                gitcmd.run_git(self.root, ["checkout-index", "-f", "-u", "-z", "--stdin"], env=env,
                               input=b"\0".join(os.fsencode(p) for p in changed) + b"\0")
        return {"restored": changed, "removed": removed}

    def _remove_untracked(self, entry: str, rules: Rules, ignore: BaseIgnoreAnswers) -> list[str]:
        folder = entry.endswith("/")
        path = entry.rstrip("/")
        if path == STATE_EXCLUDE or path.startswith(STATE_EXCLUDE + "/"):
            return []
        full = self.root / path
        if folder:
            if not rules.fixed_may_match_under(path) and ignore(path, is_dir=True):
                return []  # a whole output folder the base ignores
            gone: list[str] = []
            for dirpath, dirnames, filenames in os.walk(full, topdown=True, followlinks=False):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in list(dirnames):
                    sub = f"{rel}/{name}"
                    if os.path.islink(os.path.join(dirpath, name)):
                        filenames.append(name)
                        dirnames.remove(name)
                    elif not rules.fixed_may_match_under(sub) and ignore(sub, is_dir=True):
                        dirnames.remove(name)
                for name in filenames:
                    gone.extend(self._remove_untracked(f"{rel}/{name}", rules, ignore))
            _prune_empty(full)
            return gone
        if not rules.is_fixed(path) and ignore(path):
            return []
        try:
            full.unlink()
        except FileNotFoundError:
            return []
        except IsADirectoryError:
            shutil.rmtree(full, ignore_errors=True)
        return [path]


def _prune_empty(folder: Path) -> None:
    """Remove empty folders under (and including) ``folder``, bottom-up, never following links."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for dirpath, _dirnames, _filenames in os.walk(folder, topdown=False, followlinks=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def branch_name(pattern: str, tag: str) -> str:
    """``autoresearch/*`` + ``mar05`` -> ``autoresearch/mar05``; a pattern without ``*`` is the branch itself."""
    return pattern.replace("*", tag, 1) if "*" in pattern else pattern


def check_branch_name(root: Path, name: str) -> None:
    import subprocess

    proc = subprocess.run(["git", "check-ref-format", "--branch", name], cwd=root, capture_output=True,
                          env=gitcmd.git_env())
    if proc.returncode != 0 or any(c in name for c in "*?[") or name.startswith("-"):
        raise InputError(f"'{name}' is not a valid branch name for the loop; pass --tag with letters, digits, '-' "
                         "or '_'")
