"""Small real CPU pipelines with planted causes, written into temporary projects by the diagnose tests.

One template, a four-class Gaussian-blob classifier (a 2-layer MLP, SGD with
momentum), trains to a falling loss in a few dozen steps on a CPU. Each test
plants one defect in its own copy: a NaN in one batch, a sign flip committed
in the middle of a git history, a learning rate raised in the config, the
evaluation split cut from the training data, a label map built from a set of
strings (its order follows PYTHONHASHSEED).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

TEMPLATE = '''\
"""A tiny classifier as an L1 pipeline (diagnose test fixture)."""

import torch
from torch import nn

from pytest_spml.l1 import L1Pipeline, TrainState

CORRUPT_STEP = {corrupt_step}  # a batch whose inputs hold a NaN (None: clean data)
BAD_LABEL_STEP = {bad_label_step}  # a batch with a label outside the 4 classes (None: clean labels)
OUTLIER_STEP = {outlier_step}  # a batch with every label shifted: finite, but its loss spikes (None: none)
LEAK = {leak}  # evaluation examples cut from the training data
CLASS_NAMES = ["cat", "dog", "bird", "fish"]


def label_map():
    {label_map}


class Pipeline(L1Pipeline):
    name = "blobs"

    def __init__(self, lr=0.05, hidden=16, batch_size=32):
        self.lr, self.hidden, self.batch_size = lr, hidden, batch_size

    def _data(self, split, n):
        gen = torch.Generator().manual_seed({{"train": 1, "val": 2}}[split])
        centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 2
        names = [CLASS_NAMES[i] for i in torch.randint(0, 4, (n,), generator=gen).tolist()]
        mapping = label_map()
        y = torch.tensor([mapping[name] for name in names])
        x = centers[torch.tensor([CLASS_NAMES.index(name) for name in names])] + torch.randn(n, 8, generator=gen)
        return x, y

    def build(self):
        model = nn.Sequential(nn.Linear(8, self.hidden), nn.Tanh(), nn.Linear(self.hidden, 4)).to(self.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
        return TrainState(model, optimizer)

    def batches(self):
        x, y = self._data("train", 1024)
        gen = torch.Generator().manual_seed(3)
        step = 0
        while True:
            index = torch.randint(0, len(x), (self.batch_size,), generator=gen)
            inputs = x[index].clone()
            labels = y[index].clone()
            if CORRUPT_STEP is not None and step == CORRUPT_STEP:
                inputs[5, 2] = float("nan")
            if BAD_LABEL_STEP is not None and step == BAD_LABEL_STEP:
                labels[7] = 4
            if OUTLIER_STEP is not None and step == OUTLIER_STEP:
                labels = (labels + 1) % 4
            yield inputs.to(self.device), labels.to(self.device)
            step += 1

    def train_step(self, state, batch):
        x, y = batch
        state.model.train()
        loss = nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad(set_to_none=True)
        {backward}
        state.optimizer.step()
        return loss.detach()

    def eval_batches(self):
        x, y = self._data("train", 1024) if LEAK else self._data("val", 256)
        for start in range(0, 256, 64):
            yield x[start:start + 64].to(self.device), y[start:start + 64].to(self.device)

    def evaluate(self, model, mode):
        model.eval()
        with torch.inference_mode():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in self.eval_batches())
        return {{"mode": mode, "accuracy": correct / 256}}
'''

STABLE_LABELS = "return {name: i for i, name in enumerate(CLASS_NAMES)}"
# the bug: a set of strings iterates in an order that depends on PYTHONHASHSEED
HASHED_LABELS = "return {name: i for i, name in enumerate(set(CLASS_NAMES))}"
GOOD_BACKWARD = "loss.backward()"
SIGN_FLIP = "(-loss).backward()  # refactor: 'maximise the log-likelihood'"


def pipeline_source(*, corrupt_step: int | None = None, bad_label_step: int | None = None,
                    outlier_step: int | None = None, leak: bool = False, hashed_labels: bool = False,
                    sign_flip: bool = False) -> str:
    return TEMPLATE.format(corrupt_step=corrupt_step, bad_label_step=bad_label_step, outlier_step=outlier_step,
                           leak=leak,
                           label_map=HASHED_LABELS if hashed_labels else STABLE_LABELS,
                           backward=SIGN_FLIP if sign_flip else GOOD_BACKWARD)


def write_pipeline(folder: Path, module: str, **plants: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{module}.py"
    path.write_text(pipeline_source(**plants))  # type: ignore[arg-type]
    return path


DRIVER = '''\
"""Train the pipeline the way a user's run would: a JSONL log and a checkpoint every {every} steps."""
import json, math, sys
from pathlib import Path

import torch

sys.path.insert(0, {folder!r})
from {module} import Pipeline

pipeline = Pipeline()
pipeline.setup(torch.device("cpu"), 0)
state = pipeline.build()
ckpt = Path({ckpt!r})
ckpt.mkdir(parents=True, exist_ok=True)
with open({log!r}, "w") as log:
    for step, batch in zip(range({steps}), pipeline.batches()):
        loss = float(pipeline.train_step(state, batch))
        state.step += 1
        log.write(json.dumps({{"step": step, "loss": loss if math.isfinite(loss) else str(loss)}}) + "\\n")
        if state.step % {every} == 0:
            pipeline.save_checkpoint(state, ckpt / f"ckpt_{{state.step:04d}}.pt")
'''


def driver_source(folder: Path, module: str, log: Path, ckpt: Path, steps: int, every: int) -> str:
    return textwrap.dedent(DRIVER.format(folder=str(folder), module=module, log=str(log), ckpt=str(ckpt),
                                         steps=steps, every=every))


def write_config(path: Path, values: dict) -> Path:
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    return path
