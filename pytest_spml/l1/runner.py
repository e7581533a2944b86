"""Run L1: train the user's pipeline for a bounded time, then prove checkpoint, resume, inference, evaluation.

The runner only *measures*; :mod:`pytest_spml.l1.checks` turns measurements
into verdicts against thresholds. Training is bounded by asking the pipeline
for batches and stopping (time budget or step limit), never by patching the
user's code.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..report import CheckResult
from .interface import L1Pipeline, TrainState

if TYPE_CHECKING:
    import torch

MIN_STEPS = 12  # fewer steps cannot show a trend, a warm-up or a median


@dataclass(frozen=True)
class Thresholds:
    """Defaults from SPML's L1 checklist; every one can be overridden per project."""

    grad_norm_min: float = 1e-7
    grad_norm_max: float = 1e3
    loss_spike_factor: float = 10.0
    max_relative_drift: float = 10.0
    min_mfu: float = 0.01
    warmup_cv: float = 0.05
    rtol: float = 1e-5
    atol: float = 1e-6
    max_probe_overhead: float = 0.05

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)


@dataclass(frozen=True)
class L1Settings:
    minutes: float = 5.0
    steps: int | None = None
    device: str = "auto"
    seed: int = 0
    peak_flops: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    sync_every: int = 10  # one host sync per k steps for losses and gradient norms
    resume_steps: tuple[int, int] = (4, 4)


@dataclass
class TrainingTrace:
    """What the bounded training run recorded, step by step."""

    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metrics: list[dict[str, Any]] = field(default_factory=list)
    eval_errors: list[str] = field(default_factory=list)
    flops_per_step: float | None = None
    flops_uncounted: list[str] = field(default_factory=list)
    flops_error: str | None = None
    never_grad: list[str] = field(default_factory=list)
    zero_grad: list[str] = field(default_factory=list)
    not_in_optimizer: list[str] = field(default_factory=list)
    drift: dict[str, float | None] = field(default_factory=dict)  # relative to the initial norm
    moved: dict[str, bool] = field(default_factory=dict)
    has_scheduler: bool = False
    matmul_dtypes: list[str] = field(default_factory=list)
    stopped_by: str = ""
    error: str | None = None


@dataclass
class L1Report:
    pipeline: str
    settings: L1Settings
    device: dict[str, Any]
    trace: TrainingTrace
    checks: dict[str, CheckResult] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)  # results of the pipeline checks (checkpoint, resume, ...)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        settings = asdict(self.settings)
        return {
            "tool": "spml l1",
            "pipeline": self.pipeline,
            "device": self.device,
            "settings": settings,
            "ok": all(c.status.value in ("pass", "skip") for c in self.checks.values()),
            "measurements": self.measurements,
            "checks": [c.to_dict() for c in self.checks.values()],
            "losses": self.trace.losses,
            "grad_norms": self.trace.grad_norms,
            "step_times_s": self.trace.step_times,
        }


# --------------------------------------------------------------------------- device


def resolve_device(name: str) -> "torch.device":
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--spml-l1-device {name}: CUDA is not available on this machine")
    return device


def describe_device(device: "torch.device", peak_override: float | None, dtype: str = "bf16") -> dict[str, Any]:
    import torch

    from ..toolkit.profiling import peak_flops

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak, reason = (peak_override, "given with --spml-peak-flops") if peak_override else \
            peak_flops.peak_flops(name, dtype)
        reason = f"{reason} (dense {dtype} peak: the precision the step's matmuls ran in)"
    else:
        import platform

        name = platform.processor() or platform.machine() or "cpu"
        peak, reason = (peak_override, "given with --spml-peak-flops") if peak_override else (
            None, "no peak FLOP/s for a CPU: pass --spml-peak-flops to get an MFU")
    return {"type": device.type, "name": name, "peak_flops": peak, "peak_reason": reason}


# --------------------------------------------------------------------------- training


