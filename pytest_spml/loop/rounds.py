"""The steps of one round that run commands: supervision, the training watchdog, the fixed evaluation.

* :class:`Supervisor` runs one command at a time in its own process group
  (:mod:`pytest_spml.proc`), polls it every ``poll_s`` seconds, and stops
  the whole group on a time limit (SIGTERM at the limit, SIGKILL after
  ``grace`` more seconds), on a watchdog STOP, or when the loop is asked to
  stop.
* :class:`TrainWatch` feeds the round's logs (captured output as a text
  log, ``$SPML_METRICS_LOG`` and configured JSONL logs) into the watchdog's
  detectors, reading only new bytes at each poll.
* :func:`eval_env`, :func:`read_result` and :func:`import_shadows` are the
  evaluation's guards: a fresh result path per round, a private bytecode
  cache, and no module planted next to a Fixed one.
"""

from __future__ import annotations

import importlib.machinery
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import proc

# Variables the loop sets for its children; none of them leaks from one child to the next.
_LOOP_VARS = ("SPML_RESULT", "SPML_METRICS_LOG", "SPML_ROUND", "SPML_ROUND_DIR", "SPML_PROMPT", "SPML_STRATEGY",
              "SPML_TIME_LIMIT", "SPML_EPOCH_LIMIT", "SPML_BASE", "SPML_BRANCH", "SPML_PROTOCOL",
              "SPML_EXPERIENCES", "SPML_RESULTS", "SPML_REPO", "SPML_LOOP_KILL_AT")


def child_env(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _LOOP_VARS}
    env.update(extra)
    return env


@dataclass
class ChildResult:
    code: int | None
    seconds: float
    stopped: str | None = None  # "time limit", "watchdog", "interrupted"
    detail: str = ""  # the watchdog's reason, when it stopped the run
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.stopped is None and self.code == 0

    def describe(self) -> str:
        if self.stopped == "watchdog":
            return f"stopped early by the watchdog: {self.detail}"
        if self.stopped == "time limit":
            return f"time limit reached; stopped ({proc.describe_exit(self.code)})"
        if self.stopped == "interrupted":
            return "interrupted"
        return describe_exit(self.code)


_SHELL_EXITS = {127: "command not found", 126: "command found but not executable (permission denied?)"}


def describe_exit(code: int | None) -> str:
    """``proc.describe_exit`` plus what the shell's own statuses mean (127: command not found, 126: not executable)."""
    text = proc.describe_exit(code)
    meaning = _SHELL_EXITS.get(code) if code is not None else None
    return f"{text}: {meaning}" if meaning else text


class Supervisor:
    """Runs the loop's commands, one at a time, each as a process group it can always stop."""

    def __init__(self, *, on_start: Callable[[int], None], interrupted: Callable[[], str | None],
                 poll_s: float = 0.5):
        self.on_start = on_start
        self.interrupted = interrupted
        self.poll_s = poll_s

    def run(self, command: str, *, cwd: Path, env: Mapping[str, str], log: Path, time_limit: float,
            grace: float, watch: "TrainWatch | None" = None) -> ChildResult:
        start = time.monotonic()
        child = proc.spawn(command, cwd=cwd, env=env, log=log)
        self.on_start(child.pid)
        deadline = start + time_limit
        while True:
            code = proc.wait(child, self.poll_s)
            if watch is not None:
                try:
                    verdict = watch.poll(time.time())
                except Exception as exc:  # noqa: BLE001 - a log the detectors cannot read must not kill the loop
                    watch.error = f"the watchdog stopped reading the logs: {type(exc).__name__}: {exc}"
                    watch, verdict = None, None
                if code is None and verdict is not None:
                    code = proc.terminate(child, min(grace, 10.0))
                    return ChildResult(code, time.monotonic() - start, "watchdog", verdict.reason,
                                       {"decision": verdict.decision, "status": verdict.status,
                                        **watch.stop_evidence(verdict)})
            if code is not None:
                # the leader is gone; workers it forked must not outlive the step
                if proc.group_alive(child.pid):
                    proc.terminate(child, 1.0)
                return ChildResult(code, time.monotonic() - start)
            if self.interrupted():
                code = proc.terminate(child, min(grace, 10.0))
                return ChildResult(code, time.monotonic() - start, "interrupted")
            if time.monotonic() >= deadline:
                code = proc.terminate(child, grace)
                return ChildResult(code, time.monotonic() - start, "time limit")


class TrainWatch:
    """The watchdog on a training round: the training check over the round's logs, a STOP verdict out.

    Only what the round writes counts: every log is read from its end at the
    start of the round (a training run that truncates or replaces a file is
    noticed by the reader and read from its start).
    """

    def __init__(self, text_logs: list[Path], jsonl_logs: list[Path], thresholds: Any = None):
        from ..watch.check import SourceSpec, TrainingCheck
        from ..watch.model import Baseline

        specs = [SourceSpec("log", str(p)) for p in text_logs] + [SourceSpec("log", str(p), fmt="jsonl")
                                                                  for p in jsonl_logs]
        self.check = TrainingCheck(specs, Baseline(source="the round's own early steps"), thresholds,
                                   started_at=time.time())
        self.check.skip_existing()
        self.records = 0
        self.last: Any = None
        self.anomalies: list[Any] = []
        self.error = ""

    @property
    def series(self) -> Any:
        return self.check.series

    def poll(self, now: float) -> Any:
        """Read what was added; the watchdog's verdict when it says STOP, else None."""
        added, status = self.check.read()
        self.records += added
        if not added and self.last is not None:  # nothing new: the last verdict stands
            return self.last if self.last.decision == "STOP" else None
        outcome = self.check.judge(added, status, now)
        self.last, self.anomalies = outcome.verdict, outcome.anomalies
        return self.last if self.last.decision == "STOP" else None

    def stop_evidence(self, verdict: Any) -> dict[str, Any]:
        kinds = [a.kind for a in self.anomalies if a.severity == "severe" and not a.recovered]
        return {"anomalies": kinds, "step": self.series.last_step, "records": self.records}


