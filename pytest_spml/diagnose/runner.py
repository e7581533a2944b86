"""The child process that runs one pipeline at one commit: ``python -c ... runner.main([SPEC])``.

Code from different commits never meets in one interpreter: each commit that
code bisection tests, and each run of the nondeterminism check (which needs
its own ``PYTHONHASHSEED``), is a fresh process that imports the pipeline from
the folder the spec names. The result goes to ``<out_dir>/<label>.json``; the
exit status speaks ``git bisect run``'s language: 0 good, 1 bad, 125 this
commit cannot be tested (the pipeline does not exist there).

SPEC (JSON): target, root, config (mapping or null), seed, device, steps,
reference_loss (or null), tolerance, out_dir, label (null: the commit id),
timeout (seconds), mode ("check" judges the run; "record" only records it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_GOOD, EXIT_BAD, EXIT_SKIP = 0, 1, 125
RUNNER_CODE = "import sys; from pytest_spml.diagnose.runner import main; sys.exit(main(sys.argv[1:]))"


def command(spec_path: str | Path) -> list[str]:
    """The argv that runs the runner on ``spec_path`` with this interpreter."""
    return [sys.executable, "-c", RUNNER_CODE, str(spec_path)]


def child_env(hash_seed: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in anyone's tree
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed
    return env


def _target_missing(target: str, root: Path) -> bool:
    """The pipeline's module or file does not exist in this tree (a commit from before it was written)."""
    import importlib.util

    module = target.rpartition(":")[0] if ":" in target else target
    if module.endswith(".py"):
        path = Path(module)
        return not (path if path.is_absolute() else root / path).is_file()
    try:
        return importlib.util.find_spec(module.split(".")[0]) is None
    except (ImportError, ValueError):
        return True


def _commit(root: Path) -> str | None:
    from .. import gitcmd

    return gitcmd.resolve_commit(root, "HEAD")


def _timeout(seconds: float) -> None:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the run took longer than {seconds:g} s")

    if seconds and hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, expire)
        signal.alarm(max(1, int(seconds)))


def main(argv: list[str]) -> int:
    from . import runs

    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    root = Path(spec["root"]).resolve()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
    label = spec.get("label") or _commit(root) or "run"
    out = Path(spec["out_dir"]) / f"{label}.json"
    result: dict[str, Any] = {"label": label, "commit": _commit(root), "target": spec["target"],
                              "hash_seed": os.environ.get("PYTHONHASHSEED")}
    code = EXIT_GOOD
    with runs.on_path(root):
        if _target_missing(spec["target"], root):
            result.update(verdict="skip", reason=f"{spec['target']} does not exist in this tree")
            code = EXIT_SKIP
        else:
            _timeout(float(spec.get("timeout") or 0))
            try:
                factory = runs.import_factory(spec["target"])
                pipeline = runs.make_pipeline(factory, spec.get("config"))
            except runs.PipelineError as exc:
                where = f" ({exc.path}:{exc.line})" if exc.path else ""
                result.update(verdict="bad", reason=f"the pipeline cannot be loaded: {exc.message}{where}")
                code = EXIT_BAD
            else:
                trace = runs.train(pipeline, device=spec.get("device", "cpu"), seed=int(spec.get("seed", 0)),
                                   steps=int(spec["steps"]))
                health = runs.judge(trace, from_scratch=True, reference_loss=spec.get("reference_loss"),
                                    tolerance=float(spec.get("tolerance", 0.1)))
                result.update(trace=trace.to_dict(), health=health.to_dict(), metrics=runs.metrics(trace, health))
                if spec.get("mode", "check") == "check":
                    result.update(verdict="good" if health.ok else "bad",
                                  reason=health.reasons[0] if health.reasons else "healthy")
                    code = EXIT_GOOD if health.ok else EXIT_BAD
                else:
                    result.update(verdict="recorded", reason="")
    from ..fsutil import atomic_write

    atomic_write(out, json.dumps(result, default=str))
    return code
