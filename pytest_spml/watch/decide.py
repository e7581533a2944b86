"""The decision of one training check: CONTINUE / WAIT / STOP, a status, a reason and when to check next.

Standard library only: this module runs inside long-lived watch loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .detectors import RunSeries, WatchThresholds
from .model import DECISIONS, STATUSES, Anomaly, Baseline

__all__ = ["Verdict", "decide", "next_check_minutes"]


@dataclass(frozen=True)
class Verdict:
    decision: str  # one of DECISIONS
    status: str  # one of STATUSES
    reason: str
    next_check_minutes: int
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} is not one of {DECISIONS}")
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    @property
    def healthy(self) -> bool:
        """A healthy check (counts towards the next, longer interval): CONTINUE with status NORMAL."""
        return self.decision == "CONTINUE" and self.status == "NORMAL"

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "status": self.status, "reason": self.reason,
                "next_check_minutes": self.next_check_minutes, "evidence": self.evidence}


def _is_severe(anomaly: Anomaly) -> bool:
    return anomaly.severity == "severe" and not anomaly.recovered


def _describe(anomalies: Sequence[Anomaly], limit: int = 3) -> str:
    shown = "; ".join(f"{a.kind} at step {a.step}: {a.detail}" for a in anomalies[:limit])
    more = len(anomalies) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


def next_check_minutes(healthy_checks: int, *, near_end: bool = False, anomalous: bool = False,
                       thresholds: WatchThresholds | None = None) -> int:
    """The adaptive check interval: 10, 20, 30, then 60 minutes over consecutive healthy checks.

    ``healthy_checks`` counts the consecutive healthy checks before this one.
    Any anomaly, a WAIT, and the last ``near_end_fraction`` of the run bring it
    back to the first interval (10 minutes).
    """
    intervals = (thresholds or WatchThresholds()).check_intervals_minutes
    if anomalous or near_end:
        return int(intervals[0])
    return int(intervals[min(max(0, int(healthy_checks)), len(intervals) - 1)])


def decide(series: RunSeries, anomalies: Sequence[Anomaly], baseline: Baseline | None = None,
           now: float | None = None, *, source_ok: bool = True, healthy_checks: int = 0,
           thresholds: WatchThresholds | None = None) -> Verdict:
    """CONTINUE / WAIT / STOP for one check, in this order:

    1. the metrics source is unreachable: WAIT (never STOP on missing data);
    2. a severe anomaly other than stale (nan_inf, an unrecovered loss spike,
       divergence, grad_explosion): STOP, SEVERE_ANOMALY;
    3. the last step reached ``expected_total_steps``: CONTINUE, COMPLETE (let
       the run finish its final evaluation and checkpoint; a finished run going
       quiet is not stale);
    4. stale beyond the start-up grace: STOP, STALE;
    5. too little data (fewer than ``min_points`` loss points): WAIT;
    6. mild anomalies only: CONTINUE, MILD_ANOMALY;
    7. otherwise CONTINUE, NORMAL.

    Severe evidence (a NaN in the first steps, a silent start-up) is acted on
    even when there is little data. ``next_check_minutes`` grows 10 -> 20 ->
    30 -> 60 over consecutive healthy checks (``healthy_checks`` before this
    one), drops back to 10 after any anomaly or WAIT, and stays at 10 in the
    last 10% of the run.
    """
    thresholds = thresholds or WatchThresholds()
    baseline = baseline or Baseline()
    total = baseline.expected_total_steps
    total = int(total) if isinstance(total, (int, float)) and not isinstance(total, bool) and total > 0 else None
    step = series.last_step
    near_end = total is not None and step is not None and step >= (1 - thresholds.near_end_fraction) * total
    complete = total is not None and step is not None and step >= total
    severe = [a for a in anomalies if _is_severe(a)]
    severe_stop = [a for a in severe if a.kind != "stale"]
    stale = [a for a in severe if a.kind == "stale"]
    mild = [a for a in anomalies if not _is_severe(a)]
    evidence: dict[str, Any] = {
        "step": step, "expected_total_steps": total, "loss_points": series.loss_points, "records": series.records,
        "severe": [a.kind for a in severe], "mild": [a.kind for a in mild], "healthy_checks": healthy_checks,
        "near_end": near_end, "source_ok": source_ok,
    }
    if now is not None and series.last_time is not None and math.isfinite(now):
        evidence["seconds_since_last_record"] = round(now - series.last_time, 3)
    progress = f"step {step}" + (f" of {total}" if total else "") if step is not None else "no step yet"
    first = next_check_minutes(0, thresholds=thresholds)

    if not source_ok:
        return Verdict("WAIT", "NORMAL", f"the metrics source is unreachable or empty ({progress}); waiting "
                                         "rather than judging without data", first, evidence)
    if severe_stop:
        return Verdict("STOP", "SEVERE_ANOMALY", f"{progress}: {_describe(severe_stop)}", first, evidence)
    if complete:
        return Verdict("CONTINUE", "COMPLETE", f"{progress}: the run reached its expected total steps"
                       + (f" (mild: {_describe(mild)})" if mild else ""), first, evidence)
    if stale:
        return Verdict("STOP", "STALE", f"{progress}: {_describe(stale)}", first, evidence)
    if series.loss_points < thresholds.min_points:
        what = (f"{series.loss_points} loss point(s)" if series.resolve("loss")
                else "no training loss metric yet (loss, train/loss, train_loss)")
        return Verdict("WAIT", "NORMAL", f"too little data to judge: {what}, {thresholds.min_points} needed "
                                         f"({progress})", first, evidence)
    if mild:
        return Verdict("CONTINUE", "MILD_ANOMALY", f"{progress}: {_describe(mild)}", first, evidence)
    minutes = next_check_minutes(healthy_checks, near_end=near_end, thresholds=thresholds)
    loss = series.track("loss")
    level = f"; loss {loss.ema:.4g} (EMA)" if loss is not None and loss.ema is not None else ""
    return Verdict("CONTINUE", "NORMAL", f"{progress}: no anomaly{level}"
                   + (f"; last {thresholds.near_end_fraction:.0%} of the run" if near_end else ""), minutes, evidence)
