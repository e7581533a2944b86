"""A two-rank DDP training run for torchrun on the CPU (gloo): metrics and checkpoints from rank 0.

    torchrun --nproc_per_node 2 ddp_train.py OUT --steps N [--resume CKPT] [--fail kill|raise] [--fail-at STEP]

--fail kill: rank 1 SIGKILLs itself at --fail-at (first attempt only: an "OOM kill" of one rank).
--fail raise: rank 1 raises in user code at --fail-at (a code bug, every attempt).
"""

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--resume")
parser.add_argument("--fail", choices=("kill", "raise"))
parser.add_argument("--fail-at", type=int, default=25)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
start = 0
if args.resume:
    state = torch.load(args.resume, weights_only=True)
    model.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    start = state["step"]
(args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
marker = args.out / "killed-once"
log = open(args.out / "metrics.jsonl", "a") if rank == 0 else None
generator = torch.Generator().manual_seed(1000 * rank)
for step in range(start + 1, args.steps + 1):
    if rank == 1 and args.fail and step == args.fail_at:
        if args.fail == "raise":
            raise ValueError(f"bad shape in the user's loss at step {step}")
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    x = torch.randn(16, 8, generator=generator)
    loss = ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    time.sleep(0.02)
    if rank == 0:
        log.write(json.dumps({"step": step, "time": time.time(), "loss": loss.item()}) + "\n")
        log.flush()
        if step % 10 == 0:
            tmp = args.out / "checkpoints" / f".step{step}.tmp"
            torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
            os.replace(tmp, args.out / "checkpoints" / f"step{step:05d}.pt")
dist.destroy_process_group()
