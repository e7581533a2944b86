"""What a rule is and what it finds."""

from __future__ import annotations

from dataclasses import dataclass, field

CATEGORIES = ("device", "precision", "attention", "optimizer", "dataloader", "observability", "advisory", "input")
# Mandatory categories block (severity error); "input" is for files L0 cannot read at all.
MANDATORY = frozenset(("device", "precision", "attention", "optimizer", "dataloader", "observability", "input"))
SEVERITIES = ("error", "advisory")


@dataclass(frozen=True)
class RuleDoc:
    """``spml l0 --explain ID``: what is wrong, why it matters, a bad example and the fix."""

    what: str
    why: str
    bad: str
    fix: str


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    category: str
    doc: RuleDoc
    severity: str = ""  # defaults from the category: error for mandatory ones

    @property
    def default_severity(self) -> str:
        return self.severity or ("error" if self.category in MANDATORY else "advisory")


@dataclass(frozen=True)
class Finding:
    rule: str
    category: str
    severity: str
    path: str
    line: int
    col: int
    message: str
    evidence: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "category": self.category, "severity": self.severity, "path": self.path,
                "line": self.line, "col": self.col, "message": self.message}
