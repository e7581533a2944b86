"""The training check as an engine: sources in, an incremental series, a verdict out.

``TrainingCheck`` owns the reading state of every source and the bounded
``RunSeries``; each ``poll()`` reads only what was added since the last one,
runs the detectors and decides. ``spml-loop check`` polls once (and can
persist the engine between invocations, so a re-check of a long log reads
only the new lines); ``spml-loop watch`` keeps one engine for the whole run.

Sources and their priority: when a WandB run is configured it is read first
and the logs are the fallback (``source_status`` says ``wandb_ok``,
``log_fallback`` or ``unreachable``); without WandB every log and TensorBoard
directory is read (``ok`` or ``unreachable``). An unreachable source gives
WAIT, never STOP.

Standard library only at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import pickle
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..fsutil import atomic_write
from .decide import Verdict, decide
from .detectors import RunSeries, WatchThresholds, detect_all
from .model import Anomaly, Baseline, Record

__all__ = ["SourceSpec", "CheckOutcome", "TrainingCheck", "load_baseline", "load_thresholds"]

SOURCE_KINDS = ("log", "tensorboard", "wandb")
LOG_FORMATS = ("auto", "jsonl", "nanogpt", "hf", "kv", "regex")
_STATE_VERSION = 1


@dataclass(frozen=True)
class SourceSpec:
    """One metrics source: a log file, a TensorBoard directory or a WandB run (online path or offline dir)."""

    kind: str  # one of SOURCE_KINDS
    target: str
    fmt: str = "auto"  # logs only: one of LOG_FORMATS
    regex: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source kind {self.kind!r} is not one of {SOURCE_KINDS}")
        if self.fmt not in LOG_FORMATS:
            raise ValueError(f"log format {self.fmt!r} is not one of {LOG_FORMATS}")
        if self.fmt == "regex" and not self.regex:
            raise InputError("--log-format regex needs --regex PATTERN (named groups step, loss, ...)")
        if self.regex is not None and self.fmt != "regex":
            raise InputError(f"--regex is used only with --log-format regex (not {self.fmt}); the format is "
                             "implied when --log-format is left out")
        if self.regex is not None:
            try:
                compiled = re.compile(self.regex)
            except re.error as exc:
                raise InputError(f"--regex {self.regex!r} is not a valid regular expression ({exc})") from None
            if not compiled.groupindex:
                raise InputError(f"--regex {self.regex!r} has no named group: name what it captures, e.g. "
                                 r"'step (?P<step>\d+) loss (?P<loss>\S+)'")


@dataclass
class CheckOutcome:
    """The result of one poll: what was read, what was found, what to do."""

    verdict: Verdict
    anomalies: list[Anomaly]
    metrics: dict[str, float]  # the last value of every known metric
    sources: list[str]  # one description per source read
    source_status: str  # ok | wandb_ok | log_fallback | unreachable
    new_records: int
    step: int | None
    baseline: Baseline
    checked_at: float
    notes: list[str] = field(default_factory=list)
    series: RunSeries | None = field(default=None, repr=False, compare=False)  # for plots and summaries

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON-ready document of ``spml-loop check --format json``."""
        return {
            "decision": self.verdict.decision, "status": self.verdict.status, "reason": self.verdict.reason,
            "source": "; ".join(self.sources), "source_status": self.source_status, "step": self.step,
            "expected_total_steps": self.baseline.expected_total_steps, "baseline": self.baseline.source,
            "anomalies": [a.to_dict() for a in self.anomalies], "metrics": self.metrics,
            "evidence": [a.evidence for a in self.anomalies][:20], "new_records": self.new_records,
            "next_check": f"in {self.verdict.next_check_minutes} minutes",
            "next_check_minutes": self.verdict.next_check_minutes,
            "checked_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.checked_at)),
        }

    def render(self) -> str:
        """The training-check block of the terminal report."""
        total = self.baseline.expected_total_steps
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items()))[:300]
        lines = [
            f"Training check  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.checked_at))}",
            f"  source:     {'; '.join(self.sources)} [{self.source_status}]",
            f"  run:        step {self.step if self.step is not None else 'n/a'}" + (f" of {total}" if total else ""),
            f"  baseline:   {self.baseline.source}",
            f"  recent:     {shown or 'no metrics yet'}",
            "  anomalies:  " + ("none" if not self.anomalies else ""),
            *_anomaly_lines(self.anomalies),
            f"  decision:   {self.verdict.decision} ({self.verdict.status})",
            f"  reason:     {self.verdict.reason}",
            f"  next check: in {self.verdict.next_check_minutes} minutes",
            *(f"  note:       {n}" for n in self.notes),
        ]
        return "\n".join(lines) + "\n"


