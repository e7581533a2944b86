"""Helpers for L0 rule tests: lint a snippet and look at one rule's findings."""

from __future__ import annotations

import textwrap

from pytest_spml.l0.model import Finding
from pytest_spml.l0.runner import lint_source


def findings(source: str, rule: str | None = None) -> list[Finding]:
    """Findings for ``source`` (dedented); only ``rule``'s when given."""
    found = lint_source(textwrap.dedent(source))
    return [f for f in found if rule is None or f.rule == rule]


def lines(source: str, rule: str) -> list[int]:
    return [f.line for f in findings(source, rule)]
