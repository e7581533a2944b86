"""Benchmark: `spml fixed-files` against `git status --porcelain --ignored`.

Target (issue 2): on a repository of 20,000 tracked files with 500 changed,
a warm `spml fixed-files` costs at most 2x `git status --porcelain --ignored`
on the same repository, measured in the same run so machine noise cancels.

    python benchmarks/bench_fixed_files.py [--files 20000] [--changed 500] [--runs 15]

Prints both medians, the ratio, the cold (first-run) cost, and exits 1 when
the ratio is above --max-ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROTOCOL = """---
research_question: Does a wider MLP improve validation accuracy?
target: 0.9
baseline: 0.8
max_rounds: 10
fixed:
  files: ["train.py", "eval/", "pkg0/", "pkg1/"]
  time_limit: 5m
variable:
  files: ["model.py", "pkg2*/**", "configs/*.yaml"]
train: {command: "python train.py"}
eval: {command: "python eval/evaluate.py", metric: val_acc, direction: maximize}
---
# Protocol
"""

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]


def make_repo(root: Path, files: int, changed: int, fixed_changed: int = 0, seed: int = 0) -> None:
    rng = random.Random(seed)
    subprocess.run(["git", "init", "-q", "-b", "autoresearch/bench", str(root)], check=True)
    for i in range(files):
        folder = root / f"pkg{i % 50}" / f"sub{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"VALUE_{i} = {i}\n" * rng.randint(5, 120))
    (root / "autoresearch-protocol.md").write_text(PROTOCOL)
    (root / ".gitignore").write_text("__pycache__/\n*.log\ncheckpoints/\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "base"], cwd=root, check=True)
    # A researcher's round: edits spread over the Variable folders (pkg20-pkg29),
    # optionally some in Fixed ones (pkg0, pkg1).
    variable = [i for i in range(files) if 20 <= i % 50 < 30]
    fixed = [i for i in range(files) if i % 50 in (0, 1)]
    picks = rng.sample(variable, changed - fixed_changed) + rng.sample(fixed, fixed_changed)
    for i in picks:
        path = root / f"pkg{i % 50}" / f"sub{i % 7}" / f"mod{i}.py"
        with open(path, "a") as fh:
            fh.write("CHANGED = True\n")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "step100.pt").write_bytes(os.urandom(4096))
    (root / "train.log").write_text("step 1 loss 2.3\n")


def median_seconds(cmd: list[str], cwd: Path, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def spml_command() -> list[str]:
    exe = shutil.which("spml", path=os.path.dirname(sys.executable)) or shutil.which("spml")
    return [exe] if exe else [sys.executable, "-m", "pytest_spml.cli"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--changed", type=int, default=500)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--fixed-changed", type=int, default=0,
                        help="how many of the changed files are Fixed (violations); default 0, a compliant round")
    parser.add_argument("--max-ratio", type=float, default=2.0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="spml-bench-") as tmp:
        root = Path(tmp) / "repo"
        print(f"building a repository of {args.files} files, {args.changed} changed "
              f"({args.fixed_changed} of them Fixed) ...", flush=True)
        make_repo(root, args.files, args.changed, args.fixed_changed)
        spml = [*spml_command(), "fixed-files", "--format", "json"]
        git_status = ["git", "status", "--porcelain", "--ignored"]

        start = time.perf_counter()
        first = subprocess.run(spml, cwd=root, capture_output=True, text=True)
        cold = time.perf_counter() - start
        if first.returncode not in (0, 1):
            print(first.stderr, file=sys.stderr)
            return 2
        subprocess.run(git_status, cwd=root, capture_output=True)  # warm git's own index too

        git_s = median_seconds(git_status, root, args.runs)
        spml_s = median_seconds(spml, root, args.runs)
        git_s2 = median_seconds(git_status, root, args.runs)  # bracket: noise shows as a gap
        baseline = (git_s + git_s2) / 2
        ratio = spml_s / baseline
        print(f"git status --porcelain --ignored: median {baseline * 1000:.1f} ms "
              f"(first {git_s * 1000:.1f}, second {git_s2 * 1000:.1f})")
        print(f"spml fixed-files (warm):          median {spml_s * 1000:.1f} ms")
        print(f"spml fixed-files (cold, first):   {cold * 1000:.1f} ms")
        print(f"ratio warm/git: {ratio:.2f}x (target <= {args.max_ratio:.1f}x)")
        return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
