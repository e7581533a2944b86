"""A tiny training run for the watchdog tests: SGD on a 1-D linear regression in pure Python.

Writes one JSONL metrics line per step to OUT/metrics.jsonl ({"step", "time", "loss"}), a pickle checkpoint every
--ckpt-every steps to OUT/checkpoints/ckpt_NNNNNN.pt (written to a .tmp name, then renamed; each save is listed in
OUT/saved.txt), its PID to OUT/pid, and resumes from --resume CKPT. Failure modes (--fail MODE at --fail-at STEP, in
the first --fail-times attempts that reach it; attempts are counted in OUT/fail-count):

  sigkill       the process kills itself with SIGKILL (an OOM kill, as the supervisor sees it)
  hang          stops logging and sleeps while alive
  disk_full     raises OSError(ENOSPC) while saving: "OSError: [Errno 28] No space left on device", exit 1
  python_error  a KeyError in user code (a bug)
  nan           the loss becomes NaN and training goes on
  corrupt_ckpt  writes a truncated checkpoint under the final name, then dies by SIGKILL (a torn save)

--fork-worker starts a worker process (like a DataLoader worker) in the same process group; its PID goes to
OUT/worker.pid.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--step-time", type=float, default=0.01)
    p.add_argument("--resume", type=Path)
    p.add_argument("--fail", default="")
    p.add_argument("--fail-at", type=int, default=-1)
    p.add_argument("--fail-times", type=int, default=1)
    p.add_argument("--fork-worker", action="store_true")
    return p.parse_args()


def should_fail(out: Path, args: argparse.Namespace, step: int) -> bool:
    if not args.fail or step != args.fail_at:
        return False
    counter = out / "fail-count"
    done = int(counter.read_text()) if counter.exists() else 0
    if done >= args.fail_times:
        return False
    counter.write_text(str(done + 1))
    return True


def save(out: Path, state: dict, *, torn: bool = False) -> Path:
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_{state['step']:06d}.pt"
    data = pickle.dumps(state)
    if torn:
        path.write_bytes(data[: len(data) // 2])
    else:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    with open(out / "saved.txt", "a") as f:
        f.write(f"{path.name} {path.stat().st_size} {os.getpid()}\n")
    return path


def write_checkpoint_on_full_disk(out: Path, state: dict) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def lookup_hyperparameter(config: dict) -> float:
    return config["momentum"]  # the bug: the key was never set


def main() -> None:
    args = parse()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "pid").write_text(str(os.getpid()))
    if args.fork_worker:
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (out / "worker.pid").write_text(str(worker.pid))
    w, b, start = 0.0, 0.0, 1
    if args.resume is not None:
        with open(args.resume, "rb") as f:
            state = pickle.load(f)
        w, b, start = state["w"], state["b"], state["step"] + 1
        print(f"resumed from {args.resume} at step {start}", flush=True)
    lr = 0.01
    metrics = open(out / "metrics.jsonl", "a")
    for step in range(start, args.steps + 1):
        rng = random.Random(step)  # the batch of a step is the same after a resume
        xs = [rng.uniform(-2, 2) for _ in range(16)]
        ys = [3.0 * x + 1.0 + rng.gauss(0, 0.1) for x in xs]
        errors = [(w * x + b) - y for x, y in zip(xs, ys)]
        loss = sum(e * e for e in errors) / len(errors)
        w -= lr * 2 * sum(e * x for e, x in zip(errors, xs)) / len(xs)
        b -= lr * 2 * sum(errors) / len(xs)
        failing = should_fail(out, args, step)
        if failing and args.fail == "nan":
            args.fail_times = 10 ** 9  # from here on every step is NaN
        if args.fail == "nan" and args.fail_at >= 0 and step >= args.fail_at and args.fail_times == 10 ** 9:
            loss = float("nan")
        metrics.write(json.dumps({"step": step, "time": time.time(), "loss": loss}) + "\n")
        metrics.flush()
        if failing and args.fail == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if failing and args.fail == "hang":
            time.sleep(600)
        if failing and args.fail == "python_error":
            lookup_hyperparameter({"lr": lr})
        if failing and args.fail == "disk_full":
            write_checkpoint_on_full_disk(out, {"step": step, "w": w, "b": b})
        if failing and args.fail == "corrupt_ckpt":
            save(out, {"step": step, "w": w, "b": b}, torn=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if step % args.ckpt_every == 0:
            save(out, {"step": step, "w": w, "b": b})
        print(f"step {step} loss {loss:.5f}", flush=True)
        time.sleep(args.step_time)
    print("done", flush=True)


if __name__ == "__main__":
    main()
