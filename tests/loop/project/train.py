"""Training (Fixed): fit the model, log every step, save the weights."""

import json
import os
import time
from pathlib import Path

import data
import model

config = json.loads(Path("config.json").read_text())
metrics = Path(os.environ.get("SPML_METRICS_LOG") or "runs/metrics.jsonl")
metrics.parent.mkdir(parents=True, exist_ok=True)

with open(metrics, "a") as log_file:
    def log(step, loss):
        log_file.write(json.dumps({"step": step, "loss": loss}) + "\n")
        log_file.flush()
        print(f"step={step} loss={loss}", flush=True)
        time.sleep(config.get("step_sleep", 0.0))

    w, b = model.fit(data.train(), config, log)

Path("checkpoints").mkdir(exist_ok=True)
Path("checkpoints/model.json").write_text(json.dumps({"w": w, "b": b}))
print("saved checkpoints/model.json")
