"""A tiny real CPU training run that logs to WandB offline (tests of pytest_spml.watch.wandb_source).

    python train_wandb.py --dir DIR --run healthy [--run lr_ramp_nan] [--truth truth.json] [--pause-at K]

healthy:      a 2-layer MLP on a seeded synthetic 4-class problem, SGD lr 0.1, 300 steps: the loss falls.
lr_ramp_nan:  linear regression with the learning rate multiplied by 1.25 every step: the loss blows up to
              Inf and then NaN; logging goes on for 10 steps after the first NaN, as a real run's would.

Every step logs ``loss``, ``grad_norm``, ``lr`` and the nested ``{"train": {"acc": ...}}`` (healthy);
``eval/loss`` every 50 steps. ``--truth`` writes what was logged (run directory, steps, losses) so the
tests compare the reader against the run itself. ``--pause-at K`` prints PAUSED after step K-1 and
waits for a line on stdin before going on (a live run read while it is written).
Runs with WANDB_MODE=offline in ``--dir``; no network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch
import wandb
from torch import nn


def grad_norm(model: nn.Module) -> float:
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def healthy(log, steps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen) * 2
    labels = torch.randint(0, 4, (2048,), generator=gen)
    x = centers[labels] + torch.randn(2048, 16, generator=gen)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        idx = torch.randint(0, 2048, (64,), generator=gen)
        out = model(x[idx])
        loss = nn.functional.cross_entropy(out, labels[idx])
        opt.zero_grad()
        loss.backward()
        row = {"loss": loss.item(), "grad_norm": grad_norm(model), "lr": 0.1,
               "train": {"acc": (out.argmax(1) == labels[idx]).float().mean().item()}}
        opt.step()
        if step % 50 == 49:
            with torch.no_grad():
                row["eval/loss"] = nn.functional.cross_entropy(model(x[:256]), labels[:256]).item()
        log(step, row)


def lr_ramp_nan(log, steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=gen)
    y = x @ torch.randn(8, 1, generator=gen)
    model = nn.Linear(8, 1)
    lr = 0.01
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    after_nan = None
    for step in range(steps):
        idx = torch.randint(0, 512, (32,), generator=gen)
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        log(step, {"loss": loss.item(), "grad_norm": grad_norm(model), "lr": lr})
        opt.step()
        lr *= 1.25
        for group in opt.param_groups:
            group["lr"] = lr
        if after_nan is None and math.isnan(loss.item()):
            after_nan = step
        if after_nan is not None and step >= after_nan + 10:
            break


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--run", action="append", required=True, choices=("healthy", "lr_ramp_nan"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--truth")
    parser.add_argument("--pause-at", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    truth = {}
    for name in args.run:
        run = wandb.init(project="spml-watch", name=name, dir=args.dir, config={"run": name})
        logged = truth[name] = {"dir": os.path.dirname(run.dir), "id": run.id, "steps": [], "loss": []}

        def log(step: int, row: dict, run=run, logged=logged) -> None:
            if step == args.pause_at:
                print("PAUSED", flush=True)
                sys.stdin.readline()
            run.log(row, step=step)
            logged["steps"].append(step)
            logged["loss"].append(row["loss"])

        {"healthy": healthy, "lr_ramp_nan": lr_ramp_nan}[name](log, args.steps)
        run.finish()
    if args.truth:
        with open(args.truth, "w") as f:
            json.dump(truth, f)  # NaN / Infinity tokens, read back by json.load


if __name__ == "__main__":
    main()
