"""Training (Fixed): full-batch Adam on the training split, loss logged every step."""

import json
import os
from pathlib import Path

import torch

import data
import model

torch.set_num_threads(1)
torch.manual_seed(0)
config = json.loads(Path("config.json").read_text())
net = model.build(config["hidden"])
optimizer = torch.optim.Adam(net.parameters(), lr=config["lr"])
features, labels = data.split("train")
log_path = Path(os.environ.get("SPML_METRICS_LOG") or "runs/metrics.jsonl")
log_path.parent.mkdir(parents=True, exist_ok=True)
with open(log_path, "a") as log:
    for step in range(config["steps"]):
        loss = torch.nn.functional.cross_entropy(net(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.write(json.dumps({"step": step, "loss": loss.item()}) + "\n")
        log.flush()
Path("checkpoints").mkdir(exist_ok=True)
torch.save({"config": config, "model": net.state_dict()}, "checkpoints/model.pt")
