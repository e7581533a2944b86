"""Train the character-level GPT on the bundled corpus, nanoGPT style.

    python train.py                                  # defaults below; CPU or CUDA, whichever is here
    python train.py --max-iters 500 --out out/short  # a short run
    python train.py --resume out/ckpt.pt             # continue a run from its checkpoint
    python train.py --from-checkpoint out/ckpt.pt    # evaluate a checkpoint and exit (same core as evaluate.py)

One JSON line per ``--log-interval`` steps goes to ``<out>/log.jsonl`` (loss,
grad norm, learning rate, step time, tokens/s), one per evaluation (every
``--eval-interval`` steps, through the single evaluator core ``evaluate()``),
and ``<out>/ckpt.pt`` is written every ``--ckpt-interval`` steps and at the end.

The pieces other entry points reuse live here as functions: ``build`` (model,
AdamW with decay groups, cosine schedule), ``train_step`` (one optimizer step),
``evaluate`` (the evaluator core, in-memory or from a checkpoint),
``save_checkpoint`` / ``load_checkpoint`` and ``evaluate_checkpoint``. evaluate.py
and the L1 pipeline (l1.py) call them; nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import torch
from torch.nn import functional as F

from data import eval_batches, get_batch, vocabulary
from model import GPT, GPTConfig


@dataclass
class TrainConfig:
    # model (GPTConfig fields; vocab_size comes from the corpus)
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.1
    bias: bool = True
    # optimisation
    batch_size: int = 32
    learning_rate: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    warmup_iters: int = 20
    max_iters: int = 2000  # also the cosine decay horizon
    # cadence
    log_interval: int = 10
    eval_interval: int = 100
    eval_batches: int = 0  # evaluation batches per evaluation; 0 = the whole validation split
    ckpt_interval: int = 250
    # system
    seed: int = 1337
    compile: bool = False


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)


def lr_factor(it: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr`` at ``max_iters`` (a multiple of ``learning_rate``)."""
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.max_iters:
        return cfg.min_lr / cfg.learning_rate
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return (cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)) / cfg.learning_rate


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; matrices (and embeddings) decay, biases and LayerNorm weights do not. Fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))


def build(cfg: TrainConfig, vocab_size: int, device: torch.device) -> tuple[GPT, torch.optim.Optimizer, Any]:
    """A freshly initialised model on ``device``, its optimizer and LR scheduler."""
    model = GPT(model_config(cfg, vocab_size)).to(device)
    optimizer = build_optimizer(model, cfg, device)
    return model, optimizer, build_scheduler(optimizer, cfg)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               batch: tuple[torch.Tensor, torch.Tensor], grad_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step: forward (bf16 autocast on CUDA), backward, clip, step, schedule.

    Returns the (detached) loss and the gradient norm before clipping, both as tensors: reading them
    with ``.item()`` synchronises with the GPU, so the caller does it only when it logs.
    """
    x, y = batch
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = model(x)
    loss = loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach(), grad_norm


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], mode: str) -> dict[str, Any]:
    """The evaluator core: mean loss, bits per character and next-character accuracy over ``batches``.

    ``mode`` says how the model got here ("in-memory" during training, "checkpoint" from a file); it is
    reported with the metrics and named in any error. The model is put in eval mode (no dropout) and
    returned to the mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        loss_sum, correct, tokens = 0.0, 0, 0
        for x, y in batches:
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                                        reduction="sum").item()
            correct += (logits.argmax(dim=-1) == y).sum().item()
            tokens += y.numel()
        if tokens == 0:
            raise ValueError("no evaluation batches")
    except Exception as exc:
        raise RuntimeError(f"{mode} evaluation failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if was_training:
            model.train()
    val_loss = loss_sum / tokens
    return {"val_loss": val_loss, "val_bpc": val_loss / math.log(2), "val_accuracy": correct / tokens,
            "tokens": tokens, "mode": mode}


def val_batches(cfg: TrainConfig, device: torch.device, split: str = "val"):
    return eval_batches(split, cfg.batch_size, cfg.block_size, cfg.eval_batches or None, device)


# ---------------------------------------------------------------- seeds and checkpoints


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (when installed) and torch's global generators."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def rng_state() -> dict[str, Any]:
    """Every global random generator a run may draw from, in a form ``torch.load(weights_only=True)`` accepts."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    step: int, cfg: TrainConfig, data_generator: torch.Generator | None = None) -> None:
    """Everything a resume needs: weights and buffers, optimizer and scheduler state, step, RNGs, config, vocab."""
    torch.save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": step,
        "config": asdict(cfg),
        "vocab": vocabulary(),
        "rng": rng_state(),
        "data_rng": data_generator.get_state() if data_generator is not None else None,
    }, path)


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, restore_rng: bool = True) -> dict[str, Any]:
    """Load ``path`` into freshly built objects (strictly: every key must match) and restore the RNGs."""
    device = next(model.parameters()).device
    saved = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(saved["model"])
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and saved["scheduler"] is not None:
        scheduler.load_state_dict(saved["scheduler"])
    if restore_rng:
        set_rng_state(saved["rng"])
    return saved


def evaluate_checkpoint(path: str | Path, device: torch.device, split: str = "val",
                        batch_size: int | None = None) -> dict[str, Any]:
    """The checkpoint entry to the evaluator core: rebuild the model from the saved config, load, evaluate."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        cfg = TrainConfig(**saved["config"])
        if batch_size:
            cfg.batch_size = batch_size
        model = GPT(model_config(cfg, len(saved["vocab"]))).to(device)
        model.load_state_dict(saved["model"])
    except Exception as exc:
        raise RuntimeError(f"checkpoint evaluation failed ({path}): {type(exc).__name__}: {exc}") from exc
    return evaluate(model, val_batches(cfg, device, split), mode="checkpoint")


# ---------------------------------------------------------------- the script


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description="Train a character-level GPT on the bundled corpus.")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), type(f.default))
            parser.add_argument(flag, type=kind, default=f.default)
    parser.add_argument("--out", default="out", help="directory for log.jsonl and ckpt.pt")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--resume", default=None, metavar="CKPT", help="continue training from this checkpoint")
    parser.add_argument("--from-checkpoint", default=None, metavar="CKPT",
                        help="evaluate this checkpoint with the evaluator core and exit")
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    return cfg, args


