"""``# spml: ignore[ID, ...]`` on a line, ``# spml: ignore-file[ID, ...]`` anywhere in a file.

A bare ``# spml: ignore`` / ``# spml: ignore-file`` silences every rule. IDs
may be prefixes (``OBS`` silences every observability rule), as in
``select``/``ignore`` configuration.
"""

from __future__ import annotations

import io
import re
import tokenize

_DIRECTIVE = re.compile(r"#\s*spml:\s*(ignore-file|ignore)\b(?:\[([^\]]*)\])?", re.I)
ALL = frozenset({"*"})


def _ids(group: str | None) -> frozenset[str]:
    if group is None:
        return ALL
    return frozenset(part.strip().upper() for part in group.split(",") if part.strip()) or ALL


class Suppressions:
    def __init__(self, source: str):
        self.by_line: dict[int, frozenset[str]] = {}
        self.file: frozenset[str] = frozenset()
        if "spml:" not in source:
            return
        # Comments only: a directive inside a string literal is not a directive.
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        except (tokenize.TokenError, SyntaxError, IndentationError):
            return
        for token in tokens:
            if token.type != tokenize.COMMENT:
                continue
            for match in _DIRECTIVE.finditer(token.string):
                ids = _ids(match.group(2))
                if match.group(1).lower() == "ignore-file":
                    self.file = self.file | ids
                else:
                    line = token.start[0]
                    self.by_line[line] = self.by_line.get(line, frozenset()) | ids

    @staticmethod
    def _covers(ids: frozenset[str], rule: str) -> bool:
        return "*" in ids or any(rule == i or rule.startswith(i) for i in ids)

    def suppressed(self, rule: str, line: int) -> bool:
        return self._covers(self.file, rule) or self._covers(self.by_line.get(line, frozenset()), rule)
