"""``spml-loop status``: where the rounds in this repository stand (and a way to ask them to stop)."""

from __future__ import annotations

import argparse

from ..cliutil import add_output_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..report import Report

TOOL = "spml-loop status"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "status", help="the state of the rounds in this repository",
        description="Show the loop in .spml/: running or not, the round and step in progress, the best metric, "
                    "the last rounds and any plateau warning. Exit 0; 2 when there is no loop.")
    parser.add_argument("--repo", metavar="DIR", default=".", help="the repository (default: current directory)")
    parser.add_argument("--last", type=int, default=5, metavar="N", help="rounds to show (default 5)")
    parser.add_argument("--stop", action="store_true",
                        help="ask the running loop to stop after the round in progress (writes .spml/stop)")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def run(args: argparse.Namespace) -> Report:
    from ..fsutil import atomic_write
    from ..loop import summary
    from ..loop.experiences import load_rows
    from ..loop.state import existing_loop, holder_pid
    from ..report import Report

    paths, state = existing_loop(args.repo)
    rows = load_rows(paths)
    pid = holder_pid(paths.lock)
    report = Report(tool=TOOL)
    if args.stop:
        if pid is None:
            report.notes.append("no loop is running; nothing to stop")
        else:
            atomic_write(paths.stop, "stop requested by spml-loop status --stop\n")
            report.notes.append(f"asked the loop (pid {pid}) to stop after the round in progress")
    running = f"running (pid {pid})" if pid else "not running"
    if pid is None and state.status in ("running", "paused"):
        # the state says a loop is at work, but none holds the lock: it was killed (kill -9, a crash, a reboot)
        import copy

        command = "iterate" if (paths.dir / "criteria.yaml").is_file() else "run"
        resume = f"resume with spml-loop {command} --resume"
        current = state.current
        at = ""
        if current is not None and current.step != "done":
            what = "baseline run" if current.kind == "baseline" else f"round {current.n}"
            at = f"{what} at step {current.step}; "
        state = copy.deepcopy(state)
        state.status, state.stop_reason = "interrupted", f"{at}no loop holds the lock; {resume}"
        running = f"interrupted (no loop holds the lock); {resume}"
    extra = [f"{TOOL}: {running}; {state.rounds_done} round(s) recorded; experiences in "
             f"{paths.rel(paths.experiences)}", *report.notes]
    if paths.stop.exists():
        extra.append(f"{TOOL}: a stop is requested ({paths.rel(paths.stop)})")
    shown = [r for r in rows if r.kind == "round"][-max(0, args.last):] if args.last > 0 else []
    summary.fill(report, state, shown, paths, f"spml-loop status: {state.branch}", extra, with_rounds=False)
    report.summary.update(running=pid is not None, pid=pid, stop_requested=paths.stop.exists(),
                          rounds=[r.to_dict() for r in rows])
    return report
