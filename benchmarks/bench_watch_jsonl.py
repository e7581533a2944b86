"""Benchmark: the watchdog's JSONL reader and training check (pytest_spml.watch) on a large log.

Targets (issue 5):
  * first check: ``TrainingCheck.poll`` on a fresh engine (read, ingest into
    the bounded series, every detector, the decision) costs at most 2x a bare
    line-by-line ``json.loads`` loop over the same file (``--max-check-ratio``),
    measured in a fresh interpreter that also reports its peak RSS: under
    300 MB (``--max-peak-mb``);
  * re-check: after appending 1,000 lines, a new engine restoring the saved
    state, polling and saving again (what ``spml-loop check`` does on its next
    run) costs at most 1% of the first check (``--max-incremental``);
  * the reader alone: ``read_jsonl`` at most 2x the bare loop (``--max-ratio``),
    a streaming ``iter_jsonl`` pass under 300 MB, and its re-read after the
    1,000 lines at most 1% of its first read.

    python benchmarks/bench_watch_jsonl.py [--size-mb 1024] [--path FILE] [--keep] [--repeat N]

The log is generated (a training-like mix: step, time, loss, lr, grad_norm,
integer throughput, an eval row with nested values every 50 lines, the odd
NaN) in a temporary directory unless --path names an existing file. Exits 1
when a target is missed. ``read_jsonl`` returns every record as one list, so
its own memory grows with the log (printed for information): a watchdog
reading a multi-GB log for the first time should use ``iter_jsonl``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def line_for(i: int, rng: random.Random, t0: float) -> str:
    now = t0 + 0.35 * i
    if i % 50 == 49:
        row = {"step": i, "time": round(now, 3), "eval": {"loss": 2.0 + rng.random(), "ppl": 7.0 + rng.random()}}
    else:
        loss = 5.0 / (1 + i / 1000) + 0.1 * rng.random()
        row = {"step": i, "time": round(now, 3), "loss": loss if i % 100_003 else float("nan"),
               "lr": 3e-4 * min(1.0, i / 2000), "grad_norm": 0.5 + rng.random(),
               "tokens_per_s": rng.randint(150_000, 160_000), "step_time_s": 0.35 + 0.01 * rng.random()}
    return json.dumps(row) + "\n"


def generate(path: Path, size_mb: float, start: int = 0, lines: int | None = None) -> int:
    """Append lines to ``path`` until it holds size_mb MB (or exactly ``lines`` lines); returns the next index."""
    rng = random.Random(start)
    target = int(size_mb * 1024 * 1024)
    i = start
    with open(path, "a", encoding="utf-8") as f:
        buf: list[str] = []
        size = path.stat().st_size if path.exists() else 0
        while (size < target) if lines is None else (i < start + lines):
            text = line_for(i, rng, 1.7e9)
            buf.append(text)
            size += len(text)
            i += 1
            if len(buf) >= 10_000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return i


def bare_loop(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            json.loads(line)
            n += 1
    return time.perf_counter() - start, n


_STREAM = """
import json, resource, sys, time
from pytest_spml.watch.sources import iter_jsonl
t = time.perf_counter()
n = sum(len(batch) for batch in iter_jsonl(sys.argv[1], {}))
seconds = time.perf_counter() - t
try:  # Linux: this process image's own high-water mark (ru_maxrss keeps the parent's across fork + exec)
    with open("/proc/self/status") as f:
        rss_mb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 2**10
except (OSError, StopIteration):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (2**20 if sys.platform == "darwin" else 2**10)
print(json.dumps({"records": n, "seconds": seconds, "maxrss_mb": rss_mb}))
"""


_CHECK = """
import json, sys, time
from pathlib import Path
from pytest_spml.watch.check import SourceSpec, TrainingCheck
engine = TrainingCheck([SourceSpec("log", sys.argv[1])])
t = time.perf_counter()
outcome = engine.poll()
seconds = time.perf_counter() - t
engine.save(Path(sys.argv[2]))
with open("/proc/self/status") as f:  # this process image's own high-water mark
    rss_mb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 2**10
print(json.dumps({"seconds": seconds, "maxrss_mb": rss_mb, "records": outcome.new_records,
                  "decision": outcome.verdict.decision, "status": outcome.verdict.status,
                  "anomalies": sorted({a.kind for a in outcome.anomalies})}))
