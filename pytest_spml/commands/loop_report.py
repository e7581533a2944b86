"""``spml-loop report``: every round as a table, a PNG of the metric across rounds, JUnit with one case per step."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cliutil import add_output_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..report import Report

TOOL = "spml-loop report"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="a table and a plot of the rounds so far",
        description="Report the loop in .spml/: the experiences table of every round, a PNG of the metric and "
                    "the best so far across rounds (needs matplotlib), and with --junitxml one test case per "
                    "round step. Exit 0 when every round ran its steps cleanly, 1 when one failed a step, 2 "
                    "without a loop.")
    parser.add_argument("--repo", metavar="DIR", default=".", help="the repository (default: current directory)")
    parser.add_argument("--png", metavar="PATH", help="where the plot goes (default: .spml/report.png)")
    parser.add_argument("--no-png", action="store_true", help="no plot")
    add_output_options(parser)
    parser.set_defaults(run=run, tool=TOOL)
    return parser


def plot_rounds(path: Path, state, rows) -> tuple[Path | None, str]:  # noqa: ANN001
    try:
        from .. import plot
    except ImportError:
        return None, "no plot: pytest_spml.plot is not available in this version"
    rounds = [r for r in rows if r.kind == "round"]
    metric = [(float(r.round), r.metric) for r in rounds if r.metric is not None]
    best = [(float(r.round), r.best) for r in rounds if r.best is not None]
    if not metric:
        return None, "no plot: no round has a metric yet"
    panels = [plot.Panel(f"{state.metric} per round ({state.direction})", {state.metric: metric}, ylabel=state.metric),
              plot.Panel("best so far", {"best": [(0.0, state.baseline), *best]}, ylabel=state.metric, steps=True)]
    marks = [plot.Mark(float(r.round), f"round {r.round} committed", "tab:green") for r in rounds
             if r.action in ("commit", "accept")]
    return plot.save_plot(path, panels, title=f"{state.branch}: {state.metric}", xlabel="round", marks=marks)


def run(args: argparse.Namespace) -> Report:
    from ..loop import summary
    from ..loop.experiences import load_rows
    from ..loop.state import existing_loop
    from ..report import Report

    paths, state = existing_loop(args.repo)
    rows = load_rows(paths)
    report = Report(tool=TOOL)
    extra: list[str] = []
    if not args.no_png:
        target = Path(args.png) if args.png else paths.dir / "report.png"
        written, why = plot_rounds(target, state, rows)
        report.summary["png"] = str(written) if written else None
        extra.append(f"{TOOL}: plot written to {written}" if written else f"{TOOL}: {why}")
        if not written:
            report.notes.append(why)
    summary.fill(report, state, rows, paths, f"spml-loop report: {state.branch}", extra)
    return report
