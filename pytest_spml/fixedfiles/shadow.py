"""A private git view of the work tree, as the base commit sees it.

Git itself is the fastest and best-tested way to find what differs from a
tree, but the repository's own index and configuration are exactly what a
researcher can tamper with: ``assume-unchanged`` and ``skip-worktree`` bits,
clean/smudge filters, ``.git/info/attributes`` and ``info/exclude``,
``core.fileMode=false``, an fsmonitor that lies. So we ask git through a
*shadow* git directory that shares only the object store:

* its index is read from the base tree by us, with no flag bits;
* its configuration is ours (no filters, file modes on, ctime trusted, no
  fsmonitor, no untracked cache) and system/global config and ``-c``
  injections from the environment are cut off;
* it has no ``info/attributes``, ``info/exclude`` or global excludes file.

The shadow index doubles as a stat cache (like git's own): repeated checks
only re-read files whose inode, size, mtime or ctime changed. ctime cannot be
set back by an unprivileged process, which is what makes the cache sound
against edits; the cache *file* is trusted like any file in ``.git``
(see the README's trust model). ``fresh=True`` skips it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from .. import gitcmd
from ..errors import InputError

# Environment variables through which a caller could inject configuration or
# redirect git away from the shadow directory.
_STRIPPED_ENV_PREFIXES = ("GIT_CONFIG", "GIT_INDEX_FILE", "GIT_DIR", "GIT_WORK_TREE", "GIT_OBJECT_DIRECTORY",
                          "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_ATTR_SOURCE")


def _config_text(shadow: Path, object_format: str) -> str:
    missing = shadow / "none"  # never created: no global excludes or attributes
    lines = [
        "[core]",
        f"\trepositoryformatversion = {1 if object_format != 'sha1' else 0}",
        "\tbare = false",
        "\tfilemode = true",
        "\tsymlinks = true",
        "\ttrustctime = true",
        "\tcheckstat = default",
        "\tignorestat = false",
        "\tfsmonitor = false",
        "\tuntrackedCache = false",
        "\tautocrlf = false",
        "\tsafecrlf = false",
        "\tsparseCheckout = false",
        f"\texcludesFile = {missing}",
        f"\tattributesFile = {missing}",
        "[index]",
        "\tsparse = false",
        "[status]",
        "\tshowUntrackedFiles = normal",
    ]
    if object_format != "sha1":
        lines += ["[extensions]", f"\tobjectformat = {object_format}"]
    return "\n".join(lines) + "\n"


class ShadowRepo:
    """Context manager: a locked shadow git directory for one repository."""

    def __init__(self, repo: gitcmd.RepoInfo, *, fresh: bool = False):
        self.root = repo.root
        self.objects = repo.objects
        self.object_format = repo.object_format
        self._tmp: str | None = None
        if fresh:
            self._tmp = tempfile.mkdtemp(prefix="spml-shadow-")
            self.path = Path(self._tmp)
        else:
            self.path = repo.git_dir / "spml" / "shadow"
        self._lock_fd: int | None = None

    def __enter__(self) -> "ShadowRepo":
        try:
            (self.path / "objects" / "info").mkdir(parents=True, exist_ok=True)
            (self.path / "refs").mkdir(exist_ok=True)
            self._lock_fd = os.open(self.path / "lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise InputError(f"cannot create the shadow git directory ({exc.strerror}); pass --no-cache", self.path) from None
        # Serialise checks of the same repository: they share one shadow index.
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._write_if_changed(self.path / "objects" / "info" / "alternates", f"{self.objects}\n")
        self._write_if_changed(self.path / "config", _config_text(self.path, self.object_format))
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @staticmethod
    def _write_if_changed(path: Path, text: str) -> None:
        try:
            if path.read_text() == text:
                return
        except OSError:
            pass
        path.write_text(text)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV_PREFIXES)}
        env.update(
            GIT_DIR=str(self.path),
            GIT_WORK_TREE=str(self.root),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_ATTR_NOSYSTEM="1",
            GIT_NO_REPLACE_OBJECTS="1",
            GIT_TERMINAL_PROMPT="0",
            LC_ALL="C",
        )
        return env

    def git(self, args: list[str]) -> bytes:
        return gitcmd.run_git(self.root, args, env=self.env())

    def start(self, args: list[str]) -> subprocess.Popen:
        return gitcmd.start_git(self.root, args, env=self.env())

    def set_base(self, base: str) -> None:
        """Point the shadow HEAD and index at ``base``, keeping stat data of unchanged entries."""
        head_file = self.path / "HEAD"
        index = self.path / "index"
        try:
            current = head_file.read_text().strip()
        except OSError:
            current = ""
        if current == base and index.is_file():
            return
        if not current:
            head_file.write_text(base + "\n")  # git needs a HEAD to see a repository here
        # One-tree `read-tree -m` keeps the stat data of entries whose blob is
        # unchanged, so moving the base (each improving round) stays cheap.
        # `-i`: the shadow index is only a stat cache, so a work tree that
        # differs from it must not stop the move ("not uptodate. Cannot merge").
        self.git(["read-tree", "-m", "-i", base] if index.is_file() else ["read-tree", base])
        # HEAD names the index's tree only once the index holds it: a failed or
        # killed move must not leave an old index that claims the new base.
        head_file.write_text(base + "\n")