_MATMULS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_scaled_dot_product")


def _MatmulDtypes() -> Any:  # noqa: N802 - a factory for a mode class built only when torch is present
    """A dispatch mode recording the dtypes matmuls really ran in (autocast included): the peak to divide by."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = func.__name__.split(".")[0]
            if name.startswith(_MATMULS) and args and hasattr(args[0], "dtype"):
                self.dtypes.add(str(args[0].dtype).replace("torch.", ""))
            return func(*args, **(kwargs or {}))

    return MatmulDtypes()


def peak_dtype(matmul_dtypes: list[str]) -> str:
    """The dtype whose peak FLOP/s applies: the lowest precision the matmuls used, TF32 when it is on."""
    import torch

    for dtype, key in (("float8_e4m3fn", "fp8"), ("bfloat16", "bf16"), ("float16", "fp16")):
        if dtype in matmul_dtypes:
            return key
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    return "tf32" if tf32 else "fp32"


class _GradProbe:
    """Sees every parameter's gradient as it is accumulated, before the step can clip or zero it.

    The norms are taken inside backward: when the last expected gradient of
    a round lands, one fused ``_foreach_norm`` runs over all of them, so an
    in-place ``clip_grad_norm_`` in the user's step cannot hide an explosion.
    Norms stay on the device; the host reads them once per ``sync_every``
    steps. Parameters that get no gradient shrink the expected round after
    the first step (computed after the step then, as a fallback).
    """

    def __init__(self, named: list[tuple[str, "torch.nn.Parameter"]]):
        self.named = named
        self.expected = len(named)
        self.latest: dict[int, Any] = {}
        self.norms: tuple[list[int], list[Any]] | None = None
        self.ever_nonzero: dict[str, Any] = {}
        self.seen: set[str] = set()
        self.handles = [param.register_post_accumulate_grad_hook(self._hook(index))
                        for index, (_name, param) in enumerate(named)]

    def _hook(self, index: int):
        def hook(param: "torch.nn.Parameter") -> None:
            if param.grad is not None:
                self.latest[index] = param.grad
                if len(self.latest) >= self.expected:
                    self._take()
        return hook

    def _take(self) -> None:
        import torch

        indices = sorted(self.latest)
        self.norms = (indices, list(torch._foreach_norm([self.latest[i].detach() for i in indices])))

    def step_norm(self) -> "torch.Tensor | None":
        """The global norm of this step's gradients (a device tensor), or None when none arrived."""
        import torch

        if self.latest and (self.norms is None or len(self.norms[0]) < len(self.latest)):
            self.expected = len(self.latest)  # some parameters get no gradient: a smaller round
            self._take()
        if self.norms is None:
            return None
        indices, norms = self.norms
        for i, norm in zip(indices, norms):
            name = self.named[i][0]
            self.seen.add(name)
            previous = self.ever_nonzero.get(name)
            nonzero = norm > 0
            self.ever_nonzero[name] = nonzero if previous is None else (previous | nonzero)
        self.latest, self.norms = {}, None
        return torch.linalg.vector_norm(torch.stack(norms))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _optimizer_param_ids(optimizer: Any) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _current_lr(state: TrainState) -> float:
    if state.scheduler is not None and hasattr(state.scheduler, "get_last_lr"):
        try:
            return float(state.scheduler.get_last_lr()[0])
        except Exception:  # noqa: BLE001 - some schedulers need a step first
            pass
    return float(state.optimizer.param_groups[0].get("lr", float("nan")))


def _as_float(value: Any) -> float:
    try:
        return float(value.detach().float().item()) if hasattr(value, "detach") else float(value)
    except (TypeError, ValueError):
        return float("nan")


