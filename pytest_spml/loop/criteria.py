"""ml-iteration's compound review criteria (``criteria.yaml``) and the judge that applies them.

``spml-loop iterate`` runs the autoresearch round engine with this judge in
place of "strictly better than the best". The criteria are collected up front
in ``criteria.yaml`` (copied to ``.spml/criteria.yaml`` when the loop starts,
so a researcher editing the file in the tree changes nothing)::

    metrics:          # numbers the fixed eval wrote to the round's fresh result file
      accuracy: ">= 0.85"
      loss: {check: "<= 0.3", required: false}
    performance:      # first-step time, MFU, throughput
      first_step_time: "<= 30s"                 # from the round's step log
      mfu: {check: ">= 30%", from: l1}          # from .spml/l1-report.json (pytest --spml-l1)
      samples_per_s: {check: ">= 500", from: eval}
    observability:    # keys every step record of the step log carries
      keys: [loss, grad_norm, step_time_s]
    stability:        # no NaN/Inf (the watchdog's detectors), no autograd warnings in the output
      nan_inf: true
      warnings: true
    custom:           # a command that passes (exit 0) or fails
      hf_format: "python tools/check_hf_format.py"

Every criterion is *required* unless it says ``required: false`` (an
*advisory* criterion). The verdict of a round:

* ``commit``: every required criterion passes;
* ``accept`` (committed, with a note): only advisory criteria fail;
* ``rollback``: a required criterion fails, or a step of the round failed
  (the researcher, compliance, training, the eval), or a custom command
  changed the work tree.

The loop stops when a committed round passes every criterion, advisory ones
included (``--keep-going`` runs on to ``max_rounds``).

What counts, and why: metrics come only from the result file the eval
process wrote for this round (the engine's fresh-result-path rule); the
step log and the captured output are the round's own files under
``.spml/rounds/NNNN/``; a log or L1 report named in the criteria counts only
when it was written during the round. Each criterion's outcome is kept in
the round's row (``results.jsonl``: ``steps.criteria``).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..fsutil import atomic_write
from .experiences import RoundRow, summary_for_prompt
from .judge import Outcome, Verdict, is_better
from .state import LoopPaths, LoopState

KINDS = ("metrics", "performance", "observability", "stability", "custom")
TOP_KEYS = (*KINDS, "l1_report")
DEFAULT_L1_REPORT = ".spml/l1-report.json"
DEFAULT_CUSTOM_TIMEOUT_S = 600.0
SOURCES = ("eval", "log", "l1")
# where a performance criterion reads its number unless it says `from:`
_DEFAULT_SOURCE = {"first_step_time": "log", "step_time": "log", "mfu": "l1", "tca": "l1"}
# step-time keys of a step log, as the watchdog knows them (name -> seconds per unit)
STEP_TIME_KEYS = {"step_time_s": 1.0, "train/step_time_s": 1.0, "step_time": 1.0, "dt": 1.0,
                  "time_ms": 1e-3, "step_time_ms": 1e-3, "dt_ms": 1e-3}
# torch's autograd anomaly reports and autograd warnings (`UserWarning: ... .grad ...`)
DEFAULT_WARNING_PATTERNS = (
    r"Error detected in \w+Backward",
    r"returned (nan|inf) values in its \w+ output",
    r"Warning: .*(\bautograd\b|\bbackward\b|\bgrad_fn\b|\brequires_grad\b|\.grad\b)",
)
DEFAULT_WARNING_IGNORE = (r"Anomaly Detection has been enabled",)
DETECTOR_KINDS = ("loss_spike", "divergence", "grad_explosion", "grad_vanishing", "eval_degradation")

_FIELDS: dict[str, tuple[str, ...]] = {
    "metrics": ("check", "required", "metric", "why"),
    "performance": ("check", "required", "from", "key", "why"),
    "observability": ("keys", "log", "every", "required", "why"),
    "stability": ("nan_inf", "warnings", "warning_patterns", "warning_ignore", "detectors", "log", "required"),
    "custom": ("command", "required", "timeout", "why"),
}
_CHECK = re.compile(r"^\s*(>=|<=|==|>|<|=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
                    r"(%|ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hours?)?\s*$")
_UNIT = {"%": 0.01, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[A-Za-z0-9_.\-/]+$")


# ------------------------------------------------------------------------------------------------ the model

@dataclass(frozen=True)
class Check:
    """A comparison such as ``>= 0.85``, ``<= 30s`` or ``>= 30%`` (units become seconds / fractions)."""

    op: str
    value: float
    text: str

    def passes(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        return {">=": x >= self.value, ">": x > self.value, "<=": x <= self.value, "<": x < self.value,
                "==": x == self.value}[self.op]


def parse_check(value: Any) -> Check | None:
    if not isinstance(value, str):
        return None
    match = _CHECK.match(value)
    if not match:
        return None
    op, number, unit = match.group(1), float(match.group(2)), (match.group(3) or "").lower()
    scale = _UNIT["%"] if unit == "%" else _UNIT["ms"] if unit == "ms" else _UNIT.get(unit[:1], 1.0) if unit else 1.0
    return Check("==" if op == "=" else op, number * scale, value.strip())


@dataclass(frozen=True)
class Criterion:
    """One review criterion; ``id`` is ``kind/name`` (e.g. ``metrics/accuracy``)."""

    kind: str
    name: str
    required: bool
    line: int
    check: Check | None = None
    source: str = ""  # metrics and performance: eval, log or l1
    key: str = ""  # the number read (metric name, log key, L1 measurement)
    keys: tuple[str, ...] = ()  # observability
    every: bool = True  # observability: every step record has every key (False: each key somewhere)
    log: str | None = None  # a log to read instead of the round's $SPML_METRICS_LOG (repository-relative)
    command: str = ""  # custom
    timeout_s: float = DEFAULT_CUSTOM_TIMEOUT_S
    patterns: tuple[str, ...] = ()  # stability/warnings
    ignore: tuple[str, ...] = ()
    detectors: tuple[str, ...] = ()  # stability/detectors
    why: str = ""

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"

    def describe(self) -> str:
        if self.kind == "metrics":
            return f"{self.key} {self.check.text if self.check else ''} (the eval's result file)"
        if self.kind == "performance":
            where = {"eval": "the eval's result file", "log": "the step log", "l1": "the L1 report"}[self.source]
            return f"{self.key or self.name} {self.check.text if self.check else ''} ({where})"
        if self.kind == "observability":
            scope = "every step record" if self.every else "the step log"
            return f"{scope} has {', '.join(self.keys)}"
        if self.kind == "custom":
            return f"`{self.command}` exits 0"
        return {"nan_inf": "no NaN/Inf in the step log or the output (watchdog detectors)",
                "warnings": "no autograd anomaly or warning lines in the training output",
                "detectors": f"no severe {', '.join(self.detectors)} finding (watchdog detectors)"}[self.name]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "required": self.required, "line": self.line,
                "describe": self.describe(), **({"why": self.why} if self.why else {})}


@dataclass(frozen=True)
class Criteria:
    path: Path
    items: tuple[Criterion, ...]
    text: str  # the file as read, copied to .spml/criteria.yaml
    l1_report: str = DEFAULT_L1_REPORT

    @property
    def required(self) -> list[Criterion]:
        return [c for c in self.items if c.required]


@dataclass
class CriterionResult:
    id: str
    status: str  # pass, fail, error (could not be evaluated), skip (a step of the round failed first)
    message: str
    required: bool
    value: float | None = None
    veto: bool = False  # the round must not be committed whatever the other criteria say (a changed work tree)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "message": self.message, "required": self.required,
                "value": self.value, **({"veto": True} if self.veto else {})}


# ------------------------------------------------------------------------------------------------ parsing

class _Doc:
    """The YAML document with a line for every key path, so every error names its line."""

    def __init__(self, path: Path, text: str):
        import yaml

        from ..yamlmeta import _index_lines

        try:
            from yaml import CSafeLoader as loader
        except ImportError:  # pragma: no cover - depends on the PyYAML build
            from yaml import SafeLoader as loader  # type: ignore[assignment]
        self.path = path
        try:
            node = yaml.compose(text, Loader=loader)
            self.data = yaml.load(text, Loader=loader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise InputError(f"invalid YAML: {problem}", path, mark.line + 1 if mark is not None else 1) from None
        self.lines: dict[tuple[str, ...], int] = {}
        if node is not None:
            _index_lines(node, (), 1, self.lines, path)

    def line(self, *keys: str) -> int:
        for depth in range(len(keys), 0, -1):
            found = self.lines.get(tuple(keys[:depth]))
            if found is not None:
                return found
        return 1

    def fail(self, keys: tuple[str, ...], message: str) -> InputError:
        return InputError(f"criteria field '{'.'.join(keys)}' {message}", self.path, self.line(*keys))


def load_criteria(path: str | Path, text: str | None = None) -> Criteria:
    """Read and validate ``criteria.yaml``; any bad field is an :class:`InputError` naming the file and line."""
    path = Path(path)
    if text is None:
        from ..yamlmeta import decode_utf8

        try:
            text = decode_utf8(path.read_bytes(), path)
        except FileNotFoundError:
            raise InputError("criteria file not found; pass --criteria PATH (`spml init --only criteria` writes a "
                             "commented example)", path) from None
        except IsADirectoryError:
            raise InputError("is a directory; pass the criteria file itself with --criteria PATH", path) from None
        except OSError as exc:
            raise InputError(f"cannot read the criteria ({exc.strerror})", path) from None
    doc = _Doc(path, text.removeprefix("\ufeff"))
    data = doc.data
    if data is None:
        raise InputError("no criteria: the file is empty; give at least one of " + ", ".join(KINDS), path, 1)
    if not isinstance(data, dict):
        raise InputError("criteria must be a mapping with sections " + ", ".join(KINDS), path, 1)
    for key in data:
        if key not in TOP_KEYS:
            raise InputError(f"unknown criteria section '{key}' (known: {', '.join(TOP_KEYS)})", path,
                             doc.line(str(key)))
    items: list[Criterion] = []
    for kind in KINDS:
        section = data.get(kind)
        if kind not in data:
            continue
        if kind == "stability" and section in (None, True, {}):
            section = {}  # `stability:` alone: both checks, required
        elif section is None or section == {} or section == []:
            raise doc.fail((kind,), "is empty; remove it or give criteria")
        parse = {"metrics": _parse_metrics, "performance": _parse_performance, "observability": _parse_observability,
                 "stability": _parse_stability, "custom": _parse_custom}[kind]
        items.extend(parse(doc, section))
    if not items:
        raise InputError("no criteria: give at least one of " + ", ".join(KINDS), path, 1)
    l1 = data.get("l1_report", DEFAULT_L1_REPORT)
    if not isinstance(l1, str) or not l1.strip() or l1.strip().startswith(("/", "..")):
        raise doc.fail(("l1_report",), f"must be a path relative to the repository root, got {l1!r}")
    return Criteria(path=path, items=tuple(items), text=text, l1_report=l1.strip())


def _entry(doc: _Doc, kind: str, name: str, value: Any) -> dict[str, Any]:
    """A short entry (``name: ">= 0.85"``, ``name: "cmd"``) or its long form, with unknown keys refused."""
    keys = (kind, name)
    if not _NAME.match(name):
        raise doc.fail(keys, "is not a usable name: use letters, digits, '_', '-', '.' and '/'")
    if isinstance(value, dict):
        for key in value:
            if key not in _FIELDS[kind]:
                raise InputError(f"unknown criteria field '{kind}.{name}.{key}' (known: {', '.join(_FIELDS[kind])})",
                                 doc.path, doc.line(kind, name, str(key)))
        return dict(value)
    return {"check" if kind != "custom" else "command": value}


def _required(doc: _Doc, keys: tuple[str, ...], spec: dict[str, Any]) -> bool:
    value = spec.get("required", True)
    if not isinstance(value, bool):
        raise doc.fail((*keys, "required"), f"must be true or false, got {value!r}")
    return value


def _check(doc: _Doc, keys: tuple[str, ...], spec: dict[str, Any]) -> Check:
    if "check" not in spec:
        raise doc.fail((*keys, "check"), "is missing: give a comparison such as '>= 0.85' or '<= 30s'")
    raw = spec["check"]
    check = parse_check(raw)
    if check is None:
        hint = f"; a bare number has no direction: write '>= {raw}' or '<= {raw}'" \
            if isinstance(raw, (int, float)) and not isinstance(raw, bool) else ""
        where = (*keys, "check") if (*keys, "check") in doc.lines else keys  # the long form, or `name: check`
        raise doc.fail(where, f"must be a comparison such as '>= 0.85', '<= 30s' or '>= 30%' (one of >=, >, <=, <, "
                              f"==), got {raw!r}{hint}")
    return check


def _text(doc: _Doc, keys: tuple[str, ...], value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise doc.fail(keys, f"must be {what}, got {value!r}")
    return value.strip()


def _section(doc: _Doc, kind: str, section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise doc.fail((kind,), f"must be a mapping of criteria (name: check), got {type(section).__name__}")
    return section


def _parse_metrics(doc: _Doc, section: Any) -> list[Criterion]:
    out = []
    for name, value in _section(doc, "metrics", section).items():
        name = str(name)
        spec = _entry(doc, "metrics", name, value)
        keys = ("metrics", name)
        metric = _text(doc, (*keys, "metric"), spec.get("metric", name), "the name of a number in the eval's result")
        out.append(Criterion("metrics", name, _required(doc, keys, spec), doc.line(*keys),
                             check=_check(doc, keys, spec), source="eval", key=metric, why=str(spec.get("why") or "")))
    return out


def _parse_performance(doc: _Doc, section: Any) -> list[Criterion]:
    out = []
    for name, value in _section(doc, "performance", section).items():
        name = str(name)
        spec = _entry(doc, "performance", name, value)
        keys = ("performance", name)
        source = spec.get("from", _DEFAULT_SOURCE.get(name, "eval"))
        if source not in SOURCES:
            raise doc.fail((*keys, "from"), f"must be one of {', '.join(SOURCES)} (the eval's result file, the round's "
                                            f"step log, the L1 report), got {source!r}")
        # first_step_time and step_time know where their number is (step-time keys, L1's step times) unless told
        default_key = "" if name in ("first_step_time", "step_time") and source != "eval" else name
        key = _text(doc, (*keys, "key"), spec["key"], "the name of the number to read") if "key" in spec \
            else default_key
        out.append(Criterion("performance", name, _required(doc, keys, spec), doc.line(*keys),
                             check=_check(doc, keys, spec), source=source, key=key, why=str(spec.get("why") or "")))
    return out


def _log_path(doc: _Doc, keys: tuple[str, ...], value: Any) -> str | None:
    if value is None:
        return None
    text = _text(doc, keys, value, "a path relative to the repository root")
    if text.startswith(("/", "..")):
        raise doc.fail(keys, f"must be a path relative to the repository root, got {text!r}")
    return text


def _parse_observability(doc: _Doc, section: Any) -> list[Criterion]:
    spec = _section(doc, "observability", section)
    for key in spec:
        if key not in _FIELDS["observability"]:
            raise InputError(f"unknown criteria field 'observability.{key}' (known: "
                             f"{', '.join(_FIELDS['observability'])})", doc.path, doc.line("observability", str(key)))
    keys = spec.get("keys")
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k.strip() for k in keys):
        raise doc.fail(("observability", "keys"), "must be a non-empty list of the keys every step record logs, "
                                                  "e.g. [loss, grad_norm, step_time_s]")
    every = spec.get("every", True)
    if not isinstance(every, bool):
        raise doc.fail(("observability", "every"), f"must be true or false, got {every!r}")
    return [Criterion("observability", "keys", _required(doc, ("observability",), spec), doc.line("observability"),
                      keys=tuple(k.strip() for k in keys), every=every,
                      log=_log_path(doc, ("observability", "log"), spec.get("log")), why=str(spec.get("why") or ""))]


def _patterns(doc: _Doc, keys: tuple[str, ...], value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise doc.fail(keys, "must be a list of regular expressions")
    for i, pattern in enumerate(value):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise InputError(f"criteria field '{'.'.join(keys)}' pattern {pattern!r} is not a regular expression "
                             f"({exc})", doc.path, doc.line(*keys, str(i))) from None
    return tuple(value)


def _parse_stability(doc: _Doc, section: Any) -> list[Criterion]:
    spec = _section(doc, "stability", section)
    for key in spec:
        if key not in _FIELDS["stability"]:
            raise InputError(f"unknown criteria field 'stability.{key}' (known: {', '.join(_FIELDS['stability'])})",
                             doc.path, doc.line("stability", str(key)))
    required = _required(doc, ("stability",), spec)
    log = _log_path(doc, ("stability", "log"), spec.get("log"))
    out = []
    for name in ("nan_inf", "warnings"):
        on = spec.get(name, True)
        if not isinstance(on, bool):
            raise doc.fail(("stability", name), f"must be true or false, got {on!r}")
        if on:
            out.append(Criterion(
                "stability", name, required, doc.line("stability", name) if ("stability", name) in doc.lines
                else doc.line("stability"), log=log,
                patterns=_patterns(doc, ("stability", "warning_patterns"), spec.get("warning_patterns"),
                                   DEFAULT_WARNING_PATTERNS) if name == "warnings" else (),
                ignore=_patterns(doc, ("stability", "warning_ignore"), spec.get("warning_ignore"),
                                 DEFAULT_WARNING_IGNORE) if name == "warnings" else ()))
    detectors = spec.get("detectors") or []
    if isinstance(detectors, str):
        detectors = [detectors]
    if not isinstance(detectors, list) or any(d not in DETECTOR_KINDS for d in detectors):
        raise doc.fail(("stability", "detectors"), f"must be a list of watchdog detectors among "
                                                   f"{', '.join(DETECTOR_KINDS)}, got {spec.get('detectors')!r}")
    if detectors:
        out.append(Criterion("stability", "detectors", required, doc.line("stability", "detectors"), log=log,
                             detectors=tuple(detectors)))
    if not out:
        raise doc.fail(("stability",), "turns every check off; remove the section instead")
    return out


def _parse_custom(doc: _Doc, section: Any) -> list[Criterion]:
    from ..protocol import parse_duration

    out = []
    for name, value in _section(doc, "custom", section).items():
        name = str(name)
        spec = _entry(doc, "custom", name, value)
        keys = ("custom", name)
        command = _text(doc, (*keys, "command") if isinstance(value, dict) else keys, spec.get("command"),
                        "a shell command that exits 0 when the criterion holds")
        timeout = parse_duration(spec.get("timeout", DEFAULT_CUSTOM_TIMEOUT_S))
        if timeout is None or not 0 < timeout < math.inf:
            raise doc.fail((*keys, "timeout"), f"must be a positive duration such as 90, '5m', got "
                                               f"{spec.get('timeout')!r}")
        out.append(Criterion("custom", name, _required(doc, keys, spec), doc.line(*keys), command=command,
                             timeout_s=timeout, why=str(spec.get("why") or "")))
    return out


# ------------------------------------------------------------------------------------------------ reading the round

@dataclass
class _LogScan:
    """What one pass over a JSONL step log found."""

    path: Path
    records: int = 0
    step_records: int = 0
    present: set[str] = field(default_factory=set)
    missing: dict[str, str] = field(default_factory=dict)  # key -> first step record (path:line) without it
    nonfinite: tuple[str, str, int | None] | None = None  # (key, path:line, step)
    first_step_time: tuple[float, str, str] | None = None  # (seconds, key, path:line)
    values: dict[str, list[float]] = field(default_factory=dict)
    bad_lines: int = 0


def _scan_log(path: Path, keys: tuple[str, ...] = (), collect: tuple[str, ...] = (),
              step_time_keys: dict[str, float] | None = None, label: str = "") -> _LogScan:
    """One streaming pass over a JSONL step log (``watch.sources.iter_jsonl``): keys, non-finite values, numbers.

    Evidence names lines as ``label:line`` (the repository-relative path).
    """
    from ..watch.sources import iter_jsonl

    scan = _LogScan(path)
    state: dict[str, Any] = {}
    prefix = str(path)
    for chunk in iter_jsonl(path, state):
        for rec in chunk:
            if label and rec.line.startswith(prefix):
                rec = type(rec)(rec.step, rec.time, rec.values, label + rec.line[len(prefix):])
            scan.records += 1
            names = set(rec.values)
            if rec.step is not None:
                names.add("step")
            if rec.time is not None:
                names.add("time")
            scan.present |= names
            if rec.step is not None:
                scan.step_records += 1
                for key in keys:
                    if key not in names and key not in scan.missing:
                        scan.missing[key] = rec.line
                if step_time_keys and scan.first_step_time is None:
                    for key, scale in step_time_keys.items():
                        value = rec.values.get(key)
                        if value is not None:
                            scan.first_step_time = (value * scale, key, rec.line)
                            break
            for key, value in rec.values.items():
                if scan.nonfinite is None and not math.isfinite(value):
                    scan.nonfinite = (key, rec.line, rec.step)
                if key in collect and math.isfinite(value):
                    scan.values.setdefault(key, []).append(value)
    scan.bad_lines = int(state.get("bad_lines", 0) or 0)
    return scan


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _written_during(path: Path, since: float) -> bool:
    try:
        # modification times come from the kernel's coarse clock, a tick behind time.time(): 50 ms of slack
        return path.stat().st_mtime >= since - 0.05
    except OSError:
        return False


def _scan_text(path: Path, patterns: tuple[str, ...], ignore: tuple[str, ...]) -> tuple[int, int, str]:
    """(matching lines, first line number, first line) of the output that match a pattern."""
    found = re.compile("|".join(f"(?:{p})" for p in patterns))
    skip = re.compile("|".join(f"(?:{p})" for p in ignore)) if ignore else None
    count, first_no, first = 0, 0, ""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                if found.search(line) and not (skip is not None and skip.search(line)):
                    count += 1
                    if not first_no:
                        first_no, first = number, line.strip()
    except FileNotFoundError:
        return 0, 0, ""
    return count, first_no, first


@dataclass
class CommandResult:
    """What a custom command did (the engine's supervised run, or a plain one)."""

    code: int | None
    seconds: float
    stopped: str | None = None
    changed: list[str] = field(default_factory=list)  # work-tree paths the command changed

    def describe(self) -> str:
        from .. import proc

        if self.stopped == "time limit":
            return f"time limit reached; stopped ({proc.describe_exit(self.code)})"
        return self.stopped or proc.describe_exit(self.code)


def run_plain(command: str, *, cwd: Path, env: dict[str, str], log: Path, timeout: float) -> CommandResult:
    """Run ``command`` as a process group (``pytest_spml.proc``) with a time limit; used outside the engine."""
    from .. import proc

    started = time.monotonic()
    child = proc.spawn(command, cwd=cwd, env=env, log=log)
    code = proc.wait(child, timeout)
    if code is None:
        return CommandResult(proc.terminate(child, 10.0), time.monotonic() - started, "time limit")
    if proc.group_alive(child.pid):
        proc.terminate(child, 1.0)
    return CommandResult(code, time.monotonic() - started)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


# ------------------------------------------------------------------------------------------------ the judge

class CriteriaJudge:
    """ml-iteration's judge: commit, accept with a note, or roll back, from the review against every criterion.

    ``run_command`` runs a custom criterion's command (``spml-loop iterate``
    gives the engine's supervised runner, so a stop request interrupts it and
    a changed work tree is noticed); ``rows`` is the engine's history, which
    :meth:`finished` reads.
    """

    name = "criteria"

    def __init__(self, criteria: Criteria, root: Path, paths: LoopPaths, direction: str, *, keep_going: bool = False,
                 run_command: Callable[..., CommandResult] | None = None):
        self.criteria = criteria
        self.root, self.paths, self.direction = root, paths, direction
        self.keep_going = keep_going
        self.run_command = run_command
        self.rows: list[RoundRow] = []

    # -- the verdict
    def judge(self, outcome: Outcome, state: LoopState) -> Verdict:
        started = state.current.started_at if state.current is not None else 0.0
        results = self.review(outcome, started)
        failed_required = [r for r in results if r.required and r.status in ("fail", "error")]
        failed_advisory = [r for r in results if not r.required and r.status in ("fail", "error")]
        vetoed = [r for r in results if r.veto]
        passed = sum(r.status == "pass" for r in results)
        met = outcome.ok and passed == len(results)
        record = {"status": "skip" if not outcome.ok else "fail" if failed_required else "pass",
                  "message": f"{passed}/{len(results)} criteria pass", "met": met,
                  "results": [r.to_dict() for r in results]}
        if state.current is not None:
            # kept in the round's row (results.jsonl: steps.criteria), for reports and the next prompt
            state.current.steps["criteria"] = record
        shown = "; ".join(f"{r.id}: {r.message}" for r in (failed_required or failed_advisory)[:3])
        insight = f"{passed}/{len(results)} criteria pass" + (
            f"; failing: {', '.join(r.id for r in failed_required + failed_advisory)}"
            if failed_required or failed_advisory else "")
        if not outcome.ok:  # nothing to review; only the watchdog's findings count against stability
            why = outcome.reason or f"{outcome.failed_step} failed"
            found = [r for r in results if r.status == "fail"]
            return Verdict("rollback", f"{found[0].id} failed: {found[0].message}" if found else why,
                           insight=f"failing: {', '.join(r.id for r in found)}" if found else "")
        if vetoed:
            return Verdict("rollback", f"{vetoed[0].id}: {vetoed[0].message}", insight=insight)
        if failed_required:
            return Verdict("rollback", f"required criteria failed: {shown}", insight=insight)
        if failed_advisory:
            # kept, but not an improvement: the engine writes the reason into the row's note and the best stays
            return Verdict("accept", f"accepted with a note: advisory criteria failed: {shown}", insight=insight)
        # the best (the protocol's metric) moves only when it gets strictly better; a commit that trades some of
        # it for other criteria is still a commit
        improved = outcome.metric is not None and is_better(outcome.metric, state.best, self.direction,
                                                            state.effective_min_delta)
        return Verdict("commit", f"all {len(results)} criteria pass", improved=improved, insight=insight)

    def finished(self, state: LoopState) -> str | None:
        if self.keep_going:
            return None
        met = met_round(self.rows)
        if met is not None and met == last_round(self.rows):
            return f"all criteria met by round {met}"
        return None

    # -- the review
    def review(self, outcome: Outcome, started: float) -> list[CriterionResult]:
        if not outcome.ok:
            return [self._not_evaluated(c, outcome) for c in self.criteria.items]
        from .engine import _Interrupted as interrupted

        folder = self.paths.round_dir(outcome.round)
        ctx = _Round(outcome, folder, started)
        order = ("metrics", "observability", "stability", "custom", "performance")  # custom may write the L1 report
        results: dict[str, CriterionResult] = {}
        for kind in order:
            for criterion in self.criteria.items:
                if criterion.kind == kind:
                    try:
                        results[criterion.id] = getattr(self, f"_{kind}")(criterion, ctx)
                    except interrupted:
                        raise  # a stop request during a custom command: the engine rolls the round back
                    except Exception as exc:  # noqa: BLE001 - a review that breaks fails its criterion, not the loop
                        results[criterion.id] = self._result(
                            criterion, "error", f"could not be evaluated ({type(exc).__name__}: {exc})")
        return [results[c.id] for c in self.criteria.items]

    @staticmethod
    def _result(c: Criterion, status: str, message: str, value: float | None = None) -> CriterionResult:
        return CriterionResult(c.id, status, message, c.required, value)

    def _not_evaluated(self, c: Criterion, outcome: Outcome) -> CriterionResult:
        watchdog = outcome.evidence.get("watchdog") if isinstance(outcome.evidence, dict) else None
        if c.id == "stability/nan_inf" and outcome.failed_step == "train" and isinstance(watchdog, dict) \
                and "nan_inf" in (watchdog.get("anomalies") or []):
            return self._result(c, "fail", f"the watchdog stopped training: {outcome.reason}")
        if c.id == "stability/detectors" and outcome.failed_step == "train" and isinstance(watchdog, dict) \
                and set(watchdog.get("anomalies") or []) & set(c.detectors):
            return self._result(c, "fail", f"the watchdog stopped training: {outcome.reason}")
        return self._result(c, "skip", f"not evaluated: {outcome.reason or f'{outcome.failed_step} failed'}")

    def _check(self, c: Criterion, value: float | None, where: str) -> CriterionResult:
        assert c.check is not None
        label = c.key or c.name
        if value is None:
            return self._result(c, "fail", f"no {label} in {where}")
        shown = f"{label} = {value:.6g}"
        if c.check.passes(value):
            return self._result(c, "pass", f"{shown} ({c.check.text})", value)
        return self._result(c, "fail", f"{shown}, needs {c.check.text}", value)

    def _metrics(self, c: Criterion, ctx: "_Round") -> CriterionResult:
        metrics = ctx.outcome.metrics
        if c.key not in metrics:
            shown = ", ".join(sorted(metrics)) or "no numbers"
            return self._result(c, "fail", f"the eval reported no '{c.key}' for this round (it has: {shown})")
        return self._check(c, metrics[c.key], "the eval's result")

    def _performance(self, c: Criterion, ctx: "_Round") -> CriterionResult:
        if c.source == "eval":
            return self._metrics(c, ctx)
        if c.source == "l1":
            return self._from_l1(c, ctx)
        log = self._step_log(c, ctx)
        if isinstance(log, CriterionResult):
            return log
        timed = {c.key: 1e-3 if c.key.endswith("_ms") else 1.0} if c.key else STEP_TIME_KEYS
        if c.name == "first_step_time":
            scan = _scan_log(log, step_time_keys=timed, label=self._rel(log))
            if scan.first_step_time is None:
                return self._result(c, "fail", f"no step record of {self._rel(log)} has a step time "
                                               f"({', '.join(timed)}); log one, or name it with key:")
            seconds, key, line = scan.first_step_time
            result = self._check(c, seconds, self._rel(log))
            result.message += f" (the first step's {key}, {line})"
            return result
        scales = timed if c.name == "step_time" else {c.key: 1.0}
        scan = _scan_log(log, collect=tuple(scales), label=self._rel(log))
        for name, scale in scales.items():
            if scan.values.get(name):
                result = self._check(c, _median(scan.values[name]) * scale, self._rel(log))
                result.message += f" (median of {len(scan.values[name])} values of {name})"
                return result
        return self._result(c, "fail", f"no finite {' or '.join(scales)} value in {self._rel(log)}")

    def _from_l1(self, c: Criterion, ctx: "_Round") -> CriterionResult:
        path = self.root / self.criteria.l1_report
        if not path.is_file():
            return self._result(c, "fail", f"no L1 report at {self.criteria.l1_report}: run `pytest --spml-l1` in "
                                           "the training command or a custom criterion")
        if not _written_during(path, ctx.started):
            return self._result(c, "fail", f"{self.criteria.l1_report} was not written during this round (stale); "
                                           "run `pytest --spml-l1` in the training command or a custom criterion")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return self._result(c, "error", f"{self.criteria.l1_report} is not JSON ({exc})")
        measured = doc.get("measurements") if isinstance(doc, dict) else None
        measured = measured if isinstance(measured, dict) else {}
        if c.name == "first_step_time" and not c.key:
            times = doc.get("step_times_s") if isinstance(doc, dict) else None
            value = times[0] if isinstance(times, list) and times else None
        else:
            value = measured.get(c.key or "step_time_median_s")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            device = doc.get("device") if isinstance(doc.get("device"), dict) else {}
            on = f" (measured on {device.get('name') or device.get('type')})" if device else ""
            return self._result(c, "fail", f"the L1 report has no {c.key}{on}")
        return self._check(c, float(value), "the L1 report")

    def _step_log(self, c: Criterion, ctx: "_Round") -> Path | CriterionResult:
        if c.log is None:
            path = ctx.folder / "metrics.jsonl"
            if not path.is_file():
                return self._result(c, "fail", f"training wrote no step log ({self._rel(path)}, $SPML_METRICS_LOG)")
            return path
        path = self.root / c.log
        if not path.is_file():
            return self._result(c, "fail", f"no step log at {c.log}")
        if not _written_during(path, ctx.started):
            return self._result(c, "fail", f"{c.log} was not written during this round; only the round's own logs "
                                           "count")
        return path

    def _observability(self, c: Criterion, ctx: "_Round") -> CriterionResult:
        log = self._step_log(c, ctx)
        if isinstance(log, CriterionResult):
            return log
        scan = _scan_log(log, c.keys, label=self._rel(log))
        if not scan.step_records:
            return self._result(c, "fail", f"{self._rel(log)} has no step records ({scan.records} records)")
        if c.every:
            missing = [k for k in c.keys if k in scan.missing]
            if missing:
                first = missing[0]
                return self._result(c, "fail", f"{', '.join(missing)} missing from step records (first: "
                                               f"{first} at {scan.missing[first]})")
        else:
            missing = [k for k in c.keys if k not in scan.present]
            if missing:
                return self._result(c, "fail", f"{', '.join(missing)} never logged in {self._rel(log)}")
        scope = "every one of" if c.every else "among"
        return self._result(c, "pass", f"{', '.join(c.keys)} in {scope} {scan.step_records} step records")

    def _stability(self, c: Criterion, ctx: "_Round") -> CriterionResult:
        output = ctx.folder / "train.log"
        if c.name == "warnings":
            count, number, line = _scan_text(output, c.patterns, c.ignore)
            if count:
                return self._result(c, "fail", f"{count} autograd warning/anomaly line(s) in the training output; "
                                               f"first {self._rel(output)}:{number}: {line[:160]}", float(count))
            return self._result(c, "pass", "no autograd warning or anomaly line in the training output", 0.0)
        log = self._step_log(c, ctx)
        logs = [log] if isinstance(log, Path) else []
        if c.name == "nan_inf":
            for path in logs:
                scan = _scan_log(path, label=self._rel(path))
                if scan.nonfinite is not None:
                    key, line, step = scan.nonfinite
                    return self._result(c, "fail", f"{key} is not finite at step {step} ({line})")
        anomalies = self._detect(logs, output)
        kinds = ("nan_inf",) if c.name == "nan_inf" else c.detectors
        found = [a for a in anomalies if a.kind in kinds and (a.kind == "nan_inf" or
                                                               (a.severity == "severe" and not a.recovered))]
        if found:
            return self._result(c, "fail", "; ".join(f"{a.kind}: {a.detail}" for a in found[:3]))
        if c.name == "nan_inf" and isinstance(log, CriterionResult):
            # no step log: the output alone cannot vouch for the numbers, so the criterion is skipped, not passed
            return self._result(c, "skip", f"no step log ({log.message}): checked the training output only "
                                           "(no NaN/Inf there); write step records to $SPML_METRICS_LOG")
        read = " and ".join([self._rel(p) for p in logs] + ([self._rel(output)] if output.is_file() else [])) \
            or "no logs"
        return self._result(c, "pass", f"no {', '.join(kinds)} finding in {read}")

    @staticmethod
    def _detect(logs: list[Path], output: Path) -> list[Any]:
        from ..watch.check import SourceSpec, TrainingCheck

        specs = [SourceSpec("log", str(p), fmt="jsonl") for p in logs]
        if output.is_file():
            specs.append(SourceSpec("log", str(output), fmt="auto"))
        if not specs:
            return []
        return TrainingCheck(specs).poll().anomalies

    def _custom(self, c: Criterion, ctx: "_Round") -> CriterionResult:
        from .rounds import child_env

        eval_metrics = ctx.folder / "eval-metrics.json"
        if not eval_metrics.exists():
            atomic_write(eval_metrics, json.dumps(ctx.outcome.metrics, indent=1, sort_keys=True) + "\n")
        env = child_env({"SPML_ROUND": str(ctx.outcome.round), "SPML_ROUND_DIR": str(ctx.folder),
                         "SPML_METRICS_LOG": str(ctx.folder / "metrics.jsonl"),
                         "SPML_TRAIN_LOG": str(ctx.folder / "train.log"), "SPML_EVAL_METRICS": str(eval_metrics)})
        log = ctx.folder / f"custom-{c.name.replace('/', '_')}.log"
        runner = self.run_command or run_plain
        result = runner(c.command, cwd=self.root, env=env, log=log, timeout=c.timeout_s)
        if result.changed:
            shown = ", ".join(result.changed[:5]) + (" ..." if len(result.changed) > 5 else "")
            result = self._result(c, "error", f"`{c.command}` changed the work tree ({shown}); a review must not "
                                              "edit what it reviews")
            result.veto = True
            return result
        if result.code == 0 and not result.stopped:
            return self._result(c, "pass", f"`{c.command}` exit 0 in {result.seconds:.1f} s")
        tail = _last_line(log)
        return self._result(c, "fail", f"`{c.command}` {result.describe()}"
                            + (f"; last output: {tail}" if tail else ""))

    def _rel(self, path: Path) -> str:
        return self.paths.rel(path)


@dataclass
class _Round:
    outcome: Outcome
    folder: Path
    started: float


def row_criteria(row: RoundRow) -> dict[str, Any]:
    value = row.steps.get("criteria")
    return value if isinstance(value, dict) else {}


def last_round(rows: list[RoundRow]) -> int | None:
    rounds = [r.round for r in rows if r.kind == "round"]
    return rounds[-1] if rounds else None


def met_round(rows: list[RoundRow]) -> int | None:
    """The last round committed with every criterion passing, or None."""
    for row in reversed(rows):
        if row.kind == "round" and row.action == "commit" and row_criteria(row).get("met"):
            return row.round
    return None


# ------------------------------------------------------------------------------------------------ the prompt

def prompt_builder(criteria: Criteria) -> Callable[[Any, LoopState, list[RoundRow], int, int], str]:
    """The researcher's prompt of an ml-iteration round (the engine's ``prompt_builder`` option)."""

    def build(protocol: Any, state: LoopState, rows: list[RoundRow], round_n: int, last: int = 5) -> str:
        from .prompt import _protocol_body, round_rules

        lines = [
            f"# ml-iteration round {round_n} of {state.max_rounds}",
            "",
            "You are the Researcher of an ml-iteration loop. Make ONE focused change that moves the code toward the "
            "review criteria below (start with the ones that failed last), then exit. The loop checks your change, "
            "trains, runs the fixed evaluation and reviews the round against every criterion: it commits the change "
            "when every required criterion passes, accepts it with a note when only advisory ones fail, and rolls "
            "it back when a required one fails.",
            "",
            "## Review criteria",
            "",
            *(f"- [{'required' if c.required else 'advisory'}] `{c.id}`: {c.describe()}"
              + (f" - {c.why}" if c.why else "") for c in criteria.items),
        ]
        previous = next((r for r in reversed(rows) if r.kind == "round"), None)
        if previous is not None and row_criteria(previous).get("results"):
            lines += ["", f"## Review of the last round ({previous.round}: {previous.verdict})", ""]
            for item in row_criteria(previous)["results"]:
                lines.append(f"- {str(item.get('status', '')).upper()} `{item.get('id')}`: {item.get('message')}")
        lines += [
            "",
            *round_rules(protocol, step_log=True),
            "## Experiences so far",
            "",
            summary_for_prompt(state, rows, last).rstrip(),
        ]
        body = _protocol_body(protocol)
        if body:
            lines += ["", "## Protocol notes", "", body]
        return "\n".join(lines) + "\n"

    return build