"""


def first_check(path: Path, state: Path) -> dict:
    """``TrainingCheck.poll`` on a fresh engine in a fresh interpreter; the engine is saved to ``state``.

    Linux only (the peak RSS comes from /proc); elsewhere the check runs in this process, RSS unknown."""
    if os.path.exists("/proc/self/status"):
        out = subprocess.run([sys.executable, "-c", _CHECK, str(path), str(state)], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)
    from pytest_spml.watch.check import SourceSpec, TrainingCheck

    gc.collect()
    engine = TrainingCheck([SourceSpec("log", str(path))])
    t = time.perf_counter()
    outcome = engine.poll()
    seconds = time.perf_counter() - t
    engine.save(state)
    return {"seconds": seconds, "maxrss_mb": float("nan"), "records": outcome.new_records,
            "decision": outcome.verdict.decision, "status": outcome.verdict.status,
            "anomalies": sorted({a.kind for a in outcome.anomalies})}


def recheck(path: Path, state: Path) -> tuple[float, int, str | None]:
    """A new engine: restore the saved state, poll, save; (seconds, new records, why the state was not used)."""
    from pytest_spml.watch.check import SourceSpec, TrainingCheck

    t = time.perf_counter()
    engine = TrainingCheck([SourceSpec("log", str(path))])
    why = engine.restore(state)
    outcome = engine.poll()
    engine.save(state)
    return time.perf_counter() - t, outcome.new_records, why


def streaming_pass(path: Path) -> tuple[int, float, float, str]:
    """A full pass with iter_jsonl in a fresh interpreter: its peak RSS is the reader's whole footprint
    (interpreter included). Where ``resource`` is missing (Windows), tracemalloc in this process."""
    try:
        import resource  # noqa: F401
    except ImportError:
        gc.collect()
        from pytest_spml.watch.sources import iter_jsonl

        tracemalloc.start()
        t = time.perf_counter()
        n = sum(len(batch) for batch in iter_jsonl(path, {}))
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return n, seconds, peak / 2**20, "(tracemalloc peak, timing under tracing)"
    out = subprocess.run([sys.executable, "-c", _STREAM, str(path)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    return result["records"], result["seconds"], result["maxrss_mb"], "(peak RSS of a fresh interpreter)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024.0, help="size of the generated log (default 1024)")
    parser.add_argument("--path", type=Path, help="an existing JSONL log to use instead (appended to!)")
    parser.add_argument("--keep", action="store_true", help="keep the generated log")
    parser.add_argument("--max-ratio", type=float, default=2.0, help="read_jsonl / bare loop")
    parser.add_argument("--max-check-ratio", type=float, default=2.0, help="first check / bare loop")
    parser.add_argument("--max-peak-mb", type=float, default=300.0)
    parser.add_argument("--max-incremental", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for the bare loop, read_jsonl and check")
    args = parser.parse_args(argv)

    from pytest_spml.watch.sources import iter_jsonl, read_jsonl

    tmp = None
    if args.path:
        path = args.path
        with open(path, "rb") as f:
            next_index = sum(1 for _ in f)
    else:
        tmp = tempfile.mkdtemp(prefix="spml-bench-watch-")
        path = Path(tmp) / "metrics.jsonl"
        t = time.perf_counter()
        next_index = generate(path, args.size_mb)
        print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB, {next_index:,} lines) "
              f"in {time.perf_counter() - t:.1f}s")
    state_file = Path(tempfile.mkdtemp(prefix="spml-bench-check-")) / "check-state.pickle"
    try:
        size_mib = path.stat().st_size / 2**20
        # the bare loop and the first check take turns, so that both see the same machine
        bare_runs, checks = [], []
        for _ in range(args.repeat):
            bare_runs.append(bare_loop(path))
            checks.append(first_check(path, state_file))
        base_s, lines = min(bare_runs)
        print(f"bare json.loads loop: {base_s:.2f}s ({lines:,} lines, {lines / base_s / 1e6:.2f} M lines/s, "
              f"{size_mib / base_s:.0f} MiB/s)")
        check = min(checks, key=lambda c: c["seconds"])
        check_s = check["seconds"]
        check_ratio = check_s / base_s
        check_peak = max(c["maxrss_mb"] for c in checks)
        print(f"first check (TrainingCheck.poll, fresh engine): {check_s:.2f}s ({check['records']:,} records) = "
              f"{check_ratio:.2f}x the bare loop (target <= {args.max_check_ratio:g}x); "
              f"{check['decision']} ({check['status']}; {', '.join(check['anomalies']) or 'no anomalies'})")
        print(f"peak memory of the first check: {check_peak:.1f} MiB (peak RSS of a fresh interpreter; "
              f"target < {args.max_peak_mb:g} MB)")

        first_s = float("inf")
        for _ in range(args.repeat):
            gc.collect()
            t = time.perf_counter()
            records, state = read_jsonl(path)
            first_s = min(first_s, time.perf_counter() - t)
            count = len(records)
            del records
        ratio = first_s / base_s
        print(f"read_jsonl first read (one list of every record): {first_s:.2f}s ({count:,} records) = "
              f"{ratio:.2f}x the bare loop (target <= {args.max_ratio:g}x)")

        streamed, iter_s, peak_mb, how = streaming_pass(path)
        print(f"iter_jsonl first read (streamed, records dropped per chunk): {iter_s:.2f}s = "
              f"{iter_s / base_s:.2f}x the bare loop")
        print(f"peak memory of the streaming pass: {peak_mb:.1f} MiB {how} (target < {args.max_peak_mb:g} MB)")
        per_record = None
        if count:
            # what read_jsonl's returned list costs, on a 100k-line sample: information only
            sample_state: dict = {}
            tracemalloc.start()
            sample = []
            for batch in iter_jsonl(path, sample_state):
                sample.extend(batch)
                if len(sample) >= 100_000:
                    break
            per_record = tracemalloc.get_traced_memory()[0] / len(sample)
            tracemalloc.stop()
            del sample
            print(f"read_jsonl's list holds ~{per_record:.0f} B per record "
                  f"(~{per_record * count / 2**20:.0f} MiB for this log; information, not a target)")

        generate(path, 0, start=next_index, lines=1000)
        t = time.perf_counter()
        new, state2 = read_jsonl(path, state)
        inc_s = time.perf_counter() - t
        inc_ratio = inc_s / first_s
        print(f"incremental re-read after appending 1,000 lines: {inc_s * 1000:.2f} ms, {len(new)} records "
              f"= {inc_ratio * 100:.3f}% of the first read (target <= {args.max_incremental * 100:g}%)")
        recheck_s, rechecked, why = recheck(path, state_file)
        recheck_ratio = recheck_s / check_s
        print(f"re-check after appending 1,000 lines (restore the saved engine, poll, save): "
              f"{recheck_s * 1000:.2f} ms, {rechecked} new records = {recheck_ratio * 100:.3f}% of the first check "
              f"(target <= {args.max_incremental * 100:g}%)")

        failures = []
        if streamed != count:
            failures.append(f"record counts differ: read_jsonl {count}, iter_jsonl {streamed}")
        if state2["bad_lines"] or len(new) != 1000:
            failures.append(f"incremental read returned {len(new)} records, {state2['bad_lines']} bad lines")
        if ratio > args.max_ratio:
            failures.append(f"first read {ratio:.2f}x > {args.max_ratio:g}x")
        if any(c["records"] != count for c in checks):
            failures.append(f"the first check read {[c['records'] for c in checks]} records, read_jsonl {count}")
        if check_ratio > args.max_check_ratio:
            failures.append(f"first check {check_ratio:.2f}x > {args.max_check_ratio:g}x")
        if check_peak >= args.max_peak_mb:
            failures.append(f"first check peak memory {check_peak:.0f} MiB >= {args.max_peak_mb:g}")
        if why is not None or rechecked != 1000:
            failures.append(f"re-check: {rechecked} new records, saved state: {why or 'used'}")
        if recheck_ratio > args.max_incremental:
            failures.append(f"re-check {recheck_ratio * 100:.2f}% > {args.max_incremental * 100:g}%")
        if peak_mb >= args.max_peak_mb:
            failures.append(f"peak memory {peak_mb:.0f} MiB >= {args.max_peak_mb:g}")
        if inc_ratio > args.max_incremental:
            failures.append(f"incremental {inc_ratio * 100:.2f}% > {args.max_incremental * 100:g}%")
        for failure in failures:
            print(f"FAIL: {failure}")
        if not failures:
            print("OK: all targets met")
        return 1 if failures else 0
    finally:
        if state_file.exists():
            state_file.unlink()
        state_file.parent.rmdir()
        if tmp and not args.keep:
            os.unlink(path)
            os.rmdir(tmp)


if __name__ == "__main__":
    sys.exit(main())