def _sync(device: "torch.device") -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_bounded(pipeline: L1Pipeline, state: TrainState, settings: L1Settings,
                  device: "torch.device") -> TrainingTrace:
    """The bounded training run with every probe attached."""
    import torch

    from ..toolkit.profiling import flops as flop_tools
    from ..toolkit.profiling.timing import StepTimer

    trace = TrainingTrace(has_scheduler=state.scheduler is not None)
    # CUDA events on a GPU (one host sync per sync_every steps), a monotonic clock on the CPU
    timer = StepTimer(device, sync_every=settings.sync_every)
    named = [(n, p) for n, p in state.model.named_parameters() if p.requires_grad]
    in_optimizer = _optimizer_param_ids(state.optimizer)
    trace.not_in_optimizer = [n for n, p in named if id(p) not in in_optimizer]
    initial = {n: p.detach().float().clone() for n, p in named}
    probe = _GradProbe(named)
    pending_losses: list[Any] = []
    pending_norms: list[Any] = []
    budget_s = settings.minutes * 60.0
    limit = settings.steps
    batches = iter(pipeline.batches())
    started = time.perf_counter()
    try:
        # Step 1 is counted by FlopCounterMode (its overhead makes it a warm-up step anyway).
        batch = next(batches)
        box: dict[str, Any] = {}

        def first_step() -> None:
            with _MatmulDtypes() as seen:
                box["loss"] = pipeline.train_step(state, batch)
            trace.matmul_dtypes = sorted(seen.dtypes)

        try:
            counted = flop_tools.count_flops(first_step)
            loss = box["loss"]
            trace.flops_per_step = float(counted.total) if counted.total else None
            trace.flops_uncounted = list(counted.uncounted)
        except Exception as exc:  # noqa: BLE001 - a pipeline FlopCounterMode cannot follow still trains
            trace.flops_error = f"{type(exc).__name__}: {exc}"
            loss = box["loss"] if "loss" in box else pipeline.train_step(state, batch)
        state.step += 1
        _sync(device)
        trace.step_times.append(time.perf_counter() - started)
        pending_losses.append(loss)
        pending_norms.append(probe.step_norm())
        trace.batch_sizes.append(pipeline.batch_size(batch))
        trace.lrs.append(_current_lr(state))
        while True:
            if limit is not None and state.step >= limit:
                trace.stopped_by = f"step limit {limit}"
                break
            if time.perf_counter() - started >= budget_s and state.step >= MIN_STEPS:
                trace.stopped_by = f"time budget {settings.minutes:g} min"
                break
            try:
                batch = next(batches)
            except StopIteration:
                trace.stopped_by = "the pipeline's batches ran out"
                break
            with timer.step():
                loss = pipeline.train_step(state, batch)
            state.step += 1
            pending_losses.append(loss)
            pending_norms.append(probe.step_norm())
            trace.batch_sizes.append(pipeline.batch_size(batch))
            trace.lrs.append(_current_lr(state))
            if len(pending_losses) >= settings.sync_every:
                _drain(trace, pending_losses, pending_norms)
            if pipeline.evaluates and pipeline.eval_every and state.step % pipeline.eval_every == 0:
                _evaluate_in_training(pipeline, state, trace)
    except Exception as exc:  # noqa: BLE001 - a crashing step is a finding, not a pytest internal error
        trace.error = f"step {state.step + 1}: {type(exc).__name__}: {exc}"
        trace.stopped_by = "an exception"
    finally:
        _drain(trace, pending_losses, pending_norms)
        probe.close()
        trace.step_times.extend(timer.times())
    trace.never_grad = [n for n, _ in named if n not in probe.seen]
    trace.zero_grad = [n for n, flag in probe.ever_nonzero.items() if not bool(flag)]
    for name, param in named:
        before = initial[name]
        delta = float(torch.linalg.vector_norm(param.detach().float() - before))
        scale = float(torch.linalg.vector_norm(before))
        trace.moved[name] = delta > 0
        # Zero-initialised tensors (biases, LayerNorm shifts) have no relative drift: only "moved" counts.
        trace.drift[name] = delta / scale if scale > 0 else None
    return trace


