"""SARIF 2.1.0 output, the format code-scanning UIs (GitHub, VS Code) read."""

from __future__ import annotations

from collections.abc import Iterable

from .. import __version__
from .model import Finding, Rule

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def sarif_document(findings: Iterable[Finding], rules: Iterable[Rule]) -> dict:
    rules = list(rules)
    index = {rule.id: i for i, rule in enumerate(rules)}
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "spml l0",
                "version": __version__,
                "informationUri": "https://github.com/pytest-spml/pytest-spml",
                "rules": [{
                    "id": rule.id,
                    "name": rule.name,
                    "shortDescription": {"text": rule.doc.what},
                    "fullDescription": {"text": rule.doc.why},
                    "help": {"text": f"{rule.doc.what}\n\nWhy: {rule.doc.why}\n\nFix:\n{rule.doc.fix}"},
                    "defaultConfiguration": {"level": "error" if rule.default_severity == "error" else "warning"},
                    "properties": {"category": rule.category},
                } for rule in rules],
            }},
            "results": [{
                "ruleId": f.rule,
                "ruleIndex": index.get(f.rule, 0),
                "level": "error" if f.severity == "error" else "warning",
                "message": {"text": f.message},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": f.path},
                    "region": {"startLine": f.line, "startColumn": f.col},
                }}],
            } for f in findings],
        }],
    }
