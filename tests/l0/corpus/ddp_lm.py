"""DistributedDataParallel language-model trainer (torchrun --nproc_per_node=8 ddp_lm.py).

L0 corpus file: a realistic script with the mistakes such scripts have in the wild.
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


class TokenDataset(Dataset):
    def __init__(self, path, seq_len):
        self.tokens = np.load(path, mmap_mode="r")
        self.seq_len = seq_len

    def __len__(self):
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, i):
        chunk = torch.from_numpy(self.tokens[i * self.seq_len:(i + 1) * self.seq_len + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class TransformerLM(nn.Module):
    def __init__(self, vocab_size, d_model=512, n_heads=8, n_layers=6, max_len=1024):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.1,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, idx):
        T = idx.size(1)
        h = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        h = self.encoder(h, mask=nn.Transformer.generate_square_subsequent_mask(T, device=h.device))  # expect: ATT003
        return self.head(h)


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--train", default="data/train.npy")
    p.add_argument("--val", default="data/val.npy")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("--save-every", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


@torch.no_grad()
def evaluate(model, loader, device):
    model.eval()  # expect: ADV006
    total, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count


def main():
    args = parse_args()
    dist.init_process_group(backend="nccl")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ["LOCAL_RANK"])
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)

    model = TransformerLM(args.vocab_size).cuda()  # expect: DEV001
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    model = DDP(model, device_ids=[local_rank])
    torch.backends.cuda.matmul.allow_tf32 = True

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, fused=True)
    scaler = torch.cuda.amp.GradScaler()  # expect: PRC002

    train_set = TokenDataset(args.train, args.seq_len)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True)  # expect: DAT006
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                              pin_memory=True, persistent_workers=True, drop_last=True)
    val_loader = DataLoader(TokenDataset(args.val, args.seq_len), batch_size=args.batch_size,
                            num_workers=2, pin_memory=True, persistent_workers=True)
    total_steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total_steps,
                                                    pct_start=0.05)
    model = torch.compile(model)

    step = 0
    model.train()
    log = open(f"metrics_rank{rank}.jsonl", "a") if rank == 0 else None
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for x, y in train_loader:
            # the model went to the current device (cuda:0) before set_device: every rank but 0 mismatches
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # expect: DEV003
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(x)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1

            if rank == 0 and step % args.log_interval == 0:
                dt = (time.perf_counter() - t0) / args.log_interval
                t0 = time.perf_counter()
                record = {"step": step, "epoch": epoch, "loss": loss.item(), "grad_norm": grad_norm.item(),
                          "lr": scheduler.get_last_lr()[0],
                          "tokens_per_s": args.batch_size * args.seq_len * world_size / dt}
                log.write(json.dumps(record) + "\n")
                log.flush()
                print(f"epoch {epoch} step {step} loss {record['loss']:.4f} {record['tokens_per_s']:.0f} tok/s")

        if rank == 0:
            val_loss = evaluate(model, val_loader, device)
            print(f"epoch {epoch}: val loss {val_loss:.4f}")
            if (epoch + 1) % args.save_every == 0:
                torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch},
                           f"checkpoint_{epoch:03d}.pt")
        dist.barrier()

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
