"""Benchmark: `spml l0` over all of torch's own Python sources.

Target (issue 3): linting costs at most 4x a bare `ast.parse` of the same
files (one parse per file, shared by all rules), and never crashes.

    python benchmarks/bench_l0.py [--source DIR] [--max-ratio 4] [--repeat 3]

Without --source, torch's installed sources are found without importing
torch. Sources are read into memory first, so both sides time the same work:
the baseline parses, the linter parses and runs every rule.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
import time
import warnings
from pathlib import Path


def torch_sources() -> Path:
    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torch is not installed here: pass --source DIR (e.g. an unpacked torch wheel)")
    return Path(list(spec.submodule_search_locations)[0])


def load(root: Path) -> list[tuple[str, str]]:
    files = []
    for path in sorted(root.rglob("*.py")):
        try:
            files.append((str(path.relative_to(root)), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return files


def time_parse(files: list[tuple[str, str]]) -> float:
    start = time.perf_counter()
    for name, source in files:
        try:
            ast.parse(source, filename=name)
        except SyntaxError:
            pass
    return time.perf_counter() - start


def time_lint(files: list[tuple[str, str]]) -> tuple[float, int, list[str]]:
    from pytest_spml.l0.config import L0Config
    from pytest_spml.l0.context import FileContext
    from pytest_spml.l0.registry import load_rules
    from pytest_spml.l0.runner import check_context

    load_rules()
    config = L0Config()
    findings = 0
    crashes: list[str] = []
    start = time.perf_counter()
    for name, source in files:
        try:
            tree = ast.parse(source, filename=name)
        except SyntaxError:
            continue
        try:
            found, _ = check_context(FileContext(name, source, tree), config, Path(name))
            findings += len(found)
        except Exception as exc:  # the point of the benchmark is to find these
            crashes.append(f"{name}: {type(exc).__name__}: {exc}")
    return time.perf_counter() - start, findings, crashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="folder of Python sources (default: installed torch)")
    parser.add_argument("--max-ratio", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3, help="best of N for both sides")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    root = args.source or torch_sources()
    files = load(root)
    lines = sum(source.count("\n") for _, source in files)
    print(f"{len(files)} files, {lines} lines under {root}")
    parse_s = min(time_parse(files) for _ in range(args.repeat))
    runs = [time_lint(files) for _ in range(args.repeat)]
    lint_s = min(r[0] for r in runs)
    findings, crashes = runs[0][1], runs[0][2]
    ratio = lint_s / parse_s
    print(f"ast.parse only:      {parse_s:.2f} s")
    print(f"spml l0 (all rules): {lint_s:.2f} s, {findings} findings")
    print(f"ratio: {ratio:.2f}x (target <= {args.max_ratio:.1f}x); crashes: {len(crashes)}")
    for crash in crashes[:20]:
        print("  CRASH", crash)
    return 0 if ratio <= args.max_ratio and not crashes else 1


if __name__ == "__main__":
    sys.exit(main())
