"""Root-relative glob matching for protocol ``files`` lists.

Protocol globs use gitignore wildcard syntax (``*``, ``**``, ``?``, ``[...]``,
a trailing ``/`` for "this folder and everything in it") but are always
*anchored at the repository root*: ``train.py`` means the file at the top, not
every ``train.py`` in the tree. Translation to regular expressions is
delegated to :mod:`pathspec`, the library black, mypy and others use for
gitignore semantics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_NEVER = "(?!)"  # a regex that matches nothing: an empty glob list


def _anchor(pattern: str) -> str:
    negate = pattern.startswith("!")
    body = pattern[1:] if negate else pattern
    while body.startswith("./"):
        body = body[2:]
    if not body.startswith("/"):
        body = "/" + body
    return ("!" if negate else "") + body


def _clean(patterns: Iterable[str]) -> list[str]:
    return [p.strip() for p in patterns if p and p.strip()]


def compile_globs(patterns: Iterable[str]) -> str | None:
    """One alternation regex for the globs, or None where order matters (negations).

    The result is plain text, so a content-addressed cache can keep it and
    later checks need not import pathspec at all.
    """
    import pathspec

    spec = pathspec.PathSpec.from_lines("gitignore", [_anchor(p) for p in _clean(patterns)])
    regexes = []
    for pattern in spec.patterns:
        if pattern.include is None:
            continue
        if not pattern.include or getattr(pattern, "regex", None) is None:
            return None
        regexes.append(f"(?:{pattern.regex.pattern})")
    source = "|".join(regexes) or _NEVER
    try:
        re.compile(source)
    except re.error:
        return None
    return source


class PathMatcher:
    """Does a repository-relative POSIX path match any of a list of globs?

    A tree of 20,000 paths is matched twice per check, so matching is one
    compiled alternation regex where the globs allow it (no negations), and
    pathspec's ordered matching otherwise.
    """

    def __init__(self, patterns: Iterable[str], regex: str | None = None):
        self.patterns = _clean(patterns)
        self.regex = regex if regex is not None else compile_globs(self.patterns)
        if self.regex is not None:
            compiled = re.compile(self.regex)
            self._match: Callable[[str], bool] = lambda path: compiled.match(path) is not None
        else:
            import pathspec

            spec = pathspec.PathSpec.from_lines("gitignore", [_anchor(p) for p in self.patterns])
            self._match = spec.match_file

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
