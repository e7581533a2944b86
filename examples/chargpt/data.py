"""Character-level data: the bundled corpus, its vocabulary, a fixed train/val split and batches.

The corpus (data/corpus.txt, see data/README.md) is small enough to hold in
memory as one int64 tensor. The vocabulary is the sorted set of its characters;
the first 90% of the text trains, the last 10% validates (a contiguous split:
no validation text leaks into training windows). Training batches are random
windows drawn from an explicit ``torch.Generator``, so their order depends on
that generator's seed alone; evaluation batches are the consecutive,
non-overlapping windows of a split, the same every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch

CORPUS = Path(__file__).resolve().parent / "data" / "corpus.txt"
TRAIN_FRACTION = 0.9


@lru_cache(maxsize=None)
def load_text(path: str = str(CORPUS)) -> str:
    return Path(path).read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def vocabulary(path: str = str(CORPUS)) -> str:
    """Every character of the corpus, sorted: the character at index i is token i."""
    return "".join(sorted(set(load_text(path))))


def encode(text: str, chars: str | None = None) -> list[int]:
    stoi = {ch: i for i, ch in enumerate(chars or vocabulary())}
    return [stoi[ch] for ch in text]


def decode(ids: list[int], chars: str | None = None) -> str:
    itos = chars or vocabulary()
    return "".join(itos[i] for i in ids)


@lru_cache(maxsize=None)
def _splits(path: str = str(CORPUS)) -> dict[str, torch.Tensor]:
    ids = torch.tensor(encode(load_text(path), vocabulary(path)), dtype=torch.long)
    n = int(TRAIN_FRACTION * len(ids))
    return {"train": ids[:n], "val": ids[n:]}


def split(name: str) -> torch.Tensor:
    """The token ids of ``"train"`` or ``"val"`` (a CPU tensor; do not modify it)."""
    try:
        return _splits()[name]
    except KeyError:
        raise ValueError(f"unknown split {name!r}: use 'train' or 'val'") from None


def _to(x: torch.Tensor, y: torch.Tensor, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if device is None:
        return x, y
    device = torch.device(device)
    if device.type == "cuda":  # pinned host memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def get_batch(split_name: str, batch_size: int, block_size: int, generator: torch.Generator,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``split_name``: inputs and next-character targets, (B, T) each."""
    data = split(split_name)
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix.tolist()])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix.tolist()])
    return _to(x, y, device)


def eval_batches(split_name: str, batch_size: int, block_size: int, max_batches: int | None = None,
                 device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The consecutive, non-overlapping windows of ``split_name`` in order (the last partial batch included)."""
    data = split(split_name)
    starts = list(range(0, len(data) - block_size, block_size))
    chunks = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    for chunk in chunks[:max_batches] if max_batches else chunks:
        x = torch.stack([data[i:i + block_size] for i in chunk])
        y = torch.stack([data[i + 1:i + 1 + block_size] for i in chunk])
        yield _to(x, y, device)
