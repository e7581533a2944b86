"""``spml conclude``: record the integration subtask's conclusion, with L1's numbers as evidence.

SPML's completion gate: a conclusion says what was hypothesised, whether the
result was effective, and shows every L1 check as measured value vs
threshold. "effective" is refused without a passing L1 report with numbers.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ..cliutil import add_output_options
from ..errors import InputError
from ..report import CheckResult, Report, Status

TOOL = "spml conclude"
RESULTS = ("effective", "ineffective", "inconclusive")
DEFAULT_REPORT = ".spml/l1-report.json"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "conclude", help="record the integration subtask's conclusion with L1 evidence",
        description="Append SPML's integration conclusion block (hypothesis, result, evidence from the L1 report as "
                    "value vs threshold, anomalies, recommendation) to the plan or an experiment log. 'effective' "
                    "is refused without a passing L1 report.")
    parser.add_argument("--plan", metavar="PLAN", help="the experiment plan (its [INTEGRATION] subtask and hypothesis)")
    parser.add_argument("--report", metavar="PATH", default=DEFAULT_REPORT,
                        help=f"the L1 JSON report written by pytest --spml-l1 (default {DEFAULT_REPORT})")
    parser.add_argument("--result", required=True, choices=RESULTS, help="the experiment's result")
    parser.add_argument("--hypothesis", help="restate the hypothesis (default: the plan's 'Hypothesis:' line)")
    parser.add_argument("--anomaly", action="append", default=[], metavar="TEXT", help="an observed anomaly (repeatable)")
    parser.add_argument("--recommendation", default="proceed",
                        choices=("proceed", "investigate further", "abandon"), help="what to do next")
    parser.add_argument("--log", metavar="PATH", help="append to this experiment log instead of the plan")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def load_l1_report(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no L1 report here: run `pytest --spml-l1` first (it writes .spml/l1-report.json), or pass "
                         "--report PATH", path) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not an L1 JSON report ({exc})", path) from None
    if not isinstance(doc, dict) or doc.get("tool") != "spml l1" or not isinstance(doc.get("checks"), list):
        raise InputError("not an L1 report written by pytest --spml-l1 (no 'checks')", path)
    return doc


def _evidence_line(check: dict[str, Any]) -> str:
    evidence = check.get("evidence") or {}
    numbers = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in evidence.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)][:4]
    value = ", ".join(numbers) or check.get("message", "")
    return f"- {check['id']} {check.get('name', '')}: {value} — **{check['status']}**"


def _hypothesis(plan_text: str | None) -> str | None:
    if not plan_text:
        return None
    match = re.search(r"^\s*[-*]?\s*\**hypothesis\**\s*:\**\s*(.+)$", plan_text, re.I | re.M)
    return match.group(1).strip() if match else None


def run(args: argparse.Namespace) -> Report:
    report_path = Path(args.report)
    doc = load_l1_report(report_path)
    checks = doc["checks"]
    failing = [c for c in checks if c.get("status") in ("fail", "error")]
    measured = {k: v for k, v in (doc.get("measurements") or {}).items() if isinstance(v, (int, float))}
    result = Report(tool=TOOL)
    if args.result == "effective" and (failing or not measured):
        why = (f"{len(failing)} L1 check(s) failed: " + ", ".join(c["id"] for c in failing)) if failing else \
            "the L1 report has no measurements"
        result.results.append(CheckResult("CONCLUDE", Status.FAIL, f"refusing 'effective': {why}; fix the pipeline "
                                          "and re-run pytest --spml-l1, or conclude 'inconclusive'",
                                          path=str(report_path), name="L1 evidence"))
        return result

    plan_path = Path(args.plan) if args.plan else None
    plan_text = None
    subtask = "N"
    if plan_path is not None:
        from ..plan.model import parse_plan, read_plan_text

        plan_text = read_plan_text(plan_path, str(plan_path))
        plan = parse_plan(plan_path, plan_text)
        if len(plan.integrations) != 1:
            raise InputError("the plan needs exactly one [INTEGRATION] subtask to conclude (see spml plan-gate)",
                             plan_path)
        subtask = plan.integrations[0].number
    hypothesis = args.hypothesis or _hypothesis(plan_text)
    if not hypothesis:
        raise InputError("no hypothesis: pass --hypothesis TEXT or give a plan with a 'Hypothesis:' line",
                         plan_path or report_path)
    git = doc.get("git") or {}
    block = "\n".join([
        "",
        f"### Subtask {subtask} Conclusion (INTEGRATION)",
        f"**Hypothesis:** {hypothesis}",
        f"**Result:** {args.result}",
        f"**Evidence (from L1, {report_path}, commit {str(git.get('commit') or 'unknown')[:12]}, "
        f"device {(doc.get('device') or {}).get('name')}):**",
        *(_evidence_line(c) for c in checks),
        f"**Anomalies:** {'; '.join(args.anomaly) if args.anomaly else 'none observed'}",
        f"**Recommendation:** {args.recommendation}",
        "",
    ])
    target = Path(args.log) if args.log else plan_path
    if target is None:
        raise InputError("nowhere to record the conclusion: pass --plan PLAN or --log PATH")
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(block)
    except OSError as exc:
        raise InputError(f"cannot append the conclusion ({exc.strerror})", target) from None
    result.results.append(CheckResult("CONCLUDE", Status.PASS, f"conclusion ({args.result}) recorded with "
                                      f"{len(checks)} L1 checks as evidence", path=str(target), name="conclusion"))
    result.notes.append(f"appended the conclusion to {target}")
    result.summary.update(result=args.result, target=str(target), checks=len(checks))
    return result
