"""Project settings from ``[tool.spml]`` in the repository's ``pyproject.toml``.

Every default the gates use can be changed there, so a project states its
conventions once for the CLI, the hooks and pytest alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError


DEFAULT_PLAN_GLOBS = ("docs/plans/*.md",)


class SpmlConfig:
    """``[tool.spml]`` settings (a plain class: the hooks load it before git starts)."""

    def __init__(self, root: Path, plans: tuple[str, ...] = DEFAULT_PLAN_GLOBS,
                 protocol: str = "autoresearch-protocol.md"):
        self.root, self.plans, self.protocol = root, plans, protocol

    def plan_files(self) -> list[Path]:
        found: dict[Path, None] = {}
        for glob in self.plans:
            for path in sorted(self.root.glob(glob)):
                if path.is_file():
                    found[path] = None
        return list(found)


def _line_of(text: str, key: str, table: str = "tool.spml") -> int | None:
    """Line of ``key = ...`` inside ``[table]``, for error messages."""
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_table = stripped.replace(" ", "") == f"[{table}]"
        elif in_table and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
    return None


def _check_glob(glob: object, pyproject: Path, line: int | None) -> str:
    if not isinstance(glob, str) or not glob.strip():
        raise InputError(f"[tool.spml] plans entries must be non-empty glob strings, got {glob!r}", pyproject, line)
    if glob.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", glob) or ".." in glob.split("/"):
        raise InputError(f"[tool.spml] plans glob {glob!r} must be relative to the repository root", pyproject, line)
    return glob


def read_pyproject_tool(pyproject: Path) -> tuple[dict, str]:
    """(the ``[tool]`` table, the file's text); unreadable or invalid files are :class:`InputError`."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        text = pyproject.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text ({exc.reason}); save the file as UTF-8", pyproject, line) from None
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})", pyproject) from None
    try:
        tool = tomllib.loads(text).get("tool", {})
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        raise InputError(f"invalid TOML: {exc}", pyproject, int(match.group(1)) if match else None) from None
    return (tool if isinstance(tool, dict) else {}), text


def load_config(root: Path) -> SpmlConfig:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return SpmlConfig(root=root)
    tool, text = read_pyproject_tool(pyproject)
    table = tool.get("spml", {})
    if not isinstance(table, dict):
        raise InputError("[tool.spml] must be a table (a [tool.spml] section with key = value lines)", pyproject,
                         _line_of(text, "spml", table="tool"))
    plans = table.get("plans", list(DEFAULT_PLAN_GLOBS))
    if isinstance(plans, str):
        plans = [plans]
    line = _line_of(text, "plans")
    if not isinstance(plans, list) or not plans:
        raise InputError("[tool.spml] plans must be a non-empty list of glob strings, e.g. [\"docs/plans/*.md\"]",
                         pyproject, line)
    plans = [_check_glob(glob, pyproject, line) for glob in plans]
    protocol = table.get("protocol", "autoresearch-protocol.md")
    if not isinstance(protocol, str) or not protocol.strip():
        raise InputError("[tool.spml] protocol must be a path string relative to the repository root", pyproject,
                         _line_of(text, "protocol"))
    return SpmlConfig(root=root, plans=tuple(plans), protocol=protocol)
