"""``spml diagnose``: reproduce, isolate and explain a broken training run; write ``incident.md``."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

from ..cliutil import add_output_options
from ..errors import InputError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..report import Report

TOOL = "spml diagnose"
CHECKS = ("reproduce", "data", "leakage", "determinism", "config", "code")

DESCRIPTION = """\
Turn a broken run into a reproduced, isolated, explained incident. Through the L1 pipeline you already
implement (build, batches, train_step; load_checkpoint/save_checkpoint), with a fixed seed and deterministic
kernels, it:
  reproduce    re-runs from the nearest checkpoint before the incident (--log, --incident-step,
               --checkpoint-dir), finds the first batch whose step goes NaN/Inf or spikes (the watchdog's own
               detectors), saves it, shrinks the replay to the fewest batches that still reproduce, and replays
               without that batch and with the learning rate x0.1
  data         scans the first --data-batches batches for NaN/Inf inputs and out-of-range labels
  leakage      looks for evaluation examples in the training batches (needs the pipeline's eval_batches())
  determinism  runs twice in fresh processes (PYTHONHASHSEED 0 and 1) and compares losses bitwise
  config       puts --config keys back to their --good-config values one at a time
  code         git bisect run between --good and --bad, in a temporary clone, one process per commit
and writes incident.md (summary, reproduction command, hypotheses and experiments, fix with before/after
metrics, prevention, rollback, confidence with its ceiling) plus incident.json into --out.

It never changes your code, data, checkpoints, branches or HEAD. Config keys are passed to the pipeline
class or factory as keyword arguments.

Exit codes: 1 when the incident reproduces or a cause is confirmed (a problem is real: CI and scripts can
gate on it, like every other spml check), and when the pipeline itself crashes or a check saw no data (an error
result, never "healthy"); 0 when everything checked is healthy and nothing reproduces; 2 for bad input (the
message names the file and line: a pipeline that cannot be created, a device this machine lacks, an incident
step past the log, a requested check without its inputs); 130 on Ctrl-C, after the report says so."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "diagnose", help="reproduce, isolate and explain a broken training run; write incident.md",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_argument_group("the pipeline")
    where.add_argument("--pipeline", required=True, metavar="TARGET",
                       help="your L1Pipeline: package.module:Class or path/to/file.py:Class (as the spml_l1_pipeline "
                            "ini key); a class or factory is called with the --config keys as keyword arguments")
    where.add_argument("--root", default=".", metavar="DIR",
                       help="the project folder, first on sys.path and the git repository for --good/--bad "
                            "(default: the current directory)")
    where.add_argument("--config", metavar="PATH", help="the run's hyperparameters (YAML or JSON key: value)")
    where.add_argument("--seed", type=int, default=0, help="the seed every run uses (default 0)")
    where.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    incident = parser.add_argument_group("the incident")
    incident.add_argument("--log", metavar="PATH", help="the run's metrics: JSONL, a text log or a TensorBoard folder")
    incident.add_argument("--incident-step", type=int, metavar="N",
                          help="the step where it went wrong (default: the log's first severe NaN/Inf, spike, "
                               "divergence or gradient explosion)")
    incident.add_argument("--checkpoint-dir", metavar="DIR",
                          help="the run's checkpoints, named with their step (ckpt_400.pt); only read")
    changes = parser.add_argument_group("what changed")
    changes.add_argument("--good", metavar="REV", help="the last commit that trained well (enables code bisection)")
    changes.add_argument("--bad", metavar="REV", help="a commit that trains badly (default: HEAD)")
    changes.add_argument("--good-config", metavar="PATH",
                         help="the last good hyperparameters (enables config isolation against --config)")
    budget = parser.add_argument_group("budget")
    budget.add_argument("--checks", default="auto", metavar="LIST",
                        help=f"comma-separated: {', '.join(CHECKS)} (default auto: all that the inputs allow)")
    budget.add_argument("--steps", type=int, default=100, metavar="N",
                        help="training steps of a run from scratch (config, code, no incident step; default 100)")
    budget.add_argument("--data-batches", type=int, default=100, metavar="N",
                        help="training batches scanned by the data and leakage checks (default 100)")
    budget.add_argument("--determinism-steps", type=int, default=10, metavar="N",
                        help="steps of each nondeterminism run (default 10)")
    budget.add_argument("--tolerance", type=float, default=0.10, metavar="F",
                        help="a final loss more than F above the good run's counts as bad (default 0.10)")
    budget.add_argument("--timeout", type=float, default=900.0, metavar="S",
                        help="seconds one child run (a bisected commit, a determinism run) may take (default 900)")
    parser.add_argument("--out", metavar="DIR",
                        help="where incident.md, incident.json and the saved batch go "
                             "(default: .spml/incidents/<time>/ under --root)")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


# ------------------------------------------------------------------------------------------------ inputs


def _positive(value: Any, option: str, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise InputError(f"{option} must be {'at least 0' if allow_zero else 'positive'}, got {value}")


def _checks(args: argparse.Namespace) -> list[str]:
    if args.checks == "auto":
        chosen = ["reproduce", "data", "leakage", "determinism"]
        if args.good_config:
            chosen.append("config")
        if args.good:
            chosen.append("code")
        return chosen
    chosen = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown or not chosen:
        raise InputError(f"--checks: unknown check(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(CHECKS)}")
    if "config" in chosen and not (args.config and args.good_config):
        raise InputError("--checks config needs --config (the bad run's) and --good-config (the last good one)")
    if "code" in chosen and not args.good:
        raise InputError("--checks code needs --good REV (the last commit that trained well)")
    return chosen


def _out_dir(args: argparse.Namespace, root: Path) -> Path:
    if args.out:
        out = Path(args.out)
    else:
        out = root / ".spml" / "incidents" / time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while out.exists():
            n += 1
            out = out.with_name(f"{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    if out.exists() and not out.is_dir():
        raise InputError("--out: exists and is not a folder; give a folder for the incident report", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out: cannot create it ({exc.strerror})", out) from None
    return out.resolve()


def _absolute_target(target: str) -> str:
    """A ``path/to/file.py:Class`` target made absolute, so child runs (other folders, a clone) find the same file."""
    module, sep, attr = target.rpartition(":") if ":" in target else (target, "", "")
    if module.endswith(".py") and not Path(module).is_absolute():
        return f"{Path(module).resolve()}{sep}{attr}"
    return target


def _pipeline_error(exc: Any) -> InputError:
    return InputError(exc.message, exc.path, exc.line)


# ------------------------------------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> Report:
    import importlib.util

    from ..diagnose import intake

    for option, value in (("--steps", args.steps), ("--data-batches", args.data_batches),
                          ("--determinism-steps", args.determinism_steps), ("--timeout", args.timeout)):
        _positive(value, option)
    _positive(args.incident_step, "--incident-step", allow_zero=True)
    _positive(args.tolerance, "--tolerance", allow_zero=True)
    root = Path(args.root)
    if not root.is_dir():
        raise InputError("--root: not a folder; give your project's folder", root)
    root = root.resolve()
    if args.good_config and not args.config:
        raise InputError("--good-config needs --config: the two are compared key by key", args.good_config)
    if args.bad and not args.good:
        raise InputError("--bad needs --good: bisection runs between a good and a bad commit")
    checks = _checks(args)
    args.pipeline = _absolute_target(args.pipeline)
    config = intake.load_config(args.config, "--config") if args.config else None
    good_config = intake.load_config(args.good_config, "--good-config") if args.good_config else None
    top = good = bad = None
    if args.good:
        from .. import gitcmd

        top = gitcmd.repo_info(root).root
        good = intake.resolve_rev(top, args.good, "--good")
        bad = intake.resolve_rev(top, args.bad or "HEAD", "--bad")
    incident = intake.read_incident(args.log, args.incident_step) if args.log else None
    if incident is None and args.incident_step is not None:
        from ..diagnose.intake import Incident

        incident = Incident(kind=None, step=args.incident_step, detail="step named with --incident-step",
                            source="--incident-step")
    checkpoints = intake.find_checkpoints(args.checkpoint_dir) if args.checkpoint_dir else []
    if importlib.util.find_spec("torch") is None:
        raise InputError("spml diagnose trains your pipeline and needs PyTorch: pip install 'pytest-spml[torch]'")
    _check_device(args.device)
    out = _out_dir(args, root)
    try:
        return _diagnose(args, root, checks, config, good_config, top, good, bad, incident, checkpoints, out)
    except KeyboardInterrupt:
        _report_interrupted(args, checks, out)
        raise


def _check_device(name: str) -> None:
    """``--device`` names a device this machine has (bad input, exit 2, otherwise)."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--device {name}: not a device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def _report_interrupted(args: argparse.Namespace, checks: list[str], out: Path) -> None:
    """Ctrl-C: still one document on stdout (and the JUnit file when asked), saying nothing was concluded."""
    import sys

    from ..render import render, write_junit
    from ..report import CheckResult, Report, Status

    report = Report(tool=TOOL, results=[CheckResult(
        "INTERRUPTED", Status.ERROR, "interrupted (SIGINT) before the checks finished: nothing is concluded, "
        "and no incident report was written", name="diagnosis")],
        summary={"interrupted": True, "checks": checks, "out": str(out), "causes": [], "reproduced": None})
    try:
        if getattr(args, "junitxml", None):
            write_junit(report, args.junitxml)
        render(report, getattr(args, "format", "text"), sys.stdout, verbose=getattr(args, "verbose", False))
        sys.stdout.flush()
    except (OSError, KeyboardInterrupt):
        pass


def _diagnose(args: argparse.Namespace, root: Path, checks: list[str], config: Any, good_config: Any,
              top: Path | None, good: str | None, bad: str | None, incident: Any, checkpoints: list[Any],
              out: Path) -> Report:
    from ..diagnose import bisect_batches, bisect_code, bisect_config, data_checks, hypotheses, intake, runs
    from ..diagnose.incident import headline, render
    from ..diagnose.reproduce import replay_variant, reproduce, shrink
    from ..report import CheckResult, Report, Status

    values = config.values if config else {}
    device, seed = args.device, args.seed
    found: dict[str, Any] = {}
    started = time.perf_counter()
    with runs.on_path(root):
        try:
            factory = runs.import_factory(args.pipeline)
            first = runs.make_pipeline(factory, values, config_path=config.path if config else None,
                                       config_lines=config.lines if config else None)
        except runs.PipelineError as exc:
            raise _pipeline_error(exc) from None
        if "leakage" in checks and args.checks != "auto" and not callable(getattr(first, "eval_batches", None)):
            raise InputError("--checks leakage needs the pipeline's eval_batches() hook (yielding the evaluation "
                             "batches): add it, or leave leakage out of --checks", _source_of(first))

        def make(overrides: dict[str, Any] | None = None) -> Any:
            return runs.make_pipeline(factory, values if overrides is None else overrides)

        before, after = intake.nearest(checkpoints, incident.step if incident else None)
        found["checkpoints"] = {"dir": args.checkpoint_dir, "count": len(checkpoints),
                                "before": before[0].path if before and incident else None,
                                "after": after.path if after else None} if checkpoints else None
        repro = finding = lr_experiment = None
        if "reproduce" in checks:
            repro = reproduce(make, device=device, seed=seed, incident=incident,
                              checkpoints=before if incident and incident.step is not None else [],
                              steps=args.steps)
            if repro.reproduced and not repro.trace.broken():
                kept = shrink(make, repro, device=device, seed=seed)
                located = bisect_batches.first_bad_batch(make, repro, kept, device=device, seed=seed)
                if located is not None:
                    finding, batch = located
                    if batch is not None:
                        bisect_batches.save_batch(batch, finding, out)
                    bisect_batches.skip_experiment(make, repro, finding, device=device, seed=seed, incident=incident)
                trace, health = replay_variant(make, repro, device=device, seed=seed, incident=incident,
                                               lr_scale=0.1)
                lr_experiment = {"experiment": f"replay from step {repro.start_step} with the learning rate x0.1",
                                 "scale": 0.1, "healthy": health.ok, "after": runs.metrics(trace, health),
                                 "before": runs.metrics(repro.trace, repro.health), "error": trace.broken()}
        scan = data_checks.scan_batches(make, device=device, seed=seed, n=args.data_batches) \
            if "data" in checks else None
        leak = data_checks.check_leakage(make, device=device, seed=seed, n=args.data_batches) \
            if "leakage" in checks else None
        isolation = bisect_config.isolate(make, config, good_config, device=device, seed=seed, steps=args.steps,
                                          tolerance=args.tolerance) if "config" in checks else None
    determinism = data_checks.check_determinism(root, args.pipeline, values or None, seed=seed, device=device,
                                                steps=args.determinism_steps, timeout=args.timeout) \
        if "determinism" in checks else None
    bisection = bisect_code.bisect(top, root, args.pipeline, good, bad, config=values or None, seed=seed,
                                   device=device, steps=args.steps, tolerance=args.tolerance,
                                   timeout=args.timeout) if "code" in checks else None

    if found["checkpoints"] and repro is not None and repro.checkpoint:
        found["checkpoints"]["before"] = repro.checkpoint  # nearer ones may hold NaN weights: the one replayed
    replayed = repro if repro and repro.reproduced and not repro.trace.broken() else None
    found_hypotheses = [
        hypotheses.data_corruption(scan, finding, repro),
        hypotheses.leakage(leak),
        hypotheses.optimizer_instability(replayed, lr_experiment, finding, isolation),
        hypotheses.precision_overflow(replayed),
        hypotheses.code_change(bisection, "code" in checks),
        hypotheses.config_change(isolation, "config" in checks),
        hypotheses.nondeterminism(determinism),
    ]

    report = Report(tool=TOOL)
    if repro is None:
        report.results.append(CheckResult("REPRO", Status.SKIP, "not run (--checks without reproduce)",
                                          name="reproduction"))
    else:
        report.results.append(CheckResult(
            "REPRO", Status.ERROR if repro.trace.broken() else Status.FAIL if repro.reproduced else Status.PASS,
            repro.detail, name="reproduction",
            evidence={k: v for k, v in repro.to_dict().items() if k != "health"}))
    report.results.extend(h.to_result() for h in found_hypotheses)

    doc: dict[str, Any] = {
        "pipeline": args.pipeline, "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "checks": checks,
        "seconds": round(time.perf_counter() - started, 2),
        "constraints": {"pipeline": args.pipeline, "root": str(root), "device": device, "seed": seed,
                        "deterministic": "torch.use_deterministic_algorithms(warn_only) and no cuDNN autotuning",
                        "config": config.path if config else None, "steps per run from scratch": args.steps},
        "intake": {"incident": incident.to_dict() if incident else None, "versions": intake.versions(),
                   "git": intake.git_facts(top or root, good) if _is_repo(root) else None,
                   "checkpoints": found["checkpoints"]},
        "config": values or None,
        "reproduction": repro.to_dict() if repro else None,
        "batch": finding.to_dict() if finding else None,
        "data": scan.to_dict() if scan else None,
        "leakage": leak.to_dict() if leak else None,
        "determinism": determinism.to_dict() if determinism else None,
        "config_isolation": isolation.to_dict() if isolation else None,
        "code": bisection.to_dict() if bisection else None,
        "code_patch": bisection.patch if bisection else "",
        "hypotheses": [h.to_dict() for h in found_hypotheses],
        "reproduce_command": _reproduce_command(args, root),
    }
    doc = json.loads(json.dumps(doc, default=str))  # YAML dates, paths: plain JSON from here on
    from ..fsutil import atomic_write

    incident_md = out / "incident.md"
    try:
        atomic_write(incident_md, render(doc, found_hypotheses))
        atomic_write(out / "incident.json", json.dumps(doc, indent=2))
    except OSError as exc:
        raise InputError(f"--out: cannot write the incident report ({exc.strerror})", out) from None
    confirmed = [h.id for h in found_hypotheses if h.verdict == "confirmed"]
    report.summary.update(incident_report=str(incident_md), headline=headline(found_hypotheses, doc["reproduction"]),
                          reproduced=bool(repro and repro.reproduced), causes=confirmed,
                          hypotheses=doc["hypotheses"], reproduction=doc["reproduction"], batch=doc["batch"],
                          out=str(out))
    report.text = _text(report, found_hypotheses, incident_md)
    return report


def _source_of(pipeline: Any) -> str | None:
    import inspect

    try:
        return inspect.getsourcefile(type(pipeline))
    except (TypeError, OSError):
        return None


def _is_repo(root: Path) -> bool:
    from .. import gitcmd

    try:
        gitcmd.repo_info(root)
    except InputError:
        return False
    return True


def _reproduce_command(args: argparse.Namespace, root: Path) -> str:
    argv = ["spml", "diagnose", "--pipeline", args.pipeline, "--root", str(root)]
    for option, value in (("--config", args.config), ("--log", args.log), ("--incident-step", args.incident_step),
                          ("--checkpoint-dir", args.checkpoint_dir)):
        if value is not None:
            argv += [option, str(Path(value).resolve()) if option != "--incident-step" else str(value)]
    argv += ["--seed", str(args.seed), "--device", args.device, "--steps", str(args.steps), "--checks", "reproduce"]
    return shlex.join(argv)


def _text(report: Report, found: list[Any], incident_md: Path) -> str:
    lines = [f"{TOOL}: {report.summary['headline']}"]
    for result in report.results:
        lines.append(f"  [{result.status.value:4}] {result.id:<12} {result.name}: {result.message}")
    lines.append(f"  incident report: {incident_md}")
    return "\n".join(lines) + "\n"
