"""``spml-loop check``: one training check of a run's metrics, CONTINUE / WAIT / STOP with evidence."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cliutil import add_output_options
from ..errors import InputError
from ..report import CheckResult, Report, Status

TOOL = "spml-loop check"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check", help="one training check of a run's metrics: CONTINUE / WAIT / STOP with evidence",
        description="Read a run's metrics (JSONL, text logs, TensorBoard), detect NaN/Inf, spikes, divergence, "
                    "plateaus, gradient explosion or vanishing, evaluation degradation, LR-schedule and throughput "
                    "problems and stale logs, and decide CONTINUE / WAIT / STOP. Exit 0 for CONTINUE or WAIT, 1 for "
                    "STOP, 2 for bad input.")
    parser.add_argument("--log", action="append", default=[], metavar="PATH",
                        help="a metrics log (repeatable); format detected, or set --log-format")
    parser.add_argument("--log-format", default="auto", choices=("auto", "jsonl", "nanogpt", "hf", "kv", "regex"),
                        help="format of --log files (default: detected)")
    parser.add_argument("--regex", help="a pattern with named groups, e.g. r'step (?P<step>\\d+) loss "
                                        "(?P<loss>[\\d.]+)'; implies --log-format regex")
    parser.add_argument("--tensorboard", metavar="DIR", help="a TensorBoard log directory (every scalar is read)")
    parser.add_argument("--wandb", metavar="RUN",
                        help="a WandB run: ENTITY/PROJECT/RUN_ID (online, every row through scan_history) or an "
                             "offline run directory; read first, with the --log files as its fallback")
    parser.add_argument("--context", metavar="PATH", help="experiment-context.md: the L1 baseline and expected steps")
    parser.add_argument("--total-steps", type=int, metavar="N", help="expected total steps (overrides the context)")
    parser.add_argument("--evidence-dir", metavar="DIR",
                        help="where recovery-prompt.md (on STOP) and completion-prompt.md go (default: next to "
                             "--context, else .spml/watch)")
    parser.add_argument("--no-history", action="store_true",
                        help="do not append this check to the Diagnosis History of --context")
    parser.add_argument("--state-dir", default=".spml/watch", metavar="DIR",
                        help="where the check keeps its reading position and statistics between invocations, so "
                             "a re-check reads only what is new (default: .spml/watch)")
    parser.add_argument("--fresh", action="store_true", help="ignore and do not write the saved check state")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG plot")
    parser.add_argument("--now", type=float, metavar="EPOCH",
                        help="judge staleness as of this Unix time (default: now); for replaying finished logs")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def source_specs(args: argparse.Namespace) -> list[Any]:
    """The sources named on the command line, WandB first (it is read first; the logs are its fallback)."""
    from ..watch.check import SourceSpec

    fmt, regex = log_format(args)
    specs = [SourceSpec("wandb", args.wandb)] if args.wandb else []
    specs += [SourceSpec("log", raw, fmt=fmt, regex=regex) for raw in args.log]
    if args.tensorboard:
        specs.append(SourceSpec("tensorboard", args.tensorboard))
    return specs


def log_format(args: argparse.Namespace) -> tuple[str, str | None]:
    """``--log-format`` and ``--regex``: a ``--regex`` without ``--log-format`` implies ``--log-format regex``;
    with another format it is refused (SourceSpec)."""
    fmt, regex = args.log_format, args.regex
    if regex is not None and fmt == "auto":
        fmt = "regex"
    return fmt, regex


def check_total_steps(args: argparse.Namespace) -> None:
    if args.total_steps is not None and args.total_steps < 1:
        raise InputError(f"--total-steps must be a positive number of steps, got {args.total_steps}")


def run(args: argparse.Namespace) -> Report:
    if not args.log and not args.tensorboard and not args.wandb:
        raise InputError("no metrics source: pass --log PATH (repeatable), --tensorboard DIR or --wandb RUN")
    check_total_steps(args)
    if args.now is not None:
        import math
        import time

        try:
            if not math.isfinite(args.now):
                raise ValueError
            time.localtime(args.now)
        except (ValueError, OverflowError, OSError):
            raise InputError(f"--now must be a Unix time in seconds (e.g. {int(time.time())}), got {args.now!r}") \
                from None
    from ..watch import check as checking
    from ..watch.model import KINDS

    context = Path(args.context) if args.context else None
    engine = checking.TrainingCheck(source_specs(args), checking.load_baseline(context, args.total_steps),
                                    checking.load_thresholds(context))
    state_file = checking.state_path(Path(args.state_dir), engine) if not args.fresh else None
    report = Report(tool=TOOL)
    if state_file is not None:
        why = engine.restore(state_file)
        report.notes.append(f"continued from {state_file}" if why is None else f"read from the start: {why}")
    outcome = engine.poll(args.now)
    verdict = outcome.verdict
    for kind in KINDS:
        found = [a for a in outcome.anomalies if a.kind == kind]
        severe = [a for a in found if a.severity == "severe" and not a.recovered]
        if severe:
            status, message = Status.FAIL, "; ".join(f"step {a.step}: {a.detail}" for a in severe[:3])
        elif found:
            status, message = Status.PASS, "mild: " + "; ".join(f"step {a.step}: {a.detail}" for a in found[:3])
        else:
            status, message = Status.PASS, "no anomaly"
        report.results.append(CheckResult(kind, status, message, name=f"detector {kind}",
                                          blocking=verdict.decision == "STOP"))
    report.summary.update(outcome.summary)
    report.notes.extend(outcome.notes)  # a log no line of which matched, a new run in the same log ...
    report.text = outcome.render()
    _save_evidence(args, report, outcome, context)
    if state_file is not None:
        try:
            engine.save(state_file)
        except OSError as exc:
            report.notes.append(f"could not save the check state ({exc.strerror}); the next check reads from "
                                "the start")
    if verdict.decision == "STOP":
        report.results.append(CheckResult("DECISION", Status.FAIL, f"STOP: {verdict.reason}", name="decision"))
    return report


def _save_evidence(args: argparse.Namespace, report: Report, outcome: Any, context: Path | None) -> None:
    from ..watch import evidence

    folder = Path(args.evidence_dir) if args.evidence_dir else (context.parent if context else Path(".spml/watch"))
    try:
        written, notes = evidence.save(outcome, context=context, folder=folder, history=not args.no_history,
                                       plot=not args.no_plot)
    except OSError as exc:
        raise InputError(f"cannot write the evidence ({exc.strerror})", exc.filename or folder) from None
    report.notes.extend(notes)
    report.summary["evidence_files"] = [str(p) for p in written]
    prompts = [p for p in written if p.name.endswith("-prompt.md")]
    if prompts:
        report.summary["prompt"] = str(prompts[0])
    if written:
        report.text = (report.text or "") + "".join(f"  evidence:   {p}\n" for p in written)
