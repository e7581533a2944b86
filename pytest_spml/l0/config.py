"""``[tool.spml.l0]`` in pyproject.toml: which rules run, how severe, where.

    [tool.spml.l0]
    select = ["DEV", "PRC", "OPT001"]   # ids or prefixes; default: every rule
    ignore = ["ADV007"]
    exclude = ["third_party/**"]         # paths never linted
    [tool.spml.l0.severity]              # overrides: "error" or "advisory"
    ADV001 = "error"
    [tool.spml.l0.per-file-ignores]
    "scripts/*.py" = ["OBS"]
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .model import SEVERITIES


@dataclass(frozen=True)
class L0Config:
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    severity: dict[str, str] = field(default_factory=dict)
    per_file_ignores: dict[str, tuple[str, ...]] = field(default_factory=dict)
    root: Path | None = None

    def enabled(self, rule: str) -> bool:
        if self.select and not any(rule.startswith(s) for s in self.select):
            return False
        return not any(rule.startswith(i) for i in self.ignore)

    def severity_of(self, rule: str, default: str) -> str:
        return self.severity.get(rule, default)

    def relative(self, path: Path) -> str:
        if self.root is not None:
            try:
                return path.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                pass
        return path.as_posix()

    def excluded(self, path: Path) -> bool:
        rel = self.relative(path)
        return any(fnmatch.fnmatch(rel, glob) for glob in self.exclude)

    def ignored_here(self, rule: str, path: Path) -> bool:
        rel = self.relative(path)
        return any(fnmatch.fnmatch(rel, glob) and any(rule.startswith(i) for i in ids)
                   for glob, ids in self.per_file_ignores.items())


def _strings(value: object, where: str, pyproject: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InputError(f"[tool.spml.l0] {where} must be a list of strings", pyproject)
    return tuple(v.strip().upper() if where in ("select", "ignore") else v.strip() for v in value)


def load_l0_config(root: Path | None) -> L0Config:
    """Read ``[tool.spml.l0]`` from ``root/pyproject.toml``; defaults when absent."""
    if root is None or not (root / "pyproject.toml").is_file():
        return L0Config(root=root)
    from ..config import read_pyproject_tool

    tool, _text = read_pyproject_tool(root / "pyproject.toml")
    table = tool.get("spml", {})
    table = table.get("l0", {}) if isinstance(table, dict) else {}
    pyproject = root / "pyproject.toml"
    if not isinstance(table, dict):
        raise InputError("[tool.spml.l0] must be a table", pyproject)
    known = {"select", "ignore", "exclude", "severity", "per-file-ignores"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InputError(f"[tool.spml.l0] unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})", pyproject)
    severity = table.get("severity", {})
    if not isinstance(severity, dict) or not all(v in SEVERITIES for v in severity.values()):
        raise InputError("[tool.spml.l0.severity] values must be \"error\" or \"advisory\"", pyproject)
    per_file = table.get("per-file-ignores", {})
    if not isinstance(per_file, dict):
        raise InputError("[tool.spml.l0.per-file-ignores] must map path globs to lists of rule ids", pyproject)
    return L0Config(
        select=_strings(table.get("select", []), "select", pyproject) if "select" in table else (),
        ignore=_strings(table.get("ignore", []), "ignore", pyproject) if "ignore" in table else (),
        exclude=_strings(table.get("exclude", []), "exclude", pyproject) if "exclude" in table else (),
        severity={k.upper(): v for k, v in severity.items()},
        per_file_ignores={glob: tuple(i.upper() for i in _strings(ids, "per-file-ignores", pyproject))
                          for glob, ids in per_file.items()},
        root=root,
    )
