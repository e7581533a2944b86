"""How a supervised run ended: an environment failure (restart it), a code bug (report it) or a clean exit.

SPML's watchdog rule: the environment killed the run (the OOM killer, an NCCL
timeout, a GPU hardware error, a full disk, a SIGKILL/SIGTERM nobody in the
loop sent, a hang) -> restart from the latest checkpoint; anything else (a
Python error in user code, NaN in the inputs, a wrong metric trend) -> never
restart, diagnose and report. What cannot be placed in either is reported
too ("unknown"): restarting an unexplained crash in a loop hides it.

Classification reads the exit status and the tail of the run's console log
(only what this attempt wrote). Each failure kind is one row of
:data:`PATTERNS` (regular expressions over log lines); extend the table to
teach the watchdog a new message. Primary environment evidence (a full
disk, an Xid, an OOM kill) wins over the traceback it appears in
(``OSError: [Errno 28] No space left on device`` raised in ``train.py`` is a
full disk, not a bug). Secondary kinds (an NCCL timeout, a rank killed by
the launcher) can be consequences: with ``torchrun``, one rank's bug leaves
the others waiting in a collective until NCCL gives up, so a traceback from
user code wins over them.

Standard library only: this module runs inside long-lived watch loops.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = [
    "CLEAN", "CODE", "ENVIRONMENT", "UNKNOWN", "Failure", "Pattern", "PATTERNS", "Traceback", "classify",
    "find_tracebacks", "hang", "is_library_path", "metric_stop", "read_tail",
]

ENVIRONMENT, CODE, CLEAN, UNKNOWN = "environment", "code", "clean", "unknown"
CATEGORIES = (ENVIRONMENT, CODE, CLEAN, UNKNOWN)
MAX_EVIDENCE = 12  # log lines kept as evidence per failure


@dataclass(frozen=True)
class Pattern:
    """One failure kind recognised from log lines."""

    kind: str
    category: str
    summary: str
    regexes: tuple[str, ...]
    # a load error counts as a checkpoint problem only when the attempt was resumed from one
    needs_resume: bool = False
    # primary evidence (a full disk, an Xid) names the failure whatever else the log says; a secondary kind can be
    # the consequence of another failure (one rank's bug leaves the others waiting until NCCL times out; torchrun
    # then kills the rest), so a traceback from user code wins over it
    primary: bool = True

    def compiled(self) -> list[re.Pattern[str]]:
        return [re.compile(r, re.IGNORECASE) for r in self.regexes]


# The table. Order matters only among environment kinds: the first kind with a
# matching line names the failure (an OOM kill also produces "Killed" and a
# DataLoader message; the kernel's line is the precise one).
PATTERNS: tuple[Pattern, ...] = (
    Pattern("oom_kill", ENVIRONMENT, "killed by the out-of-memory killer", (
        r"Out of memory: Kill(ed)? process", r"\boom[-_ ]kill", r"\bOOMKilled\b", r"oom_reaper",
        r"Memory cgroup out of memory", r"DataLoader worker \(pid \d+\) is killed by signal: Killed",
    )),
    Pattern("killed", ENVIRONMENT, "a process was killed by a signal from outside (often the out-of-memory killer)", (
        r"^\s*Killed\s*$", r"exitcode\s*:\s*-(9|15)\b", r"Signal (9|15) \(SIG(KILL|TERM)\) received by PID",
        r"DataLoader worker \(pid \d+\) is killed by signal: Terminated",
    ), primary=False),
    Pattern("gpu_oom", ENVIRONMENT, "GPU out of memory", (
        r"CUDA out of memory", r"OutOfMemoryError", r"CUBLAS_STATUS_ALLOC_FAILED", r"HIP out of memory",
        r"RESOURCE_EXHAUSTED: Out of memory",
    )),
    Pattern("nccl_timeout", ENVIRONMENT, "NCCL / collective communication failure", (
        r"Watchdog caught collective operation timeout", r"NCCL (watchdog )?timeout", r"ProcessGroupNCCL.*[Tt]imeout",
        r"NCCL (communicator|comm) .*abort", r"ncclSystemError", r"ncclRemoteError", r"ncclInternalError",
        r"NCCL error.*(unhandled system error|remote process exited|Connection (reset|closed|refused))",
        r"Timed out waiting .* for (the )?(store|rendezvous|collective)", r"RendezvousTimeoutError",
        r"DistNetworkError", r"Connection reset by peer.*(gloo|nccl|c10d)", r"Gloo connectFullMesh failed",
    ), primary=False),
    Pattern("gpu_hardware", ENVIRONMENT, "GPU hardware error (Xid / ECC / GPU lost)", (
        r"\bNVRM: Xid\b", r"\bXid\b.*\b\d{1,3}\b", r"uncorrectable ECC error", r"\bECC error",
        r"cudaErrorECCUncorrectable", r"GPU has fallen off the bus", r"GPU is lost",
        r"CUDA error: (unknown error|an uncorrectable)", r"NVML_ERROR_GPU_IS_LOST",
        r"CUDA-capable device\(s\) is/are busy or unavailable", r"CUDA error: uncorrectable NVLink error",
    )),
    Pattern("disk_full", ENVIRONMENT, "the disk is full", (
        r"No space left on device", r"\[Errno 28\]", r"\bENOSPC\b", r"Disk quota exceeded", r"\[Errno 122\]",
        r"PytorchStreamWriter failed writing file",
    )),
    Pattern("checkpoint_load", ENVIRONMENT, "the checkpoint failed to load (incomplete or corrupt)", (
        r"PytorchStreamReader failed", r"failed finding central directory", r"UnpicklingError",
        r"invalid load key", r"EOFError: Ran out of input", r"BadZipFile", r"Error\(s\) in loading state_dict",
        r"unexpected EOF", r"file .*is not a zip file", r"SafetensorError", r"checkpoint .*(corrupt|truncated)",
    ), needs_resume=True),
    Pattern("nan_input", CODE, "NaN or Inf in the inputs", (
        r"\b(input|inputs|batch|data|features?|targets?|labels?)\b[^\n]{0,40}\b(contains?|has|have|with)\b"
        r"[^\n]{0,20}\b(nan|inf|infinity)\b",
        r"\b(nan|inf)s?\b[^\n]{0,20}\b(in|found in|detected in)\b[^\n]{0,20}\b(input|inputs|batch|data|features?)\b",
        r"Function '\w+' returned nan values",
    )),
)
_COMPILED = [(p, p.compiled()) for p in PATTERNS]

# signals that end a run from outside: preemption, a kill by an admin or the OOM killer, a lost terminal
_EXTERNAL_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
if hasattr(signal, "SIGXCPU"):
    _EXTERNAL_SIGNALS.add(signal.SIGXCPU)  # a CPU-time limit of the scheduler


@dataclass(frozen=True)
class Frame:
    path: str
    line: int
    function: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} in {self.function}"


@dataclass(frozen=True)
class Traceback:
    """One Python traceback found in a log: its frames (outermost first) and the exception line."""

    frames: tuple[Frame, ...]
    exception: str
    lines: tuple[str, ...]  # the traceback as printed (header, frames, exception)

    @property
    def user_frames(self) -> list[Frame]:
        return [f for f in self.frames if not is_library_path(f.path)]

    @property
    def innermost_is_user(self) -> bool:
        return bool(self.frames) and not is_library_path(self.frames[-1].path)


@dataclass(frozen=True)
class Failure:
    """How one attempt of the run ended, with the log lines that show it."""

    kind: str  # a Pattern kind, or: clean_exit, external_signal, python_error, library_error, hang, metric_trend,
    #            unknown_exit
    category: str  # environment | code | clean | unknown
    summary: str
    evidence: tuple[str, ...] = ()
    exit_code: int | None = None
    location: str | None = None  # the innermost user frame of a traceback: where to look
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def restartable(self) -> bool:
        """Environment failures are restarted from a checkpoint; nothing else ever is."""
        return self.category == ENVIRONMENT

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "category": self.category, "summary": self.summary,
                "exit_code": self.exit_code, "location": self.location, "evidence": list(self.evidence),
                "details": dict(self.details)}


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_tail(path: str | os.PathLike, start: int = 0, limit: int = 256 << 10) -> list[str]:
    """The lines of ``path`` written after byte ``start``, at most the last ``limit`` bytes of them.

    A missing file reads as no lines. The first line is dropped when the
    window starts mid-line.
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            begin = max(start if 0 <= start <= end else 0, end - limit)
            f.seek(begin)
            data = f.read(end - begin)
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if begin > start and lines:
        lines = lines[1:]
    return lines


