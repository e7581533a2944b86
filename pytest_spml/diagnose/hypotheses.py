"""Candidate causes, the experiments that tested them, and verdicts with a confidence under its ceiling.

Every candidate cause of the triage procedure is listed, tested or not:
data corruption, train/eval leakage, optimizer instability, precision
overflow, a code change, a config change, nondeterminism. Verdicts:

* ``confirmed`` — a controlled experiment changed one thing and the problem
  came or went with it (or the defect was observed directly): a FAIL result.
* ``supported`` — the evidence points at it but no experiment isolated it:
  an advisory FAIL (reported, does not decide the exit status).
* ``ruled out`` — an experiment or a direct check found it absent: a PASS.
* ``not tested`` — nothing to test it with (the reason says what to give): SKIP.
* ``error`` — the check ran but its experiment crashed or saw no data: an ERROR (never healthy).

Confidence never exceeds the ceiling of its basis: observation (the tool saw
it happen in a run) 0.95, research (a documented mechanism links what was seen
to the cause) 0.85, inference (reasoned from indirect facts) 0.70.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..report import CheckResult, Status

CEILINGS = {"observation": 0.95, "research": 0.85, "inference": 0.70}
# what each kind of evidence earns before the ceiling: a controlled experiment, a mechanism, a guess
ESTIMATES = {"observation": 0.90, "research": 0.80, "inference": 0.60}
VERDICT_STATUS = {"confirmed": Status.FAIL, "supported": Status.FAIL, "ruled out": Status.PASS,
                  "not tested": Status.SKIP, "error": Status.ERROR}
OPTIMIZER_KEYS = ("lr", "learning_rate", "momentum", "beta", "eps", "weight_decay", "clip", "warmup", "optimizer")


@dataclass
class Experiment:
    name: str
    result: str
    verdict: str  # "supports" | "refutes" | "inconclusive"

    def to_dict(self) -> dict[str, str]:
        return {"experiment": self.name, "result": self.result, "verdict": self.verdict}


@dataclass
class Hypothesis:
    id: str
    cause: str
    verdict: str = "not tested"
    basis: str = "inference"
    summary: str = ""
    experiments: list[Experiment] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: dict[str, Any] | None = None  # validated: {"change", "before", "after"}
    prevention: str = ""
    rollback: str = ""

    @property
    def ceiling(self) -> float:
        return CEILINGS[self.basis]

    @property
    def confidence(self) -> float | None:
        if self.verdict in ("not tested", "error"):
            return None
        return min(self.ceiling, ESTIMATES[self.basis])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "cause": self.cause, "verdict": self.verdict, "basis": self.basis,
                "confidence": self.confidence, "ceiling": self.ceiling, "summary": self.summary,
                "experiments": [e.to_dict() for e in self.experiments], "fix": self.fix,
                "prevention": self.prevention, "rollback": self.rollback, "evidence": self.evidence}

    def error(self, why: str) -> "Hypothesis":
        """The experiment that tests this cause crashed or saw no data: no verdict either way."""
        self.verdict, self.basis = "error", "observation"
        self.summary = f"the check could not test it: {why}"
        self.evidence["error"] = why
        return self

    def to_result(self) -> CheckResult:
        confidence = f"; confidence {self.confidence:.2f} ({self.basis}, ceiling {self.ceiling:.2f})" \
            if self.confidence is not None else ""
        return CheckResult(self.id, VERDICT_STATUS[self.verdict], f"{self.verdict}: {self.summary}{confidence}",
                           name=self.cause, blocking=self.verdict != "supported",
                           evidence={"verdict": self.verdict, "basis": self.basis, "confidence": self.confidence,
                                     "experiments": [e.to_dict() for e in self.experiments], **self.evidence})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ------------------------------------------------------------------------------------------------ data


def data_corruption(scan: Any, batch: Any, repro: Any) -> Hypothesis:
    h = Hypothesis("H-DATA", "data corruption (NaN/Inf inputs, out-of-range labels)",
                   prevention="Validate batches before they train: a test over the dataset asserting "
                              "torch.isfinite(inputs).all() and 0 <= labels < num_classes, and the watchdog's "
                              "nan_inf detector on the live run (spml-loop watch stops at the first NaN).")
    if scan is not None:
        h.evidence["scan"] = scan.to_dict()
        h.experiments.append(Experiment(
            f"scan the first {scan.batches} training batches for NaN/Inf inputs and labels outside "
            f"[0, {scan.num_classes})" if scan.num_classes else f"scan the first {scan.batches} training batches",
            f"{len(scan.nonfinite)} batch(es) with NaN/Inf inputs"
            + (f" (first at step {scan.nonfinite[0]['step']})" if scan.nonfinite else "")
            + f"; {len(scan.labels)} with out-of-range labels"
            + (f" (first at step {scan.labels[0]['step']}: values {scan.labels[0]['min']}..{scan.labels[0]['max']})"
               if scan.labels else "")
            + (f"; labels not checked: class count from {scan.classes_from}" if scan.num_classes is None
               and scan.classes_from else "")
            + (f"; the data pipeline raised {scan.error}" if scan.error else ""),
            "supports" if scan.nonfinite or scan.labels else "refutes"))
    if batch is not None:
        h.evidence["batch"] = batch.to_dict()
        h.experiments.append(Experiment(
            f"inspect the first bad batch (step {batch.step}) of the replay",
            f"{batch.inputs_nonfinite} NaN/Inf values" + (f" in sample rows {batch.rows[:10]}" if batch.rows else "")
            + (f"; {batch.labels['count']} label(s) outside [0, {batch.labels['num_classes']}) in rows "
               f"{batch.labels['rows'][:10]}" if batch.labels else "")
            + (f"; saved to {batch.saved}" if batch.saved else ""),
            "supports" if batch.inputs_nonfinite or batch.labels else "refutes"))
        skip = batch.skip_experiment
        if skip is not None:
            h.experiments.append(Experiment(
                skip["experiment"],
                "healthy: " + _after(skip["after"]) if skip["healthy"] else "still bad: " + (skip["after"]["problem"]
                                                                                           or "?"),
                "supports" if skip["healthy"] else "refutes"))
    if not h.experiments:
        h.summary = "run with --checks data, or give a reproducing incident"
        return h
    scan_defects = scan is not None and (scan.nonfinite or scan.labels)
    if scan is not None and not scan_defects and batch is None and (scan.error or scan.batches == 0):
        return h.error(f"the pipeline raised {scan.error} after {scan.batches} batch(es)" if scan.error
                       else "the pipeline yielded no training batch")
    defects = []  # what is wrong in the first bad batch itself
    if batch is not None and batch.inputs_nonfinite:
        defects.append(f"{batch.inputs_nonfinite} NaN/Inf input values"
                       + (f" (rows {batch.rows[:10]})" if batch.rows else ""))
    if batch is not None and batch.labels:
        defects.append(f"{batch.labels['count']} label(s) outside [0, {batch.labels['num_classes']}) "
                       f"(rows {batch.labels['rows'][:10]})")
    caused = bool(defects) and batch.skip_experiment is not None and batch.skip_experiment["healthy"]
    if caused:
        h.verdict, h.basis = "confirmed", "observation"
        h.summary = f"batch {batch.step} holds {' and '.join(defects)}; the replay without it stays healthy"
        h.fix = {"change": f"drop or repair the examples of batch {batch.step}",
                 "before": batch.skip_experiment["before"], "after": batch.skip_experiment["after"]}
        h.rollback = (f"Resume from the last good checkpoint ({repro.checkpoint or 'a fresh start'}, untouched by "
                      f"diagnose) after removing or repairing the examples of batch {batch.step}.")
    else:
        found = []
        if scan is not None and scan.nonfinite:
            found.append(f"NaN/Inf inputs at step(s) {[n['step'] for n in scan.nonfinite[:5]]}")
        if scan is not None and scan.labels:
            found.append(f"labels outside [0, {scan.num_classes}) at step(s) {[n['step'] for n in scan.labels[:5]]}")
        if defects and not found:
            found.append(f"{' and '.join(defects)} in batch {batch.step}")
        skip_fixes = batch is not None and batch.skip_experiment is not None and batch.skip_experiment["healthy"]
        if found:
            h.verdict, h.basis = "confirmed", "observation"
            h.summary = "the data holds " + "; ".join(found) + " (a defect seen directly, whether or not it " \
                                                               "caused this incident)"
            h.rollback = "Fix the examples named above in the dataset; no checkpoint or code change is needed for it."
        elif skip_fixes:
            h.verdict, h.basis = "supported", "inference"
            h.summary = (f"the replay without batch {batch.step} is healthy, but nothing in it is NaN/Inf or out of "
                         "range: an outlier batch (look at its examples) meeting an optimizer on the edge")
        else:
            h.verdict, h.basis = "ruled out", "observation"
            h.summary = "no NaN/Inf inputs or out-of-range labels in the batches checked" + (
                ", and the bad step's batch is clean" if batch is not None else "")
    return h


def _after(metrics: dict[str, Any]) -> str:
    return f"{metrics.get('steps')} steps, final loss {_fmt(metrics.get('final_loss'))}"


def leakage(result: Any) -> Hypothesis:
    h = Hypothesis("H-LEAKAGE", "train/evaluation leakage",
                   prevention="A test that the training and evaluation example ids (or input hashes) are "
                              "disjoint, run when the split changes (spml diagnose --checks leakage does it).")
    if result is None:
        h.summary = "run with --checks leakage"
        return h
    if not result.available:
        h.summary = "the pipeline has no eval_batches() hook (add one yielding the evaluation batches)"
        return h
    h.evidence["leakage"] = result.to_dict()
    if result.error:
        return h.error(f"reading the splits raised {result.error}")
    if not result.eval_examples or not result.train_batches:
        return h.error(f"no data to compare: {result.eval_examples} evaluation example(s), "
                       f"{result.train_batches} training batch(es)")
    h.experiments.append(Experiment(
        f"key {result.eval_examples} evaluation examples by {result.keyed_by}; look for them in "
        f"{result.train_batches} training batches ({result.train_examples} distinct examples)",
        f"{result.overlap} evaluation example(s) also trained on" + (
            f", e.g. eval batch {result.examples[0]['eval_batch']} row {result.examples[0]['eval_row']} = training "
            f"step {result.examples[0]['train_step']} row {result.examples[0]['train_row']}" if result.examples
            else ""),
        "supports" if result.overlap else "refutes"))
    h.basis = "observation"
    if result.overlap:
        share = result.overlap / max(1, result.eval_examples)
        h.verdict = "confirmed"
        h.summary = (f"{result.overlap} of {result.eval_examples} evaluation examples ({share:.0%}) appear in the "
                     f"training batches (by {result.keyed_by}): evaluation metrics are inflated")
        h.rollback = "Rebuild the split so the evaluation examples are disjoint from training; re-evaluate the " \
                     "checkpoints after it (their reported metrics were measured on training data)."
    else:
        h.verdict = "ruled out"
        h.summary = f"no evaluation example among {result.train_examples} distinct training examples"
    return h


# ------------------------------------------------------------------------------------------------ training dynamics


def optimizer_instability(repro: Any, lr_experiment: dict[str, Any] | None, batch: Any,
                          config: Any) -> Hypothesis:
    h = Hypothesis("H-OPTIM", "optimizer instability (learning rate, exploding gradients)",
                   prevention="An L1 threshold on the gradient norm (grad_norm_max in [tool.spml.l1.thresholds]) "
                              "and the watchdog's grad_norm_high_factor / loss_spike_factor on the live run; a "
                              "warm-up or gradient clipping if the learning rate must stay.")
    if repro is not None:
        explosions = [a for a in repro.health.anomalies if a.kind == "grad_explosion"]
        if explosions:
            h.evidence["grad_explosion"] = explosions[0].to_dict()
    if lr_experiment is not None and lr_experiment.get("error"):
        return h.error(f"the replay with the learning rate x{lr_experiment['scale']:g}: {lr_experiment['error']}")
    if lr_experiment is not None:
        h.experiments.append(Experiment(lr_experiment["experiment"],
                                        ("healthy: " + _after(lr_experiment["after"])) if lr_experiment["healthy"]
                                        else "still bad: " + str(lr_experiment["after"]["problem"]),
                                        "supports" if lr_experiment["healthy"] else "refutes"))
    optimizer_keys = []
    if config is not None and config.causes:
        optimizer_keys = [k for k in config.causes if any(word in k.lower() for word in OPTIMIZER_KEYS)]
        if optimizer_keys:
            h.experiments.append(Experiment(
                f"config isolation: revert {', '.join(optimizer_keys)} alone",
                "healthy: " + _after(config.fix["after"]) if config.fix else "healthy",
                "supports"))
    batch_caused = batch is not None and batch.skip_experiment is not None and batch.skip_experiment["healthy"]
    lr_fixes = lr_experiment is not None and lr_experiment["healthy"]
    if optimizer_keys:
        h.verdict, h.basis = "confirmed", "research"
        h.summary = (f"reverting {', '.join(optimizer_keys)} alone makes training healthy again; an optimizer "
                     "setting that large makes updates overshoot (documented mechanism of lr-driven divergence)")
        h.fix = config.fix
        h.rollback = "Set " + ", ".join(f"{k} back to {config.fix['keys'][k]['to']!r}" for k in optimizer_keys
                                        if k in config.fix["keys"]) + " and restart from the last good checkpoint."
    elif lr_fixes and not batch_caused:
        h.verdict, h.basis = "confirmed", "observation"
        h.summary = f"the same replay with the learning rate x{lr_experiment['scale']:g} stays healthy"
        h.fix = {"change": f"learning rate x{lr_experiment['scale']:g}", "before": lr_experiment["before"],
                 "after": lr_experiment["after"]}
        h.rollback = "Lower the learning rate (or add warm-up / clipping) and resume from the checkpoint before the " \
                     "incident, which diagnose did not touch."
    elif lr_experiment is not None:
        h.verdict, h.basis = "ruled out", "observation"
        h.summary = "a replay with the learning rate x{:g} {}".format(
            lr_experiment["scale"], "is just as bad" if not lr_fixes else "is healthy, but so is the replay without "
                                                                         "the bad batch: the batch is the cause")
    elif config is not None and config.causes:
        h.verdict, h.basis = "ruled out", "inference"
        h.summary = f"config isolation blames {', '.join(config.causes)}, not an optimizer setting"
    else:
        h.summary = "no reproduced incident to replay with a lower learning rate"
    if h.evidence.get("grad_explosion") and h.verdict == "not tested":
        h.verdict, h.basis = "supported", "inference"
        h.summary = "the replay's gradient norm exploded: " + h.evidence["grad_explosion"]["detail"]
    return h


def precision_overflow(repro: Any) -> Hypothesis:
    import torch

    h = Hypothesis("H-PRECISION", "precision overflow (fp16/bf16 range)",
                   prevention="Train in bf16 rather than fp16, or keep a GradScaler and log its scale "
                              "(the watchdog reads loss_scale and tells a scaler skip from a real NaN).")
    if repro is None or not repro.trace.steps:
        h.summary = "no replay"
        return h
    trace = repro.trace
    dtypes = trace.param_dtypes
    half = [d for d in dtypes if d in ("float16", "bfloat16")]
    finite_tops = [s.max_abs_param for s in trace.steps if math.isfinite(s.max_abs_param)]
    top = max(finite_tops) if finite_tops else math.nan
    limit = min(float(torch.finfo(getattr(torch, d)).max) for d in dtypes if d.startswith(("float", "bfloat"))) \
        if any(d.startswith(("float", "bfloat")) for d in dtypes) else math.inf
    h.evidence.update(param_dtypes=dtypes, largest_param=_fmt(top), dtype_max=_fmt(limit))
    h.experiments.append(Experiment(
        "compare the largest parameter magnitude in the replay with the range of the parameters' dtype",
        f"parameters {', '.join(dtypes)}; largest |value| {_fmt(top)} of a {_fmt(limit)} maximum",
        "supports" if half and math.isfinite(top) and top > 1e-3 * limit else "refutes"))
    h.basis = "inference"  # autocast regions and activations are not observed, only the weights
    if half and (not math.isfinite(top) or top > 1e-3 * limit):
        h.verdict = "supported"
        h.summary = f"half-precision weights ({', '.join(half)}) reach {_fmt(top)} of a {_fmt(limit)} range"
    else:
        h.verdict = "ruled out"
        h.summary = f"weights are {', '.join(dtypes)} and stay at {_fmt(top)}, far inside the range " \
                    "(autocast activations are not observed)"
    return h


# ------------------------------------------------------------------------------------------------ changes


def code_change(bisection: Any, requested: bool) -> Hypothesis:
    h = Hypothesis("H-CODE", "a code change",
                   prevention="Run the L1 check in CI on every commit (pytest --spml-l1: the loss-trend and "
                              "NaN checks this bisection used), so a commit that breaks training fails its PR.")
    if bisection is None:
        h.summary = "give --good REV and --bad REV to bisect the commits between them" if not requested \
            else "the check did not run"
        return h
    h.evidence["bisection"] = bisection.to_dict()
    good, bad = bisection.endpoints.get("good", {}), bisection.endpoints.get("bad", {})
    if good:
        h.experiments.append(Experiment(f"L1 run at the good commit {bisection.good[:12]}",
                                        f"{good.get('verdict')}: {good.get('reason')}",
                                        "inconclusive" if good.get("verdict") != "good" else "supports"))
    if bad:
        h.experiments.append(Experiment(f"L1 run at the bad commit {bisection.bad[:12]}",
                                        f"{bad.get('verdict')}: {bad.get('reason')}",
                                        "supports" if bad.get("verdict") == "bad" else "refutes"))
    for tested in bisection.tested:
        h.experiments.append(Experiment(f"git bisect: L1 run at {str(tested.get('commit'))[:12]}",
                                        f"{tested.get('verdict')}: {tested.get('reason')}", "supports"))
    if bisection.first_bad:
        h.verdict, h.basis = "confirmed", "observation"
        h.summary = f"first bad commit {bisection.subject or bisection.first_bad[:12]}"
        revert = bisection.revert or {}
        if revert:
            h.experiments.append(Experiment(f"{revert.get('change', 'git revert')} on top of {bisection.bad[:12]}",
                                            ("healthy: " if revert.get("validated") else "not fixed: ")
                                            + str(revert.get("why")),
                                            "supports" if revert.get("validated") else "inconclusive"))
        if revert.get("validated"):
            h.fix = {"change": revert["change"], "before": revert["before"], "after": revert["after"]}
        h.rollback = (f"git revert {bisection.first_bad[:12]} (validated: the reverted tree trains healthy)"
                      if revert.get("validated") else
                      f"git revert {bisection.first_bad[:12]} by hand, or go back to {bisection.good[:12]}")
    elif bad and bad.get("verdict") == "good":
        h.verdict, h.basis = "ruled out", "observation"
        h.summary = bisection.note
    else:
        h.verdict = "not tested"
        h.summary = bisection.note or "bisection did not finish"
    return h


def config_change(isolation: Any, requested: bool) -> Hypothesis:
    h = Hypothesis("H-CONFIG", "a config change",
                   prevention="Review config changes with an L1 run before launching (pytest --spml-l1 with the "
                              "new config), and keep the last good config next to the run.")
    if isolation is None:
        h.summary = "give --config and --good-config to isolate hyperparameters" if not requested \
            else "the check did not run"
        return h
    h.evidence["config"] = isolation.to_dict()
    h.experiments.append(Experiment("run the good config", _state(isolation.good),
                                    "supports" if isolation.good_healthy else "inconclusive"))
    h.experiments.append(Experiment("run the bad config", _state(isolation.bad),
                                    "supports" if isolation.bad_reproduces else "refutes"))
    for trial in isolation.trials:
        change = ", ".join(trial["reverted"])
        frm = f" ({_fmt(trial['from'])} -> {_fmt(trial['to'])})" if "from" in trial else ""
        h.experiments.append(Experiment(f"revert {change}{frm}", _state(trial),
                                        "supports" if trial["healthy"] else "refutes"))
    h.basis = "observation"
    if not isolation.differing:
        h.verdict, h.summary = "ruled out", "the two configs are identical"
    elif not isolation.good_healthy:
        h.verdict, h.summary = "not tested", "the good config is not healthy either: " + str(isolation.good["problem"])
    elif not isolation.bad_reproduces:
        h.verdict, h.summary = "ruled out", "the bad config trains as well as the good one"
    elif isolation.causes:
        h.verdict = "confirmed"
        change = isolation.fix["keys"]
        h.summary = ("reverting " + ", ".join(f"{k} {_fmt(v['from'])} -> {_fmt(v['to'])}" for k, v in change.items())
                     + (" together" if isolation.interaction else " alone") + " makes training healthy again")
        h.fix = isolation.fix
        h.rollback = "Set " + ", ".join(f"{k}: {v['to']!r}" for k, v in change.items()) + " in the config."
    else:
        h.verdict, h.summary = "not tested", "no revert of the differing keys made training healthy"
    return h


def _state(metrics: dict[str, Any]) -> str:
    if metrics.get("healthy"):
        return "healthy: " + _after(metrics)
    return "bad: " + str(metrics.get("problem"))


def nondeterminism(result: Any) -> Hypothesis:
    h = Hypothesis("H-NONDET", "nondeterminism (two identical runs differ)",
                   prevention="Seed every generator the pipeline creates, sort sets and dict keys of strings (or "
                              "set PYTHONHASHSEED in the launcher), and keep a test that runs two short runs and "
                              "compares their losses bitwise.")
    if result is None:
        h.summary = "run with --checks determinism"
        return h
    h.evidence["determinism"] = result.to_dict()
    if result.error:
        return h.error(f"a run failed ({result.error})")
    for label, run in result.runs.items():
        h.experiments.append(Experiment(f"record {run.get('steps')} steps with PYTHONHASHSEED={run.get('hash_seed')}"
                                        f" ({label})", f"final loss {_fmt(run.get('final_loss'))}, weights "
                                                       f"{run.get('param_hash')}", "inconclusive"))
    h.basis = "observation"
    if result.identical:
        h.verdict = "ruled out"
        h.summary = result.explanation
        for e in h.experiments:
            e.verdict = "refutes"
        return h
    for e in h.experiments:
        e.verdict = "supports"
    h.verdict = "confirmed"
    h.summary = result.explanation
    h.rollback = "Nothing to roll back: make the run reproducible first, then re-check any comparison between " \
                 "runs that was made with it (gains below the run-to-run noise are not gains)."
    return h
