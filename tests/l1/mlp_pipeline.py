"""A tiny, honest L1 pipeline (an MLP classifier) and broken variants of it, for the runner's tests."""

from __future__ import annotations

import torch
from torch import nn

from pytest_spml.l1 import L1Pipeline, TrainState


class MLPPipeline(L1Pipeline):
    name = "mlp"
    eval_every = 10

    def __init__(self, dropout: float = 0.0):
        self.dropout = dropout

    def build(self) -> TrainState:
        model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Dropout(self.dropout), nn.Linear(64, 4)).to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200)
        return TrainState(model, optimizer, scheduler)

    def _data(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed({"train": 1, "val": 2}[split])
        centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 2
        labels = torch.randint(0, 4, (n,), generator=gen)
        return centers[labels] + torch.randn(n, 16, generator=gen), labels

    def batches(self):
        x, y = self._data("train", 4096)
        gen = torch.Generator().manual_seed(3)
        while True:
            index = torch.randint(0, len(x), (32,), generator=gen)
            yield x[index].to(self.device), y[index].to(self.device)

    def train_step(self, state: TrainState, batch) -> torch.Tensor:
        x, y = batch
        state.model.train()
        loss = nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        return loss.detach()

    def evaluate(self, model: nn.Module, mode: str) -> dict[str, float]:
        x, y = self._data("val", 512)
        model.eval()
        with torch.inference_mode():
            accuracy = (model(x.to(self.device)).argmax(1) == y.to(self.device)).float().mean().item()
        return {"mode": mode, "accuracy": accuracy}


class MissingFromOptimizer(MLPPipeline):
    """The first layer trains (requires_grad) but is not handed to the optimizer."""

    def build(self) -> TrainState:
        state = super().build()
        head = list(state.model[3].parameters())
        state.optimizer = torch.optim.AdamW(head, lr=3e-3)
        state.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(state.optimizer, T_max=200)
        return state


class NaNLoss(MLPPipeline):
    def train_step(self, state: TrainState, batch) -> torch.Tensor:
        if state.step >= 8:
            x, y = batch
            batch = (x * float("inf"), y)
        return super().train_step(state, batch)


class FlatScheduler(MLPPipeline):
    def train_step(self, state: TrainState, batch) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()  # scheduler.step() forgotten
        return loss.detach()


class DropoutInEval(MLPPipeline):
    def __init__(self) -> None:
        super().__init__(dropout=0.5)

    def evaluate(self, model: nn.Module, mode: str) -> dict[str, float]:
        x, y = self._data("val", 512)
        with torch.no_grad():  # model.eval() forgotten: dropout stays on
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        return {"mode": mode, "accuracy": accuracy}


class ForgetsOptimizerState(MLPPipeline):
    def save_checkpoint(self, state: TrainState, path) -> None:
        torch.save({"model": state.model.state_dict(), "step": state.step}, path)

    def load_checkpoint(self, path) -> TrainState:
        saved = torch.load(path, weights_only=True)
        state = self.build()
        state.model.load_state_dict(saved["model"])
        state.step = saved["step"]
        return state


class ExplodingButClipped(MLPPipeline):
    """Huge gradients hidden by clipping inside the user's own step: L1 must still see them."""

    def train_step(self, state: TrainState, batch) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad(set_to_none=True)
        (loss * 1e6).backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm=1.0)
        state.optimizer.step()
        state.scheduler.step()
        return loss.detach()
