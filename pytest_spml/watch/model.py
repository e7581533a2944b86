"""The data the watchdog works on: metric records in, anomalies and a decision out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Detector kinds (issue 5); every anomaly carries one of them.
KINDS = ("nan_inf", "loss_spike", "divergence", "plateau", "grad_explosion", "grad_vanishing", "eval_degradation",
         "lr_schedule", "throughput_drop", "stale")
DECISIONS = ("CONTINUE", "WAIT", "STOP")
STATUSES = ("NORMAL", "MILD_ANOMALY", "SEVERE_ANOMALY", "COMPLETE", "STALE")


@dataclass(frozen=True)
class Record:
    """One logged row: a step (when known), a wall-clock time (when known), numeric values.

    Values are floats; NaN and +/-Inf are kept (they are evidence), and a
    value that was logged as null or as a non-number is simply absent.
    ``line`` is where the record came from (``path:line``), for evidence.
    """

    step: int | None
    time: float | None
    values: dict[str, float]
    line: str = ""


@dataclass(frozen=True)
class Anomaly:
    kind: str
    step: int | None
    detail: str
    severity: str = "severe"  # "mild" (watch it) or "severe" (stop-worthy)
    recovered: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "detail": self.detail, "severity": self.severity,
                "recovered": self.recovered, "evidence": self.evidence}


@dataclass(frozen=True)
class Baseline:
    """The L1 baseline (experiment-context.md) or the run's own early steps."""

    step_time_s: float | None = None
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    grad_norm: float | None = None
    loss_start: float | None = None
    expected_total_steps: int | None = None
    source: str = "none"
