"""``spml-loop check``: one training check of a run's metrics, CONTINUE / WAIT / STOP with evidence."""

from __future__ import annotations

import argparse
import time
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
    parser.add_argument("--regex", help="with --log-format regex: a pattern with named groups, e.g. "
                                        r"'step (?P<step>\d+) loss (?P<loss>[\d.]+)'")
    parser.add_argument("--tensorboard", metavar="DIR", help="a TensorBoard log directory (every scalar is read)")
    parser.add_argument("--wandb", metavar="RUN", help="a WandB run (not yet available in this version)")
    parser.add_argument("--context", metavar="PATH", help="experiment-context.md: the L1 baseline and expected steps")
    parser.add_argument("--total-steps", type=int, metavar="N", help="expected total steps (overrides the context)")
    parser.add_argument("--evidence-dir", metavar="DIR",
                        help="where recovery-prompt.md (on STOP) and completion-prompt.md go (default: next to "
                             "--context, else .spml/watch)")
    parser.add_argument("--no-history", action="store_true",
                        help="do not append this check to the Diagnosis History of --context")
    parser.add_argument("--now", type=float, metavar="EPOCH",
                        help="judge staleness as of this Unix time (default: now); for replaying finished logs")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def load_baseline(path: Path | None, total_steps: int | None) -> Any:
    from ..watch.model import Baseline

    if path is None:
        return Baseline(expected_total_steps=total_steps, source="run's own early steps")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the experiment context ({exc.strerror})", path) from None
    import yaml

    values: dict[str, Any] = {}
    if "## L1 baseline" in text and "```yaml" in text.split("## L1 baseline", 1)[1]:
        block = text.split("## L1 baseline", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
        try:
            values = yaml.safe_load(block) or {}
        except yaml.YAMLError as exc:
            line = text[: text.index(block)].count("\n") + 1 + getattr(getattr(exc, "problem_mark", None), "line", 0)
            raise InputError(f"the L1 baseline block is not valid YAML ({exc})", path, line) from None
    if not isinstance(values, dict):
        raise InputError("the L1 baseline block must be key: value lines", path)

    def number(key: str) -> float | None:
        value = values.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    expected = total_steps or (int(values["expected_total_steps"]) if isinstance(values.get("expected_total_steps"), int)
                               else None)
    return Baseline(step_time_s=number("step_time_s"), samples_per_s=number("samples_per_s"),
                    tokens_per_s=number("tokens_per_s"), mfu=number("mfu"), grad_norm=number("grad_norm"),
                    loss_start=number("loss_start"), expected_total_steps=expected,
                    source=f"L1 baseline in {path}" if values else "run's own early steps")


def watch_thresholds(context: Path | None) -> Any:
    """SPML's watchdog defaults, overridden by the context's "Watchdog settings" block (written by handoff)."""
    from ..watch.detectors import WatchThresholds

    if context is None or not context.is_file():
        return WatchThresholds()
    text = context.read_text(encoding="utf-8")
    if "## Watchdog settings" not in text or "```yaml" not in text.split("## Watchdog settings", 1)[1]:
        return WatchThresholds()
    import yaml

    block = text.split("## Watchdog settings", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    try:
        return WatchThresholds.from_mapping(yaml.safe_load(block) or {})
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"the Watchdog settings block is invalid ({exc})", context) from None


def read_sources(args: argparse.Namespace, series: Any) -> tuple[list[Any], list[str], bool, int]:
    """Feed every source into ``series``; (recent records, source descriptions, all readable, record count).

    JSONL logs stream chunk by chunk into the bounded series, so a 1 GB log
    never sits in memory; only the last records are kept for the report.
    """
    from collections import deque

    from ..watch import sources

    recent: deque[Any] = deque(maxlen=50)
    described: list[str] = []
    ok = True
    total = 0

    def feed(found: list[Any]) -> int:
        series.add(found)
        recent.extend(found)
        return len(found)

    for raw in args.log:
        path = Path(raw)
        if not path.exists():
            # a log that does not exist yet is "no data", not bad input: the run may not have started
            described.append(f"{path} (not found)")
            ok = False
            continue
        fmt = sources.detect_format(path) if args.log_format == "auto" else args.log_format
        count = 0
        if fmt == "jsonl":
            for chunk in sources.iter_jsonl(path):
                count += feed(chunk)
        elif fmt == "tensorboard":
            count = feed(sources.read_tensorboard(path)[0])
        else:
            if fmt == "regex" and not args.regex:
                raise InputError("--log-format regex needs --regex PATTERN")
            preset = "auto" if fmt in ("text", "regex") else fmt
            count = feed(sources.read_text_log(path, preset=preset, regex=args.regex)[0])
        total += count
        described.append(f"{path} ({fmt}, {count} records)")
    if args.tensorboard:
        count = feed(sources.read_tensorboard(Path(args.tensorboard))[0])
        total += count
        described.append(f"{args.tensorboard} (tensorboard, {count} records)")
    return list(recent), described, ok, total


def _recent(records: list[Any]) -> dict[str, float]:
    last: dict[str, float] = {}
    for record in records[-50:]:
        last.update(record.values)
    return {k: v for k, v in last.items() if isinstance(v, float)}


def run(args: argparse.Namespace) -> Report:
    if args.wandb:
        raise InputError("--wandb is not available yet in this version; export the run's history to JSONL, or pass "
                         "its offline directory's logs with --log")
    if not args.log and not args.tensorboard:
        raise InputError("no metrics source: pass --log PATH (repeatable) or --tensorboard DIR")
    from ..watch import decide as deciding
    from ..watch import detectors
    from ..watch.model import KINDS

    baseline = load_baseline(Path(args.context) if args.context else None, args.total_steps)
    series = detectors.RunSeries()
    records, described, source_ok, total = read_sources(args, series)
    now = args.now if args.now is not None else time.time()
    thresholds = watch_thresholds(Path(args.context) if args.context else None)
    anomalies = detectors.detect_all(series, baseline, thresholds, now)
    verdict = deciding.decide(series, anomalies, baseline, now, source_ok=source_ok and total > 0,
                              thresholds=thresholds)
    report = Report(tool=TOOL)
    for kind in KINDS:
        found = [a for a in anomalies if a.kind == kind]
        severe = [a for a in found if a.severity == "severe" and not a.recovered]
        if severe:
            status, message = Status.FAIL, "; ".join(f"step {a.step}: {a.detail}" for a in severe[:3])
        elif found:
            status, message = Status.PASS, "mild: " + "; ".join(f"step {a.step}: {a.detail}" for a in found[:3])
        else:
            status, message = Status.PASS, "no anomaly"
        report.results.append(CheckResult(kind, status, message, name=f"detector {kind}",
                                          blocking=verdict.decision == "STOP"))
    last_step = series.last_step
    metrics = _recent(records)
    report.summary.update(
        decision=verdict.decision, status=verdict.status, reason=verdict.reason,
        source="; ".join(described), step=last_step, baseline=baseline.source,
        anomalies=[a.to_dict() for a in anomalies], metrics=metrics,
        evidence=[a.evidence for a in anomalies][:20],
        next_check=f"in {verdict.next_check_minutes} minutes",
    )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))[:300]
    lines = [
        f"Training check  {stamp}",
        f"  source:     {report.summary['source']}",
        f"  run:        step {last_step if last_step is not None else 'n/a'}"
        + (f" of {baseline.expected_total_steps}" if baseline.expected_total_steps else ""),
        f"  baseline:   {baseline.source}",
        f"  recent:     {shown or 'no metrics yet'}",
        "  anomalies:  " + ("none" if not anomalies else ""),
        *(f"    - [{a.severity}{', recovered' if a.recovered else ''}] {a.kind} at step {a.step}: {a.detail}"
          for a in anomalies),
        f"  decision:   {verdict.decision} ({verdict.status})",
        f"  reason:     {verdict.reason}",
        f"  next check: in {verdict.next_check_minutes} minutes",
        "",
    ]
    report.text = "\n".join(lines)
    _save_evidence(args, report)
    if verdict.decision == "STOP":
        report.results.append(CheckResult("DECISION", Status.FAIL, f"STOP: {verdict.reason}", name="decision"))
    return report


def _save_evidence(args: argparse.Namespace, report: Report) -> None:
    from ..watch import evidence

    context = Path(args.context) if args.context else None
    if context is not None and not args.no_history:
        try:
            evidence.append_history(context, report.summary)
        except OSError as exc:
            raise InputError(f"cannot append the Diagnosis History ({exc.strerror})", context) from None
        report.notes.append(f"appended to the Diagnosis History of {context}")
    folder = Path(args.evidence_dir) if args.evidence_dir else (context.parent if context else Path(".spml/watch"))
    try:
        written = evidence.write_prompt(folder, report.summary)
    except OSError as exc:
        raise InputError(f"cannot write the prompt ({exc.strerror})", folder) from None
    if written is not None:
        report.summary["prompt"] = str(written)
        report.text = (report.text or "") + f"  evidence:   {written}\n"
