"""The L1 report as a JSON file (read by `spml conclude` and `spml handoff`) and as a terminal table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write
from .runner import L1Report


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def write_report(report: L1Report, path: Path) -> None:
    doc = _jsonable(report.to_dict())
    doc["git"] = _git_state(path.parent)
    atomic_write(path, json.dumps(doc, indent=2) + "\n")


def _git_state(where: Path) -> dict[str, Any]:
    import subprocess

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=where if where.exists() else Path.cwd(), capture_output=True,
                              text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or None, "branch": git("symbolic-ref", "--short", "-q", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _value(evidence: dict[str, Any]) -> str:
    for key in ("median_s", "samples_per_s", "mfu", "tca", "max", "second_half_mean", "max_relative_drift", "last"):
        value = evidence.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{key}={value:.4g}"
    return ""


def _threshold(evidence: dict[str, Any]) -> str:
    for key in ("threshold", "threshold_max", "threshold_cv", "spike_factor"):
        value = evidence.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{key}={value:g}"
    return ""


def summary_lines(report: L1Report) -> list[str]:
    """One line per check: status, id, value, threshold, message."""
    device = report.device
    lines = [f"pipeline {report.pipeline} on {device.get('name')} ({device.get('type')}); "
             f"{len(report.trace.step_times)} steps, stopped by {report.trace.stopped_by or 'n/a'}"]
    width = max(len(c.id) for c in report.checks.values()) if report.checks else 10
    for check in report.checks.values():
        status = check.status.value.upper()
        message = check.message if len(check.message) < 150 else check.message[:147] + "..."
        cells = [f"{status:<5}", f"{check.id:<{width}}", f"{_value(dict(check.evidence)):<22}",
                 f"{_threshold(dict(check.evidence)):<20}", message]
        lines.append("  ".join(cells))
    return lines
