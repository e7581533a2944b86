"""Start every git listing a compliance check needs, at once.

This module is deliberately light (git plumbing only): it is imported and
run before anything else, so that git walks the tree while Python imports
the protocol parser and glob matcher.
"""

from __future__ import annotations

import subprocess

from .. import gitcmd
from .shadow import ShadowRepo


class Scan:
    """The git listings one check needs, started at once and in the background.

    Starting them before the rules are loaded lets git walk the tree while
    Python imports and parses; :meth:`outputs` waits for all of them. Only
    what every check needs starts here: every process started competes for
    the same cores as the walk itself.
    """

    def __init__(self, repo: gitcmd.RepoInfo, base: str, head: str | None, *, staged: bool, use_cache: bool):
        self.repo, self.base, self.head, self.staged = repo, base, head, staged
        root = repo.root
        self._outputs: dict[str, bytes] | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._shadow: ShadowRepo | None = None
        if not staged:  # the slowest listing goes first
            self._shadow = ShadowRepo(repo, fresh=not use_cache).__enter__()
            try:
                self._shadow.set_base(base)
                # Two processes, one per core: the stat walk of tracked files
                # (which also refreshes the shadow index, our stat cache) and the
                # walk for paths the base does not have. No exclude rules apply
                # to the second: ignored files are judged later by base rules.
                self._procs["worktree"] = self._shadow.start([
                    "status", "--porcelain=v2", "-z", "--untracked-files=no", "--ignore-submodules=none",
                    "--no-renames",
                ])
                self._procs["untracked"] = self._shadow.start(
                    ["ls-files", "--others", "-z", "--directory", "--no-empty-directory"]
                )
            except BaseException:
                self._shadow.__exit__(None, None, None)
                raise
        self._procs["index"] = gitcmd.start_git(root, ["diff-index", "--cached", "--raw", "-z", "--no-renames", base])
        if head and head != base:
            self._procs["commits"] = gitcmd.start_git(root, ["diff-tree", "-r", "--raw", "-z", "--no-renames", base, head])
            self._procs["log"] = gitcmd.start_git(
                root, ["log", "--no-renames", "--name-only", "-z", "--format=%x01%H", f"{base}..{head}"]
            )

    def outputs(self) -> dict[str, bytes]:
        """Wait for every listing (once)."""
        if self._outputs is not None:
            return self._outputs
        try:
            outputs = {name: gitcmd.finish_git(proc, self.repo.root) for name, proc in self._procs.items()}
        finally:
            if self._shadow is not None:
                self._shadow.__exit__(None, None, None)
        self._outputs = outputs
        return outputs
