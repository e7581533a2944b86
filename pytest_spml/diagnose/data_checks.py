"""Data and reproducibility checks: NaN/Inf inputs, out-of-range labels, train/eval leakage, nondeterminism.

* Inputs and labels: the first ``n`` training batches, as ``batches()`` yields
  them. Labels are the last integer tensor of a ``(inputs, ..., labels)``
  tuple, or ``labels`` / ``label`` / ``targets`` / ``target`` / ``y`` of a dict
  batch; the class count is the pipeline's ``num_classes`` / ``n_classes`` /
  ``vocab_size`` attribute, else the last dimension of the model's output.
  ``-100`` (PyTorch's ``ignore_index``) is allowed.
* Leakage needs the pipeline's optional ``eval_batches()`` hook (the batches
  ``evaluate`` reads). An example is known by its id when a dict batch has
  ``id`` / ``ids`` / ``example_id`` / ``index``, else by a hash of its input row
  (``pipeline.inputs(batch)``); an evaluation example that also appears in the
  first ``n`` training batches is leaked.
* Nondeterminism: the same run twice, in two fresh processes with different
  ``PYTHONHASHSEED`` values; when they differ, a third with the first one's
  seed tells Python's string hashing (set and dict order of strings,
  ``hash()``) apart from unseeded randomness or a nondeterministic op.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import proc
from . import runner, runs

LABEL_KEYS = ("labels", "label", "targets", "target", "y")
ID_KEYS = ("id", "ids", "example_id", "example_ids", "index")
IGNORE_INDEX = -100
CLASS_ATTRS = ("num_classes", "n_classes", "vocab_size")


# ------------------------------------------------------------------------------------------------ inputs, labels


def labels_of(batch: Any) -> Any:
    import torch

    def is_int(t: Any) -> bool:
        return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() \
            and t.dtype != torch.bool

    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and is_int(batch[-1]):
        return batch[-1]
    if isinstance(batch, dict):
        return next((batch[k] for k in LABEL_KEYS if k in batch and is_int(batch[k])), None)
    return None


@dataclass
class DataScan:
    batches: int
    num_classes: int | None
    classes_from: str
    nonfinite: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    label_batches: int = 0  # batches that had labels to check
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "num_classes": self.num_classes, "classes_from": self.classes_from,
                "nonfinite_inputs": self.nonfinite[:20], "labels_out_of_range": self.labels[:20],
                "label_batches": self.label_batches, "error": self.error}


def _num_classes(pipeline: Any, state: Any, batch: Any) -> tuple[int | None, str]:
    for attr in CLASS_ATTRS:
        value = getattr(pipeline, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"pipeline.{attr}"
    try:
        out = pipeline.infer(state.model, batch)
    except Exception as exc:  # noqa: BLE001 - without a class count the label check is skipped, and says why
        return None, f"the model's output on the first batch ({type(exc).__name__}: {exc})"
    shape = getattr(out, "shape", None)
    if shape is not None and len(shape) >= 1:
        return int(shape[-1]), "the last dimension of the model's output"
    return None, "the model's output is not a tensor"


def out_of_range(labels: Any, num_classes: int) -> dict[str, Any] | None:
    """Labels below 0 (other than the ignore index) or at/above ``num_classes``: count, range and rows."""
    import torch

    bad = ((labels < 0) & (labels != IGNORE_INDEX)) | (labels >= num_classes)
    if not bool(bad.any()):
        return None
    values = labels[bad]
    rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1)).flatten().tolist() if bad.dim() else [0]
    return {"count": int(bad.sum()), "min": int(values.min()), "max": int(values.max()), "rows": rows[:20]}


def batch_labels(make: Callable[[], Any], batch: Any, *, device: str, seed: int) -> dict[str, Any] | None:
    """Out-of-range labels of one batch (a fresh model gives the class count when the pipeline does not)."""
    labels = labels_of(batch)
    if labels is None:
        return None
    pipeline = make()
    with runs.deterministic():
        pipeline.setup(runs.resolve_device(device), seed)
        state = pipeline.build()
        classes, source = _num_classes(pipeline, state, runs_to_device(batch, pipeline.device))
    if classes is None:
        return None
    found = out_of_range(labels, classes)
    return {**found, "num_classes": classes, "classes_from": source} if found else None


def runs_to_device(batch: Any, device: Any) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(runs_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: runs_to_device(v, device) for k, v in batch.items()}
    return batch


def scan_batches(make: Callable[[], Any], *, device: str, seed: int, n: int) -> DataScan:
    """NaN/Inf in the inputs and out-of-range labels of the first ``n`` training batches."""
    from .bisect_batches import nonfinite_rows

    pipeline = make()
    scan = DataScan(batches=0, num_classes=None, classes_from="")
    with runs.deterministic():
        pipeline.setup(runs.resolve_device(device), seed)
        phase = "build: "
        try:
            state = pipeline.build()
            phase = ""
            stream = iter(pipeline.batches())
            for index in range(n):
                try:
                    batch = next(stream)
                except StopIteration:
                    break
                scan.batches += 1
                count = runs.nonfinite_count(batch)
                if count:
                    scan.nonfinite.append({"step": index, "values": count, "rows": nonfinite_rows(batch)[:20]})
                labels = labels_of(batch)
                if labels is None:
                    continue
                if scan.num_classes is None and not scan.classes_from:
                    scan.num_classes, scan.classes_from = _num_classes(pipeline, state, batch)
                if scan.num_classes is None:
                    continue
                scan.label_batches += 1
                found = out_of_range(labels, scan.num_classes)
                if found:
                    scan.labels.append({"step": index, **found})
        except Exception as exc:  # noqa: BLE001 - a data pipeline that crashes is reported, not raised
            scan.error = f"{phase}{type(exc).__name__}: {exc}"
    return scan


# ------------------------------------------------------------------------------------------------ leakage


@dataclass
class Leakage:
    available: bool
    eval_examples: int = 0
    train_examples: int = 0
    train_batches: int = 0
    keyed_by: str = ""
    overlap: int = 0  # distinct evaluation examples seen in training
    examples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "eval_examples": self.eval_examples,
                "train_examples": self.train_examples, "train_batches": self.train_batches,
                "keyed_by": self.keyed_by, "overlap": self.overlap, "examples": self.examples[:10],
                "error": self.error}


def example_keys(pipeline: Any, batch: Any) -> tuple[list[str], str]:
    """One key per example: its id when the batch carries ids, else a hash of its input row."""
    import torch

    if isinstance(batch, dict):
        for key in ID_KEYS:
            ids = batch.get(key)
            if ids is not None:
                values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
                return [f"id:{v}" for v in values], f"example ids (batch[{key!r}])"
    inputs = pipeline.inputs(batch)
    first = next(runs.tensors(inputs), None)
    if first is None or first.dim() == 0:
        return [], "nothing (no input tensor)"
    return [hashlib.blake2b(runs.tensor_bytes(row), digest_size=12).hexdigest() for row in first], \
        "content hashes of the input rows"


def check_leakage(make: Callable[[], Any], *, device: str, seed: int, n: int) -> Leakage:
    pipeline = make()
    if not callable(getattr(pipeline, "eval_batches", None)):
        return Leakage(available=False)
    result = Leakage(available=True)
    with runs.deterministic():
        pipeline.setup(runs.resolve_device(device), seed)
        try:
            where: dict[str, tuple[int, int]] = {}
            for b, batch in enumerate(pipeline.eval_batches()):
                keys, result.keyed_by = example_keys(pipeline, batch)
                for r, key in enumerate(keys):
                    where.setdefault(key, (b, r))
            result.eval_examples = len(where)
            seen: set[str] = set()
            leaked: set[str] = set()
            stream = iter(pipeline.batches())
            for step in range(n):
                try:
                    batch = next(stream)
                except StopIteration:
                    break
                result.train_batches += 1
                keys, _ = example_keys(pipeline, batch)
                for r, key in enumerate(keys):
                    seen.add(key)
                    if key in where and key not in leaked:
                        leaked.add(key)
                        if len(result.examples) < 10:
                            result.examples.append({"train_step": step, "train_row": r, "eval_batch": where[key][0],
                                                    "eval_row": where[key][1], "key": key})
            result.train_examples, result.overlap = len(seen), len(leaked)
        except Exception as exc:  # noqa: BLE001 - reported as the check's error
            result.error = f"{type(exc).__name__}: {exc}"
    return result


# ------------------------------------------------------------------------------------------------ nondeterminism


@dataclass
class Determinism:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> summary
    identical: bool | None = None
    first_difference: dict[str, Any] | None = None
    cause: str | None = None  # "hash_seed" | "data" | "compute" | None
    explanation: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "identical": self.identical, "first_difference": self.first_difference,
                "cause": self.cause, "explanation": self.explanation, "error": self.error}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """The first step where two recorded runs differ (batch content or bitwise loss), else None."""
    steps_a, steps_b = a["trace"]["steps"], b["trace"]["steps"]
    for x, y in zip(steps_a, steps_b):
        if x["batch_hash"] != y["batch_hash"]:
            return {"step": x["step"], "what": "batch", "a": x["batch_hash"], "b": y["batch_hash"]}
        if str(x["loss"]) != str(y["loss"]):
            return {"step": x["step"], "what": "loss", "a": x["loss"], "b": y["loss"]}
    if len(steps_a) != len(steps_b):
        return {"step": min(len(steps_a), len(steps_b)), "what": "length", "a": len(steps_a), "b": len(steps_b)}
    if a["trace"]["param_hash"] != b["trace"]["param_hash"]:
        return {"step": steps_a[-1]["step"] if steps_a else 0, "what": "final weights",
                "a": a["trace"]["param_hash"], "b": b["trace"]["param_hash"]}
    return None


def _record_runs(root: Path, target: str, config: dict[str, Any] | None, *, seed: int, device: str, steps: int,
                 timeout: float, hash_seeds: list[tuple[str, str]], work: Path) -> dict[str, dict[str, Any]]:
    """Run the pipeline once per (label, PYTHONHASHSEED), two at a time, each in a fresh process."""
    children = []
    for label, hash_seed in hash_seeds:
        spec = {"target": target, "root": str(root), "config": config, "seed": seed, "device": device,
                "steps": steps, "out_dir": str(work), "label": label, "timeout": timeout, "mode": "record"}
        path = work / f"spec-{label}.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        children.append((label, proc.spawn(runner.command(path), cwd=root, env=runner.child_env(hash_seed),
                                           log=work / f"{label}.log")))
    out = {}
    for label, child in children:
        try:
            code = proc.wait(child, timeout + 60)
        except KeyboardInterrupt:
            for _, other in children:
                proc.terminate(other, grace=5.0)
            raise
        if code is None:
            proc.terminate(child, grace=5.0)
        result = work / f"{label}.json"
        if result.is_file():
            out[label] = json.loads(result.read_text(encoding="utf-8"))
        else:
            tail = (work / f"{label}.log").read_text(errors="replace").strip().splitlines()[-3:]
            out[label] = {"error": f"{proc.describe_exit(code)}: {' | '.join(tail)}"}
    return out


def check_determinism(root: Path, target: str, config: dict[str, Any] | None, *, seed: int, device: str, steps: int,
                      timeout: float) -> Determinism:
    result = Determinism()
    work = Path(tempfile.mkdtemp(prefix="spml-determinism-"))
    try:
        found = _record_runs(root, target, config, seed=seed, device=device, steps=steps, timeout=timeout,
                             hash_seeds=[("hashseed-0", "0"), ("hashseed-1", "1")], work=work)
        broken = [f"{label}: {doc.get('error') or doc.get('reason')}" for label, doc in found.items()
                  if "trace" not in doc]
        broken += [f"{label}: {why}" for label, doc in found.items() if "trace" in doc
                   for why in [runs.Trace.from_dict(doc["trace"]).broken()] if why]
        if broken:
            result.error = "; ".join(broken)
            return result
        a, b = found["hashseed-0"], found["hashseed-1"]
        result.runs = {label: {"hash_seed": doc.get("hash_seed"), **(doc.get("metrics") or {}),
                               "param_hash": doc["trace"]["param_hash"]} for label, doc in found.items()}
        result.first_difference = compare(a, b)
        result.identical = result.first_difference is None
        if result.identical:
            result.explanation = f"two runs of {steps} steps (PYTHONHASHSEED 0 and 1) are bitwise identical"
            return result
        again = _record_runs(root, target, config, seed=seed, device=device, steps=steps, timeout=timeout,
                             hash_seeds=[("hashseed-0-again", "0")], work=work)["hashseed-0-again"]
        if "trace" not in again or runs.Trace.from_dict(again["trace"]).broken():
            why = again.get("error") or runs.Trace.from_dict(again["trace"]).broken()
            result.error = f"the repeat run failed: {why}"
            return result
        result.runs["hashseed-0-again"] = {"hash_seed": "0", **(again.get("metrics") or {}),
                                           "param_hash": again["trace"]["param_hash"]}
        repeat = compare(a, again)
        diff = result.first_difference
        if repeat is None:
            result.cause = "hash_seed"
            result.explanation = (f"runs differ from step {diff['step']} ({diff['what']}) when only PYTHONHASHSEED "
                                  "changes, and are identical when it is the same: the pipeline depends on Python's "
                                  "string hashing (hash() of a str, or the order of a set/dict of strings)")
        else:
            result.cause = "data" if repeat["what"] == "batch" else "compute"
            result.first_difference = repeat
            where = "the batches differ (unseeded randomness in the data pipeline)" if result.cause == "data" else \
                "the same batches give different losses (unseeded randomness or a nondeterministic op in the step)"
            result.explanation = (f"two runs with the same seed and the same PYTHONHASHSEED differ from step "
                                  f"{repeat['step']}: {where}")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
