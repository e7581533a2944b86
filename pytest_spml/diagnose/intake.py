"""Intake: the evidence about an incident, gathered in one place before anything is re-run.

The metric history comes through the watchdog's readers and detectors (the
incident is what ``spml-loop check`` would call it: the first severe NaN/Inf,
spike, divergence or gradient explosion), the config through a YAML/JSON reader
that keeps line numbers, the checkpoints from the folder's file names, and the
code facts from plain ``git``. Nothing here writes anywhere.
"""

from __future__ import annotations

import math
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import gitcmd
from ..errors import InputError

# Detector kinds that mark the start of an incident, most specific first.
INCIDENT_KINDS = ("nan_inf", "loss_spike", "divergence", "grad_explosion")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".safetensors")
WINDOW_BEFORE, WINDOW_AFTER = 20, 5  # logged records kept around the incident step for the report


# ------------------------------------------------------------------------------------------------ config


@dataclass
class Config:
    path: str
    values: dict[str, Any]
    lines: dict[str, int]


def load_config(path: str | Path, option: str) -> Config:
    """A ``key: value`` mapping from YAML or JSON (JSON is YAML), with the line of every key."""
    import yaml

    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{option}: no such file; give a YAML or JSON file of key: value lines", file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{option}: cannot read it ({getattr(exc, 'strerror', None) or exc})", file) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"{option}: not valid YAML/JSON ({getattr(exc, 'problem', None) or exc}); fix the syntax",
                         file, mark.line + 1 if mark else None) from None
    if node is None:
        return Config(str(file), {}, {})
    if not isinstance(node, yaml.MappingNode):
        raise InputError(f"{option}: must be a mapping of key: value lines (hyperparameters), not a "
                         f"{node.id}", file, node.start_mark.line + 1)
    lines: dict[str, int] = {}
    for key_node, _value in node.value:
        key = str(key_node.value)
        if key in lines:
            raise InputError(f"{option}: key {key!r} appears twice (first on line {lines[key]}); keep one", file,
                             key_node.start_mark.line + 1)
        if not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise InputError(f"{option}: key {key!r} is not a valid keyword-argument name", file,
                             key_node.start_mark.line + 1)
        lines[key] = key_node.start_mark.line + 1
    values = yaml.safe_load(text)
    return Config(str(file), dict(values), lines)


def config_diff(bad: Config, good: Config) -> list[str]:
    """Keys whose values differ between the two configs (present in one only included), in file order."""
    keys = list(bad.values) + [k for k in good.values if k not in bad.values]
    return [k for k in keys if bad.values.get(k, _MISSING) != good.values.get(k, _MISSING)]


_MISSING = object()


# ------------------------------------------------------------------------------------------------ metric log


@dataclass
class Incident:
    """What the log shows: the first incident anomaly (or the step the user named)."""

    kind: str | None
    step: int | None
    detail: str
    source: str
    records: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    window: list[dict[str, Any]] = field(default_factory=list)  # records around the incident step
    history: list[Any] = field(default_factory=list)  # Records, for the spike detector's reference

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "detail": self.detail, "source": self.source,
                "records": self.records, "anomalies": self.anomalies[:10], "window": self.window}


def _iter_log(path: Path) -> Any:
    from ..watch import sources

    try:
        fmt = sources.detect_format(path)
    except ValueError as exc:
        raise InputError(f"--log: {exc}", path) from None
    if fmt == "jsonl":
        yield from sources.iter_jsonl(path)
    elif fmt == "tensorboard":
        try:
            yield sources.read_tensorboard(path)[0]
        except ImportError as exc:
            raise InputError(f"--log: reading TensorBoard event files needs tensorboard ({exc})", path) from None
    else:
        yield sources.read_text_log(path)[0]