def _anomaly_lines(anomalies: Sequence[Anomaly]) -> list[str]:
    lines = []
    for a in anomalies:
        lines.append(f"    - [{a.severity}{', recovered' if a.recovered else ''}] {a.kind} at step {a.step}: {a.detail}")
        if a.evidence.get("line"):  # the log line to open
            lines.append(f"        at {a.evidence['line']}")
    return lines


class _Source:
    """One source with its reading state; ``read()`` feeds only new records to ``sink``."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.state: dict[str, Any] = {}
        self.records = 0
        self.status = "unread"  # ok | missing | unreachable
        self.detail = ""
        self.after: float | None = None  # TensorBoard: only records logged after this time (skip_existing)

    def read(self, sink: Any) -> int:
        from . import sources

        spec = self.spec
        count = 0
        if spec.kind == "wandb":
            from . import wandb_source

            fed = [0]

            def stream(records: list[Record]) -> None:
                fed[0] += sink(records)

            # a check waits at most ~15 s for a rate-limited API, then falls back to the logs (never STOP)
            result = wandb_source.read_wandb(spec.target, self.state, sink=stream, retries=3, max_delay=8.0)
            self.state = result.state
            self.status = "ok" if result.status == "wandb_ok" else "unreachable"
            self.detail = result.detail
            count = fed[0] + sink(result.records)
        elif spec.kind == "tensorboard":
            try:
                found, self.state = sources.read_tensorboard(Path(spec.target), self.state)
            except ImportError as exc:
                raise InputError(str(exc), spec.target) from None
            self.status = "missing" if self.state.get("note") == "missing" else "ok"
            count = sink(self._after(found))
        else:
            path = Path(spec.target)
            if not path.exists():
                # a log that does not exist yet is "no data", not bad input: the run may not have started
                self.status, self.detail = "missing", "not found"
                return 0
            if path.is_dir():
                raise InputError("is a directory: pass a log file with --log, or a TensorBoard directory with "
                                 "--tensorboard", path)
            fmt = self.state.get("spml_format") or (sources.detect_format(path) if spec.fmt == "auto" else spec.fmt)
            self.state["spml_format"] = fmt
            if fmt == "jsonl":  # chunks kept as columns: the series ingests them without a Record per line
                for chunk in sources.iter_jsonl_chunks(path, self.state):
                    count += sink(chunk)
            elif fmt == "tensorboard":
                found, self.state = sources.read_tensorboard(path, self.state)
                self.state["spml_format"] = fmt
                count = sink(self._after(found))
            else:
                preset = "auto" if fmt in ("text", "regex") else fmt
                regex = spec.regex if fmt == "regex" else None
                for chunk in sources.iter_text_log(path, preset, regex, self.state):
                    count += sink(chunk)
            self.status, self.detail = "ok", fmt
        self.records += count
        return count

    def _after(self, records: list[Record]) -> list[Record]:
        if self.after is None:
            return records
        return [r for r in records if r.time is not None and r.time >= self.after]

    def skip_existing(self, at: float) -> None:
        """Judge only what is logged from now on (a run the watchdog starts now): logs are read from their
        current end, TensorBoard records only from wall time ``at``. WandB runs are left as they are."""
        from . import sources

        spec = self.spec
        if spec.kind == "tensorboard":
            self.after = at
            return
        if spec.kind != "log":
            return
        path = Path(spec.target)
        if not path.is_file():
            return  # missing: everything in it will be new
        if path.name.startswith("events.out.tfevents."):
            self.after = at
            return
        try:
            self.state = sources.start_at_end(path, self.state)
        except OSError as exc:
            raise InputError(f"cannot read the log ({exc.strerror or exc})", path) from None

    def unmatched_note(self) -> str | None:
        """A text log with lines of which none matched a format: say so, with what to do."""
        if self.spec.kind != "log" or self.status != "ok" or self.records or self.detail not in ("text", "regex"):
            return None
        if not self.state.get("lineno"):
            return None
        if self.detail == "regex":
            return (f"{self.spec.target}: no line matched --regex {self.spec.regex!r} "
                    f"({self.state['lineno']} lines read); check the pattern and its named groups")
        return (f"{self.spec.target}: no line matched any known log format (JSONL, nanoGPT, Hugging Face, "
                f"key=value; {self.state['lineno']} lines read); name the format with --log-format, or pass "
                "--regex with named groups (step, loss, ...)")

    def describe(self) -> str:
        what = {"missing": "not found", "unreachable": f"unreachable: {self.detail}"}.get(self.status)
        if what is None:
            what = f"{self.detail or self.spec.kind}, {self.records} records"
            if self.unmatched_note() is not None:
                what += ", no line matched a format"
        return f"{self.spec.target} ({what})"

    def saved_state(self) -> dict[str, Any]:
        # TensorBoard accumulators are live objects: dropped, the reader reloads and still skips seen steps
        return {k: v for k, v in self.state.items() if not k.startswith("_")}


class TrainingCheck:
    """An incremental training check over one or more sources."""

    def __init__(self, sources: Sequence[SourceSpec], baseline: Baseline | None = None,
                 thresholds: WatchThresholds | None = None, *, started_at: float | None = None) -> None:
        if not sources:
            raise InputError("no metrics source: pass --log PATH (repeatable), --tensorboard DIR or --wandb RUN")
        self.specs = tuple(sources)
        self.baseline = baseline or Baseline(source="run's own early steps")
        self.thresholds = thresholds or WatchThresholds()
        self.series = RunSeries(started_at=started_at)
        self._sources = [_Source(spec) for spec in self.specs]
        self.recent: deque[Record] = deque(maxlen=50)
        self.checks = 0
        self.healthy_checks = 0  # consecutive healthy checks: the adaptive interval grows with them
        self.last_outcome: CheckOutcome | None = None
        self._fallback_floor: int | None = None  # fallback logs feed only steps after what WandB gave
        self.segments = 1  # a step counter back at (or below) the run's first step starts a new segment
        self.segment_notes: deque[str] = deque(maxlen=5)
        self._marks: dict[int, tuple[int | None, int | None]] = {}  # per source: (first, last) step this segment
        self.process_alive = False  # the watchdog knows the run's process lives (it started it, or --pid)

    # reading -----------------------------------------------------------------------------------------------------
    def _sink(self, key: int, floor: int | None = None):
        def feed(records: list[Record]) -> int:
            if floor is not None:
                records = [r for r in records if r.step is None or r.step > floor]
            if not records:
                return 0
            cut = self._segment_start(records, key)
            if cut is None:
                self._add(records)
                return len(records)
            rows = list(records)  # rare: a new run appended to the same log; split it where the steps restart
            while cut is not None:
                self._add(rows[:cut])
                self._new_segment(rows[cut].step, key)
                rows = rows[cut:]
                cut = self._segment_start(rows, key)
            self._add(rows)
            return len(records)
        return feed

    def _add(self, records: Any) -> None:
        if len(records):
            self.series.add(records, received_at=time.time())
            self.recent.extend(records[-self.recent.maxlen:])  # only what the deque keeps

    def _segment_start(self, records: Any, key: int) -> int | None:
        """The index of the first record whose step goes back to (or below) the first step this source gave in
        the current segment, or None; the source's (first, last) steps are updated up to there.

        A rewind to a later step is a restart from a checkpoint (the same run: ``RunSeries`` handles it); a step
        counter back at the start is another run appended to the same log, judged on its own.
        """
        steps = getattr(records, "steps", None)
        if steps is None or getattr(records, "_records", None) is not None:
            steps = [r.step for r in records]
        first, last = self._marks.get(key, (None, None))
        cut = None
        for i, step in enumerate(steps):
            if step is None:
                if last is not None:
                    last += 1
                continue
            if first is None:
                first = step
            elif last is not None and step < last and step <= first:
                cut = i
                break
            last = step
        self._marks[key] = (first, last)
        return cut

    def _new_segment(self, step: int | None, key: int) -> None:
        old = self.series
        target = self._sources[key].spec.target if 0 <= key < len(self._sources) else "a source"
        self.segment_notes.append(f"{target}: the step went back to {step} after {self._marks[key][1]}: another run "
                                  f"in the same log; only the records from there are judged (segment "
                                  f"{self.segments + 1})")
        self.segments += 1
        self.series = RunSeries(started_at=old.started_at)
        self.recent.clear()
        self._marks = {}

    def read(self) -> tuple[int, str]:
        """Feed what is new in every source into the series: (records added, source status)."""
        index = {id(s): n for n, s in enumerate(self._sources)}
        primary = [s for s in self._sources if s.spec.kind == "wandb"]
        others = [s for s in self._sources if s.spec.kind != "wandb"]
        if primary:
            new = sum(s.read(self._sink(index[id(s)])) for s in primary)
            if all(s.status == "ok" for s in primary):
                self._fallback_floor = self.series.last_step
                return new, "wandb_ok"
            if not others:
                return new, "unreachable"
            floor = self._fallback_floor if self._fallback_floor is not None else None
            new += sum(s.read(self._sink(index[id(s)], floor)) for s in others)
            return new, "log_fallback" if any(s.status == "ok" for s in others) else "unreachable"
        new = sum(s.read(self._sink(index[id(s)])) for s in others)
        return new, "ok" if any(s.status == "ok" for s in others) else "unreachable"

    def skip_existing(self, at: float | None = None) -> None:
        """A run launched now: judge it only on what it writes from now on, not on an earlier run's records."""
        at = time.time() if at is None else at
        for source in self._sources:
            source.skip_existing(at)

    def validate(self) -> None:
        """Refuse what a read would refuse, before anything is launched: a folder given as a log, a TensorBoard
        source without the tensorboard package."""
        import importlib.util

        for spec in self.specs:
            if spec.kind == "log" and Path(spec.target).is_dir():
                raise InputError("is a directory: pass a log file with --log, or a TensorBoard directory with "
                                 "--tensorboard", spec.target)
            tensorboard = spec.kind == "tensorboard" or (spec.kind == "log" and Path(spec.target).name.startswith(
                "events.out.tfevents."))
            if tensorboard and importlib.util.find_spec("tensorboard") is None:
                raise InputError("reading TensorBoard event files needs the tensorboard package: "
                                 "pip install 'pytest-spml[tensorboard]'", spec.target)

    def notify_restart(self, at: float | None = None) -> None:
        """The run was restarted (from a checkpoint): staleness counts from now, not from the last record."""
        self.series.started_at = time.time() if at is None else at
        self.series.last_received = None

    # deciding ----------------------------------------------------------------------------------------------------
    def poll(self, now: float | None = None) -> CheckOutcome:
        """Read what is new in every source, run the detectors, decide."""
        return self.judge(*self.read(), now)

    def judge(self, new: int, status: str, now: float | None = None) -> CheckOutcome:
        """Run the detectors on the series as it is and decide (after ``read`` gave ``new`` records, ``status``)."""
        now = time.time() if now is None else now
        anomalies = detect_all(self.series, self.baseline, self.thresholds, now)
        reachable = status != "unreachable" and self.series.records > 0
        if not reachable and self.process_alive and self.series.records == 0 and self.series.started_at is not None \
                and all(s.status != "unreachable" for s in self._sources) \
                and any(a.kind == "stale" and a.severity == "severe" for a in anomalies):
            # the process lives but has logged nothing since it started, past the start-up grace: a hang to act
            # on, not a source to wait for (an unreachable WandB API still only waits)
            reachable = True
        verdict = decide(self.series, anomalies, self.baseline, now, source_ok=reachable,
                         healthy_checks=self.healthy_checks, thresholds=self.thresholds)
        self.checks += 1
        self.healthy_checks = self.healthy_checks + 1 if verdict.healthy else 0
        notes = [f"{s.spec.target}: {s.state['note']}" for s in self._sources
                 if isinstance(s.state.get("note"), str) and s.state["note"]]
        notes += [n for n in (s.unmatched_note() for s in self._sources) if n]
        notes += list(self.segment_notes)
        outcome = CheckOutcome(verdict=verdict, anomalies=list(anomalies), metrics=self._last_values(),
                               sources=[s.describe() for s in self._sources], source_status=status,
                               new_records=new, step=self.series.last_step, baseline=self.baseline,
                               checked_at=now, notes=notes, series=self.series)
        self.last_outcome = outcome
        return outcome

    def _last_values(self) -> dict[str, float]:
        last: dict[str, float] = {}
        for record in self.recent:
            last.update(record.values)
        return {k: v for k, v in last.items() if isinstance(v, float)}

    # persistence -------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Identifies what this engine reads and how it judges: a saved state is reused only for the same."""
        doc = {"sources": [vars(s) for s in self.specs], "baseline": vars(self.baseline),
               "thresholds": repr(self.thresholds), "version": _STATE_VERSION}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        """Keep the reading positions and the bounded series for the next invocation (atomically)."""
        doc = {"version": _STATE_VERSION, "fingerprint": self.fingerprint(), "series": self.series,
               "recent": list(self.recent), "checks": self.checks, "healthy_checks": self.healthy_checks,
               "sources": [s.saved_state() for s in self._sources],
               "records": [s.records for s in self._sources], "fallback_floor": self._fallback_floor,
               "segments": self.segments, "marks": dict(self._marks), "segment_notes": list(self.segment_notes)}
        atomic_write(path, pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL))

    def restore(self, path: Path) -> str | None:
        """Continue from a state saved by ``save``; returns why it was not used (None when it was)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return "no saved state"
        except OSError as exc:
            return f"saved state unreadable ({exc.strerror})"
        try:
            doc = _StateUnpickler(io.BytesIO(data)).load()
        except Exception as exc:  # noqa: BLE001 - any damage means "start over", never a crash
            return f"saved state unusable ({type(exc).__name__}); reading from the start"
        if not isinstance(doc, dict) or doc.get("version") != _STATE_VERSION \
                or doc.get("fingerprint") != self.fingerprint():
            return "saved state belongs to other sources or settings; reading from the start"
        self.series = doc["series"]
        self.recent = deque(doc["recent"], maxlen=50)
        self.checks, self.healthy_checks = int(doc["checks"]), int(doc["healthy_checks"])
        self._fallback_floor = doc["fallback_floor"]
        self.segments = int(doc.get("segments", 1))
        self._marks = dict(doc.get("marks") or {})
        self.segment_notes = deque(doc.get("segment_notes") or (), maxlen=5)
        for source, state, records in zip(self._sources, doc["sources"], doc["records"]):
            source.state, source.records = dict(state), int(records)
        return None


class _StateUnpickler(pickle.Unpickler):
    """Loads only the watchdog's own classes: a state file is data, never code."""

    _ALLOWED = {
        ("collections", "deque"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
        ("pytest_spml.watch.detectors", "RunSeries"), ("pytest_spml.watch.detectors", "Track"),
        ("pytest_spml.watch.detectors", "_Summary"), ("pytest_spml.watch.model", "Record"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a watchdog state file")
        return super().find_class(module, name)


def state_path(folder: Path, check: TrainingCheck) -> Path:
    """Where ``check``'s state lives under ``folder``: one file per set of sources and settings."""
    return folder / f"check-state-{check.fingerprint()}.pickle"


# ---------------------------------------------------------------------------------------------------------------
# the context file: baseline and watchdog settings


def _yaml_block(text: str, heading: str) -> tuple[str, int] | None:
    """The first ```yaml block under ``heading`` and the line it starts on (1-based), or None."""
    if heading not in text:
        return None
    after = text.split(heading, 1)[1]
    cut = after.find("\n## ")
    section = after if cut < 0 else after[:cut]
    if "```yaml" not in section:
        return None
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    start = text.index(heading) + len(heading) + section.index("```yaml") + len("```yaml")
    return block, text[:start].count("\n") + 2


def _read_context(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the experiment context ({exc.strerror})", path) from None
    except UnicodeDecodeError:
        raise InputError("the experiment context is not UTF-8 text", path) from None


def _load_yaml(block: str, path: Path, line: int, what: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(block)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"the {what} block is not valid YAML ({getattr(exc, 'problem', exc)})", path,
                         line + (mark.line if mark is not None else 0)) from None


def load_baseline(path: Path | None, total_steps: int | None = None) -> Baseline:
    """The L1 baseline block of ``experiment-context.md`` (written by ``spml handoff``), else the run's own start."""
    if path is None:
        return Baseline(expected_total_steps=total_steps, source="run's own early steps")
    text = _read_context(path)
    found = _yaml_block(text, "## L1 baseline")
    values: Any = {}
    if found is not None:
        values = _load_yaml(found[0], path, found[1], "L1 baseline") or {}
        if not isinstance(values, dict):
            raise InputError("the L1 baseline block must be `key: value` lines", path, found[1])

    def number(key: str) -> float | None:
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    expected = values.get("expected_total_steps")
    expected = total_steps or (expected if isinstance(expected, int) and not isinstance(expected, bool) else None)
    return Baseline(step_time_s=number("step_time_s"), samples_per_s=number("samples_per_s"),
                    tokens_per_s=number("tokens_per_s"), mfu=number("mfu"), grad_norm=number("grad_norm"),
                    loss_start=number("loss_start"), expected_total_steps=expected,
                    source=f"L1 baseline in {path}" if values else "run's own early steps")


def load_thresholds(path: Path | None) -> WatchThresholds:
    """SPML's watchdog defaults, overridden by the context's "Watchdog settings" block (written by handoff)."""
    if path is None or not path.is_file():
        return WatchThresholds()
    found = _yaml_block(_read_context(path), "## Watchdog settings")
    if found is None:
        return WatchThresholds()
    settings = _load_yaml(found[0], path, found[1], "Watchdog settings") or {}
    if not isinstance(settings, dict):
        raise InputError("the Watchdog settings block must be `key: value` lines", path, found[1])
    line = found[1]
    valid = {f.name for f in dataclasses.fields(WatchThresholds)} | {"mfu_drop"}
    for key in settings:
        if key not in valid:  # a misspelt setting would be ignored silently: name its line
            at = next((n for n, text in enumerate(found[0].split("\n")[1:]) if text.strip().startswith(f"{key}:")), 0)
            line = found[1] + at
            break
    try:
        return WatchThresholds.from_mapping(settings, strict=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"the Watchdog settings block is invalid ({exc})", path, line) from None
