"""``spml init``: write the SPML starting files into a repository.

Never overwrites an existing file unless ``--force`` is given; each file
becomes one result (written, or skipped with the reason), so the report says
exactly what changed on disk.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .. import __version__
from ..cliutil import add_output_options
from ..errors import InputError
from ..fsutil import atomic_write
from ..report import CheckResult, Report, Status

TOOL = "spml init"
REPO_URL = "https://github.com/pytest-spml/pytest-spml"


@dataclass(frozen=True)
class Template:
    name: str  # the --only name
    source: str  # file inside the pytest_spml.templates package
    dest: str  # path written, relative to the target directory
    formatted: bool = False  # filled with str.format(version=..., repo_url=...)


TEMPLATES = (
    Template("plan", "plan.md", "docs/plans/experiment-plan.md"),
    Template("protocol", "autoresearch-protocol.md", "autoresearch-protocol.md"),
    Template("criteria", "criteria.yaml", "criteria.yaml"),
    Template("context", "experiment-context.md", "experiment-context.md"),
    Template("pre-commit", "pre-commit-config.yaml", ".pre-commit-config.yaml", formatted=True),
    Template("ci", "ci/spml.yml", ".github/workflows/spml.yml", formatted=True),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    names = ", ".join(t.name for t in TEMPLATES)
    parser = subparsers.add_parser(
        "init",
        help="write the plan, protocol, context, pre-commit and CI templates",
        description="Write SPML starting files into a repository: "
                    + "; ".join(f"{t.dest} ({t.name})" for t in TEMPLATES)
                    + ". Existing files are left alone unless --force is given.",
    )
    parser.add_argument("directory", nargs="?", default=".", help="where to write (default: current directory)")
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")
    parser.add_argument("--only", action="append", metavar="NAME", choices=[t.name for t in TEMPLATES],
                        help=f"write only this template (repeatable): {names}")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def render_template(template: Template) -> str:
    text = resources.files("pytest_spml.templates").joinpath(template.source).read_text(encoding="utf-8")
    if template.formatted:
        text = text.format(version=__version__, repo_url=REPO_URL)
    return text


def run(args: argparse.Namespace) -> Report:
    target = Path(args.directory)
    if target.exists() and not target.is_dir():
        raise InputError("not a directory; give the repository folder to initialise", target)
    report = Report(tool=TOOL)
    chosen = [t for t in TEMPLATES if not args.only or t.name in args.only]
    written = []
    for template in chosen:
        dest = target / template.dest
        if dest.exists() and not args.force:
            report.results.append(CheckResult(
                "INIT", Status.SKIP, "exists, left unchanged (pass --force to overwrite)",
                path=template.dest, name=template.name,
            ))
            report.notes.append(f"{template.dest} exists, left unchanged (pass --force to overwrite)")
            continue
        try:
            atomic_write(dest, render_template(template))
        except OSError as exc:
            raise InputError(f"cannot write ({exc.strerror})", dest) from None
        written.append(template.dest)
        report.results.append(CheckResult("INIT", Status.PASS, "written", path=template.dest, name=template.name))
    report.notes.extend(f"wrote {path}" for path in written)
    report.summary.update(written=written, directory=str(target))
    return report
