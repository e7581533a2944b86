"""Config isolation: put hyperparameters back to their last good values, one at a time.

Both configs are run first (the bad one must go bad, the good one must stay
healthy, or there is nothing to isolate). Then each differing key is reverted
alone; a key whose revert alone makes the run healthy again — no NaN, spike or
divergence, and a final loss within the tolerance of the good run's — is a
cause, and that revert is the validated fix with its before/after numbers.
When no single key does it, keys are reverted cumulatively, in file order,
until the run is healthy: the causes then interact and the report names the set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import runs
from .intake import _MISSING, Config, config_diff


@dataclass
class ConfigIsolation:
    differing: list[str]
    bad: dict[str, Any]  # metrics of the bad config's run
    good: dict[str, Any]
    bad_reproduces: bool
    good_healthy: bool
    trials: list[dict[str, Any]] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    interaction: bool = False  # no single key; the cumulative set is the cause
    fix: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"differing": self.differing, "bad": self.bad, "good": self.good,
                "bad_reproduces": self.bad_reproduces, "good_healthy": self.good_healthy, "trials": self.trials,
                "causes": self.causes, "interaction": self.interaction, "fix": self.fix}


def _value(config: Config, key: str) -> Any:
    value = config.values.get(key, _MISSING)
    return "(unset)" if value is _MISSING else value


def _revert(values: dict[str, Any], good: Config, keys: list[str]) -> dict[str, Any]:
    out = dict(values)
    for key in keys:
        if key in good.values:
            out[key] = good.values[key]
        else:
            out.pop(key, None)
    return out


def isolate(make: Callable[[dict[str, Any]], Any], bad: Config, good: Config, *, device: str, seed: int, steps: int,
            tolerance: float, thresholds: Any = None) -> ConfigIsolation:
    """Run bad, good, then each single revert (and cumulative reverts when no single one fixes it)."""

    def run(values: dict[str, Any], reference: float | None) -> tuple[runs.Trace, runs.Health]:
        trace = runs.train(make(values), device=device, seed=seed, steps=steps)
        return trace, runs.judge(trace, thresholds=thresholds, from_scratch=True, reference_loss=reference,
                                 tolerance=tolerance)

    differing = config_diff(bad, good)
    good_trace, good_health = run(good.values, None)
    reference = good_health.final_loss if good_health.ok else None
    bad_trace, bad_health = run(bad.values, reference)
    result = ConfigIsolation(differing=differing, bad=runs.metrics(bad_trace, bad_health),
                             good=runs.metrics(good_trace, good_health), bad_reproduces=not bad_health.ok,
                             good_healthy=good_health.ok)
    if not differing or not result.bad_reproduces or not result.good_healthy:
        return result
    for key in differing:
        trace, health = run(_revert(bad.values, good, [key]), reference)
        result.trials.append({"reverted": [key], "from": _value(bad, key), "to": _value(good, key),
                              "healthy": health.ok, **runs.metrics(trace, health)})
        if health.ok:
            result.causes.append(key)
    if not result.causes and len(differing) > 1:
        for n in range(2, len(differing) + 1):
            keys = differing[:n]
            trace, health = run(_revert(bad.values, good, keys), reference)
            result.trials.append({"reverted": keys, "healthy": health.ok, **runs.metrics(trace, health)})
            if health.ok:
                result.causes, result.interaction = keys, True
                break
    if result.causes:
        fixed = next(t for t in result.trials if t["healthy"] and t["reverted"] == (
            result.causes if result.interaction else [result.causes[0]]))
        keys = result.causes if result.interaction else result.causes[:1]
        changes = {k: {"from": _value(bad, k), "to": _value(good, k)} for k in keys}
        result.fix = {"change": ", ".join(f"{k}: {v['from']!r} -> {v['to']!r}" for k, v in changes.items()),
                      "keys": changes, "before": result.bad,
                      "after": {k: v for k, v in fixed.items() if k not in ("reverted", "from", "to")}}
    return result