def read_incident(path: str | Path, incident_step: int | None) -> Incident:
    """Read a metrics log (JSONL, text or TensorBoard), find the incident and keep the records around it.

    The incident is the earliest severe anomaly of ``INCIDENT_KINDS``; without one, the earliest NaN/Inf or
    loss spike, even one the run recovered from.
    """
    from ..watch import detectors
    from ..watch.model import Baseline

    log = Path(path)
    if not log.exists():
        raise InputError("--log: no such file or folder; give the run's metrics log (JSONL, text or TensorBoard)",
                         log)
    series = detectors.RunSeries()
    total = 0
    last: int | None = None
    for chunk in _iter_log(log):
        series.add(chunk)
        total += len(chunk)
        steps = [r.step for r in chunk if r.step is not None]
        if steps:
            last = max(steps) if last is None else max(last, *steps)
    if total == 0:
        raise InputError("--log: no metric records in it (expected JSONL objects with step and loss, a nanoGPT / "
                         "Hugging Face / key=value text log, or TensorBoard events)", log)
    if incident_step is not None and last is not None and incident_step > last:
        raise InputError(f"--incident-step {incident_step}: past the log's last step ({last}); give a step the log "
                         "covers (or leave it out to use the log's first severe anomaly)", log)
    found = []
    for kind in INCIDENT_KINDS:
        found.extend(detectors.DETECTORS[kind](series, Baseline(source="the run's own early steps"), None, None))
    severe = sorted((a for a in found if a.severity == "severe" and a.step is not None), key=lambda a: a.step)
    if not severe:  # a spike the run recovered from is mild to the watchdog, but it is still an incident to explain
        severe = sorted((a for a in found if a.kind in ("nan_inf", "loss_spike") and a.step is not None),
                        key=lambda a: a.step)
    if incident_step is not None:
        kind = severe[0].kind if severe and severe[0].step == incident_step else None
        detail = f"step {incident_step} named with --incident-step"
        if severe:
            detail += f"; the log's first severe anomaly: {severe[0].kind} at step {severe[0].step}"
        step = incident_step
    elif severe:
        kind, step, detail = severe[0].kind, severe[0].step, severe[0].detail
    else:
        kind, step, detail = None, None, "the watchdog finds no severe anomaly in this log"
    incident = Incident(kind=kind, step=step, detail=detail, source=f"{log} ({total} records)", records=total,
                        anomalies=[a.to_dict() for a in found])
    if step is not None:  # second pass: the history before the incident and the window around it
        window: list[dict[str, Any]] = []
        for chunk in _iter_log(log):
            for record in chunk:
                if record.step is None:
                    continue
                if record.step < step:
                    incident.history.append(record)
                    if len(incident.history) > 4 * WINDOW_BEFORE:
                        del incident.history[:WINDOW_BEFORE]
                if step - WINDOW_BEFORE <= record.step <= step + WINDOW_AFTER:
                    window.append({"step": record.step, "line": record.line,
                                   **{k: (v if math.isfinite(v) else str(v)) for k, v in record.values.items()}})
        incident.window = window
    return incident


def history_before(incident: Incident | None, step: int) -> list[Any]:
    """Logged records before ``step``: the recent average a replayed spike is compared against."""
    if incident is None:
        return []
    return [r for r in incident.history if r.step is not None and r.step < step]


# ------------------------------------------------------------------------------------------------ checkpoints


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str


def find_checkpoints(folder: str | Path) -> list[Checkpoint]:
    """Checkpoint files in ``folder`` with the step as the last number of the name (``ckpt_400.pt``, ``step-400``)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError("--checkpoint-dir: not a folder; give the folder your run saves checkpoints into", root)
    found = []
    for entry in sorted(root.iterdir()):
        if not (entry.is_file() and entry.suffix in CHECKPOINT_SUFFIXES) and not entry.is_dir():
            continue
        numbers = re.findall(r"\d+", entry.stem if entry.is_file() else entry.name)
        if numbers:
            found.append(Checkpoint(int(numbers[-1]), str(entry.resolve())))
    if not found:
        raise InputError(f"--checkpoint-dir: no checkpoint named with its step ({', '.join(CHECKPOINT_SUFFIXES)} "
                         "files like ckpt_400.pt)", root)
    return sorted(found, key=lambda c: c.step)


def nearest(checkpoints: list[Checkpoint], step: int | None) -> tuple[list[Checkpoint], Checkpoint | None]:
    """(candidates before ``step``, nearest first; the nearest after it)."""
    if step is None:
        return sorted(checkpoints, key=lambda c: -c.step), None
    before = sorted((c for c in checkpoints if c.step <= step), key=lambda c: -c.step)
    after = next((c for c in checkpoints if c.step > step), None)
    return before, after


# ------------------------------------------------------------------------------------------------ environment


def versions() -> dict[str, Any]:
    """Library and hardware versions (torch is already loaded by the runs, or not installed)."""
    from .. import __version__

    facts: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                             "machine": platform.machine(), "pytest-spml": __version__}
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["cuda"] = torch.version.cuda
        facts["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        facts["cpu_threads"] = torch.get_num_threads()
    except ImportError:
        facts["torch"] = None
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        facts["numpy"] = getattr(numpy, "__version__", None)
    return facts


def resolve_rev(repo: Path, rev: str, option: str) -> str:
    sha = gitcmd.resolve_commit(repo, rev)
    if sha is None:
        raise InputError(f"{option} {rev}: not a commit in this repository; give a branch, tag or commit id", repo)
    return sha


def git_facts(repo: Path, good: str | None) -> dict[str, Any]:
    """HEAD, branch, uncommitted changes, and the diff since the last good commit."""
    facts: dict[str, Any] = {"repo": str(repo), "head": gitcmd.resolve_commit(repo, "HEAD"),
                             "branch": gitcmd.current_branch(repo)}
    status = gitcmd.run_git(repo, ["status", "--porcelain", "--untracked-files=normal"], check=False)
    facts["uncommitted"] = [line for line in status.decode(errors="replace").splitlines() if line][:50]
    if good and facts["head"]:
        facts["good"] = good
        facts["diff_stat"] = gitcmd.run_git(repo, ["diff", "--stat", good, "HEAD"], check=False).decode(
            errors="replace").strip()
        log = gitcmd.run_git(repo, ["log", "--format=%h %s", f"{good}..HEAD"], check=False)
        facts["commits_since_good"] = log.decode(errors="replace").splitlines()[:50]
    return facts
