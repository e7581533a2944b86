"""Benchmark: what L1's probes add to a training step.

Target (issue 4): the instrumented step (gradient-norm hooks with fused
foreach norms, LR and batch-size reads, the step clock) costs at most 5% more
than the same step without them, as a ratio of medians in one run.

    python benchmarks/bench_l1_overhead.py [--pipeline examples/chargpt/l1.py:CharGPTPipeline] [--steps 60]

Plain and instrumented steps alternate in blocks on one model, so machine
noise hits both sides alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_pipeline(spec: str):
    path, _, name = spec.partition(":")
    file = (ROOT / path).resolve()
    sys.path.insert(0, str(file.parent))
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="examples/chargpt/l1.py:CharGPTPipeline")
    parser.add_argument("--steps", type=int, default=60, help="steps per side")
    parser.add_argument("--block", type=int, default=5, help="steps per alternating block")
    parser.add_argument("--max-overhead", type=float, default=0.05)
    args = parser.parse_args(argv)

    import torch

    from pytest_spml.l1.runner import _current_lr, _GradProbe, _sync

    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipeline = load_pipeline(args.pipeline)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipeline.setup(device, 0)
    state = pipeline.build()
    batches = iter(pipeline.batches())
    for _ in range(5):  # warm-up, unmeasured
        pipeline.train_step(state, next(batches))
    named = [(n, p) for n, p in state.model.named_parameters() if p.requires_grad]
    plain: list[float] = []
    probed: list[float] = []
    while len(probed) < args.steps:
        for _ in range(args.block):
            batch = next(batches)
            t0 = time.perf_counter()
            pipeline.train_step(state, batch)
            _sync(device)
            plain.append(time.perf_counter() - t0)
        probe = _GradProbe(named)
        for _ in range(args.block):
            batch = next(batches)
            t0 = time.perf_counter()
            pipeline.train_step(state, batch)
            probe.step_norm()
            _current_lr(state)
            pipeline.batch_size(batch)
            _sync(device)
            probed.append(time.perf_counter() - t0)
        probe.close()
    base, inst = statistics.median(plain), statistics.median(probed)
    overhead = inst / base - 1
    print(f"pipeline {pipeline.name} on {device}: plain median {base * 1e3:.2f} ms, "
          f"instrumented median {inst * 1e3:.2f} ms over {len(probed)} steps each")
    print(f"overhead {overhead:+.1%} (target <= {args.max_overhead:.0%})")
    return 0 if overhead <= args.max_overhead else 1


if __name__ == "__main__":
    sys.exit(main())
