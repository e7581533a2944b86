"""Benchmark: what one `spml-loop run` round costs beyond its researcher, training and eval commands.

Target (issue 6): on a repository of 10,000 files the loop's own work per
round (branch checks, three compliance checks, the restore check, import
shadow scan, snapshot, commit or rollback with its patch, the history
files) stays under 1 second.

    python benchmarks/bench_loop_overhead.py [--files 10000] [--rounds 10]

The commands are trivial shell one-liners: the researcher appends a line to
a Variable file, training is `true`, the eval writes its metric (odd rounds
improve and are committed, even rounds regress and are rolled back). Each
round's overhead is its wall time minus the time its commands ran, as the
loop records it (`overhead_s` in results.jsonl). Exits 1 above --max.
"""

from __future__ import annotations

import argparse
import json
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
research_question: What does a round cost the loop itself?
target: null
baseline: 0.0
max_rounds: {rounds}
fixed:
  files: ["train.py", "eval/", "pkg0/", "pkg1/"]
  time_limit: 60s
variable:
  files: ["model.py", "pkg2*/**", "configs/*.yaml"]
train: {{command: "true"}}
eval:
  command: 'if [ $((SPML_ROUND % 2)) -eq 1 ]; then m=$SPML_ROUND; else m=0; fi; echo "{{\\"m\\": $m}}" > "$SPML_RESULT"'
  metric: m
  direction: maximize
---
# Benchmark protocol
"""

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]


def make_repo(root: Path, files: int, rounds: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    for i in range(files):
        folder = root / f"pkg{i % 50}" / f"sub{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"VALUE_{i} = {i}\n" * rng.randint(5, 120))
    (root / "train.py").write_text("print('train')\n")
    (root / "model.py").write_text("HIDDEN = 64\n")
    (root / "autoresearch-protocol.md").write_text(PROTOCOL.format(rounds=rounds))
    (root / ".gitignore").write_text("__pycache__/\n*.log\ncheckpoints/\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "base"], cwd=root, check=True)
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "step100.pt").write_bytes(os.urandom(4096))


def spml_loop() -> list[str]:
    exe = shutil.which("spml-loop", path=os.path.dirname(sys.executable)) or shutil.which("spml-loop")
    return [exe] if exe else [sys.executable, "-m", "pytest_spml.loop_cli"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max", type=float, default=1.0, help="target: seconds of loop overhead per round")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="spml-loop-bench-") as tmp:
        root = Path(tmp) / "repo"
        print(f"building a repository of {args.files} files ...", flush=True)
        make_repo(root, args.files, args.rounds)
        researcher = "echo \"# round $SPML_ROUND\" >> model.py; echo 'strategy: append a line' > \"$SPML_STRATEGY\""
        env = dict(os.environ, GIT_CONFIG_GLOBAL=str(Path(tmp) / "gitconfig"))
        Path(env["GIT_CONFIG_GLOBAL"]).write_text("[user]\n\tname = bench\n\temail = bench@example.com\n")
        start = time.perf_counter()
        proc = subprocess.run([*spml_loop(), "run", "--researcher", researcher, "--tag", "bench", "--format", "json"],
                              cwd=root, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 2
        rounds = json.loads(proc.stdout)["rounds"]
        overhead = [r["overhead_s"] for r in rounds]
        total = [r["seconds"] for r in rounds]
        commits = [r["overhead_s"] for r in rounds if r["action"] == "commit"]
        rollbacks = [r["overhead_s"] for r in rounds if r["action"] == "rollback"]
        tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.count("\n")
        print(f"repository: {tracked} tracked files; {len(rounds)} rounds in {wall:.2f} s "
              f"(process start and setup included)")
        print(f"round wall time:         median {statistics.median(total) * 1000:.0f} ms, "
              f"max {max(total) * 1000:.0f} ms")
        print(f"loop overhead per round: median {statistics.median(overhead) * 1000:.0f} ms, "
              f"max {max(overhead) * 1000:.0f} ms (target < {args.max * 1000:.0f} ms)")
        if commits:
            print(f"  improving rounds (commit):    median {statistics.median(commits) * 1000:.0f} ms")
        if rollbacks:
            print(f"  regressing rounds (rollback): median {statistics.median(rollbacks) * 1000:.0f} ms")
        return 0 if max(overhead) < args.max else 1


if __name__ == "__main__":
    sys.exit(main())
