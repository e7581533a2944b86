"""Turn L1 measurements into verdicts: one named check each, with value, threshold and reason.

Every check records what it measured and the threshold it compared with in
``evidence``, so a report always shows value, threshold and verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from ..report import CheckResult, Status
from .runner import L1Report

CHECK_NAMES = {
    "L1-STEP-TIME": "step timing",
    "L1-THROUGHPUT": "throughput",
    "L1-MFU": "model FLOPs utilisation",
    "L1-TCA": "tensor-core activity",
    "L1-MEMORY": "memory",
    "L1-GRAD-HEALTH": "gradient health",
    "L1-GRAD-COVERAGE": "gradient coverage",
    "L1-LOSS": "loss trend",
    "L1-DRIFT": "parameter drift",
    "L1-LR-SCHEDULE": "learning-rate schedule",
    "L1-CHECKPOINT": "checkpoint round trip",
    "L1-RESUME": "resume equivalence",
    "L1-INFERENCE": "inference",
    "L1-EVAL": "evaluation",
}


def _result(check_id: str, status: Status, message: str, **evidence: Any) -> CheckResult:
    return CheckResult(check_id, status, message, name=CHECK_NAMES[check_id], evidence=evidence)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale and unit in ("FLOP", "FLOP/s", "B", "samples/s", "tokens/s"):
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.4g} {unit}".strip()


def check_step_time(report: L1Report) -> CheckResult:
    from ..toolkit.profiling import timing

    times = report.trace.step_times
    if len(times) < 3:
        return _result("L1-STEP-TIME", Status.FAIL, f"only {len(times)} step(s) ran; L1 needs a bounded run of "
                       "at least a dozen steps (raise --spml-l1-minutes or --spml-l1-steps)", steps=len(times))
    cv = report.settings.thresholds.warmup_cv
    warmup = timing.detect_warmup(times, window=5, cv=cv)
    steady = warmup < len(times)
    # Never steady: fall back to every step but the first (counted under FlopCounterMode, so slow).
    stats = timing.summarize(times, warmup if steady else 1)
    report.measurements.update(step_time_median_s=stats.median, step_time_p90_s=stats.p90,
                               warmup_steps=warmup, steps=len(times))
    message = (f"median {stats.median * 1e3:.2f} ms, p90 {stats.p90 * 1e3:.2f} ms over {stats.steady_steps} "
               f"steady steps after {warmup} warm-up step(s)")
    if not steady:
        # Not a failure: on a shared or throttled machine short steps rarely settle below a 5% CV. The
        # numbers stand, with the caveat, and the p90/median ratio shows how jittery the run was.
        return _result("L1-STEP-TIME", Status.PASS, message + f"; note: step time never settled below a {cv:.0%} "
                       f"coefficient of variation (p90/median {stats.p90 / stats.median:.2f}): a noisy machine, or "
                       "stalls, recompiles or data loading on the critical path", median_s=stats.median,
                       p90_s=stats.p90, warmup_steps=warmup, threshold_cv=cv, settled=False)
    return _result("L1-STEP-TIME", Status.PASS, message, median_s=stats.median, p90_s=stats.p90,
                   warmup_steps=warmup, threshold_cv=cv)


def check_throughput(report: L1Report) -> CheckResult:
    median = report.measurements.get("step_time_median_s")
    sizes = report.trace.batch_sizes
    if not median or not sizes:
        return _result("L1-THROUGHPUT", Status.SKIP, "no steady step time to derive throughput from")
    samples = statistics.median(sizes) / median
    per_sample = report.measurements.get("tokens_per_sample")
    tokens = samples * per_sample if per_sample else None
    report.measurements.update(samples_per_s=samples, tokens_per_s=tokens)
    text = f"{_fmt(samples, 'samples/s')}" + (f", {_fmt(tokens, 'tokens/s')}" if tokens else "")
    return _result("L1-THROUGHPUT", Status.PASS, text, samples_per_s=samples, tokens_per_s=tokens)


def check_mfu(report: L1Report) -> CheckResult:
    trace, device = report.trace, report.device
    flops, median = trace.flops_per_step, report.measurements.get("step_time_median_s")
    uncounted = trace.flops_uncounted
    report.measurements.update(flops_per_step=flops)
    if flops is None:
        why = trace.flops_error or "FlopCounterMode counted no FLOPs in the step"
        return _result("L1-MFU", Status.SKIP, f"no FLOP count: {why}", uncounted=uncounted)
    achieved = flops / median if median else None
    report.measurements.update(achieved_flops_per_s=achieved)
    note = f"; not counted by FlopCounterMode: {', '.join(uncounted)}" if uncounted else ""
    peak = device.get("peak_flops")
    if not peak or not achieved:
        report.measurements["mfu"] = None
        return _result("L1-MFU", Status.SKIP, f"achieved {_fmt(achieved, 'FLOP/s')} ({_fmt(flops, 'FLOP')} per step); "
                       f"MFU not computed: {device.get('peak_reason')}{note}", achieved_flops_per_s=achieved,
                       flops_per_step=flops, mfu=None, uncounted=uncounted)
    mfu = achieved / peak
    report.measurements["mfu"] = mfu
    threshold = report.settings.thresholds.min_mfu
    text = (f"MFU {mfu:.2%} ({_fmt(achieved, 'FLOP/s')} of a {_fmt(peak, 'FLOP/s')} peak, "
            f"{_fmt(flops, 'FLOP')} per step){note}")
    status = Status.PASS if mfu >= threshold else Status.FAIL
    if status is Status.FAIL:
        text += f"; below the {threshold:.0%} floor: the device is mostly idle (data loading, syncs, tiny kernels)"
    return _result("L1-MFU", status, text, mfu=mfu, threshold=threshold, achieved_flops_per_s=achieved,
                   peak_flops=peak, flops_per_step=flops, uncounted=uncounted)


def check_tca(report: L1Report) -> CheckResult:
    tca = report.probes.get("tca") or {}
    value = tca.get("value")
    report.measurements["tca"] = value
    if value is None:
        return _result("L1-TCA", Status.SKIP, f"tensor-core activity not measured: {tca.get('reason', 'unknown')}")
    text = f"tensor cores active {value:.1%} of the time ({tca.get('source')})"
    mfu = report.measurements.get("mfu")
    if mfu is not None:
        from ..toolkit.profiling import gap

        text += f"; {gap.tca_mfu_gap(value, mfu).summary}"
    return _result("L1-TCA", Status.PASS, text, tca=value, source=tca.get("source"), mfu=mfu)


def check_memory(report: L1Report) -> CheckResult:
    memory = report.probes.get("memory") or {}
    if "error" in memory:
        return _result("L1-MEMORY", Status.ERROR, f"memory analysis failed: {memory['error']}")
    report.measurements.update({f"memory_{k}": v for k, v in memory.items() if isinstance(v, (int, float))})
    parts = [f"{label} {_fmt(memory.get(key), 'B')}" for key, label in (
        ("param_bytes", "parameters"), ("grad_bytes", "gradients"), ("optimizer_state_bytes", "optimizer state"),
        ("peak_allocated_bytes", "peak allocated"), ("peak_reserved_bytes", "peak reserved"),
        ("peak_rss_bytes", "peak RSS")) if memory.get(key) is not None]
    frag = memory.get("fragmentation")
    if frag is not None:
        parts.append(f"fragmentation {frag:.1%}")
    return _result("L1-MEMORY", Status.PASS, ", ".join(parts) or "no memory figures", **memory)


def check_grad_health(report: L1Report) -> CheckResult:
    norms = report.trace.grad_norms
    th = report.settings.thresholds
    finite = [n for n in norms if math.isfinite(n)]
    bad_steps = [i + 1 for i, n in enumerate(norms) if not math.isfinite(n)]
    report.measurements.update(grad_norm_min=min(finite) if finite else None,
                               grad_norm_max=max(finite) if finite else None,
                               grad_norm_median=statistics.median(finite) if finite else None)
    if not norms:
        return _result("L1-GRAD-HEALTH", Status.FAIL, "no gradients were seen during training")
    if bad_steps:
        return _result("L1-GRAD-HEALTH", Status.FAIL, f"gradient norm is NaN/Inf at {len(bad_steps)} step(s), first at "
                       f"step {bad_steps[0]}", nonfinite_steps=bad_steps[:20])
    low, high = min(finite), max(finite)
    evidence = dict(min=low, max=high, threshold_min=th.grad_norm_min, threshold_max=th.grad_norm_max)
    if high > th.grad_norm_max:
        return _result("L1-GRAD-HEALTH", Status.FAIL, f"global gradient norm reaches {high:.3g}, above "
                       f"{th.grad_norm_max:g}: exploding gradients (learning rate, missing clipping, bad init)", **evidence)
    if low < th.grad_norm_min:
        return _result("L1-GRAD-HEALTH", Status.FAIL, f"global gradient norm falls to {low:.3g}, below "
                       f"{th.grad_norm_min:g}: vanishing gradients or a detached graph", **evidence)
    return _result("L1-GRAD-HEALTH", Status.PASS, f"global gradient norm {low:.3g} .. {high:.3g}, all finite "
                   f"(limits {th.grad_norm_min:g} .. {th.grad_norm_max:g})", **evidence)


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_grad_coverage(report: L1Report) -> CheckResult:
    trace = report.trace
    problems = []
    if trace.not_in_optimizer:
        problems.append(f"trainable parameters missing from the optimizer: {_names(trace.not_in_optimizer)} "
                        "(they get gradients but never change; add them to a param group or freeze them)")
    if trace.never_grad:
        problems.append(f"trainable parameters that never received a gradient: {_names(trace.never_grad)} "
                        "(unused in forward, or detached)")
    if trace.zero_grad:
        problems.append(f"parameters whose gradient was always zero: {_names(trace.zero_grad)}")
    evidence = dict(not_in_optimizer=trace.not_in_optimizer, never_grad=trace.never_grad, zero_grad=trace.zero_grad)
    if problems:
        return _result("L1-GRAD-COVERAGE", Status.FAIL, "; ".join(problems), **evidence)
    return _result("L1-GRAD-COVERAGE", Status.PASS, f"all {len(trace.drift)} trainable parameters are in the "
                   "optimizer and receive non-zero gradients", **evidence)


def check_loss(report: L1Report) -> CheckResult:
    losses = report.trace.losses
    factor = report.settings.thresholds.loss_spike_factor
    if report.trace.error:
        return _result("L1-LOSS", Status.FAIL, f"training crashed at {report.trace.error}")
    if len(losses) < 4:
        return _result("L1-LOSS", Status.FAIL, f"only {len(losses)} loss value(s): too few to judge a trend")
    bad = [i + 1 for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        return _result("L1-LOSS", Status.FAIL, f"loss is NaN/Inf from step {bad[0]} ({len(bad)} step(s))",
                       nonfinite_steps=bad[:20], first_loss=losses[0])
    half = len(losses) // 2
    first, second = statistics.fmean(losses[:half]), statistics.fmean(losses[half:])
    report.measurements.update(loss_first=losses[0], loss_last=losses[-1], loss_first_half_mean=first,
                               loss_second_half_mean=second)
    spikes = []
    for i in range(5, len(losses)):
        window = losses[max(0, i - 20):i]
        average = statistics.fmean(window)
        if average > 0 and losses[i] > factor * average:
            spikes.append(i + 1)
    evidence = dict(first_half_mean=first, second_half_mean=second, spike_factor=factor, spikes=spikes[:20])
    if spikes:
        return _result("L1-LOSS", Status.FAIL, f"loss spikes above {factor:g}x its moving average at step(s) "
                       f"{spikes[:5]}", **evidence)
    if not second < first:
        return _result("L1-LOSS", Status.FAIL, f"loss is not decreasing: second-half mean {second:.4g} is not below "
                       f"first-half mean {first:.4g} (learning rate, frozen model, or labels not matching inputs)",
                       **evidence)
    return _result("L1-LOSS", Status.PASS, f"finite and decreasing: {losses[0]:.4g} -> {losses[-1]:.4g} "
                   f"(half means {first:.4g} -> {second:.4g}), no spike above {factor:g}x", **evidence)


def check_drift(report: L1Report) -> CheckResult:
    drift, moved = report.trace.drift, report.trace.moved
    limit = report.settings.thresholds.max_relative_drift
    if not drift:
        return _result("L1-DRIFT", Status.FAIL, "no trainable parameters")
    frozen = [n for n, m in moved.items() if not m]
    wild = [n for n, d in drift.items() if d is not None and not d <= limit]  # NaN counts as wild
    finite = [d for d in drift.values() if d is not None and math.isfinite(d)]
    evidence = dict(max_relative_drift=max(finite) if finite else None, threshold=limit, unchanged=frozen, wild=wild)
    report.measurements["max_relative_drift"] = evidence["max_relative_drift"]
    if frozen:
        return _result("L1-DRIFT", Status.FAIL, f"trainable parameters never moved from their initial values: "
                       f"{_names(frozen)}", **evidence)
    if wild:
        return _result("L1-DRIFT", Status.FAIL, f"parameters drifted more than {limit:g}x their initial norm: "
                       f"{_names(wild)} (learning rate too high?)", **evidence)
    return _result("L1-DRIFT", Status.PASS, f"every trainable parameter moved; largest relative drift "
                   f"{evidence['max_relative_drift']:.3g} (limit {limit:g})", **evidence)


def check_lr_schedule(report: L1Report) -> CheckResult:
    lrs = [lr for lr in report.trace.lrs if math.isfinite(lr)]
    if not report.trace.has_scheduler:
        return _result("L1-LR-SCHEDULE", Status.SKIP, "no scheduler in the pipeline's TrainState")
    if len(set(lrs)) <= 1:
        return _result("L1-LR-SCHEDULE", Status.FAIL, f"a scheduler exists but the learning rate never changed "
                       f"({lrs[0] if lrs else 'n/a'}) over {len(lrs)} steps: scheduler.step() is not called "
                       "(or the schedule is flat over the whole run)", lrs=lrs[:5])
    return _result("L1-LR-SCHEDULE", Status.PASS, f"learning rate {lrs[0]:.3g} -> {lrs[-1]:.3g} over {len(lrs)} steps",
                   first=lrs[0], last=lrs[-1])


def _probe_result(report: L1Report, key: str, check_id: str, ok_text: Callable[[dict], str]) -> CheckResult:
    probe = report.probes.get(key)
    if probe is None:
        return _result(check_id, Status.SKIP, "the pipeline does not evaluate (no evaluate() override)")
    if "error" in probe:
        return _result(check_id, Status.FAIL, probe["error"])
    problems = probe.get("problems", [])
    if problems:
        return _result(check_id, Status.FAIL, "; ".join(problems), **probe)
    return _result(check_id, Status.PASS, ok_text(probe), **probe)


def check_checkpoint(report: L1Report) -> CheckResult:
    return _probe_result(report, "checkpoint", "L1-CHECKPOINT", lambda p: (
        f"save -> load into a fresh build -> identical outputs; optimizer, scheduler, step and RNG state round-trip "
        f"({_fmt(p.get('bytes'), 'B')})"))


def check_resume(report: L1Report) -> CheckResult:
    probe = report.probes.get("resume") or {"error": "not run"}
    if "error" in probe:
        return _result("L1-RESUME", Status.FAIL, probe["error"])
    n, m = probe["steps"]
    how = "bit-for-bit" if probe["exact"] else "within rtol 1e-4"
    if not probe["equal"]:
        pairs = list(zip(probe["uninterrupted"], probe["resumed"]))
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs) - 1)
        return _result("L1-RESUME", Status.FAIL, f"{n} steps + save/load + {m} steps does not reproduce {n + m} "
                       f"uninterrupted steps ({how}): losses first differ at step {first + 1} "
                       f"({probe['uninterrupted'][first]!r} vs {probe['resumed'][first]!r}); something is not in the "
                       "checkpoint (optimizer state, scheduler, RNG, data position)", **probe)
    return _result("L1-RESUME", Status.PASS, f"{n} + save/load + {m} steps equals {n + m} uninterrupted steps ({how})",
                   **probe)


def check_inference(report: L1Report) -> CheckResult:
    return _probe_result(report, "inference", "L1-INFERENCE",
                         lambda p: f"finite, non-constant outputs of shape {p.get('shape')}")


def check_eval(report: L1Report) -> CheckResult:
    result = _probe_result(report, "evaluation", "L1-EVAL", lambda p: (
        f"in-memory and checkpoint evaluation agree ({_metrics(p.get('in_memory', {}))}), report their mode, "
        "and errors name the mode"))
    trace = report.trace
    every = report.measurements.get("eval_every")
    if result.status is not Status.PASS or not every:
        return result
    expected = [s for s in range(every, len(trace.step_times) + 1, every)]
    problems = []
    if trace.eval_errors:
        problems.append(f"in-training evaluation raised: {trace.eval_errors[0]}")
    if expected and trace.eval_steps[:len(expected)] != expected:
        problems.append(f"in-training evaluation fired at steps {trace.eval_steps[:6]}, planned every {every} steps "
                        f"({expected[:6]})")
    if problems:
        return _result("L1-EVAL", Status.FAIL, "; ".join(problems), planned_every=every, fired=trace.eval_steps)
    fired = f"; fired at steps {trace.eval_steps[:6]} (every {every})" if trace.eval_steps else \
        f"; cadence every {every} steps not reached in {len(trace.step_times)} steps"
    return CheckResult(result.id, result.status, result.message + fired, name=result.name,
                       evidence={**result.evidence, "planned_every": every, "fired": trace.eval_steps})


def _metrics(metrics: dict) -> str:
    shown = [f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(shown[:4])


CHECKS: dict[str, Callable[[L1Report], CheckResult]] = {
    "L1-STEP-TIME": check_step_time, "L1-THROUGHPUT": check_throughput, "L1-MFU": check_mfu, "L1-TCA": check_tca,
    "L1-MEMORY": check_memory, "L1-GRAD-HEALTH": check_grad_health, "L1-GRAD-COVERAGE": check_grad_coverage,
    "L1-LOSS": check_loss, "L1-DRIFT": check_drift, "L1-LR-SCHEDULE": check_lr_schedule,
    "L1-CHECKPOINT": check_checkpoint, "L1-RESUME": check_resume, "L1-INFERENCE": check_inference,
    "L1-EVAL": check_eval,
}


def judge(report: L1Report) -> None:
    """Fill ``report.checks`` (in the order above) and ``report.measurements``."""
    for check_id, check in CHECKS.items():
        try:
            result = check(report)
        except Exception as exc:  # noqa: BLE001 - a bug in one check must not hide the others
            result = _result(check_id, Status.ERROR, f"check crashed: {type(exc).__name__}: {exc}")
        report.checks[check_id] = result
