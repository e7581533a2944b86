"""Ignore rules as the *base commit's own* ``.gitignore`` files state them.

Work-tree ``.gitignore`` files, ``.git/info/exclude`` and a global excludes
file are all writable by whoever edits the tree, so none of them may decide
which new files are harmless run outputs. Only the base commit's rules do.
"""

from __future__ import annotations

from typing import Mapping

import pathspec


class BaseIgnore:
    """Evaluate gitignore semantics from a ``{folder: .gitignore text}`` map.

    Deeper files override shallower ones, later patterns override earlier
    ones, and nothing under an ignored folder can be re-included, as in git.
    """

    def __init__(self, gitignores: Mapping[str, str]):
        self._specs = {
            folder.strip("/"): pathspec.GitIgnoreSpec.from_lines(text.splitlines())
            for folder, text in gitignores.items()
        }

    def _matches(self, parts: list[str], is_dir: bool) -> bool:
        verdict: bool | None = None
        for depth in range(len(parts)):
            spec = self._specs.get("/".join(parts[:depth]))
            if spec is None:
                continue
            rel = "/".join(parts[depth:]) + ("/" if is_dir else "")
            include = spec.check_file(rel).include
            if include is not None:
                verdict = include
        return bool(verdict)

    def is_ignored(self, path: str, is_dir: bool = False) -> bool:
        parts = [p for p in path.strip("/").split("/") if p]
        if not self._specs or not parts:
            return False
        for i in range(1, len(parts)):
            if self._matches(parts[:i], is_dir=True):
                return True
        return self._matches(parts, is_dir)
