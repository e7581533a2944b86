"""The autoresearch protocol (``autoresearch-protocol.md``): parse and validate.

The protocol is markdown whose YAML front matter freezes the search before
the loop starts. Every field error is an :class:`InputError` naming the field
and its line, so ``spml fixed-files`` and ``spml-loop`` exit 2 with a reason a
person can act on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .globs import PathMatcher
from .yamlmeta import FrontMatter, read_front_matter

DEFAULT_PROTOCOL = "autoresearch-protocol.md"
DEFAULT_BRANCH = "autoresearch/*"
_DIRECTIONS = {"maximize": "maximize", "max": "maximize", "higher": "maximize",
               "minimize": "minimize", "min": "minimize", "lower": "minimize"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?)?\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}

# Every field the protocol may hold. Unknown keys are refused, naming their
# line: a typo such as `brnach:` must not silently fall back to a default.
KNOWN_FIELDS: dict[tuple[str, ...], tuple[str, ...]] = {
    (): ("research_question", "target", "baseline", "max_rounds", "fixed", "variable", "train", "eval",
         "branch", "min_delta"),
    ("fixed",): ("files", "time_limit", "epoch_limit"),
    ("variable",): ("files", "range"),
    ("train",): ("command",),
    ("eval",): ("command", "metric", "direction"),
}


@dataclass(frozen=True)
class Protocol:
    path: Path
    relpath: str  # protocol path relative to the repository root, POSIX
    research_question: str
    target: float | None
    baseline: float
    max_rounds: int
    fixed_files: tuple[str, ...]
    time_limit_s: float
    epoch_limit: int | None
    variable_files: tuple[str, ...]
    variable_range: Any
    train_command: str
    eval_command: str
    eval_metric: str
    eval_direction: str
    branch: str = DEFAULT_BRANCH
    min_delta: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fixed(self) -> PathMatcher:
        return PathMatcher(self.fixed_files)

    @property
    def variable(self) -> PathMatcher:
        return PathMatcher(self.variable_files)


def parse_duration(value: Any) -> float | None:
    """Seconds from ``300``, ``"90s"``, ``"5m"``, ``"1.5h"`` or ``"00:05:00"``; None if unreadable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    if re.fullmatch(r"\d+:\d{2}(:\d{2})?", value.strip()):
        parts = [int(p) for p in value.strip().split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return float(parts[0] * 3600 + parts[1] * 60 + parts[2])
    match = _DURATION.match(value)
    if not match:
        return None
    unit = (match.group(2) or "s")[0].lower()
    return float(match.group(1)) * _UNIT_SECONDS[unit]


class _Fields:
    """Typed access to front-matter fields; every miss names the field and line."""

    def __init__(self, fm: FrontMatter, path: Path):
        self.fm = fm
        self.path = path

    def _fail(self, keys: tuple[str, ...], message: str) -> InputError:
        return InputError(f"protocol field '{'.'.join(keys)}' {message}", self.path, self.fm.line_of(*keys))

    def get(self, *keys: str, required: bool = True) -> Any:
        node: Any = self.fm.data
        for depth, key in enumerate(keys):
            if not isinstance(node, dict):
                raise self._fail(keys[:depth], "must be a mapping with a '" + key + "' key")
            if key not in node:
                if required:
                    raise self._fail(keys, "is missing")
                return None
            node = node[key]
        if required and node is None:
            raise self._fail(keys, "is empty")
        return node

    def text(self, *keys: str) -> str:
        value = self.get(*keys)
        if not isinstance(value, str) or not value.strip():
            raise self._fail(keys, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def globs(self, *keys: str) -> tuple[str, ...]:
        value = self.get(*keys)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise self._fail(keys, "must be a non-empty list of glob strings relative to the repository root")
        for i, glob in enumerate(value):
            if glob.strip().startswith("/") or glob.strip().startswith(".."):
                raise InputError(
                    f"protocol field '{'.'.join(keys)}' glob {glob!r} must be relative to the repository root",
                    self.path,
                    self.fm.line_of(*keys, str(i)),
                )
        return tuple(v.strip() for v in value)

    def number(self, *keys: str, required: bool = True) -> float | None:
        value = self.get(*keys, required=required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            hint = " or null" if not required else ""
            raise self._fail(keys, f"must be a finite number{hint}, got {value!r}")
        return float(value)

    def check_known(self) -> None:
        for prefix, allowed in KNOWN_FIELDS.items():
            table = self.fm.data if not prefix else self.fm.data.get(prefix[0])
            if not isinstance(table, dict):
                continue
            for key in table:
                if key not in allowed:
                    where = f"under '{prefix[0]}' " if prefix else ""
                    raise InputError(
                        f"unknown protocol field '{'.'.join((*prefix, str(key)))}' {where}(known: {', '.join(allowed)})",
                        self.path, self.fm.line_of(*prefix, str(key)),
                    )


def load_protocol(path: str | Path, repo_root: str | Path | None = None, text: str | None = None) -> Protocol:
    """Read and validate a protocol file; raise :class:`InputError` on any bad field.

    ``text`` parses given content (for example the base commit's copy) while
    errors still name ``path``.
    """
    path = Path(path)
    fm = read_front_matter(path, text)
    f = _Fields(fm, path)
    f.check_known()

    max_rounds = f.get("max_rounds")
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise f._fail(("max_rounds",), f"must be a whole number of rounds >= 1, got {max_rounds!r}")

    time_limit = parse_duration(f.get("fixed", "time_limit"))
    if time_limit is None or not 0 < time_limit < math.inf:
        raise f._fail(("fixed", "time_limit"),
                      f"must be a positive duration such as 300, '5m' or '1h', got {f.get('fixed', 'time_limit')!r}")

    epoch_limit = f.get("fixed", "epoch_limit", required=False)
    if epoch_limit is not None and (isinstance(epoch_limit, bool) or not isinstance(epoch_limit, int) or epoch_limit < 1):
        raise f._fail(("fixed", "epoch_limit"), f"must be a whole number >= 1 or null, got {epoch_limit!r}")

    direction_raw = f.text("eval", "direction")
    direction = _DIRECTIONS.get(direction_raw.lower())
    if direction is None:
        raise f._fail(("eval", "direction"), f"must be 'maximize' or 'minimize', got {direction_raw!r}")

    min_delta = f.number("min_delta", required=False) or 0.0
    if min_delta < 0:
        raise f._fail(("min_delta",), f"must be a number >= 0, got {min_delta!r}")

    branch = f.get("branch", required=False) or DEFAULT_BRANCH
    if not isinstance(branch, str):
        raise f._fail(("branch",), f"must be a branch glob such as 'autoresearch/*', got {branch!r}")

    root = Path(repo_root) if repo_root is not None else path.resolve().parent
    try:
        relpath = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise InputError(f"the protocol must live inside the repository ({root})", path) from None

    return Protocol(
        path=path,
        relpath=relpath,
        research_question=f.text("research_question"),
        target=f.number("target", required=False),
        baseline=f.number("baseline"),  # type: ignore[arg-type]
        max_rounds=max_rounds,
        fixed_files=f.globs("fixed", "files"),
        time_limit_s=time_limit,
        epoch_limit=epoch_limit,
        variable_files=f.globs("variable", "files"),
        variable_range=f.get("variable", "range", required=False),
        train_command=f.text("train", "command"),
        eval_command=f.text("eval", "command"),
        eval_metric=f.text("eval", "metric"),
        eval_direction=direction,
        branch=branch,
        min_delta=float(min_delta),
        raw=fm.data,
    )
