"""Root-relative glob matching for protocol ``files`` lists.

Protocol globs use gitignore wildcard syntax (``*``, ``**``, ``?``, ``[...]``,
a trailing ``/`` for "this folder and everything in it") but are always
*anchored at the repository root*: ``train.py`` means the file at the top, not
every ``train.py`` in the tree. Matching is delegated to :mod:`pathspec`, the
library black, mypy and others use for gitignore semantics.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import pathspec


def _anchor(pattern: str) -> str:
    negate = pattern.startswith("!")
    body = pattern[1:] if negate else pattern
    while body.startswith("./"):
        body = body[2:]
    if not body.startswith("/"):
        body = "/" + body
    return ("!" if negate else "") + body


class PathMatcher:
    """Does a repository-relative POSIX path match any of a list of globs?"""

    def __init__(self, patterns: Iterable[str]):
        self.patterns = [p.strip() for p in patterns if p and p.strip()]
        self._spec = pathspec.PathSpec.from_lines("gitignore", [_anchor(p) for p in self.patterns])
        self._match: Callable[[str], bool] = self._compile_fast_path() or self._spec.match_file

    def _compile_fast_path(self) -> Callable[[str], bool] | None:
        """One alternation regex instead of a Python loop over patterns.

        A tree of 20,000 paths is matched twice per check, so this is the hot
        loop. Only valid without negations (where pattern order matters);
        otherwise pathspec's own ordered matching is used.
        """
        regexes = []
        for pattern in self._spec.patterns:
            if pattern.include is None:
                continue
            if not pattern.include or getattr(pattern, "regex", None) is None:
                return None
            regexes.append(f"(?:{pattern.regex.pattern})")
        if not regexes:
            return lambda path: False
        try:
            combined = re.compile("|".join(regexes))
        except re.error:
            return None
        return lambda path: combined.match(path) is not None

    def __call__(self, path: str) -> bool:
        return self._match(path)

    def may_match_under(self, directory: str) -> bool:
        """Could any pattern match something inside ``directory`` (``a/b``)?

        Conservative: answers True unless every pattern's literal leading
        segments rule the folder out.
        """
        dir_parts = [p for p in directory.strip("/").split("/") if p]
        for pattern in self.patterns:
            if pattern.startswith("!"):
                continue
            parts = [p for p in _anchor(pattern).strip("/").split("/") if p]
            for dpart, ppart in zip(dir_parts, parts):
                if ppart == "**" or any(ch in ppart for ch in "*?["):
                    return True
                if dpart != ppart:
                    break
            else:
                return True
        return False