# ----------------------------------------------------------------------------------------------------------------
# tracebacks

_TB_HEAD = re.compile(r"Traceback \(most recent call last\):")
_TB_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.+))?')
_EXC_LINE = re.compile(r"^(?:\[[^\]]*\]:?\s*)?(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|"
                       r"Warning|Failure|Timeout|Fault)\b.*|^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*: .*")
_PEER_LOST = re.compile(r"Connection closed by peer|Connection reset by peer|remote worker crash|DistBackendError|"
                        r"NCCL communicator was aborted|ProcessGroupNCCL.*(?:abort|watchdog)", re.IGNORECASE)
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)?\d+\]:\s?")  # torchrun --tee / log prefixes "[rank0]:"
# installed packages, the standard library, and console-script launchers (/usr/bin/torchrun, .venv/bin/accelerate)
_LIBRARY_MARKERS = ("site-packages", "dist-packages", "/lib/python", "\\lib\\python", "/lib64/python", "/bin/")
# extra library roots (e.g. a vendored framework): set SPML_WATCH_LIBRARY_PATHS=path1:path2
_EXTRA_LIBRARY = tuple(p for p in os.environ.get("SPML_WATCH_LIBRARY_PATHS", "").split(os.pathsep) if p)


def is_library_path(path: str) -> bool:
    """Whether a traceback frame's file is library code (installed packages, the standard library, builtins)."""
    if path.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return not path.startswith(("<string>", "<stdin>"))
    if any(m in path for m in _LIBRARY_MARKERS):
        return True
    return any(path.startswith(p) for p in _EXTRA_LIBRARY)


