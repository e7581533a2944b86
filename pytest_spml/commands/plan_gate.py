"""``spml plan-gate``: is this experiment plan complete enough to start implementing?"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from ..cliutil import add_output_options
from ..config import load_config
from ..errors import InputError
from ..plan.model import parse_plan, read_plan_text
from ..plan.rules import RULE_TABLE, check_plan
from ..report import Report, Status

TOOL = "spml plan-gate"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan-gate",
        help="check experiment plans before implementation starts",
        description=_description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The options, shared by the ``spml plan-gate`` subcommand and the pre-commit hook."""
    parser.add_argument("plans", nargs="*", metavar="PLAN",
                        help="plan files to check (default: the [tool.spml] plans globs, docs/plans/*.md, "
                             "under the repository root)")
    parser.add_argument("--repo", metavar="DIR",
                        help="when no PLAN is given, find plans under this repository root (default: the git "
                             "work tree around the current directory, else the current directory)")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)


def _description() -> str:
    rules = "\n".join(f"  {rule_id}  {name}: {doc}" for rule_id, (name, doc) in RULE_TABLE.items())
    intro = textwrap.fill(
        "Check experiment plans (markdown) before any implementation starts: exactly one [INTEGRATION] "
        "subtask, revision markers, and, for a plan that trains with evaluation, the evaluation contract. "
        "Every rule reports on every plan.", width=100)
    return f"{intro}\n\nrules:\n{rules}"


def run(args: argparse.Namespace) -> Report:
    report = Report(tool=TOOL)
    plans: list[dict[str, object]] = []
    for path, shown in _plan_files(args, report):
        plan = parse_plan(Path(shown), read_plan_text(path, shown))
        results = check_plan(plan)
        report.extend(results)
        integrations = plan.integrations
        plans.append({
            "path": shown,
            "integration": integrations[0].name if len(integrations) == 1 else None,
            "passed": all(r.status not in (Status.FAIL, Status.ERROR) for r in results),
        })
    report.summary["plans"] = plans
    return report


def _plan_files(args: argparse.Namespace, report: Report) -> list[tuple[Path, str]]:
    """(path to read, path to show) for each plan, in the order given or found."""
    if args.plans:
        # Checked up front so a typo in the second name exits 2 before any output.
        for shown in args.plans:
            if not Path(shown).exists():
                raise InputError("plan file not found; check the path", shown)
        return [(Path(shown), shown) for shown in args.plans]

    root = _root(args.repo)
    config = load_config(root)
    found = config.plan_files()
    if not found:
        raise InputError(
            f"no plan found: nothing matches {', '.join(config.plans)} under {root}; pass plan files "
            "(spml plan-gate PLAN.md ...) or set plans = [\"...\"] under [tool.spml] in pyproject.toml"
        )
    report.notes.append(f"checking {len(found)} plan(s) matching {', '.join(config.plans)} under {root}")
    return [(path, path.relative_to(root).as_posix()) for path in found]


def _root(repo: str | None) -> Path:
    """--repo, else the enclosing git work tree, else the current directory.

    Found by walking up to ``.git`` rather than asking git: the plan gate reads
    only markdown and must work where git is not installed.
    """
    if repo is not None:
        root = Path(repo)
        if not root.is_dir():
            raise InputError("--repo is not a directory; pass the repository root", repo)
        return root.resolve()
    cwd = Path.cwd()
    return next((d for d in (cwd, *cwd.parents) if (d / ".git").exists()), cwd)
