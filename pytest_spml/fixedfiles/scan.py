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

    Starting them before the protocol is parsed lets git walk the tree while
    Python imports and parses; :meth:`outputs` waits for all of them.
    ``protocol_relpath`` also fetches the base commit's copy of the protocol.
    """

    def __init__(self, repo: gitcmd.RepoInfo, base: str, head: str | None, *, staged: bool, use_cache: bool,
                 protocol_relpath: str | None = None):
        self.repo, self.base, self.head, self.staged = repo, base, head, staged
        root = repo.root
        self._outputs: dict[str, bytes] | None = None
        self._protocol_out = b""
        self._procs: dict[str, subprocess.Popen] = {}
        self._optional: dict[str, subprocess.Popen] = {}
        self._shadow: ShadowRepo | None = None
        if not staged:  # the slowest listing goes first
            self._shadow = ShadowRepo(repo, fresh=not use_cache).__enter__()
            try:
                self._shadow.set_base(base)
                self._procs["worktree"] = self._shadow.start([
                    "status", "--porcelain=v2", "-z", "--untracked-files=normal", "--ignored=traditional",
                    "--ignore-submodules=none", "--no-renames",
                ])
            except BaseException:
                self._shadow.__exit__(None, None, None)
                raise
        if protocol_relpath:
            self._optional["protocol"] = gitcmd.start_git(root, ["cat-file", "blob", f"{base}:{protocol_relpath}"])
        self._procs["index"] = gitcmd.start_git(root, ["diff-index", "--cached", "--raw", "-z", "--no-renames", base])
        if head and head != base:
            self._procs["commits"] = gitcmd.start_git(root, ["diff-tree", "-r", "--raw", "-z", "--no-renames", base, head])
            self._procs["log"] = gitcmd.start_git(
                root, ["log", "--no-renames", "--name-only", "-z", "--format=%x01%H", f"{base}..{head}"]
            )
        if self._shadow is not None:
            # The shadow index *is* the base tree, and ls-files takes glob pathspecs.
            self._procs["gitignores"] = self._shadow.start(
                ["ls-files", "-s", "-z", "--", ".gitignore", ":(glob)**/.gitignore"]
            )

    def outputs(self) -> dict[str, bytes]:
        """Wait for every listing (once); a missing protocol at the base is an empty entry."""
        if self._outputs is not None:
            return self._outputs
        try:
            outputs = {name: gitcmd.finish_git(proc, self.repo.root) for name, proc in self._procs.items()}
            outputs["protocol"] = self.protocol_blob()
        finally:
            if self._shadow is not None:
                self._shadow.__exit__(None, None, None)
        self._outputs = outputs
        return outputs

    def protocol_blob(self) -> bytes:
        """The base commit's protocol file (empty when the base lacks it), without waiting for the rest."""
        proc = self._optional.get("protocol")
        if proc is None:
            return b""
        if proc.returncode is None:
            self._protocol_out, _err = proc.communicate()
        return self._protocol_out if proc.returncode == 0 else b""

    def base_gitignores(self) -> dict[str, gitcmd.TreeEntry]:
        """``.gitignore`` files of the base tree (work-tree mode only)."""
        entries = gitcmd.parse_ls_files_stage(self.outputs().get("gitignores", b""), tagged=False)
        return {path: gitcmd.TreeEntry(e.mode, e.sha) for path, e in entries.items()}