def _drain(trace: TrainingTrace, losses: list[Any], norms: list[Any]) -> None:
    trace.losses.extend(_as_float(v) for v in losses)
    trace.grad_norms.extend(_as_float(v) if v is not None else float("nan") for v in norms)
    losses.clear()
    norms.clear()


def _evaluate_in_training(pipeline: L1Pipeline, state: TrainState, trace: TrainingTrace) -> None:
    try:
        metrics = pipeline.evaluate(state.model, mode="in-memory")
        trace.eval_steps.append(state.step)
        trace.eval_metrics.append(dict(metrics))
    except Exception as exc:  # noqa: BLE001
        trace.eval_errors.append(f"step {state.step}: {type(exc).__name__}: {exc}")
    finally:
        state.model.train()


# --------------------------------------------------------------------------- pipeline probes


def _first_batch(pipeline: L1Pipeline) -> Any:
    return next(iter(pipeline.batches()))


def _tensors_equal(a: Any, b: Any, exact: bool, rtol: float, atol: float) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if exact:
            return bool(torch.equal(a.cpu(), b.cpu()))
        return bool(torch.allclose(a.float().cpu(), b.float().cpu(), rtol=rtol, atol=atol, equal_nan=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k], exact, rtol, atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y, exact, rtol, atol) for x, y in zip(a, b))
    return a == b


def probe_checkpoint(pipeline: L1Pipeline, state: TrainState, workdir: Path, exact: bool,
                     thresholds: Thresholds) -> dict[str, Any]:
    """Save, load into a fresh build, and compare outputs and every state dict."""
    import torch

    from .interface import rng_state

    result: dict[str, Any] = {"problems": []}
    path = workdir / "l1-checkpoint.pt"
    batch = _first_batch(pipeline)
    before_out = pipeline.infer(state.model, batch)
    saved_rng = rng_state()
    pipeline.save_checkpoint(state, path)
    result["bytes"] = path.stat().st_size
    try:
        loaded = pipeline.load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001
        result["problems"].append(f"loading the checkpoint into a fresh build failed: {type(exc).__name__}: {exc}")
        return result
    after_out = pipeline.infer(loaded.model, batch)
    if not _tensors_equal(before_out, after_out, exact, thresholds.rtol, thresholds.atol):
        diff = float((before_out.float() - after_out.float()).abs().max()) if isinstance(before_out, torch.Tensor) \
            and isinstance(after_out, torch.Tensor) and before_out.shape == after_out.shape else float("nan")
        result["problems"].append(f"outputs after reload differ from before the save (max abs diff {diff:.3g}): "
                                  "something the model needs is not in the checkpoint (buffers? a submodule?)")
    if not _tensors_equal(state.model.state_dict(), loaded.model.state_dict(), True, 0, 0):
        result["problems"].append("model state dict after reload differs from the saved model's")
    if not _tensors_equal(state.optimizer.state_dict()["state"], loaded.optimizer.state_dict()["state"], True, 0, 0):
        result["problems"].append("optimizer state (moments, step counts) does not round-trip")
    if state.scheduler is not None and loaded.scheduler is not None:
        if not _tensors_equal(state.scheduler.state_dict(), loaded.scheduler.state_dict(), True, 0, 0):
            result["problems"].append("scheduler state does not round-trip")
    if loaded.step != state.step:
        result["problems"].append(f"step counter does not round-trip ({state.step} saved, {loaded.step} loaded)")
    now = torch.get_rng_state()
    if not torch.equal(now, saved_rng["torch"]):
        result["problems"].append("torch RNG state is not restored by load_checkpoint (dropout and sampling will "
                                  "differ after a resume)")
    result["path"] = str(path)
    return result


