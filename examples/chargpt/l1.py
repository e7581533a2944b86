"""The chargpt training pipeline as pytest-spml L1 drives it.

Every hook calls the project's own code: ``train.build`` for the model,
optimizer and scheduler, ``data.get_batch`` for batches, ``train.train_step``
for the step, ``train.evaluate`` / ``train.evaluate_checkpoint`` for the one
evaluator core, and ``train.save_checkpoint`` / ``train.load_checkpoint`` for
checkpoints. L1 therefore validates exactly what ``python train.py`` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from data import get_batch, vocabulary
from pytest_spml.l1 import L1Pipeline, TrainState
from train import (
    TrainConfig,
    build,
    evaluate,
    evaluate_checkpoint,
    load_checkpoint,
    save_checkpoint,
    train_step,
    val_batches,
)

# L1 trains for minutes, not for the full schedule: evaluate often enough that the cadence is exercised.
L1_CONFIG = TrainConfig(eval_interval=20)


class CharGPTPipeline(L1Pipeline):
    name = "chargpt"

    def __init__(self, cfg: TrainConfig | None = None):
        self.cfg = cfg or replace(L1_CONFIG)
        self.eval_every = self.cfg.eval_interval
        self.tokens_per_sample = self.cfg.block_size
        self.vocab_size = len(vocabulary())
        self.seed = self.cfg.seed

    def setup(self, device: torch.device, seed: int) -> None:
        super().setup(device, seed)
        self.seed = seed

    def build(self) -> TrainState:
        model, optimizer, scheduler = build(self.cfg, self.vocab_size, self.device)
        return TrainState(model, optimizer, scheduler)

    def batches(self) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield get_batch("train", self.cfg.batch_size, self.cfg.block_size, generator, self.device)

    def train_step(self, state: TrainState, batch: Any) -> torch.Tensor:
        loss, _grad_norm = train_step(state.model, state.optimizer, state.scheduler, batch, self.cfg.grad_clip)
        return loss

    def evaluate(self, model: torch.nn.Module, mode: str) -> dict[str, Any]:
        return evaluate(model, val_batches(self.cfg, self.device), mode)

    def evaluate_checkpoint(self, path: Path) -> dict[str, Any]:
        return evaluate_checkpoint(path, self.device, batch_size=self.cfg.batch_size)

    def save_checkpoint(self, state: TrainState, path: Path) -> None:
        save_checkpoint(path, state.model, state.optimizer, state.scheduler, state.step, self.cfg)

    def load_checkpoint(self, path: Path) -> TrainState:
        state = self.build()
        saved = load_checkpoint(path, state.model, state.optimizer, state.scheduler)
        state.step = saved["step"]
        return state