def _strip(line: str) -> str:
    return _RANK_PREFIX.sub("", line, count=1)


def find_tracebacks(lines: Sequence[str]) -> list[Traceback]:
    """Every Python traceback in ``lines`` (chained ones separately), in order."""
    found: list[Traceback] = []
    i = 0
    n = len(lines)
    while i < n:
        if not _TB_HEAD.search(lines[i]):
            i += 1
            continue
        shown = [lines[i]]
        frames: list[Frame] = []
        i += 1
        exception = ""
        while i < n:
            text = _strip(lines[i])
            match = _TB_FRAME.match(text)
            if match:
                frames.append(Frame(match["path"], int(match["line"]), (match["func"] or "?").strip()))
                shown.append(lines[i])
                i += 1
                continue
            if text.startswith((" ", "\t")) or not text.strip():
                # source lines, carets; a blank line inside a traceback (Python 3.11 ExceptionGroups) too
                if text.strip():
                    shown.append(lines[i])
                i += 1
                continue
            if _EXC_LINE.match(text.strip()) or frames:
                exception = text.strip()
                shown.append(lines[i])
                i += 1
            break
        found.append(Traceback(tuple(frames), exception, tuple(shown)))
    return found


# ----------------------------------------------------------------------------------------------------------------
# classification


def _matches(lines: Sequence[str], *, resumed: bool) -> list[tuple[Pattern, list[str]]]:
    out: list[tuple[Pattern, list[str]]] = []
    for pattern, regexes in _COMPILED:
        if pattern.needs_resume and not resumed:
            continue
        hits = [ln for ln in lines if any(r.search(ln) for r in regexes)]
        if hits:
            out.append((pattern, hits))
    return out


def _pattern_of(text: str, *, resumed: bool) -> Pattern | None:
    for pattern, regexes in _COMPILED:
        if pattern.needs_resume and not resumed:
            continue
        if any(r.search(text) for r in regexes):
            return pattern
    return None


