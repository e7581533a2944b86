"""Evaluate a checkpoint: the checkpoint-based entry to the same evaluator core training uses.

    python evaluate.py --checkpoint out/ckpt.pt                   # validation loss, bits/char, accuracy (JSON)
    python evaluate.py --checkpoint out/ckpt.pt --sample 300      # ... and 300 sampled characters
    python evaluate.py --checkpoint out/ckpt.pt --result out/eval.json

It rebuilds the model from the configuration saved in the checkpoint and runs
``train.evaluate`` in ``"checkpoint"`` mode; training runs the same function
in ``"in-memory"`` mode, so the two agree on the same weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from data import decode, encode
from model import GPT
from train import TrainConfig, evaluate_checkpoint, model_config


def sample(checkpoint: str, device: torch.device, num_chars: int, prompt: str, seed: int) -> str:
    saved = torch.load(checkpoint, map_location=device, weights_only=True)
    cfg = TrainConfig(**saved["config"])
    model = GPT(model_config(cfg, len(saved["vocab"]))).to(device)
    model.load_state_dict(saved["model"])
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([encode(prompt, saved["vocab"])], dtype=torch.long, device=device)
    out = model.generate(idx, num_chars, temperature=0.8, top_k=20, generator=generator)
    return decode(out[0].tolist(), saved["vocab"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a chargpt checkpoint.")
    parser.add_argument("--checkpoint", default="out/ckpt.pt")
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: the one saved in the checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--result", default=None, help="also write the metrics as JSON here")
    parser.add_argument("--sample", type=int, default=0, metavar="N", help="print N sampled characters")
    parser.add_argument("--prompt", default="Return the ")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    metrics = evaluate_checkpoint(args.checkpoint, device, split=args.split, batch_size=args.batch_size)
    print(json.dumps(metrics))
    if args.result:
        Path(args.result).write_text(json.dumps(metrics, indent=2) + "\n")
    if args.sample:
        print(sample(args.checkpoint, device, args.sample, args.prompt, args.seed))


if __name__ == "__main__":
    main()
