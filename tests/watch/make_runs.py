"""Regenerate the watchdog's fixture logs (tests/watch/runs/*.jsonl) from real, short CPU training runs.

    python tests/watch/make_runs.py            # all runs, deterministic
    python tests/watch/make_runs.py amp_overflow --wall-clock

Each run trains a tiny model with torch on CPU for a few hundred steps (a few
seconds) and logs one JSON object per optimizer step: step, time, loss,
grad_norm (the global L2 norm of the gradients, before clipping in the run that
clips), lr, step_time_s, and val_loss every few steps where the failure needs
it (logged as its own record at the step, as most trainers do).
Losses, gradient norms and learning rates are the real values of the run
(single-threaded, seeded, so regeneration gives the same numbers on the same
torch build). The clock is simulated so the files are byte-identical on every
regeneration: ``time`` starts at 2023-11-14 22:13:20 UTC and advances by a
nominal step time with 5% seeded jitter (plus a nominal evaluation time);
``--wall-clock`` records real ``time.time()`` and measured step times instead.

The AMP run is real mixed precision: ``torch.autocast("cpu", dtype=float16)``
with ``torch.amp.GradScaler("cpu")``, started at a loss scale high enough that
fp16 gradients overflow: on those steps the unscaled grad norm is Inf, the
scaler skips the step and halves the scale, and the loss stays finite. The
logged ``loss_scale`` is the scale after ``scaler.update()``. (Should a torch
build lack CPU float16 autocast, the run falls back to GradScaler semantics
by hand: every ``growth_interval`` steps without overflow the scale doubles,
and when ``scale x grad_norm`` exceeds the float16 maximum the step is skipped,
the grad norm logged as Inf and the scale halved; the manifest says which.)

NaN and Inf are written as ``NaN`` / ``Infinity`` / ``-Infinity``, as Python's
``json`` does; ``manifest.json`` describes every run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

RUNS = Path(__file__).resolve().parent / "runs"
T0 = 1_700_000_000.0  # simulated clock start (Unix time)
CLASSES = 10
FEATURES = 32
FP16_MAX = 65504.0


def _num(value: float, digits: int = 5) -> float:
    value = float(value)
    return value if not math.isfinite(value) or value == 0 else float(f"{value:.{digits}g}")


class Log:
    """One JSONL log with a simulated (deterministic) or wall clock."""

    def __init__(self, name: str, nominal_step_s: float, seed: int, wall_clock: bool, eval_s: float = 0.0):
        self.name, self.nominal, self.wall = name, nominal_step_s, wall_clock
        self.eval_s = eval_s
        self.rng = random.Random(seed)
        self.clock = time.time() if wall_clock else T0
        self.rows: list[dict[str, Any]] = []
        self._started = time.perf_counter()

    def step(self, step: int, measured_s: float, **values: float) -> None:
        if self.wall:
            duration = measured_s
            self.clock = time.time()
        else:
            duration = self.nominal * max(0.5, 1 + 0.05 * self.rng.gauss(0, 1))
            self.clock += duration
        row: dict[str, Any] = {"step": step, "time": round(self.clock, 3)}
        row.update({k: _num(v, 12 if k == "loss_scale" else 5) for k, v in values.items()})  # scales: exact
        row["step_time_s"] = _num(duration, 4)
        self.rows.append(row)

    def eval(self, step: int, **values: float) -> None:
        """An evaluation, logged as its own record at the same step (as most trainers do)."""
        if not self.wall:
            self.clock += self.eval_s
        else:
            self.clock = time.time()
        row: dict[str, Any] = {"step": step, "time": round(self.clock, 3)}
        row.update({k: _num(v) for k, v in values.items()})
        self.rows.append(row)

    def write(self) -> Path:
        RUNS.mkdir(parents=True, exist_ok=True)
        path = RUNS / f"{self.name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for row in self.rows:
                handle.write(json.dumps(row, separators=(",", ":")) + "\n")
        return path


# ----------------------------------------------------------------------------------------------------------------
# data


def teacher_task(seed: int) -> Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """A learnable 10-class problem: labels are the argmax of a fixed random teacher MLP."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(FEATURES, 64, generator=g) / math.sqrt(FEATURES)
    w2 = torch.randn(64, CLASSES, generator=g) / math.sqrt(64)

    def sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, FEATURES, generator=gen)
        y = (torch.tanh(x @ w1) @ w2).argmax(1)
        return x, y

    return sample


