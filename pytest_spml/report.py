"""The one result model every part of pytest-spml reports through.

A check produces :class:`CheckResult` values; a command gathers them into a
:class:`Report`; front ends (pytest, hooks, CLI renderers) only *render* a
report and never compute anything of their own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


@dataclass(frozen=True)
class CheckResult:
    """One rule applied to one subject (a plan, a protocol, a path, a run)."""

    id: str
    status: Status
    message: str
    path: str | None = None
    line: int | None = None
    name: str = ""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    col: int | None = None
    # An advisory finding fails its check but not the command (exit 0).
    blocking: bool = True

    @property
    def location(self) -> str:
        if self.path is None:
            return ""
        if not self.line:
            return self.path
        return f"{self.path}:{self.line}:{self.col}" if self.col else f"{self.path}:{self.line}"

    @property
    def is_failure(self) -> bool:
        return self.status in (Status.FAIL, Status.ERROR)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "blocking": self.blocking,
            "evidence": dict(self.evidence),
        }


@dataclass
class Report:
    """Everything one command run found, plus command-specific summary keys.

    ``summary`` holds the keys a command promises other tools in its JSON
    document (for example ``compliant``/``violations`` for ``spml fixed-files``);
    ``notes`` are human-facing lines that are not checks (why a hook did not
    enforce, which defaults were applied).
    """

    tool: str
    results: list[CheckResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Commands whose text output is not a list of checks (``--explain``) set it here.
    text: str | None = None
    # Extra machine formats a command offers beyond text and json: {format: document}.
    documents: dict[str, Any] = field(default_factory=dict)

    def extend(self, results: Iterable[CheckResult]) -> None:
        self.results.extend(results)

    @property
    def failed(self) -> list[CheckResult]:
        """Failures that decide the exit code (advisory findings do not)."""
        return [r for r in self.results if r.is_failure and r.blocking]

    @property
    def advisories(self) -> list[CheckResult]:
        return [r for r in self.results if r.is_failure and not r.blocking]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for r in self.results:
            counts[r.status.value] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "ok": self.ok,
            **self.summary,
            "counts": self.counts(),
            "notes": list(self.notes),
            "results": [r.to_dict() for r in self.results],
        }
