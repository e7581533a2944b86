"""Lint files: discover, parse once, run every enabled rule, apply suppressions."""

from __future__ import annotations

import ast
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .config import L0Config
from .context import FileContext
from .model import Finding, Rule, RuleDoc
from .registry import CHECKS, load_rules
from .suppress import Suppressions

_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache",
              ".pytest_cache", "node_modules", "build", "dist", ".eggs"}

# Files L0 cannot read at all are findings too (never a crash), under these ids.
UNREADABLE = Rule(
    id="L0001", name="unreadable-file", category="input",
    doc=RuleDoc(
        what="The file cannot be read as Python source: a syntax error, a binary file or an unknown encoding.",
        why="L0 reads training code without running it; a file it cannot parse is a file nobody checked.",
        bad="def train(:\n    ...",
        fix="Fix the syntax error (python -m py_compile FILE shows it), or exclude the file in "
            "[tool.spml.l0] exclude if it is not Python.",
    ),
)


@dataclass
class LintResult:
    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    suppressed: int = 0


def discover(paths: Iterable[str | Path], config: L0Config) -> list[Path]:
    """Python files under ``paths`` (files given explicitly are always included)."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
                for name in sorted(filenames):
                    if name.endswith(".py"):
                        candidate = Path(dirpath) / name
                        if not config.excluded(candidate):
                            found[candidate] = None
        else:
            raise InputError("no such file or folder; pass Python files or folders to lint", raw)
    return list(found)


def _read(path: Path) -> tuple[str | None, str]:
    """(source, problem): exactly one of them is meaningful."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read the file ({exc.strerror})"
    if b"\0" in data[:8192]:
        return None, "binary file, not Python source"
    try:
        import tokenize

        encoding, _ = tokenize.detect_encoding(iter(data.splitlines(keepends=True)).__next__)
        return data.decode(encoding), ""
    except (SyntaxError, LookupError, UnicodeDecodeError) as exc:
        return None, f"cannot decode the file ({exc})"


def parse(path: Path, shown: str) -> tuple[FileContext | None, Finding | None]:
    source, problem = _read(path)
    if source is None:
        return None, Finding(UNREADABLE.id, "input", "error", shown, 1, 1, f"{problem}; L0 could not check it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not our business
            tree = ast.parse(source, filename=shown)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None) or 1
        col = getattr(exc, "offset", None) or 1
        reason = getattr(exc, "msg", None) or str(exc)
        return None, Finding(UNREADABLE.id, "input", "error", shown, line, col,
                             f"syntax error: {reason}; L0 could not check this file")
    return FileContext(shown, source, tree), None


def lint_file(path: Path, config: L0Config, shown: str | None = None) -> tuple[list[Finding], int]:
    """(findings, how many were suppressed) for one file."""
    shown = shown or config.relative(path)
    context, failure = parse(path, shown)
    if context is None:
        assert failure is not None
        return [failure], 0
    return check_context(context, config, path)


def lint_source(source: str, path: str = "snippet.py", config: L0Config | None = None) -> list[Finding]:
    """Findings for source text (tests, editors): the same checks as for a file."""
    tree = ast.parse(source, filename=path)
    findings, _ = check_context(FileContext(path, source, tree), config or L0Config(), Path(path))
    return findings


def check_context(context: FileContext, config: L0Config, path: Path) -> tuple[list[Finding], int]:
    rules = load_rules()
    suppressions = Suppressions(context.source)
    findings: list[Finding] = []
    suppressed = 0
    for rule_id, check in CHECKS.items():
        if not config.enabled(rule_id) or config.ignored_here(rule_id, path):
            continue
        rule = rules[rule_id]
        for finding in check(rule, context):
            if suppressions.suppressed(rule_id, finding.line):
                suppressed += 1
                continue
            severity = config.severity_of(rule_id, finding.severity)
            if severity != finding.severity:
                finding = Finding(finding.rule, finding.category, severity, finding.path, finding.line,
                                  finding.col, finding.message, finding.evidence)
            findings.append(finding)
    findings.sort(key=lambda f: (f.line, f.col, f.rule))
    return findings, suppressed


def lint(paths: Iterable[str | Path], config: L0Config) -> LintResult:
    result = LintResult()
    for path in discover(paths, config):
        findings, suppressed = lint_file(path, config)
        result.files.append(config.relative(path))
        result.findings.extend(findings)
        result.suppressed += suppressed
    return result


def all_rules() -> Iterator[Rule]:
    yield UNREADABLE
    yield from sorted(load_rules().values(), key=lambda r: r.id)