def student(hidden: int = 128, depth: int = 1) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(FEATURES, hidden), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, CLASSES))
    return nn.Sequential(*layers)


def warmup_cosine(step: int, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_linear(step: int, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, 1 - (step - warmup) / max(1, total - warmup))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _val_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        loss = nn.functional.cross_entropy(model(x), y).item()
    model.train()
    return loss


def global_grad_norm(model: nn.Module) -> float:
    """The global L2 norm of the gradients, grads untouched (as a logger computes it; Inf/NaN kept)."""
    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                 if p.grad is not None])).item()


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                clip: float | None = None) -> tuple[float, float, float]:
    """One step; grad_norm is the norm before clipping (``clip_grad_norm_``'s return value when clipping)."""
    start = time.perf_counter()
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is None:
        grad_norm = global_grad_norm(model)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
    optimizer.step()
    return loss.item(), grad_norm, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------
# runs (every one is the first few hundred steps of a planned 2,000-step run)

PLANNED_STEPS = 2000


def healthy_sgd(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(1)
    sample = teacher_task(0)
    gen = torch.Generator().manual_seed(11)
    xv, yv = sample(2048, torch.Generator().manual_seed(12))
    model = student()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    log = Log("healthy_sgd", 0.12, seed=101, wall_clock=wall, eval_s=0.8)
    for step in range(300):
        lr = warmup_cosine(step, 0.01, 20, PLANNED_STEPS)
        set_lr(optimizer, lr)
        x, y = sample(64, gen)
        loss, grad_norm, took = _train_step(model, optimizer, x, y)
        log.step(step, took, loss=loss, grad_norm=grad_norm, lr=lr)
        if step % 25 == 24:
            log.eval(step, val_loss=_val_loss(model, xv, yv))
    return log, {"what": "SGD (momentum 0.9, peak lr 0.01), warm-up 20 steps then cosine over 2,000; a learnable "
                         "teacher task, fresh batches of 64; val_loss every 25 steps"}


def markov_text(seed: int, length: int, vocab: int = 24) -> torch.Tensor:
    """A character stream from a seeded order-2 Markov chain: learnable structure, no download."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, vocab, vocab, generator=g) * 2.5
    probs = torch.softmax(logits, -1)
    out = torch.empty(length, dtype=torch.long)
    a, b = 0, 1
    draws = torch.rand(length, generator=g)
    cdf = probs.cumsum(-1)
    for i in range(length):
        c = int(torch.searchsorted(cdf[a, b], draws[i].unsqueeze(0)).clamp(max=vocab - 1))
        out[i] = c
        a, b = b, c
    return out


class CharMLP(nn.Module):
    def __init__(self, vocab: int, context: int = 3, dim: int = 24, hidden: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(context * dim, hidden), nn.GELU(), nn.Linear(hidden, vocab))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(idx).flatten(1))


def _char_batches(text: torch.Tensor, context: int, batch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor,
                                                                                                      torch.Tensor]]:
    while True:
        start = torch.randint(0, len(text) - context - 1, (batch,), generator=gen)
        idx = start[:, None] + torch.arange(context)[None, :]
        yield text[idx], text[start + context]


def healthy_adamw(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(2)
    vocab = 24
    text = markov_text(5, 60_000, vocab)
    train, val = text[:50_000], text[50_000:]
    model = CharMLP(vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.01)
    batches = _char_batches(train, 3, 64, torch.Generator().manual_seed(21))
    vx, vy = next(_char_batches(val, 3, 2048, torch.Generator().manual_seed(22)))
    log = Log("healthy_adamw", 0.09, seed=102, wall_clock=wall, eval_s=0.6)
    for step in range(300):
        lr = warmup_linear(step, 1e-3, 20, PLANNED_STEPS)
        set_lr(optimizer, lr)
        x, y = next(batches)
        loss, grad_norm, took = _train_step(model, optimizer, x, y)
        log.step(step, took, loss=loss, grad_norm=grad_norm, lr=lr)
        if step % 25 == 24:
            log.eval(step, val_loss=_val_loss(model, vx, vy))
    return log, {"what": "AdamW (peak lr 1e-3, wd 0.01), warm-up 20 steps then linear decay over 2,000; a character "
                         "MLP (context 3) on a seeded order-2 Markov text; val_loss every 25 steps"}


def lr_ramp_nan(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(3)
    sample = teacher_task(0)
    gen = torch.Generator().manual_seed(31)
    model = student()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    log = Log("lr_ramp_nan", 0.12, seed=103, wall_clock=wall)
    after_nan = 0
    for step in range(1000):
        lr = 0.01 * 1.05 ** step
        set_lr(optimizer, lr)
        x, y = sample(64, gen)
        loss, grad_norm, took = _train_step(model, optimizer, x, y)  # no clipping: nothing holds it back
        log.step(step, took, loss=loss, grad_norm=grad_norm, lr=lr)
        if not math.isfinite(loss):
            after_nan += 1
            if after_nan > 5 and math.isnan(loss):  # a trainer keeps logging NaN a few steps before anyone looks
                break
    return log, {"what": "SGD (momentum 0.9, no clipping), lr ramped x1.05 per step from 0.01: the loss "
                         "falls, turns, explodes and goes NaN; a few NaN steps are logged after it"}


def bad_batch_spike(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(4)
    sample = teacher_task(0)
    gen = torch.Generator().manual_seed(41)
    model = student()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    log = Log("bad_batch_spike", 0.12, seed=104, wall_clock=wall)
    for step in range(250):
        x, y = sample(64, gen)
        if step == 120:
            x = x * 100  # one corrupted batch: inputs x100
        loss, grad_norm, took = _train_step(model, optimizer, x, y, clip=1.0)
        log.step(step, took, loss=loss, grad_norm=grad_norm, lr=1e-3)
    return log, {"what": "AdamW lr 1e-3, grad clipping at 1.0; the batch at step 120 has inputs x100 (a bad batch): "
                         "the loss and grad norm spike once and the loss recovers"}


def chance_plateau(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(51)
    model = student()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    log = Log("chance_plateau", 0.12, seed=105, wall_clock=wall)
    for step in range(250):
        x = torch.randn(256, FEATURES, generator=gen)
        y = torch.randint(0, CLASSES, (256,), generator=gen)  # random labels: nothing to learn
        loss, grad_norm, took = _train_step(model, optimizer, x, y)
        log.step(step, took, loss=loss, grad_norm=grad_norm, lr=1e-3)
    return log, {"what": "AdamW lr 1e-3 on fresh batches with random labels: the loss stays at chance, "
                         f"ln({CLASSES}) = {math.log(CLASSES):.4f}"}


def overfit_val_rise(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(6)
    sample = teacher_task(0)
    x, y = sample(256, torch.Generator().manual_seed(61))  # a tiny training set ...
    flip = torch.rand(256, generator=torch.Generator().manual_seed(62)) < 0.3
    y = torch.where(flip, (y + 1) % CLASSES, y)  # ... with 30% noisy labels to memorize
    xv, yv = sample(2048, torch.Generator().manual_seed(63))
    model = student(hidden=256, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    log = Log("overfit_val_rise", 0.05, seed=106, wall_clock=wall, eval_s=0.4)
    for step in range(200):
        loss, grad_norm, took = _train_step(model, optimizer, x, y)
        log.step(step, took, loss=loss, grad_norm=grad_norm, lr=1e-3)
        if step % 10 == 9:
            log.eval(step, val_loss=_val_loss(model, xv, yv))
    return log, {"what": "Adam lr 1e-3, full batch on 256 training examples (30% noisy labels): the train loss "
                         "falls towards 0 while val_loss (every 10 steps) falls, turns and rises"}


def _amp_has_cpu_fp16() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = nn.Linear(2, 2)(torch.randn(1, 2))
        return out.dtype == torch.float16 and hasattr(torch.amp, "GradScaler")
    except Exception:  # noqa: BLE001 - any failure means: simulate
        return False


def amp_overflow(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(7)
    sample = teacher_task(0)
    gen = torch.Generator().manual_seed(71)
    model = student(hidden=256)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    log = Log("amp_overflow", 0.08, seed=107, wall_clock=wall)
    real = _amp_has_cpu_fp16()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20, growth_interval=25) if real else None
    scale, good = 2.0 ** 20, 0  # the hand simulation's state
    for step in range(250):
        x, y = sample(64, gen)
        start = time.perf_counter()
        if real:
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9).item()
            scaler.step(optimizer)  # skipped when the unscaled grads hold Inf/NaN
            scaler.update()  # halves the scale on overflow, doubles it after growth_interval clean steps
            scale = scaler.get_scale()
        else:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9).item()
            if grad_norm * scale * 64 > FP16_MAX:  # what fp16 grads would have done: overflow, skip, halve
                grad_norm, scale, good = math.inf, scale / 2, 0
            else:
                optimizer.step()
                good += 1
                if good == 25:
                    scale, good = scale * 2, 0
        took = time.perf_counter() - start
        log.step(step, took, loss=loss.item(), grad_norm=grad_norm, lr=0.05, loss_scale=scale)
    how = ("real float16 autocast on CPU with torch.amp.GradScaler (init scale 2^20, growth interval 25)" if real
           else "GradScaler semantics simulated by hand (no CPU float16 autocast in this torch build)")
    return log, {"what": f"SGD lr 0.05 in mixed precision: {how}; overflowing steps log grad_norm Infinity, are "
                         "skipped and halve loss_scale; the loss stays finite", "amp": "real" if real else "simulated"}


def too_few_steps(wall: bool) -> tuple[Log, dict[str, Any]]:
    torch.manual_seed(8)
    sample = teacher_task(0)
    gen = torch.Generator().manual_seed(81)
    model = student()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    log = Log("too_few_steps", 0.12, seed=108, wall_clock=wall)
    for step in range(4):
        lr = warmup_cosine(step, 0.05, 20, PLANNED_STEPS)
        set_lr(optimizer, lr)
        x, y = sample(64, gen)
        loss, grad_norm, took = _train_step(model, optimizer, x, y)
        log.step(step, took, loss=loss, grad_norm=grad_norm, lr=lr)
    return log, {"what": "the healthy SGD set-up, just started: 4 steps logged"}


BUILDERS: dict[str, Callable[[bool], tuple[Log, dict[str, Any]]]] = {
    "healthy_sgd": healthy_sgd, "healthy_adamw": healthy_adamw, "lr_ramp_nan": lr_ramp_nan,
    "bad_batch_spike": bad_batch_spike, "chance_plateau": chance_plateau, "overfit_val_rise": overfit_val_rise,
    "amp_overflow": amp_overflow, "too_few_steps": too_few_steps,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help=f"runs to regenerate (default: all): {', '.join(BUILDERS)}")
    parser.add_argument("--wall-clock", action="store_true", help="real time and step times (not reproducible)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.runs if name not in BUILDERS]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    manifest_path = RUNS / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["_about"] = ("Fixture logs for tests/watch, written by tests/watch/make_runs.py from real CPU training "
                          f"runs (torch {torch.__version__}); each is the start of a planned {PLANNED_STEPS}-step "
                          "run. Simulated clock unless wall_clock is true.")
    for name in args.runs or list(BUILDERS):
        started = time.perf_counter()
        log, meta = BUILDERS[name](args.wall_clock)
        path = log.write()
        manifest[name] = {**meta, "records": len(log.rows), "last_step": log.rows[-1]["step"],
                          "planned_steps": PLANNED_STEPS, "wall_clock": args.wall_clock}
        print(f"{name:18s} {len(log.rows):4d} records  {path.stat().st_size / 1024:6.1f} KiB  "
              f"{time.perf_counter() - started:5.1f}s", file=sys.stderr)
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
