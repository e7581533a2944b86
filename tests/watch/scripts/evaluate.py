"""A tiny evaluation for the watchdog tests: loads a checkpoint, records it, and notices two evals at once.

usage: evaluate.py CHECKPOINT OUT. Appends "CHECKPOINT" to OUT/evals.txt, or "OVERLAP CHECKPOINT" when another
evaluation holds OUT/eval.lock at the same time.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2])
lock = out / "eval.lock"
try:
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
except FileExistsError:
    with open(out / "evals.txt", "a") as f:
        f.write(f"OVERLAP {checkpoint.name}\n")
    sys.exit(1)
try:
    state = pickle.loads(checkpoint.read_bytes())
    time.sleep(0.3)
    with open(out / "evals.txt", "a") as f:
        f.write(f"{checkpoint.name}\n")
    print(f"eval step {state['step']} w {state['w']:.3f}")
finally:
    os.close(fd)
    lock.unlink()
