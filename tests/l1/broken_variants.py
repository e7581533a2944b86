"""The chargpt example pipeline (examples/chargpt) and deliberately broken variants of it.

Each variant subclasses the healthy ``CharGPTPipeline`` and overrides one
thing the way a real project gets it wrong; L1 must name the bug with the
right check. The example is imported from its folder (never installed) with
its generic module names (``data``, ``model``, ``train``, ``l1``) kept out of
``sys.modules`` afterwards, so they cannot shadow other tests' modules.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

import torch
from torch.nn import functional as F

from pytest_spml.l1 import L1Pipeline, TrainState

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chargpt"
_EXAMPLE_MODULES = ("data", "model", "train", "l1")


def load_example() -> dict[str, ModuleType]:
    """Import examples/chargpt's modules by path; restore ``sys.path`` and ``sys.modules`` afterwards."""
    shadowed = {name: sys.modules.pop(name) for name in _EXAMPLE_MODULES if name in sys.modules}
    sys.path.insert(0, str(EXAMPLE))
    try:
        importlib.import_module("l1")  # imports data, model and train on the way
        return {name: sys.modules[name] for name in _EXAMPLE_MODULES}
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in _EXAMPLE_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(shadowed)


_example = load_example()
train = _example["train"]
gpt = _example["model"]
CharGPTPipeline = _example["l1"].CharGPTPipeline


class LayerLeftOutOfOptimizer(CharGPTPipeline):
    """(a) The last block's MLP is trainable, but the optimizer is built from a list that leaves it out."""

    name = "chargpt: layer left out of the optimizer"
    left_out = "transformer.h.1.mlp"

    def build(self) -> TrainState:
        state = super().build()
        skipped = {id(p) for p in state.model.get_submodule(self.left_out).parameters()}
        params = [p for p in state.model.parameters() if id(p) not in skipped]
        state.optimizer = torch.optim.AdamW(params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        state.scheduler = train.build_scheduler(state.optimizer, self.cfg)
        return state


class LossGoesNaN(CharGPTPipeline):
    """(b) From the 11th step on the logits are multiplied by inf (a temperature that reached zero)."""

    name = "chargpt: loss goes NaN"
    nan_after = 10  # steps done before the logits blow up

    def train_step(self, state: TrainState, batch):
        if state.step < self.nan_after:
            return super().train_step(state, batch)
        handle = state.model.lm_head.register_forward_hook(lambda module, args, out: out * math.inf)
        try:
            return super().train_step(state, batch)
        finally:
            handle.remove()


class RunningScaleGPT(gpt.GPT):
    """GPT whose logits are divided by a running RMS kept in a buffer (like BatchNorm's running statistics)."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("logit_rms", torch.ones(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = super().forward(idx)
        if self.training:
            with torch.no_grad():
                self.logit_rms.lerp_(logits.detach().float().pow(2).mean().sqrt(), 0.1)
        return logits / self.logit_rms


class CheckpointWithoutBuffers(CharGPTPipeline):
    """(c) The model carries a buffer that matters; the checkpoint saves only ``named_parameters()``.

    The load is ``strict=False`` ("the buffer is recomputed anyway"), so nothing complains: the reloaded
    model silently runs with the buffer's initial value.
    """

    name = "chargpt: checkpoint without buffers"

    def build(self) -> TrainState:
        model = RunningScaleGPT(train.model_config(self.cfg, self.vocab_size)).to(self.device)
        optimizer = train.build_optimizer(model, self.cfg, self.device)
        return TrainState(model, optimizer, train.build_scheduler(optimizer, self.cfg))

    def save_checkpoint(self, state: TrainState, path: Path) -> None:
        torch.save({
            "model": {name: p.detach() for name, p in state.model.named_parameters()},  # buffers left behind
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "step": state.step,
            "config": asdict(self.cfg),
            "vocab": train.vocabulary(),
            "rng": train.rng_state(),
        }, path)

    def load_checkpoint(self, path: Path) -> TrainState:
        state = self.build()
        saved = torch.load(path, map_location=self.device, weights_only=True)
        state.model.load_state_dict(saved["model"], strict=False)
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        state.step = saved["step"]
        train.set_rng_state(saved["rng"])
        return state


class ResumeWithoutOptimizerState(CharGPTPipeline):
    """(c') The checkpoint holds the optimizer state, but loading it "like a fine-tune" skips it."""

    name = "chargpt: optimizer state not restored"

    def load_checkpoint(self, path: Path) -> TrainState:
        state = self.build()
        saved = train.load_checkpoint(path, state.model, None, state.scheduler)  # AdamW moments start from zero
        state.step = saved["step"]
        return state


class EvaluationWithDropoutOn(CharGPTPipeline):
    """(d) An evaluator written without ``model.eval()``: with dropout > 0 every evaluation is a different draw."""

    name = "chargpt: dropout on in evaluation"

    def evaluate(self, model: torch.nn.Module, mode: str) -> dict:
        loss_sum, tokens = 0.0, 0
        with torch.no_grad():  # no_grad, but the model stays in training mode
            for x, y in train.val_batches(self.cfg, self.device):
                logits = model(x)
                loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
                tokens += y.numel()
        return {"val_loss": loss_sum / tokens, "mode": mode}

    def evaluate_checkpoint(self, path: Path) -> dict:
        return L1Pipeline.evaluate_checkpoint(self, path)  # load, then the same (careless) evaluator


class SchedulerNeverSteps(CharGPTPipeline):
    """(e) The cosine schedule is built, but the step never calls ``scheduler.step()``."""

    name = "chargpt: scheduler never steps"

    def train_step(self, state: TrainState, batch):
        loss, _grad_norm = train.train_step(state.model, state.optimizer, None, batch, self.cfg.grad_clip)
        return loss
