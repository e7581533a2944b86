"""The fixed evaluation: accuracy on the validation split, written to $SPML_RESULT."""

import json
import os
from pathlib import Path

import torch

import data
import model

torch.set_num_threads(1)
state = torch.load("checkpoints/model.pt", map_location="cpu", weights_only=True)
net = model.build(state["config"]["hidden"])
net.load_state_dict(state["model"])
net.eval()
features, labels = data.split("val")
with torch.inference_mode():
    accuracy = (net(features).argmax(dim=1) == labels).float().mean().item()
Path(os.environ["SPML_RESULT"]).write_text(json.dumps({"val_accuracy": accuracy}))