def main(argv: list[str] | None = None) -> None:
    cfg, args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    if args.from_checkpoint:
        metrics = evaluate_checkpoint(args.from_checkpoint, device, batch_size=cfg.batch_size)
        print(json.dumps(metrics))
        return

    seed_everything(cfg.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any fp32 matmul left outside autocast
    torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, optimizer, scheduler = build(cfg, len(vocabulary()), device)
    data_generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if args.resume:
        saved = load_checkpoint(args.resume, model, optimizer, scheduler)
        step = saved["step"]
        if saved["data_rng"] is not None:
            data_generator.set_state(saved["data_rng"])
        print(f"resumed from {args.resume} at step {step}")
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    tokens_per_step = cfg.batch_size * cfg.block_size
    print(f"{raw_model.num_params() / 1e3:.1f}K parameters, vocab {len(vocabulary())}, {tokens_per_step} tokens/step, "
          f"device {device}")

    log = open(out / "log.jsonl", "a")
    while step < cfg.max_iters:
        t0 = time.perf_counter()
        batch = get_batch("train", cfg.batch_size, cfg.block_size, data_generator, device)
        loss, grad_norm = train_step(model, optimizer, scheduler, batch, cfg.grad_clip)
        step += 1

        if step % cfg.log_interval == 0 or step == cfg.max_iters:
            loss_value = loss.item()  # synchronises with the GPU, so the step time below is honest
            step_time = time.perf_counter() - t0
            record = {"step": step, "loss": loss_value, "grad_norm": grad_norm.item(),
                      "lr": scheduler.get_last_lr()[0], "step_time_s": step_time,
                      "tokens_per_s": tokens_per_step / step_time}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"step {step}/{cfg.max_iters}: loss {loss_value:.4f}, grad norm {record['grad_norm']:.3f}, "
                  f"lr {record['lr']:.2e}, {step_time * 1000:.1f} ms")

        if step % cfg.eval_interval == 0 or step == cfg.max_iters:
            metrics = evaluate(model, val_batches(cfg, device), mode="in-memory")
            log.write(json.dumps({"step": step, **metrics}) + "\n")
            log.flush()
            print(f"step {step}: val loss {metrics['val_loss']:.4f}, {metrics['val_bpc']:.3f} bits/char, "
                  f"accuracy {metrics['val_accuracy']:.3f}")

        if step % cfg.ckpt_interval == 0 or step == cfg.max_iters:
            save_checkpoint(out / "ckpt.pt", raw_model, optimizer, scheduler, step, cfg, data_generator)
            print(f"step {step}: saved {out / 'ckpt.pt'}")
    log.close()


if __name__ == "__main__":
    main()