def _evidence(lines: Iterable[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for line in lines:
        line = line.rstrip()
        if line and line not in kept:
            kept.append(line)
    if len(kept) > MAX_EVIDENCE:  # keep both ends: the first frames say where, the last lines say what
        half = MAX_EVIDENCE // 2
        kept = kept[:half] + [f"... ({len(kept) - MAX_EVIDENCE} lines)"] + kept[-half:]
    return tuple(kept)


def _from_pattern(pattern: Pattern, hits: Sequence[str], code: int | None, extra: Sequence[str] = ()) -> Failure:
    from ..proc import describe_exit

    summary = f"{pattern.summary} ({describe_exit(code)})" if code is not None else pattern.summary
    return Failure(pattern.kind, pattern.category, summary, _evidence([*extra, *hits]), code)


def _from_traceback(tb: Traceback, code: int | None) -> Failure:
    from ..proc import describe_exit

    users = tb.user_frames
    exit_text = f" ({describe_exit(code)})" if code is not None else ""
    if not users:
        # nothing of the user's on the stack: a library or the interpreter failed on its own; not known to be
        # the environment, so it is reported, not restarted
        where = tb.frames[-1].where if tb.frames else None
        return Failure("library_error", UNKNOWN, f"{tb.exception or 'a Python error'} raised in library code"
                       f"{f' ({where})' if where else ''} with no user frame on the stack{exit_text}",
                       _evidence(tb.lines), code, where, {"raised_in": where, "user_frame": None})
    user = users[-1]
    raised = tb.frames[-1]
    if tb.innermost_is_user:
        summary = f"{tb.exception or 'a Python error'} at {user.where}{exit_text}"
    else:
        summary = (f"{tb.exception or 'a Python error'} raised in library code ({raised.where}) "
                   f"called from {user.where}{exit_text}")
    return Failure("python_error", CODE, summary, _evidence(tb.lines), code, user.where,
                   {"raised_in": raised.where, "user_frame": user.where, "innermost_is_user": tb.innermost_is_user,
                    "exception": tb.exception})


def classify(exit_code: int | None, log_lines: Sequence[str] = (), *, stopped_by_us: bool = False,
             resumed_from: str | os.PathLike | None = None) -> Failure:
    """Classify how an attempt ended from its exit status and the log lines it wrote.

    ``exit_code`` is Popen's (negative for a signal) or a shell's (128 + N);
    None when unknown (a run watched by PID). ``stopped_by_us``: the
    watchdog itself signalled the run (a STOP or a hang), so a signal death
    is not an external kill. ``resumed_from``: the checkpoint this attempt
    was resumed from; a load error then names that checkpoint (without it, a
    load error is an ordinary error of the code that loads the file).

    In order: exit 0 is clean; a signal death is external (named by the
    log's environment lines when there are any) or the watchdog's own stop;
    primary environment lines name an environment failure; a traceback from
    user code whose exception is no environment message is a code bug;
    NaN/Inf-in-inputs lines are a code bug; secondary environment lines name
    an environment failure; a traceback with no user frame is an
    unclassified library error; anything else is an unknown exit.
    """
    from ..proc import describe_exit, signal_of

    lines = [_strip(ln) for ln in log_lines]
    resumed = resumed_from is not None
    if exit_code == 0:
        return Failure("clean_exit", CLEAN, "the run exited normally (exit 0)", (), 0)
    matches = _matches(lines, resumed=resumed)
    env_hits = sorted(((p, h) for p, h in matches if p.category == ENVIRONMENT), key=lambda m: not m[0].primary)
    tracebacks = find_tracebacks(lines)
    sig = signal_of(exit_code)
    if sig is not None:
        # a Python error exits with 1: a signal death did not come from the code's own exceptions
        if stopped_by_us:
            return Failure("stopped", CLEAN, f"stopped by the watchdog ({describe_exit(exit_code)})", (), exit_code)
        if env_hits:
            return _from_pattern(*env_hits[0], exit_code)
        if sig in _EXTERNAL_SIGNALS:
            name = signal.Signals(sig).name
            if sig == signal.SIGKILL:
                # the kernel's OOM killer sends SIGKILL and leaves no line in the run's own log
                summary = (f"{describe_exit(exit_code)} from outside the watchdog (the out-of-memory killer, a "
                           "scheduler or an admin)")
            else:
                summary = f"{describe_exit(exit_code)}: {name} from outside the watchdog (preemption, a scheduler)"
            return Failure("external_signal", ENVIRONMENT, summary, _evidence(lines[-3:]), exit_code,
                           details={"signal": name})
    if env_hits and env_hits[0][0].primary:
        return _env_failure(*env_hits[0], exit_code, tracebacks, resumed_from)
    # the last traceback from user code whose own exception is not an environment message is the bug, whatever
    # secondary lines the log has (with torchrun one rank's bug makes the others time out in NCCL)
    # a rank that lost its peer (gloo "Connection closed by peer", an aborted NCCL communicator) only reports
    # another rank's end: the crashing rank's own traceback, or the launcher's exit lines, say what happened
    for tb in reversed(tracebacks):
        if _PEER_LOST.search(tb.exception):
            continue
        if tb.exception.split(":", 1)[0].rsplit(".", 1)[-1] == "KeyboardInterrupt":
            return Failure("external_signal", ENVIRONMENT, f"interrupted (SIGINT) from outside the watchdog "
                           f"({describe_exit(exit_code)})", _evidence(tb.lines[-3:]), exit_code,
                           details={"signal": "SIGINT"})
        own = _pattern_of(tb.exception, resumed=resumed)
        if own is not None and own.category == CODE:
            return _from_pattern(own, [tb.exception], exit_code, tb.lines)
        if own is None and tb.user_frames and tb.exception:
            return _from_traceback(tb, exit_code)
    code_hits = [(p, h) for p, h in matches if p.category == CODE]
    if code_hits:
        return _from_pattern(*code_hits[0], exit_code)
    if env_hits:
        return _env_failure(*env_hits[0], exit_code, tracebacks, resumed_from)
    if tracebacks:
        return _from_traceback(tracebacks[-1], exit_code)
    what = describe_exit(exit_code) if exit_code is not None else "the process ended (exit status unknown)"
    return Failure("unknown_exit", UNKNOWN, f"{what} without a recognised cause in the log", _evidence(lines[-5:]),
                   exit_code)


def _env_failure(pattern: Pattern, hits: Sequence[str], exit_code: int | None, tracebacks: Sequence[Traceback],
                 resumed_from: str | os.PathLike | None) -> Failure:
    # the traceback that carried the message (if any) is part of the evidence: where it happened
    resumed = resumed_from is not None
    carrier = next((tb for tb in reversed(tracebacks) if _pattern_of(tb.exception, resumed=resumed) is pattern), None)
    failure = _from_pattern(pattern, hits, exit_code, carrier.lines[-4:] if carrier else ())
    if pattern.kind == "checkpoint_load":
        failure = Failure(failure.kind, failure.category, f"{failure.summary}: {resumed_from}", failure.evidence,
                          exit_code, details={"checkpoint": str(resumed_from)})
    return failure


def hang(detail: str, evidence: Sequence[str] = ()) -> Failure:
    """The run is alive but silent past the stale threshold: an environment failure (restart it)."""
    return Failure("hang", ENVIRONMENT, f"the run hangs: {detail}", _evidence(evidence))


def metric_stop(reason: str, anomalies: Sequence[Any] = ()) -> Failure:
    """The training check decided STOP on the metrics: a wrong trend is the code's or the data's, never restarted."""
    lines = []
    for a in anomalies:
        data = a.to_dict() if hasattr(a, "to_dict") else dict(a)
        if data.get("severity") == "severe" and not data.get("recovered"):
            line = (data.get("evidence") or {}).get("line") or ""
            lines.append(f"{data['kind']} at step {data['step']}: {data['detail']}" + (f" [{line}]" if line else ""))
    return Failure("metric_trend", CODE, f"the training check decided STOP: {reason}", _evidence(lines))


def describe_category(category: str) -> str:
    return {ENVIRONMENT: "environment failure", CODE: "code bug", CLEAN: "clean exit",
            UNKNOWN: "unclassified failure"}.get(category, category)
