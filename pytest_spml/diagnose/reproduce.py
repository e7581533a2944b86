"""Reproduce: re-run from the nearest checkpoint before the incident, fixed seed, deterministic kernels,
on the smallest slice of data that still shows the problem.

The slice is found automatically. The replay tells the first bad step ``b``;
the shrink then starts again from the same checkpoint and trains only the last
``k`` batches up to ``b`` (the others are drawn and dropped, so every batch
keeps its index), growing ``k`` by doubling and then bisecting, until the
smallest ``k`` that still goes bad at ``b`` is known. ``k = 1`` means one batch
on top of the checkpoint is the whole reproduction; a large ``k`` points at
something that builds up (optimizer state, a learning rate).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import runs
from .intake import Checkpoint, Incident, history_before

MAX_SHRINK_TRIALS = 8


@dataclass
class Reproduction:
    reproduced: bool
    kind: str | None  # the replay's problem (runs.Health.kind)
    step: int | None  # the first bad step in the replay
    detail: str
    start_step: int
    checkpoint: str | None
    steps_run: int
    length: int  # steps the replay asked for (it stops early a few steps after NaN)
    seconds: float
    matches_log: bool | None  # the logged incident's kind and step seen again (None: no logged incident)
    trace: runs.Trace
    health: runs.Health
    skipped_checkpoints: list[str] = field(default_factory=list)  # nearer ones with NaN/Inf weights
    shrunk_batches: int | None = None
    shrink_trials: list[dict[str, Any]] = field(default_factory=list)
    spike_reference: float | None = None  # the pre-spike average the detector compared against

    def to_dict(self) -> dict[str, Any]:
        return {"reproduced": self.reproduced, "broken": self.trace.broken(), "kind": self.kind, "step": self.step,
                "detail": self.detail,
                "start_step": self.start_step, "checkpoint": self.checkpoint, "steps_run": self.steps_run,
                "seconds": round(self.seconds, 3), "matches_log": self.matches_log,
                "skipped_checkpoints": self.skipped_checkpoints, "smallest_slice_batches": self.shrunk_batches,
                "shrink_trials": self.shrink_trials, "health": self.health.to_dict()}


def _finite_checkpoint(make: Callable[[], Any], device: str, seed: int, candidates: list[Checkpoint],
                       target: int | None = None) -> tuple[Checkpoint | None, list[str]]:
    """The nearest candidate whose weights are all finite (a checkpoint saved after the incident has NaN ones).

    A checkpoint that stores its step is trusted over its file name: one whose stored step is after ``target``
    (the incident step) would replay from after the incident, and is skipped (and said so); the one used is
    returned with its stored step.
    """
    import torch

    skipped = []
    for candidate in candidates:
        pipeline = make()
        with runs.deterministic():
            pipeline.setup(runs.resolve_device(device), seed)
            try:
                state = pipeline.load_checkpoint(candidate.path)
            except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is skipped and said so
                skipped.append(f"{candidate.path} (cannot load: {type(exc).__name__}: {exc})")
                continue
        stored = getattr(state, "step", None)
        if isinstance(stored, int) and not isinstance(stored, bool) and stored > 0 and stored != candidate.step:
            if target is not None and stored > target:
                skipped.append(f"{candidate.path} (named step {candidate.step} but it stores step {stored}, after "
                               f"the incident step {target}: it would replay from after the incident)")
                continue
            candidate = Checkpoint(stored, candidate.path)  # the stored step, not the name's
        if all(bool(torch.isfinite(p).all()) for p in state.model.parameters()):
            return candidate, skipped
        skipped.append(f"{candidate.path} (NaN/Inf weights)")
    return None, skipped


def reproduce(make: Callable[[], Any], *, device: str, seed: int, incident: Incident | None,
              checkpoints: list[Checkpoint], steps: int, thresholds: Any = None) -> Reproduction:
    """Replay the run around the incident (or ``steps`` from scratch without one) and judge it."""
    target = incident.step if incident is not None else None
    start, skipped = _finite_checkpoint(make, device, seed, checkpoints, target) if checkpoints else (None, [])
    margin = 10  # steps past the incident: a spike needs a few points after it to be judged
    length = (target - (start.step if start else 0) + 1 + margin) if target is not None else steps
    started = time.perf_counter()
    trace = runs.train(make(), device=device, seed=seed, steps=max(1, length),
                       checkpoint=start.path if start else None, start_step=start.step if start else 0)
    history = history_before(incident, trace.start_step)
    health = runs.judge(trace, history=history, thresholds=thresholds, from_scratch=trace.start_step == 0)
    seconds = time.perf_counter() - started
    matches = None
    if incident is not None and incident.kind is not None and incident.step is not None:
        matches = health.kind == incident.kind and health.first_bad_step is not None \
            and abs(health.first_bad_step - incident.step) <= 1
    where = f"checkpoint {start.path} (step {trace.start_step})" if start else "scratch (step 0)"
    named = next((c.step for c in checkpoints if start and c.path == start.path), None)
    if start and named is not None and named != start.step:
        where += f" (its name says step {named}; the step it stores, {start.step}, is the one trusted)"
    if trace.broken():
        detail = f"the pipeline itself crashes, from {where}: {trace.broken()}"
    elif health.ok:
        detail = f"does not reproduce: {len(trace.steps)} steps from {where} stay healthy"
    else:
        detail = f"reproduced from {where} in {len(trace.steps)} steps ({seconds:.1f} s): {health.reasons[0]}"
    spike = next((a for a in health.anomalies if a.kind == "loss_spike" and a.step == health.first_bad_step), None)
    return Reproduction(reproduced=not health.ok, kind=health.kind, step=health.first_bad_step, detail=detail,
                        start_step=trace.start_step, checkpoint=start.path if start else None,
                        steps_run=len(trace.steps), length=max(1, length), seconds=seconds, matches_log=matches,
                        trace=trace, health=health, skipped_checkpoints=skipped,
                        spike_reference=spike.evidence.get("pre_spike_average") if spike else None)


def still_bad_at(trace: runs.Trace, step: int, kind: str | None, spike_reference: float | None,
                 thresholds: Any = None) -> bool:
    """Does this (shrunk) run go bad at ``step`` the way the replay did?"""
    from ..watch.detectors import WatchThresholds

    if trace.error is not None:
        return kind == "crash" and trace.error_step == step
    row = next((s for s in trace.steps if s.step == step), None)
    if row is None:
        return False
    if kind in ("nan_inf", None):
        bad = trace.first_nonfinite()
        return bad is not None and bad.step <= step
    if kind == "loss_spike" and spike_reference:
        # the detector's own rule, against the average it reported for the full replay
        factor = (thresholds or WatchThresholds()).loss_spike_factor
        return math.isfinite(row.loss) and row.loss > factor * spike_reference or not math.isfinite(row.loss)
    return False


def shrink(make: Callable[[], Any], repro: Reproduction, *, device: str, seed: int, thresholds: Any = None,
           keep_batch: bool = True) -> runs.Trace | None:
    """Find the fewest batches (ending at the bad step) that still reproduce from the same start.

    Fills ``repro.shrunk_batches`` and ``repro.shrink_trials``; returns the
    trace of the one-batch trial (it holds the bad batch, kept for saving).
    """
    if not repro.reproduced or repro.step is None or repro.kind not in ("nan_inf", "loss_spike", "crash"):
        return None
    bad, start = repro.step, repro.start_step
    full = bad - start + 1
    one_batch: runs.Trace | None = None

    def trial(k: int) -> bool:
        nonlocal one_batch
        keep = (bad,) if k == 1 and keep_batch else ()
        trace = runs.train(make(), device=device, seed=seed, steps=full, checkpoint=repro.checkpoint,
                           start_step=start, use=lambda i: i > bad - k, keep=keep)
        ok = still_bad_at(trace, bad, repro.kind, repro.spike_reference, thresholds)
        repro.shrink_trials.append({"batches": k, "from_step": bad - k + 1, "to_step": bad, "reproduces": ok,
                                    "seconds": round(trace.seconds, 3)})
        if k == 1:
            one_batch = trace
        return ok

    low, high = 0, None  # low: largest k known not to reproduce; high: smallest k known to reproduce
    k = 1
    while k < full and len(repro.shrink_trials) < MAX_SHRINK_TRIALS:
        if trial(k):
            high = k
            break
        low, k = k, k * 2
    if high is None:
        high = full  # the full replay reproduces
    while high - low > 1 and len(repro.shrink_trials) < MAX_SHRINK_TRIALS:
        middle = (low + high) // 2
        if trial(middle):
            high = middle
        else:
            low = middle
    repro.shrunk_batches = high
    return one_batch


def replay_variant(make: Callable[[], Any], repro: Reproduction, *, device: str, seed: int, thresholds: Any = None,
                   incident: Incident | None = None, use: Callable[[int], bool] | None = None,
                   lr_scale: float = 1.0) -> tuple[runs.Trace, runs.Health]:
    """The same replay with one thing changed (a batch dropped, the learning rate scaled): the controlled experiment."""
    trace = runs.train(make(), device=device, seed=seed, steps=repro.length, checkpoint=repro.checkpoint,
                       start_step=repro.start_step, use=use, lr_scale=lr_scale)
    health = runs.judge(trace, history=history_before(incident, trace.start_step), thresholds=thresholds,
                        from_scratch=trace.start_step == 0)
    return trace, health
