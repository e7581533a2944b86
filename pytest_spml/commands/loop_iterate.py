"""``spml-loop iterate``: ml-iteration rounds, judged by the compound criteria of ``criteria.yaml``.

The same round engine as ``spml-loop run`` (branch, compliance, supervised
training, the fixed eval with its fresh result path, rollback with the diff
kept, crash-safe state, experiences) with
:class:`~pytest_spml.loop.criteria.CriteriaJudge` in place of "strictly
better than the best". Every option of ``run`` works here too (the parser is
built from ``run``'s), plus ``--criteria`` and ``--keep-going``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cliutil import add_output_options
from ..errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..report import CheckResult, Report

TOOL = "spml-loop iterate"
SAVED_CRITERIA = "criteria.yaml"  # under .spml/: the criteria the loop judges by

_EPILOG = """\
criteria.yaml (every criterion is required unless it says `required: false`):
  metrics:        accuracy: ">= 0.85"              numbers from the eval's result file for this round only
  performance:    first_step_time: "<= 30s"        from the step log ($SPML_METRICS_LOG), the L1 report
                  mfu: {check: ">= 30%", from: l1}   (.spml/l1-report.json, written during the round) or the eval
  observability:  keys: [loss, grad_norm]          keys every step record of the step log carries
  stability:      nan_inf: true, warnings: true    no NaN/Inf (watchdog detectors), no autograd warning lines
  custom:         hf_format: "python check_hf.py"  a command that exits 0 (it must not change the work tree)
  (`spml init --only criteria` writes a commented example.)

verdicts: commit when every required criterion passes; accept (committed, with a note) when only advisory
criteria fail; roll back (diff kept under .spml/rounds/) when a required criterion or a step fails. The loop
stops when a committed round passes every criterion (--keep-going: at max_rounds), at --budget, on
`touch .spml/stop` or SIGTERM. The human on the loop: `spml-loop pause` / `unpause` between rounds, `spml-loop
note "text"` for the next researcher's prompt. The criteria are copied to .spml/criteria.yaml at the start;
--resume judges by that copy unless --criteria names a new one. Researchers, the protocol (commands, Fixed and
Variable files, time limit) and the round's steps are those of `spml-loop run` (see `spml-loop run --help`).
Exit 0: every round passed its required criteria and ran its steps; 1: a round failed a required criterion
or a step (it was rolled back); 2: bad input.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from . import loop_run

    # the options of `spml-loop run`, taken from its own parser: one definition for both loops
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    run_parser = loop_run.add_parser(scratch)
    parser = subparsers.add_parser(
        "iterate", parents=[run_parser], conflict_handler="resolve",
        help="ml-iteration rounds judged by compound criteria",
        description="Run ml-iteration rounds: a researcher edits the code; the loop checks compliance, trains under "
                    "the protocol's time limit, runs the fixed evaluation and reviews the round against the criteria "
                    "of criteria.yaml (metrics, performance, observability, stability, custom commands): commit, "
                    "accept with a note, or roll back.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--criteria", metavar="PATH",
                        help="the review criteria (default: criteria.yaml at the repository root; with --resume: the "
                             "loop's copy in .spml/criteria.yaml)")
    parser.add_argument("--keep-going", action="store_true",
                        help="do not stop when a round meets every criterion; run to max_rounds")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def _criteria_path(args: argparse.Namespace, root: Path) -> Path:
    if args.criteria:
        path = Path(args.criteria)
        return path if path.is_absolute() else Path.cwd() / path
    return root / "criteria.yaml"


