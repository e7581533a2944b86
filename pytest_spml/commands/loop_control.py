"""``spml-loop pause`` / ``unpause`` / ``note``: the human on the loop steers a running loop.

One module serves the three verbs. ``spml-loop`` imports it once per verb
it needs, so :func:`add_parser` adds whichever of the three are not there
yet. See :mod:`pytest_spml.loop.control` for how the loop reads the files
these commands write.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..cliutil import add_output_options
from ..errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..report import Report

TOOLS = {"pause": "spml-loop pause", "unpause": "spml-loop unpause", "note": "spml-loop note"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser | None:
    added = None
    for verb in TOOLS:
        added = _ADDERS[verb](subparsers)
    return added


def _repo_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", metavar="DIR", default=".", help="the repository (default: current directory)")


def _add_pause(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pause", help="ask the running loop to wait before its next round",
        description="Ask the loop in this repository (spml-loop run or iterate) to wait before its next round: the "
                    "round in progress finishes, then the loop waits with status 'paused' (spml-loop status) until "
                    "`spml-loop unpause`, `touch .spml/stop` or SIGTERM. Without a running loop, the next loop "
                    "started or resumed here waits before its first round.")
    parser.add_argument("reason", nargs="*", help="why (shown in the loop's status)")
    _repo_option(parser)
    add_output_options(parser)
    parser.set_defaults(run=run_pause, tool=TOOLS["pause"])
    return parser


def _add_unpause(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("unpause", help="let a paused loop go on",
                                   description="Remove the pause request: a waiting loop starts its next round "
                                               "within a poll interval.")
    _repo_option(parser)
    add_output_options(parser)
    parser.set_defaults(run=run_unpause, tool=TOOLS["unpause"])
    return parser


def _add_note(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "note", help="leave a note for the next round's researcher",
        description="Leave a note for the researcher of the next round: it goes into that round's prompt (a section "
                    "'Notes from the human on the loop') and its experiences row mentions it. Notes wait in "
                    ".spml/notes/ until a round takes them.")
    parser.add_argument("text", nargs="+", help="the note (several words are joined with spaces)")
    _repo_option(parser)
    add_output_options(parser)
    parser.set_defaults(run=run_note, tool=TOOLS["note"])
    return parser


_ADDERS = {"pause": _add_pause, "unpause": _add_unpause, "note": _add_note}


def _loop(args: argparse.Namespace) -> tuple[Any, Any, int | None]:
    """(paths, state or None, pid of the running loop or None) of the repository."""
    from .. import gitcmd
    from ..loop.state import LoopPaths, holder_pid, load_state

    root = gitcmd.repo_info(args.repo).root
    paths = LoopPaths(root)
    return paths, load_state(paths), holder_pid(paths.lock)


def _report(tool: str, check_id: str, message: str, paths: Any, state: Any, pid: int | None, **summary: Any) -> Report:
    from ..loop import control
    from ..report import CheckResult, Report, Status

    report = Report(tool=tool)
    report.results.append(CheckResult(check_id, Status.PASS, message, name=tool))
    report.summary.update(running_pid=pid if pid and pid > 0 else None,
                          status=state.status if state is not None else None,
                          paused=control.pause_info(paths) is not None,
                          pending_notes=[n.to_dict() for n in control.pending_notes(paths)], **summary)
    report.notes.extend(control.describe(paths, state))
    report.text = f"{tool}: {message}\n"
    return report


def _where(state: Any, pid: int | None) -> str:
    if not pid:
        return ""
    current = state.current if state is not None else None
    if current is not None and current.step != "done":
        return f" (pid {pid}, round {current.n} at step {current.step})"
    return f" (pid {pid})"


def run_pause(args: argparse.Namespace) -> Report:
    from ..loop import control

    paths, state, pid = _loop(args)
    reason = " ".join(args.reason).strip()
    new = control.request_pause(paths, reason)
    if state is not None and state.status == "paused" and pid:
        message = f"the loop is already paused{_where(state, pid)}; `spml-loop unpause` lets it go on"
    elif pid:
        message = (f"pause requested: the loop{_where(state, pid)} finishes the round in progress and waits before "
                   f"the next one; `spml-loop unpause` lets it go on")
        if not new:
            message = "a pause was already requested: " + message
    else:
        message = ("no loop is running here; the next `spml-loop run/iterate` started or resumed here waits before "
                   "its first round until `spml-loop unpause`")
    return _report(args.tool, "loop/pause", message, paths, state, pid, requested=new)


def run_unpause(args: argparse.Namespace) -> Report:
    from ..loop import control

    paths, state, pid = _loop(args)
    released = control.release_pause(paths)
    if not released:
        message = "no pause was requested; nothing to do"
    elif pid:
        message = f"unpaused: the loop{_where(state, pid)} goes on with its next round"
    else:
        message = "pause request removed (no loop is running here)"
    return _report(args.tool, "loop/unpause", message, paths, state, pid, released=released)


def run_note(args: argparse.Namespace) -> Report:
    from ..loop import control

    text = " ".join(args.text).strip()
    if not text:
        raise InputError("the note is empty; write what the next researcher should know, e.g. "
                         "spml-loop note \"try a cosine schedule\"")
    paths, state, pid = _loop(args)
    note = control.add_note(paths, text)
    next_round = (state.rounds_done + 1 + (1 if state.current is not None and state.current.step != "done" else 0)
                  if state is not None else 1)
    message = (f"note queued for round {next_round}: it goes into that round's researcher prompt and its "
               f"experiences row" + ("" if pid else " (no loop is running here: the next one started or resumed "
                                                     "here reads it)"))
    return _report(args.tool, "loop/note", message, paths, state, pid, note=note.to_dict(), next_round=next_round)
