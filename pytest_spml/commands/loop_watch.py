"""``spml-loop watch``: supervise a training run (stop it on STOP, restart it on environment failures, report bugs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cliutil import add_output_options
from ..errors import InputError
from ..report import CheckResult, Report, Status

TOOL = "spml-loop watch"


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        return value
    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..watch.checkpoints import DEFAULT_PATTERNS

    parser = subparsers.add_parser(
        "watch", help="supervise a training run: stop it on STOP, restart it from a checkpoint on environment "
                      "failures, report code bugs",
        usage="%(prog)s [options] [-- COMMAND ...]",
        description="Combined mode (`spml-loop watch [options] -- python train.py ...`): launch the training command "
                    "in its own process group, output appended to --output, with a progress line on stderr. "
                    "Separated mode (no command): watch a run started elsewhere through --log, with --pid and/or "
                    "--stop-command to act on it. The run is checked on an adaptive interval (10 -> 20 -> 30 -> 60 "
                    "minutes while healthy; --interval overrides). STOP: --stop-command, else SIGTERM to the "
                    "process group and SIGKILL after --grace. Environment failures (OOM kill, NCCL timeout, GPU "
                    "hardware errors, disk full, external SIGKILL/SIGTERM, hang) restart from the newest complete "
                    "checkpoint with --resume-command, without a retry limit, with back-off, and alert after 5 "
                    "crashes in 30 minutes. Code bugs are reported, never restarted. Exit 0: the run completed (or "
                    "was healthy when the watch ended); 1: the watchdog stopped the run, or a code bug or an "
                    "unrecoverable failure ended it; 2: bad input.")
    sources = parser.add_argument_group("metrics (as spml-loop check)")
    sources.add_argument("--log", action="append", default=[], metavar="PATH",
                         help="a metrics log (repeatable; format detected, or --log-format). Combined mode without "
                              "--log/--tensorboard/--wandb reads the metrics from the run's console output")
    sources.add_argument("--log-format", default="auto", choices=("auto", "jsonl", "nanogpt", "hf", "kv", "regex"),
                         help="format of --log files (default: detected)")
    sources.add_argument("--regex", help="a pattern with named groups (step, loss, ...); implies --log-format regex")
    sources.add_argument("--tensorboard", metavar="DIR", help="a TensorBoard log directory")
    sources.add_argument("--wandb", metavar="RUN", help="a WandB run (ENTITY/PROJECT/RUN_ID) or offline run directory")
    sources.add_argument("--context", metavar="PATH",
                         help="experiment-context.md: L1 baseline, expected steps, Watchdog settings; events are "
                              "appended to its Diagnosis History")
    sources.add_argument("--total-steps", type=int, metavar="N", help="expected total steps (overrides the context)")

    run_group = parser.add_argument_group("the run")
    run_group.add_argument("--pid", type=int, metavar="PID",
                           help="separated mode: the run's process (its end is noticed; STOP signals its group when "
                                "it leads one, else the process)")
    run_group.add_argument("--stop-command", metavar="CMD",
                           help="how to stop the run on STOP or a hang (shell; e.g. 'scancel $JOB', 'tmux "
                                "kill-session -t train'); $SPML_WATCH_PID holds the run's PID when known")
    run_group.add_argument("--resume-command", metavar="TEMPLATE",
                           help="how to restart after an environment failure (shell); {checkpoint} becomes the "
                                "newest complete checkpoint, {step} its step. Default in combined mode: the "
                                "original command again (it must resume by itself)")
    run_group.add_argument("--eval-command", metavar="TEMPLATE",
                           help="run in the background on each new complete checkpoint ({checkpoint}, {step}), "
                                "never two at once; results in STATE_DIR/evals.jsonl")
    run_group.add_argument("--output", metavar="PATH",
                           help="the run's console log: combined mode appends the command's stdout and stderr "
                                "there (default STATE_DIR/train.log); separated mode reads it to tell how the run "
                                "ended")
    # not "command": loop_cli's subparsers already use that name for the verb
    run_group.add_argument("train_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                           help="combined mode: the training command, after --")

    timing = parser.add_argument_group("timing")
    timing.add_argument("--interval", type=_positive(float), metavar="SECONDS",
                        help="seconds between checks (default: adaptive, 10 -> 20 -> 30 -> 60 minutes while healthy, "
                             "10 after an anomaly)")
    timing.add_argument("--poll", type=_positive(float), default=0.5, metavar="SECONDS",
                        help="how often the process is looked at between checks (default 0.5)")
    timing.add_argument("--grace", type=float, default=30.0, metavar="SECONDS",
                        help="SIGTERM to SIGKILL (default 30)")
    timing.add_argument("--backoff", type=float, default=30.0, metavar="SECONDS",
                        help="first restart delay; doubles with each crash in the alert window (default 30)")
    timing.add_argument("--backoff-cap", type=float, default=1800.0, metavar="SECONDS",
                        help="longest restart delay (default 1800)")
    timing.add_argument("--alert-crashes", type=_positive(int), default=5, metavar="N",
                        help="alert when N crashes fall within --alert-window (default 5)")
    timing.add_argument("--alert-window", type=_positive(float), default=1800.0, metavar="SECONDS",
                        help="(default 1800: 30 minutes)")

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--checkpoints", action="append", default=[], metavar="GLOB",
                      help="where checkpoints are (repeatable; relative to --checkpoint-dir; '**/' is any folders). "
                           f"Default: {' '.join(DEFAULT_PATTERNS)}")
    ckpt.add_argument("--checkpoint-dir", metavar="DIR", help="the folder the globs start in (default: current)")
    ckpt.add_argument("--checkpoint-settle", type=float, default=10.0, metavar="SECONDS",
                      help="a checkpoint is complete when unchanged this long and not a temporary name (default 10)")
    ckpt.add_argument("--load-failure-seconds", type=float, default=300.0, metavar="SECONDS",
                      help="a resume that dies with a load error within this time, before logging, falls back to "
                           "the previous checkpoint (default 300)")

    out = parser.add_argument_group("evidence")
    out.add_argument("--state-dir", default=".spml/watch", metavar="DIR",
                     help="watch-state.json, alerts.md, evals.jsonl, logs of the commands (default .spml/watch)")
    out.add_argument("--evidence-dir", metavar="DIR",
                     help="recovery-prompt.md, completion-prompt.md, FINAL_SUMMARY.md and the plot (default: next "
                          "to --context, else STATE_DIR)")
    out.add_argument("--no-history", action="store_true", help="do not append to the Diagnosis History of --context")
    out.add_argument("--no-plot", action="store_true", help="do not draw the PNG plot")
    out.add_argument("--no-progress", action="store_true", help="no progress and event lines on stderr")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def _config(args: argparse.Namespace) -> Any:
    from ..watch.checkpoints import DEFAULT_PATTERNS
    from ..watch.supervise import WatchConfig

    command = list(args.train_command)
    if command and command[0] == "--":
        command = command[1:]
    if command and command[0].startswith("-"):
        raise InputError(f"unknown option {command[0]!r} (the training command goes after --; see "
                         "'spml-loop watch --help')")
    if command and args.pid is not None:
        raise InputError("--pid watches a run started elsewhere; a command after -- starts one: use one of them")
    for name in ("grace", "backoff", "backoff_cap", "checkpoint_settle", "load_failure_seconds"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be 0 or more seconds")
    if args.backoff_cap < args.backoff:
        raise InputError("--backoff-cap must be at least --backoff")
    if args.checkpoint_dir and not Path(args.checkpoint_dir).is_dir():
        raise InputError("--checkpoint-dir is not a folder", args.checkpoint_dir)
    context = Path(args.context) if args.context else None
    if context is not None and not context.is_file():
        raise InputError("the experiment context does not exist (pass the experiment-context.md written by spml "
                         "handoff, or leave --context out)", context)
    state_dir = Path(args.state_dir)
    return WatchConfig(
        command=command or None, pid=args.pid, output=Path(args.output) if args.output else None,
        stop_command=args.stop_command, resume_command=args.resume_command, eval_command=args.eval_command,
        interval=args.interval, poll_seconds=min(args.poll, args.interval) if args.interval else args.poll,
        grace=args.grace, backoff=args.backoff, backoff_cap=args.backoff_cap, alert_crashes=args.alert_crashes,
        alert_window=args.alert_window, checkpoint_root=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        checkpoint_patterns=tuple(args.checkpoints) or DEFAULT_PATTERNS, checkpoint_settle=args.checkpoint_settle,
        load_failure_seconds=args.load_failure_seconds, state_dir=state_dir,
        evidence_dir=Path(args.evidence_dir) if args.evidence_dir else None, context=context,
        history=not args.no_history, plot=not args.no_plot, progress=not args.no_progress)


def run(args: argparse.Namespace) -> Report:
    import time

    from ..watch import check as checking
    from ..watch.supervise import Supervisor
    from .loop_check import check_total_steps, log_format, source_specs

    config = _config(args)
    check_total_steps(args)
    specs = source_specs(args)
    if not specs:
        if not config.combined:
            raise InputError("nothing to watch: pass --log PATH (or --tensorboard / --wandb) for a run started "
                             "elsewhere, or the training command after --")
        output = config.output or config.state_dir / "train.log"
        config.output = output
        fmt, regex = log_format(args)
        specs = [checking.SourceSpec("log", str(output), fmt=fmt, regex=regex)]
    if not config.combined and config.pid is None and not config.stop_command:
        note = "no --pid and no --stop-command: the watchdog can report a STOP but not act on it"
    else:
        note = None
    engine = checking.TrainingCheck(specs, checking.load_baseline(config.context, args.total_steps),
                                    checking.load_thresholds(config.context), started_at=time.time())
    engine.validate()  # every input is checked before anything is launched
    try:
        result = Supervisor(config, engine).run()
    except OSError as exc:
        raise InputError(f"cannot run the watch ({exc.strerror or exc})", exc.filename) from None
    return _report(result, note)


def _report(result: Any, note: str | None) -> Report:
    report = Report(tool=TOOL)
    if note:
        report.notes.append(note)
    report.notes.extend(result.notes)
    # one test case per check and per restart-related event (JUnit), the end last
    shown = {"check", "restart", "exit", "stop", "alert", "eval", "checkpoint_rejected"}
    for n, event in enumerate(result.events, 1):
        if event["kind"] not in shown:
            continue
        kind = event["kind"]
        # events are advisory (a crash that was restarted, a failed eval): the outcome below sets the exit code
        report.results.append(CheckResult(f"{kind}-{n}", Status.PASS if event["ok"] else Status.FAIL,
                                          event["message"], name=f"{kind} at {event['at']}", blocking=False,
                                          evidence={k: v for k, v in event.items() if k not in ("message",)}))
    ok = result.ok
    report.results.append(CheckResult("WATCH", Status.PASS if ok else Status.FAIL, f"{result.outcome}: {result.reason}",
                                      name="watch outcome"))
    last = result.last
    failure = result.failure
    report.summary.update(
        outcome=result.outcome, reason=result.reason,
        decision=last.verdict.decision if last is not None else None,
        status=last.verdict.status if last is not None else None,
        step=last.step if last is not None else None,
        failure=failure.to_dict() if failure is not None else None,
        attempts=result.attempts, restarts=result.restarts, crashes=result.crashes, alerts=result.alerts,
        evals=result.evals, rejected_checkpoints=result.rejected, files=result.files,
        last_check=last.summary if last is not None else None,
    )
    lines = [f"Watch  {time_stamp()}", f"  outcome:    {result.outcome}: {result.reason}",
             f"  attempts:   {result.attempts} (restarts {result.restarts}, environment crashes {result.crashes})"]
    if failure is not None:
        lines.append(f"  failure:    {failure.kind} ({failure.category}): {failure.summary}")
        if failure.location:
            lines.append(f"  look at:    {failure.location}")
        lines += [f"    | {line}" for line in failure.evidence]
    lines += [f"  ALERT:      {a}" for a in result.alerts]
    lines += [f"  rejected:   {r['path']} ({r['why']})" for r in result.rejected]
    lines += [f"  eval:       {e['checkpoint']}: {e['exit']}" for e in result.evals[-10:]]
    if last is not None:
        lines.append(f"  last check: {last.verdict.decision} ({last.verdict.status}) at step {last.step}: "
                     f"{last.verdict.reason}")
    lines += [f"  evidence:   {f}" for f in result.files]
    lines += [f"  note:       {n}" for n in report.notes]
    report.text = "\n".join(lines) + "\n"
    return report


def time_stamp() -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["TOOL", "add_parser", "run"]
