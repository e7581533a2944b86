"""Project settings from ``[tool.spml]`` in the repository's ``pyproject.toml``.

Every default the gates use can be changed there, so a project states its
conventions once for the CLI, the hooks and pytest alike.
"""

from __future__ import annotations

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


def load_config(root: Path) -> SpmlConfig:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return SpmlConfig(root=root)
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        table = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("spml", {})
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"invalid TOML: {exc}", pyproject) from None
    plans = table.get("plans", DEFAULT_PLAN_GLOBS)
    if isinstance(plans, str):
        plans = [plans]
    if not isinstance(plans, list) or not all(isinstance(p, str) for p in plans):
        raise InputError("[tool.spml] plans must be a list of glob strings", pyproject)
    protocol = table.get("protocol", "autoresearch-protocol.md")
    if not isinstance(protocol, str):
        raise InputError("[tool.spml] protocol must be a path string", pyproject)
    return SpmlConfig(root=root, plans=tuple(plans), protocol=protocol)