def run(args: argparse.Namespace) -> Report:
    from ..fsutil import atomic_write
    from ..loop.criteria import CriteriaJudge, load_criteria, prompt_builder
    from ..loop.engine import Engine
    from ..report import Report
    from .loop_run import open_loop

    # the criteria are read (and refused when wrong) before the repository is touched
    chosen = None
    if args.criteria or not args.resume:
        from .. import gitcmd

        root = gitcmd.repo_info(args.repo).root
        chosen = load_criteria(_criteria_path(args, root))
        check_committed(chosen.path, root)
        check_commands(chosen, root)
    criteria = [chosen]

    def on_resume(state: Any, paths: Any, notes: list[str]) -> None:
        saved = paths.dir / SAVED_CRITERIA
        if not saved.is_file():
            raise InputError("this loop was started by `spml-loop run` (no .spml/criteria.yaml); resume it with "
                             "`spml-loop run --resume`", paths.state)
        if chosen is None:
            criteria[0] = load_criteria(saved)
        elif chosen.text != saved.read_text(encoding="utf-8", errors="replace"):
            atomic_write(saved, chosen.text)
            notes.append(f"criteria replaced by {chosen.path} from the next round on")

    def on_start(paths: Any) -> None:
        atomic_write(paths.dir / SAVED_CRITERIA, chosen.text)

    with open_loop(args, on_resume=on_resume, on_start=on_start) as loop:
        judge = CriteriaJudge(criteria[0], loop.root, loop.paths, loop.protocol.eval_direction,
                              keep_going=args.keep_going)
        engine = Engine(loop.root, loop.protocol, loop.state, loop.paths, judge, loop.researcher,
                        loop.engine_options(args, prompt_builder=prompt_builder(criteria[0])))
        judge.rows = engine.rows
        judge.run_command = _supervised(engine)
        engine.run()
        report = Report(tool=TOOL)
        report.notes.extend(loop.notes)
        fill_report(report, engine, criteria[0], loop.paths)
        return report


def check_committed(path: Path, root: Path) -> None:
    """A criteria file inside the repository must be committed (or ignored): the loop starts from a clean base."""
    from .. import gitcmd

    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return  # outside the repository: no round can edit it
    if rel.startswith(".spml/"):
        return
    tracked = gitcmd.run_git(root, ["ls-files", "-z", "--", rel], check=False)
    if not tracked:
        if _ignored(root, rel):
            return  # ignored: outside compliance and rollback, like a file outside the repository
        raise InputError(f"the criteria file is not committed; commit it with your baseline (`git add {rel} && git "
                         "commit`), outside the Variable files, so no round can edit it (or keep it outside the "
                         "repository)", path)
    if _changed(root, rel):
        raise InputError(f"the criteria file has uncommitted changes; commit them (`git commit {rel}`) before "
                         "starting the loop, which starts from a clean commit", path)


def _ignored(root: Path, rel: str) -> bool:
    import subprocess

    return subprocess.run(["git", "check-ignore", "-q", "--", rel], cwd=root, capture_output=True).returncode == 0


def _changed(root: Path, rel: str) -> bool:
    import subprocess

    done = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", rel], cwd=root, capture_output=True)
    return done.returncode == 1


_BUILTINS = frozenset(("true", "false", "test", "[", "exit", "cd", "echo", "printf", "exec", "command", "env",
                       ":", "!", "set", "export", "source", ".", "eval", "time"))


def check_commands(criteria: Any, root: Path) -> None:
    """Each custom criterion's program exists before round 1: a typo would otherwise fail every round."""
    import os
    import shlex
    import shutil

    for c in criteria.items:
        if c.kind != "custom":
            continue
        try:
            words = shlex.split(c.command)
        except ValueError:
            continue  # shell syntax shlex cannot follow: the shell will say
        words = [w for w in words if not (("=" in w) and w.split("=", 1)[0].isidentifier())] or words
        if not words:
            continue
        program = words[0]
        if program in _BUILTINS or any(ch in program for ch in "$`*?(){};|&<>"):
            continue
        if "/" in program:
            target = Path(program) if Path(program).is_absolute() else root / program
            if not target.is_file():
                raise InputError(f"custom criterion '{c.name}': its program {program} does not exist (commands run "
                                 "from the repository root)", criteria.path, c.line)
            if not os.access(target, os.X_OK):
                raise InputError(f"custom criterion '{c.name}': its program {program} is not executable "
                                 f"(`chmod +x {program}`, or run it through its interpreter)", criteria.path, c.line)
        elif shutil.which(program) is None:
            raise InputError(f"custom criterion '{c.name}': command not found: {program} (not on PATH)",
                             criteria.path, c.line)


