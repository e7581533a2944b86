"""Supervise one training run: check it on an adaptive interval, stop it on STOP, restart it when the environment
killed it, report it when the code did.

Two modes. *Combined*: the supervisor launches the training command itself
(``spml-loop watch [options] -- python train.py ...``) in its own process
group, output appended to a console log, and knows every exit status.
*Separated*: the run was started elsewhere; the supervisor reads its logs and,
with ``--pid``, notices when it ends (exit status unknown) and can signal it,
or reaches it through a ``--stop-command`` (``scancel $JOB``, ``tmux
kill-session``). Once the supervisor restarts a separated run it owns the new
process, as in combined mode.

One watchdog per job: a ``torchrun`` launcher's process group holds every
rank, so stopping the group stops them all, and the combined console log is
classified as one (see :mod:`.failures`).

The loop:

- every ``poll_seconds`` (0.5 s): has the run ended? (the exit is handled at
  once: classified, then restarted, reported or finished). Every 5 s (or
  each interval, when shorter): is there a new complete checkpoint to
  evaluate?
- at each check (``interval`` seconds when given, else the verdict's
  ``next_check_minutes``: 10 -> 20 -> 30 -> 60 while healthy, 10 after any
  anomaly): read what is new, decide. STOP: the run is stopped
  (``stop_command``, else SIGTERM to its group and SIGKILL after ``grace``)
  and the evidence saved. STOP because the log went stale while the process
  lives: a hang, an environment failure, so stop and restart (after a
  restart, silence counts as a hang only once the run logged again or the
  start-up grace has passed).
- an environment failure is restarted from the newest complete checkpoint
  through ``resume_command`` (``{checkpoint}`` and ``{step}`` filled in;
  without one the original command runs again and must resume by itself),
  without a retry limit but after an exponential back-off (``backoff`` x 2^(n-1)
  for the n-th crash within ``alert_window``, at most ``backoff_cap``), with
  an alert once ``alert_crashes`` crashes fall within ``alert_window``. A
  resume that dies at once with a load error rejects that checkpoint and
  tries the previous one.
- a code bug (or an exit nobody can explain) is never restarted: the
  traceback lines go into the report and ``recovery-prompt.md``.

Nothing of the user's is deleted or modified: checkpoints are only listed,
logs only appended to. SIGINT / SIGTERM to the watchdog end the watch cleanly:
an owned run is stopped as a group, the state and FINAL_SUMMARY.md written.

Standard library only at import time.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence, TextIO

from .. import proc
from ..fsutil import atomic_write
from . import failures
from .checkpoints import DEFAULT_PATTERNS, Checkpoint, Checkpoints

__all__ = ["Attempt", "EvalRunner", "Supervisor", "WatchConfig", "WatchResult", "fill_template"]

OUTCOMES = ("completed", "stopped", "code_bug", "failed", "interrupted", "watch_ended")
STATE_NAME = "watch-state.json"
ALERTS_NAME = "alerts.md"
EVALS_NAME = "evals.jsonl"
MAX_EVENTS = 500  # kept in memory and in the state file; older ones are counted, not kept


@dataclass
class WatchConfig:
    """Everything the supervisor needs besides the training check itself."""

    command: Sequence[str] | str | None = None  # combined mode: the training command
    pid: int | None = None  # separated mode: the run's process
    output: Path | None = None  # console log: appended to (combined), read to classify exits (separated)
    stop_command: str | None = None
    resume_command: str | None = None  # template: {checkpoint}, {step}
    eval_command: str | None = None  # template: {checkpoint}, {step}
    cwd: Path | None = None  # where commands run (default: the current folder)
    interval: float | None = None  # seconds between checks; None: adaptive (the verdict's next_check_minutes)
    poll_seconds: float = 0.5  # how often the process is looked at between checks
    grace: float = 30.0  # SIGTERM -> SIGKILL
    backoff: float = 30.0  # first restart delay
    backoff_cap: float = 1800.0
    alert_crashes: int = 5
    alert_window: float = 1800.0
    checkpoint_root: Path | None = None  # default: cwd
    checkpoint_patterns: tuple[str, ...] = DEFAULT_PATTERNS
    checkpoint_settle: float = 10.0
    load_failure_seconds: float = 300.0  # a resume that dies within this (before logging) may be a bad checkpoint
    state_dir: Path = Path(".spml/watch")
    evidence_dir: Path | None = None  # default: next to context, else state_dir
    context: Path | None = None
    history: bool = True
    plot: bool = True
    progress: bool = True

    @property
    def combined(self) -> bool:
        return bool(self.command)


@dataclass
class Attempt:
    """One launch (or the watched process) of the run."""

    number: int
    command: Sequence[str] | str | None
    checkpoint: Checkpoint | None
    started: float
    started_mono: float
    log_offset: int
    records_at_start: int
    popen: subprocess.Popen | None = None
    pid: int | None = None

    @property
    def owned(self) -> bool:
        return self.popen is not None


@dataclass
class WatchResult:
    outcome: str  # one of OUTCOMES
    reason: str
    failure: failures.Failure | None = None
    last: Any = None  # the last CheckOutcome
    events: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    restarts: int = 0
    crashes: int = 0
    alerts: list[str] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Exit 0: the run completed, or was healthy when the watch ended."""
        if self.outcome in ("completed", "watch_ended"):
            return True
        if self.outcome == "interrupted":
            return self.last is None or self.last.verdict.decision != "STOP"
        return False


