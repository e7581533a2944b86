"""``spml-loop run``: autoresearch rounds under ``autoresearch-protocol.md``."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..cliutil import add_output_options
from ..errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..report import Report

TOOL = "spml-loop run"

_EPILOG = """\
researchers:
  --researcher 'CMD'        any program (a coding agent's CLI); {prompt} in CMD is replaced by the prompt file.
                            It gets SPML_ROUND, SPML_PROMPT, SPML_STRATEGY (write 'strategy: ...' and
                            'insight: ...' lines there), SPML_PROTOCOL, SPML_EXPERIENCES, SPML_RESULTS,
                            SPML_BASE, SPML_BRANCH, SPML_ROUND_DIR, SPML_REPO.
  --researcher sample       sample variable.range (Optuna TPE when installed, else random / log-uniform) and
                            write the values into the Variable file that sets each key.
  --researcher script:PATH  replay patches: a folder of *.patch files (round N applies the N-th), one patch,
                            or a file listing patch paths.

each round: researcher -> compliance against the round's base (a violation skips training) -> training under
fixed.time_limit (SIGTERM at the limit, SIGKILL to the process group at 2x; the watchdog stops a run that goes
NaN) -> Fixed files restored and re-checked -> the fixed eval with a fresh result path ($SPML_RESULT, or {result}
in eval.command; only that file counts) and a private bytecode cache -> commit on the loop's branch when strictly
better than the best by more than min_delta (or the measured noise floor), else roll back and keep the diff in
.spml/rounds/. History: .spml/experiences.md, results.tsv, results.jsonl. Stop: touch .spml/stop, SIGTERM/SIGINT,
--budget, max_rounds, the target. Exit 0: every round ran its steps cleanly; 1: a round failed a step (violation,
crash, NaN, timeout); 2: bad input.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run", help="autoresearch rounds under autoresearch-protocol.md",
        description="Run autoresearch rounds: a researcher edits Variable files; the loop checks compliance,\n"
                    "trains under the time limit, runs the fixed evaluation, commits improvements on its own\n"
                    "branch (autoresearch/<tag>), rolls back the rest and keeps an experiences log.\n"
                    "Trust model and limits: docs/autoresearch-trust-model.md",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", metavar="PATH",
                        help="the protocol (default: [tool.spml] protocol, else autoresearch-protocol.md)")
    parser.add_argument("--repo", metavar="DIR", default=".", help="the repository (default: current directory)")
    parser.add_argument("--researcher", metavar="SPEC",
                        help="'CMD', 'sample' or 'script:PATH' (see below); --resume reuses the loop's own")
    parser.add_argument("--tag", help="the loop's branch is the protocol's branch pattern with * = TAG "
                                      "(default: the current branch when it matches, else today's date)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the loop in .spml/ (after a stop, a crash or kill -9)")
    parser.add_argument("--max-rounds", type=int, metavar="N", help="override the protocol's max_rounds")
    parser.add_argument("--budget", metavar="DURATION", help="wall-clock budget of this run (e.g. 8h); the round in "
                                                               "progress finishes")
    parser.add_argument("--noise-floor", action="store_true",
                        help="before round 1, train and evaluate the unchanged base twice; gains below 2 sigma of "
                             "the two are not improvements, and the best starts at their mean")
    parser.add_argument("--last-rows", type=int, default=5, metavar="N",
                        help="experiences rows in the researcher's prompt (default 5)")
    parser.add_argument("--researcher-timeout", default="1h", metavar="DURATION",
                        help="kill a researcher command after this long (default 1h)")
    parser.add_argument("--eval-timeout", metavar="DURATION", help="kill the eval after this long "
                                                                      "(default: fixed.time_limit)")
    parser.add_argument("--metrics-log", action="append", default=[], metavar="PATH",
                        help="a JSONL metrics log training writes, watched by the detectors (repeatable; "
                             "$SPML_METRICS_LOG and the captured output are always watched)")
    parser.add_argument("--context", metavar="PATH", help="experiment-context.md whose Watchdog settings tune "
                                                           "the detectors")
    parser.add_argument("--no-watch", action="store_true", help="no watchdog during training")
    parser.add_argument("--sampler", choices=("auto", "random", "tpe"), default="auto",
                        help="--researcher sample: tpe needs Optuna; auto uses it when installed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --researcher sample (default 0)")
    parser.add_argument("--poll", type=float, default=0.5, metavar="SECONDS", help=argparse.SUPPRESS)
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def _duration(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    from ..protocol import parse_duration

    seconds = parse_duration(value)
    if seconds is None or seconds <= 0:
        raise InputError(f"{flag} must be a positive duration such as 90, '30m' or '8h', got {value!r}")
    return seconds


def make_researcher(spec: str, protocol, sampler: str, root: Path):  # noqa: ANN001, ANN201
    from ..loop.researcher import CommandResearcher, SampleResearcher, ScriptResearcher

    if spec == "sample":
        return SampleResearcher(protocol, use_optuna={"auto": None, "random": False, "tpe": True}[sampler])
    if spec.startswith("script:"):
        path = Path(spec[len("script:"):])
        return ScriptResearcher(path if path.is_absolute() else (Path.cwd() / path))
    return CommandResearcher(spec, 0.0)


@dataclass
class LoopSetup:
    """A loop opened for this invocation (locked): what both ``run`` and ``iterate`` hand their engine."""

    root: Path
    paths: Any
    state: Any
    protocol: Any
    researcher: Any
    notes: list[str]
    budget_s: float | None
    researcher_timeout_s: float
    eval_timeout_s: float | None
    thresholds: Any  # the context's Watchdog settings, or None for the defaults

    def engine_options(self, args: argparse.Namespace, **extra: Any) -> Any:
        from ..loop.engine import EngineOptions

        return EngineOptions(last_rows=args.last_rows, researcher_timeout_s=self.researcher_timeout_s,
                             eval_timeout_s=self.eval_timeout_s, budget_s=self.budget_s,
                             measure_noise=args.noise_floor, metrics_logs=tuple(Path(p) for p in args.metrics_log),
                             thresholds=self.thresholds, watch=not args.no_watch, poll_s=max(0.05, args.poll),
                             seed=args.seed, progress=sys.stderr, **extra)


_NO_RESEARCHER = ("no researcher: pass --researcher 'CMD' (a coding agent's CLI), --researcher sample or "
                  "--researcher script:PATH")


@contextmanager
def open_loop(args: argparse.Namespace, *, on_resume: Callable[[Any, Any, list[str]], None] | None = None,
              on_start: Callable[[Any], None] | None = None) -> Iterator[LoopSetup]:
    """Validate the options, take the repository's loop lock, and start a new loop or resume the one in .spml/.

    Bad input is refused before anything is written. ``on_resume(state, paths, notes)`` and
    ``on_start(paths)`` let a command add its own checks and files (``iterate``'s criteria).
    """
    from .. import gitcmd
    from ..loop.researcher import CommandResearcher
    from ..loop.start import check_resume, exclude_state_dir, start_new
    from ..loop.state import LoopLock, LoopPaths, load_state
    from ..protocol import load_protocol

    if args.max_rounds is not None and args.max_rounds < 1:
        raise InputError(f"--max-rounds must be >= 1, got {args.max_rounds}")
    if args.last_rows < 0:
        raise InputError(f"--last-rows must be >= 0, got {args.last_rows}")
    budget = _duration(args.budget, "--budget")
    researcher_timeout = _duration(args.researcher_timeout, "--researcher-timeout") or 3600.0
    eval_timeout = _duration(args.eval_timeout, "--eval-timeout")
    thresholds = None
    if args.context:
        from ..watch.check import load_thresholds

        context = Path(args.context)
        if context.is_dir():
            raise InputError("--context is a directory; pass the experiment-context.md file itself", context)
        if not context.is_file():
            raise InputError("--context: no such file (the experiment context written by `spml handoff`)", context)
        thresholds = load_thresholds(context)
    info = gitcmd.repo_info(args.repo)
    root = info.root
    for log in args.metrics_log:
        check_metrics_log(log, root)
    paths = LoopPaths(root)
    # bad input is reported before anything is written (the lock file creates .spml/)
    for path in (paths.dir, paths.state):
        if path.exists() and not (path.is_dir() if path == paths.dir else path.is_file()):
            kind = "a directory" if path.is_dir() else "not a regular file" if path == paths.state else "a file"
            raise InputError(f"{paths.rel(path)} is {kind}, which the loop cannot use (the loop keeps its state in "
                             ".spml/state.json); move it away, then start a loop or --resume", path)
    if not args.resume and info.head is None and not paths.state.is_file():
        raise InputError("the repository has no commits; commit the validated baseline first", root)
    if args.resume and not paths.state.is_file():
        raise InputError("nothing to resume: no loop state in .spml/; start a loop without --resume", paths.state)
    if not args.resume and not args.researcher and not paths.state.is_file():
        raise InputError(_NO_RESEARCHER)
    # ignored before the lock file creates .spml/: a user's `git add -A` must never stage the loop's files
    exclude_state_dir(info.git_dir)
    lock = LoopLock(paths.lock)
    lock.acquire()
    try:
        notes: list[str] = []
        state = load_state(paths)
        if args.resume:
            if state is None:
                raise InputError("nothing to resume: no loop state in .spml/; start a loop without --resume",
                                 paths.state)
            if on_resume is not None:
                on_resume(state, paths, notes)
            protocol = load_protocol(root / state.protocol, root)
            if args.max_rounds is not None:
                state.max_rounds = args.max_rounds
            spec = args.researcher or state.researcher
            if args.researcher:
                state.researcher = args.researcher
            notes += check_resume(root, state, protocol)
            if paths.stop.exists():
                paths.stop.unlink()
                notes.append("removed a stop request left from before this run")
        else:
            if state is not None:
                raise InputError(f"a loop already lives in .spml/ (branch {state.branch}, {state.rounds_done} "
                                 f"round(s), {state.status}); pass --resume to continue it, or move .spml/ away to "
                                 "start a new one", paths.state)
            if not args.researcher:
                raise InputError(_NO_RESEARCHER)
            protocol = load_protocol(_protocol_path(args, root), root)
            spec = args.researcher
            make_researcher(spec, protocol, args.sampler, root)  # validate before touching the repo
            state, started = start_new(root, paths, protocol, args.tag, args.max_rounds, spec)
            if on_start is not None:
                on_start(paths)
            notes += started
        researcher = make_researcher(spec, protocol, args.sampler, root)
        if isinstance(researcher, CommandResearcher):
            researcher.timeout_s = researcher_timeout
        for note in notes:
            sys.stderr.write(f"spml-loop: {note}\n")
        yield LoopSetup(root, paths, state, protocol, researcher, notes, budget, researcher_timeout, eval_timeout,
                        thresholds)
    finally:
        lock.release()


def check_metrics_log(value: str, root: Path) -> None:
    """A --metrics-log is a JSONL file training writes: it may not exist yet, but it is never a folder or binary."""
    path = Path(value)
    path = path if path.is_absolute() else root / path  # as the engine resolves it
    if path.is_dir():
        raise InputError("--metrics-log is a directory; pass the JSONL file training writes", path)
    if path.exists():
        if not path.is_file():
            raise InputError("--metrics-log is not a regular file; pass the JSONL file training writes", path)
        try:
            with open(path, "rb") as fh:
                head = fh.read(8192)
        except OSError as exc:
            raise InputError(f"--metrics-log cannot be read ({exc.strerror})", path) from None
        if b"\0" in head:
            raise InputError("--metrics-log is a binary file, not a JSONL log (one JSON record a line)", path)
    elif not path.parent.is_dir():
        if path.parent.exists():
            raise InputError("--metrics-log: its parent is not a directory", path)


def run(args: argparse.Namespace) -> Report:
    from ..loop import summary
    from ..loop.engine import Engine
    from ..loop.judge import ImprovementJudge
    from ..report import Report

    with open_loop(args) as loop:
        engine = Engine(loop.root, loop.protocol, loop.state, loop.paths,
                        ImprovementJudge(loop.protocol.eval_direction), loop.researcher, loop.engine_options(args))
        engine.run()
        report = Report(tool=TOOL)
        report.notes.extend(loop.notes)
        state, paths = loop.state, loop.paths
        ran = len(engine.recorded)
        summary.fill(report, state, engine.rows, paths, f"spml-loop run: {state.branch}",
                     extra=[f"{TOOL}: {ran} round(s) this run; {state.status}: {state.stop_reason}; "
                            f"experiences in {paths.rel(paths.experiences)}"])
        report.summary["rounds_this_run"] = ran
        return report


def _protocol_path(args: argparse.Namespace, root: Path) -> Path:
    if args.protocol:
        path = Path(args.protocol)
        path = path if path.is_absolute() else Path.cwd() / path
    else:
        from ..config import load_config

        path = root / load_config(root).protocol
    if path.is_dir():
        raise InputError("is a directory; pass the protocol file itself with --protocol PATH", path)
    if not path.is_file():
        raise InputError("protocol file not found; pass --protocol PATH or run `spml init`", path)
    return path
