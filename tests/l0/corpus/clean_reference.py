"""Clean reference GPT trainer: every L0 practice done right. L0 must report no error here.

Single GPU (`python clean_reference.py`) or DDP (`torchrun --nproc_per_node=8 clean_reference.py`).
"""
import argparse
import json
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for flag, default in [("data-dir", "data/owt"), ("out-dir", "runs/gpt"), ("resume", ""), ("vocab-size", 50304),
                          ("block-size", 1024), ("n-layer", 12), ("n-head", 12), ("n-embd", 768),
                          ("micro-batch", 16), ("accum-steps", 4), ("max-steps", 50_000), ("lr", 6e-4),
                          ("weight-decay", 0.1), ("warmup-steps", 2000), ("grad-clip", 1.0), ("num-workers", 4),
                          ("log-interval", 20), ("eval-interval", 1000), ("ckpt-interval", 2000), ("seed", 1337)]:
        p.add_argument(f"--{flag}", type=type(default), default=default)
    return p.parse_args()


class TokenDataset(Dataset):
    def __init__(self, path: str, block_size: int):
        self.data = np.memmap(path, dtype=np.uint16, mode="r")
        self.block_size = block_size

    def __len__(self) -> int:
        return (len(self.data) - 1) // self.block_size

    def __getitem__(self, i: int):
        start = i * self.block_size
        chunk = torch.from_numpy(self.data[start:start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.tok.weight = self.head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]       # matmul weights and embeddings
    no_decay = [p for p in params if p.dim() < 2]     # biases and norm gains
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, max_batches: int = 50) -> float:
    model.eval()
    losses = []
    for i, (x, y) in enumerate(loader):
        if i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = model(x)
        losses.append(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()))
    model.train()
    return torch.stack(losses).mean().item()


def main() -> None:
    args = parse_args()
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group(backend="nccl")
    rank = dist.get_rank() if distributed else 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    seed_everything(args.seed + rank)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    train_ds = TokenDataset(os.path.join(args.data_dir, "train.bin"), args.block_size)
    val_ds = TokenDataset(os.path.join(args.data_dir, "val.bin"), args.block_size)
    sampler = DistributedSampler(train_ds, shuffle=True) if distributed else None
    train_loader = DataLoader(train_ds, batch_size=args.micro_batch, shuffle=(sampler is None), sampler=sampler,
                              num_workers=args.num_workers, pin_memory=True, persistent_workers=True,
                              drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=args.micro_batch, shuffle=False, num_workers=args.num_workers,
                            pin_memory=True, persistent_workers=True)

    model = GPT(args.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd).to(device)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup_steps))
    step = 0
    if args.resume:
        state = torch.load(args.resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
    raw_model = model
    if distributed:
        model = DDP(model, device_ids=[local_rank])
    model = torch.compile(model)

    os.makedirs(args.out_dir, exist_ok=True)
    log = open(os.path.join(args.out_dir, "metrics.jsonl"), "a") if rank == 0 else None
    pbar = tqdm(total=args.max_steps, initial=step, disable=rank != 0)
    epoch, micro, t0 = 0, 0, time.perf_counter()
    running_loss = torch.zeros((), device=device)
    model.train()
    while step < args.max_steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                logits = model(x)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) / args.accum_steps
            loss.backward()
            running_loss += loss.detach()
            micro += 1
            if micro % args.accum_steps != 0:
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            pbar.update(1)

            if step % args.log_interval == 0 and rank == 0:
                torch.cuda.synchronize()
                dt = (time.perf_counter() - t0) / args.log_interval
                record = {"step": step, "loss": running_loss.item() / args.log_interval,
                          "grad_norm": grad_norm.item(), "lr": scheduler.get_last_lr()[0], "step_time_s": dt,
                          "tokens_per_s": args.micro_batch * args.accum_steps * args.block_size / dt}
                log.write(json.dumps(record) + "\n")
                log.flush()
                pbar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            if step % args.log_interval == 0:
                running_loss.zero_()
                t0 = time.perf_counter()
            if step % args.eval_interval == 0 and rank == 0:
                val_loss = evaluate(model, val_loader, device)
                log.write(json.dumps({"step": step, "val_loss": val_loss}) + "\n")
            if step % args.ckpt_interval == 0 and rank == 0:
                torch.save({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "step": step},
                           os.path.join(args.out_dir, f"ckpt_{step:07d}.pt"))
            if step >= args.max_steps:
                break
        epoch += 1

    pbar.close()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