def probe_resume(pipeline: L1Pipeline, settings: L1Settings, device: "torch.device", workdir: Path,
                 exact: bool) -> dict[str, Any]:
    """N steps, save, load, M steps must equal N+M uninterrupted steps."""
    import torch

    n, m = settings.resume_steps
    deterministic = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        pipeline.setup(device, settings.seed)
        straight = pipeline.build()
        batches = iter(pipeline.batches())
        reference = []
        for _ in range(n + m):
            reference.append(_as_float(pipeline.train_step(straight, next(batches))))
            straight.step += 1

        pipeline.setup(device, settings.seed)
        first = pipeline.build()
        batches = iter(pipeline.batches())
        resumed = []
        for _ in range(n):
            resumed.append(_as_float(pipeline.train_step(first, next(batches))))
            first.step += 1
        path = workdir / "l1-resume.pt"
        pipeline.save_checkpoint(first, path)
        second = pipeline.load_checkpoint(path)
        for _ in range(m):
            resumed.append(_as_float(pipeline.train_step(second, next(batches))))
            second.step += 1
    finally:
        torch.use_deterministic_algorithms(deterministic)
    if exact:
        same = reference == resumed
    else:
        same = all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(reference, resumed))
    return {"steps": [n, m], "uninterrupted": reference, "resumed": resumed, "equal": same, "exact": exact}


def probe_inference(pipeline: L1Pipeline, state: TrainState) -> dict[str, Any]:
    import torch

    out = pipeline.infer(state.model, _first_batch(pipeline))
    if not isinstance(out, torch.Tensor):
        return {"problems": [f"infer() returned {type(out).__name__}, not a tensor"]}
    out = out.detach().float()
    problems = []
    if not bool(torch.isfinite(out).all()):
        problems.append("inference produced NaN or Inf values")
    elif out.numel() > 1 and float(out.std()) == 0.0:
        problems.append("inference output is constant across the batch")
    return {"problems": problems, "shape": list(out.shape), "std": float(out.std()) if out.numel() > 1 else None}


def probe_evaluation(pipeline: L1Pipeline, state: TrainState, workdir: Path, thresholds: Thresholds) -> dict[str, Any]:
    """One evaluator core, two entry modes: both report their mode, agree, and errors name the mode."""
    problems: list[str] = []
    first = dict(pipeline.evaluate(state.model, mode="in-memory"))
    second = dict(pipeline.evaluate(state.model, mode="in-memory"))
    state.model.train()
    numbers = {k: v for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not numbers:
        problems.append("evaluate() returned no numeric metric")
    for key, value in numbers.items():
        if not math.isfinite(float(value)):
            problems.append(f"evaluation metric {key!r} is not finite ({value})")
    if first.get("mode") != "in-memory":
        problems.append("in-memory evaluation does not report its mode (return {'mode': mode, ...})")
    if any(not math.isclose(float(numbers[k]), float(second.get(k, math.nan)), rel_tol=thresholds.rtol,
                            abs_tol=thresholds.atol) for k in numbers):
        problems.append("two in-memory evaluations of the same weights differ: evaluation is not deterministic "
                        "(model.eval() missing, dropout active, or a shuffled/sampled evaluation set)")
    path = workdir / "l1-eval.pt"
    pipeline.save_checkpoint(state, path)
    from_checkpoint: dict[str, Any] = {}
    try:
        from_checkpoint = dict(pipeline.evaluate_checkpoint(path))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"checkpoint evaluation failed: {type(exc).__name__}: {exc}")
    if from_checkpoint:
        if from_checkpoint.get("mode") != "checkpoint":
            problems.append("checkpoint evaluation does not report its mode (return {'mode': mode, ...})")
        for key, value in numbers.items():
            other = from_checkpoint.get(key)
            if not isinstance(other, (int, float)) or not math.isclose(float(value), float(other),
                                                                       rel_tol=1e-4, abs_tol=1e-6):
                problems.append(f"in-memory and checkpoint evaluation disagree on {key!r} for the same weights "
                                f"({value} vs {other})")
    error_text = ""
    try:
        pipeline.evaluate_checkpoint(workdir / "missing-checkpoint.pt")
        problems.append("checkpoint evaluation of a missing file did not raise")
    except Exception as exc:  # noqa: BLE001
        error_text = str(exc)
        if "checkpoint" not in error_text.lower():
            problems.append(f"the evaluation error does not name its mode: {error_text!r}")
    return {"problems": problems, "in_memory": first, "checkpoint": from_checkpoint, "error_message": error_text}


