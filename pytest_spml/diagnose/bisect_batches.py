"""The first batch whose step produces NaN/Inf or a spike: found, described, saved, and put on trial.

The replay observes every step (loss, weights, the batch's own values), so
the first bad batch is read off the replay rather than searched for: a
bisection over prefix lengths would need log2(n) replays to learn what one
observed replay already shows. The search that does remain — how few batches
reproduce it — is the shrink in :mod:`.reproduce`. The experiment that decides
whether the batch *is* the cause drops it and replays again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import runs
from .data_checks import batch_labels
from .reproduce import Reproduction, replay_variant


@dataclass
class BatchFinding:
    step: int
    kind: str | None
    inputs_nonfinite: int
    batch_hash: str
    rows: list[int] = field(default_factory=list)  # samples holding NaN/Inf
    labels: dict[str, Any] | None = None  # out-of-range labels: count, min, max, rows, num_classes
    shapes: list[str] = field(default_factory=list)
    saved: str | None = None
    skip_experiment: dict[str, Any] | None = None  # the replay without this batch

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "inputs_nonfinite": self.inputs_nonfinite,
                "batch_hash": self.batch_hash, "rows_with_nonfinite": self.rows,
                "labels_out_of_range": self.labels, "tensors": self.shapes,
                "saved": self.saved, "skip_experiment": self.skip_experiment}


def nonfinite_rows(batch: Any) -> list[int]:
    """Sample indices (first dimension) whose floating values include NaN/Inf."""
    import torch

    rows: set[int] = set()
    for t in runs.tensors(batch):
        if (t.is_floating_point() or t.is_complex()) and t.dim() > 0:
            bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
            rows.update(int(i) for i in torch.nonzero(bad).flatten().tolist())
    return sorted(rows)


def describe(batch: Any) -> list[str]:
    return [f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in runs.tensors(batch)]


def first_bad_batch(make: Callable[[], Any], repro: Reproduction, kept: runs.Trace | None, *, device: str,
                    seed: int) -> tuple[BatchFinding, Any] | None:
    """The batch of the replay's first bad step, with what is wrong in it; None when the replay stayed healthy."""
    if not repro.reproduced or repro.step is None:
        return None
    step = repro.step
    batch = kept.kept.get(step) if kept is not None else None
    if batch is None:  # the shrink did not run a one-batch trial: draw the batch once more
        bad = step
        trace = runs.train(make(), device=device, seed=seed, steps=step - repro.start_step + 1,
                           checkpoint=repro.checkpoint, start_step=repro.start_step, use=lambda i: i == bad,
                           keep=(step,))
        batch = trace.kept.get(step)
    row = next((s for s in repro.trace.steps if s.step == step), None)
    finding = BatchFinding(step=step, kind=repro.kind, inputs_nonfinite=row.inputs_nonfinite if row else 0,
                           batch_hash=row.batch_hash if row else "")
    if batch is not None:
        finding.rows = nonfinite_rows(batch)
        finding.shapes = describe(batch)
        finding.inputs_nonfinite = runs.nonfinite_count(batch)
        finding.batch_hash = runs.batch_hash(batch)
        finding.labels = batch_labels(make, batch, device=device, seed=seed)
    return finding, batch


def save_batch(batch: Any, finding: BatchFinding, out: Path) -> Path:
    """``batch_step<N>.pt`` (``torch.save``, CPU tensors) in the incident folder, written atomically."""
    import io

    import torch

    from ..fsutil import atomic_write

    buffer = io.BytesIO()
    torch.save(batch, buffer)
    path = out / f"batch_step{finding.step}.pt"
    atomic_write(path, buffer.getvalue())
    finding.saved = str(path)
    return path


def skip_experiment(make: Callable[[], Any], repro: Reproduction, finding: BatchFinding, *, device: str,
                    seed: int, thresholds: Any = None, incident: Any = None) -> dict[str, Any]:
    """Replay without the bad batch: healthy means that batch is the cause; still bad means it is not alone."""
    bad = finding.step
    trace, health = replay_variant(make, repro, device=device, seed=seed, thresholds=thresholds,
                                   incident=incident, use=lambda i: i != bad)
    finding.skip_experiment = {"experiment": f"replay from step {repro.start_step} without batch {bad}",
                               "healthy": health.ok, "after": runs.metrics(trace, health),
                               "before": runs.metrics(repro.trace, repro.health)}
    return finding.skip_experiment