# ------------------------------------------------------------------------------------------------ evaluation

def eval_env(result: Path, pycache: Path, extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The evaluation's environment: its fresh result path and a private, empty bytecode cache.

    With ``PYTHONPYCACHEPREFIX`` set, Python looks for bytecode only under
    that prefix (mirroring the source's absolute path), never in the
    ``__pycache__`` folders next to the sources, so a planted ``.pyc`` is
    never read, even an unchecked-hash one that would otherwise load without
    looking at its source. ``PYTHONDONTWRITEBYTECODE`` keeps the eval from
    leaving bytecode behind.
    """
    env = child_env(extra, base)
    env.update(SPML_RESULT=str(result), PYTHONPYCACHEPREFIX=str(pycache), PYTHONDONTWRITEBYTECODE="1")
    for var in ("PYTHONSTARTUP", "PYTHONINSPECT"):
        env.pop(var, None)
    return env


class EvalFailure(Exception):
    pass


def read_result(path: Path, metric: str) -> tuple[float, dict[str, float]]:
    """The metric from the eval's result file: a JSON object holding ``metric`` (dots reach into objects) or a bare number."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalFailure("the eval wrote no result file (it must write its metric to $SPML_RESULT or the "
                          "{result} path it is given)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFailure(f"cannot read the eval's result file ({exc})") from None
    try:
        doc = json.loads(text)
    except ValueError:
        raise EvalFailure(f"the eval's result file is not JSON: {text.strip()[:80]!r}") from None
    numbers: dict[str, float] = {}

    def collect(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                collect(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            numbers[prefix or metric] = float(node)

    collect("", doc)
    if metric not in numbers:
        shown = ", ".join(sorted(numbers)) or "no numbers"
        raise EvalFailure(f"the eval's result has no '{metric}' (it has: {shown})")
    value = numbers[metric]
    if not math.isfinite(value):
        raise EvalFailure(f"the eval reported {metric} = {value}: not a finite number")
    return value, numbers


def import_shadows(root: Path, fixed_modules: list[str], base_paths: set[str], base_dirs: set[str]
                   ) -> tuple[list[str], list[tuple[str, str]]]:
    """Files that would make Python import something else than a Fixed module's source.

    Returns (stale bytecode to delete, shadows that fail the round). For a
    Fixed ``pkg/mod.py``: ``pkg/__pycache__/mod.*.pyc`` is bytecode (deleted;
    the eval's private cache would ignore it anyway); an extension module
    ``pkg/mod.*.so`` or a package ``pkg/mod/__init__.py`` would be imported
    *instead of* the source and fails the round. New ``json.py``-like files
    next to Fixed modules or at the root, named after a standard-library
    module, fail it too (the script's folder comes first on ``sys.path``).
    """
    bytecode: list[str] = []
    shadows: list[tuple[str, str]] = []
    by_dir: dict[str, set[str]] = {}
    for path in fixed_modules:
        folder, _, name = path.rpartition("/")
        by_dir.setdefault(folder, set()).add(name[:-3])
    by_dir.setdefault("", set())
    ext_suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    for folder, modules in by_dir.items():
        here = root / folder if folder else root
        prefix = f"{folder}/" if folder else ""
        try:
            names = os.listdir(here)
        except OSError:
            continue
        for name in names:
            rel = prefix + name
            if rel == ".spml" or rel in base_paths or rel in base_dirs:
                continue
            stem = name.split(".", 1)[0]
            full = here / name
            if stem in modules:
                if name.endswith(ext_suffixes):
                    shadows.append((rel, f"extension module {rel} would be imported instead of the Fixed "
                                         f"{prefix}{stem}.py"))
                elif full.is_dir() and any((full / f"__init__{s}").exists() for s in (".py", ".pyc", *ext_suffixes)):
                    shadows.append((rel + "/", f"package {rel}/ would be imported instead of the Fixed "
                                              f"{prefix}{stem}.py"))
            if stem in stdlib and (name == f"{stem}.py" or name.endswith(ext_suffixes)
                                   or (full.is_dir() and (full / "__init__.py").exists())):
                shadows.append((rel, f"{rel} shadows the standard-library module '{stem}' for code run from "
                                     f"{folder or 'the repository root'}"))
        cache = here / "__pycache__"
        try:
            cached = os.listdir(cache)
        except OSError:
            continue
        for name in cached:
            if name.endswith(".pyc") and name.split(".", 1)[0] in modules:
                bytecode.append(f"{prefix}__pycache__/{name}")
    return bytecode, shadows
