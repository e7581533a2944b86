"""A deterministic synthetic classification task: 4 Gaussian blobs in 16-D."""

from __future__ import annotations

import torch

NUM_FEATURES = 16
NUM_CLASSES = 4


def make_split(split: str, n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    # One generator per split, so train and validation never share examples.
    seed = {"train": 1234, "val": 5678}[split]
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(NUM_CLASSES, NUM_FEATURES, generator=torch.Generator().manual_seed(42)) * 2.0
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    features = centers[labels] + torch.randn(n, NUM_FEATURES, generator=gen) * 1.5
    return features, labels
