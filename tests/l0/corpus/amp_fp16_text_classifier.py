"""Mixed-precision (fp16 autocast + GradScaler) text classifier, plain PyTorch, no Lightning.

L0 corpus file: a realistic script with the mistakes such scripts have in the wild.
"""
# expect-file: OBS005, OBS007
import argparse
import os
import time

import torch
import torch.nn as nn
import wandb
from torch.utils.data import DataLoader
from tqdm import tqdm

from data import ReviewsDataset, collate_batch  # local module: tokenized reviews + padding mask

VOCAB_SIZE = 30522  # bert-base-uncased WordPiece vocabulary used by ReviewsDataset
PAD_ID = 0


class AttentionClassifier(nn.Module):
    def __init__(self, d_model=256, n_heads=8, n_classes=5, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(30000, d_model, padding_idx=PAD_ID)  # expect: ADV015
        self.pos = nn.Parameter(torch.zeros(1, 512, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, n_classes)

    def forward(self, tokens, pad_mask):
        h = self.embed(tokens) + self.pos[:, :tokens.size(1)]
        attn_out, _ = self.attn(h, h, h, key_padding_mask=pad_mask)  # expect: ATT002
        h = self.norm1(h + self.drop(attn_out))
        h = self.norm2(h + self.drop(self.ff(h)))
        keep = (~pad_mask).unsqueeze(-1).type_as(h)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.classifier(pooled)


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def evaluate(model, loader, device):  # expect: ADV005
    model.eval()
    correct = total = 0
    for tokens, pad_mask, labels in loader:
        tokens, pad_mask, labels = tokens.to(device), pad_mask.to(device), labels.to(device)
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            logits = model(tokens, pad_mask)
        correct += (logits.argmax(-1) == labels).sum().item()
        total += labels.numel()
    model.train()
    return correct / total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data/reviews")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--save-every", type=int, default=1)
    args = parser.parse_args()

    device = torch.device("cuda")
    wandb.init(project="reviews-amp", config=vars(args))

    train_ds = ReviewsDataset(os.path.join(args.data_dir, "train.jsonl"))
    val_ds = ReviewsDataset(os.path.join(args.data_dir, "val.jsonl"))
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, collate_fn=collate_batch,
                              num_workers=8, pin_memory=True, persistent_workers=True, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=256, collate_fn=collate_batch, num_workers=4,  # expect: DAT003
                            pin_memory=True)

    model = AttentionClassifier().to(device)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train_loader))
    scaler = torch.cuda.amp.GradScaler()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    model = torch.compile(model)

    step = 0
    for epoch in range(args.epochs):
        model.train()
        for tokens, pad_mask, labels in tqdm(train_loader, desc=f"epoch {epoch}"):
            t0 = time.perf_counter()
            tokens = tokens.to(device, non_blocking=True)
            pad_mask = pad_mask.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)

            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                logits = model(tokens, pad_mask)
                loss = criterion(logits, labels)
                scaler.scale(loss).backward()  # expect: PRC004
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1

            wandb.log({"train/loss": loss.item(), "train/grad_norm": grad_norm.item(),  # expect: ADV003
                       "train/lr": scheduler.get_last_lr()[0], "train/step_time": time.perf_counter() - t0},
                      step=step)

        val_acc = evaluate(model, val_loader, device)
        wandb.log({"val/acc": val_acc, "epoch": epoch}, step=step)
        if (epoch + 1) % args.save_every == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "epoch": epoch}, f"ckpt_epoch{epoch}.pt")


if __name__ == "__main__":
    main()