def _supervised(engine: Any) -> Any:
    """Custom criteria run like the loop's other commands: supervised, interruptible, and the tree left as it was."""
    from ..loop import engine as engine_module
    from ..loop.criteria import CommandResult

    def run_command(command: str, *, cwd: Path, env: dict[str, str], log: Path, timeout: float) -> CommandResult:
        cur = engine.state.current
        before = engine.git.snapshot(cur.base) if cur is not None else None
        result = engine.supervisor.run(command, cwd=cwd, env=env, log=log, time_limit=timeout,
                                       grace=min(timeout, 10.0))
        if cur is not None:
            engine._child_done(cur, result)
        if result.stopped == "interrupted":
            raise engine_module._Interrupted()  # the engine rolls the round back and stops, as for its own steps
        changed: list[str] = []
        if before is not None:
            after = engine.git.snapshot(cur.base)
            if after != before:
                changed = engine.git.changed_paths(before, after) or ["(the work tree)"]
        return CommandResult(result.code, result.seconds, result.stopped, changed)

    return run_command


_STATUS_OF = {"pass": "PASS", "fail": "FAIL", "error": "ERROR", "skip": "SKIP"}


def criteria_results(rows: list[Any]) -> list[CheckResult]:
    """One result per round and criterion (``round-3/criteria/metrics/accuracy``): rounds as tests in JUnit."""
    from ..loop.criteria import row_criteria
    from ..loop.summary import round_results
    from ..report import CheckResult, Status

    results: list[CheckResult] = []
    for row in rows:
        if row.kind != "round":
            continue
        results.extend(round_results([row]))
        for item in row_criteria(row).get("results", []):
            status = Status(item.get("status", "skip"))
            required = bool(item.get("required", True))
            kind = "required" if required else "advisory"
            results.append(CheckResult(
                f"round-{row.round}/criteria/{item.get('id')}", status, str(item.get("message", "")),
                name=f"round {row.round}: {kind} criterion {item.get('id')}", blocking=required,
                evidence={k: v for k, v in item.items() if k in ("value", "required")}))
    return results


def fill_report(report: Report, engine: Any, criteria: Any, paths: Any) -> None:
    from ..loop import summary
    from ..loop.criteria import met_round, row_criteria

    state, rows = engine.state, engine.rows
    ran = len(engine.recorded)
    met = met_round(rows)
    last = next((r for r in reversed(rows) if r.kind == "round"), None)
    extra = []
    if last is not None and row_criteria(last).get("results"):
        extra.append(f"review of round {last.round} ({last.verdict}):")
        for item in row_criteria(last)["results"]:
            kind = "" if item.get("required", True) else " (advisory)"
            status = _STATUS_OF.get(item.get("status"), "?")
            extra.append(f"  {status:<5} {item.get('id')}{kind}: {item.get('message')}")
        extra.append("")
    stopped = f"{state.status}: {state.stop_reason}" if state.stop_reason else state.status
    if met is None:
        stopped += "; the criteria are not all met yet"
    elif "criteria met" not in stopped:
        stopped += f"; all criteria met by round {met}"
    extra.append(f"{TOOL}: {ran} round(s) this run; {stopped}; experiences in {paths.rel(paths.experiences)}")
    summary.fill(report, state, rows, paths, f"spml-loop iterate: {state.branch}", extra=extra, with_rounds=False)
    report.results[:0] = criteria_results(rows)
    report.summary["rounds_this_run"] = ran
    report.summary["criteria"] = [c.to_dict() for c in criteria.items]
    report.summary["criteria_file"] = paths.rel(paths.dir / SAVED_CRITERIA)
    report.summary["criteria_met_round"] = met
