"""``spml handoff``: write ``experiment-context.md`` for the long run from the L1 report.

The L1 baseline block (step time, MFU, gradient-norm range, initial loss) is
what the watchdog compares a live run against.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cliutil import add_output_options
from ..errors import InputError
from ..fsutil import atomic_write
from ..report import CheckResult, Report, Status
from .conclude import DEFAULT_REPORT, _hypothesis, load_l1_report

TOOL = "spml handoff"

WATCHDOG_DEFAULTS = {
    "loss_spike_factor": 3.0,
    "plateau_fraction": 0.05,
    "grad_norm_high_factor": 10.0,
    "grad_norm_low_factor": 0.01,
    "mfu_drop": 0.20,
    "stale_step_time_factor": 10.0,
    "startup_grace_minutes": 15,
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "handoff", help="write experiment-context.md (L1 baseline, code state, watchdog settings) for a long run",
        description="Write experiment-context.md from the L1 report: experiment design, the L1 baseline the "
                    "watchdog compares against, training configuration, code state and watchdog settings.")
    parser.add_argument("--report", metavar="PATH", default=DEFAULT_REPORT, help=f"L1 report (default {DEFAULT_REPORT})")
    parser.add_argument("--plan", metavar="PLAN", help="the experiment plan (hypothesis, design)")
    parser.add_argument("--command", dest="train_command", metavar="CMD", help="the long run's training command")
    parser.add_argument("--total-steps", type=int, metavar="N", help="expected total optimizer steps of the long run")
    parser.add_argument("--metrics-log", metavar="PATH", default="runs/metrics.jsonl",
                        help="where the run writes its metrics (default runs/metrics.jsonl)")
    parser.add_argument("--checkpoints", metavar="DIR", default="checkpoints/", help="checkpoint folder")
    parser.add_argument("--out", metavar="PATH", default="experiment-context.md", help="file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "null"
    return f"{value:.6g}"


def baseline(doc: dict[str, Any], total_steps: int | None) -> dict[str, str]:
    m = doc.get("measurements") or {}
    return {
        "step_time_s": _number(m.get("step_time_median_s")),
        "step_time_p90_s": _number(m.get("step_time_p90_s")),
        "samples_per_s": _number(m.get("samples_per_s")),
        "tokens_per_s": _number(m.get("tokens_per_s")),
        "mfu": _number(m.get("mfu")),
        "grad_norm": _number(m.get("grad_norm_median")),
        "grad_norm_min": _number(m.get("grad_norm_min")),
        "grad_norm_max": _number(m.get("grad_norm_max")),
        "loss_start": _number(m.get("loss_first")),
        "expected_total_steps": str(total_steps) if total_steps else "null",
    }


def run(args: argparse.Namespace) -> Report:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError("exists; pass --force to overwrite it (or --out another path)", out)
    doc = load_l1_report(Path(args.report))
    failing = [c["id"] for c in doc["checks"] if c.get("status") in ("fail", "error")]
    plan_text = None
    if args.plan:
        from ..plan.model import read_plan_text

        plan_text = read_plan_text(Path(args.plan), args.plan)
    git = doc.get("git") or {}
    device = doc.get("device") or {}
    lines = [
        "# Experiment context",
        "",
        "Written by `spml handoff` from the L1 report; read by the watchdog (`spml-loop check --context`).",
        "",
        "## Experiment",
        f"- Hypothesis: {_hypothesis(plan_text) or '<from the plan>'}",
        f"- Plan: {args.plan or '<docs/plans/...>'}",
        f"- Pipeline: {doc.get('pipeline')}",
        f"- Command: `{args.train_command or '<training command>'}`",
        "",
        "## Code state",
        f"- Commit: {git.get('commit') or 'unknown'}",
        f"- Branch: {git.get('branch') or 'unknown'}",
        f"- Uncommitted changes at L1 time: {'yes' if git.get('dirty') else 'no'}",
        "",
        "## L1 baseline",
        f"Measured by `pytest --spml-l1` on {device.get('name')} ({device.get('type')}); "
        f"L1 verdict: {'passed' if not failing else 'FAILED: ' + ', '.join(failing)}.",
        "",
        "```yaml",
        *(f"{key}: {value}" for key, value in baseline(doc, args.total_steps).items()),
        "```",
        "",
        "## Watchdog settings",
        "```yaml",
        *(f"{key}: {value}" for key, value in WATCHDOG_DEFAULTS.items()),
        "```",
        "",
        "## Checkpoints and logs",
        f"- Checkpoints: {args.checkpoints}",
        f"- Metrics log: {args.metrics_log}",
        "",
    ]
    atomic_write(out, "\n".join(lines))
    report = Report(tool=TOOL)
    report.results.append(CheckResult("HANDOFF", Status.PASS, "experiment context written from the L1 report",
                                      path=str(out), name="handoff"))
    if failing:
        report.notes.append(f"warning: the L1 report has failing checks ({', '.join(failing)}); the baseline may "
                            "not be one to hold a long run to")
    report.notes.append(f"wrote {out}")
    report.summary.update(out=str(out), baseline=baseline(doc, args.total_steps))
    return report
