"""The loop's state in ``.spml/``: where each file lives, the lock, and the round in progress.

Everything the loop must not lose is written atomically (a temporary file
and a rename): ``state.json`` after every step of a round, so ``--resume``
after a ``kill -9`` knows which step was interrupted. ``.spml/`` is never
rolled back (the loop exempts it from compliance and from rollback), so
the experiences log survives every rejected round.

Standard library only: this module runs inside a loop that lasts days.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fsutil import atomic_write

STATE_VERSION = 1
STATE_DIR = ".spml"

# The steps of one round, in order. ``state.json`` names the step a round was
# in when it was last saved; resume logic keys on these names.
STEPS = ("researcher", "compliance", "train", "restore", "eval", "verdict", "commit", "rollback", "record", "done")


class LoopPaths:
    """Every path the loop writes, relative to the repository root."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / STATE_DIR
        self.state = self.dir / "state.json"
        self.lock = self.dir / "loop.lock"
        self.experiences = self.dir / "experiences.md"
        self.results_tsv = self.dir / "results.tsv"
        self.results_jsonl = self.dir / "results.jsonl"
        self.rounds = self.dir / "rounds"
        self.stop = self.dir / "stop"

    def round_dir(self, n: int | str) -> Path:
        return self.rounds / (f"{n:04d}" if isinstance(n, int) else n)

    def rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


class LoopLock:
    """An exclusive ``fcntl`` lock on ``.spml/loop.lock``: one loop per repository.

    The kernel drops the lock when the process dies (also on ``kill -9``), so
    a stale lock file never blocks ``--resume``. The file holds the owner's
    pid for ``spml-loop status``.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            owner = holder_pid(self.path)
            who = f" (pid {owner})" if owner else ""
            raise InputError(f"another spml-loop holds the lock{who}: one loop per repository; wait for it, stop it "
                             f"(`spml-loop status --stop`), or use another clone", self.path) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "LoopLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(path: Path) -> int | None:
    """The pid of a live loop holding ``path``, or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass
class RoundState:
    """The round in progress: enough to finish or redo it after a crash."""

    n: int
    base: str
    step: str = "researcher"
    kind: str = "round"  # "round", or "baseline" for a noise-floor run of the unchanged base
    started_at: float = field(default_factory=time.time)
    strategy: str = ""
    insight: str = ""
    notes: list[str] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> {status, message, seconds}
    outcome: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None
    commit: str | None = None
    tree: str | None = None
    patch: str | None = None
    child_pgid: int | None = None
    child_seconds: float = 0.0  # time spent in researcher/train/eval commands (the rest is loop overhead)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "RoundState":
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class LoopState:
    """What ``state.json`` holds."""

    branch: str
    tag: str
    protocol: str  # protocol path relative to the repository root
    metric: str
    direction: str
    baseline: float
    target: float | None
    max_rounds: int
    min_delta: float
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    status: str = "running"  # running, stopped, finished, interrupted
    stop_reason: str | None = None
    best: float | None = None
    best_round: int | None = None
    best_commit: str | None = None
    start_commit: str | None = None
    rounds_done: int = 0
    no_improvement: int = 0  # consecutive recorded rounds without an improvement
    commits: list[str] = field(default_factory=list)  # commits the loop made (verified)
    noise: dict[str, Any] | None = None  # {"runs": [m1, m2], "floor": x, "best_start": y}
    current: RoundState | None = None
    pid: int | None = None
    researcher: str = ""  # the --researcher spec, reused by --resume
    version: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["current"] = asdict(self.current) if self.current is not None else None
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "LoopState":
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        current = known.get("current")
        known["current"] = RoundState.from_dict(current) if isinstance(current, dict) else None
        return cls(**known)

    @property
    def effective_min_delta(self) -> float:
        floor = float(self.noise.get("floor", 0.0)) if self.noise else 0.0
        return max(self.min_delta, floor)


def load_state(paths: LoopPaths) -> LoopState | None:
    """The saved state, None when there is none; a damaged file is bad input (exit 2), never guessed at."""
    try:
        text = paths.state.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"cannot read the loop state ({exc.strerror})", paths.state) from None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError(f"version {doc.get('version') if isinstance(doc, dict) else None!r}")
        return LoopState.from_dict(doc)
    except (ValueError, TypeError) as exc:
        raise InputError(f"the loop state is not readable ({exc}); it is written atomically, so it was edited by "
                         f"hand or by another version: restore it or move .spml/ away to start a new loop",
                         paths.state) from None


def save_state(paths: LoopPaths, state: LoopState) -> None:
    state.updated_at = time.time()
    atomic_write(paths.state, json.dumps(state.to_dict(), indent=1, sort_keys=True) + "\n")


def existing_loop(repo: str | Path) -> tuple[LoopPaths, LoopState]:
    """The loop of the repository at ``repo`` (for status and report): bad input when there is none."""
    from .. import gitcmd
    from ..errors import InputError

    paths = LoopPaths(gitcmd.repo_info(repo).root)
    state = load_state(paths)
    if state is None:
        raise InputError("no loop in this repository (no .spml/state.json); start one with `spml-loop run`",
                         paths.state)
    return paths, state
