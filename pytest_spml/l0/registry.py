"""The rule registry: one rule = an id, its doc, and one check function."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .context import FileContext
from .model import CATEGORIES, Finding, Rule, RuleDoc

Check = Callable[[Rule, FileContext], Iterable[Finding]]

RULES: dict[str, Rule] = {}
CHECKS: dict[str, Check] = {}


def rule(id: str, name: str, category: str, *, what: str, why: str, bad: str, fix: str,
         severity: str = "") -> Callable[[Check], Check]:
    """Register ``check`` as rule ``id``; the doc fields feed ``spml l0 --explain``."""
    if category not in CATEGORIES:
        raise ValueError(f"rule {id}: unknown category {category!r}")

    def register(check: Check) -> Check:
        if id in RULES:
            raise ValueError(f"rule id {id} registered twice")
        RULES[id] = Rule(id=id, name=name, category=category, severity=severity,
                         doc=RuleDoc(what=what.strip(), why=why.strip(), bad=bad.strip("\n"), fix=fix.strip("\n")))
        CHECKS[id] = check
        return check

    return register


def load_rules() -> dict[str, Rule]:
    """Import every rule module (once) and return the registry."""
    from . import rules  # noqa: F401  (importing registers the rules)

    return RULES
