"""Training runs under diagnose's control: fixed seed, deterministic settings, every step observed.

Each experiment (reproduction, a skipped batch, a reverted hyperparameter, a
bisected commit) is one call of :func:`train` on a fresh pipeline. It drives
the user's own :class:`~pytest_spml.l1.L1Pipeline` hooks — ``setup``,
``build``/``load_checkpoint``, ``batches``, ``train_step`` — and records, per
step, the loss, the gradient norm (taken inside backward, as L1 does), whether
the parameters are still finite, whether the batch held NaN/Inf, and a content
hash of the batch. :func:`judge` then reads the trace with the watchdog's own
detectors, so "NaN", "spike" and "divergence" mean here exactly what they mean
to ``spml-loop check``.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..watch.model import Anomaly, Record

# Detectors that judge a diagnose run; the others (stale logs, throughput, lr schedule, plateau,
# evaluation) need wall-clock time or a whole run's length and say nothing about a short replay.
JUDGED_KINDS = ("nan_inf", "loss_spike", "divergence", "grad_explosion")
_END = object()


class PipelineError(Exception):
    """The pipeline cannot be imported or constructed (bad input, reported with file and line)."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message, self.path, self.line = message, path, line


# ------------------------------------------------------------------------------------------------ loading


def _user_frame(exc: BaseException) -> tuple[str | None, int | None]:
    """Where in the user's code an import failed: a SyntaxError's own position, else the deepest user frame."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return exc.filename, exc.lineno
    tb, found = exc.__traceback__, (None, None)
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith("<") and "importlib" not in name and os.sep + "pytest_spml" + os.sep not in name:
            found = (name, tb.tb_lineno)
        tb = tb.tb_next
    return found


@contextlib.contextmanager
def on_path(root: str | os.PathLike) -> Iterator[None]:
    """``root`` first on ``sys.path`` while the block runs; no ``__pycache__`` is written into the user's tree."""
    root = str(Path(root).resolve())
    saved_path, saved_flag = list(sys.path), sys.dont_write_bytecode
    sys.path.insert(0, root)
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.dont_write_bytecode = saved_flag


def import_factory(target: str) -> Any:
    """The class, factory or instance ``target`` names, imported with the project's one L1 loader."""
    from ..l1.interface import import_pipeline_target

    try:
        return import_pipeline_target(target)
    except (ImportError, AttributeError) as exc:
        path, line = _user_frame(exc)
        raise PipelineError(f"--pipeline {target}: cannot import it ({exc}); use package.module:Class or "
                            "path/to/file.py:Class", path, line) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing: say where
        path, line = _user_frame(exc)
        raise PipelineError(f"--pipeline {target}: importing it raised {type(exc).__name__}: {exc}", path,
                            line) from None


def make_pipeline(factory: Any, config: Mapping[str, Any] | None, *, config_path: str | None = None,
                  config_lines: Mapping[str, int] | None = None) -> Any:
    """A fresh pipeline: ``factory(**config)`` for a class or factory function; an instance is used as is.

    The config's keys are the factory's keyword arguments, so a hyperparameter
    reverted by config isolation reaches the pipeline the way the user's own
    code passes it.
    """
    config = dict(config or {})
    if not callable(factory) or _is_pipeline(factory):
        if config:
            raise PipelineError("--config needs a pipeline class or factory (the config's keys become its keyword "
                                "arguments), but --pipeline names an instance", config_path)
        return factory
    try:
        pipeline = factory(**config)
    except TypeError as exc:
        bad = next((k for k in config if f"'{k}'" in str(exc)), None)
        line = (config_lines or {}).get(bad) if bad else None
        raise PipelineError(f"the pipeline does not accept this config ({exc}); its keys must be keyword arguments "
                            "of the pipeline class or factory", config_path, line) from None
    except Exception as exc:  # noqa: BLE001 - the user's __init__ / factory failed: say where, not a traceback
        path, line = _user_frame(exc)
        raise PipelineError(f"--pipeline: creating the pipeline ({getattr(factory, '__name__', factory)}) raised "
                            f"{type(exc).__name__}: {exc}", path, line) from None
    if not _is_pipeline(pipeline):
        raise PipelineError(f"--pipeline: {getattr(factory, '__name__', factory)!r} returned "
                            f"{type(pipeline).__name__}, not an L1Pipeline (build, batches and train_step)")
    return pipeline