def fill_template(template: str, checkpoint: Checkpoint | None) -> str:
    """``{checkpoint}`` -> the quoted path, ``{step}`` -> its step; other braces (``${JOB}``) are left alone."""
    path = shlex.quote(str(checkpoint.path)) if checkpoint is not None else "''"
    step = str(checkpoint.step) if checkpoint is not None and checkpoint.step is not None else ""
    return template.replace("{checkpoint}", path).replace("{step}", step)


def _describe_command(command: Sequence[str] | str | None) -> str:
    if command is None:
        return "(not launched by the watchdog)"
    return command if isinstance(command, str) else shlex.join(command)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie nobody reaped yet has ended
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def _stamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() if t is None else t))


def _append_line(path: Path, line: str) -> None:
    """Append one line by rewriting the (small) file atomically: a reader never sees half a line."""
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    atomic_write(path, old + line.rstrip("\n") + "\n")


class EvalRunner:
    """Run the eval command on each new complete checkpoint, one at a time, in the background."""

    def __init__(self, template: str, *, cwd: Path | None, log: Path, results: Path, env: dict[str, str]) -> None:
        self.template = template
        self.cwd = cwd
        self.log = log
        self.results_path = results
        self.env = env
        self.seen: dict[Path, tuple[int, float]] = {}
        self.queue: deque[Checkpoint] = deque()
        self.running: tuple[subprocess.Popen, Checkpoint, float, int] | None = None
        self.results: list[dict[str, Any]] = []

    def mark_seen(self, checkpoints: Sequence[Checkpoint]) -> None:
        for ckpt in checkpoints:
            self.seen[ckpt.path] = ckpt.signature

    def offer(self, checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
        """Queue the checkpoints not seen before (oldest first); returns them."""
        new = [c for c in reversed(checkpoints) if self.seen.get(c.path) != c.signature]
        for ckpt in new:
            self.seen[ckpt.path] = ckpt.signature
            self.queue.append(ckpt)
        return new

    @property
    def busy(self) -> bool:
        return self.running is not None or bool(self.queue)

    def tick(self) -> dict[str, Any] | None:
        """Collect a finished eval and start the next; returns the finished eval's result, if any."""
        done = None
        if self.running is not None:
            popen, ckpt, started, offset = self.running
            code = popen.poll()
            if code is None:
                return None
            proc.terminate(popen, 1.0)  # anything the eval left running in its group
            self.running = None
            done = {"checkpoint": str(ckpt.path), "step": ckpt.step, "exit_code": code,
                    "exit": proc.describe_exit(code), "ok": code == 0, "started_at": _stamp(started),
                    "seconds": round(time.time() - started, 3),
                    "output_tail": failures.read_tail(self.log, offset)[-5:]}
            self.results.append(done)
            _append_line(self.results_path, json.dumps(done))
        while self.queue and self.running is None:
            ckpt = self.queue.popleft()
            if not ckpt.path.exists():  # the training script rotated it away before its turn
                continue
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(f"=== spml-loop watch: eval of {ckpt.path} at {_stamp()} ===\n")
            offset = _size(self.log)
            popen = proc.spawn(fill_template(self.template, ckpt), cwd=self.cwd, log=self.log, env=self.env)
            self.running = (popen, ckpt, time.time(), offset)
        return done

    def stop(self, grace: float) -> None:
        if self.running is not None:
            proc.terminate(self.running[0], grace)
            self.running = None
        self.queue.clear()


class _Stop(Exception):
    """The watchdog was asked to end (SIGINT / SIGTERM)."""


class Supervisor:
    """Run the watch loop for one run; ``run()`` returns a :class:`WatchResult`."""

    def __init__(self, config: WatchConfig, check: Any, *, stderr: TextIO | None = None) -> None:
        self.config = config
        self.check = check  # a watch.check.TrainingCheck
        self.stderr = stderr if stderr is not None else sys.stderr
        cwd = config.cwd or Path.cwd()
        self.cwd = cwd
        self.state_dir = config.state_dir
        self.evidence_dir = config.evidence_dir or (config.context.parent if config.context else config.state_dir)
        self.output = config.output or (config.state_dir / "train.log" if config.combined else None)
        self.checkpoints = Checkpoints(config.checkpoint_root or cwd, config.checkpoint_patterns,
                                       settle_seconds=config.checkpoint_settle)
        env = dict(os.environ)
        # a console log on a file is block-buffered: the watchdog would read metrics late and lose the last lines
        # (the traceback) of a killed run
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.env = env
        self.evals = (EvalRunner(config.eval_command, cwd=config.cwd, log=self.state_dir / "eval.log",
                                 results=self.state_dir / EVALS_NAME, env=env) if config.eval_command else None)
        self.attempt: Attempt | None = None
        self.attempts = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.event_count = 0
        self.crash_times: deque[float] = deque()
        self.crashes = 0
        self.restarts = 0
        self.alerts: list[str] = []
        self.last_alert: float | None = None
        self.failures: deque[failures.Failure] = deque(maxlen=100)
        self.last = None  # the last CheckOutcome
        self.stop_requested: str | None = None
        self._forced = False
        # checkpoint scans for the eval command: a walk of the checkpoint folders, so not on every poll
        self._scan_every = min(5.0, config.interval) if config.interval else 5.0
        self._last_scan = -float("inf")

    # ---------------------------------------------------------------------------------------------------- plumbing
    def _say(self, message: str) -> None:
        if self.config.progress:
            self.stderr.write(f"spml-loop watch: {message}\n")
            self.stderr.flush()

    def _event(self, kind: str, message: str, ok: bool = True, **details: Any) -> dict[str, Any]:
        event = {"at": _stamp(), "kind": kind, "ok": ok, "message": message,
                 "attempt": self.attempt.number if self.attempt else None, **details}
        self.events.append(event)
        self.event_count += 1
        self._save_state()
        return event

    def _save_state(self) -> None:
        attempt = self.attempt
        doc = {
            "updated": _stamp(), "mode": "combined" if self.config.combined else "separated",
            "command": _describe_command(self.config.command), "pid": self._pid(),
            "attempt": attempt.number if attempt else None,
            "resumed_from": str(attempt.checkpoint.path) if attempt and attempt.checkpoint else None,
            "restarts": self.restarts, "crashes": self.crashes, "alerts": self.alerts,
            "rejected_checkpoints": self._rejected(),
            "last_check": self.last.summary if self.last is not None else None,
            "failures": [f.to_dict() for f in list(self.failures)[-20:]],
            "evals": self.evals.results[-50:] if self.evals else [],
            "events_total": self.event_count, "events": list(self.events),
        }
        try:
            atomic_write(self.state_dir / STATE_NAME, json.dumps(doc, indent=1, default=str))
        except OSError as exc:  # a full disk must not kill the watchdog that is about to restart the run
            self._say(f"cannot write the watch state ({exc.strerror})")

    def _rejected(self) -> list[dict[str, Any]]:
        return [{"path": str(p), "why": why} for p, (_, why) in self.checkpoints.rejected.items()]

    def _pid(self) -> int | None:
        if self.attempt is None:
            return self.config.pid
        return self.attempt.popen.pid if self.attempt.popen is not None else self.attempt.pid

    def _on_signal(self, signum: int, frame: Any) -> None:
        # only a flag: the loop stops at its next safe point (never between a spawn and its bookkeeping)
        if self.stop_requested is not None:
            self._forced = True  # a second Ctrl-C: stop waiting for graceful ends
        self.stop_requested = signal.Signals(signum).name

    def _check_stop(self) -> None:
        if self.stop_requested is not None:
            raise _Stop()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self._check_stop()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.config.poll_seconds))
            self._tick_evals()

    # ---------------------------------------------------------------------------------------------------- process
    def _launch(self, checkpoint: Checkpoint | None, *, restart: bool) -> None:
        config = self.config
        template = config.resume_command
        if restart and template and (checkpoint is not None or "{checkpoint}" not in template):
            command: Sequence[str] | str = fill_template(template, checkpoint)
            if "{checkpoint}" in template and checkpoint is not None:
                how = f"from {checkpoint.path}"
            else:
                how, checkpoint = "with the resume command (it finds its checkpoint itself)", None
        elif config.command:
            command = config.command if isinstance(config.command, str) else list(config.command)
            if restart and checkpoint is not None:
                how = "with the original command (no --resume-command: it must resume by itself)"
            else:
                how = "from the start"
            checkpoint = None  # not told which checkpoint: a load error cannot be pinned on one
        else:
            raise RuntimeError("nothing to launch")  # callers check _can_restart first
        if self.output is None:  # a separated run restarted by the watchdog: its console log is ours from now on
            self.output = self.state_dir / "train.log"
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output, "a", encoding="utf-8") as f:
            f.write(f"=== spml-loop watch: attempt {self.attempts + 1} at {_stamp()}: {_describe_command(command)} "
                    "===\n")
        offset = _size(self.output)
        try:
            popen = proc.spawn(command, cwd=config.cwd, env=self.env, log=self.output)
        except OSError as exc:
            from ..errors import InputError

            raise InputError(f"cannot start the {'resume ' if restart and template else ''}command "
                             f"{_describe_command(command)!r} ({exc.strerror or exc})") from None
        self.attempts += 1
        self.attempt = Attempt(self.attempts, command, checkpoint, time.time(), time.monotonic(), offset,
                               self.check.series.records, popen=popen, pid=popen.pid)
        if restart:
            self.restarts += 1
            # the log is silent while the run loads and warms up: the check gives it a start-up grace
            self.check.notify_restart()
        self._event("restart" if restart else "start", f"{'restarted' if restart else 'started'} {how}: pid "
                    f"{popen.pid}: {_describe_command(command)}", pid=popen.pid,
                    checkpoint=str(checkpoint.path) if checkpoint else None)
        self._say(f"{'restarted' if restart else 'started'} (attempt {self.attempts}, pid {popen.pid}) {how}; "
                  f"output appended to {self.output}")

    def _alive(self) -> bool:
        attempt = self.attempt
        if attempt is None:
            return True  # separated mode without a PID: only the log tells
        if attempt.popen is not None:
            return attempt.popen.poll() is None
        return attempt.pid is None or _pid_alive(attempt.pid)

    def _exit_code(self) -> int | None:
        attempt = self.attempt
        return attempt.popen.poll() if attempt is not None and attempt.popen is not None else None

    def _stop_run(self, why: str) -> str:
        """Stop the run: the stop command (then the group, if an owned run outlives it), else the process group."""
        config = self.config
        attempt = self.attempt
        done = []
        if config.stop_command:
            env = dict(self.env)
            pid = self._pid()
            if pid is not None:
                env["SPML_WATCH_PID"] = str(pid)
            started = time.monotonic()
            stopper = proc.spawn(config.stop_command, cwd=config.cwd, env=env, log=self.state_dir / "stop-command.log")
            code = proc.wait(stopper, max(config.grace, 60.0))
            if code is None:
                proc.terminate(stopper, 5.0)
                done.append(f"the stop command {config.stop_command!r} did not finish in time (stopped it)")
            else:
                done.append(f"ran the stop command {config.stop_command!r} ({proc.describe_exit(code)})")
            # the run gets the grace period to go
            while attempt is not None and self._alive() and time.monotonic() - started < config.grace:
                time.sleep(min(0.1, config.poll_seconds))
        if attempt is not None and attempt.popen is not None:
            alive = attempt.popen.poll() is None
            if alive or proc.group_alive(attempt.popen.pid):  # the leader, or workers it left behind
                code = proc.terminate(attempt.popen, config.grace)
                if alive:
                    done.append(("the run outlived the stop command: " if config.stop_command else "")
                                + f"terminated the process group of pid {attempt.popen.pid} (SIGTERM, SIGKILL after "
                                f"{config.grace:g}s): {proc.describe_exit(code)}")
        elif attempt is not None and attempt.pid is not None and _pid_alive(attempt.pid):
            done.append(("the run outlived the stop command: " if config.stop_command else "")
                        + self._terminate_pid(attempt.pid))
        elif attempt is None and not config.stop_command:
            done.append("no --pid and no --stop-command: the watchdog cannot stop this run; stop it by hand")
        self._event("stop", f"stopping the run ({why}): " + "; ".join(done), ok=False)
        return "; ".join(done)

    def _terminate_pid(self, pid: int) -> str:
        """SIGTERM then SIGKILL to a process we did not start: its group when it leads one (not ours), else it."""
        grace = self.config.grace
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return f"pid {pid} had already ended"
        group = pgid == pid and pgid != os.getpgrp()

        def send(sig: int) -> None:
            try:
                os.killpg(pgid, sig) if group else os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        send(signal.SIGTERM)
        end = time.monotonic() + grace
        while _pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        killed = _pid_alive(pid)
        if killed:
            send(signal.SIGKILL)
        target = f"process group {pgid}" if group else f"pid {pid}"
        return f"sent SIGTERM to {target}" + (f", SIGKILL after {grace:g}s" if killed else "")

    def _can_restart(self) -> bool:
        return bool(self.config.resume_command or self.config.command)

    # ---------------------------------------------------------------------------------------------------- evals
    def _tick_evals(self, scan: bool = True, *, settled: bool = False) -> None:
        """Offer new complete checkpoints to the eval runner and move it on. ``settled``: nothing writes any more."""
        if self.evals is None:
            return
        if scan and (settled or time.monotonic() - self._last_scan >= self._scan_every):
            self._last_scan = time.monotonic()
            now = time.time() + (self.checkpoints.settle_seconds if settled else 0.0)
            new = self.evals.offer(self.checkpoints.complete(now))
            for ckpt in new:
                self._event("checkpoint", f"new checkpoint {ckpt.path}", path=str(ckpt.path), step=ckpt.step)
        done = self.evals.tick()
        if done is not None:
            self._event("eval", f"eval of {done['checkpoint']}: {done['exit']}", ok=done["ok"], result=done)
            self._say(f"eval of {done['checkpoint']}: {done['exit']}"
                      + (f" ({done['output_tail'][-1]})" if done["output_tail"] else ""))

    # ---------------------------------------------------------------------------------------------------- checks
    def _progress(self, outcome: Any) -> None:
        series = self.check.series
        total = self.check.baseline.expected_total_steps
        step = series.last_step
        parts = [f"step {step if step is not None else '-'}" + (f"/{total}" if total else "")]
        if total and step is not None:
            parts[0] += f" ({min(step / total, 1.0):.0%})"
        loss = series.track("loss")
        if loss is not None and loss.count:
            parts.append(f"loss {loss.last:.4g}")
        per_step = series.typical_step_seconds()
        if total and step is not None and per_step:
            left = max(0, total - step) * per_step
            parts.append(f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}" if left >= 60
                         else f"ETA {left:.0f}s")
        if self.attempt is not None and self.attempt.number > 1:
            parts.append(f"attempt {self.attempt.number}")
        verdict = outcome.verdict
        parts.append(f"{verdict.decision} ({verdict.status})")
        self._say("  ".join(parts))

    def _interval(self, outcome: Any | None) -> float:
        if self.config.interval is not None:
            return self.config.interval
        if outcome is None:
            return self.check.thresholds.check_intervals_minutes[0] * 60.0
        return outcome.verdict.next_check_minutes * 60.0

    # ---------------------------------------------------------------------------------------------------- events
    def _record_crash(self, failure: failures.Failure) -> float:
        """Count an environment failure; alert when too many fall in the window; returns the back-off delay."""
        config = self.config
        now = time.time()
        self.crashes += 1
        self.crash_times.append(now)
        while self.crash_times and now - self.crash_times[0] > config.alert_window:
            self.crash_times.popleft()
        recent = len(self.crash_times)
        if recent >= config.alert_crashes and (self.last_alert is None or now - self.last_alert >= config.alert_window):
            self.last_alert = now
            text = (f"{recent} crashes within {config.alert_window / 60:g} minutes (last: {failure.kind}: "
                    f"{failure.summary}); still restarting with back-off: look at the machine")
            self.alerts.append(f"{_stamp(now)}: {text}")
            self.stderr.write(f"spml-loop watch: ALERT: {text}\n")
            self.stderr.flush()
            try:
                _append_line(self.state_dir / ALERTS_NAME, f"- {_stamp(now)}: **ALERT** {text}")
            except OSError:
                pass
            self._history("ALERT", "ENVIRONMENT_FAILURES", text)
            self._event("alert", text, ok=False, crashes_in_window=recent)
        return min(config.backoff_cap, config.backoff * 2 ** max(0, recent - 1))

    def _history(self, decision: str, status: str, reason: str) -> None:
        """One line in the Diagnosis History of experiment-context.md for events that are not checks."""
        context = self.config.context
        if context is None or not self.config.history or not context.is_file():
            return
        from . import evidence

        try:
            evidence.append_history(context, {"decision": decision, "status": status, "reason": reason,
                                              "step": self.check.series.last_step, "anomalies": []})
        except OSError as exc:
            self._say(f"cannot append to the Diagnosis History of {context} ({exc.strerror})")

    def _classify_exit(self, code: int | None, *, stopped_by_us: bool = False) -> failures.Failure:
        attempt = self.attempt
        lines: list[str] = []
        if self.output is not None:
            lines = failures.read_tail(self.output, attempt.log_offset if attempt is not None else 0)
        elif code is None:
            # separated mode without a console log: text metric logs may still carry the traceback
            for spec in self.check.specs:
                if spec.kind == "log":
                    lines += failures.read_tail(Path(spec.target), 0, 64 << 10)
        resumed = attempt.checkpoint.path if attempt is not None and attempt.checkpoint is not None else None
        return failures.classify(code, lines, stopped_by_us=stopped_by_us, resumed_from=resumed)

    def _restart(self, failure: failures.Failure) -> WatchResult | None:
        """Restart after an environment failure: back-off, the newest usable checkpoint, launch."""
        config = self.config
        attempt = self.attempt
        progressed = attempt is None or self.check.series.records > attempt.records_at_start
        bad_load = (failure.kind == "checkpoint_load" and attempt is not None and attempt.checkpoint is not None
                    and not progressed and time.monotonic() - attempt.started_mono <= config.load_failure_seconds)
        if bad_load:
            assert attempt is not None and attempt.checkpoint is not None
            self.checkpoints.reject(attempt.checkpoint, failure.summary)
            self._event("checkpoint_rejected", f"{attempt.checkpoint.path} failed to load: falling back to the "
                        "previous checkpoint", ok=False, path=str(attempt.checkpoint.path),
                        evidence=list(failure.evidence))
            self._say(f"checkpoint {attempt.checkpoint.path} failed to load; trying the previous one")
            delay = 0.0
        else:
            delay = self._record_crash(failure)
        if not self._can_restart():
            return self._finish("failed", f"{failure.summary}; not restarted: no --resume-command (and the run was "
                                "not launched by the watchdog)", failure)
        if delay > 0:
            self._say(f"{failure.summary} [{failures.describe_category(failure.category)}]; restarting in "
                      f"{delay:g}s")
        self._event("backoff", f"restart in {delay:g}s", delay_s=delay, failure=failure.kind)
        self._sleep(delay)
        # chosen after the back-off, and after any checkpoint still settling has settled: a run that saved just
        # before dying must not restart from an older one (or from the start, over its checkpoints)
        if self.checkpoints.scan()[1]:
            self._sleep(self.checkpoints.settle_seconds + self.config.poll_seconds)
        checkpoint = self.checkpoints.latest()
        if checkpoint is None and self.checkpoints.rejected:
            return self._finish("failed", f"{failure.summary}; every checkpoint failed to load "
                                f"({', '.join(str(p) for p in self.checkpoints.rejected)}); not restarting from the "
                                "start over them", failure)
        if checkpoint is None and config.resume_command and "{checkpoint}" in config.resume_command \
                and not config.command:
            return self._finish("failed", f"{failure.summary}; no complete checkpoint to resume from", failure)
        self._history("RESTART", "ENVIRONMENT_FAILURE", f"{failure.summary}; restarted "
                      + (f"from {checkpoint.path}" if checkpoint else "from the start"))
        self._launch(checkpoint, restart=True)
        return None

    def _on_exit(self) -> WatchResult | None:
        code = self._exit_code()
        attempt = self.attempt
        if attempt is not None and attempt.popen is not None and proc.group_alive(attempt.popen.pid):
            # the leader is gone but forked workers (DataLoader, ranks) may still hold memory and GPUs
            proc.terminate(attempt.popen, min(self.config.grace, 5.0))
        outcome = self._poll()
        if code is None and outcome.verdict.status == "COMPLETE":
            # a watched PID's exit status is unknown; having reached its total steps, it finished
            failure = failures.Failure("clean_exit", failures.CLEAN, "the process ended after reaching its expected "
                                       "total steps")
        else:
            failure = self._classify_exit(code)
        self.failures.append(failure)
        self._event("exit", f"the run ended: {failure.summary}", ok=failure.category == failures.CLEAN,
                    exit_code=code, failure=failure.to_dict())
        if failure.category == failures.CLEAN:
            if outcome.verdict.decision == "STOP" and outcome.verdict.status != "STALE":
                stop = failures.metric_stop(outcome.verdict.reason, outcome.anomalies)
                return self._finish("stopped", f"the run exited normally but its metrics say STOP: "
                                    f"{outcome.verdict.reason}", stop)
            total = self.check.baseline.expected_total_steps
            step = self.check.series.last_step
            short = f" before its expected {total} steps (last step {step})" if total and (step or 0) < total else ""
            return self._finish("completed", f"the run exited normally{short}", None)
        if failure.restartable:
            return self._restart(failure)
        outcome_name = "code_bug" if failure.category == failures.CODE else "failed"
        return self._finish(outcome_name, f"{failures.describe_category(failure.category)}: {failure.summary}; "
                            "not restarted (a restart would only repeat it)", failure)

    def _poll(self) -> Any:
        # a silent start counts as a hang only when the watchdog knows the process lives (started it, or --pid)
        self.check.process_alive = self.attempt is not None and self._alive()
        outcome = self.check.poll()
        self.last = outcome
        return outcome

    def _on_check(self) -> WatchResult | None:
        outcome = self._poll()
        verdict = outcome.verdict
        self._event("check", f"{verdict.decision} ({verdict.status}): {verdict.reason}",
                    ok=verdict.decision != "STOP", decision=verdict.decision, status=verdict.status,
                    step=outcome.step)
        self._progress(outcome)
        if verdict.decision == "STOP" and verdict.status == "STALE":
            if self.attempt is not None and not self._alive():
                return None  # it ended: the exit is handled on the next turn
            failure = failures.hang(verdict.reason, [a.detail for a in outcome.anomalies if a.kind == "stale"])
            self.failures.append(failure)
            if self.attempt is None and not self.config.stop_command:
                # a second copy next to a hung one that nobody can stop would fight over its checkpoints
                return self._finish("failed", f"{failure.summary}; the watchdog can neither stop nor restart it "
                                    "(no --pid, no --stop-command)", failure)
            self._say(f"the run hangs ({verdict.reason}); stopping it to restart")
            self._stop_run("hang")
            self._event("exit", f"the run was stopped: {failure.summary}", ok=False, failure=failure.to_dict())
            return self._restart(failure)
        if verdict.decision == "STOP":
            failure = failures.metric_stop(verdict.reason, outcome.anomalies)
            self.failures.append(failure)
            self._say(f"STOP: {verdict.reason}; stopping the run")
            done = self._stop_run("STOP")
            return self._finish("stopped", f"the watchdog decided STOP: {verdict.reason} ({done})", failure)
        if verdict.status == "COMPLETE" and self.attempt is None:
            # separated mode without a PID: nothing left to watch
            return self._finish("completed", f"the run reached its expected total steps: {verdict.reason}", None)
        return None

    # ---------------------------------------------------------------------------------------------------- the end
    def _finish(self, outcome_name: str, reason: str, failure: failures.Failure | None) -> WatchResult:
        from . import evidence
        from .decide import Verdict

        if self.evals is not None:
            if outcome_name == "completed":
                self._tick_evals(settled=True)  # the run has ended: its last checkpoint is complete
                while self.evals.busy and self.stop_requested is None:  # the final checkpoint's eval matters
                    time.sleep(min(0.2, self.config.poll_seconds))
                    self._tick_evals()
            elif self.evals.running is not None and self.stop_requested is None:
                while self.evals.running is not None and self.stop_requested is None:
                    time.sleep(min(0.2, self.config.poll_seconds))
                    self._tick_evals(scan=False)
            self.evals.stop(min(self.config.grace, 5.0))
        outcome = self.last if self.last is not None else self._poll()
        files: list[str] = []
        notes: list[str] = []
        if failure is not None and failure.category in (failures.CODE, failures.UNKNOWN, failures.ENVIRONMENT) \
                and outcome.verdict.decision != "STOP":
            # the metrics alone look fine: the report's decision is still STOP, for the recovery prompt
            outcome = replace(outcome, verdict=Verdict("STOP", "SEVERE_ANOMALY", reason,
                                                       outcome.verdict.next_check_minutes,
                                                       outcome.verdict.evidence))
        supervision = self._supervision_lines(outcome_name, reason, failure)
        extra: dict[str, Any] = {"Supervision": supervision}
        if failure is not None and failure.evidence:
            extra["Failure evidence (log lines)"] = list(failure.evidence)
        try:
            written, save_notes = evidence.save(outcome, context=self.config.context, folder=self.evidence_dir,
                                                final=True, history=self.config.history
                                                and self.config.context is not None, plot=self.config.plot,
                                                extra=extra)
            notes += save_notes
            for path in written:
                if path.name == "recovery-prompt.md" and failure is not None:
                    self._append_diagnosis(path, failure)
            files += [str(p) for p in written]
        except OSError as exc:
            notes.append(f"cannot write the evidence ({exc.strerror})")
        self._event("end", f"{outcome_name}: {reason}", ok=outcome_name in ("completed", "watch_ended"),
                    outcome=outcome_name)
        files.append(str(self.state_dir / STATE_NAME))
        return WatchResult(outcome_name, reason, failure, outcome, list(self.events), self.attempts, self.restarts,
                           self.crashes, list(self.alerts), list(self.evals.results) if self.evals else [],
                           self._rejected(), files, notes)

    def _supervision_lines(self, outcome_name: str, reason: str, failure: failures.Failure | None) -> list[str]:
        lines = [f"Outcome: {outcome_name}: {reason}",
                 f"Mode: {'combined' if self.config.combined else 'separated'}; command: "
                 f"{_describe_command(self.config.command)}",
                 f"Attempts: {self.attempts}; restarts: {self.restarts}; environment crashes: {self.crashes}"]
        if failure is not None:
            lines.append(f"Failure: {failure.kind} ({failures.describe_category(failure.category)}): "
                         f"{failure.summary}" + (f" (look at {failure.location})" if failure.location
                                                 and failure.location not in failure.summary else ""))
        lines += [f"Alert: {a}" for a in self.alerts]
        lines += [f"Rejected checkpoint: {r['path']} ({r['why']})" for r in self._rejected()]
        if self.evals is not None:
            lines += [f"Eval of {e['checkpoint']}: {e['exit']}" for e in self.evals.results[-20:]]
        lines.append(f"State: {self.state_dir / STATE_NAME}")
        return lines

    def _append_diagnosis(self, path: Path, failure: failures.Failure) -> None:
        """The recovery prompt gets the failure's own evidence: the traceback or the log lines that show it."""
        text = path.read_text(encoding="utf-8")
        lines = ["", "## Diagnosis", "",
                 f"- Kind: {failure.kind} ({failures.describe_category(failure.category)})",
                 f"- Summary: {failure.summary}"]
        if failure.location:
            lines.append(f"- Where to look: {failure.location}")
        if failure.category == failures.CODE:
            lines.append("- The watchdog did not restart the run: a code or data problem needs a fix, not a retry.")
        if failure.evidence:
            lines += ["", "```text", *failure.evidence, "```"]
        atomic_write(path, text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")

    # ---------------------------------------------------------------------------------------------------- main loop
    def run(self) -> WatchResult:
        handlers: dict[int, Any] = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread: no handlers, Ctrl-C stays a KeyboardInterrupt
            handlers = {}
        try:
            try:
                return self._loop()
            except (_Stop, KeyboardInterrupt):
                return self._interrupted()
            except BaseException:
                self._abandon()  # an unexpected error: never leave a run the watchdog started running unwatched
                raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _abandon(self) -> None:
        """Stop the process group of an owned run and any eval, after an unexpected error in the watch loop."""
        attempt = self.attempt
        try:
            if attempt is not None and attempt.popen is not None \
                    and (attempt.popen.poll() is None or proc.group_alive(attempt.popen.pid)):
                code = proc.terminate(attempt.popen, min(self.config.grace, 5.0))
                self._say(f"the watch failed: stopped the run's process group ({proc.describe_exit(code)})")
        finally:
            if self.evals is not None:
                self.evals.stop(1.0)

    def _loop(self) -> WatchResult:
        config = self.config
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.evals is not None:
            self.evals.mark_seen(self.checkpoints.complete())  # evaluate what appears from now on
        if config.combined:
            skip = getattr(self.check, "skip_existing", None)
            if callable(skip):  # the run starts now: an earlier run's records in the same log are not its own
                skip()
            self._launch(None, restart=False)
        elif config.pid is not None:
            if not _pid_alive(config.pid):
                from ..errors import InputError

                raise InputError(f"--pid {config.pid}: no such process (the run already ended?)")
            self.attempts = 1
            self.attempt = Attempt(1, None, None, time.time(), time.monotonic(), _size(self.output), 0,
                                   pid=config.pid)
            self._event("watch", f"watching pid {config.pid}", pid=config.pid)
        else:
            self._event("watch", "watching the logs (no --pid: the process itself is not observed)")
        next_check = time.monotonic() + self._interval(None)
        while True:
            self._check_stop()
            if self.attempt is not None and not self._alive():
                result = self._on_exit()
                if result is not None:
                    return result
                next_check = time.monotonic() + self._interval(self.last)
                continue
            self._tick_evals()
            if time.monotonic() >= next_check:
                result = self._on_check()
                if result is not None:
                    return result
                next_check = time.monotonic() + self._interval(self.last)
            time.sleep(max(0.0, min(config.poll_seconds, next_check - time.monotonic())))

    def _interrupted(self) -> WatchResult:
        """SIGINT / SIGTERM to the watchdog: stop an owned run cleanly, keep every piece of evidence.

        The handlers stay installed meanwhile: a second signal only shortens the grace period.
        """
        why = self.stop_requested or "SIGINT"
        attempt = self.attempt
        if attempt is None or attempt.popen is None:
            note = "the run was left running (the watchdog did not start it)"
        elif attempt.popen.poll() is None or proc.group_alive(attempt.popen.pid):
            code = proc.terminate(attempt.popen, 1.0 if self._forced else self.config.grace)
            note = f"stopped the run's process group ({proc.describe_exit(code)})"
        else:
            note = "the run was not running (it had ended; no restart was started)"
        if self.evals is not None:
            self.evals.stop(1.0)
        self._say(f"interrupted by {why}: {note}; writing the state and the final summary")
        try:
            self.last = self.check.poll()
        except Exception as exc:  # noqa: BLE001 - the summary must still be written
            self._say(f"the last check failed ({exc})")
        return self._finish("interrupted", f"the watchdog was interrupted ({why}); {note}", None)