# --------------------------------------------------------------------------- entry point


def run_l1(pipeline: L1Pipeline, settings: L1Settings | None = None) -> L1Report:
    """Train ``pipeline`` within the budget, probe it, and judge every check."""
    import torch

    from .checks import judge

    settings = settings or L1Settings()
    device = resolve_device(settings.device)
    pipeline.setup(device, settings.seed)
    report = L1Report(pipeline=getattr(pipeline, "name", type(pipeline).__name__), settings=settings,
                      device=describe_device(device, settings.peak_flops), trace=TrainingTrace())
    report.measurements.update(tokens_per_sample=pipeline.tokens_per_sample,
                               eval_every=pipeline.eval_every if pipeline.evaluates else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state = pipeline.build()
    report.trace = train_bounded(pipeline, state, settings, device)
    if device.type == "cuda":
        report.device = describe_device(device, settings.peak_flops, peak_dtype(report.trace.matmul_dtypes))
    report.device["matmul_dtypes"] = report.trace.matmul_dtypes
    report.probes["memory"] = _memory(state, device)
    report.probes["tca"] = _tca(pipeline, state, device) if not report.trace.error else {
        "value": None, "source": None, "reason": "training failed"}
    exact = device.type == "cpu"
    with tempfile.TemporaryDirectory(prefix="spml-l1-") as tmp:
        workdir = Path(tmp)
        for name, probe in (
            ("checkpoint", lambda: probe_checkpoint(pipeline, state, workdir, exact, settings.thresholds)),
            ("inference", lambda: probe_inference(pipeline, state)),
            ("evaluation", lambda: probe_evaluation(pipeline, state, workdir, settings.thresholds)
             if pipeline.evaluates else None),
            ("resume", lambda: probe_resume(pipeline, settings, device, workdir, exact)),
        ):
            if report.trace.error and name != "inference":
                report.probes[name] = {"error": f"not run: training failed ({report.trace.error})"}
                continue
            try:
                report.probes[name] = probe()
            except Exception as exc:  # noqa: BLE001 - a crashing probe is that check's failure
                report.probes[name] = {"error": f"{type(exc).__name__}: {exc}"}
    judge(report)
    return report


def _memory(state: TrainState, device: "torch.device") -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    from ..toolkit.profiling import memory

    try:
        stats = memory.memory_stats(state.model, state.optimizer, device)
        return asdict(stats) if is_dataclass(stats) else dict(stats)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def _tca(pipeline: L1Pipeline, state: TrainState, device: "torch.device") -> dict[str, Any]:
    """Sample tensor-core activity while more real training steps run (an idle GPU would read 0)."""
    from dataclasses import asdict, is_dataclass

    if device.type != "cuda":
        return {"value": None, "source": None, "reason": "tensor-core activity needs an NVIDIA GPU; this run is on "
                f"{device.type}"}
    from ..toolkit.profiling import tca

    batches = iter(pipeline.batches())

    def workload() -> None:
        loss = pipeline.train_step(state, next(batches))
        _as_float(loss)  # block until the step's GPU work is done

    try:
        result = tca.measure_tca(workload, duration_s=1.0, gpu_index=device.index or 0)
        return asdict(result) if is_dataclass(result) else dict(result)
    except Exception as exc:  # noqa: BLE001
        return {"value": None, "source": None, "reason": f"{type(exc).__name__}: {exc}"}
