"""What every ``spml`` / ``spml-loop`` command shares: options, rendering, exit codes.

Exit codes are a contract: 0 every check passed, 1 a check failed, 2 bad
input or usage (one line naming the file and line; never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .errors import InputError

# `typing` is not imported at run time: this module loads before the hooks
# start git, and every millisecond there is on the commit's critical path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .report import Report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--format", choices=("text", "json"), default="text",
                       help="text (default): 'path:line: ID message' lines; json: one JSON document on stdout")
    group.add_argument("--junitxml", metavar="PATH", help="also write a JUnit XML report (one testcase per check) to PATH")
    group.add_argument("-v", "--verbose", action="store_true", help="text format: list passing and skipped checks too")


def execute(tool: str, run: Callable[[argparse.Namespace], Report], args: argparse.Namespace) -> int:
    """Run one command and render its report; map failures onto the exit-code contract."""
    fmt = getattr(args, "format", "text")
    try:
        report = run(args)
        from .render import render_json, render_text, write_junit

    except InputError as exc:
        sys.stderr.write(f"{tool}: error: {exc}\n")
        if fmt == "json":
            import json

            doc = {"tool": tool, "ok": False, "error": {"message": exc.message, "path": exc.path, "line": exc.line}}
            sys.stdout.write(json.dumps(doc) + "\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{tool}: interrupted\n")
        return 130
    if getattr(args, "junitxml", None):
        try:
            write_junit(report, args.junitxml)
        except OSError as exc:
            sys.stderr.write(f"{tool}: error: {args.junitxml}: cannot write JUnit XML ({exc.strerror})\n")
            return EXIT_USAGE
    try:
        if fmt == "json":
            render_json(report, sys.stdout)
        else:
            render_text(report, sys.stdout, verbose=getattr(args, "verbose", False))
        sys.stdout.flush()
    except BrokenPipeError:
        # `spml ... | head`: the reader left; the verdict still stands in the exit code
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return report.exit_code
