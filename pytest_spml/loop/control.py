"""The human on the loop: pause, unpause and notes for the next researcher.

A running loop (``spml-loop run`` or ``iterate``) is steered through files
in ``.spml/``, like its stop request (``.spml/stop``), so the commands that
write them need no connection to the loop and work while it trains:

* ``.spml/pause`` (``spml-loop pause``): before starting the next round the
  loop sees it, sets its status to ``paused`` in ``state.json`` (what
  ``spml-loop status`` shows) and waits, polling, until the file is gone
  (``spml-loop unpause``), a stop is requested (``.spml/stop``) or it gets
  SIGTERM/SIGINT. The round in progress always finishes first; a pause never
  interrupts a step. Time spent paused counts toward ``--budget`` (a wall-clock
  budget).
* ``.spml/notes/*.json`` (``spml-loop note "text"``): pending notes. When the
  next round starts, the loop moves them into that round's folder
  (``.spml/rounds/NNNN/notes/``, a rename: a note is never lost or read
  twice), adds them to the researcher's prompt and mentions them in the
  round's experiences row. A round restarted after a crash reads the notes
  it had already taken.

Standard library only: the engine imports this module.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..fsutil import atomic_write
from .state import LoopPaths, LoopState

PAUSE_FILE = "pause"
NOTES_DIR = "notes"
_POLL_MAX_S = 0.5


def pause_path(paths: LoopPaths) -> Path:
    return paths.dir / PAUSE_FILE


def notes_dir(paths: LoopPaths) -> Path:
    return paths.dir / NOTES_DIR


# ------------------------------------------------------------------------------------------------ pause

def request_pause(paths: LoopPaths, reason: str = "") -> bool:
    """Ask the loop to wait before its next round; False when a pause was already requested."""
    path = pause_path(paths)
    if path.exists():
        return False
    atomic_write(path, json.dumps({"requested_at": time.time(), "pid": os.getpid(), "reason": reason}) + "\n")
    return True


def release_pause(paths: LoopPaths) -> bool:
    """Let the loop go on; False when no pause was requested."""
    try:
        pause_path(paths).unlink()
    except FileNotFoundError:
        return False
    return True


def pause_info(paths: LoopPaths) -> dict[str, Any] | None:
    """The pending pause request ({requested_at, reason}), or None."""
    try:
        text = pause_path(paths).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}  # a hand-made `touch .spml/pause` pauses too
    return doc if isinstance(doc, dict) else {}


def wait_if_paused(paths: LoopPaths, state: LoopState, *, save: Callable[[], None], say: Callable[[str], None],
                   interrupted: Callable[[], str | None], poll_s: float = 0.5) -> bool:
    """The engine's hook between rounds: wait while ``.spml/pause`` exists; True when it waited.

    The wait ends when the pause file is removed, a stop is requested
    (``.spml/stop``: the engine's next stop check takes it) or the loop gets a
    signal. The status in ``state.json`` is ``paused`` meanwhile.
    """
    info = pause_info(paths)
    if info is None or interrupted() or paths.stop.exists():
        return False
    reason = info.get("reason") or ""
    state.status = "paused"
    state.stop_reason = ("paused with `spml-loop pause`" + (f" ({reason})" if reason else "")
                         + f" before round {state.rounds_done + 1}; `spml-loop unpause` to go on")
    save()
    say(f"paused before round {state.rounds_done + 1}: waiting for `spml-loop unpause` (or `touch "
        f"{paths.rel(paths.stop)}` to stop)")
    started = time.monotonic()
    while pause_path(paths).exists() and not interrupted() and not paths.stop.exists():
        time.sleep(min(max(poll_s, 0.01), _POLL_MAX_S))
    state.status, state.stop_reason = "running", None
    save()
    waited = time.monotonic() - started
    if not pause_path(paths).exists():
        say(f"unpaused after {waited:.1f} s")
    return True


# ------------------------------------------------------------------------------------------------ notes

@dataclass(frozen=True)
class Note:
    text: str
    time: float
    name: str  # file name: orders notes by the time they were left

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "time": self.time, "name": self.name}


def add_note(paths: LoopPaths, text: str) -> Note:
    """Queue a note for the next round's researcher."""
    now = time.time()
    name = f"{time.time_ns():020d}-{os.getpid()}.json"
    folder = notes_dir(paths)
    for parent in (paths.dir, folder):
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{paths.rel(parent)} is not a directory (the loop keeps pending notes in "
                             f"{paths.rel(folder)}/); move it away and note again", parent)
    try:
        atomic_write(folder / name, json.dumps({"text": text, "time": now}) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write the note ({exc.strerror or exc})", folder) from None
    return Note(text, now, name)


def _read_notes(folder: Path) -> list[Note]:
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return []
    notes = []
    for name in names:
        try:
            doc = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("text"), str) and doc["text"].strip():
            notes.append(Note(doc["text"].strip(), float(doc.get("time") or 0.0), name))
    return notes


def pending_notes(paths: LoopPaths) -> list[Note]:
    return _read_notes(notes_dir(paths))


def claim_notes(paths: LoopPaths, round_dir: Path) -> list[Note]:
    """Move the pending notes into ``round_dir/notes/``; every note of this round (also ones taken before a crash)."""
    target = round_dir / NOTES_DIR
    pending = pending_notes(paths)
    if pending:
        target.mkdir(parents=True, exist_ok=True)
    for note in pending:
        try:
            os.replace(notes_dir(paths) / note.name, target / note.name)
        except FileNotFoundError:  # taken by another reader meanwhile: not ours
            continue
    return _read_notes(target)


def prompt_section(notes: list[Note]) -> str:
    if not notes:
        return ""
    lines = ["", "## Notes from the human on the loop", "",
             "Left with `spml-loop note` since the last round. Take them into account first; where they conflict "
             "with the defaults above, they win (never with the Fixed files or the evaluation).", ""]
    for note in notes:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(note.time)) if note.time else "earlier"
        lines.append(f"- ({when}) {note.text}")
    return "\n".join(lines) + "\n"


def row_notes(notes: list[Note]) -> list[str]:
    """What the round's experiences row says about the notes (one line each, short)."""
    return [f"human note: {' '.join(note.text.split())[:120]}" for note in notes]


def describe(paths: LoopPaths, state: LoopState | None) -> list[str]:
    """Lines for ``spml-loop status`` and the control commands: pause state and pending notes."""
    lines = []
    info = pause_info(paths)
    if state is not None and state.status == "paused":
        lines.append("paused: waiting for `spml-loop unpause`")
    elif info is not None:
        lines.append("pause requested: the loop waits before its next round")
    pending = pending_notes(paths)
    if pending:
        lines.append(f"{len(pending)} note(s) waiting for the next round")
    return lines
