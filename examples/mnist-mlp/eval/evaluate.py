"""The fixed evaluation: full validation split, accuracy. The only source of truth."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.prepare import NUM_CLASSES, NUM_FEATURES, make_split  # noqa: E402
from model import MLP  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--checkpoint", default="checkpoints/last.pt")
parser.add_argument("--result", default=None, help="write {metric: value} JSON here")
args = parser.parse_args()

state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
model = MLP(NUM_FEATURES, state["config"]["hidden_size"], NUM_CLASSES)
model.load_state_dict(state["model"])
model.eval()
features, labels = make_split("val")
with torch.inference_mode():
    accuracy = (model(features).argmax(dim=1) == labels).float().mean().item()
result = {"val_accuracy": accuracy}
print(json.dumps(result))
if args.result:
    Path(args.result).write_text(json.dumps(result))
