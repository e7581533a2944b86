"""``spml l0``: static checks of PyTorch training code (never imports or runs it)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from ..cliutil import add_output_options
from ..errors import InputError
from ..report import CheckResult, Report, Status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..l0.model import Rule

TOOL = "spml l0"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "l0",
        help="lint PyTorch training code for device, precision, attention, optimizer, data and logging mistakes",
        description="L0 static checks: read training code (never import or run it) and name the configuration "
                    "mistakes that make a run slow, wrong or unobservable. Exit 1 when an error-severity finding "
                    "remains; advisory findings never fail. Suppress one with '# spml: ignore[ID]' on its line or "
                    "'# spml: ignore-file[ID]' anywhere in the file; configure [tool.spml.l0] in pyproject.toml.",
    )
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="Python files or folders to check")
    parser.add_argument("--explain", metavar="ID", help="print what rule ID checks, why, a bad example and the fix")
    parser.add_argument("--list-rules", action="store_true", help="list every rule with its category and severity")
    parser.add_argument("--select", action="append", metavar="ID", help="only these rules or prefixes (repeatable)")
    parser.add_argument("--ignore", action="append", metavar="ID", help="skip these rules or prefixes (repeatable)")
    parser.add_argument("--statistics", action="store_true", help="end with a count of findings per rule")
    parser.add_argument("--config-root", metavar="DIR",
                        help="where pyproject.toml with [tool.spml.l0] lives (default: the repository or cwd)")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    # sarif is L0's own: code-scanning UIs read it
    for action in parser._actions:
        if action.dest == "format":
            action.choices = ("text", "json", "sarif")
            action.help = "text (default), json ({\"findings\": [...]}) or sarif (for code-scanning UIs)"


def _root(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    cwd = Path.cwd()
    return next((d for d in (cwd, *cwd.parents) if (d / ".git").exists() or (d / "pyproject.toml").is_file()), cwd)


def _rule_dict(rule: Rule) -> dict:
    return {"id": rule.id, "name": rule.name, "category": rule.category, "severity": rule.default_severity,
            "what": rule.doc.what, "why": rule.doc.why, "bad": rule.doc.bad, "fix": rule.doc.fix}


def explain(rule_id: str) -> Report:
    from ..l0.runner import all_rules

    rule = {r.id: r for r in all_rules()}.get(rule_id.upper())
    if rule is None:
        raise InputError(f"unknown rule {rule_id!r}; `spml l0 --list-rules` lists them")
    doc = rule.doc

    def indent(text: str) -> str:
        return textwrap.indent(text, "    ")

    text = (f"{rule.id} {rule.name} [{rule.category}, {rule.default_severity}]\n\n"
            f"What: {doc.what}\n\nWhy: {doc.why}\n\nBad:\n{indent(doc.bad)}\n\nFix:\n{indent(doc.fix)}\n")
    return Report(tool=TOOL, text=text, summary={"rule": _rule_dict(rule)})


def list_rules() -> Report:
    from ..l0.runner import all_rules

    rules = list(all_rules())
    text = "".join(f"{r.id}  {r.category:<13} {r.default_severity:<8} {r.name}\n" for r in rules)
    return Report(tool=TOOL, text=text, summary={"rules": [_rule_dict(r) for r in rules]})


def run(args: argparse.Namespace) -> Report:
    from ..l0.config import load_l0_config
    from ..l0.runner import all_rules, lint

    if args.explain:
        return explain(args.explain)
    if args.list_rules:
        return list_rules()
    if not args.paths:
        raise InputError("no files given: pass Python files or folders, e.g. `spml l0 train.py src/`")
    config = load_l0_config(_root(args.config_root))
    if args.select or args.ignore:
        import dataclasses

        config = dataclasses.replace(
            config,
            select=tuple(s.upper() for s in args.select) if args.select else config.select,
            ignore=config.ignore + tuple(i.upper() for i in (args.ignore or ())),
        )
    result = lint(args.paths, config)
    report = Report(tool=TOOL)
    for f in result.findings:
        report.results.append(CheckResult(
            f.rule, Status.FAIL, f"[{f.category}] {f.message}", path=f.path, line=f.line, col=f.col,
            name=f.category, evidence={"severity": f.severity, **f.evidence}, blocking=f.severity == "error",
        ))
    stats: dict[str, int] = {}
    for f in result.findings:
        stats[f.rule] = stats.get(f.rule, 0) + 1
    report.summary.update(
        findings=[f.to_dict() for f in result.findings],
        files=len(result.files),
        suppressed=result.suppressed,
        statistics=dict(sorted(stats.items())),
    )
    if not result.findings:
        report.results.append(CheckResult("L0", Status.PASS, f"{len(result.files)} file(s) checked, no findings",
                                          name="L0 static checks"))
    if args.statistics:
        rules = {r.id: r for r in all_rules()}
        report.notes.extend(f"{count:5d}  {rule_id}  {rules[rule_id].name}" for rule_id, count in
                            sorted(stats.items(), key=lambda kv: (-kv[1], kv[0])))
    if args.format == "sarif":
        from ..l0.sarif import sarif_document

        report.documents["sarif"] = sarif_document(result.findings, all_rules())
    return report