def _is_pipeline(obj: Any) -> bool:
    return not isinstance(obj, type) and all(callable(getattr(obj, n, None))
                                             for n in ("build", "batches", "train_step", "setup"))


# ------------------------------------------------------------------------------------------------ traces


@dataclass
class Step:
    """What one optimizer step did. ``step`` is the batch's index in the pipeline's stream (0-based)."""

    step: int
    loss: float
    grad_norm: float | None
    lr: float | None
    params_finite: bool
    max_abs_param: float
    inputs_nonfinite: int
    batch_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss": _num(self.loss), "grad_norm": _num(self.grad_norm), "lr": _num(self.lr),
                "params_finite": self.params_finite, "max_abs_param": _num(self.max_abs_param),
                "inputs_nonfinite": self.inputs_nonfinite, "batch_hash": self.batch_hash}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Step":
        return cls(step=int(d["step"]), loss=_float(d["loss"]), grad_norm=_opt(d.get("grad_norm")),
                   lr=_opt(d.get("lr")), params_finite=bool(d["params_finite"]),
                   max_abs_param=_float(d.get("max_abs_param")), inputs_nonfinite=int(d.get("inputs_nonfinite", 0)),
                   batch_hash=str(d.get("batch_hash", "")))


def _num(value: float | None) -> float | str | None:
    """JSON has no NaN/Inf: keep them as strings, they are evidence."""
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _float(value: Any) -> float:
    return float(value) if value is not None else math.nan


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class Trace:
    """One run: where it started, every step, and how it ended."""

    start_step: int = 0
    checkpoint: str | None = None
    steps: list[Step] = field(default_factory=list)
    error: str | None = None
    error_step: int | None = None
    error_phase: str | None = None  # build | load_checkpoint | batches | train_step: where the error was raised
    stopped_by: str = ""
    seconds: float = 0.0
    param_dtypes: list[str] = field(default_factory=list)
    param_hash: str = ""
    kept: dict[int, Any] = field(default_factory=dict)  # batches asked for with keep=, on the CPU

    @property
    def losses(self) -> list[float]:
        return [s.loss for s in self.steps]

    def broken(self) -> str | None:
        """Why this run is no evidence at all (the pipeline crashed outside a training step, or no step ran), or
        None. A crash inside ``train_step`` is evidence (a bad batch); one in build/batches is the pipeline's."""
        if self.error and self.error_phase != "train_step":
            return f"the pipeline crashed before training ({self.error})"
        if not self.steps and not self.error:
            return f"no training step ran ({self.stopped_by or 'the pipeline yielded no batch'})"
        return None

    def first_nonfinite(self) -> Step | None:
        """The first step whose loss is NaN/Inf or after which a parameter is."""
        return next((s for s in self.steps if not math.isfinite(s.loss) or not s.params_finite), None)

    def records(self, label: str = "run") -> list["Record"]:
        from ..watch.model import Record

        out = []
        for s in self.steps:
            values = {"loss": s.loss}
            if s.grad_norm is not None:
                values["grad_norm"] = s.grad_norm
            if s.lr is not None:
                values["lr"] = s.lr
            out.append(Record(step=s.step, time=None, values=values, line=f"{label} step {s.step}"))
        return out

    def final_loss(self) -> float:
        """Mean of the last quarter of the losses (inf when any of them, or the run, went bad)."""
        if self.error or not self.steps:
            return math.inf
        tail = self.losses[-max(1, len(self.steps) // 4):]
        return sum(tail) / len(tail) if all(math.isfinite(v) for v in tail) else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"start_step": self.start_step, "checkpoint": self.checkpoint, "error": self.error,
                "error_step": self.error_step, "error_phase": self.error_phase,
                "stopped_by": self.stopped_by, "seconds": round(self.seconds, 3),
                "param_dtypes": self.param_dtypes, "param_hash": self.param_hash,
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Trace":
        return cls(start_step=int(d.get("start_step", 0)), checkpoint=d.get("checkpoint"), error=d.get("error"),
                   error_step=d.get("error_step"), error_phase=d.get("error_phase"),
                   stopped_by=d.get("stopped_by", ""),
                   seconds=float(d.get("seconds", 0.0)), param_dtypes=list(d.get("param_dtypes", [])),
                   param_hash=str(d.get("param_hash", "")), steps=[Step.from_dict(s) for s in d.get("steps", [])])


# ------------------------------------------------------------------------------------------------ tensors


def tensors(obj: Any) -> Iterator["torch.Tensor"]:
    """Every tensor in a batch (tuples, lists and dicts, nested)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from tensors(item)


def nonfinite_count(batch: Any) -> int:
    import torch

    return sum(int((~torch.isfinite(t)).sum().item()) for t in tensors(batch)
               if t.is_floating_point() or t.is_complex())


def tensor_bytes(t: "torch.Tensor") -> bytes:
    """The raw bytes of a tensor, whatever its dtype (bfloat16 has no numpy twin)."""
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def batch_hash(batch: Any) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for t in tensors(batch):
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(tensor_bytes(t))
    return digest.hexdigest()


def to_cpu(batch: Any) -> Any:
    """A CPU copy of a batch, detached from the pipeline's buffers (it may reuse them)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.detach().to("cpu").clone()
    if isinstance(batch, tuple):
        return tuple(to_cpu(b) for b in batch)
    if isinstance(batch, list):
        return [to_cpu(b) for b in batch]
    if isinstance(batch, Mapping):
        return {k: to_cpu(v) for k, v in batch.items()}
    return batch


def _param_stats(params: list["torch.Tensor"]) -> tuple[bool, float]:
    """(all finite, largest |value|) in one fused pass."""
    import torch

    if not params:
        return True, 0.0
    norms = torch._foreach_norm([p.detach() for p in params], math.inf)
    top = float(torch.stack([n.float() for n in norms]).max().item())
    return math.isfinite(top), top


def param_hash(model: "torch.nn.Module") -> str:
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ running


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels (warn-only: an op without one still runs), no cuDNN autotuning; restored after."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reproducibility; read when CUDA starts
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def resolve_device(name: str) -> "torch.device":
    from ..l1.runner import resolve_device as l1_device

    return l1_device(name)


def scale_lr(state: Any, factor: float) -> None:
    """Multiply the learning rate of every group (and the scheduler's base) by ``factor``, for this run only."""
    for group in state.optimizer.param_groups:
        group["lr"] = group["lr"] * factor
        if "initial_lr" in group:
            group["initial_lr"] = group["initial_lr"] * factor
    if state.scheduler is not None and hasattr(state.scheduler, "base_lrs"):
        state.scheduler.base_lrs = [lr * factor for lr in state.scheduler.base_lrs]


def train(pipeline: Any, *, device: str = "cpu", seed: int = 0, steps: int, checkpoint: str | Path | None = None,
          start_step: int = 0, use: Callable[[int], bool] | None = None, lr_scale: float = 1.0,
          keep: Iterable[int] = (), stop_after_nonfinite: int = 3) -> Trace:
    """Train ``steps`` batches of ``pipeline`` (from ``checkpoint`` when given), observing every step.

    The batch stream is the pipeline's own, in its seeded order: batch ``i``
    is the ``i``-th item of ``batches()`` whatever the experiment, so a step
    index means the same data in every run. From a checkpoint, the batches
    before its step are drawn and dropped (no training) and the checkpoint's
    RNG state is put back afterwards; its step is the one the checkpoint
    restores, else ``start_step`` (the number in its file name). ``use(i)`` False drops batch ``i``
    without training on it (skip and shrink experiments). Stops
    ``stop_after_nonfinite`` steps after the first NaN/Inf: nothing recovers
    from NaN weights.
    """
    from ..l1.interface import rng_state, set_rng_state
    from ..l1.runner import _current_lr, _GradProbe

    trace = Trace(checkpoint=str(checkpoint) if checkpoint else None)
    wanted = set(keep)
    started = time.perf_counter()
    with deterministic():
        dev = resolve_device(device)
        pipeline.setup(dev, seed)
        try:
            if checkpoint is not None:
                state = pipeline.load_checkpoint(Path(checkpoint))
                saved_rng = rng_state()  # the checkpoint's RNG, before the dropped batches draw from it
            else:
                state = pipeline.build()
                saved_rng = None
        except Exception as exc:  # noqa: BLE001 - a pipeline that cannot start is a finding
            trace.error, trace.stopped_by = f"{'load_checkpoint' if checkpoint else 'build'}: " \
                                            f"{type(exc).__name__}: {exc}", "an exception"
            trace.error_phase = "load_checkpoint" if checkpoint else "build"
            trace.seconds = time.perf_counter() - started
            return trace
        trace.start_step = int(state.step or (start_step if checkpoint is not None else 0))
        if lr_scale != 1.0:
            scale_lr(state, lr_scale)
        params = [p for p in state.model.parameters()]
        trace.param_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
        named = [(n, p) for n, p in state.model.named_parameters() if p.requires_grad]
        probe = _GradProbe(named)
        index = -1
        nonfinite_seen = 0
        phase = "batches"
        try:
            stream = iter(pipeline.batches())
            for index in range(trace.start_step):
                if next(stream, _END) is _END:
                    raise RuntimeError(f"the pipeline's batches ran out at batch {index}, before the checkpoint's "
                                       f"step {trace.start_step}")
            if saved_rng is not None:
                set_rng_state(saved_rng)
            for index in range(trace.start_step, trace.start_step + steps):
                phase = "batches"
                try:
                    batch = next(stream)
                except StopIteration:
                    trace.stopped_by = "the pipeline's batches ran out"
                    break
                if index in wanted:
                    trace.kept[index] = to_cpu(batch)
                if use is not None and not use(index):
                    continue
                bad_inputs = nonfinite_count(batch)
                digest = batch_hash(batch)
                phase = "train_step"
                loss = pipeline.train_step(state, batch)
                state.step += 1
                norm = probe.step_norm()
                finite, top = _param_stats(params)
                value = float(loss.detach().float().item()) if hasattr(loss, "detach") else float(loss)
                trace.steps.append(Step(step=index, loss=value,
                                        grad_norm=float(norm.item()) if norm is not None else None,
                                        lr=_current_lr(state), params_finite=finite, max_abs_param=top,
                                        inputs_nonfinite=bad_inputs, batch_hash=digest))
                if not (math.isfinite(value) and finite):
                    nonfinite_seen += 1
                    if stop_after_nonfinite and nonfinite_seen > stop_after_nonfinite:
                        trace.stopped_by = f"{stop_after_nonfinite} steps after the first NaN/Inf"
                        break
            else:
                trace.stopped_by = trace.stopped_by or f"{steps} steps"
        except Exception as exc:  # noqa: BLE001 - a crashing step is evidence (out-of-range labels, shapes)
            trace.error = f"{type(exc).__name__}: {exc}" if phase == "train_step" else \
                f"{phase}: {type(exc).__name__}: {exc}"
            trace.error_phase = phase
            trace.error_step = index if index >= trace.start_step else None
            trace.stopped_by = "an exception"
        finally:
            probe.close()
        try:
            trace.param_hash = param_hash(state.model)
        except Exception:  # noqa: BLE001 - a hash is a convenience, not a verdict
            trace.param_hash = ""
    trace.seconds = time.perf_counter() - started
    return trace


# ------------------------------------------------------------------------------------------------ judging


@dataclass
class Health:
    """A run read by the watchdog's detectors (plus L1's loss-trend rule for runs from scratch)."""

    ok: bool
    reasons: list[str]
    anomalies: list["Anomaly"]
    final_loss: float
    first_bad_step: int | None
    kind: str | None  # nan_inf | crash | loss_spike | divergence | grad_explosion | not_learning | regression

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, "kind": self.kind, "first_bad_step": self.first_bad_step,
                "final_loss": _num(self.final_loss), "anomalies": [a.to_dict() for a in self.anomalies]}


def judge(trace: Trace, *, history: Iterable["Record"] = (), thresholds: Any = None, from_scratch: bool = False,
          reference_loss: float | None = None, tolerance: float = 0.10) -> Health:
    """Healthy or not, and why: NaN/Inf, a crash, a spike, divergence, exploding gradients; from scratch also
    a loss that does not fall (L1's rule: second-half mean below first-half mean); with ``reference_loss``
    (the last good run's final loss), a final loss more than ``tolerance`` above it.

    ``history`` (records logged before the replay's start) gives the spike
    detector the recent average it compares against.
    """
    from ..watch import detectors
    from ..watch.model import Baseline

    thresholds = thresholds or detectors.WatchThresholds()
    series = detectors.RunSeries()
    series.add(history)
    series.add(trace.records())
    replay_start = trace.steps[0].step if trace.steps else None
    found: list[Anomaly] = []
    for kind in JUDGED_KINDS:
        for anomaly in detectors.DETECTORS[kind](series, Baseline(source="diagnose run"), thresholds, None):
            # anomalies of the logged history belong to the incident report, not to this run's verdict
            if anomaly.step is None or replay_start is None or anomaly.step >= replay_start:
                found.append(anomaly)
    reasons: list[str] = []
    events: list[tuple[int, str]] = []  # (step, kind) of each problem, for the first bad step
    if trace.error:
        where = f" at step {trace.error_step}" if trace.error_step is not None else ""
        reasons.append(f"crashed{where}: {trace.error}")
        events.append((trace.error_step if trace.error_step is not None else trace.start_step, "crash"))
    bad = trace.first_nonfinite()
    if bad is not None:
        what = "loss" if not math.isfinite(bad.loss) else "parameters"
        cause = f" (the batch held {bad.inputs_nonfinite} NaN/Inf input values)" if bad.inputs_nonfinite else ""
        reasons.append(f"{what} NaN/Inf after step {bad.step}{cause}")
        events.append((bad.step, "nan_inf"))
    for anomaly in found:
        if anomaly.kind == "nan_inf":
            continue  # the per-step check above is exact and also sees NaN weights behind a finite loss
        if anomaly.kind == "loss_spike" or anomaly.severity == "severe":
            reasons.append(f"{anomaly.kind} at step {anomaly.step}: {anomaly.detail}")
            events.append((anomaly.step if anomaly.step is not None else trace.start_step, anomaly.kind))
    final = trace.final_loss()
    if from_scratch and not events and len(trace.steps) >= 8:
        losses = trace.losses
        half = len(losses) // 2
        first, second = sum(losses[:half]) / half, sum(losses[half:]) / (len(losses) - half)
        if not second < first:
            reasons.append(f"loss is not decreasing: second-half mean {second:.4g} is not below first-half mean "
                           f"{first:.4g}")
            events.append((trace.steps[half].step, "not_learning"))
    if reference_loss is not None and not events and math.isfinite(reference_loss) \
            and final > reference_loss * (1 + tolerance) + 1e-12:
        reasons.append(f"final loss {final:.4g} is more than {tolerance:.0%} above the good run's "
                       f"{reference_loss:.4g}")
        events.append((trace.steps[-1].step if trace.steps else 0, "regression"))
    if not trace.steps and not trace.error:
        reasons.append("no training step ran")
        events.append((trace.start_step, "crash"))
    first = min(events) if events else None
    return Health(ok=not events, reasons=reasons, anomalies=found, final_loss=final,
                  first_bad_step=first[0] if first else None, kind=first[1] if first else None)


def metrics(trace: Trace, health: Health) -> dict[str, Any]:
    """The before/after numbers an experiment reports."""
    bad = trace.first_nonfinite()
    return {"steps": len(trace.steps), "final_loss": _num(health.final_loss),
            "first_loss": _num(trace.steps[0].loss) if trace.steps else None,
            "nonfinite_from_step": bad.step if bad else None, "healthy": health.ok,
            "problem": health.reasons[0] if health.reasons else None}
