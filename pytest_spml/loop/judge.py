"""Judges: what to do with a round once its outcome is known.

The round engine never decides on its own. After the steps of a round it
hands the :class:`Outcome` and the loop state to a judge and acts on the
returned :class:`Verdict`:

* ``commit``: commit the round's tree on the loop's branch; when
  ``improved`` is true the outcome's metric becomes the new best;
* ``accept``: commit it too, but it is not an improvement (the best stays;
  ml-iteration uses this for "keep it, with a note");
* ``rollback``: restore the base, keep the rejected diff as a patch.

A judge may also say when the loop is done (:meth:`Judge.finished`), e.g.
the target is reached. :class:`ImprovementJudge` is autoresearch's judge;
``spml-loop iterate`` plugs in a judge of compound criteria.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from .state import LoopState

ACTIONS = ("commit", "rollback", "accept")


@dataclass(frozen=True)
class Outcome:
    """What one round produced.

    ``ok`` is true when every step passed and the eval reported ``metric``;
    otherwise ``failed_step`` names the first step that did not
    (researcher, compliance, train, eval) and ``reason`` says why.
    ``metrics`` holds every number the eval wrote to its result file.
    """

    round: int
    ok: bool
    metric: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    failed_step: str | None = None
    reason: str = ""
    changed: bool = True  # False: the researcher changed nothing
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "ok": self.ok, "metric": self.metric, "metrics": dict(self.metrics),
                "failed_step": self.failed_step, "reason": self.reason, "changed": self.changed,
                "evidence": dict(self.evidence)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Outcome":
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Verdict:
    action: str  # one of ACTIONS
    reason: str
    improved: bool = False
    insight: str = ""  # one line for the experiences table (e.g. "+0.012 over the best")

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"verdict action {self.action!r} is not one of {ACTIONS}")

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "improved": self.improved, "insight": self.insight}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "Verdict":
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


class Judge(Protocol):
    """The seam between the round engine and what counts as progress."""

    name: str

    def judge(self, outcome: Outcome, state: LoopState) -> Verdict:
        """commit, accept or rollback this round's outcome."""
        ...

    def finished(self, state: LoopState) -> str | None:
        """Why the loop is done (e.g. "target reached"), or None to go on."""
        ...


def is_better(value: float, best: float | None, direction: str, margin: float = 0.0) -> bool:
    """Strictly better than ``best`` by more than ``margin`` in ``direction``; ties never are."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    gain = value - best if direction == "maximize" else best - value
    return gain > margin


def reached(value: float | None, target: float | None, direction: str) -> bool:
    if value is None or target is None:
        return False
    return value >= target if direction == "maximize" else value <= target


def noise_floor(runs: list[float]) -> float:
    """Two sigma of the baseline's run-to-run spread, from two (or more) runs of the unchanged base.

    With two runs the sample standard deviation is |a - b| / sqrt(2), so two
    sigma is sqrt(2) * |a - b|: gains below it are indistinguishable from
    re-running the same code.
    """
    if len(runs) < 2:
        return 0.0
    mean = sum(runs) / len(runs)
    sigma = math.sqrt(sum((r - mean) ** 2 for r in runs) / (len(runs) - 1))
    return 2.0 * sigma


class ImprovementJudge:
    """Autoresearch: commit when the metric is strictly better than the best by more than the noise floor."""

    name = "improvement"

    def __init__(self, direction: str):
        self.direction = direction

    def judge(self, outcome: Outcome, state: LoopState) -> Verdict:
        if not outcome.ok or outcome.metric is None:
            return Verdict("rollback", outcome.reason or f"{outcome.failed_step} failed")
        margin = state.effective_min_delta
        best = state.best
        value = outcome.metric
        delta = None if best is None else value - best
        shown = "" if delta is None else f"{delta:+.6g} vs best {best:.6g}"
        if is_better(value, best, self.direction, margin):
            than = "no best yet" if best is None else f"beats the best {best:.6g}"
            return Verdict("commit", f"{state.metric} {value:.6g} {than}" + (f" by more than {margin:.6g}" if margin else ""),
                           improved=True, insight=shown)
        if best is not None and value == best:
            why = "a tie is not an improvement"
        elif is_better(value, best, self.direction):
            why = f"better by {abs(delta or 0):.6g}, not more than the noise floor {margin:.6g}"
        else:
            why = "worse than the best"
        return Verdict("rollback", f"{state.metric} {value:.6g}: {why}", insight=shown)

    def finished(self, state: LoopState) -> str | None:
        if reached(state.best, state.target, self.direction):
            by = f"round {state.best_round}" if state.best_round is not None else "the baseline"
            return f"target reached by {by} ({state.metric} {state.best:.6g}, target {state.target:.6g})"
        return None
