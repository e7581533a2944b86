"""Train the MLP: reads top to bottom, logs every N steps, checkpoints on a cadence."""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from data.prepare import NUM_CLASSES, NUM_FEATURES, make_split
from model import MLP

parser = argparse.ArgumentParser()
parser.add_argument("--config", default="configs/train.yaml")
parser.add_argument("--max-steps", type=int, default=None, help="override the config (L1 bounds training this way)")
parser.add_argument("--out", default=".")
args = parser.parse_args()
cfg = yaml.safe_load(Path(args.config).read_text())
max_steps = args.max_steps or cfg["max_steps"]

random.seed(cfg["seed"])
np.random.seed(cfg["seed"])
torch.manual_seed(cfg["seed"])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.backends.cuda.matmul.allow_tf32 = True  # Ampere+: TF32 tensor cores for fp32 matmuls

features, labels = make_split("train")
loader = DataLoader(TensorDataset(features, labels), batch_size=cfg["batch_size"], shuffle=True, drop_last=True,
                    num_workers=cfg["num_workers"], pin_memory=device.type == "cuda",
                    persistent_workers=cfg["num_workers"] > 0)
model = MLP(NUM_FEATURES, cfg["hidden_size"], NUM_CLASSES).to(device)
if cfg["compile"]:
    model = torch.compile(model)

# Decay only matrices: biases and norm weights should not shrink towards zero.
decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
optimizer = torch.optim.AdamW(
    [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
    lr=cfg["lr"], fused=device.type == "cuda",
)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_steps)
loss_fn = torch.nn.CrossEntropyLoss()

out = Path(args.out)
(out / "runs").mkdir(parents=True, exist_ok=True)
(out / "checkpoints").mkdir(parents=True, exist_ok=True)
# spml-loop (and other supervisors) name the step log to watch in $SPML_METRICS_LOG; the default otherwise
log_path = Path(os.environ.get("SPML_METRICS_LOG") or out / "runs" / "metrics.jsonl")
log_path.parent.mkdir(parents=True, exist_ok=True)
log = open(log_path, "a")

step = 0
while step < max_steps:
    for x, y in loader:
        start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        if step % cfg["log_every"] == 0 or step == max_steps:
            record = {"step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                      "lr": scheduler.get_last_lr()[0], "step_time_s": time.perf_counter() - start}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"step {step}/{max_steps}: loss {record['loss']:.4f}")
        if step % cfg["checkpoint_every"] == 0 or step == max_steps:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "config": cfg},
                       out / "checkpoints" / "last.pt")
        if step >= max_steps:
            break
log.close()
