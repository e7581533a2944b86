"""What every ``spml`` / ``spml-loop`` command shares: options, rendering, exit codes.

Exit codes are a contract: 0 every check passed, 1 a check failed, 2 bad
input or usage (one line naming the file and line; never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .errors import InputError

# `typing` is not imported at run time: this module loads before the hooks
# start git, and every millisecond there is on the commit's critical path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .report import Report

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def wants_json(argv: Sequence[str]) -> bool:
    """Did the command line ask for ``--format json``? Known before parsing, for usage errors."""
    argv = list(argv)
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in zip(argv, argv[1:]))


def error_document(tool: str, message: str, path: str | None = None, line: int | None = None) -> str:
    import json

    return json.dumps({"tool": tool, "ok": False, "error": {"message": message, "path": path, "line": line}})


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line and exits 2.

    Set ``json_errors`` (``build_parser`` does, from the raw command line) and
    a usage error also prints the JSON error document on stdout, so a caller
    that asked for JSON always gets exactly one document.
    """

    json_errors = False

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        if self.json_errors:
            sys.stdout.write(error_document(self.prog, message) + "\n")
        raise SystemExit(EXIT_USAGE)

    @classmethod
    def for_argv(cls, argv: Sequence[str]) -> type["ArgumentParser"]:
        """The parser class to use (also for subcommands) given the raw command line."""
        return type(cls.__name__, (cls,), {"json_errors": wants_json(argv)})


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--format", choices=("text", "json"), default="text",
                       help="text (default): 'path:line: ID message' lines; json: one JSON document on stdout")
    group.add_argument("--junitxml", metavar="PATH", help="also write a JUnit XML report (one testcase per check) to PATH")
    group.add_argument("-v", "--verbose", action="store_true", help="text format: list passing and skipped checks too")


def _input_error_report(tool: str, exc: InputError) -> Report:
    from .report import CheckResult, Report, Status

    return Report(tool=tool, results=[CheckResult("INPUT", Status.ERROR, exc.message, path=exc.path, line=exc.line,
                                                  name="input readable")])


def execute(tool: str, run: Callable[[argparse.Namespace], Report], args: argparse.Namespace) -> int:
    """Run one command and render its report; map failures onto the exit-code contract."""
    fmt = getattr(args, "format", "text")
    junit = getattr(args, "junitxml", None)
    try:
        report = run(args)
        from .render import render, write_junit

        if junit:
            try:
                write_junit(report, junit)
            except OSError as exc:
                raise InputError(f"cannot write JUnit XML ({exc.strerror})", junit) from None
    except InputError as exc:
        sys.stderr.write(f"{tool}: error: {exc}\n")
        if fmt != "text":
            sys.stdout.write(error_document(tool, exc.message, exc.path, exc.line) + "\n")
        if junit and exc.path != junit:
            # CI publishes the JUnit file: an input error must show up there too
            from .render import write_junit

            try:
                write_junit(_input_error_report(tool, exc), junit)
            except OSError:
                pass
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{tool}: interrupted\n")
        return 130
    try:
        render(report, fmt, sys.stdout, verbose=getattr(args, "verbose", False))
        sys.stdout.flush()
    except BrokenPipeError:
        # `spml ... | head`: the reader left; the verdict still stands in the exit code
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return report.exit_code


def import_command(module: str) -> "Any":
    """``pytest_spml.commands.<module>``: only the command being run is imported.

    The hooks start on every commit and must not pay for the other commands.
    """
    import importlib

    return importlib.import_module(f"pytest_spml.commands.{module}")
